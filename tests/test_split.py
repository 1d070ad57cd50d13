"""tlkit.split: stratified, reproducible splits that never lose a file."""

import csv
import os
import shutil
from pathlib import Path

import pytest

from tlkit import split as split_module
from tlkit.errors import TlkitError
from tlkit.scan import scan_dataset
from tlkit.split import JOURNAL, MANIFEST, execute_split, parse_val, plan_split

from conftest import make_checkpoint, make_flat, make_foldered, shared_data


def _split(src: Path, val, out: Path, mode="link", seed=0, force=False):
    plan = plan_split(scan_dataset(src), val, out, seed=seed)
    execute_split(plan, mode=mode, force=force)
    return plan


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("text, value", [("2000", 2000), ("0.1", 0.1), ("5.0", 5)])
def test_parse_val_accepts_counts_and_fractions(text, value):
    assert parse_val(text) == value


@pytest.mark.parametrize("text", ["0", "-3", "abc", "2.5", "", "nan", "inf", "-inf"])
def test_parse_val_rejects_nonsense(text):
    with pytest.raises(TlkitError, match="--val"):
        parse_val(text)


def test_split_is_stratified_and_written_beside_the_source(tmp_path):
    src = make_flat(tmp_path / "train", {"cat": 10, "dog": 10})
    plan = _split(src, 4, split_module.default_out(src))
    counts = plan.counts()
    assert counts["validation"] == {"cat": 2, "dog": 2}
    assert counts["training"] == {"cat": 8, "dog": 8}
    assert len(_files(tmp_path / "validation" / "cat")) == 2
    assert len(_files(tmp_path / "training" / "dog")) == 8
    assert len(_files(src)) == 20  # originals untouched


def test_split_does_not_depend_on_listing_order_but_on_the_seed(tmp_path, monkeypatch):
    src = make_flat(tmp_path / "train", {"cat": 12, "dog": 12})
    first = plan_split(scan_dataset(src), 0.25, tmp_path / "out", seed=3)
    real_rglob = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(list(real_rglob(self, pattern))))
    again = plan_split(scan_dataset(src), 0.25, tmp_path / "out", seed=3)
    other_seed = plan_split(scan_dataset(src), 0.25, tmp_path / "out", seed=4)
    assert again.rows == first.rows
    assert other_seed.rows != first.rows


def test_manifest_accounts_for_every_file(tmp_path):
    src = make_foldered(tmp_path / "src", {"ant": 5, "bee": 7})
    _split(src, 0.25, tmp_path / "out")
    with open(tmp_path / "out" / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["source"] for r in rows) == _files(src)
    written = _files(tmp_path / "out")
    assert sorted(r["destination"] for r in rows) == [f for f in written if f != "split.csv"]


def test_link_copy_symlink_and_move_modes(tmp_path):
    results = {}
    for mode in ("link", "copy", "symlink", "move"):
        src = make_flat(tmp_path / mode / "train", {"cat": 3, "dog": 3})
        original = src / "cat.0.jpg"
        inode = original.stat().st_ino
        plan = _split(src, 2, tmp_path / mode / "out", mode=mode)
        placed = next(tmp_path / mode / "out" / d for s, _, _, d in plan.rows if s == original)
        results[mode] = (placed, inode, original)
    placed, inode, original = results["link"]
    assert placed.stat().st_ino == inode and original.exists()
    placed, inode, original = results["copy"]
    assert placed.stat().st_ino != inode and original.exists()
    placed, inode, original = results["symlink"]
    assert placed.is_symlink() and placed.resolve() == original.resolve()
    placed, inode, original = results["move"]
    assert placed.stat().st_ino == inode and not original.exists()
    assert _files(tmp_path / "move" / "train") == []


def test_existing_output_is_refused_unless_forced(tmp_path):
    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    _split(src, 2, tmp_path, seed=0)
    marker = tmp_path / "training" / "cat" / "mine.txt"
    marker.write_text("user data")
    with pytest.raises(TlkitError, match="already exists.*--force"):
        _split(src, 2, tmp_path, seed=1)
    assert marker.exists()
    with pytest.raises(TlkitError, match="would delete 1 photo.*only copy.*Nothing was changed"):
        _split(src, 2, tmp_path, seed=1, force=True)  # the user's own file in the old split is not tlkit's to drop
    assert marker.read_text() == "user data"
    marker.unlink()
    _split(src, 2, tmp_path, seed=1, force=True)
    assert len(_files(tmp_path / "training")) == 6


