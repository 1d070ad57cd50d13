"""Class imbalance: --class-weights (the loss's weights), the balanced accuracy, macro F1 and recall per class in
what a run and evaluate report, --monitor on them, and the line check and split say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.utils.class_weight import compute_class_weight

from tlkit import api, cli
from tlkit.imbalance import IMBALANCE_RATIO, balance_scores, imbalance_note, loss_weights
from tlkit.train import WeightedCrossEntropy

from conftest import make_checkpoint, make_flat

pytestmark = pytest.mark.usefixtures("one_thread")


def make_overlapping(root: Path, train: dict[str, int], val_per_class: int = 20, size: int = 16) -> Path:
    """DATA/training and DATA/validation where a class is told by brightness, but not always: each image's
    brightness is its class's (cat 100, dog 140) give or take 25, so the classes overlap and a model that
    neglects the small class calls more of it the large one."""
    rng = np.random.default_rng(0)
    for subset, counts in (("training", train), ("validation", dict.fromkeys(train, val_per_class))):
        for label, count in counts.items():
            folder = root / subset / label
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                base = {"cat": 100, "dog": 140}[label] + rng.normal(0, 25)
                pixels = np.clip(base + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{n}.png")
    return root


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    return make_overlapping(tmp_path_factory.mktemp("imbalanced"), {"cat": 4, "dog": 40})


def finetune_on(data: Path, runs: Path, name: str, **settings) -> api.Run:
    """A linear head on the cached features of a random MLP trunk (which keep the brightness): 30 epochs in seconds,
    and a convex problem, so the weights' effect is not lost in the noise of training a network from scratch."""
    base = dict(backbone="mlp", weights="none", img_size=16, batch_size=8, workers=0, precision="fp32",
                precompute_features=True, seed=0, runs_dir=str(runs), name=name, quiet=True)
    return api.finetune(data, **{**base, **settings})


# ---------------------------------------------------------------- the weights and the loss


def test_balanced_weights_are_scikit_learns_and_give_each_class_the_same_total():
    labels = [0] * 30 + [1] * 3 + [2] * 7
    weights = loss_weights("balanced", labels, 3)
    assert np.allclose(weights, compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels)))
    totals = np.bincount(labels) * weights
    assert np.allclose(totals, totals[0])


def test_auto_weighs_from_the_stated_ratio_on_and_none_never():
    below = [0] * 29 + [1] * 10  # 2.9:1
    at = [0] * 30 + [1] * 10
    assert loss_weights("auto", below, 2) is None and IMBALANCE_RATIO == 3
    assert np.allclose(loss_weights("auto", at, 2), loss_weights("balanced", at, 2))
    assert loss_weights("none", at, 2) is None


def test_the_weighted_loss_is_torchs_without_smoothing_and_smooths_each_image_as_unweighted():
    torch.manual_seed(0)
    logits, labels = torch.randn(9, 3), torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 0])
    weights = torch.tensor([0.5, 2.0, 3.0])
    assert torch.allclose(WeightedCrossEntropy(weights)(logits, labels),
                          torch.nn.CrossEntropyLoss(weight=weights)(logits, labels))
    assert torch.allclose(WeightedCrossEntropy(torch.ones(3), 0.2)(logits, labels),
                          torch.nn.CrossEntropyLoss(label_smoothing=0.2)(logits, labels))
    # Smoothed: each image's own smoothed loss, weighted by its class's weight (not by each other class's).
    per_image = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="none")(logits, labels)
    expected = (per_image * weights[labels]).sum() / weights[labels].sum()
    assert torch.allclose(WeightedCrossEntropy(weights, 0.2)(logits, labels), expected)


def test_balance_scores_are_scikit_learns():
    targets, predictions = [0, 0, 0, 0, 1, 1, 2], [0, 0, 0, 1, 1, 0, 0]
    scores = balance_scores(targets, predictions, 3)
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(targets, predictions))
    assert scores["macro_f1"] == pytest.approx(f1_score(targets, predictions, average="macro", zero_division=0))
    assert scores["recall"] == pytest.approx([0.75, 0.5, 0.0])


