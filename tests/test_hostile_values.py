"""Hostile values and images over every command and the public API: every numeric flag (read off the CLI's
own parser, so a new flag is a new row) at negative, zero, huge, NaN, infinite and text; images with no
pixels, one pixel, 16 bits, CMYK, several frames, truncated or not images at all; NaN tensors. Each case is
one message naming the setting (exit 1 or 2; TlkitError from Python) or the work going on, never a
traceback, and no input file changed."""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_checkpoint, make_flat, make_learnable, write_image
from tlkit import api, cli
from tlkit.config import setting_kind
from tlkit.errors import TlkitError

HOSTILE = ("-1", "0", "1e30", "nan", "inf", "abc")
ALWAYS_REFUSED = ("-1", "nan", "inf", "abc")  # no numeric flag of tlkit's takes these
TEXT_NUMBERS = ("val", "mean", "std", "input")  # flags read as text and checked as numbers by their command


class Reached(Exception):
    """Raised where a command's first real work starts: every check before it passed."""


# Where each command's work starts (module, name): replaced by a stub that raises Reached.
FIRST_WORK = {
    "split": ("tlkit.split", "scan_with_progress"), "audit": ("tlkit.auditing", "gather_features"),
    "finetune": ("tlkit.finetuning", "create_backbone"), "train": ("tlkit.finetuning", "create_backbone"),
    "lr-find": ("tlkit.lrfind", "create_backbone"), "precompute": ("tlkit.run_backbone", "create_backbone"),
    "predict": ("tlkit.checkpoint", "for_inference"), "evaluate": ("tlkit.checkpoint", "for_inference"),
    "export": ("tlkit.export", "sample_images"), "summary": ("tlkit.summary", "summarize"),
    "models": ("tlkit.models", "listed"),
}


def stop_at_first_work(monkeypatch, command: str, places: dict = FIRST_WORK) -> None:
    """The command's first work (places[command]) replaced by a stub that raises Reached."""
    import importlib

    def reached(*args, **kwargs):
        raise Reached

    module, name = places[command]
    monkeypatch.setattr(importlib.import_module(module), name, reached)


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with its bytes' hash: what must not change."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(Path(root).rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A flat folder of photos, a label file of them, a split folder and a tiny run: the inputs of every command."""
    root = tmp_path_factory.mktemp("hostile")
    make_flat(root / "flat", {"cat": 4, "dog": 4})
    (root / "labels.csv").write_text("path,label\n" + "".join(f"flat/{label}.{n}.jpg,{label}\n" for label in ("cat", "dog")
                                                              for n in range(4)))
    make_learnable(root / "data", 3, 2, size=16)
    make_checkpoint(root / "runs" / "tiny")
    return root


def base_argv(command: str, root: Path) -> list[str]:
    """A command line that would run, given the one flag under test after it."""
    out = str(root / "out" / command)
    run = ["--checkpoint", str(root / "runs" / "tiny"), "--device", "cpu"]
    return {
        "split": ["split", str(root / "flat"), "--val", "2", "--out", out],
        "audit": ["audit", str(root / "data"), "--out", out, "--device", "cpu"],
        "finetune": ["finetune", "--data", str(root / "data"), "--runs-dir", out, "--device", "cpu"],
        "train": ["train", "--dataset", str(root / "data" / "training"), "--model", "simple-cnn", "--runs-dir", out,
                  "--device", "cpu"],
        "lr-find": ["lr-find", "--data", str(root / "data"), "--out", out + ".png", "--device", "cpu"],
        "precompute": ["precompute", "--data", str(root / "data"), "--cache-dir", out, "--device", "cpu", "--backbone",
                       "simple-cnn", "--weights", "none"],
        "predict": ["predict", str(root / "flat"), "--out", out + ".csv", *run],
        "evaluate": ["evaluate", str(root / "data" / "validation"), "--out", out, *run],
        "export": ["export", "--format", "onnx", "--out", out + ".onnx", "--checkpoint", str(root / "runs" / "tiny")],
        "summary": ["summary", "simple-cnn"],
        "models": ["models"],
    }[command]


