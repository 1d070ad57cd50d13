"""Read a label file (CSV with the columns path,label and an optional split) into its rows, each bad row set
aside with one sentence saying why. Paths are relative to the CSV's folder; tlkit.scan turns the rows into a
Scan, so check, split, audit, evaluate and train see the same photos. Reads only; prints nothing.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import TlkitError, option
from tlkit.pathtext import ENCODING, ERRORS, shown
from tlkit.runtime import relpath

SUFFIX = ".csv"  # a source path ending so is a label file; anything else is a folder of photos
PATH, LABEL, SPLIT = "path", "label", "split"
GIVEN_SUBSETS = ("training", "validation")  # a split cell's values: tlkit.split.SUBSETS (a test keeps them one)
SEPARATOR = "|"  # what separates the labels of one photo in a multi-label file (--label-sep; split's own files use it)
SEVERAL_LABELS = "gives several labels"  # a BadRow's why starts so where a single-label read meets a multi-label cell
_HINT = "A label file's first line names its columns: path,label (and split, to keep a split of your own)."


@dataclass(frozen=True)
class LabelRow:
    path: Path  # the photo: the CSV's folder joined with the row's path
    labels: tuple[str, ...]  # row_labels: one label, or a multi-label file's several
    subset: str | None  # training or validation from the split column; None without one
    line: int
    text: str  # the path as written


@dataclass(frozen=True)
class BadRow:
    line: int  # in the CSV, counting the header as line 1
    text: str  # the row's path as written
    why: str


@dataclass
class LabelFile:
    path: Path
    rows: list[LabelRow]  # one per photo, in the file's order
    bad: list[BadRow]  # rows left out, in the file's order
    has_split: bool  # the file names a split column: rows keep the subset it gives


def bad_row_text(row: BadRow) -> str:
    """One bad row in words: its line, its path as written and why it was left out."""
    return f"line {row.line} '{shown(row.text)}' {row.why}"


def is_label_file(path: Path) -> bool:
    return Path(path).suffix.lower() == SUFFIX


def row_labels(cell: str, separator: str | None = None) -> tuple[str, ...]:
    """The labels a label cell gives (surrounding spaces dropped), or ValueError saying why it gives none.
    separator None: one label a photo, and a cell holding SEPARATOR is refused (tlkit split --multi-label reads
    it); else the cell's labels between separators, each once, in the cell's order (a photo needs one at least)."""
    label = cell.strip()
    if not label:
        raise ValueError("has an empty label")
    if label != label.encode(ENCODING, ERRORS).decode(ENCODING, "replace"):
        raise ValueError(f"has a label holding bytes that are not UTF-8 ('{shown(label)}'); save the file as UTF-8")
    if separator is None:
        if SEPARATOR in label:
            raise ValueError(f"{SEVERAL_LABELS} ('{shown(label)}', separated by '{SEPARATOR}'), and one label a "
                             f"photo is read; `tlkit split` with {option('multi_label', True)} reads several")
        return (label,)
    labels = tuple(dict.fromkeys(part.strip() for part in label.split(separator) if part.strip()))
    if not labels:
        raise ValueError(f"gives no label between its separators ('{shown(label)}')")
    if separator != SEPARATOR and any(SEPARATOR in part for part in labels):
        raise ValueError(f"gives a label holding '{SEPARATOR}' ('{shown(label)}'), which the split's own label files "
                         "put between the labels of a photo; rename that label")
    return labels


def read_label_file(path: Path, separator: str | None = None) -> LabelFile:
    """The rows of a label file, each checked (_read_row) and a photo listed twice kept once (_one_row_each_path);
    a file tlkit cannot read as one (empty, no header naming path and label, broken quoting, unreadable) is a
    TlkitError. A path's bytes that are not UTF-8 are a file name's own (tlkit.pathtext). separator: that of a
    multi-label file (row_labels); None for one label a photo."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig", errors=ERRORS) as handle:
            lines = list(csv.reader(handle, strict=True))
    except csv.Error as error:
        raise TlkitError(f"{relpath(path)} cannot be read as CSV ({error}); a path or label holding a comma or a "
                         "quote needs quotes around it (\"a, b.jpg\"), and a quote inside doubled.") from None
    except IsADirectoryError:
        raise TlkitError(f"{relpath(path)} is a folder; a label file ({SUFFIX}) is a file. {_HINT}") from None
    except OSError as error:
        raise TlkitError(f"{relpath(path)} cannot be read ({error.strerror}).") from None
    if not any(any(cell.strip() for cell in line) for line in lines):
        raise TlkitError(f"{relpath(path)} is empty. {_HINT}")
    columns = _columns(path, lines[0])
    rows, bad = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in line):
            continue  # a blank line
        row = _read_row(path, columns, line, number, separator)
        (bad if isinstance(row, BadRow) else rows).append(row)
    kept, repeated = _one_row_each_path(rows)
    return LabelFile(path, kept, sorted(bad + repeated, key=lambda row: row.line), SPLIT in columns)


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """{column name: its place} of the header's path, label and split; other columns are not read."""
    names = [cell.strip().casefold() for cell in header]
    twice = sorted({name for name in names if names.count(name) > 1} & {PATH, LABEL, SPLIT})
    missing = [name for name in (PATH, LABEL) if name not in names]
    if twice or missing:
        problem = f"names the column {twice[0]} twice" if twice else f"has no column {' nor '.join(missing)}"
        raise TlkitError(f"{relpath(path)} {problem}: its first line reads '{shown(','.join(header))}'. {_HINT}")
    return {name: names.index(name) for name in (PATH, LABEL, SPLIT) if name in names}


