"""Run folders and what is saved in them: best weights, their JSON sidecar, the resume file.

`best.safetensors` + `best.json` rebuild *and* label a model on their own; `resume.pt`
holds tensors and plain types only (it loads with `torch.load(weights_only=True)`). Every
file is written to a temporary name and renamed, so a failed write leaves the old one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlkit import __version__
from tlkit.errors import TlkitError
from tlkit.runtime import relpath
from tlkit.weights import pickled_global

BEST_WEIGHTS = "best.safetensors"
BEST_META = "best.json"
RESUME = "resume.pt"
LATEST = "latest"
FORMAT = "tlkit-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with its class names and everything recorded beside it."""

    backbone: object  # tlkit.models.Backbone, its model in eval mode
    classes: list[str]
    meta: dict
    path: Path  # the .safetensors file


# ---------------------------------------------------------------- atomic writes


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary path), then rename it over `path`; on failure `path` is untouched."""
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
        raise TlkitError(
            f"could not write {relpath(path)} ({reason}); the previous version, if any, "
            "is left as it was. Free some disk space or choose another --runs-dir."
        ) from None


FULL_BELOW_BYTES = 16 << 20  # a folder with less free space than this after a failed write: the disk was full


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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ---------------------------------------------------------------- best weights


def save_best(run_dir: Path, state_dict: dict, meta: dict) -> Path:
    """Write best.safetensors and best.json; both or neither replace the previous pair."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory; separate contiguous copies on the CPU.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "tlkit_version": __version__, **meta}
    weights_path, meta_path = Path(run_dir) / BEST_WEIGHTS, Path(run_dir) / BEST_META
    staged_weights = weights_path.with_name(f".{weights_path.name}.staged")
    staged_meta = meta_path.with_name(f".{meta_path.name}.staged")
    atomic_write(staged_weights, lambda tmp: save_file(tensors, str(tmp), metadata={"tlkit": "1"}))
    atomic_write_text(staged_meta, json.dumps(meta, indent=2))
    os.replace(staged_weights, weights_path)
    os.replace(staged_meta, meta_path)
    return weights_path


