"""Callbacks on a stand-in trainer: true best copies, early stopping, logs, freezing; and the plots and
reports of tlkit/report.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from tlkit import report
from tlkit.callbacks import (
    BestWeights, EarlyStopping, MetricsLog, TensorBoard, tensorboard_available,
)
from tlkit.report import class_report, plot_confusion, plot_curves


def row(epoch: int, val_loss: float, val_acc: float = 0.5) -> dict:
    return {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "val_loss": val_loss, "val_acc": val_acc,
            "lr": 0.1, "seconds": 1.0, "images_per_s": 10.0}


def fake_trainer(model=None):
    model = model or torch.nn.Linear(2, 2)
    return SimpleNamespace(model=model, history=[], stop_reason=None, epoch=0, frozen=None, last_validation=None)


def test_best_weights_are_a_true_copy_and_come_back_at_the_end():
    trainer = fake_trainer()
    tracker = BestWeights("val_loss", trainer.model)
    trainer.history.append(row(1, 0.3))
    tracker.on_epoch_end(trainer)
    best = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        trainer.model.weight.add_(1.0)  # an optimizer step changes the tensors in place
    trainer.history.append(row(2, 0.9))  # worse: not kept
    tracker.on_epoch_end(trainer)
    assert tracker.best_epoch == 1 and torch.equal(tracker.best_state["weight"], best["weight"])
    tracker.on_fit_end(trainer)
    assert torch.equal(trainer.model.weight, best["weight"])


def test_accuracy_is_maximised_and_nan_never_wins():
    trainer = fake_trainer()
    tracker = BestWeights("val_acc", trainer.model)
    for epoch, acc in enumerate([0.6, 0.8, float("nan"), 0.7], start=1):
        trainer.history.append(row(epoch, 0.5, acc))
        tracker.on_epoch_end(trainer)
    assert tracker.best_epoch == 2


def test_early_stopping_counts_stale_epochs_and_resumes_its_count():
    trainer, stopper = fake_trainer(), EarlyStopping("val_loss", patience=2)
    for epoch, loss in enumerate([0.5, 0.4, 0.45], start=1):
        trainer.history.append(row(epoch, loss))
        stopper.on_epoch_end(trainer)
    assert trainer.stop_reason is None and stopper.stale_epochs == 1
    restored = EarlyStopping("val_loss", patience=2)
    restored.load_state_dict(stopper.state_dict())
    trainer.history.append(row(4, 0.41))
    restored.on_epoch_end(trainer)
    assert "did not improve for 2 epochs" in trainer.stop_reason


def test_metrics_log_is_rewritten_from_the_history_on_resume(tmp_path):
    trainer, log = fake_trainer(), MetricsLog(tmp_path / "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text("stale line from an interrupted epoch\n")
    trainer.history = [row(1, 0.5)]
    log.on_fit_start(trainer)
    trainer.history.append(row(2, 0.4))
    log.on_epoch_end(trainer)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and lines[1]["val_loss"] == 0.4


def test_plots_are_written(tmp_path):
    plot_curves(tmp_path / "curves.png", [row(1, 0.5), row(2, 0.4)])
    plot_confusion(tmp_path / "confusion.png", [0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])
    for name in ("curves.png", "confusion.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_the_confusion_title_names_the_subset(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda figure, path: figures.append(figure))
    plot_confusion(tmp_path / "test.png", [0, 1, 1], [0, 1, 0], ["a", "b"], subset="test")
    plot_confusion(tmp_path / "default.png", [0, 1], [0, 1], ["a", "b"])
    titles = [figure.axes[0].get_title() for figure in figures]
    assert titles == ["confusion (3 test images)", "confusion (2 validation images)"]


def test_class_report_matches_scikit_learn():
    targets, predictions = [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2]
    report = class_report(targets, predictions, ["a", "b", "c"])
    precision, recall, f1, support = precision_recall_fscore_support(targets, predictions)
    assert report["b"]["precision"] == pytest.approx(precision[1]) and report["c"]["recall"] == pytest.approx(recall[2])
    assert report["a"]["support"] == 2 and report["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_writes_event_files(tmp_path):
    trainer, board = fake_trainer(), TensorBoard(tmp_path / "tb")
    board.on_fit_start(trainer)
    trainer.history.append(row(1, 0.5))
    board.on_epoch_end(trainer)
    board.on_fit_end(trainer)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_confusion_counts_are_readable_on_their_cells():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tlkit.report import text_colour

    figure, axes = plt.subplots()
    image = axes.imshow([[17, 13], [14, 16]], cmap="Blues")
    # The colours span 13..17: 13 sits on the palest blue, where the old rule (count > max / 2) wrote white.
    assert (text_colour(image, 13), text_colour(image, 17)) == ("black", "white")
    plt.close(figure)
