"""Split a flat or class-foldered image folder, or a label file, into training/ and validation/ ImageFolders.

Stratified by class and seeded (or as a label file's split column gives it), so the same files and seed give the same split whatever
order the file system lists them in. Never loses data: outputs are built in a temporary
folder and renamed into place, and originals are removed (`--mode move`) only once the
output is complete and checked.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import filecmp
import json
import math
import os
import re
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tlkit.atomic import check_writable, lock_file, unlock_file
from tlkit.config import SEEDS, checked_number
from tlkit.errors import TlkitError, option
from tlkit.exclusions import Exclusions, read_exclusions
from tlkit.labelfile import SEPARATOR, SEVERAL_LABELS, bad_row_text, is_label_file
from tlkit.multilabel import LABELS_FILE, check_subset_labels, validation_choice, write_subset_labels
from tlkit.pathtext import ENCODING, ERRORS, path_text, refuse_stdout
from tlkit.runtime import info, progress, relpath, warn
from tlkit.scan import Scan, scan_with_progress

TRAINING, VALIDATION = "training", "validation"
SUBSETS = (TRAINING, VALIDATION)  # the folders a split writes, and every stage after it reads
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
    multi_label: bool = False  # several labels a photo (class: them joined): photos under their own paths, LABELS_FILE

    def counts(self) -> dict[str, Counter]:
        counts = {subset: Counter() for subset in SUBSETS}
        for _, label, subset, _ in self.rows:
            counts[subset].update(self.scan.labels_of(label))  # a multi-label photo counts for each of its labels
        return counts


def parse_val(text: str) -> int | float:
    """`2000` -> 2000 images; `0.1` -> a tenth of them."""
    try:
        value = float(text)
    except ValueError:
        raise TlkitError(f"{option('val', text)} is neither a count (2000) nor a fraction (0.1).") from None
    if not math.isfinite(value):  # float() reads "nan" and "inf" too
        raise TlkitError(f"{option('val', text)} is not a number of images: give a count (2000) or a fraction "
                         "(0.1).")
    if value <= 0:
        raise TlkitError(f"{option('val', text)} must be above 0: give a count (2000) or a fraction (0.1).")
    if value < 1:
        return value
    if value == 1 and text.strip() != "1":  # 1.0: every image as a fraction, one as a count
        raise TlkitError(f"{option('val', text)} is ambiguous: write 1 for one validation image, or a fraction "
                         "below 1 (0.2) for a share of them.")
    if value != int(value):
        raise TlkitError(f"{option('val', text)} is above 1 but not a whole number: give a count (2000) or a "
                         "fraction (0.1).")
    return int(value)


def val_count(val: int | float, total: int) -> int:
    """How many of `total` images --val asks for (a count, or a fraction of total); TlkitError if none would be left to train on."""
    count = round(val * total) if isinstance(val, float) else val
    if count >= total:
        raise TlkitError(
            f"{option('val', val)} asks for {count} validation images but there are only {total} usable "
            "images; ask for fewer so that some are left for training."
        )
    return max(count, 1)


def plan_split(scan: Scan, val: int | float | None, out: Path, seed: int = 0,
               pairs: tuple[tuple[str, str], ...] = ()) -> SplitPlan:
    """Choose the validation images: stratified by class, reproducible for a seed; a label file's split column,
    where it has one, chooses instead (val unused). pairs: (path, path) relative to the source, near-duplicates
    (from audit.csv) that go to one subset as identical files do."""
    from sklearn.model_selection import train_test_split

    images = sorted(scan.images)  # sorted: the split must not depend on listing order
    # Identical files (a photo saved twice) are split as one: a copy in each subset would leak training
    # images into validation. Known only after a full check (scan.details holds the hashes).
    twin_of = _twins(scan, images, pairs)
    unique = [(path, label) for path, label in images if path not in twin_of]
    if not images:
        raise TlkitError(f"{relpath(scan.source)} holds no usable labelled images.")
    if scan.multi_label:
        return _multi_label_plan(scan, images, unique, val=val, out=out, seed=seed, twin_of=twin_of)
    counts = Counter(label for _, label in unique)
    if len(counts) < 2:
        raise TlkitError(
            f"{relpath(scan.source)} holds one class only ({next(iter(counts))}); a classifier needs "
            "at least two. Flat names look like cat.0.jpg / dog.0.jpg; folders like cat/, dog/."
        )
    if scan.given_subsets:
        return _kept_split(scan, out)
    if val is None:
        raise _no_val(scan.source)
    singles = single_image_classes(scan)
    if singles:
        raise TlkitError(
            f"class {', '.join(singles)} has a single image, so it cannot appear in both training "
            "and validation. Add images of that class or remove it."
        )
    val_size = val_count(val, len(unique))
    if val_size < len(counts) or len(unique) - val_size < len(counts):
        raise TlkitError(
            f"{option('val', val)} leaves {val_size} validation and {len(unique) - val_size} training images "
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


def _multi_label_plan(scan: Scan, images: list[tuple[Path, str]], unique: list[tuple[Path, str]], *,
                      val: int | float | None, out: Path, seed: int, twin_of: dict[Path, Path]) -> SplitPlan:
    """A multi-label split: the split column's, or validation chosen by multilabel.validation_choice (stratified on
    each photo's rarest label); each photo keeps its path under the source, its labels go to LABELS_FILE.
    images: plan_split's, sorted there (the split must not depend on listing order); unique: less the twins."""
    singles = sorted(name for name, count in scan.class_counts().items() if count < 2)
    if singles:
        raise TlkitError(f"label {', '.join(singles)} is given to a single photo, so it cannot appear in both training "
                         "and validation. Add photos with that label or remove it.")
    if scan.given_subsets:
        subset_of = scan.given_subsets
    elif val is None:
        raise _no_val(scan.source)
    else:
        chosen = validation_choice([tuple(scan.labels_of(label)) for _, label in unique],
                                   val_count(val, len(unique)), seed)
        subset_of = {path: VALIDATION if row in chosen else TRAINING for row, (path, _) in enumerate(unique)}
    rows = [(path, label, subset_of[twin_of.get(path, path)], Path(subset_of[twin_of.get(path, path)]) /
             path.relative_to(scan.root)) for path, label in images]
    # The plan lists training first (as plan_split's does); within a subset, images' sorted order holds.
    plan = SplitPlan(scan=scan, out=Path(out), rows=sorted(rows, key=lambda row: row[2] != TRAINING),
                     twins=len(twin_of), multi_label=True)
    held = {subset: {name for _, label, row_subset, _ in rows if row_subset == subset for name in scan.labels_of(label)}
            for subset in SUBSETS}
    check_subset_labels(held[TRAINING], held[VALIDATION], "this split",
                        "Give those labels more photos, or training photos.")
    if lacking := sorted(held[TRAINING] - held[VALIDATION]):
        warn(f"no validation photo holds the label(s) {', '.join(lacking)}: their threshold stays 0.5 and their "
             f"precision is not measured; a larger {option('val')} (or more such photos) gives them some")
    return plan


