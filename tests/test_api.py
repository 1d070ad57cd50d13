"""tlkit.api, the Python API: split -> finetune -> predict in a few calls, each equal to its command."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tlkit
from tlkit import api, models as registry, runtime
from tlkit.checkpoint import load_checkpoint
from tlkit.cli import main
from tlkit.errors import PYTHON, TlkitError, naming
from tlkit.predict import predict_files
from tlkit.runtime import compute_for

from conftest import make_checkpoint, make_flat, make_learnable, write_image

PETS = Path(__file__).resolve().parents[1] / "data" / "oxford-pets-370"
TINY = dict(backbone="simple-cnn", weights="none", epochs=1, batch_size=8, img_size=24, workers=0)


@pytest.fixture
def photos(tmp_path):
    """Two RGB JPEGs, a grey PNG and a JPEG whose EXIF says 'rotate 90°' (orientation 6)."""
    folder = tmp_path / "photos"
    write_image(folder / "a.jpg", size=(40, 30), color=50)
    write_image(folder / "b.jpg", size=(30, 44), color=200)
    write_image(folder / "c.png", size=(20, 20), color=120, mode="L")
    pixels = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(folder / "turned.jpg", exif=exif)
    return folder


def _probabilities(rows):
    return np.array([[row.probabilities[name] for name in sorted(row.probabilities)] for row in rows])


@pytest.mark.slow
@pytest.mark.usefixtures("offline_caches")
def test_split_finetune_predict_on_real_photos(tmp_path, monkeypatch, capfd):
    """The mission in three calls: split the pets, fine-tune EfficientNet-Lite0's head, label every photo."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(PETS, tmp_path / "pets")
    data = api.split(tmp_path / "pets", val="0.2", out=tmp_path / "data", quiet=True)
    run = api.finetune(data.out, backbone="efficientnet_lite0", precompute_features=True, quiet=True)
    rows = run.classifier.predict(data.validation, quiet=True)
    assert capfd.readouterr() == ("", "")
    assert run.accuracy >= 0.95 and run.path.parent == tmp_path / "runs"
    assert sorted(row.source.name for row in rows) == sorted(p.name for p in data.validation.rglob("*.jpg"))
    assert sum(data.counts["validation"].values()) == len(rows) == 74 and all(row.error is None for row in rows)
    assert np.mean([row.label == row.source.parent.name for row in rows]) >= 0.95
    assert data.manifest.is_file() and run.classes == ["cat", "dog"] and run.best_epoch is not None


def test_a_pil_image_is_predicted_as_its_file(tiny_run, photos):
    classifier = api.load(tiny_run, device="cpu")
    files = sorted(photos.iterdir())
    expected = predict_files(load_checkpoint(tiny_run), files, compute=compute_for("cpu"))
    images = [Image.open(path) for path in files]  # a turned JPEG keeps its EXIF: applied as for the file
    got = classifier.predict(images)
    assert [row.source for row in got] == [0, 1, 2, 3]
    np.testing.assert_allclose(_probabilities(got), expected.probabilities, atol=1e-5)
    assert [row.label for row in got] == [expected.classes[i] for i in expected.predicted()]
    one = classifier.predict(images[3], tta=True)
    by_file = classifier.predict(files[3], tta=True)
    np.testing.assert_allclose(_probabilities(one), _probabilities(by_file), atol=1e-5)


def test_the_model_is_prepared_once_for_files_images_and_tensors(tiny_run, photos, monkeypatch):
    """BatchNorm is folded once per loaded checkpoint and device (Checkpoint.inference_model), not per call."""
    from tlkit import checkpoint as checkpoint_module

    folds = []
    real = checkpoint_module.for_inference
    monkeypatch.setattr(checkpoint_module, "for_inference", lambda *args: folds.append(args) or real(*args))
    classifier = api.load(tiny_run, device="cpu")
    files = sorted(photos.glob("*.jpg"))
    classifier.predict(files, quiet=True)
    classifier.predict(files, tta=True, quiet=True)
    classifier.predict([Image.open(path) for path in files], quiet=True)
    classifier.predict(torch.zeros(2, 3, 20, 20, dtype=torch.uint8), quiet=True)
    assert len(folds) == 1


