"""`familiar` at predict time (tlkit/familiar.py): the novelty score, the threshold a run sets on its validation
photos, the reference features it keeps (from the feature cache, or a pass of predict's loop), predict's
column, export's copy, and checkpoints written before it."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit import api, familiar
from tlkit.checkpoint import load_checkpoint
from tlkit.checkpoint_format import FAMILIAR, read_meta, save_meta
from tlkit.errors import TlkitError
from tlkit.export import export_checkpoint, reference_path, sidecar_path
from tlkit.predict import find_images, predict_files, write_predictions
from tlkit.runtime import compute_for

from conftest import make_learnable, write_image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_novelty_is_the_mean_cosine_distance_to_the_nearest_reference_rows():
    reference = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    query = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # any length: cosine
    got = familiar.novelty(query, reference, neighbours=2)
    torch.testing.assert_close(got, torch.tensor([(0 + 1) / 2, 1 - 2 ** -0.5]))
    assert familiar.novelty(query, reference, neighbours=10)[0] == pytest.approx(1.0)  # k capped at the rows there
    many = torch.randn(2 * familiar.QUERY_ROWS + 3, 2)  # scored in blocks: the same as all at once
    torch.testing.assert_close(familiar.novelty(many, reference, 2)[-3:], familiar.novelty(many[-3:], reference, 2))


def test_the_threshold_is_the_quantile_of_the_validation_photos_novelty():
    rng = np.random.default_rng(0)
    training, validation = rng.normal(size=(200, 8)), rng.normal(size=(100, 8))
    reference, rule = familiar.fit(training, validation, seconds=1.5, source="test")
    assert reference.dtype == np.float16
    assert np.allclose(np.linalg.norm(reference.astype(np.float32), axis=1), 1, atol=1e-3)
    scores = familiar.novelty(torch.from_numpy(validation).float(), torch.from_numpy(reference)).numpy()
    assert rule["threshold"] == pytest.approx(np.quantile(scores, familiar.QUANTILE))
    assert rule["validation_flagged"] == pytest.approx(0.01) and rule["neighbours"] == familiar.NEIGHBOURS


def test_without_training_features_each_validation_photo_is_scored_against_the_others():
    validation = np.random.default_rng(0).normal(size=(300, 8))
    reference, rule = familiar.fit(None, validation, seconds=0.1, source="test")
    assert rule["reference"] == "validation" and rule["reference_photos"] == rule["validation_photos"] == 300
    as_reference = torch.from_numpy(reference)
    left_out = familiar.novelty(torch.from_numpy(validation).float(), as_reference, itself=True)
    assert rule["threshold"] == pytest.approx(float(np.quantile(left_out.numpy(), familiar.QUANTILE)))
    # Each photo's distance to the others: never 0 (itself), the same as a fit on the other 299 alone would give.
    assert left_out.min() > 0.1
    others = torch.from_numpy(np.delete(reference, 7, axis=0))
    assert left_out[7] == pytest.approx(float(familiar.novelty(torch.from_numpy(validation[7:8]).float(), others)[0]),
                                        abs=1e-5)
    many = torch.nn.functional.normalize(torch.randn(familiar.QUERY_ROWS + 5, 4), dim=1)  # in blocks: the same
    last = familiar.novelty(many[-1:], many[:-1], 3)
    assert familiar.novelty(many, many, 3, itself=True)[-1] == pytest.approx(float(last[0]), abs=1e-6)


# ---------------------------------------------------------------- on a tiny real run


def _stripes(path, size=24):
    """Out of class: the classes are flat noisy greys told by brightness; this is black and white stripes."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:, ::4] = 255
    Image.fromarray(pixels).save(path)
    return path