def multi_label_source(scan: Scan, multi_label: bool) -> None:
    """Refuse what cannot be read as asked: a folder as multi-label (a class folder holds one label a photo), a
    label file whose cells give several labels without multi_label."""
    if multi_label and scan.labels_file is None:
        raise TlkitError(f"{option('multi_label', True)} needs a label file (labels.csv, path,label rows with the "
                         f"labels of a photo separated by '{SEPARATOR}': cat{SEPARATOR}dog); {relpath(scan.source)} is a "
                         "folder, and a folder's names or class folders give one label a photo. Write a label file "
                         f"of your photos, or leave out {option('multi_label', True)}.")
    several = [row for row in scan.bad_rows if row.why.startswith(SEVERAL_LABELS)]
    if several and not multi_label:
        raise TlkitError(f"{relpath(scan.source)} gives several labels to {len(several)} photo(s) (such as "
                         f"{bad_row_text(several[0])}), and a split reads one label a photo unless told: add "
                         f"{option('multi_label', True)} to train a multi-label model (one yes/no output per label; "
                         f"{option('label_sep')} names another separator than '{SEPARATOR}'), or give each photo one "
                         "label.")


def _no_val(src: Path) -> TlkitError:
    return TlkitError(f"{option('val')} is needed: say how many photos of {relpath(src)} go to validation (a count, "
                      "2000, or a fraction, 0.2). Only a label file with a split column gives its own split.")


