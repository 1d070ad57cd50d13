"""A label file (labels.csv: path,label[,split]) as a dataset: its rows read once (tlkit.labelfile, tlkit.scan),
each bad row one sentence, and every command that takes a folder of classes taking it too, from the CLI and
from Python."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from conftest import make_checkpoint, make_flat, write_image
from tlkit import api, cli
from tlkit.errors import TlkitError
from tlkit.labelfile import GIVEN_SUBSETS, read_label_file, row_labels
from tlkit.scan import list_dataset
from tlkit.split import SUBSETS

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--backbone", "simple-cnn", "--weights", "none", "--img-size", "32", "--device", "cpu", "--workers", "0"]


def write_labels(path: Path, rows: list[list[str]], header: tuple[str, ...] = ("path", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        csv.writer(handle).writerows([list(header), *rows])
    return path


def labelled_photos(root: Path, counts: dict[str, int]) -> Path:
    """root/photos/<n>.jpg of each class (names that carry no class) and root/labels.csv naming their classes."""
    flat = make_flat(root / "flat", counts)
    rows = []
    for index, photo in enumerate(sorted(flat.iterdir())):
        target = root / "photos" / f"{index}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(photo, target)
        rows.append([f"photos/{index}.jpg", photo.name.split(".")[0]])
    return write_labels(root / "labels.csv", rows)


def test_the_split_subsets_are_the_ones_a_split_column_takes():
    assert GIVEN_SUBSETS == SUBSETS


def test_a_label_cell_gives_one_label_and_refuses_several_unless_multi_label():
    assert row_labels(" cat ") == ("cat",)
    with pytest.raises(ValueError, match="several labels.*--multi-label"):
        row_labels("cat|dog")
    assert row_labels(" cat | dog|cat", "|") == ("cat", "dog") and row_labels("cat;dog", ";") == ("cat", "dog")
    with pytest.raises(ValueError, match="no label between"):
        row_labels("| |", "|")
    with pytest.raises(ValueError, match="empty label"):
        row_labels("  ")


def test_every_bad_row_is_one_sentence_and_the_good_rows_are_read(tmp_path):
    make_flat(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "sub").mkdir()
    labels = write_labels(tmp_path / "labels.csv", [
        ["cat.0.jpg", "cat"], ["./cat.1.jpg", "cat"], ["dog.0.jpg", " dog "], ["dog.1.jpg", "dog"],
        ["missing.jpg", "cat"], ["cat.2.jpg", ""], ["../cat.0.jpg", "cat"], [str(tmp_path / "dog.2.jpg"), "dog"],
        ["dog.0.jpg", "cat"], ["cat.1.jpg", "cat"], ["dog.2.jpg", "cat|dog"], ["sub", "cat"], ["", "dog"],
        ["dog.1.jpg"], [], ["cat.\udcff.jpg", "cat"], ["cat.2.jpg", "ch\udce9at"],
    ])
    read = read_label_file(labels)
    assert [(row.path.name, row.labels) for row in read.rows] == [("cat.0.jpg", ("cat",)), ("cat.1.jpg", ("cat",)),
                                                                  ("dog.1.jpg", ("dog",))]
    why = {row.line: row.why for row in read.bad}
    assert "names no file" in why[6] and "empty label" in why[7] and "outside" in why[8] and "outside" in why[9]
    assert "different labels: 'dog' on line 4, 'cat' on line 10" in why[4]  # neither kept
    assert why[11] == "repeats line 3; read once" and "several labels" in why[12]
    assert "folder, not a photo" in why[13] and "no path" in why[14] and "fewer than the columns" in why[15]
    assert "names no file" in why[17] and "not UTF-8" in why[18]  # a path's bytes are a name's; a label's are not
    assert len(read.bad) == 12 and not read.has_split  # the two rows of dog.0.jpg are one message


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"), (b"\n \n", "is empty"), (b"file,class\na.jpg,cat\n", "has no column path nor label"),
    (b"path,label,label\n", "names the column label twice"), (b'path,label\n"a.jpg,cat\n', "cannot be read as CSV"),
    (b"path,label\n", "none of its 0 row(s)"), (b"path,label\nnowhere.jpg,cat\n", "line 2 'nowhere.jpg' names no file"),
    (b"\xff\xfep\x00a\x00t\x00h\x00", "has no column path nor label"),  # UTF-16, as some spreadsheets save
])
def test_a_file_that_is_no_label_file_is_one_message_in_every_command(tmp_path, capsys, content, words):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(content)
    for argv in (["check", str(labels)], ["split", str(labels), "--val", "1", "--out", str(tmp_path / "out")],
                 ["train", "--dataset", str(labels), "--model", "simple-cnn", "--runs-dir", str(tmp_path / "runs")]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and words in " ".join(err.split()) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_label_file_and_the_same_photos_in_a_flat_folder_split_alike(tmp_path):
    """The same photos, names and seed: the same split, file for file."""
    flat = make_flat(tmp_path / "flat", {"cat": 9, "dog": 7})
    links = tmp_path / "listed"
    links.mkdir()
    for photo in flat.iterdir():
        os.link(photo, links / photo.name)
    labels = write_labels(links / "labels.csv", [[photo.name, photo.name.split(".")[0]] for photo in flat.iterdir()])
    assert cli.main(["split", str(flat), "--val", "5", "--seed", "3", "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["split", str(labels), "--val", "5", "--seed", "3", "--out", str(tmp_path / "b")]) == 0
    for subset in SUBSETS:
        assert (sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a" / subset).rglob("*.jpg"))
                == sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b" / subset).rglob("*.jpg")))
    assert (tmp_path / "a" / "split.csv").read_text() == (tmp_path / "b" / "split.csv").read_text()


def test_split_writes_beside_the_label_file_and_lists_its_bad_rows(tmp_path, capsys):
    labels = labelled_photos(tmp_path, {"cat": 4, "dog": 4})
    write_image(tmp_path / "photos" / ".hidden.jpg")
    with open(labels, "a") as handle:
        handle.write("photos/none.jpg,cat\nphotos/.hidden.jpg,dog\n")
    assert cli.main(["split", str(labels), "--val", "0.5"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "rows of" in err and "left out: 2" in err and "'photos/none.jpg' names no file" in err
    assert "hidden file or folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "labels.csv", "photos", "split.csv", "training",
                                                          "validation"]
    assert sum(1 for _ in (tmp_path / "training").rglob("*.jpg")) == 4
    assert cli.main(["split", str(labels), "--val", "0.5"]) == 1  # the earlier split is kept, as for a folder
    assert "already exists" in capsys.readouterr().err


def test_a_split_column_is_kept_as_given_and_val_is_not_needed(tmp_path, capsys):
    make_flat(tmp_path, {"cat": 3, "dog": 3})
    given = [["cat.0.jpg", "cat", "training"], ["cat.1.jpg", "cat", "Validation"], ["cat.2.jpg", "cat", "training"],
             ["dog.0.jpg", "dog", "training"], ["dog.1.jpg", "dog", "validation"], ["dog.2.jpg", "dog", "test"]]
    labels = write_labels(tmp_path / "labels.csv", given, ("path", "label", "split"))
    assert cli.main(["split", str(labels), "--out", str(tmp_path / "data")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "'dog.2.jpg' gives the split 'test', which is neither training nor validation" in err
    assert sorted(p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data").rglob("*.jpg")) == [
        "training/cat/cat.0.jpg", "training/cat/cat.2.jpg", "training/dog/dog.0.jpg", "validation/cat/cat.1.jpg",
        "validation/dog/dog.1.jpg"]
    write_labels(labels, given[:2] + given[3:4], ("path", "label", "split"))
    assert cli.main(["split", str(labels), "--out", str(tmp_path / "other")]) == 1
    assert "leaves class dog (no validation photo)" in " ".join(capsys.readouterr().err.split())


def test_a_folder_still_needs_val(tmp_path, capsys):
    flat = make_flat(tmp_path / "flat", {"cat": 2, "dog": 2})
    assert cli.main(["split", str(flat)]) == 1
    assert "--val is needed" in capsys.readouterr().err and not (tmp_path / "training").exists()


def test_a_split_never_replaces_the_photos_its_label_file_names(tmp_path, capsys):
    flat = make_flat(tmp_path / "flat", {"cat": 3, "dog": 3})
    assert cli.main(["split", str(flat), "--val", "2", "--out", str(tmp_path / "data")]) == 0
    inside = sorted((tmp_path / "data" / "training").rglob("*.jpg"))
    labels = write_labels(tmp_path / "labels.csv", [[p.relative_to(tmp_path).as_posix(), p.parent.name] for p in inside])
    for mode in ("link", "move"):
        assert cli.main(["split", str(labels), "--val", "2", "--out", str(tmp_path / "data"), "--force", "--mode",
                         mode]) == 1
        assert "inside the folders this split writes" in capsys.readouterr().err
    assert sorted((tmp_path / "data" / "training").rglob("*.jpg")) == inside


def test_check_counts_the_bad_rows_as_problems(tmp_path, capsys):
    labels = labelled_photos(tmp_path, {"cat": 3, "dog": 3})
    with open(labels, "a") as handle:
        handle.write("photos/0.jpg,dog\n/etc/hostname,cat\n")
    assert cli.main(["check", str(labels)]) == 0
    out, err = capsys.readouterr()
    assert "labels layout" in out and "problems found: 2" in " ".join((out + err).split())
    assert "different labels" in err and "outside the label file's folder" in err
    assert cli.main(["check", str(labels), "--strict"]) == 1


def test_a_label_file_spelling_a_class_two_ways_is_refused_as_a_folder_is(tmp_path, capsys):
    make_flat(tmp_path, {"cat": 2, "dog": 2})
    labels = write_labels(tmp_path / "labels.csv", [["cat.0.jpg", "cat"], ["cat.1.jpg", "Cat"], ["dog.0.jpg", "dog"]])
    assert cli.main(["check", str(labels)]) == 1
    assert "spells a class in more than one way" in capsys.readouterr().err


def test_evaluate_reads_a_label_file(tmp_path, capsys):
    labels = labelled_photos(tmp_path, {"cat": 3, "dog": 2})
    model = make_checkpoint(tmp_path / "runs" / "tiny")
    assert cli.main(["evaluate", str(labels), "--checkpoint", str(model), "--out", str(tmp_path / "ev"),
                     "--device", "cpu"]) == 0
    assert '"images": 5' in (tmp_path / "ev" / "report.json").read_text()
    report = api.load(model, device="cpu").evaluate(labels, out=tmp_path / "ev2")
    assert report["images"] == 5


def test_train_takes_a_label_file_with_its_split_column_or_val(tmp_path, capsys):
    make_flat(tmp_path, {"cat": 4, "dog": 4})
    rows = [[f"{label}.{n}.jpg", label, "validation" if n == 0 else "training"] for label in ("cat", "dog")
            for n in range(4)]
    labels = write_labels(tmp_path / "labels.csv", rows, ("path", "label", "split"))
    quick = ["--model", "simple-cnn", "--weights", "none", "--img-size", "32", "--device", "cpu", "--workers", "0",
             "--epochs", "1", "--batch-size", "4"]
    assert cli.main(["train", "--dataset", str(labels), "--runs-dir", str(tmp_path / "runs"), *quick]) == 0
    assert "6 training / 2 validation" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["train", "--dataset", str(labels), "--val", "2", "--runs-dir", str(tmp_path / "r2"), *quick]) == 1
    assert "leave out --val" in capsys.readouterr().err
    plain = write_labels(tmp_path / "plain.csv", [row[:2] for row in rows])
    assert cli.main(["train", "--dataset", str(plain), "--val", "2", "--runs-dir", str(tmp_path / "r3"), *quick]) == 0
    assert "6 training / 2 validation" in " ".join(capsys.readouterr().err.split())


def test_finetune_given_a_label_file_says_to_split_it_first(tmp_path, capsys):
    labels = labelled_photos(tmp_path, {"cat": 2, "dog": 2})
    assert cli.main(["finetune", "--data", str(labels), "--runs-dir", str(tmp_path / "runs"), *QUICK]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "is a label file" in err and "tlkit split" in err and "Traceback" not in err


def test_audit_of_a_label_file_finds_its_photos_and_its_list_excludes_from_the_split(tmp_path):
    labels = labelled_photos(tmp_path, {"cat": 4, "dog": 4})
    write_image(tmp_path / "photos" / "twin.jpg", color=zlib_color(tmp_path))
    with open(labels, "a") as handle:
        handle.write("photos/twin.jpg,cat\n")
    found = api.audit(labels, out=tmp_path / "audit", backbone="simple-cnn", weights="none", img_size=32,
                      device="cpu", workers=0, cache_dir=str(tmp_path / "cache"), quiet=True)
    assert found.root == tmp_path and {photo.path.parent.as_posix() for photo in found.photos} == {"photos"}
    assert any(issue.issue == "identical" for issue in found.issues)
    with open(tmp_path / "audit" / "audit.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    reviewed = write_labels(tmp_path / "reviewed.csv", [row for row in rows[1:] if "identical" in row], tuple(rows[0]))
    data = api.split(labels, val=0.5, out=tmp_path / "data", exclude=reviewed, quiet=True)
    assert sum(sum(counts.values()) for counts in data.counts.values()) == 8  # one of the twins left out


def zlib_color(root: Path) -> int:
    """The colour make_flat gave cat.0.jpg: a twin of it is an identical file."""
    import zlib

    return zlib.crc32(b"cat/0")


def test_api_split_of_a_label_file(tmp_path):
    labels = labelled_photos(tmp_path, {"cat": 4, "dog": 4})
    data = api.split(labels, val=2, seed=1, quiet=True)
    assert data.out == tmp_path and data.counts["validation"] == {"cat": 1, "dog": 1}
    assert list_dataset(labels).layout == "labels"
    with pytest.raises(TlkitError, match="val= is needed"):
        api.split(make_flat(tmp_path / "flat", {"cat": 2, "dog": 2}), val=None, out=tmp_path / "x", quiet=True)