def checkpoint_paths(path: Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a run folder, a .safetensors file or its .json sidecar."""
    path = Path(path)
    if path.is_dir():
        return path / BEST_WEIGHTS, path / BEST_META
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def read_meta(path: Path) -> dict:
    """The sidecar of a checkpoint, checked to be one tlkit can read."""
    weights_path, meta_path = checkpoint_paths(path)
    if Path(path).is_file() and Path(path).suffix not in (".safetensors", ".json"):
        raise TlkitError(f"{relpath(Path(path))} is not a tlkit checkpoint; give a run folder (runs/NAME) or its "
                         f"{BEST_WEIGHTS} (exported .onnx / .pt files and resume.pt are not read back).")
    for needed in (weights_path, meta_path):
        if not needed.is_file():
            raise TlkitError(
                f"{relpath(needed)} does not exist; a checkpoint is a .safetensors file with its .json "
                "beside it, as `tlkit finetune` writes them into runs/<name>/."
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TlkitError(f"{relpath(meta_path)} is damaged ({error.__class__.__name__}: {error}); it is not the "
                         "JSON tlkit wrote. Use another run, or retrain this one.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise TlkitError(
            f"{relpath(meta_path)} was written by tlkit {meta.get('tlkit_version', '?')} in a format this "
            f"tlkit {__version__} cannot read; upgrade tlkit or retrain."
        )
    return meta


def load_checkpoint(path: Path | str | None = None, device: str = "cpu") -> Checkpoint:
    """Rebuild the model of a run folder or checkpoint file (None: the latest run) and load its weights."""
    from safetensors.torch import load_file

    from tlkit import models

    path = Path(path) if path is not None else resolve_run(None)
    weights_path, _ = checkpoint_paths(path)
    meta = read_meta(path)
    try:
        backbone = models.create(
            meta["backbone"], num_classes=meta["num_classes"], weights="none",
            in_chans=meta["in_chans"], img_size=meta["img_size"],
        )
        backbone.preprocessing = models.Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError) as error:
        raise TlkitError(f"{relpath(checkpoint_paths(path)[1])} lacks or garbles {error} of what rebuilds the "
                         "model; it is not the file tlkit wrote. Use another run, or retrain this one.") from None
    try:
        backbone.model.load_state_dict(load_file(str(weights_path), device="cpu"))
    except Exception as error:  # safetensors' header errors, or tensors of another model (load_state_dict)
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else error.__class__.__name__
        raise TlkitError(f"{relpath(weights_path)} cannot be loaded into the {meta['backbone']} its .json describes "
                         f"({detail}); the file is damaged or belongs to another run. Use another run, or "
                         "retrain this one.") from None
    backbone.model.to(device).eval()
    return Checkpoint(backbone=backbone, classes=list(meta["classes"]), meta=meta, path=weights_path)


# ---------------------------------------------------------------- resume file


def save_resume(run_dir: Path, state: dict) -> None:
    import torch

    atomic_write(Path(run_dir) / RESUME, lambda tmp: torch.save(state, tmp))


class ResumeWriter:
    """Writes resume.pt when `every_epochs` epochs or `every_seconds` seconds have passed since the last
    write, and at the last epoch; a kill loses no more than that. The newest epoch's state is kept in
    memory meanwhile (a copy: the live tensors move on), so Ctrl-C (flush) still saves it exactly."""

    def __init__(self, run_dir: Path, every_epochs: int | None, every_seconds: float | None):
        self.run_dir, self.every_epochs, self.every_seconds = Path(run_dir), every_epochs, every_seconds
        self.epochs_since, self.written_at, self.pending = 0, time.monotonic(), None

    def __call__(self, state: dict, last: bool = False) -> None:
        self.epochs_since += 1
        due_epochs = self.every_epochs is not None and self.epochs_since >= self.every_epochs
        due_seconds = self.every_seconds is not None and time.monotonic() - self.written_at >= self.every_seconds
        if last or due_epochs or due_seconds:
            self._write(state)
        else:
            self.pending = _copied(state)

    def flush(self) -> None:
        if self.pending is not None:
            self._write(self.pending)

    def _write(self, state: dict) -> None:
        save_resume(self.run_dir, state)
        self.epochs_since, self.written_at, self.pending = 0, time.monotonic(), None


def _copied(value):
    """A deep copy of a state's tensors (on the CPU), lists and dicts; other values are immutable."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(item) for item in value)
    return value


def load_resume(run_dir: Path) -> dict:
    import torch

    path = Path(run_dir) / RESUME
    if not path.is_file():
        raise TlkitError(
            f"{relpath(path)} does not exist: {relpath(run_dir)} is not a tlkit run folder, or its run "
            "stopped before the first epoch ended. Start it again without --resume (add --force)."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code, a truncated file, or not a torch file at all
        refused = pickled_global(error)
        what = (f"holds pickled Python objects ({refused}), and tlkit never runs pickled code" if refused
                else f"is truncated or not a tlkit resume file ({error.__class__.__name__})")
        raise TlkitError(f"{relpath(path)} {what}. Start the run again without --resume (add --force), or "
                         "use its best checkpoint (best.safetensors) with --weights.") from None


# ---------------------------------------------------------------- run folders


def new_run_dir(runs_dir: Path, name: str | None, force: bool) -> Path:
    """Create runs/<name>/ (a timestamp when no name is given); never overwrite without force."""
    runs_dir = Path(runs_dir)
    if name is None:
        name = time.strftime("%Y%m%d-%H%M%S")
        while (runs_dir / name).exists():
            name += "-1"
    if not name or name == LATEST or "/" in name or "\\" in name or name.startswith("."):
        raise TlkitError(f"--name {name!r} is not a usable folder name (no slashes, not {LATEST!r}).")
    run_dir = runs_dir / name
    if run_dir.exists():
        if not force:
            raise TlkitError(
                f"{relpath(run_dir)} already exists; nothing was written. Use --force to replace it, "
                f"--resume {relpath(run_dir)} to continue it, or another --name."
            )
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


def point_latest(run_dir: Path) -> None:
    """Make runs/latest name this run: a symlink, or a text file where symlinks fail."""
    run_dir = Path(run_dir)
    latest = run_dir.parent / LATEST
    link = latest.with_name(f".{LATEST}.tmp-{os.getpid()}")
    try:
        link.unlink(missing_ok=True)
        os.symlink(run_dir.name, link)
        os.replace(link, latest)
    except OSError:
        link.unlink(missing_ok=True)
        if latest.is_symlink():
            latest.unlink()
        atomic_write_text(latest, run_dir.name + "\n")


def resolve_run(path: Path | str | None, runs_dir: Path | str = "runs") -> Path:
    """The run folder (or checkpoint file) meant: the given path, else what runs/latest names."""
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise TlkitError(f"{relpath(path)} does not exist; give a run folder (runs/NAME) or a .safetensors file.")
        return path
    latest = Path(runs_dir) / LATEST
    if latest.is_symlink() or latest.is_dir():
        target = latest.resolve()
    elif latest.is_file():
        target = Path(runs_dir) / latest.read_text(encoding="utf-8").strip()
    else:
        raise TlkitError(
            f"no run found ({relpath(latest)} does not exist); run `tlkit finetune` first, or name a run folder."
        )
    if not target.is_dir():
        raise TlkitError(f"{relpath(latest)} names {relpath(target)}, which no longer exists; name a run folder.")
    return target