def _kept_split(scan: Scan, out: Path) -> SplitPlan:
    """The split a label file's split column gives, kept as it is; every class needs a photo in each subset."""
    rows = [(path, label, scan.given_subsets[path], Path(scan.given_subsets[path]) / label / _name_in_class(scan, path))
            for path, label in sorted(scan.images)]
    plan = SplitPlan(scan=scan, out=Path(out), rows=sorted(rows, key=lambda row: (row[2] != TRAINING, row[0])))
    counts = plan.counts()
    lacking = [f"{label} (no {subset} photo)" for label in scan.classes for subset in SUBSETS if not counts[subset][label]]
    if lacking:
        raise TlkitError(f"the split column of {relpath(scan.source)} leaves class {', '.join(lacking)}; each subset "
                         "needs a photo of every class. Give those photos the other subset, or drop the split column "
                         f"to let {option('val')} choose.")
    return plan


def single_image_classes(scan: Scan) -> list[str]:
    """The classes split refuses: those with one image, identical files counted once (a full check's
    hashes), since a class needs an image in training and another in validation."""
    twin_of = _twins(scan, sorted(scan.images))
    counts = Counter(label for path, label in scan.images if path not in twin_of)
    return sorted(label for label, n in counts.items() if n < 2)


def _twins(scan: Scan, images: list[tuple[Path, str]], pairs: tuple[tuple[str, str], ...] = ()) -> dict[Path, Path]:
    """Each file that must go where another goes -> the first file of its group in sorted order: files identical
    (SHA-1; {} without hashes) and the pairs given (paths relative to the source), joined into groups."""
    links, first_with = [], {}
    for path, _ in images:
        digest = scan.details[path].sha1 if path in scan.details else ""
        if digest:
            links.append((first_with.setdefault(digest, path), path))
    links += [(scan.root / first, scan.root / second) for first, second in pairs]
    known, leader = {path for path, _ in images}, {}

    def group_of(path: Path) -> Path:  # union-find, by hand: a few lines, where a graph library would be a dependency
        while leader.get(path, path) != path:
            path = leader[path]
        return path

    for first, second in links:
        if first in known and second in known and group_of(first) != group_of(second):
            low, high = sorted((group_of(first), group_of(second)))
            leader[high] = low
    return {path: group_of(path) for path, _ in images if group_of(path) != path}


def apply_exclusions(scan: Scan, exclusions: Exclusions) -> tuple[int, int]:
    """Take the photos a reviewed list excludes out of scan.images and give the
    ones it relabels their new class; the files stay where they are. Returns (excluded, relabelled)."""
    relative = {path: path.relative_to(scan.root).as_posix() for path, _ in scan.images}
    exclusions.check_matches(set(relative.values()), scan.root)
    classes, path_of = scan.classes, {name: path for path, name in relative.items()}
    kept = exclusions.apply([(relative[path], classes.index(label)) for path, label in scan.images], classes)
    scan.images, before = [(path_of[name], classes[index]) for name, index in kept], len(scan.images)
    return before - len(kept), sum(name in exclusions.new_class for name, _ in kept)


def _name_in_class(scan: Scan, path: Path) -> Path:
    """The file's path inside its class folder: its path under SRC (flat) or under SRC/<class>
    (folders), so two files of the same name in different subfolders never meet."""
    relative = path.relative_to(scan.root)
    return Path(*relative.parts[1:]) if scan.layout == "folders" else relative


