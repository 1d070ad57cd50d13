"""tlkit.predict and `tlkit predict`: every output format, TTA, top-k, bad files and names."""

import csv
import json

import numpy as np
import pytest
import torch

from tlkit.checkpoint import load_checkpoint
from tlkit.cli import main
from tlkit.decode import ImageBatches
from tlkit.errors import TlkitError
from tlkit.predict import find_images, predict_files, write_predictions
from tlkit.runtime import compute_for

from conftest import write_image, write_large_image


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    for n in (3, 1, 2):
        write_image(folder / f"{n}.jpg", size=(40, 30), color=n)
    write_image(folder / "nested" / "10.png", size=(20, 20), color=10)
    (folder / "notes.txt").write_text("not an image")
    (folder / "4.jpg").write_bytes(b"\xff\xd8 broken")
    return folder


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_probabilities_are_the_models_softmax(tiny_run, photos):
    checkpoint = load_checkpoint(tiny_run)
    found = find_images([photos])
    paths = found.images
    assert found.non_images == 1 and [p.name for p in paths] == ["1.jpg", "2.jpg", "3.jpg", "4.jpg", "10.png"]
    pred = predict_files(checkpoint, paths, compute=compute_for("cpu", "fp32"), batch_size=2)
    assert list(pred.failures) == [3]
    (batch,) = ImageBatches(paths[:1], checkpoint.backbone.preprocessing, device="cpu")
    with torch.inference_mode():
        expected = checkpoint.backbone.model(batch.images).softmax(dim=1).numpy()
    np.testing.assert_allclose(pred.probabilities[0], expected[0], rtol=1e-5)
    assert np.isnan(pred.probabilities[3]).all()


def test_tta_averages_with_the_flipped_view(tiny_run, photos):
    checkpoint = load_checkpoint(tiny_run)
    paths = [photos / "1.jpg"]
    plain = predict_files(checkpoint, paths, compute=compute_for("cpu", "fp32")).probabilities
    tta = predict_files(checkpoint, paths, compute=compute_for("cpu", "fp32"), tta=True).probabilities
    (batch,) = ImageBatches(paths, checkpoint.backbone.preprocessing, device="cpu")
    with torch.inference_mode():
        flipped = checkpoint.backbone.model(batch.images.flip(-1)).softmax(dim=1).numpy()
    np.testing.assert_allclose(tta, (plain + flipped) / 2, rtol=1e-5)


def test_csv_json_and_topk(tiny_run, photos, tmp_path, capsys):
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "p.csv")]) == 0
    rows = _rows(tmp_path / "p.csv")
    assert len(rows) == 5 and set(rows[0]) == {"path", "label", "confidence", "p_cat", "p_dog", "error"}
    broken = next(r for r in rows if r["path"].endswith("4.jpg"))
    assert broken["label"] == "" and "cannot be decoded" in broken["error"]
    good = rows[0]
    assert good["label"] in ("cat", "dog") and abs(float(good["p_cat"]) + float(good["p_dog"]) - 1) < 1e-5
    assert "4.jpg" in capsys.readouterr().err
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "p.json"),
                 "--format", "json", "--topk", "1"]) == 0
    records = json.loads((tmp_path / "p.json").read_text())
    assert len(records[0]["probabilities"]) == 1 and "error" in records[3]


def test_kaggle_format_uses_numeric_ids_and_p_dog(tiny_run, photos, tmp_path):
    (photos / "4.jpg").unlink()
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run), "--format", "kaggle",
                 "--out", str(tmp_path / "sub.csv")]) == 0
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "id,label" and [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "10"]
    csv_out = tmp_path / "p.csv"
    main(["predict", str(photos), "--checkpoint", str(tiny_run), "--out", str(csv_out)])
    p_dog = {r["path"].rsplit("/", 1)[-1].split(".")[0]: float(r["p_dog"]) for r in _rows(csv_out)}
    assert all(abs(float(line.split(",")[1]) - p_dog[line.split(",")[0]]) < 1e-5 for line in lines[1:])


