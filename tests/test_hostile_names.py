"""Hostile file names and folder layouts over every command that reads photos or writes paths (issue 30).

A matrix: each FOLDERS row builds one class of names or layouts (bytes that are not UTF-8, spaces, capitals, dots,
255-byte names, links and loops, mixed layouts, one class, nothing; label files with bad rows, a split column, no
header, nothing: the commands that read classes are given the label file); each COMMANDS or API row runs one command on
it. Every case holds the README's promise: exit 0 with the result, or one message (rc 1 or 2) naming what to change;
never a traceback; no input file changed; nothing written outside the command's output folder. A new command is
one more row. Then one test for each fault found on main 6fbdf33.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import make_checkpoint, make_flat, make_foldered, write_image
from tlkit import api, cli
from tlkit.errors import TlkitError
from tlkit.scan import photo_root

ENCODING, ERRORS = "utf-8", "surrogateescape"  # as tlkit.pathtext writes a file name

pytestmark = pytest.mark.usefixtures("one_thread")

NOT_UTF8 = os.fsdecode(b"cat.\xff1.jpg")  # a name written by another system: the byte 0xff is not UTF-8
LONG = "cat." + "x" * (255 - len("cat..jpg")) + ".jpg"  # 255 bytes, the most a file name may hold
QUICK = ["--backbone", "simple-cnn", "--weights", "none", "--img-size", "32", "--device", "cpu", "--workers", "0"]


@dataclass(frozen=True)
class Folder:
    """A class of hostile input: how to build it, and the words of the message where a command must refuse it
    (None: every command takes it)."""

    build: Callable[[Path], None]
    refused: str | None = None
    labels: str | None = None  # a label file under the folder, which the commands that read classes are given
    problems: str | None = None  # what `check --strict` fails on, where every other command passes it over

    def source(self, photos: Path, reads: str) -> Path:
        return photos / self.labels if self.labels and reads != NAMES else photos


def _flat(root: Path, *extra: str) -> None:
    make_flat(root, {"cat": 4, "dog": 4})
    for n, name in enumerate(extra):
        write_image(root / name, color=100 + n)


def _linked(root: Path) -> None:
    make_foldered(root, {"cat": 4, "dog": 3})
    make_foldered(root.parent / "elsewhere", {"more": 2})
    (root / "dog" / "linked").symlink_to(root.parent / "elsewhere" / "more", target_is_directory=True)
    (root / "cat" / "up").symlink_to("..", target_is_directory=True)  # a loop


def _labelled(root: Path, *extra_rows: list[str], header: tuple[str, ...] = ("path", "label")) -> None:
    """_flat's photos with hostile names, listed in root/labels.csv by their class (in photos/ beside it), then
    extra_rows."""
    _flat(root / "photos", NOT_UTF8, "cat.my photo 1.jpg", "dog.狗.jpg", LONG)
    (root / "photos" / ".hidden.jpg").write_bytes((root / "photos" / "cat.0.jpg").read_bytes())
    rows = [[f"photos/{name}", name.split(".")[0], *(["training" if n % 2 else "validation"] if len(header) > 2 else [])]
            for n, name in enumerate(sorted(os.listdir(root / "photos"))) if not name.startswith(".")]
    with open(root / "labels.csv", "w", newline="", encoding=ENCODING, errors=ERRORS) as handle:
        csv.writer(handle).writerows([header, *rows, *extra_rows])


BAD_ROWS = (["photos/none.jpg", "cat"], ["../photos/cat.0.jpg", "cat"], ["/etc/hostname", "dog"], ["photos/cat.1.jpg", ""],
            ["photos/cat.0.jpg", "dog"], ["photos/dog.0.jpg", "dog"],
            ["photos/.hidden.jpg", "cat"], ["photos/dog.2.jpg", "d\udce9g"], ["photos/dog.3.jpg"])
# (A cell of several labels, `cat|dog`, stops a split not told --multi-label: tests/test_multilabel.py.)
# Each label file's folder holds its photos, so that the commands that read no classes (predict, export) run.
LABEL_FILES = {
    "label-file-bad-rows": Folder(lambda root: _labelled(root, *BAD_ROWS), labels="labels.csv", problems="left out"),
    "label-file-split-column": Folder(lambda root: _labelled(root, header=("path", "label", "split")),
                                      labels="labels.csv"),
    "label-file-no-header": Folder(lambda root: (_labelled(root), (root / "labels.csv").write_text("a.jpg,cat\n")),
                                   refused="has no column path nor label", labels="labels.csv"),
    "label-file-empty": Folder(lambda root: (_labelled(root), (root / "labels.csv").write_bytes(b"")),
                               refused="is empty", labels="labels.csv"),
    "label-file-one-class": Folder(lambda root: (_labelled(root), (root / "labels.csv").write_text(
        "path,label\nphotos/cat.0.jpg,cat\nphotos/cat.1.jpg,cat\n")), refused="class", labels="labels.csv"),
}

FOLDERS = {
    "not-utf8": Folder(lambda root: _flat(root, NOT_UTF8, os.fsdecode(b"dog.\xfe2.jpg"))),
    "spaces": Folder(lambda root: _flat(root, "cat.my photo 1.jpg", "dog.copy of 2 .jpg")),
    "unicode": Folder(lambda root: _flat(root, "cat.ünï 1.jpg", "dog.狗.jpg", "cat.\u200b2.jpg")),
    "leading-dots": Folder(lambda root: _flat(root, ".cat.9.jpg", ".ipynb_checkpoints/cat.8.jpg")),
    "255-byte-name": Folder(lambda root: _flat(root, LONG)),
    "class-in-capitals": Folder(lambda root: _flat(root, "Cat.10.jpg"), refused="'Cat'"),
    "class-with-a-space": Folder(lambda root: _flat(root, "dog .20.jpg"), refused="'dog '"),
    "stray-subfolders": Folder(lambda root: _flat(root, "old/a.jpg", "tmp/b.jpg"), refused="subfolder(s) of images"),
    "loose-photos-beside-class-folders": Folder(
        lambda root: (make_foldered(root, {"cat": 4, "dog": 4}), write_image(root / "cat.9.jpg")),
        refused="named by class"),
    "links-and-a-loop": Folder(_linked),
    "one-class": Folder(lambda root: make_flat(root, {"cat": 4}), refused="class"),
    "empty": Folder(lambda root: root.mkdir(), refused="empty"),
    **LABEL_FILES,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "runs" / "tiny")


def _split_then(command: str, data_flag: str, work: Path, photos: Path) -> int:
    """split the photos into OUT/data, then the command on it (finetune and train read a split)."""
    code = cli.main(["split", str(photos), "--val", "0.5", "--out", str(work / "out" / "data")])
    quick = ["--model" if arg == "--backbone" else arg for arg in QUICK] if command == "train" else QUICK
    return code or cli.main([command, data_flag, str(work / "out" / "data"), "--runs-dir", str(work / "out" / "runs"),
                             "--epochs", "1", "--batch-size", "4", *quick])


# What a command makes of the photos' classes: CLASSES needs two or more, LABELS reads them (evaluate scores a
# folder of one class), NAMES reads none (predict, export).
CLASSES, LABELS, NAMES = "classes", "labels", "names"
# Each command: (how to run it on the photos, what it makes of their classes). Everything it writes goes under
# work/out; the model it reads is the module's tiny run.
COMMANDS = {
    "check": (lambda work, photos, model: cli.main(["check", str(photos), "--strict"]), CLASSES),
    "split": (lambda work, photos, model: cli.main(["split", str(photos), "--val", "0.5", "--out",
                                                    str(work / "out")]), CLASSES),
    "audit": (lambda work, photos, model: cli.main(["audit", str(photos), "--out", str(work / "out" / "audit"),
                                                    "--cache-dir", str(work / "out" / "cache"), *QUICK]), CLASSES),
    "finetune": (lambda work, photos, model: _split_then("finetune", "--data", work, photos), CLASSES),
    "train": (lambda work, photos, model: _split_then("train", "--dataset", work, photos), CLASSES),
    "predict": (lambda work, photos, model: cli.main(["predict", str(photos), "--checkpoint", str(model), "--out",
                                                      str(work / "out" / "p.csv"), "--device", "cpu"]), NAMES),
    "evaluate": (lambda work, photos, model: cli.main(["evaluate", str(photos), "--checkpoint", str(model), "--out",
                                                       str(work / "out" / "ev"), "--device", "cpu"]), LABELS),
    "export": (lambda work, photos, model: cli.main(["export", "--format", "torchscript", "--checkpoint", str(model),
                                                     "--out", str(work / "out" / "m.pt"), "--images", str(photos)]),
               NAMES),
}


def _api_finetune(work: Path, photos: Path, model: Path) -> None:
    """api.split, api.finetune, then the run's Classifier: predict, evaluate and export (on its validation photos)."""
    data = api.split(photos, val="0.5", out=work / "out" / "data", quiet=True)
    run = api.finetune(data.out, backbone="simple-cnn", weights="none", img_size=32, epochs=1, batch_size=4,
                       device="cpu", workers=0, runs_dir=str(work / "out" / "runs"), quiet=True)
    classifier = api.load(run, device="cpu")
    assert len(classifier.predict(photo_root(photos), quiet=True)) >= 8  # a label file's folder: predict reads no CSV
    assert "accuracy" in classifier.evaluate(data.validation, out=work / "out" / "ev")
    assert classifier.export("torchscript", work / "out" / "m.pt").is_file()