def test_tensor_batches_are_predicted_as_their_files(tiny_run, photos):
    """uint8 pixels are resized as files are; a float batch is taken as normalised model input."""
    from tlkit.decode import Normalizer, load_image

    classifier = api.load(tiny_run, device="cpu")
    prep = classifier.checkpoint.backbone.preprocessing
    files = [write_image(photos / "same-size" / f"{n}.jpg", size=(40, 30), color=n * 90) for n in (1, 2)]
    by_file = _probabilities(classifier.predict(files))
    raw = torch.stack([torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1) for path in files])
    np.testing.assert_allclose(_probabilities(classifier.predict(raw)), by_file, atol=1e-4)
    normalised = Normalizer(prep, torch.device("cpu"))(torch.stack([load_image(path, prep) for path in files]))
    rows = classifier.predict(normalised, batch_size=1)
    np.testing.assert_allclose(_probabilities(rows), by_file, atol=1e-4)
    with pytest.raises(TlkitError, match="input size"):
        classifier.predict(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TlkitError, match="given a list of JpegImageFile, PosixPath"):
        classifier.predict([photos / "a.jpg", Image.open(photos / "a.jpg")])
    with pytest.raises(TlkitError, match="given an empty list"):
        classifier.predict([])


def test_a_failed_file_is_a_row_with_its_reason(tiny_run, photos):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows = api.load(tiny_run, device="cpu").predict([photos], quiet=True)
    broken = next(row for row in rows if row.source.name == "broken.jpg")
    assert broken.label is None and broken.probabilities == {} and "cannot be decoded" in broken.error
    assert len(rows) == 5 and sum(row.error is None for row in rows) == 4


def test_load_without_a_path_takes_runs_latest(tiny_run, tmp_path, photos):
    make_checkpoint(tmp_path / "runs" / "newer", seed=1)  # runs/latest now names it
    latest = api.load(runs_dir=tmp_path / "runs", device="cpu")
    assert latest.checkpoint.path.parent.name == "newer" and latest.classes == ["cat", "dog"]
    with pytest.raises(TlkitError, match="no run found"):
        api.load(runs_dir=tmp_path / "elsewhere")


def test_quiet_split_and_finetune_write_nothing(tmp_path, capfd):
    make_flat(tmp_path / "photos", {"cat": 8, "dog": 8})
    data = api.split(tmp_path / "photos", "4", tmp_path / "data", seed=1, mode="copy", quiet=True)
    run = tlkit.finetune(data.out, runs_dir=str(tmp_path / "runs"), name="quiet", quiet=True, **TINY)
    assert capfd.readouterr() == ("", "")
    assert data.counts == {"training": {"cat": 6, "dog": 6}, "validation": {"cat": 2, "dog": 2}}
    assert all(path.stat().st_nlink == 1 for path in data.training.rglob("*.jpg"))  # copies, not links
    assert run.path == tmp_path / "runs" / "quiet" and len(run.history) == 1
    api.split(tmp_path / "photos", "4", tmp_path / "data", seed=1, force=True)  # quiet was restored
    assert "split" in capfd.readouterr().err
    with pytest.raises(TlkitError, match="already exists|already holds"):
        api.split(tmp_path / "photos", "4", tmp_path / "data", quiet=True)
    with pytest.raises(TlkitError, match="mode 'hardlink'"):
        api.split(tmp_path / "photos", "4", tmp_path / "other", mode="hardlink")


def test_every_call_of_the_api_takes_quiet():
    """One way to call the API: every public call, function or Classifier method, takes quiet=False."""
    import inspect

    calls = [call for name, call in [*vars(api).items(), *vars(api.Classifier).items()]
             if inspect.isfunction(call) and call.__module__ == api.__name__ and not name.startswith("_")]
    pure = {api.predictions_frame}  # turns rows into a DataFrame: it prints nothing, so it takes no quiet
    assert len(calls) >= 8 and pure < set(calls)
    for call in set(calls) - pure:
        quiet = inspect.signature(call).parameters.get("quiet")
        assert quiet is not None and quiet.default is False and quiet.kind is quiet.KEYWORD_ONLY, call.__qualname__