def _grey(path, level, size=24, seed=7):
    """In class: a new photo drawn as make_learnable draws them."""
    pixels = np.random.default_rng(seed).normal(level, 40, (size, size, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def _run(root, **settings):
    """A short run of simple-cnn on learnable photos (dark cats, bright dogs), 16 training photos a class."""
    data = make_learnable(root / "data", train_per_class=16, val_per_class=settings.pop("val_per_class"), size=24)
    run = api.finetune(data, backbone="simple-cnn", weights="none", img_size=32, epochs=3, batch_size=8, workers=0,
                       device="cpu", precision="fp32", seed=0, runs_dir=str(root / "runs"), quiet=True, **settings)
    return run, data


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """The head alone, on cached features: the reference is the cache's rows."""
    return _run(tmp_path_factory.mktemp("head"), precompute_features=True, val_per_class=32)


@pytest.fixture(scope="module")
def every_layer_run(tmp_path_factory):
    """Every layer on the images: the reference takes a pass of predict's loop over the photos at the end."""
    return _run(tmp_path_factory.mktemp("every-layer"), precompute_features=False, freeze="none", val_per_class=8)


@pytest.mark.parametrize("recipe", ["head", "every-layer"])
def test_a_run_keeps_the_reference_and_the_threshold_from_its_validation_photos(recipe, request):
    run, data = request.getfixturevalue(f"{recipe.replace('-', '_')}_run")
    rule = read_meta(run.path).familiar
    validation = len(list((data / "validation").rglob("*.png")))
    # The head alone keeps the training photos' cached features; once the trunk changed, the reference is the
    # validation photos' features, kept by the best epoch's validation (no pass over the photos at the end).
    subset = "training" if recipe == "head" else "validation"
    assert rule["reference"] == subset and rule["validation_photos"] == validation
    assert rule["reference_photos"] == {"training": 32, "validation": validation}[subset]
    source = {"training": "the cached features", "validation": "the validation pass of the best weights"}[subset]
    assert rule["features"] == source
    assert rule["file"] == FAMILIAR and rule["validation_flagged"] <= 0.1 and rule["quantile"] == familiar.QUANTILE
    assert (run.path / FAMILIAR).is_file() and run.outputs["familiar"] == run.path / FAMILIAR
    checkpoint = load_checkpoint(run.path)
    reference = checkpoint.reference(torch.device("cpu")).features
    photos = sorted((data / subset).rglob("*.png"))
    pred = predict_files(checkpoint, photos, compute=compute_for("cpu", "fp32"), familiar=False, keep_features=True)
    # The reference is those photos' features as predict computes them, whichever way it was made.
    unit = torch.nn.functional.normalize(torch.from_numpy(pred.features), dim=1)
    assert torch.allclose((unit @ reference.T).max(dim=1).values, torch.ones(len(photos)), atol=2e-3)


def test_predict_marks_a_photo_unlike_the_training_photos(head_run, tmp_path):
    run, _ = head_run
    photos = tmp_path / "photos"
    photos.mkdir()
    stripes, cat, dog = _stripes(photos / "stripes.png"), _grey(photos / "cat.png", 60), _grey(photos / "dog.png", 180)
    rows = {row.source.name: row for row in run.classifier.predict([stripes, cat, dog], quiet=True)}
    assert rows["stripes.png"].familiar is False and rows["cat.png"].familiar and rows["dog.png"].familiar
    assert rows["stripes.png"].novelty > read_meta(run.path).familiar["threshold"] >= rows["cat.png"].novelty
    pixels = torch.from_numpy(np.array(Image.open(stripes))).permute(2, 0, 1)[None]
    assert run.classifier.predict(pixels, quiet=True)[0].familiar is False  # the tensor path scores it too
    assert list(api.predictions_frame(list(rows.values())).columns[3:5]) == ["familiar", "novelty"]
    pred = predict_files(load_checkpoint(run.path), [stripes, cat], compute=compute_for("cpu", "fp32"))
    out = write_predictions(pred, tmp_path / "p.csv")
    written = list(csv.DictReader(out.open()))
    assert [row["familiar"] for row in written] == ["false", "true"]
    assert float(written[0]["novelty"]) == pytest.approx(rows["stripes.png"].novelty, abs=1e-5)
    records = json.loads(write_predictions(pred, tmp_path / "p.json", fmt="json").read_text())
    assert [record["familiar"] for record in records] == [False, True]


def test_the_command_writes_the_column_and_says_how_many(head_run, tmp_path, capsys):
    from tlkit.cli import main

    run, data = head_run
    _stripes(tmp_path / "stripes.png")
    assert main(["predict", str(tmp_path / "stripes.png"), str(data / "validation"), "--checkpoint", str(run.path),
                 "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    assert "familiar,novelty" in (tmp_path / "p.csv").read_text().splitlines()[0]
    assert "unlike the training photos" in capsys.readouterr().err


def test_export_carries_the_reference_and_its_sidecar_the_rule(head_run, tmp_path):
    run, _ = head_run
    check = export_checkpoint(load_checkpoint(run.path), "onnx", tmp_path / "model.onnx")
    sidecar = json.loads(sidecar_path(tmp_path / "model.onnx").read_text())
    rule = read_meta(run.path).familiar
    assert check["verified"] and sidecar["familiar"]["threshold"] == rule["threshold"]
    assert sidecar["familiar"]["neighbours"] == rule["neighbours"] == familiar.NEIGHBOURS
    copied = reference_path(tmp_path / "model.onnx")
    assert sidecar["familiar"]["file"] == copied.name and copied.read_bytes() == (run.path / FAMILIAR).read_bytes()


# ---------------------------------------------------------------- checkpoints without it


def test_a_checkpoint_written_before_has_no_column_and_says_so_once(tiny_run, tmp_path, capsys):
    photos = tmp_path / "photos"
    for number in range(2):
        write_image(photos / f"{number}.jpg", color=40 * number)
    classifier = api.load(tiny_run, device="cpu")
    rows = classifier.predict(sorted(photos.iterdir()))
    classifier.predict(sorted(photos.iterdir()))
    assert all(row.familiar is None and row.novelty is None for row in rows)
    assert capsys.readouterr().err.count("no reference features") == 1
    assert "familiar" not in api.predictions_frame(rows).columns
    pred = predict_files(load_checkpoint(tiny_run), find_images([photos]).images, compute=compute_for("cpu"))
    assert "familiar" not in write_predictions(pred, tmp_path / "p.csv").read_text()
    export_checkpoint(load_checkpoint(tiny_run), "onnx", tmp_path / "model.onnx")
    assert "familiar" not in json.loads(sidecar_path(tmp_path / "model.onnx").read_text())


def test_a_missing_reference_file_is_said_and_a_garbled_rule_refused(head_run, tmp_path, capsys):
    import shutil

    run, data = head_run
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / FAMILIAR).unlink()
    photo = sorted((data / "validation" / "cat").glob("*.png"))[:1]
    assert predict_files(load_checkpoint(copy), photo, compute=compute_for("cpu")).novelty is None
    assert f"{FAMILIAR} is missing" in capsys.readouterr().err
    with pytest.raises(TlkitError, match="missing"):
        export_checkpoint(load_checkpoint(copy), "onnx", tmp_path / "model.onnx")
    meta = read_meta(copy)
    save_meta(copy, meta.with_familiar({**meta.familiar, "file": "../elsewhere.safetensors"}))
    with pytest.raises(TlkitError, match="lacks or garbles"):
        read_meta(copy)
