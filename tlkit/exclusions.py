"""Photos to leave out of a split or a run, photos to give another class, and pairs to keep in one subset,
read from a list the user reviewed: the audit.csv `tlkit audit` writes, or any CSV with a `path` column.

The photos themselves are never touched: a split or a run just does not take them, or takes them under
the class a row names. Paths are relative to the folder the command reads (SRC for split, DATA for
finetune), as audit writes them for the folder it audited.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tlkit.errors import TlkitError
from tlkit.pathtext import ENCODING, ERRORS
from tlkit.runtime import relpath, warn

ACTIONS = ("exclude", "relabel", "keep")
PAIRED = ("near-duplicate", "identical")  # audit.csv issues whose `other` column names the pair


@dataclass(frozen=True)
class Exclusions:
    """What a list says: excluded paths, {path: new class}, and (path, other) pairs of near-duplicates."""

    source: Path
    excluded: frozenset[str]
    relabelled: tuple[tuple[str, str], ...]
    pairs: tuple[tuple[str, str], ...]

    @property
    def new_class(self) -> dict[str, str]:
        return dict(self.relabelled)

    def named(self) -> set[str]:
        return set(self.excluded) | set(self.new_class)

    def apply(self, listed: list[tuple[str, int]], classes: list[str], prefix: str = "") -> list[tuple[str, int]]:
        """(relative path, class index) rows without the excluded ones, relabelled ones under their new class;
        prefix: what the list's paths carry before a row's (a split's `training/`)."""
        self.check_classes(classes)
        new_class, kept = self.new_class, []
        for relative, index in listed:
            key = prefix + relative
            if key in self.excluded:
                continue
            if key in new_class:
                index = classes.index(new_class[key])
            kept.append((relative, index))
        return kept

    def check_classes(self, classes: list[str]) -> None:
        """Stop at a relabel row whose new class is not one of `classes`."""
        for path, label in self.relabelled:
            if label not in classes:
                raise TlkitError(f"{relpath(self.source)} relabels {path} as {label!r}, which is not one of the "
                                 f"classes ({', '.join(classes)}); correct the row or change its action to exclude.")

    def check_matches(self, known: set[str], folder: Path) -> None:
        """Say which rows name no photo of `folder`; stop when none does (a list written for another folder)."""
        missing = sorted(self.named() - known)
        if not missing:
            return
        if len(missing) == len(self.named()):
            raise TlkitError(f"no row of {relpath(self.source)} names a photo of {relpath(folder)} (such as "
                             f"{missing[0]}); paths in it are relative to the folder that was audited. Give the list "
                             "of an audit of this folder (tlkit audit FOLDER).")
        warn(f"{len(missing)} row(s) of {relpath(self.source)} name no photo of {relpath(folder)} (such as "
             f"{missing[0]}); they are passed over")


def read_exclusions(path: Path | str) -> Exclusions:
    """The list at `path`: every row with a `path`; its `action` (exclude when there is none), relabel rows'
    class in `suggested`, the pair of near-duplicate rows in `other`."""
    path = Path(path)
    try:
        with open(path, newline="", encoding=ENCODING, errors=ERRORS) as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TlkitError(f"cannot read the list of photos to exclude, {relpath(path)} ({error}); give the audit.csv "
                         "that `tlkit audit` wrote, or a CSV with a path column.") from None
    if not rows or "path" not in rows[0]:
        raise TlkitError(f"{relpath(path)} has no path column (or no rows); give the audit.csv that `tlkit audit` "
                         "wrote, or a CSV whose path column names the photos to exclude.")
    excluded, relabelled, pairs = set(), {}, []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        name, action = (row.get("path") or "").strip(), (row.get("action") or "exclude").strip()
        if action not in ACTIONS or not name or (action == "relabel" and not (row.get("suggested") or "").strip()):
            raise TlkitError(f"line {number} of {relpath(path)} is not a row tlkit can act on (path {name!r}, action "
                             f"{action!r}): each row needs a path, an action of {', '.join(ACTIONS)}, and a relabel "
                             "row the new class in `suggested`. Correct it, or delete the row.")
        if action == "exclude":
            excluded.add(name)
        elif action == "relabel":
            relabelled[name] = row["suggested"].strip()
        if row.get("issue") in PAIRED and row.get("other"):
            pairs.append((name, row["other"].strip()))
    return Exclusions(path, frozenset(excluded), tuple(sorted(relabelled.items())), tuple(pairs))