def test_interrupted_split_leaves_nothing_that_looks_done(tmp_path, monkeypatch):
    src = make_flat(tmp_path / "train", {"cat": 5, "dog": 5})
    real_place = split_module._place
    calls = []

    def crash_midway(source, dest, mode):
        calls.append(source)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_place(source, dest, mode)

    monkeypatch.setattr(split_module, "_place", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        _split(src, 2, tmp_path, mode="move")
    assert not (tmp_path / "training").exists() and not (tmp_path / "split.csv").exists()
    assert len(_files(src)) == 10  # a move deletes originals only at the very end
    monkeypatch.setattr(split_module, "_place", real_place)
    _split(src, 2, tmp_path, mode="move")
    assert len(_files(tmp_path / "training")) == 8
    assert not list(tmp_path.glob(".tlkit-split-*"))


def test_odd_file_names_work(tmp_path):
    src = make_flat(tmp_path / "train", {"chat noir": 3, "hündin": 3})
    plan = _split(src, 2, tmp_path / "out")
    assert set(plan.counts()["validation"]) == {"chat noir", "hündin"}
    assert len(_files(tmp_path / "out" / "training" / "hündin")) == 2


@pytest.mark.parametrize(
    "counts, val, message",
    [
        ({"cat": 5, "dog": 5}, 10, "only 10 usable"),
        ({"cat": 5, "dog": 5}, 0.99, "only 10 usable"),
        ({"cat": 6}, 2, "one class only"),
        ({"cat": 5, "dog": 1}, 2, "single image"),
        ({"cat": 5, "dog": 5, "eel": 5}, 2, "at least one image per class"),
    ],
)
def test_impossible_splits_say_why(tmp_path, counts, val, message):
    src = make_flat(tmp_path / "train", counts)
    with pytest.raises(TlkitError, match=message):
        plan_split(scan_dataset(src), val, tmp_path / "out")


def test_source_inside_output_is_refused(tmp_path):
    src = make_foldered(tmp_path / "training", {"a": 3, "b": 3})
    with pytest.raises(TlkitError, match="inside the output"):
        split_module.check_outputs_free(tmp_path, src, force=True)


def test_real_photos_split_200_200_801_801(tmp_path):
    src = shared_data("dogs-vs-cats-2k") / "train"
    plan = _split(src, 400, tmp_path)
    counts = plan.counts()
    assert counts["validation"] == {"cat": 200, "dog": 200}
    assert counts["training"] == {"cat": 801, "dog": 801}
    names = sorted(os.path.basename(f) for f in _files(tmp_path / "training") + _files(tmp_path / "validation"))
    assert names == sorted(os.listdir(src))


def test_hidden_folders_are_ignored(tmp_path):
    src = make_flat(tmp_path / "train", {"cat": 3, "dog": 3})
    (src / ".ipynb_checkpoints").mkdir()
    (src / ".ipynb_checkpoints" / "cat.0.jpg").write_bytes((src / "cat.0.jpg").read_bytes())
    for seed in range(4):  # a copy of cat.0.jpg must never reach the output beside the original
        plan = _split(src, 2, tmp_path / f"out{seed}", seed=seed)
        assert len(plan.rows) == 6 and all(".ipynb" not in str(source) for source, *_ in plan.rows)
        assert len(_files(tmp_path / f"out{seed}" / "training") + _files(tmp_path / f"out{seed}" / "validation")) == 6


def test_output_inside_the_source_is_refused(tmp_path):
    src = make_flat(tmp_path / "train", {"cat": 3, "dog": 3})
    with pytest.raises(TlkitError, match="inside the source"):
        split_module.check_outputs_free(src / "sub", src, force=False)


def test_identical_files_go_to_the_same_subset_and_truncated_ones_are_skipped(tmp_path, capsys):
    import shutil

    from tlkit.cli import main

    src = make_flat(tmp_path / "train", {"cat": 10, "dog": 10})
    for n in range(5):  # five photos saved twice under other names
        shutil.copy(src / f"cat.{n}.jpg", src / f"cat.copy{n}.jpg")
    whole = (src / "dog.0.jpg").read_bytes()
    (src / "dog.cut.jpg").write_bytes(whole[: len(whole) // 2])  # a header that reads, pixels that do not
    assert main(["split", str(src), "--val", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "5 file(s) identical to another" in captured.err and "dog.cut.jpg" in captured.err
    rows = list(csv.DictReader((tmp_path / "split.csv").open()))
    subset_of = {Path(row["source"]).name: row["subset"] for row in rows}
    assert "dog.cut.jpg" not in subset_of
    assert all(subset_of[f"cat.copy{n}.jpg"] == subset_of[f"cat.{n}.jpg"] for n in range(5))
    assert sum(subset == "validation" for subset in subset_of.values()) >= 10  # half of the 20 distinct photos


def test_quick_split_reads_headers_only(tmp_path, capsys):
    import shutil

    from tlkit.cli import main

    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})
    shutil.copy(src / "cat.0.jpg", src / "cat.copy.jpg")
    assert main(["split", str(src), "--val", "0.5", "--quick"]) == 0
    assert "identical" not in capsys.readouterr().err  # no hashes without the full check: the pair goes unseen
    rows = list(csv.DictReader((tmp_path / "split.csv").open()))
    assert len(rows) == 13 and "cat.copy.jpg" in {Path(row["source"]).name for row in rows}


def _resplit_killed(tmp_path, monkeypatch, dies) -> tuple[Path, Path]:
    """(src, out) after a split of 20 photos and a re-split (--force) killed at the rename that
    dies(source, target, how many renames so far) picks."""
    src = make_flat(tmp_path / "train", {"cat": 10, "dog": 10})
    out = tmp_path / "data"
    _split(src, 6, out, seed=0)
    real_replace, calls = os.replace, []

    def dying_replace(source, target):
        calls.append(target)
        if dies(Path(source), Path(target), len(calls)):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(split_module.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _split(src, 6, out, seed=1, force=True)
    monkeypatch.setattr(split_module.os, "replace", real_replace)
    return src, out


@pytest.mark.parametrize("cut_at", [2, 3, 4, 5, 6, 7])
def test_a_split_killed_while_swapping_in_is_finished_before_anything_reads_it(tmp_path, monkeypatch, cut_at):
    """`split --force` interrupted between any two of its renames: the next reader (here finetune's
    check_classes) finishes the new split; no validation photo is also a training photo, and split.csv
    describes the folders as they are."""
    from tlkit.data import check_classes

    # the rename number cut_at dies; 1: the journal; then old aside / new in, per output
    _, out = _resplit_killed(tmp_path, monkeypatch, lambda source, target, count: count == cut_at)
    assert check_classes(out) == ["cat", "dog"]
    training, validation = (set(p.name for p in (out / s).rglob("*.jpg")) for s in ("training", "validation"))
    assert not training & validation and len(training) + len(validation) == 20
    with open(out / "split.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["destination"].split("/")[-1] for r in rows if r["subset"] == "validation"} == validation
    assert sorted(p.name for p in out.iterdir()) == ["split.csv", "training", "validation"]  # nothing left over


def test_a_copy_split_on_a_full_disk_removes_its_partial_copy(tmp_path, monkeypatch, capsys):
    import errno

    from tlkit.cli import main

    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})
    real_copy, copies = split_module.shutil.copy2, []

    def filling_copy(source, target):
        copies.append(target)
        if len(copies) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(source, target)

    monkeypatch.setattr(split_module.shutil, "copy2", filling_copy)
    assert main(["split", str(src), "--val", "4", "--mode", "copy", "--out", str(tmp_path / "data")]) == 1
    assert "filled up" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # no staging, no half split: the folder the split made is gone


# ---------------------------------------------------------------- deleting only what a split made


@pytest.mark.parametrize("journal", [
    '{"staging": "VICTIM", "old": "VICTIM_old"}',  # absolute paths outside the dataset
    '{"staging": "../victim", "old": "../victim_old", "token": "0"}',
    '{"staging": ".tlkit-split-1", "old": ".tlkit-split-old-1", "token": "0"}',  # right names, planted folders
    "",  # empty
    "[1, 2]",
])
def test_a_planted_or_damaged_journal_deletes_nothing(tmp_path, capsys, journal):
    from tlkit.cli import main

    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep" / "thesis.txt").write_text("years of work")
    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    out = tmp_path / "data"
    _split(src, 2, out)
    (out / ".tlkit-split-1").mkdir()  # a folder of the right name, without a split's marker
    (out / ".tlkit-split-1" / "training").mkdir()
    (out / JOURNAL).write_text(journal.replace("VICTIM", str(victim)))
    runs = tmp_path / "runs"
    make_checkpoint(runs / "model")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for command in (["check", str(out)], ["split", str(src), "--val", "2", "--out", str(out), "--force"],
                    ["evaluate", str(out / "validation"), "--runs-dir", str(runs)],
                    ["predict", str(out / "validation" / "cat"), "--runs-dir", str(runs)],
                    ["finetune", "--data", str(out), "--backbone", "simple-cnn", "--runs-dir", str(runs)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "not a split journal tlkit can trust" in err and "nothing was moved or deleted" in err
        assert "Traceback" not in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (victim / "keep" / "thesis.txt").read_text() == "years of work"


def test_a_folder_named_like_a_splits_work_folder_is_not_swept_away(tmp_path):
    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    _split(src, 2, tmp_path / "data")
    mine = tmp_path / "data" / ".tlkit-split-99"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _split(src, 2, tmp_path / "data", seed=1, force=True)
    assert (mine / "notes.txt").read_text() == "mine"


def test_force_replaces_only_a_split_that_tlkit_wrote(tmp_path, capsys):
    from tlkit.cli import main

    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    out = tmp_path / "data"
    (out / "training").mkdir(parents=True)
    (out / "training" / "holiday.jpg").write_bytes(b"a photo")  # the user's own folder, no split.csv beside it
    assert main(["split", str(src), "--val", "2", "--out", str(out), "--force"]) == 1
    assert "no tlkit split wrote" in capsys.readouterr().err
    assert (out / "training" / "holiday.jpg").read_bytes() == b"a photo"


def test_a_resplit_after_a_move_split_keeps_the_only_copies(tmp_path, capsys):
    """After --mode move the photos live only in training/ and validation/: a re-split of the source (with
    new photos added) must not delete them with the old split."""
    from tlkit.cli import main

    src = make_flat(tmp_path / "train", {"cat": 15, "dog": 15})
    out = tmp_path / "data"
    assert main(["split", str(src), "--val", "6", "--out", str(out), "--mode", "move"]) == 0
    moved = sorted(p.read_bytes() for p in out.rglob("*.jpg"))
    assert len(moved) == 30 and not list(src.iterdir())
    make_flat(tmp_path / "more", {"cat": 3, "dog": 3})
    for photo in (tmp_path / "more").iterdir():
        photo.rename(src / f"new-{photo.name}")
    assert main(["split", str(src), "--val", "2", "--out", str(out), "--force"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "would delete 30 photo(s) whose only copy is there" in err and "Nothing was changed" in err
    assert sorted(p.read_bytes() for p in out.rglob("*.jpg")) == moved


def test_a_resplit_of_a_copy_split_replaces_it(tmp_path):
    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})
    _split(src, 4, tmp_path / "data", mode="copy")
    _split(src, 4, tmp_path / "data", mode="copy", seed=1, force=True)  # every old copy has its source
    assert len(_files(tmp_path / "data" / "training")) == 8


def test_a_kill_while_deleting_the_old_split_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    """Killed halfway through deleting the old outputs (a full copy of the old split): the journal is still
    there, so the next reader, evaluate of DATA/validation here, finishes the swap; nothing is left over."""
    from tlkit.evaluate import labelled_images

    src = make_flat(tmp_path / "train", {"cat": 10, "dog": 10})
    out = tmp_path / "data"
    _split(src, 6, out)
    real_remove = split_module._remove_work_folder

    def killed_halfway(path):
        if path.name.startswith(".tlkit-split-old-"):
            shutil.rmtree(next(p for p in path.iterdir() if p.is_dir()))  # some of it is gone, then the kill
            raise KeyboardInterrupt
        real_remove(path)

    monkeypatch.setattr(split_module, "_remove_work_folder", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        _split(src, 6, out, seed=1, force=True)
    monkeypatch.setattr(split_module, "_remove_work_folder", real_remove)
    assert (out / JOURNAL).exists()
    paths, _ = labelled_images(out / "validation", ["cat", "dog"])
    assert len(paths) == 6
    assert sorted(p.name for p in out.iterdir()) == ["split.csv", "training", "validation"]


def test_a_link_split_that_fills_the_disk_does_not_advise_link_mode(tmp_path, monkeypatch, capsys):
    """Hard links cannot cross disks, so a link split copies there; when that fills the disk, the advice is
    to split on the photos' own disk, not "use --mode link", which was the mode used."""
    import errno

    from tlkit.cli import main

    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})

    def cross_device(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(split_module.os, "link", cross_device)
    monkeypatch.setattr(split_module.shutil, "copy2", full)
    assert main(["split", str(src), "--val", "4", "--out", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "hard links cannot cross" in err and "--mode link" not in err and "--mode symlink" in err


def test_a_resplit_compares_bytes_not_only_sizes(tmp_path, capsys):
    """After a move split, new photos of the same names and sizes (fixed-size formats, counter names) are
    other photos: the old ones are still the only copies."""
    import numpy as np
    from PIL import Image

    from tlkit.cli import main

    def bmp(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)

    src, out = tmp_path / "train", tmp_path / "data"
    for n in range(6):
        bmp(src / f"cat.{n}.bmp", n)
        bmp(src / f"dog.{n}.bmp", 100 + n)
    assert main(["split", str(src), "--val", "4", "--out", str(out), "--mode", "move"]) == 0
    for n in range(6):  # the next batch: same names, same sizes, other pixels
        bmp(src / f"cat.{n}.bmp", 50 + n)
        bmp(src / f"dog.{n}.bmp", 150 + n)
    assert main(["split", str(src), "--val", "4", "--out", str(out), "--force"]) == 1
    assert "would delete 12 photo(s)" in " ".join(capsys.readouterr().err.split())


def test_hard_links_that_stay_inside_the_old_split_are_not_another_copy(tmp_path, capsys):
    from tlkit.cli import main

    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})
    out = tmp_path / "data"
    assert main(["split", str(src), "--val", "4", "--out", str(out), "--mode", "move"]) == 0
    photo = next(p for p in out.rglob("cat.*.jpg") if int(p.name.split(".")[1]) >= 3)
    os.link(photo, photo.with_name("again-" + photo.name))  # two names, both in the old split
    make_flat(src, {"cat": 3, "dog": 3})  # cat.0-2 and dog.0-2 again, the same bytes: their old copies may go
    assert main(["split", str(src), "--val", "2", "--out", str(out), "--force"]) == 1
    assert "would delete 7 photo(s)" in " ".join(capsys.readouterr().err.split())  # n 3-5, and the second name


def test_split_force_finishes_an_interrupted_swap_before_judging_the_folder(tmp_path, monkeypatch):
    """Killed after split.csv went aside and before the new one came in: the folder holds no manifest until the
    swap is finished, which split itself now does first instead of refusing "no tlkit split wrote"."""
    from tlkit.cli import main

    # dies as the new split.csv is about to come in, the old one aside
    src, out = _resplit_killed(tmp_path, monkeypatch, lambda source, target, count: target.name == MANIFEST
                               and source.parent.name.startswith(".tlkit-split-"))

    assert main(["split", str(src), "--val", "6", "--out", str(out), "--seed", "2", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["split.csv", "training", "validation"]


def test_a_second_split_or_a_reader_waits_for_the_folders_split_lock(tmp_path, capsys):
    """The split lock is held by another process for a moment: finishing an interrupted swap waits for it
    (and says so) instead of moving folders under a split at work."""
    import subprocess
    import sys
    import time

    from tlkit.split import _holding_split

    out = tmp_path / "data"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from tlkit.split import _holding_split\n"
        f"with _holding_split(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(1.5)")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    with _holding_split(out):
        waited = time.monotonic() - started
    holder.wait(timeout=30)
    assert waited > 0.5 and "waiting for another tlkit split" in capsys.readouterr().err
    assert not (out / ".tlkit-split.lock").exists()