API = {
    "split": (lambda work, photos, model: api.split(photos, val="0.5", out=work / "out", quiet=True), CLASSES),
    "audit": (lambda work, photos, model: api.audit(photos, out=work / "out" / "audit", backbone="simple-cnn",
                                                    weights="none", img_size=32, device="cpu", workers=0,
                                                    cache_dir=str(work / "out" / "cache"), quiet=True), CLASSES),
    "finetune-predict-evaluate-export": (_api_finetune, CLASSES),
    "load-predict": (lambda work, photos, model: api.load(model, device="cpu").predict(photos, quiet=True), NAMES),
}


def snapshot(work: Path) -> dict[bytes, tuple]:
    """Every entry under work but work/out, links not followed: (kind, content hash or link target)."""
    entries = {}
    for parent, folders, files in os.walk(os.fsencode(work)):
        if parent == os.fsencode(work):
            folders[:] = [name for name in folders if name != b"out"]
        for name in folders + files:
            path = os.path.join(parent, name)
            if os.path.islink(path):
                entries[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                entries[path] = ("folder",)
            else:
                with open(path, "rb") as handle:
                    entries[path] = ("file", hashlib.sha1(handle.read()).hexdigest())
    return entries


def _expect(name: str, reads: str) -> str | None:
    """The words of the one message the case must end with, or None for a success."""
    if name == "empty":
        return "no image files" if reads == NAMES else "empty"
    if name in ("one-class", "label-file-one-class"):
        return FOLDERS[name].refused if reads == CLASSES else None
    return None if reads == NAMES else FOLDERS[name].refused


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_every_command_on_every_hostile_folder_succeeds_or_says_one_thing(name, command, tmp_path, tiny_model,
                                                                         capsys):
    folder, (run, reads) = FOLDERS[name], COMMANDS[command]
    photos = tmp_path / "photos"
    folder.build(photos)
    before = snapshot(tmp_path)
    try:
        code = run(tmp_path, folder.source(photos, reads), tiny_model)
    except SystemExit as exit_info:  # argparse's own refusal
        code = exit_info.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = _expect(name, reads)
    if name == "one-class" and command == "check":
        assert code == 1 and "one class only" in err  # --strict fails on it
    elif folder.problems and command == "check":
        assert code == 1 and folder.problems in err and "problem(s)" in err, err
    elif expected is None:
        assert code == 0, err
    else:
        assert code in (1, 2) and err.count("error:") == 1 and expected in err, err
    assert snapshot(tmp_path) == before, "an input file changed, or something was written outside out/"


@pytest.mark.parametrize("call", sorted(API))
@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_every_api_call_on_every_hostile_folder_returns_or_raises_one_tlkit_error(name, call, tmp_path, tiny_model):
    folder, (run, reads) = FOLDERS[name], API[call]
    photos = tmp_path / "photos"
    folder.build(photos)
    before = snapshot(tmp_path)
    expected = _expect(name, reads)
    if expected is None:
        run(tmp_path, folder.source(photos, reads), tiny_model)
    else:
        with pytest.raises(TlkitError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            run(tmp_path, folder.source(photos, reads), tiny_model)
    assert snapshot(tmp_path) == before, "an input file changed, or something was written outside out/"


# ---------------------------------------------------------------- the faults found on main 6fbdf33


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding=ENCODING, errors=ERRORS) as handle:
        return list(csv.DictReader(handle))


def test_split_writes_a_name_that_is_not_utf8_as_its_bytes(tmp_path):
    _flat(tmp_path / "photos", NOT_UTF8)
    assert cli.main(["split", str(tmp_path / "photos"), "--val", "0.5", "--out", str(tmp_path / "data")]) == 0
    row = next(row for row in _rows(tmp_path / "data" / "split.csv") if row["source"] == NOT_UTF8)
    assert os.fsencode(row["source"]) == b"cat.\xff1.jpg"
    assert (tmp_path / "photos" / row["source"]).read_bytes() == (tmp_path / "data" / row["destination"]).read_bytes()


def test_a_split_that_fails_leaves_no_empty_folder(tmp_path, monkeypatch):
    from tlkit import split

    _flat(tmp_path / "photos")
    monkeypatch.setattr(split, "_write_manifest", lambda plan, path: (_ for _ in ()).throw(TlkitError("stop")))
    assert cli.main(["split", str(tmp_path / "photos"), "--val", "0.5", "--out", str(tmp_path / "data")]) == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_predictions_name_a_file_that_is_not_utf8_so_that_it_opens(fmt, tmp_path, tiny_model):
    _flat(tmp_path / "photos", NOT_UTF8)
    out = tmp_path / f"p.{fmt}"
    assert cli.main(["predict", str(tmp_path / "photos"), "--checkpoint", str(tiny_model), "--out", str(out),
                     "--format", fmt, "--device", "cpu"]) == 0
    paths = ([row["path"] for row in _rows(out)] if fmt == "csv"
             else [row["path"] for row in json.loads(out.read_text(encoding="ascii"))])
    named = [path for path in paths if path.endswith(NOT_UTF8)]
    assert len(named) == 1 and Path(named[0]).read_bytes() == (tmp_path / "photos" / NOT_UTF8).read_bytes()
    # and --force knows the file as a predictions file of tlkit's
    assert cli.main(["predict", str(tmp_path / "photos"), "--checkpoint", str(tiny_model), "--out", str(out),
                     "--format", fmt, "--device", "cpu", "--force"]) == 0


def test_audit_csv_keeps_a_name_that_is_not_utf8_and_exclude_reads_it_back(tmp_path, capsys):
    photos = tmp_path / "photos"
    _flat(photos, NOT_UTF8)
    assert cli.main(["audit", str(photos), "--out", str(tmp_path / "audit"), "--cache-dir", str(tmp_path / "cache"),
                     *QUICK]) == 0
    review = tmp_path / "review.csv"  # the reviewed list: exclude the photo of the odd name
    with open(review, "w", newline="", encoding=ENCODING, errors=ERRORS) as handle:
        csv.writer(handle).writerows([["path", "action"], [NOT_UTF8, "exclude"]])
    assert cli.main(["split", str(photos), "--val", "0.5", "--out", str(tmp_path / "data"),
                     "--exclude", str(review)]) == 0
    assert NOT_UTF8 not in {row["source"] for row in _rows(tmp_path / "data" / "split.csv")}
    assert {row["path"] for row in _rows(tmp_path / "audit" / "audit.csv")} <= {p.name for p in photos.iterdir()}
    page = (tmp_path / "audit" / "audit.html").read_bytes().decode("utf-8")  # valid UTF-8: the name is escaped
    assert "Traceback" not in capsys.readouterr().err and "\\udc" not in page


def test_evaluate_shows_a_mistake_of_a_name_that_is_not_utf8_escaped(tmp_path, tiny_model):
    photos = tmp_path / "photos"
    _flat(photos, NOT_UTF8, os.fsdecode(b"dog.\xfe2.jpg"))
    assert cli.main(["evaluate", str(photos), "--checkpoint", str(tiny_model), "--out", str(tmp_path / "ev"),
                     "--device", "cpu"]) == 0
    page = (tmp_path / "ev" / "mistakes.html").read_bytes().decode("utf-8")
    assert "\\xff1.jpg" in page or "\\xfe2.jpg" in page  # one of the two is a mistake, whatever the model says


def test_photos_named_by_class_beside_stray_subfolders_are_one_message(tmp_path, capsys):
    _flat(tmp_path / "photos", "old/a.jpg", "tmp/b.jpg")
    assert cli.main(["split", str(tmp_path / "photos"), "--val", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "8 photo(s) named by class" in err and "old/, tmp/" in err and "Move the subfolders out" in err
    assert not (tmp_path / "training").exists()


def test_class_names_differing_in_capitals_or_spaces_are_one_message(tmp_path, capsys):
    _flat(tmp_path / "photos", "Cat.10.jpg", "dog .20.jpg")
    assert cli.main(["check", str(tmp_path / "photos")]) == 1
    err = capsys.readouterr().err
    assert "'Cat' (1 file(s), such as Cat.10.jpg) and 'cat' (4 file(s)" in err and "'dog ' (1 file(s)" in err
    assert "no problems found" not in err and err.count("error:") == 1


def test_class_folders_differing_in_capitals_are_refused_by_training_too(tmp_path, capsys):
    make_foldered(tmp_path / "data" / "training", {"cat": 2, "Cat": 2, "dog": 2})
    make_foldered(tmp_path / "data" / "validation", {"cat": 1, "Cat": 1, "dog": 1})
    assert cli.main(["finetune", "--data", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), *QUICK]) == 1
    assert "'Cat'" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_predict_follows_a_linked_folder_and_names_a_loop(tmp_path, tiny_model, capsys):
    _linked(tmp_path / "photos")
    assert cli.main(["predict", str(tmp_path / "photos"), "--checkpoint", str(tiny_model), "--out",
                     str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    paths = [row["path"] for row in _rows(tmp_path / "p.csv")]
    assert len(paths) == 9 and sum("/linked/" in path for path in paths) == 2
    err = capsys.readouterr().err
    assert "links to a folder already searched" in err and "cat/up" in err


def test_out_dash_writes_predictions_to_stdout_as_their_bytes(tmp_path, tiny_model):
    _flat(tmp_path / "photos", NOT_UTF8)
    done = subprocess.run([sys.executable, "-m", "tlkit", "predict", "photos", "--checkpoint", str(tiny_model),
                           "--out", "-", "--device", "cpu"], cwd=tmp_path, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"path,label,confidence,") and b"photos/cat.\xff1.jpg," in done.stdout
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("command", [
    ["evaluate", "photos", "--checkpoint", "MODEL"], ["export", "--format", "onnx", "--checkpoint", "MODEL"],
    ["audit", "photos"], ["lr-find", "--data", "photos"], ["split", "photos", "--val", "0.5"]])
def test_out_dash_is_refused_where_the_output_is_not_one_stream(command, tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _flat(tmp_path / "photos")
    args = [str(tiny_model) if arg == "MODEL" else arg for arg in command]
    assert cli.main([*args, "--out", "-"]) == 1
    err = capsys.readouterr().err
    assert "--out - means standard output" in err and err.count("error:") == 1
    assert not (tmp_path / "-").exists()


def test_out_dash_from_python_names_the_parameter(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a file named `-` would land
    with pytest.raises(TlkitError, match=r"path='-' means standard output"):
        api.load(tiny_model, device="cpu").export("torchscript", "-")
    assert not (tmp_path / "-").exists()


def test_a_multi_label_file_of_hostile_names_splits_trains_predicts_and_evaluates(tmp_path, capsys):
    """Names not UTF-8, with commas, quotes, spaces and 255 bytes, in a label file of several labels a photo: the
    split's own labels.csv keeps each name's bytes, so every later step opens the same photos (tlkit/multilabel.py)."""
    names = [NOT_UTF8, "cat.my photo, 1.jpg", 'dog."quoted" 2.jpg', LONG, "dog.狗 3.jpg", "cat.ünï 4.jpg"]
    _flat(tmp_path / "photos", *names)
    rows = [(path.name, "cat|dog" if n % 3 == 0 else path.name.split(".")[0])
            for n, path in enumerate(sorted((tmp_path / "photos").iterdir()))]
    with open(tmp_path / "photos" / "labels.csv", "w", newline="", encoding=ENCODING, errors=ERRORS) as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["split", str(tmp_path / "photos" / "labels.csv"), "--val", "0.4", "--multi-label", "--out",
                     str(out / "data")]) == 0
    assert cli.main(["finetune", "--data", str(out / "data"), "--runs-dir", str(out / "runs"), "--epochs", "1",
                     "--batch-size", "4", *QUICK]) == 0
    assert cli.main(["predict", str(tmp_path / "photos"), "--out", str(out / "p.csv"), "--runs-dir",
                     str(out / "runs"), "--device", "cpu"]) == 0
    assert cli.main(["evaluate", str(out / "data" / "validation"), "--out", str(out / "ev"), "--runs-dir",
                     str(out / "runs"), "--device", "cpu"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    predicted = {Path(row["path"]).name for row in _rows(out / "p.csv")}
    assert {NOT_UTF8, LONG, 'dog."quoted" 2.jpg'} <= predicted and len(predicted) == len(rows)
    listed = {Path(row["path"]).name for subset in ("training", "validation")
              for row in _rows(out / "data" / subset / "labels.csv")}
    assert listed == {name for name, _ in rows}
    assert snapshot(tmp_path) == before, "an input file changed, or something was written outside out/"