# ---------------------------------------------------------------- what a run shows


def test_balanced_weights_raise_the_minority_recall_of_an_imbalanced_run(imbalanced, tmp_path):
    unweighted = finetune_on(imbalanced, tmp_path, "none", class_weights="none")
    weighted = finetune_on(imbalanced, tmp_path, "balanced", class_weights="balanced")
    assert weighted.report["recall"]["cat"] > unweighted.report["recall"]["cat"]
    assert weighted.report["balanced_accuracy"] > unweighted.report["balanced_accuracy"]
    report = json.loads((weighted.path / "report.json").read_text())
    assert report["balanced_accuracy"] == weighted.report["balanced_accuracy"]
    assert set(report["recall"]) == {"cat", "dog"} and "macro_f1" in report
    rows = [json.loads(line) for line in (weighted.path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= row["val_balanced_acc"] <= 1 and 0 <= row["val_macro_f1"] <= 1 for row in rows)


def test_balanced_weights_act_on_the_images_too(imbalanced, tmp_path):
    on_images = dict(precompute_features=False, freeze="trunk", epochs=1)
    unweighted = finetune_on(imbalanced, tmp_path, "none", class_weights="none", **on_images)
    weighted = finetune_on(imbalanced, tmp_path, "balanced", class_weights="balanced", **on_images)
    assert weighted.history[0]["train_loss"] != unweighted.history[0]["train_loss"]


def test_auto_weighs_an_imbalanced_run_and_says_so_in_its_first_lines(imbalanced, tmp_path, capsys):
    argv = ["finetune", "--data", str(imbalanced), "--backbone", "mlp", "--weights", "none", "--img-size", "16",
            "--workers", "0", "--precompute-features", "--epochs", "1", "--runs-dir", str(tmp_path), "--name", "auto"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert "class weights: auto: balanced loss weights (cat 5.5, dog 0.55); the training classes are 10.0:1" in err
    assert "balanced accuracy" in out and "recall" in out


@pytest.mark.parametrize("monitor", ["val_balanced_acc", "val_macro_f1"])
def test_monitor_keeps_the_epoch_of_the_highest_balanced_score(imbalanced, tmp_path, monitor):
    run = finetune_on(imbalanced, tmp_path, monitor, monitor=monitor)
    best = max(run.history, key=lambda row: row[monitor])  # the first of equals, as a later one is no improvement
    assert run.best_epoch == best["epoch"]
    assert run.report["balanced_accuracy" if monitor == "val_balanced_acc" else "macro_f1"] == pytest.approx(best[monitor])


def test_evaluate_reports_balanced_accuracy_macro_f1_and_recall(imbalanced, tmp_path, capsys):
    run = make_checkpoint(tmp_path / "runs" / "tiny", img_size=16)  # random: it calls most photos one class
    assert cli.main(["evaluate", str(imbalanced / "validation"), "--checkpoint", str(run), "--out",
                     str(tmp_path / "evaluation"), "--workers", "0"]) == 0
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    assert set(report["recall"]) == {"cat", "dog"}
    assert report["balanced_accuracy"] == pytest.approx(np.mean(list(report["recall"].values())))
    assert "balanced" in capsys.readouterr().out


# ---------------------------------------------------------------- check and split


def test_check_and_split_say_when_the_classes_are_imbalanced(tmp_path, capsys):
    assert imbalance_note({"cat": 10, "dog": 10}) is None
    flat = make_flat(tmp_path / "flat", {"cat": 4, "dog": 16})
    assert cli.main(["check", str(flat)]) == 0
    said = capsys.readouterr().err
    assert "imbalanced: dog has 16 images, cat 4 (4.0:1)" in said and "--class-weights" in said
    assert cli.main(["split", str(flat), "--val", "0.25", "--out", str(tmp_path / "split")]) == 0
    assert "imbalanced: dog has 12 images, cat 3 (4.0:1)" in capsys.readouterr().err
    even = make_flat(tmp_path / "even", {"cat": 8, "dog": 8})
    assert cli.main(["check", str(even)]) == 0
    assert "imbalanced" not in capsys.readouterr().err

