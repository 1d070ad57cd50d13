"""Calibrated confidence (tlkit/calibration.py): the temperature a run fits and keeps in best.json, and predict,
the Classifier, evaluate and export using it; a checkpoint written before it loads with T = 1."""

import csv
import json

import numpy as np
import pytest
import torch

from tlkit import api, calibration
from tlkit.checkpoint import load_checkpoint
from tlkit.checkpoint_format import read_meta, save_meta
from tlkit.cli import main
from tlkit.decode import ImageBatches
from tlkit.errors import TlkitError
from tlkit.export import sidecar_path

from conftest import make_learnable, write_image

pytestmark = pytest.mark.usefixtures("one_thread")


def _sampled(temperature: float, count: int = 20_000, classes: int = 5, seed: int = 0):
    """Labels drawn from softmax(z), and the logits z * temperature a model overconfident by it would give."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2, (count, classes))
    cumulative = calibration.probabilities(true_logits).cumsum(axis=1)
    targets = np.minimum((rng.random((count, 1)) > cumulative).sum(axis=1), classes - 1)
    return true_logits * temperature, targets


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_the_fit_recovers_a_known_temperature(temperature):
    logits, targets = _sampled(temperature)
    assert calibration.fit_temperature(logits, targets) == pytest.approx(temperature, rel=0.05)


def test_scaling_an_overconfident_model_lowers_its_ece_and_nll():
    logits, targets = _sampled(3.0)
    fitted = calibration.calibrate(logits, targets)
    assert fitted["ece_after"] < fitted["ece_before"] / 3 and fitted["nll_after"] < fitted["nll_before"]
    assert fitted["images"] == len(targets) and fitted["bins"] == calibration.BINS


def test_ece_by_hand():
    """Two bins hold predictions: 0.95 twice (one right) and 0.6 once (right): (2 * 0.45 + 0.4) / 3."""
    probabilities = np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4]])
    targets = np.array([0, 0, 0])
    curve = calibration.reliability(probabilities, targets, bins=10)
    assert [(row["count"], row["accuracy"]) for row in curve] == [(1, 1.0), (2, 0.5)]
    assert calibration.expected_calibration_error(probabilities, targets, bins=10) == pytest.approx(1.3 / 3)


def test_the_uncalibrated_probabilities_are_recovered_from_the_calibrated_ones():
    logits, _ = _sampled(2.0, count=50)
    np.testing.assert_allclose(calibration.uncalibrated(calibration.probabilities(logits, 2.0), 2.0),
                               calibration.probabilities(logits), atol=1e-5)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """A short run whose confidences are far from its accuracy on validation photos, one of each class mislabelled
    (with every validation photo right, the NLL falls as T falls, down to the search's bound)."""
    root = tmp_path_factory.mktemp("calibrated")
    data = make_learnable(root / "data", train_per_class=8, val_per_class=6, size=16)
    for label, other in (("cat", "dog"), ("dog", "cat")):
        (data / "validation" / label / "0.png").rename(data / "validation" / other / f"mislabelled-{label}.png")
    run = api.finetune(data, backbone="simple-cnn", weights="none", img_size=32, epochs=8, batch_size=4, workers=0,
                       optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, scheduler="none", augment=False,
                       monitor="val_acc", seed=3, device="cpu", precision="fp32", runs_dir=str(root / "runs"),
                       quiet=True)
    return run, data


def test_a_run_keeps_its_temperature_and_evaluate_reports_the_ece_before_and_after(calibrated_run, tmp_path):
    run, data = calibrated_run
    meta = read_meta(run.path)
    fitted = run.report["calibration"]
    assert meta.temperature == fitted["temperature"] and meta.calibration == fitted
    assert np.exp(calibration.LOG_T_BOUNDS[0]) * 1.01 < meta.temperature < 0.99  # inside the search, not at its edge
    assert fitted["ece_after"] < fitted["ece_before"] and fitted["images"] == 12
    assert json.loads((run.path / "report.json").read_text())["calibration"] == fitted
    report = run.classifier.evaluate(data / "validation", out=tmp_path / "eval", quiet=True)
    assert report["temperature"] == meta.temperature
    assert report["ece"] == pytest.approx(fitted["ece_after"], abs=1e-4)
    assert report["ece_uncalibrated"] == pytest.approx(fitted["ece_before"], abs=1e-4)
    assert report["log_loss"] == pytest.approx(fitted["nll_after"], abs=1e-4)
    assert report["log_loss_uncalibrated"] == pytest.approx(fitted["nll_before"], abs=1e-4)
    assert sum(row["count"] for row in report["reliability"]) == 12
    assert (tmp_path / "eval" / "reliability.png").stat().st_size > 0
    assert "reliability: expected calibration error" in (tmp_path / "eval" / "mistakes.html").read_text()


def _with_temperature(run_dir, temperature):
    meta = read_meta(run_dir)
    save_meta(run_dir, meta.calibrated({**(meta.calibration or {}), "temperature": temperature}))


def test_predict_and_the_classifier_give_the_scaled_confidences(tiny_run, tmp_path):
    photos = [write_image(tmp_path / "photos" / f"{n}.jpg", size=(40, 30), color=40 * n) for n in range(4)]
    _with_temperature(tiny_run, 0.25)  # sharper than the random model's own softmax
    checkpoint = load_checkpoint(tiny_run)
    (batch,) = ImageBatches(photos, checkpoint.backbone.preprocessing, device="cpu", batch_size=8)
    with torch.inference_mode():
        expected = calibration.probabilities(checkpoint.backbone.model(batch.images).numpy(), 0.25)
    assert main(["-q", "predict", str(tmp_path / "photos"), "--checkpoint", str(tiny_run), "--device", "cpu",
                 "--precision", "fp32", "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    from_cli = np.array([[float(row["p_cat"]), float(row["p_dog"])] for row in rows])
    np.testing.assert_allclose(from_cli, expected, atol=1e-5)
    classifier = api.load(tiny_run, device="cpu", precision="fp32", quiet=True)
    from_python = [[row.probabilities["cat"], row.probabilities["dog"]] for row in classifier.predict(photos)]
    np.testing.assert_allclose(from_python, from_cli, atol=1e-6)


def test_a_checkpoint_written_before_calibration_loads_with_t_1(tiny_run):
    meta_path = tiny_run / "best.json"
    values = json.loads(meta_path.read_text())
    for key in ("temperature", "calibration"):
        values.pop(key)
    meta_path.write_text(json.dumps(values))
    meta = load_checkpoint(tiny_run).meta
    assert (meta.temperature, meta.calibration) == (1.0, None)


@pytest.mark.parametrize("bad", [0, -1.5, "warm", None, float("nan")])
def test_a_garbled_temperature_is_one_message(tiny_run, bad):
    meta_path = tiny_run / "best.json"
    meta_path.write_text(meta_path.read_text().replace('"temperature": 1.0', f'"temperature": {json.dumps(bad)}'))
    with pytest.raises(TlkitError, match="lacks or garbles"):
        read_meta(tiny_run)


def test_export_keeps_the_logits_and_its_sidecar_states_the_temperature(tiny_run, tmp_path):
    """The exported model still matches PyTorch's logits (its check); softmax(logits / T) per the sidecar gives
    predict's probabilities."""
    photos = [write_image(tmp_path / "photos" / f"{n}.jpg", size=(40, 30), color=50 * n) for n in range(3)]
    _with_temperature(tiny_run, 2.0)
    target = tmp_path / "model.pt"
    assert main(["-q", "export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target),
                 "--images", *map(str, photos)]) == 0
    sidecar = json.loads(sidecar_path(target).read_text())
    assert sidecar["temperature"] == 2.0 and "softmax(logits / temperature)" in sidecar["output"]
    assert sidecar["check"]["verified"] is True
    checkpoint = load_checkpoint(tiny_run)
    (batch,) = ImageBatches(photos, checkpoint.backbone.preprocessing, device="cpu", batch_size=8)
    with torch.inference_mode():
        exported = torch.jit.load(str(target))(batch.images).numpy()
    classifier = api.load(tiny_run, device="cpu", precision="fp32", quiet=True)
    predicted = [[row.probabilities["cat"], row.probabilities["dog"]] for row in classifier.predict(photos)]
    np.testing.assert_allclose(calibration.probabilities(exported, sidecar["temperature"]), predicted, atol=1e-5)


def test_a_validation_set_with_every_image_right_keeps_the_temperature_at_one():
    """Every image right: the log loss keeps falling towards T = 0, which would give every new
    photo a confidence of 1. The fit is not trusted there; T stays 1 and the record says why."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 200)
    logits = np.where(np.eye(2)[targets] == 1, 3.0, -3.0) + rng.normal(0, 0.3, (200, 2))
    fitted = calibration.calibrate(logits, targets)
    assert fitted["kept_at_one"] and fitted["temperature"] == 1.0
    assert fitted["ece_after"] == fitted["ece_before"]
    mistaken = targets.copy()
    mistaken[:10] = 1 - mistaken[:10]  # a few confident mistakes: a finite temperature fits again
    refitted = calibration.calibrate(logits, mistaken)
    assert not refitted["kept_at_one"] and refitted["temperature"] > 1