def prepare_split(src: Path, val: str | None, out: Path | None = None, *, seed: int = 0, force: bool = False,
                  quick: bool = False, exclude: Path | None = None, dry_run: bool = False, multi_label: bool = False,
                  label_sep: str = SEPARATOR) -> tuple[Scan, SplitPlan]:
    """What `tlkit split` will do, nothing written yet: the outputs checked free (before any image is
    read), every image checked (decoded and hashed, or headers only when quick), and the seeded plan.
    src: a folder, or a label file (labels.csv: tlkit/labelfile.py). val: a count ("2000") or a fraction
    ("0.1"); None only for a label file whose split column gives the split. out None: beside src. exclude: a reviewed list (audit.csv
    of SRC): its exclude rows are left out, its relabel rows split under their new class, its near-duplicate
    pairs kept in one subset. dry_run: OUT need not be writable. multi_label: a label file's cells give several
    labels a photo, separated by label_sep (tlkit/multilabel.py; the split writes LABELS_FILE beside the photos)."""
    refuse_stdout(out, "two folders and split.csv")
    if val is None and not is_label_file(Path(src)):
        raise _no_val(Path(src))  # a label file may give its split; a folder never does
    val_size = parse_val(val) if val is not None else None
    seed = checked_number("seed", seed, int, SEEDS)
    exclusions = read_exclusions(exclude) if exclude else None  # a bad list stops before any photo is read
    if exclusions is not None and multi_label:
        raise TlkitError(f"{option('exclude')} relabels photos with one class each, so it does not apply to a "
                         "multi-label split; edit the label file's rows instead, or leave out "
                         f"{option('multi_label', True)}.")
    out = Path(out) if out else default_out(src)
    finish_interrupted_swap(out)  # a split killed while swapping in is finished before it is judged
    check_outputs_free(out, Path(src), force)
    if not dry_run:
        check_writable(out, "out")
    if multi_label and is_label_file(Path(src)):
        label_sep = checked_separator(label_sep)
    scan = scan_with_progress(Path(src), full=not quick, label_sep=label_sep if multi_label else None)
    multi_label_source(scan, multi_label)
    check_sources_outside(scan, out)
    if scan.given_subsets and val is not None:
        info(f"{relpath(scan.source)} gives the split in its split column; {option('val', val)} is not used")
    if exclusions is None:
        return scan, plan_split(scan, val_size, out, seed=seed)
    excluded, relabelled = apply_exclusions(scan, exclusions)
    info(f"{option('exclude', relpath(Path(exclude)))}: {excluded} photo(s) left out, {relabelled} split under another class; "
         "the files themselves are untouched")
    return scan, plan_split(scan, val_size, out, seed=seed, pairs=exclusions.pairs)


def checked_separator(label_sep) -> str:
    """--label-sep: one or a few characters, none of them a comma, quote, space or line end (the CSV's own)."""
    if not isinstance(label_sep, str) or not label_sep or len(label_sep) > 3 or any(
            char in ',"\r\n' or char.isspace() for char in label_sep) or not label_sep.isprintable():
        raise TlkitError(f"{option('label_sep', label_sep)} cannot separate the labels of a photo: give one to three "
                         f"printable characters other than a comma, quote or space ('{SEPARATOR}' by default, as in "
                         f"cat{SEPARATOR}dog).")
    return label_sep


def default_out(src: Path) -> Path:
    """`data/train` splits into `data/training` and `data/validation`; `data/labels.csv` too."""
    return Path(src).resolve().parent


def check_sources_outside(scan: Scan, out: Path) -> None:
    """Refuse a label file that names photos inside the folders the split replaces (a folder source is refused
    before, by check_outputs_free): the split would delete or overwrite its own sources."""
    if scan.labels_file is None:
        return
    targets = [(Path(out) / subset).resolve() for subset in SUBSETS]
    inside = [path for path, _ in scan.images if any(target in path.resolve().parents for target in targets)]
    if inside:
        raise TlkitError(f"{relpath(scan.source)} names {len(inside)} photo(s) inside the folders this split writes "
                         f"(such as {relpath(inside[0])}), which it would replace; choose another {option('out')}, or "
                         "list photos that lie elsewhere.")


def check_outputs_free(out: Path, src: Path, force: bool) -> None:
    """Refuse to overwrite earlier output, or to write inside the source; with force, refuse to replace what
    no tlkit split wrote."""
    src = src.resolve()
    for name in OUTPUTS:
        target = (out / name).resolve()
        if src == target or target in src.parents:
            raise TlkitError(
                f"the source {relpath(src)} is inside the output {relpath(target)}; split the "
                f"original folder, or choose another {option('out')}."
            )
        if src in target.parents:
            raise TlkitError(
                f"the output {relpath(target)} would be inside the source {relpath(src)}, where the next "
                f"split or check would take it for a class; choose an {option('out')} outside it."
            )
        if target.exists() and not force:
            raise TlkitError(
                f"{relpath(target)} already exists; nothing was written. Use {option('force', True)} to replace "
                f"it, or {option('out', 'DIR')} to write elsewhere."
            )
    if force:
        _check_a_split_of_ours(out)