def _is_numeric(action: argparse.Action) -> bool:
    if not action.option_strings or action.choices or action.nargs not in (None,):
        return False
    if "_number" in getattr(action.type, "__qualname__", ""):
        return True
    if action.dest in TEXT_NUMBERS:
        return True
    try:
        return setting_kind(action.dest)[0] in (int, float)
    except KeyError:
        return False


def numeric_flags() -> list[tuple[str, str]]:
    """(command, flag) of every numeric flag of every command, read off cli.build_parser()."""
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [(name, action.option_strings[-1]) for name, parser in commands.choices.items()
            for action in parser._actions if _is_numeric(action)]


FLAGS = numeric_flags()


def test_the_matrix_covers_every_command_with_numbers():
    assert {command for command, _ in FLAGS} == set(FIRST_WORK) - {"export"}  # export takes no number
    assert ("split", "--seed") in FLAGS and ("lr-find", "--end-lr") in FLAGS and ("train", "--std") in FLAGS


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("command, flag", FLAGS)
def test_a_hostile_number_is_one_message_naming_its_flag(place, monkeypatch, capsys, command, flag, value):
    stop_at_first_work(monkeypatch, command)
    before = tree_digest(place / "flat"), tree_digest(place / "data")
    try:
        code = cli.main([*base_argv(command, place), flag, value])
    except SystemExit as exited:  # argparse: `tlkit X: error: argument --flag: ...`
        code = exited.code
    except Reached:
        code = None
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    assert (tree_digest(place / "flat"), tree_digest(place / "data")) == before
    if code is None:
        assert value not in ALWAYS_REFUSED, f"{command} {flag} {value} was taken"
        return
    assert code in (1, 2) and flag in err, err


# The public API: each function's numeric parameters at the same values, as Python gives them.
PY_HOSTILE = (-1, 0, 1e30, math.nan, math.inf, "abc")


def api_calls(place: Path):
    out = place / "out" / "api"
    return {
        "split seed": lambda v: api.split(place / "flat", val="2", out=out, seed=v),
        "split val": lambda v: api.split(place / "flat", val=v, out=out),
        "finetune epochs": lambda v: api.finetune(place / "data", runs_dir=str(out), device="cpu", epochs=v),
        "finetune lr": lambda v: api.finetune(place / "data", runs_dir=str(out), device="cpu", lr=v),
        "finetune img_size": lambda v: api.finetune(place / "data", runs_dir=str(out), device="cpu", img_size=v),
        "audit similarity": lambda v: api.audit(place / "data", out=out, device="cpu", similarity=v),
        "audit batch_size": lambda v: api.audit(place / "data", out=out, device="cpu", batch_size=v),
        "predict batch_size": lambda v: api.load(place / "runs" / "tiny", device="cpu").predict(
            place / "flat", batch_size=v),
    }


@pytest.mark.parametrize("value", PY_HOSTILE, ids=str)
@pytest.mark.parametrize("call", ["split seed", "split val", "finetune epochs", "finetune lr", "finetune img_size",
                                  "audit similarity", "audit batch_size", "predict batch_size"])
def test_a_hostile_number_given_to_the_api_is_a_tlkit_error_naming_the_parameter(place, monkeypatch, call, value):
    stop_at_first_work(monkeypatch, {"split": "split", "finetune": "finetune", "audit": "audit",
                                     "predict": "predict"}[call.split()[0]])
    parameter = call.split()[1]
    try:
        api_calls(place)[call](value)
    except TlkitError as error:
        assert f"{parameter}=" in str(error)
        return
    except Reached:
        assert not (isinstance(value, str) or value < 0 or not math.isfinite(value)), f"{call}={value!r} was taken"
        return
    assert call == "predict batch_size" and value == 1e30, f"{call}={value!r} ran"


