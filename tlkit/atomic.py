"""Atomic file writes: every file tlkit writes goes to a temporary name first and is renamed over
the old one, so a failed or interrupted write leaves the previous version whole, and is recorded as tlkit's
(tlkit/ownership.py: what --force may replace). A full disk becomes a TlkitError that names the file. Knows
nothing of what is written. Also the advisory lock files that keep two processes from writing the same run or
split at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

from tlkit.errors import TlkitError, option
from tlkit.ownership import note_written
from tlkit.pathtext import ENCODING, ERRORS
from tlkit.runtime import relpath

FULL_BELOW_BYTES = 16 << 20  # a folder with less free space than this after a failed write: the disk was full

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two processes are not kept apart there
    fcntl = None


def lock_file(path: Path, wait: bool):
    """Hold an exclusive advisory lock on `path` (made if missing) until unlock_file, or until the process ends,
    however it ends; None where the platform has no such locks. Without wait, BlockingIOError while another
    process holds it. A file its last holder removed between our open and our lock is not kept: the lock is
    taken again on the file now at `path`."""
    if fcntl is None:
        return None
    while True:
        handle = open(path, "a")  # noqa: SIM115 (held open on purpose: closing it lets go of the lock)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            raise
        if _same_file(path, handle):
            return handle
        handle.close()


def unlock_file(handle, path: Path) -> None:
    """Let go of lock_file's lock, removing the lock file first while it is still ours."""
    if handle is None:
        return
    if _same_file(path, handle):
        Path(path).unlink(missing_ok=True)
    handle.close()


def _same_file(path: Path, handle) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path), then rename it over `path` and record it as tlkit's; on failure `path` is
    untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        full = _out_of_space(error, path.parent)  # judged before the partial file is deleted
        tmp.unlink(missing_ok=True)
        if not isinstance(error, OSError) and not full:
            raise
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "no space left on the disk"
        raise TlkitError(f"could not write {relpath(path)} ({reason}); the previous version, if any, is left as it "
                         f"was. {_what_to_do(error, full, path)}") from None
    note_written(path)


def _what_to_do(error: BaseException, full: bool, path: Path) -> str:
    if full:
        return "Free some disk space, or write it to another disk."
    if isinstance(error, IsADirectoryError) or path.is_dir():
        return f"{relpath(path)} is a folder: name a file to write instead."
    if isinstance(error, PermissionError):
        return "You may not write there: choose a folder of your own."
    return "Write it elsewhere."


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of disk. safetensors says so ('os error 28'), but torch.save's zip
    writer fails with words of its own ('unexpected pos 576 vs 534'): the free space tells."""
    if isinstance(error, KeyboardInterrupt):
        return False
    text = str(error).lower()
    if any(words in text for words in ("no space left", "os error 28", "disk quota")):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


def check_writable(folder: Path, flag: str, *, python: str | None = None, advice: str | None = None) -> None:
    """Before any compute: that a file can be written and renamed in `folder`, or in its nearest existing parent
    where the command would create it. TlkitError naming the folder, why (no permission, a file where a folder
    should be, a read-only file system, a full disk) and what to do: by default another `flag` (errors.option;
    python: the parameter's name where it differs). Leaves nothing behind."""
    folder = Path(folder)
    existing = next((path for path in (folder, *folder.parents) if os.path.lexists(path)), Path("."))
    probe = existing / f".tlkit-probe-{os.getpid()}-{threading.get_ident()}"  # two threads may probe one folder
    renamed = probe.with_name(probe.name + "-renamed")
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
        with open(probe, "xb") as handle:
            handle.write(b"tlkit")  # a full disk may still take an empty file
        os.replace(probe, renamed)
        renamed.unlink()
    except OSError as error:
        for leftover in (probe, renamed):
            with contextlib.suppress(OSError):
                leftover.unlink()
        where = relpath(folder) if existing == folder else f"{relpath(folder)} (in {relpath(existing)})"
        todo = advice or f"Nothing was done; choose another {option(flag, 'DIR', python=python)}."
        raise TlkitError(f"cannot write to {where}: {_why_unwritable(error, existing)}. {todo}") from None


def _why_unwritable(error: OSError, existing: Path) -> str:
    if error.errno == errno.ENOTDIR:
        return f"{relpath(existing)} is a file, where a folder should be"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "you have no permission to write there"
    if error.errno == errno.EROFS:
        return "it is on a read-only file system"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    return error.strerror or str(error)


def atomic_write_text(path: Path, text: str) -> None:
    """text as UTF-8, a file name in it that is not UTF-8 as its own bytes (tlkit.pathtext)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding=ENCODING, errors=ERRORS))
