"""Split a flat or class-foldered image folder into training/ and validation/ ImageFolders.

Stratified by class and seeded, so the same files and seed give the same split whatever
order the file system lists them in. Never loses data: outputs are built in a temporary
folder and renamed into place, and originals are removed (`--mode move`) only once the
output is complete and checked.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import TlkitError
from tlkit.runtime import relpath, warn
from tlkit.scan import Scan, scan_with_progress

SUBSETS = ("training", "validation")
MODES = ("link", "copy", "symlink", "move")
MANIFEST = "split.csv"
OUTPUTS = (*SUBSETS, MANIFEST)  # what a split writes into OUT, swapped in together


@dataclass
class SplitPlan:
    """Which image goes to which subset; `rows` are (source, class, subset, destination)."""

    scan: Scan
    out: Path
    rows: list[tuple[Path, str, str, Path]]
    twins: int = 0  # files identical to another one, placed in its subset

    def counts(self) -> dict[str, Counter]:
        counts = {subset: Counter() for subset in SUBSETS}
        for _, label, subset, _ in self.rows:
            counts[subset][label] += 1
        return counts


def parse_val(text: str) -> int | float:
    """`2000` -> 2000 images; `0.1` -> a tenth of them."""
    try:
        value = float(text)
    except ValueError:
        raise TlkitError(f"--val {text!r} is neither a count (2000) nor a fraction (0.1).") from None
    if not math.isfinite(value):  # float() reads "nan" and "inf" too
        raise TlkitError(f"--val {text} is not a number of images: give a count (2000) or a fraction (0.1).")
    if value <= 0:
        raise TlkitError(f"--val {text} must be above 0: give a count (2000) or a fraction (0.1).")
    if value < 1:
        return value
    if value != int(value):
        raise TlkitError(f"--val {text} is above 1 but not a whole number: give a count (2000) or a fraction (0.1).")
    return int(value)


def val_count(val: int | float, total: int) -> int:
    """How many of `total` images --val asks for (a count, or a fraction of total); TlkitError if none would be left to train on."""
    count = round(val * total) if isinstance(val, float) else val
    if count >= total:
        raise TlkitError(
            f"--val {val} asks for {count} validation images but there are only {total} usable "
            "images; ask for fewer so that some are left for training."
        )
    return max(count, 1)


def plan_split(scan: Scan, val: int | float, out: Path, seed: int = 0) -> SplitPlan:
    """Choose the validation images: stratified by class, reproducible for a seed."""
    from sklearn.model_selection import train_test_split

    images = sorted(scan.images)  # sorted: the split must not depend on listing order
    # Identical files (a photo saved twice) are split as one: a copy in each subset would leak training
    # images into validation. Known only after a full check (scan.details holds the hashes).
    twin_of = _twins(scan, images)
    unique = [(path, label) for path, label in images if path not in twin_of]
    if not images:
        raise TlkitError(f"{relpath(scan.root)} holds no usable labelled images.")
    counts = Counter(label for _, label in unique)
    if len(counts) < 2:
        raise TlkitError(
            f"{relpath(scan.root)} holds one class only ({next(iter(counts))}); a classifier needs "
            "at least two. Flat names look like cat.0.jpg / dog.0.jpg; folders like cat/, dog/."
        )
    singles = sorted(label for label, n in counts.items() if n < 2)
    if singles:
        raise TlkitError(
            f"class {', '.join(singles)} has a single image, so it cannot appear in both training "
            "and validation. Add images of that class or remove it."
        )
    val_size = val_count(val, len(unique))
    if val_size < len(counts) or len(unique) - val_size < len(counts):
        raise TlkitError(
            f"--val {val} leaves {val_size} validation and {len(unique) - val_size} training images "
            f"for {len(counts)} classes; each subset needs at least one image per class."
        )
    labels = [label for _, label in unique]
    train, valid = train_test_split(unique, test_size=val_size, random_state=seed, stratify=labels)
    subset_of = {path: "training" for path, _ in train} | {path: "validation" for path, _ in valid}
    rows = []
    for path, label in images:
        subset = subset_of[twin_of.get(path, path)]  # an identical file goes where its twin goes
        rows.append((path, label, subset, Path(subset) / label / _name_in_class(scan, path)))
    rows.sort(key=lambda row: (row[2] != "training", row[0]))
    return SplitPlan(scan=scan, out=Path(out), rows=rows, twins=len(twin_of))


def _twins(scan: Scan, images: list[tuple[Path, str]]) -> dict[Path, Path]:
    """Each file identical (SHA-1) to an earlier one in sorted order -> that earlier file; {} without hashes."""
    first_with: dict[str, Path] = {}
    twin_of = {}
    for path, _ in images:
        digest = scan.details[path].sha1 if path in scan.details else ""
        if digest:
            twin_of[path] = first_with.setdefault(digest, path)
    return {path: first for path, first in twin_of.items() if path != first}


def _name_in_class(scan: Scan, path: Path) -> Path:
    """The file's path inside its class folder: its path under SRC (flat) or under SRC/<class>
    (folders), so two files of the same name in different subfolders never meet."""
    relative = path.relative_to(scan.root)
    return Path(*relative.parts[1:]) if scan.layout == "folders" else relative


def prepare_split(src: Path, val: str, out: Path | None = None, *, seed: int = 0, force: bool = False,
                  quick: bool = False) -> tuple[Scan, SplitPlan]:
    """What `tlkit split` will do, nothing written yet: the outputs checked free (before any image is
    read), every image checked (decoded and hashed, or headers only when quick), and the seeded plan.
    val: a count ("2000") or a fraction ("0.1"); out None: beside src."""
    val_size = parse_val(val)
    out = Path(out) if out else default_out(src)
    check_outputs_free(out, Path(src), force)
    scan = scan_with_progress(Path(src), full=not quick)
    return scan, plan_split(scan, val_size, out, seed=seed)


def default_out(src: Path) -> Path:
    """`data/train` splits into `data/training` and `data/validation`."""
    return Path(src).resolve().parent


def check_outputs_free(out: Path, src: Path, force: bool) -> None:
    """Refuse to overwrite earlier output, or to write inside the source, unless forced."""
    src = src.resolve()
    for name in OUTPUTS:
        target = (out / name).resolve()
        if src == target or target in src.parents:
            raise TlkitError(
                f"the source {relpath(src)} is inside the output {relpath(target)}; split the "
                "original folder, or choose another --out."
            )
        if src in target.parents:
            raise TlkitError(
                f"the output {relpath(target)} would be inside the source {relpath(src)}, where the next "
                "split or check would take it for a class; choose an --out outside it."
            )
        if target.exists() and not force:
            raise TlkitError(
                f"{relpath(target)} already exists; nothing was written. Use --force to replace it, "
                "or --out DIR to write elsewhere."
            )


def _place(src: Path, dest: Path, mode: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        os.symlink(src.resolve(), dest)
        return
    if mode in ("link", "move"):
        # A move is a hard link now and a delete of the original later, once all is in place.
        try:
            os.link(src, dest)
            return
        except FileExistsError:
            raise  # two sources, one destination: a bug to see, never a file to overwrite
        except OSError:
            pass  # another file system, or one without hard links: copy instead
    shutil.copy2(src, dest)


def _write_manifest(plan: SplitPlan, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "class", "subset", "destination"])
        for source, label, subset, destination in plan.rows:
            writer.writerow([source.relative_to(plan.scan.root).as_posix(), label, subset, destination.as_posix()])


def _verify_output(plan: SplitPlan, staging: Path) -> None:
    """Every planned file is in the output exactly once, and nothing else is."""
    found = sorted(p.relative_to(staging) for subset in SUBSETS for p in (staging / subset).rglob("*") if not p.is_dir())
    expected = sorted(destination for *_, destination in plan.rows)
    if found != expected:
        raise RuntimeError(f"split output does not match its plan: {len(found)} files for {len(expected)} planned")


JOURNAL = ".tlkit-split-journal.json"


def execute_split(plan: SplitPlan, mode: str = "link", force: bool = False, on_progress=None) -> None:
    """Write the plan: build under a temporary folder, check it, then swap it into place."""
    out = plan.out
    check_outputs_free(out, plan.scan.root, force)
    out.mkdir(parents=True, exist_ok=True)
    finish_interrupted_swap(out)
    staging = out / f".tlkit-split-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for leftover in out.glob(".tlkit-split-*"):  # an earlier split interrupted while building
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
    staging.mkdir()
    try:
        for source, _, _, destination in plan.rows:
            _place(source, staging / destination, mode)
            if on_progress:
                on_progress()
        _write_manifest(plan, staging / MANIFEST)
        _verify_output(plan, staging)
    except BaseException as error:  # a full disk, Ctrl-C: the half-built copy goes, nothing else changed
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TlkitError(f"the disk of {relpath(out)} filled up while the split was {mode}-ing files; the "
                             "partial copy was removed and nothing else changed. Free some space, or split with "
                             "the default --mode link (no copies).") from None
        raise
    _swap_in(out, staging)
    if mode == "move":
        for source, *_ in plan.rows:
            source.unlink()


def _swap_in(out: Path, staging: Path) -> None:
    """Replace training/, validation/ and split.csv with the staged ones as one step that survives a
    kill: a journal names both sides first; the old outputs are renamed aside (not deleted) before
    the new ones are renamed in, and deleted last. An interrupted swap is finished by the next split,
    or by the next command that reads the folder (finish_interrupted_swap)."""
    old = out / f".tlkit-split-old-{os.getpid()}"
    journal = out / JOURNAL
    tmp = journal.with_suffix(".tmp")
    tmp.write_text(json.dumps({"staging": staging.name, "old": old.name}), encoding="utf-8")
    os.replace(tmp, journal)  # from here on, the next run finishes what this one started
    old.mkdir()
    for name in OUTPUTS:
        if (out / name).exists() or (out / name).is_symlink():
            os.replace(out / name, old / name)
        os.replace(staging / name, out / name)
    journal.unlink()
    shutil.rmtree(old)
    staging.rmdir()


def finish_interrupted_swap(out: Path) -> bool:
    """Complete a split whose swap was interrupted (killed, Ctrl-C): the new, verified outputs go in,
    the old ones out. Returns whether there was one to finish (and says so)."""
    journal = Path(out) / JOURNAL
    if not journal.is_file():
        return False
    names = json.loads(journal.read_text(encoding="utf-8"))
    staging, old = Path(out) / names["staging"], Path(out) / names["old"]
    old.mkdir(exist_ok=True)
    for name in OUTPUTS:
        if (staging / name).exists():  # not yet swapped in: whatever stands in its place is the old one
            if (Path(out) / name).exists() or (Path(out) / name).is_symlink():
                os.replace(Path(out) / name, old / name)
            os.replace(staging / name, Path(out) / name)
    journal.unlink()
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    warn(f"finished a split of {relpath(Path(out))} that was interrupted while putting its folders in place "
         "(the new split was complete and checked; the old one is removed)")
    return True