def _check_a_split_of_ours(out: Path) -> None:
    """--force replaces training/, validation/ and split.csv only where they are what a split writes: two
    folders beside the manifest that lists their photos."""
    present = [name for name in OUTPUTS if os.path.lexists(out / name)]
    if not present:
        return
    foreign = [name for name in present if (out / name).is_symlink()
               or (out / name).is_dir() != (name in SUBSETS)]
    if not (out / MANIFEST).is_file():
        foreign = present
    if foreign:
        raise TlkitError(
            f"{relpath(out)} holds {', '.join(foreign)}, which no tlkit split wrote (a split writes the folders "
            f"training/ and validation/ beside its {MANIFEST}); {option('force', True)} replaces only a split of "
            f"tlkit's, so nothing was changed. Move them away, or choose another {option('out')}."
        )


def check_nothing_lost(plan: SplitPlan) -> None:
    """A re-split deletes the old split: refuse when that holds a photo's only copy. A photo there is safe to
    delete when it is a symlink, has a hard link outside the old split (the default mode links the sources),
    or has the same bytes as the photo this split takes in its place (same class and name: a copy split).
    What is left was moved there (--mode move) or added by hand."""
    taken = {destination.relative_to(subset): source for source, label, subset, destination in plan.rows}
    files = [(folder, path, path.stat()) for folder in (plan.out / subset for subset in SUBSETS) if folder.is_dir()
             for path in sorted(folder.rglob("*")) if not path.is_symlink() and path.is_file()]
    names_inside = Counter((stat.st_dev, stat.st_ino) for *_, stat in files)
    only_copies = []
    for folder, path, stat in files:
        if stat.st_nlink > names_inside[stat.st_dev, stat.st_ino] or path == folder / LABELS_FILE:
            continue  # another name outside the folders that go; a multi-label split's labels, written again
        source = taken.get(path.relative_to(folder))
        if source is None or source.stat().st_size != stat.st_size or not filecmp.cmp(source, path, shallow=False):
            only_copies.append(path)
    if only_copies:
        raise TlkitError(
            f"replacing the split in {relpath(plan.out)} would delete {len(only_copies)} photo(s) whose only copy is "
            f"there (such as {relpath(only_copies[0])}): an earlier split moved them ({option('mode', 'move')}), "
            f"or they were added by hand. Nothing was changed. Move them back into {relpath(plan.scan.root)} and "
            f"split again, or write this split elsewhere ({option('out')})."
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
    with open(path, "w", newline="", encoding=ENCODING, errors=ERRORS) as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "class", "subset", "destination"])
        for source, label, subset, destination in plan.rows:
            writer.writerow([path_text(source.relative_to(plan.scan.root)), label, subset, path_text(destination)])


def _verify_output(plan: SplitPlan, staging: Path) -> None:
    """Every planned file is in the output exactly once, and nothing else is."""
    found = sorted(p.relative_to(staging) for subset in SUBSETS for p in (staging / subset).rglob("*")
                   if not p.is_dir() and not (plan.multi_label and p == staging / subset / LABELS_FILE))
    expected = sorted(destination for *_, destination in plan.rows)
    if found != expected:
        raise RuntimeError(f"split output does not match its plan: {len(found)} files for {len(expected)} planned")


JOURNAL = ".tlkit-split-journal.json"
MARKER = ".tlkit-split-marker"  # inside each work folder a split makes beside its outputs, with the split's token
LOCK = ".tlkit-split.lock"  # held by the one process that builds, swaps in or finishes a split of a folder
_STAGING, _OLD = re.compile(r"\.tlkit-split-\d+"), re.compile(r"\.tlkit-split-old-\d+")


def execute_split(plan: SplitPlan, mode: str = "link", force: bool = False) -> None:
    """Write the plan: build under a temporary folder (with a progress bar), check it, then swap it into place,
    holding the folder's split lock from before an earlier split is finished until the moved sources are gone."""
    out = plan.out
    made_out = not out.exists()
    if made_out:
        check_outputs_free(out, plan.scan.source, force)  # refused before anything is made
    out.mkdir(parents=True, exist_ok=True)
    try:
        _build_and_swap(plan, mode, force)
    except BaseException:
        if made_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a split that failed leaves no empty folder of its own making
        raise