def test_kaggle_id_that_is_not_a_number(tiny_run, tmp_path, capsys):
    write_image(tmp_path / "x" / "cat.5.jpg")
    assert main(["predict", str(tmp_path / "x"), "--checkpoint", str(tiny_run), "--format", "kaggle",
                 "--out", str(tmp_path / "s.csv")]) == 1
    assert "cat.5.jpg" in capsys.readouterr().err


def test_kaggle_id_met_twice_and_a_non_checkpoint_file(tiny_run, tmp_path, capsys):
    write_image(tmp_path / "x" / "1.jpg")
    write_image(tmp_path / "x" / "more" / "1.jpg", color=3)
    assert main(["predict", str(tmp_path / "x"), "--checkpoint", str(tiny_run), "--format", "kaggle",
                 "--out", str(tmp_path / "s.csv")]) == 1
    assert "both id 1" in " ".join(capsys.readouterr().err.split()) and not (tmp_path / "s.csv").exists()
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    assert main(["predict", str(tmp_path / "x"), "--checkpoint", str(tmp_path / "model.onnx")]) == 1
    assert "model.onnx is not a tlkit checkpoint" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("names", [("007.jpg", "7.png"), ("7.jpg", "\u0667.jpg")])
def test_kaggle_ids_are_compared_as_numbers(tiny_run, tmp_path, capsys, names):
    """`007` and `7`, or the Arabic-Indic digit seven and `7`, are one id: one message naming both files."""
    for n, name in enumerate(names):
        write_image(tmp_path / "x" / name, color=n)
    assert main(["predict", str(tmp_path / "x"), "--checkpoint", str(tiny_run), "--format", "kaggle",
                 "--out", str(tmp_path / "s.csv")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "both id 7" in err and all(name in err for name in names) and "Traceback" not in err
    assert not (tmp_path / "s.csv").exists()


def test_a_kaggle_name_of_a_superscript_digit_is_not_an_id(tiny_run, tmp_path, capsys):
    write_image(tmp_path / "x" / "1.jpg")
    write_image(tmp_path / "x" / "\u00b2.jpg", color=2)
    assert main(["predict", str(tmp_path / "x"), "--checkpoint", str(tiny_run), "--format", "kaggle",
                 "--out", str(tmp_path / "s.csv")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "\u00b2.jpg is not one" in err and "Traceback" not in err


def test_a_folder_given_twice_is_predicted_once(tiny_run, photos, tmp_path):
    (photos / "4.jpg").unlink()
    assert main(["predict", str(photos), str(photos / "nested"), str(photos), "--checkpoint", str(tiny_run),
                 "--format", "kaggle", "--out", str(tmp_path / "sub.csv")]) == 0
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    assert lines[0] == "id,label" and [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "10"]


def test_a_named_dotfile_is_predicted_and_hidden_entries_of_a_folder_are_counted(tiny_run, photos, tmp_path, capsys):
    write_image(photos / ".ipynb_checkpoints" / "1-checkpoint.jpg")
    write_image(photos / ".5.jpg", color=5)
    named = write_image(tmp_path / "elsewhere" / ".6.jpg", color=6)
    assert main(["predict", str(photos), str(named), "--checkpoint", str(tiny_run),
                 "--out", str(tmp_path / "p.csv")]) == 0
    predicted = [row["path"] for row in _rows(tmp_path / "p.csv")]
    assert str(named) in predicted and len(predicted) == 6
    assert not any(".ipynb_checkpoints" in path or path.endswith("/.5.jpg") for path in predicted)
    err = " ".join(capsys.readouterr().err.split())
    assert "hidden files and folders passed over (name a file to predict it): 2" in err
    assert ".ipynb_checkpoints" in err and ".5.jpg" in err


def test_an_image_over_the_pixel_limit_is_a_row_with_the_reason_and_pil_never_warns(tiny_run, photos, tmp_path):
    import subprocess
    import sys

    write_large_image(photos / "5.png")
    done = subprocess.run([sys.executable, "-m", "tlkit", "predict", str(photos), "--checkpoint", str(tiny_run),
                           "--out", str(tmp_path / "p.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in _rows(tmp_path / "p.csv")}
    assert len(rows) == 6 and rows["5.png"]["label"] == ""
    assert rows["5.png"]["error"].startswith("is too large to decode safely (over 89,478,485 pixels")
    assert "5.png" in done.stderr and "DecompressionBombWarning" not in done.stderr  # Pillow's raw warning


def test_existing_output_needs_force(tiny_run, photos, tmp_path, capsys):
    target = tmp_path / "p.csv"
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run), "--out", str(target)]) == 0
    earlier = target.read_text()
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run), "--out", str(target)]) == 1
    assert target.read_text() == earlier and "--force" in capsys.readouterr().err
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run), "--out", str(target), "--force"]) == 0
    assert target.read_text().startswith("path,")


