"""tlkit.evaluate and `tlkit evaluate`: numbers checked against scikit-learn, figures written."""

import json

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from tlkit.checkpoint import load_checkpoint
from tlkit.cli import main
from tlkit.decode import ImageBatches

from conftest import make_checkpoint, make_flat, make_foldered


@pytest.fixture
def run(tmp_path):
    return make_checkpoint(tmp_path / "runs" / "tiny", seed=3)


def test_numbers_match_scikit_learn(run, tmp_path):
    data = make_foldered(tmp_path / "validation", {"cat": 6, "dog": 5})
    assert main(["evaluate", str(data), "--checkpoint", str(run)]) == 0
    report = json.loads((run / "evaluate-validation" / "report.json").read_text())
    checkpoint = load_checkpoint(run)
    paths = sorted(data.rglob("*.png"))
    truth = [0 if p.parent.name == "cat" else 1 for p in paths]
    (batch,) = ImageBatches(paths, checkpoint.backbone.preprocessing, device="cpu", batch_size=64)
    with torch.inference_mode():
        predicted = checkpoint.backbone.model(batch.images).argmax(dim=1).tolist()
    assert report["images"] == 11
    assert report["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    for index, label in enumerate(["cat", "dog"]):
        row = report["per_class"][label]
        assert row["precision"] == pytest.approx(precision_score(truth, predicted, pos_label=index, zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(truth, predicted, pos_label=index, zero_division=0))
        assert row["f1-score"] == pytest.approx(f1_score(truth, predicted, pos_label=index, zero_division=0))
    wrong = sum(t != p for t, p in zip(truth, predicted))
    assert len(report["most_confident_mistakes"]) == min(wrong, 16)
    confidences = [m["confidence"] for m in report["most_confident_mistakes"]]
    assert confidences == sorted(confidences, reverse=True)
    for name in ("confusion.png", "mistakes.png", "mistakes.html"):
        assert (run / "evaluate-validation" / name).stat().st_size > 1000


def test_flat_folder_and_rerun_needs_force(run, tmp_path, capsys):
    data = make_flat(tmp_path / "val", {"cat": 2, "dog": 2})
    out = tmp_path / "eval"
    assert main(["evaluate", str(data), "--checkpoint", str(run), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["images"] == 4
    assert main(["evaluate", str(data), "--checkpoint", str(run), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["evaluate", str(data), "--checkpoint", str(run), "--out", str(out), "--force"]) == 0


def test_unknown_classes_are_named(run, tmp_path, capsys):
    data = make_foldered(tmp_path / "val", {"cat": 2, "horse": 2})
    assert main(["evaluate", str(data), "--checkpoint", str(run)]) == 1
    err = capsys.readouterr().err
    assert "horse" in err and "cat, dog" in err