def _read_row(path: Path, columns: dict[str, int], line: list[str], number: int,
              separator: str | None) -> LabelRow | BadRow:
    text = line[columns[PATH]] if columns[PATH] < len(line) else ""
    if max(columns.values()) >= len(line):
        return BadRow(number, text, f"has {len(line)} value(s), fewer than the columns its first line names")
    why = path_problem(path.parent, text)
    subset = line[columns[SPLIT]].strip().casefold() if SPLIT in columns else None
    if why is None and subset is not None and subset not in GIVEN_SUBSETS:
        why = f"gives the split '{shown(line[columns[SPLIT]])}', which is neither {' nor '.join(GIVEN_SUBSETS)}"
    if why is None:
        try:
            return LabelRow(path.parent / text, row_labels(line[columns[LABEL]], separator), subset, number, text)
        except ValueError as error:
            why = str(error)
    return BadRow(number, text, why)


def path_problem(folder: Path, text: str) -> str | None:
    """Why a row's path names no photo of the CSV's folder, or None: empty, outside the folder (absolute, or
    climbing out with ..), or no file there."""
    relative = Path(text)
    if not text.strip() or "\x00" in text:
        return "has no path" if not text.strip() else "has a path holding a NUL character"
    if relative.is_absolute() or ".." in relative.parts:
        return "names a photo outside the label file's folder (paths are relative to it, without ..)"
    if (folder / relative).is_dir():
        return "names a folder, not a photo"
    if not (folder / relative).is_file():
        return "names no file (none is there)"
    return None


def _one_row_each_path(rows: list[LabelRow]) -> tuple[list[LabelRow], list[BadRow]]:
    """Each photo once: a row that repeats an earlier one (same labels and split) is dropped with a note, and a
    photo given different labels or splits is dropped altogether (which is right is the user's to say)."""
    by_path: dict[Path, list[LabelRow]] = {}
    for row in rows:
        by_path.setdefault(row.path, []).append(row)
    kept, dropped = [], []
    for same in by_path.values():
        first = same[0]
        given = {(row.labels, row.subset) for row in same}
        if len(given) == 1:
            kept.append(first)
            dropped += [BadRow(row.line, row.text, f"repeats line {first.line}; read once") for row in same[1:]]
        else:
            said = ", ".join(f"'{shown(SEPARATOR.join(row.labels))}'" + (f" ({row.subset})" if row.subset else "")
                             + f" on line {row.line}" for row in same)
            dropped.append(BadRow(first.line, first.text, f"is listed with different labels: {said}; left out"))
    return sorted(kept, key=lambda row: row.line), dropped