def test_quiet_load_evaluate_export_and_models_write_nothing(tiny_run, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(runtime, "LOG_EVERY_S", 0.0)  # stderr is no terminal here: a progress line at each task's end
    folder = make_flat(tmp_path / "labelled", {"cat": 2, "dog": 2})
    api.load(tiny_run, device="cpu").evaluate(folder, out=tmp_path / "heard")
    assert "predicting" in capfd.readouterr().err
    classifier = api.load(tiny_run, device="cpu", quiet=True)
    assert classifier.evaluate(folder, out=tmp_path / "quiet", quiet=True)["images"] == 4
    assert classifier.export("torchscript", tmp_path / "model.pt", quiet=True).is_file()
    assert api.models(quiet=True)
    assert capfd.readouterr() == ("", "")


def test_the_runs_classifier_is_the_reloaded_run(tmp_path):
    data = make_learnable(tmp_path / "data", train_per_class=6, val_per_class=3)
    run = tlkit.finetune(data, runs_dir=str(tmp_path / "runs"), name="api", quiet=True, **TINY)
    assert isinstance(run, tlkit.Run) and run.run_dir == run.path and run.accuracy == run.report["accuracy"]
    reloaded = tlkit.load(run.path, device="cpu")
    folder = data / "validation"
    assert _probabilities(run.classifier.predict(folder)) == pytest.approx(_probabilities(reloaded.predict(folder)))
    assert tlkit.load(run) is run.classifier
    report = run.classifier.evaluate(folder)
    assert report["images"] == 6 and (run.path / "evaluate-validation" / "report.json").is_file()
    with pytest.raises(TlkitError, match="already holds"):
        run.classifier.evaluate(folder)
    assert run.classifier.evaluate(folder, out=tmp_path / "eval", force=True)["accuracy"] == report["accuracy"]


def test_errors_name_the_parameter_from_python_and_the_flag_from_the_command_line(tmp_path, tiny_run, capsys):
    src = make_flat(tmp_path / "photos", {"cat": 4, "dog": 4})
    out = tmp_path / "data"
    with pytest.raises(TlkitError, match=r"^val='half' is neither a count"):
        api.split(src, val="half", out=out)
    assert main(["split", str(src), "--val", "half", "--out", str(out)]) == 1
    assert "--val half is neither a count" in capsys.readouterr().err
    api.split(src, "2", out, quiet=True)
    with pytest.raises(TlkitError, match=r"Use force=True to replace it, or out=DIR to write") as refused:
        api.split(src, "2", out)
    assert "--" not in str(refused.value)
    assert main(["split", str(src), "--val", "2", "--out", str(out)]) == 1
    assert "Use --force to replace it, or --out DIR to write" in capsys.readouterr().err
    data, runs = make_learnable(tmp_path / "learnable", 2, 1), str(tmp_path / "runs")
    with pytest.raises(TlkitError, match=r"^batch_size= must be a whole number 1 or more and at most 1048576, not 0"):
        api.finetune(data, runs_dir=runs, **{**TINY, "batch_size": 0})
    assert main(["finetune", "--data", str(data), "--runs-dir", runs, "--batch-size", "0"]) == 1
    assert "--batch-size must be a whole number 1 or more and at most 1048576, not 0" in capsys.readouterr().err
    with pytest.raises(TlkitError, match=r"^device='tpu' is not a device"):
        api.load(tiny_run, device="tpu")
    with pytest.raises(TlkitError, match=r"Use force=True, or path=FILE"):
        api.load(tiny_run, device="cpu").export("torchscript", tiny_run / "best.json")


def test_warnings_and_advice_name_the_parameter_from_python_and_the_flag_from_the_command_line(tmp_path, capfd):
    """What a run says about its settings (the momentum adamw does not use, the image size a backbone needs, where
    its weights come from) names them as the caller gave them."""
    data, runs = make_learnable(tmp_path / "learnable", 2, 1), str(tmp_path / "runs")
    api.finetune(data, runs_dir=runs, name="python", momentum=0.5, **TINY)
    err = capfd.readouterr().err
    assert "momentum=0.5 is not used" in err and "add optimizer='sgd' to use it" in err
    assert "--" not in err
    flags = ["--backbone", "simple-cnn", "--weights", "none", "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    assert main(["finetune", "--data", str(data), "--runs-dir", runs, "--name", "cli", *flags, "--img-size", "24",
                 "--momentum", "0.5"]) == 0
    err = capfd.readouterr().err
    assert "--momentum 0.5 is not used" in err and "add --optimizer sgd to use it" in err
    with pytest.raises(TlkitError, match=r"add img_size=8 \(or more\)"):
        api.finetune(data, runs_dir=runs, **{**TINY, "img_size": 4})
    assert main(["finetune", "--data", str(data), "--runs-dir", runs, *flags, "--img-size", "4"]) == 1
    assert "add --img-size 8 (or more)" in capfd.readouterr().err
    with naming(PYTHON):  # as inside an API call: the note `weights:` shows when a run starts
        assert "random initialisation (weights='none')" in registry.create("resnet18", 2, weights="none").weights_note
    assert "random initialisation (--weights none)" in registry.create("resnet18", 2, weights="none").weights_note


