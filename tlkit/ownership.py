"""What tlkit wrote, so that `--force` replaces only that. Each folder tlkit writes into holds a record,
.tlkit-written.json, of the files it wrote there (name, size, modification time, and a hash of the small ones);
--force and a cache rebuild remove or replace only files in the record and unchanged since. Everything else
stays, and is named; a folder is removed only once it is empty. Knows nothing of what the files hold.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlkit.errors import TlkitError
from tlkit.runtime import relpath, warn

RECORD = ".tlkit-written.json"
RECORD_FORMAT = 1
# Files up to this size are hashed: the csv, json, html and yaml a user edits by hand are judged by their bytes
# (an edit that keeps the size and the time is still seen). Larger ones (weights, cached arrays) by size and
# modification time: hashing a cache of gigabytes at every check would cost seconds.
HASH_LIMIT = 16 << 20
NO_RECORD, CHANGED, A_LINK = "tlkit has no record of writing it", "changed since tlkit wrote it", "a link"


# ---------------------------------------------------------------- the record: one writer, one reader


def note_written(path: Path) -> None:
    """Record the file now at `path` as tlkit's (called once it is in place: atomic.atomic_write, and the few
    writers that build a file otherwise). Entries of files no longer there are dropped. A record that cannot
    be written leaves the file unrecorded, which only ever means it is kept."""
    path = Path(path)
    try:
        files = read_record(path.parent) or {}
        files[path.name] = _fingerprint(path)
        _save(path.parent, files)
    except OSError:
        pass


def move_into_place(staged: Path, path: Path) -> None:
    """Rename a file written under another name onto `path`, and record it there."""
    os.replace(staged, path)
    note_written(path)


def read_record(folder: Path) -> dict[str, dict] | None:
    """The files recorded in `folder` (name -> size, mtime_ns, sha256); None where it has no record (written
    before tlkit kept one, or never by tlkit); {} for a record tlkit cannot read: nothing in it is trusted."""
    path = Path(folder) / RECORD
    if not os.path.lexists(path):
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or not isinstance(record.get("files"), dict):
        return {}
    return {name: entry for name, entry in record["files"].items() if isinstance(entry, dict)}


def _save(folder: Path, files: dict[str, dict]) -> None:
    """Write the record (renamed into place; without an fsync, since a record lost to a crash only keeps files)."""
    files = {name: entry for name, entry in files.items() if os.path.lexists(folder / name)}
    path = folder / RECORD
    if not files:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f"{RECORD}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"format": RECORD_FORMAT, "files": files}, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if stat.st_size <= HASH_LIMIT:
        entry["sha256"] = _sha256(path)
    return entry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unchanged(entry: dict, path: Path) -> bool:
    stat = path.lstat()
    if not path.is_file() or path.is_symlink() or stat.st_size != entry.get("size"):
        return False
    if "sha256" in entry:
        return _sha256(path) == entry["sha256"]
    return stat.st_mtime_ns == entry.get("mtime_ns")


# ---------------------------------------------------------------- what --force may remove


def why_kept(path: Path, files: dict[str, dict] | None = None) -> str | None:
    """None when `path` is a file tlkit wrote and unchanged since (files: its folder's record, read when not
    given); else why --force must leave it."""
    path = Path(path)
    if path.is_symlink():
        return A_LINK
    files = read_record(path.parent) if files is None else files
    if not files or path.name not in files:
        return NO_RECORD
    return None if _unchanged(files[path.name], path) else CHANGED


def wrote_any(folder: Path, names: tuple[str, ...]) -> bool:
    """Whether the record of `folder` names one of `names`: a folder that this command of tlkit's wrote."""
    return bool(set(read_record(folder) or {}) & set(names))


@dataclass
class Survey:
    """A folder's files (however deep) as --force sees them: tlkit's and unchanged, or kept and why."""

    folder: Path
    ours: list[Path]
    kept: dict[Path, str]


def survey(folder: Path, legacy: Callable[[Path], bool] | None = None) -> Survey:
    """Each file under `folder`: ours when its folder's record names it unchanged; in a folder without a record
    (written before tlkit kept one), ours when `legacy` accepts it. Links are never followed, and kept."""
    folder, ours, kept = Path(folder), [], {}
    for parent, dirs, names in os.walk(folder):
        here, files = Path(parent), read_record(Path(parent))
        links = [here / name for name in dirs if (here / name).is_symlink()]
        for path in [here / name for name in names if name != RECORD] + links:
            if files is None:
                why = None if legacy is not None and legacy(path) else NO_RECORD
            else:
                why = why_kept(path, files)
            if why:
                kept[path] = why
            else:
                ours.append(path)
    return Survey(folder, ours, kept)


def clear(found: Survey) -> None:
    """Remove the files of a survey that are tlkit's, then the folders left empty (records of nothing
    included), deepest first; name what stays."""
    for path in found.ours:
        path.unlink(missing_ok=True)
    for parent, _, _ in os.walk(found.folder, topdown=False):
        here, files = Path(parent), read_record(Path(parent))
        if files:
            _save(here, files)  # the removed files' entries dropped; the record goes with the last of them
        if not any(here.iterdir()):
            here.rmdir()
    say_kept(found.kept)


def say_kept(kept: dict[Path, str]) -> None:
    if kept:
        named = "; ".join(f"{relpath(path)} ({why})" for path, why in list(kept.items())[:10])
        more = f"; and {len(kept) - 10} more" if len(kept) > 10 else ""
        warn(f"kept {len(kept)} file(s) that tlkit did not write or that changed since: {named}{more}")


def replace_outputs(folder: Path, outputs: tuple[str, ...], force: bool) -> dict[str, Path]:
    """Where each of `outputs` is to be written in `folder`. With force, the folder is cleared first (its files
    that tlkit wrote and that are unchanged), and an output whose name a kept file holds (an audit.csv the user
    edited) goes beside it as NAME.new.EXT, said. Without, nothing is removed: the caller has refused a folder
    that holds an output already."""
    folder = Path(folder)
    if not force:
        return {name: folder / name for name in outputs}
    found = survey(folder)
    clear(found)
    targets = {}
    for name in outputs:
        target = folder / name
        if os.path.lexists(target):
            target = target.with_name(f"{target.stem}.new{target.suffix}")
            if os.path.lexists(target):
                raise TlkitError(f"{relpath(folder / name)} and {relpath(target)} are both kept ("
                                 f"{found.kept.get(folder / name, NO_RECORD)}), so the new {name} has nowhere to "
                                 "go; nothing more was written. Move one of them away and run this again.")
            warn(f"{relpath(folder / name)} is kept ({found.kept.get(folder / name, NO_RECORD)}); the new one is "
                 f"{relpath(target)}")
        targets[name] = target
    return targets