@pytest.mark.parametrize("call", [
    lambda place: api.split(123), lambda place: api.split(place / "flat", val="2", out=4.5),
    lambda place: api.split(place / "flat", val="2", force="no"), lambda place: api.audit(None),
    lambda place: api.finetune(place / "data", config_file=3), lambda place: api.load(42),
    lambda place: api.load(place / "runs" / "tiny", device="cpu").evaluate(["a"]),
    lambda place: api.load(place / "runs" / "tiny", device="cpu").export("onnx", path=1),
], ids=["split-src", "split-out", "split-force", "audit-data", "finetune-config", "load", "evaluate", "export"])
def test_a_wrong_type_given_to_the_api_is_a_tlkit_error_naming_the_parameter(place, call):
    with pytest.raises(TlkitError, match=r"^\w+= must be (a path|True or False)"):
        call(place)


# ---------------------------------------------------------------- the examples of issue 30 that failed on main


def test_split_seed_minus_one_is_one_message(place, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*base_argv("split", place), "--seed", "-1", "--dry-run"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--seed: must be a whole number 0 or more" in err and "Traceback" not in err


def test_split_val_one_point_zero_is_refused_as_ambiguous(place, capsys):
    assert cli.main([*base_argv("split", place), "--val", "1.0", "--dry-run"]) == 1
    assert "--val 1.0 is ambiguous: write 1 for one validation image, or a fraction" in capsys.readouterr().err
    with pytest.raises(TlkitError, match=r"val='1.0' is ambiguous"):
        api.split(place / "flat", val=1.0, out=place / "out" / "ambiguous")


@pytest.mark.parametrize("content, words", [(b"\xff\xfe\x00epochs: 1", "is not a text file in UTF-8"),
                                            (b"\x00\x01\x02\x03", "is not valid YAML"),
                                            (b"", "holds no settings"), (b"# only a comment\n", "holds no settings")],
                         ids=["utf16", "binary", "empty", "comments"])
def test_a_config_file_that_is_not_settings_is_one_message_naming_it(place, tmp_path, capsys, content, words):
    config = tmp_path / "settings.yaml"
    config.write_bytes(content)
    assert cli.main([*base_argv("finetune", place), "--config", str(config)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "settings.yaml" in err and words in err and "Traceback" not in err


def test_api_split_of_a_number_names_src():
    with pytest.raises(TlkitError, match=r"^src= must be a path \(a str or pathlib.Path\), not int 123"):
        api.split(123)


# ---------------------------------------------------------------- images


@pytest.fixture(scope="module")
def classifier(place):
    return api.load(place / "runs" / "tiny", device="cpu")


def _animated() -> Image.Image:
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    path = Path(__import__("tempfile").mkdtemp()) / "moving.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return Image.open(path)


PIL_IMAGES = {  # name: (image, whether it is something to label)
    "0x0": (lambda: Image.new("RGB", (0, 0)), False), "0x5": (lambda: Image.new("L", (0, 5)), False),
    "1x1": (lambda: Image.new("RGB", (1, 1), "white"), True), "16-bit": (lambda: Image.new("I;16", (8, 8), 300), True),
    "CMYK": (lambda: Image.new("CMYK", (8, 8)), True), "animated GIF": (_animated, True),
    "RGBA": (lambda: Image.new("RGBA", (8, 8)), True), "palette": (lambda: Image.new("P", (8, 8)), True),
}


@pytest.mark.parametrize("name", PIL_IMAGES)
def test_a_hostile_pil_image_is_labelled_or_a_row_with_its_error(classifier, name):
    make, labelled = PIL_IMAGES[name]
    rows = classifier.predict([Image.new("RGB", (8, 8)), make()])
    assert rows[0].label is not None and rows[0].error is None  # the good image beside it is still labelled
    assert (rows[1].label is not None, rows[1].error is None) == (labelled, labelled), rows[1]


def test_an_image_with_no_pixels_is_a_row_with_its_error(classifier):
    row = classifier.predict(Image.new("RGB", (0, 0)))[0]
    assert row.label is None and row.confidence is None and "0x0: it has no pixels" in row.error


def test_a_nan_tensor_gets_no_label(classifier):
    batch = torch.zeros(3, 3, 32, 32)
    batch[1, 0, 5, 5], batch[2] = math.nan, math.inf
    rows = classifier.predict(batch)
    assert rows[0].label is not None
    assert [row.label for row in rows[1:]] == [None, None] and all("NaN or infinite" in row.error for row in rows[1:])


@pytest.mark.parametrize("tensor, words", [
    (torch.zeros(1, 3, 0, 0, dtype=torch.uint8), "holds images with no pixels"),
    (torch.zeros(1, 1, 32, 32), r"must be \[N, 3, H, W\]"), (torch.zeros(2, 5, 32, 32), r"must be \[N, 3, H, W\]"),
    (torch.zeros(3, 32, 32), r"must be \[N, 3, H, W\]"), (torch.zeros(1, 3, 31, 32), "model's input size"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.int64), "model's input size"),
], ids=["0x0", "1-channel", "5-channels", "3-dims", "float-size", "int64"])
def test_a_tensor_of_the_wrong_shape_is_one_message(classifier, tensor, words):
    with pytest.raises(TlkitError, match=words):
        classifier.predict(tensor)


def test_weights_that_give_nan_label_nothing(place, tmp_path):
    """A model whose scores are NaN (damaged weights): every row an error, in the API and `tlkit predict`."""
    broken = api.load(place / "runs" / "tiny", device="cpu")
    with torch.no_grad():
        for parameter in broken.checkpoint.backbone.model.parameters():
            parameter.fill_(math.nan)
    rows = broken.predict(place / "flat")
    assert rows and all(row.label is None and "no finite score" in row.error for row in rows)


def hostile_files(folder: Path) -> dict[str, bool]:
    """Files of every awkward kind in folder, each with whether it is an image to label."""
    write_image(folder / "cat.1x1.png", size=(1, 1))
    Image.new("I;16", (8, 8), 4000).save(folder / "cat.sixteen.png")
    write_image(folder / "dog.cmyk.jpg", mode="CMYK")
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    frames[0].save(folder / "dog.moving.gif", save_all=True, append_images=frames[1:])
    whole = write_image(folder / "cat.whole.jpg", size=(32, 32)).read_bytes()
    (folder / "dog.truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "cat.text.jpg").write_text("not an image")
    (folder / "dog.empty.png").write_bytes(b"")
    return {"cat.1x1.png": True, "cat.sixteen.png": True, "dog.cmyk.jpg": True, "dog.moving.gif": True,
            "cat.whole.jpg": True, "dog.truncated.jpg": False, "cat.text.jpg": False, "dog.empty.png": False}


def test_hostile_files_listed_in_a_label_file_are_split_or_listed_with_their_error(tmp_path, capsys):
    expected = hostile_files(tmp_path / "photos")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"photos/{name},{name.split('.')[0]}\n" for name in expected))
    before = tree_digest(tmp_path)
    assert cli.main(["check", str(labels)]) == 0
    assert cli.main(["split", str(labels), "--val", "0.3", "--out", str(tmp_path / "split"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dog.truncated.jpg" in err and "dog.empty.png" in err
    assert tree_digest(tmp_path) == before


def test_hostile_files_are_labelled_or_rows_with_their_error_in_every_command(place, tmp_path, capsys, classifier):
    photos = tmp_path / "photos"
    expected = hostile_files(photos)
    before = tree_digest(photos)
    rows = {Path(row.source).name: row for row in classifier.predict(photos)}
    assert {name: row.label is not None for name, row in rows.items()} == expected
    assert all((row.error is None) == expected[name] for name, row in rows.items())
    assert cli.main(["predict", str(photos), "--out", str(tmp_path / "p.csv"), "--checkpoint",
                     str(place / "runs" / "tiny"), "--device", "cpu"]) == 0
    written = (tmp_path / "p.csv").read_text()
    assert all((name in written) for name in expected)
    assert cli.main(["check", str(photos)]) == 0
    assert cli.main(["split", str(photos), "--val", "0.3", "--out", str(tmp_path / "split"), "--dry-run"]) in (0, 1)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dog.truncated.jpg" in err
    assert tree_digest(photos) == before