def test_latest_run_is_the_default_and_its_absence_is_explained(tiny_run, photos, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(photos)]) == 0
    assert (tmp_path / "predictions.csv").exists()
    assert main(["predict", str(photos), "--runs-dir", "elsewhere"]) == 1
    assert "tlkit finetune" in capsys.readouterr().err


def test_a_checkpoint_for_another_format_is_refused(tiny_run, photos, capsys):
    meta = json.loads((tiny_run / "best.json").read_text())
    (tiny_run / "best.json").write_text(json.dumps({**meta, "format_version": 99, "tlkit_version": "9.0"}))
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_bad_topk_and_no_images(tiny_run, photos, tmp_path):
    pred = predict_files(load_checkpoint(tiny_run), [photos / "1.jpg"], compute=compute_for("cpu"))
    with pytest.raises(TlkitError, match="--topk"):
        write_predictions(pred, tmp_path / "x.csv", topk=5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlkitError, match="no image files"):
        find_images([tmp_path / "empty"])


def test_output_problems_are_found_before_any_prediction(tiny_run, photos, tmp_path, monkeypatch, capsys):
    import tlkit.predict as predict_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("predicted before checking the output")

    monkeypatch.setattr(predict_module, "predict_files", must_not_run)
    (tmp_path / "taken.csv").write_text("mine")
    for extra in (["--out", str(tmp_path / "taken.csv")], ["--topk", "3", "--out", str(tmp_path / "a.csv")]):
        assert main(["predict", str(photos), "--checkpoint", str(tiny_run), *extra]) == 1
    write_image(photos / "cat.5.jpg")
    assert main(["predict", str(photos), "--checkpoint", str(tiny_run), "--format", "kaggle",
                 "--out", str(tmp_path / "k.csv")]) == 1
    assert "cat.5.jpg" in capsys.readouterr().err


def test_writing_predictions_onto_a_folder_says_it_is_a_folder(tiny_run, tmp_path, capsys):
    from tlkit.cli import main

    photo = write_image(tmp_path / "photos" / "a.jpg")
    (tmp_path / "out.csv").mkdir()
    assert main(["predict", str(photo), "--checkpoint", str(tiny_run), "--out", str(tmp_path / "out.csv"),
                 "--force"]) == 1
    err = capsys.readouterr().err
    assert "is a folder: name a file" in err and "--runs-dir" not in err


@pytest.mark.parametrize("fmt", ["csv", "json", "kaggle"])
def test_force_replaces_a_predictions_file_but_never_another_file(tiny_run, tmp_path, capsys, fmt):
    from tlkit.cli import main

    photo = write_image(tmp_path / "photos" / "12.jpg")
    out = tmp_path / f"out.{fmt}"
    command = ["predict", str(photo), "--checkpoint", str(tiny_run), "--out", str(out), "--format", fmt, "--force"]
    assert main(command) == 0 and main(command) == 0  # its own file, replaced
    out.write_text("my thesis notes")
    assert main(command) == 1
    assert "not a predictions file of tlkit's" in capsys.readouterr().err
    assert out.read_text() == "my thesis notes"