def _build_and_swap(plan: SplitPlan, mode: str, force: bool) -> None:
    out = plan.out
    with _holding_split(out):
        _finish_swap(out)
        check_outputs_free(out, plan.scan.source, force)
        if force:
            check_nothing_lost(plan)
        _remove_leftovers(out)
        token = secrets.token_hex(8)
        staging = _build(plan, _work_folder(out / f".tlkit-split-{os.getpid()}", token), mode)
        _swap_in(out, staging, token)
        if mode == "move":
            for source, *_ in plan.rows:
                source.unlink()


def _build(plan: SplitPlan, staging: Path, mode: str) -> Path:
    """The split's folders and manifest, built and checked in staging."""
    try:
        with progress() as bar:
            task = bar.add_task(f"{mode} files", total=len(plan.rows))
            for source, _, _, destination in plan.rows:
                _place(source, staging / destination, mode)
                bar.advance(task)
        _write_manifest(plan, staging / MANIFEST)
        if plan.multi_label:
            for subset in SUBSETS:
                write_subset_labels(staging / subset / LABELS_FILE, [
                    (destination.relative_to(subset), label) for _, label, row_subset, destination in plan.rows
                    if row_subset == subset])
        _verify_output(plan, staging)
    except BaseException as error:  # a full disk, Ctrl-C: the half-built copy goes, nothing else changed
        _remove_work_folder(staging)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TlkitError(_disk_full(plan.out, mode)) from None
        raise
    return staging


@contextlib.contextmanager
def _holding_split(out: Path):
    """The folder's split lock (atomic.lock_file): a second split, or a reader finishing an interrupted one,
    waits for the first instead of moving folders under it."""
    lock = out / LOCK
    try:
        handle = lock_file(lock, wait=False)
    except BlockingIOError:
        info(f"waiting for another tlkit split of {relpath(out)} to finish")
        handle = lock_file(lock, wait=True)
    try:
        yield
    finally:
        unlock_file(handle, lock)


def _disk_full(out: Path, mode: str) -> str:
    what = {"copy": "copying files", "move": "moving files", "symlink": "linking files",
            "link": "copying files (hard links cannot cross from the photos' disk to this one)"}[mode]
    advice = (f"Free some space, or split with the default {option('mode', 'link')} (no copies)." if mode == "copy"
              else f"Free some space, write the split on the photos' own disk ({option('out')}), or use "
              f"{option('mode', 'symlink')}.")
    return (f"the disk of {relpath(out)} filled up while the split was {what}; the partial copy was removed and "
            f"nothing else changed. {advice}")


def _work_folder(path: Path, token: str) -> Path:
    """A new folder of this split's, marked as such first thing (only a marked folder is ever deleted)."""
    try:
        path.mkdir()
    except FileExistsError:
        raise TlkitError(f"{relpath(path)} is in the way and is not tlkit's to remove; move it away and split "
                         "again.") from None
    (path / MARKER).write_text(token, encoding="utf-8")
    return path


def _ours(path: Path, token: str | None = None) -> bool:
    """Whether `path` is a work folder a split made (with token: this split's), or an empty one (a split killed
    between making a work folder and marking it, or between unmarking and removing it)."""
    if path.is_symlink() or not path.is_dir():
        return False
    marker = path / MARKER
    if not marker.is_file():
        return not any(path.iterdir())
    return token is None or marker.read_text(encoding="utf-8") == token


