"""What the two on-disk caches share: the trunk's features (features.py) and decoded images (imagecache.py).

A cache is a folder holding one array per subset and a manifest.json, written last. Its
identity (everything it was computed from, the files' paths, sizes and modification times
included) is stored in the manifest; a cache whose identity differs from what a run needs is
stale, and the run says why before recomputing. Built in a staging folder beside it and
renamed into place, so an interrupted build never leaves a cache that looks valid; an earlier
cache goes file by file, only what tlkit wrote there (tlkit/ownership.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from tlkit.atomic import check_writable
from tlkit.errors import TlkitError, option
from tlkit.ownership import RECORD, clear, note_written, read_record, survey
from tlkit.runtime import relpath, size_words, warn
from tlkit.version import __version__

MANIFEST = "manifest.json"
WHOLE = "all"  # the one subset of a folder not split yet (the audit's caches: tlkit/auditing.py, tiles.py)
CACHE_FORMAT = 2  # of both caches' arrays; 2: photos read upright (EXIF orientation) and 16-bit samples scaled
_CHUNK_BYTES = 256 * 2**20  # host memory a copy to the GPU goes through at a time
GPU_RESERVE = 0.3  # share of the GPU's memory a cache must leave free for the model and its batches


def default_cache_root(data_dir: Path) -> Path:
    return Path(data_dir) / ".tlkit-cache"


def file_list(subset_dir: Path, classes: list[str]) -> list[tuple[str, int, int, int]]:
    """(relative path, class index, size, mtime_ns) of every image (tlkit.scan.class_images, the files
    training reads), sorted: what a cache is valid for."""
    from tlkit.scan import class_images  # here: `tlkit cache ls` and `clear` need no PIL

    return file_rows(subset_dir, class_images(subset_dir, classes))


def file_rows(folder: Path, listed: list[tuple[str, int]]) -> list[tuple[str, int, int, int]]:
    """file_list's rows of the files listed as (path relative to folder in posix form, class index)."""
    rows = []
    for relative, index in listed:
        stat = (Path(folder) / relative).stat()
        rows.append((relative, index, stat.st_size, stat.st_mtime_ns))
    return rows


