"""tlkit.scan: layouts, labels, and every kind of bad file."""

from pathlib import Path

import pytest

from tlkit.errors import TlkitError
from tlkit.scan import check_image, detect_layout, flat_label, list_dataset, scan_dataset, visible_files

from conftest import make_flat, make_foldered, write_image


def test_flat_label_is_the_name_before_the_first_dot():
    assert flat_label(Path("cat.12.jpg")) == "cat"
    assert flat_label(Path("golden retriever.7.jpeg")) == "golden retriever"
    assert flat_label(Path("123.jpg")) is None
    assert flat_label(Path(".5.jpg")) is None


def test_flat_layout_labels_and_skips(tmp_path):
    make_flat(tmp_path, {"cat": 3, "dog": 2})
    write_image(tmp_path / "1234.jpg")  # Kaggle test-set style name: no class
    (tmp_path / "notes.txt").write_text("not an image")
    scan = scan_dataset(tmp_path)
    assert scan.layout == "flat"
    assert scan.class_counts() == {"cat": 3, "dog": 2}
    assert [p.name for p in scan.unlabelled] == ["1234.jpg"]
    assert [p.name for p in scan.non_images] == ["notes.txt"]


def test_foldered_layout_and_loose_files(tmp_path):
    make_foldered(tmp_path, {"ant": 2, "bee": 3})
    write_image(tmp_path / "loose.png")
    assert detect_layout(tmp_path) == "folders"
    scan = scan_dataset(tmp_path)
    assert scan.classes == ["ant", "bee"]
    assert [p.name for p in scan.unlabelled] == ["loose.png"]


def test_unreadable_images_are_listed_with_a_reason(tmp_path):
    make_flat(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "cat.9.jpg").write_bytes(b"")
    (tmp_path / "dog.9.jpg").write_bytes(b"this is not a jpeg at all")
    scan = scan_dataset(tmp_path)
    reasons = {path.name: why for path, why in scan.unreadable}
    assert "0 bytes" in reasons["cat.9.jpg"]
    assert "cannot be decoded" in reasons["dog.9.jpg"]
    assert len(scan.images) == 4


def test_truncated_jpeg_fails_the_full_check_only(tmp_path):
    path = write_image(tmp_path / "cat.0.jpg", size=(256, 256))
    path.write_bytes(path.read_bytes()[:600])
    assert isinstance(check_image(path, full=True), str)


def test_full_check_reports_sizes_modes_and_duplicates(tmp_path):
    write_image(tmp_path / "cat.0.png", size=(20, 10), color=1)
    write_image(tmp_path / "cat.1.png", size=(20, 10), color=1)  # same bytes as cat.0
    write_image(tmp_path / "dog.0.png", size=(30, 40), color=2, mode="L")
    write_image(tmp_path / "dog.1.png", size=(8, 8), color=3, mode="RGBA")
    scan = scan_dataset(tmp_path, full=True)
    modes = {path.name: info.mode for path, info in scan.details.items()}
    assert modes == {"cat.0.png": "RGB", "cat.1.png": "RGB", "dog.0.png": "L", "dog.1.png": "RGBA"}
    assert scan.details[tmp_path / "dog.0.png"].width == 30
    assert [[p.name for p in group] for group in scan.duplicates()] == [["cat.0.png", "cat.1.png"]]


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_bad_roots_raise_a_user_error(tmp_path, make):
    root = tmp_path / "photos"
    if make == "file":
        root.write_text("x")
    elif make == "empty":
        root.mkdir()
    with pytest.raises(TlkitError, match="photos"):
        list_dataset(root)


@pytest.mark.parametrize("full", [False, True])
def test_a_decompression_bomb_is_a_skipped_file_not_a_crash(tmp_path, full):
    from PIL import Image

    path = tmp_path / "cat.1.png"
    Image.new("L", (20_000, 20_000)).save(path)  # 400 MP of zeros: a few hundred KB on disk
    assert "too large to decode safely" in check_image(path, full=full)


def test_visible_files_leave_out_hidden_ones_and_stop_at_a_depth(tmp_path):
    for name in ("a.png", ".b.png", "x/c.png", "x/y/d.png", ".git/e.png", "x/.cache/f.png"):
        write_image(tmp_path / name)

    def listed(depth):
        return [p.relative_to(tmp_path).as_posix() for p in visible_files(tmp_path, depth)]

    assert listed(None) == ["a.png", "x/c.png", "x/y/d.png"]
    assert listed(1) == ["a.png"]
    assert listed(2) == ["a.png", "x/c.png"]


def test_every_stage_counts_the_same_images_and_none_hidden(tmp_path, capsys):
    """A notebook's checkpoint folder and a hidden file inside a class folder hold no photos for any
    stage: check, split, training, the caches, predict and evaluate list the same images (three
    listers once disagreed, and training counted cat/.ipynb_checkpoints/)."""
    import csv
    import re

    from tlkit.cache import file_list
    from tlkit.cli import main
    from tlkit.data import FolderDataset, check_classes
    from tlkit.evaluate import labelled_images
    from tlkit.predict import find_images

    def plant_hidden(folder: Path) -> None:
        write_image(folder / "cat" / ".ipynb_checkpoints" / "0-checkpoint.png", color=101)
        write_image(folder / "cat" / ".hidden.png", color=102)

    src = make_foldered(tmp_path / "src", {"cat": 4, "dog": 3})
    plant_hidden(src)
    assert sorted(p.relative_to(src).as_posix() for p, _ in scan_dataset(src).images) == [
        "cat/0.png", "cat/1.png", "cat/2.png", "cat/3.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    data = tmp_path / "data"
    assert main(["split", str(src), "--val", "3", "--out", str(data), "--quiet"]) == 0
    with open(data / "split.csv", newline="") as handle:
        written = [row["destination"] for row in csv.DictReader(handle)]
    assert len(written) == 7
    for subset in ("training", "validation"):
        plant_hidden(data / subset)

    capsys.readouterr()
    assert main(["check", str(data)]) == 0
    checked = capsys.readouterr().out
    assert "no problems found" in checked
    totals = [int(n) for n in re.findall(r"\ball\b\D*(\d+)", checked)]  # the two subsets' tables
    assert totals == [sum(d.startswith(f"{subset}/") for d in written) for subset in ("training", "validation")]

    classes = check_classes(data)
    assert classes == ["cat", "dog"]
    for subset in ("training", "validation"):
        folder = data / subset
        expected = sorted(d.split("/", 1)[1] for d in written if d.startswith(f"{subset}/"))
        in_training = [Path(path).relative_to(folder).as_posix() for path, _ in FolderDataset(folder, None).samples]
        in_cache = [row[0] for row in file_list(folder, classes)]
        predicted = [p.relative_to(folder).as_posix() for p in find_images([folder]).images]
        evaluated = [p.relative_to(folder).as_posix() for p in labelled_images(folder, classes)[0]]
        assert in_training == in_cache == predicted == evaluated == expected
    named = data / "training" / "cat" / ".hidden.png"  # named: predicted, never dropped
    assert find_images([named, data / "training" / "dog"]).images == [named, *sorted(
        (data / "training" / "dog").glob("[0-9].png"))]