def _remove_work_folder(path: Path) -> None:
    """Delete a work folder, its marker last: a folder that a kill leaves half deleted is still known as ours."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name != MARKER:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    (path / MARKER).unlink(missing_ok=True)
    path.rmdir()


def _remove_leftovers(out: Path) -> None:
    """Work folders of earlier splits killed while building (marked as ours, or empty). An old-outputs folder
    that still holds something is the previous split itself, left by a swap whose journal is gone: kept."""
    for leftover in out.glob(".tlkit-split-*"):
        if not (_STAGING.fullmatch(leftover.name) or _OLD.fullmatch(leftover.name)) or not _ours(leftover):
            continue
        if _OLD.fullmatch(leftover.name) and any(child.name != MARKER for child in leftover.iterdir()):
            warn(f"{relpath(leftover)} holds the folders of an earlier split, left by a split interrupted while "
                 "swapping in whose journal is gone; tlkit leaves it: look through it, then delete it yourself")
            continue
        _remove_work_folder(leftover)
    (out / JOURNAL).with_suffix(".tmp").unlink(missing_ok=True)


def _swap_in(out: Path, staging: Path, token: str) -> None:
    """Replace training/, validation/ and split.csv with the staged ones as one step that survives a
    kill: a journal names both work folders first; the old outputs are renamed aside (not deleted) before
    the new ones are renamed in, and deleted last, the journal after them. An interrupted swap is finished
    by the next split, or by the next command that reads the folder (finish_pending_split)."""
    old = _work_folder(out / f".tlkit-split-old-{os.getpid()}", token)
    journal = out / JOURNAL
    tmp = journal.with_suffix(".tmp")
    tmp.write_text(json.dumps({"staging": staging.name, "old": old.name, "token": token}), encoding="utf-8")
    os.replace(tmp, journal)  # from here on, the next run finishes what this one started
    _complete_swap(out, staging, old)


def _complete_swap(out: Path, staging: Path, old: Path) -> None:
    """The swap from wherever it stands: each output still staged goes in (whatever stands in its place is the
    old one, which goes aside first); then the work folders go, and the journal last."""
    for name in OUTPUTS:
        if os.path.lexists(staging / name):
            if os.path.lexists(out / name):
                os.replace(out / name, old / name)
            os.replace(staging / name, out / name)
    _remove_work_folder(old)
    _remove_work_folder(staging)
    (out / JOURNAL).unlink()


def _read_journal(out: Path) -> tuple[Path, Path, str]:
    """(staging, old, token) of the journal in `out`, or a TlkitError that names what is wrong with it. Only
    what tlkit itself makes for a split is accepted: the two work folders' own names, directly in `out`,
    each marked with the journal's token where it still exists."""
    journal = out / JOURNAL
    try:
        names = json.loads(journal.read_text(encoding="utf-8"))
        staging, old, token = names["staging"], names["old"], names["token"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        why = f"it cannot be read: {error}"
    else:
        if not (isinstance(staging, str) and _STAGING.fullmatch(staging) and isinstance(old, str)
                and _OLD.fullmatch(old) and isinstance(token, str)):
            why = "it names folders that no tlkit split makes"
        elif not all(_ours(out / name, token) for name in (staging, old) if (out / name).exists()):
            why = "the folders it names were not made by that split"
        else:
            return out / staging, out / old, token
    raise TlkitError(
        f"{relpath(journal)} is not a split journal tlkit can trust ({why}); nothing was moved or deleted. It "
        f"would record a `tlkit split` of {relpath(out)} interrupted while swapping its folders in. If no split of "
        f"this folder was running, or the file came with the photos from elsewhere, delete it and run this again."
    )


def finish_interrupted_swap(out: Path) -> bool:
    """Complete a split whose swap was interrupted (killed, Ctrl-C): the new, verified outputs go in,
    the old ones out, under the folder's split lock. Returns whether there was one to finish (and says
    so); a journal tlkit cannot trust is a TlkitError, and nothing is touched."""
    out = Path(out)
    if not _journal_there(out):
        return False
    with _holding_split(out):
        return _finish_swap(out)  # the journal read again under the lock: another may have finished it


def _journal_there(out: Path) -> bool:
    return os.path.lexists(out / JOURNAL)


def _finish_swap(out: Path) -> bool:
    if not _journal_there(out):
        return False
    staging, old, token = _read_journal(out)
    if not old.exists():
        _work_folder(old, token)  # the old outputs were deleted already: an empty one to finish the same way
    _complete_swap(out, staging, old)
    warn(f"finished a split of {relpath(out)} that was interrupted while putting its folders in place "
         "(the new split was complete and checked; the old one is removed)")
    return True


def finish_pending_split(path: Path) -> None:
    """What every reader of photos calls first: finish (or refuse) an interrupted split of the folder at
    `path`, or of the split it lies in (DATA/validation, DATA/validation/cat), so that no command reads
    half of one split and half of another."""
    path = Path(path).absolute()
    for folder in (path, path.parent, path.parent.parent):
        if _journal_there(folder):
            finish_interrupted_swap(folder)
            return