def test_export_writes_the_model_and_says_where(tiny_run, photos):
    classifier = api.load(tiny_run, device="cpu")
    with pytest.raises(TlkitError, match="not one of onnx, pt2, torchscript"):
        classifier.export("tflite")
    path = classifier.export("torchscript", tiny_run / "model.pt")
    assert path == tiny_run / "model.pt" and path.is_file() and path.with_suffix(".pt.json").is_file()
    with pytest.raises(TlkitError, match="already exists"):
        classifier.export("torchscript", path)
    assert classifier.export("torchscript", path, force=True) == path
    program = classifier.export("pt2")  # beside the checkpoint, as `tlkit export --format pt2`
    assert program == tiny_run / "model.pt2" and program.with_suffix(".pt2.json").is_file()


def test_predictions_frame_needs_pandas(tiny_run, photos, monkeypatch):
    rows = api.load(tiny_run, device="cpu").predict(photos)
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    with pytest.raises(TlkitError, match="pip install pandas"):
        api.predictions_frame(rows)


def test_predictions_frame_with_pandas(tiny_run, photos):
    pytest.importorskip("pandas")
    frame = api.predictions_frame(api.load(tiny_run, device="cpu").predict(photos))
    assert list(frame.columns) == ["source", "label", "confidence", "p_cat", "p_dog", "error"] and len(frame) == 4


def test_models_lists_the_backbones_of_tlkit_models():
    rows = {row["name"]: row for row in api.models()}
    lite = rows["efficientnet_lite0"]
    assert lite["pretrained"] == "package" and lite["input_size"] == (224, 224) and lite["feature_dim"] == 1280
    assert {"resnet18", "simple-cnn"} <= rows.keys()


def test_finetune_takes_every_setting_as_a_typed_keyword():
    import inspect

    from tlkit.config import config_keys

    parameters = inspect.signature(api.finetune).parameters
    own = {"data", "config_file", "resume", "force", "callbacks", "quiet"}
    assert set(parameters) - own == set(config_keys()) - {"data"}
    assert all(parameters[key].kind is inspect.Parameter.KEYWORD_ONLY for key in set(parameters) - {"data"})
    assert parameters["epochs"].annotation == "int | None"


# ---------------------------------------------------------------- what a command reads, the cache and the lr sweep

SMALL = dict(backbone="simple-cnn", weights="none", img_size=24, workers=0, device="cpu")


def _flags(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("--" + key.replace("_", "-"), str(value))]


@pytest.mark.parametrize("command", ["audit", "precompute", "lr-find"])
def test_a_setting_the_command_does_not_read_is_refused_from_python_as_on_the_command_line(tmp_path, command):
    data, out = make_learnable(tmp_path / "data", 2, 1), tmp_path / "out"
    call = {"audit": lambda: api.audit(data, out=out, epochs=3),
            "precompute": lambda: api.precompute(data, cache_dir=str(out), epochs=3),
            "lr-find": lambda: api.lr_find(data, out=out / "lr.png", epochs=3)}[command]
    with pytest.raises(TlkitError, match=rf"^{command} does not read epochs=; it reads .*backbone=, weights="):
        call()
    with pytest.raises(SystemExit) as refused:  # argparse: `unrecognized arguments: --epochs 3`
        main([command, *([str(data)] if command == "audit" else ["--data", str(data)]), "--epochs", "3"])
    assert refused.value.code == 2 and not out.exists()


def test_precompute_is_its_command(tmp_path):
    data = make_learnable(tmp_path / "data", 3, 2)
    assert main(["-q", "precompute", "--data", str(data), "--cache-dir", str(tmp_path / "cli"), *_flags(SMALL)]) == 0
    made = api.precompute(data, cache_dir=str(tmp_path / "api"), quiet=True, **SMALL)
    # The command's cache, found valid for the same settings, holds the features computed here.
    found = api.precompute(data, cache_dir=str(tmp_path / "cli"), quiet=True, **SMALL)
    assert made.backbone.name == found.backbone.name == "simple-cnn" and set(made.sets) == set(found.sets)
    for subset, features in made.sets.items():
        assert features.files == found.sets[subset].files
        assert np.array_equal(features.features, found.sets[subset].features)


def test_lr_find_is_its_command(tmp_path, capsys):
    data = make_learnable(tmp_path / "data", 3, 2)
    sweep = dict(SMALL, batch_size=4)
    assert main(["lr-find", "--data", str(data), "--steps", "3", "--out", str(tmp_path / "cli.png"),
                 *_flags(sweep)]) == 0
    found = api.lr_find(data, out=tmp_path / "api.png", steps=3, quiet=True, **sweep)
    assert f"suggested lr: {found.suggested_lr:.2e}" in capsys.readouterr().out
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "cli.png").read_bytes()