def digest_rows(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def why_stale(cache_dir: Path, identity: dict, reasons: dict[str, str]) -> str | None:
    """None when the cache in cache_dir matches `identity`, else the reason it cannot be used.

    reasons: identity key -> what a difference there means; files_sha256 is checked last, per subset."""
    manifest_path = cache_dir / MANIFEST
    if not manifest_path.is_file():
        return "no cache yet"
    try:
        stored = json.loads(manifest_path.read_text())["identity"]
    except (ValueError, KeyError):
        return f"{relpath(manifest_path)} is unreadable"
    for key, reason in reasons.items():
        if stored.get(key) != identity[key]:
            return reason
    for subset, digest in identity["files_sha256"].items():
        if stored.get("files_sha256", {}).get(subset) != digest:
            return f"files in {subset}/ were added, removed or edited"
    return None


def _check_space(cache_dir: Path, needed: int, what: str) -> None:
    """Stop before writing when the disk cannot hold the cache (a memory-mapped write would crash on a full disk)."""
    existing = next(folder for folder in (cache_dir, *cache_dir.parents) if folder.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise TlkitError(
            f"{what} need {size_words(needed)} in {relpath(cache_dir.parent)}, which has {size_words(free)} free; "
            f"nothing was written. Free some space, or point {option('cache_dir')} at a disk with room.")


def new_staging(cache_dir: Path, needed: int, what: str) -> Path:
    """An empty folder beside cache_dir to build the cache in (leftovers of interrupted runs removed),
    once the disk is known to have room for `needed` bytes of `what`."""
    check_writable(cache_dir.parent, "cache_dir",
                   advice=f"Nothing was computed; point {option('cache_dir', 'DIR')} at a folder you may write to.")
    _check_space(cache_dir, needed, what)
    for leftover in cache_dir.parent.glob(f".{cache_dir.name}.partial-*"):
        if not _process_alive(leftover.name.rsplit("-", 1)[-1]):  # not another build at work
            shutil.rmtree(leftover, ignore_errors=True)
    staging = cache_dir.with_name(f".{cache_dir.name}.partial-{os.getpid()}")
    staging.mkdir(parents=True)
    return staging


def _process_alive(pid_text: str) -> bool:
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def subset_entry(subset: str, rows: list, failed: dict[str, str]) -> dict:
    """A subset's part of the manifest: its files (file_list rows) and labels, and which failed and why
    (each named to the user: left out of the cache, the run goes on)."""
    for name, why in failed.items():
        warn(f"{subset}/{name} {why}; left out of the cache")
    return {"files": [row[0] for row in rows], "labels": [row[1] for row in rows], "failed": failed}


def commit(staging: Path, cache_dir: Path, *, identity: dict, subsets: dict, summary: dict) -> None:
    """Write the manifest (last: a folder without it is no cache) and rename the staging folder into place.

    summary: what `tlkit cache ls` shows (holds, input_size, views). Under torchrun rank 0 does it and
    every process returns once the cache is in place."""
    from tlkit import distributed  # here: it loads torch, which `tlkit cache ls` does without

    if distributed.is_main():
        manifest = {"tlkit": __version__, "identity": identity, "subsets": subsets, "summary": summary}
        (staging / MANIFEST).write_text(json.dumps(manifest))
        for path in staging.iterdir():
            note_written(path)
        try:
            _put_in_place(staging, cache_dir)
        except TlkitError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    distributed.barrier()


def _put_in_place(staging: Path, cache_dir: Path) -> None:
    """The staged cache in cache_dir's place. Of an earlier cache there, only what tlkit wrote and is unchanged
    goes; what stays keeps the folder, and the new files are moved in beside it, the manifest last."""
    if cache_dir.exists():
        if not _is_cache(cache_dir) and read_record(cache_dir) is None:  # only a cache of tlkit's is replaced
            raise TlkitError(f"{relpath(cache_dir)} is in the way and is not a tlkit cache; nothing was replaced. "
                             f"Move it away, or point {option('cache_dir')} elsewhere.")
        clear(survey(cache_dir, _legacy_cache_file))
    if not cache_dir.exists():
        os.replace(staging, cache_dir)
        return
    in_the_way = sorted(path.name for path in staging.iterdir() if path.name != RECORD
                        and os.path.lexists(cache_dir / path.name))
    if in_the_way:
        raise TlkitError(f"{relpath(cache_dir)} holds {', '.join(in_the_way)}, which tlkit did not write or which "
                         f"changed since; nothing was replaced. Move it away, or point {option('cache_dir')} elsewhere.")
    for path in sorted(staging.iterdir(), key=lambda path: path.name == MANIFEST):  # the manifest last
        os.replace(path, cache_dir / path.name)
    staging.rmdir()


def _legacy_cache_file(path: Path) -> bool:
    """In a cache folder from before tlkit kept records: its manifest and arrays, where the manifest is tlkit's."""
    return _is_cache(path.parent) and (path.name == MANIFEST or path.suffix == ".npy")


def read_manifest(cache_dir: Path) -> dict:
    return json.loads((cache_dir / MANIFEST).read_text())


def label_array(labels: list) -> np.ndarray:
    """A subset's stored labels as arrays: class indices int64 [N], or a multi-label split's 0/1 rows float32 [N, L]."""
    multi_hot = bool(labels) and isinstance(labels[0], list)
    return np.asarray(labels, dtype=np.float32 if multi_hot else np.int64)


def kept_rows(entry: dict) -> list[int]:
    """The rows of a subset whose image decoded (failed ones stay zero in the array and are left out)."""
    return [i for i, name in enumerate(entry["files"]) if name not in entry["failed"]]


def list_caches(cache_root: Path) -> list[dict]:
    """What `tlkit cache ls` shows: one row per complete cache."""
    rows = []
    for manifest_path in sorted(Path(cache_root).glob(f"*/{MANIFEST}")):
        try:
            manifest = json.loads(manifest_path.read_text())
            subsets, identity = manifest["subsets"], manifest["identity"]
            summary = manifest.get("summary") or {  # feature caches written before the summary existed
                "holds": f"{identity['backbone']} features", "input_size": identity["preprocessing"]["input_size"],
                "views": identity["views"]}
        except (ValueError, KeyError):
            warn(f"{relpath(manifest_path)} is unreadable; `tlkit cache clear` removes it")
            continue
        size = sum(p.stat().st_size for p in manifest_path.parent.iterdir())
        rows.append({"folder": manifest_path.parent, **summary,
                     "images": {s: len(e["files"]) - len(e["failed"]) for s, e in subsets.items()}, "bytes": size})
    return rows


def clear_caches(cache_root: Path) -> int:
    """Delete every cache (and leftovers of interrupted ones) under cache_root; returns how many.

    Only folders that are caches, and in them only what tlkit wrote (said): a --cache-dir pointed at the wrong
    place must not cost a dataset."""
    root = Path(cache_root)
    if not root.is_dir():
        return 0
    folders = [p for p in root.iterdir() if p.is_dir() and (_is_cache(p) or _is_staging(p))]
    for folder in folders:
        if _is_staging(folder):
            shutil.rmtree(folder)
        else:
            clear(survey(folder, _legacy_cache_file))
    return len(folders)


def _is_cache(folder: Path) -> bool:
    """A manifest tlkit wrote: its version and the cache's identity (a bare manifest.json is someone else's)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and {"tlkit", "identity", "subsets"} <= manifest.keys()


def _is_staging(folder: Path) -> bool:
    """A folder new_staging made: .<cache name>.partial-<process id>."""
    return folder.name.startswith(".") and folder.name.rsplit("-", 1)[-1].isdigit() and ".partial-" in folder.name


def to_device(array: np.ndarray, device, what: str):
    """A cached array on the GPU when it fits beside training, copied through host memory a chunk at a time.

    On the CPU, or when it would leave the GPU less than GPU_RESERVE of its memory free (the model,
    its gradients and activations need that), the memory map itself: rows are read as batches ask."""
    import torch  # here: `tlkit cache ls` and `clear` need no torch

    if device.type != "cuda":
        return array
    free, total = torch.cuda.mem_get_info(device)
    if array.nbytes > free - GPU_RESERVE * total:
        warn(f"{what} ({size_words(array.nbytes)}) would leave too little GPU memory for training "
             f"({size_words(free)} free); they are read from disk batch by batch")
        return array
    tensor = torch.empty(array.shape, dtype=torch.from_numpy(np.empty(0, array.dtype)).dtype, device=device)
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, array[:1].nbytes))  # along the first axis
    for start in range(0, len(array), rows_per_chunk):
        chunk = slice(start, start + rows_per_chunk)
        tensor[chunk] = torch.from_numpy(np.array(array[chunk])).to(device)  # np.array: a writable copy
    return tensor
