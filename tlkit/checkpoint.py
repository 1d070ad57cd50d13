"""Run folders and what is read back from them: the model of a checkpoint, the resume file.

`best.safetensors` + `best.json` (tlkit/checkpoint_format.py) rebuild *and* label a model on
their own; `resume.pt` holds tensors and plain types only (it loads with
`torch.load(weights_only=True)`) and its `meta` is a CheckpointMeta. Every file is written to
a temporary name and renamed (tlkit/atomic.py), so a failed write leaves the old one.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tlkit import models
from tlkit.atomic import atomic_write, atomic_write_text, lock_file, unlock_file
from tlkit.backbone import Backbone, TrunkHead, for_inference
from tlkit.checkpoint_format import BEST_META, BEST_WEIGHTS, FAMILIAR, CheckpointMeta, checkpoint_paths, read_meta
from tlkit.errors import TlkitError, option
from tlkit.familiar import Reference, load_reference
from tlkit.ownership import clear, survey, wrote_any
from tlkit.runtime import relpath
from tlkit.weights import pickled_global

RESUME = "resume.pt"
LATEST = "latest"
# What a run folder holds: finetune's files, evaluate's evaluate-<data>/ folders, export's model.* files, and
# temporary names of their atomic writes. --force replaces a folder that holds nothing else.
RUN_FILES = ("config.yaml", BEST_WEIGHTS, BEST_META, FAMILIAR, RESUME, "metrics.jsonl", "curves.png", "confusion.png",
             "report.json", "tb")
# in evaluate-<data>/
EVALUATE_FILES = ("report.json", "confusion.png", "mistakes.png", "reliability.png", "mistakes.html")
# What else a run folder written before tlkit kept records (tlkit/ownership.py) held: evaluate's evaluate-<data>/
# folders, export's model.* files, and temporary names of their atomic writes.
_RUN_NAMES = re.compile(r"evaluate-.+|model\.(onnx|pt)(\.json|\.familiar\.safetensors)?|\..+\.tmp-\d+|\.model\.(onnx|pt)(\.json)?\.unverified")
_RUN_CONFIG_KEYS = {"backbone", "weights", "runs_dir", "seed"}  # in every config.yaml a run writes

_claims: dict[Path, tuple] = {}  # run folder -> (the open lock file that holds it for this process, its path)


@dataclass
class Checkpoint:
    """A model rebuilt from a checkpoint, with its class names and everything recorded beside it."""

    backbone: Backbone  # its model in eval mode
    classes: list[str]
    meta: CheckpointMeta
    path: Path  # the .safetensors file
    # device -> inference_model; ("reference", device) -> reference
    _prepared: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def inference_model(self, device: torch.device) -> TrunkHead:
        """The model as inference runs it on `device` (backbone.for_inference: eval mode, its layout, BatchNorm
        folded), cut into trunk and head so that predict keeps the features between them (tlkit/familiar.py);
        made once per checkpoint and device: predicting again (api.Classifier, evaluate) folds nothing again."""
        if device not in self._prepared:
            whole = TrunkHead(self.backbone.trunk, self.backbone.head)
            self._prepared[device] = for_inference(whole, self.backbone.preprocessing, device)
        return self._prepared[device]

    def reference(self, device: torch.device) -> Reference | None:
        """The reference photos' features (training or validation) that predict measures each photo against
        (tlkit/familiar.py), read once per checkpoint and device; None for a checkpoint without them (said once)."""
        key = ("reference", device)
        if key not in self._prepared:
            self._prepared[key] = load_reference(self.path, self.meta.familiar, device)
        return self._prepared[key]


# ---------------------------------------------------------------- best weights


def load_checkpoint(path: Path | str | None = None, device: str = "cpu") -> Checkpoint:
    """Rebuild the model of a run folder or checkpoint file (None: the latest run) and load its weights."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else resolve_run(None)
    weights_path, _ = checkpoint_paths(path)
    meta = read_meta(path)
    backbone = _unfilled_backbone(meta)
    backbone.preprocessing = meta.preprocessing
    try:
        backbone.model.load_state_dict(load_file(str(weights_path), device="cpu"))
    except Exception as error:  # safetensors' header errors, or tensors of another model (load_state_dict)
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else error.__class__.__name__
        raise TlkitError(f"{relpath(weights_path)} cannot be loaded into the {meta.backbone} its .json describes "
                         f"({detail}); the file is damaged or belongs to another run. Use another run, or "
                         "retrain this one.") from None
    backbone.model.to(device).eval()
    return Checkpoint(backbone=backbone, classes=list(meta.classes), meta=meta, path=weights_path)


def _unfilled_backbone(meta: CheckpointMeta) -> Backbone:
    """The checkpoint's backbone with memory but no initialisation, which its weights replace anyway: a large
    network's random init takes longer than reading its weights (docs/benchmarks.md: Again, after issue 15's
    session). Built on the meta device, then given empty CPU tensors, the same Parameter objects kept (the
    trunk/head split refers to them). A model with non-persistent buffers, which are computed when built and
    not saved, is built normally."""
    def build():
        return models.create(meta.backbone, num_classes=meta.num_classes, weights="none", in_chans=meta.in_chans,
                             img_size=meta.img_size)

    with torch.device("meta"):
        backbone = build()
    if any(module._non_persistent_buffers_set for module in backbone.model.modules()):
        return build()
    swapping = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)  # keeps each Parameter object, fills it anew
    try:
        backbone.model.to_empty(device="cpu")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swapping)
    return backbone


# ---------------------------------------------------------------- resume file


def save_resume(run_dir: Path, state: dict) -> None:
    atomic_write(Path(run_dir) / RESUME, lambda tmp: torch.save(state, tmp))


class ResumeWriter:
    """Writes resume.pt when `every_epochs` epochs or `every_seconds` seconds have passed since the last
    write, and at the last epoch; a kill loses no more than that. The newest epoch's state is kept in
    memory meanwhile (a copy: the live tensors move on), so Ctrl-C (flush) still saves it exactly.
    Each file holds the trainer's state and `meta`, what rebuilds the run (its config, classes, phase)."""

    def __init__(self, run_dir: Path, meta: CheckpointMeta, *, every_epochs: int | None, every_seconds: float | None):
        self.run_dir, self.meta = Path(run_dir), meta
        self.every_epochs, self.every_seconds = every_epochs, every_seconds
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
        save_resume(self.run_dir, {**state, "meta": self.meta.to_dict()})
        self.epochs_since, self.written_at, self.pending = 0, time.monotonic(), None


def _copied(value):
    """A deep copy of a state's tensors (on the CPU), lists and dicts; other values are immutable."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(item) for item in value)
    return value


def load_resume(run_dir: Path) -> dict:
    path = Path(run_dir) / RESUME
    if not path.is_file():
        raise TlkitError(
            f"{relpath(path)} does not exist: {relpath(run_dir)} is not a tlkit run folder, or its run "
            f"stopped before the first epoch ended. Start it again without {option('resume')} (add "
            f"{option('force', True)})."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickled code, a truncated file, or not a torch file at all
        refused = pickled_global(error)
        what = (f"holds pickled Python objects ({refused}), and tlkit never runs pickled code" if refused
                else f"is truncated or not a tlkit resume file ({error.__class__.__name__})")
        raise TlkitError(f"{relpath(path)} {what}. Start the run again without {option('resume')} (add "
                         f"{option('force', True)}), or use its best checkpoint (best.safetensors) with "
                         f"{option('weights')}.") from None
    if not isinstance(state, dict) or "meta" not in state:
        raise TlkitError(f"{relpath(path)} is not a tlkit resume file. Start the run again without "
                         f"{option('resume')} (add {option('force', True)}).")
    state["meta"] = CheckpointMeta.from_dict(state["meta"], path)
    return state


# ---------------------------------------------------------------- run folders


def new_run_dir(runs_dir: Path, name: str | None, force: bool) -> Path:
    """Create runs/<name>/ (a timestamp when no name is given) and claim it for this process; never overwrite
    without force, and with force only the files of an earlier run (_clear_for_a_new_run)."""
    runs_dir = Path(runs_dir)
    if name is None:
        return _new_stamped_run(runs_dir)
    if not name or name == LATEST or "/" in name or "\\" in name or name.startswith("."):
        raise TlkitError(f"{option('name', name)} is not a usable folder name (no slashes, not {LATEST!r}).")
    run_dir = runs_dir / name
    claim_run(run_dir)
    try:
        if os.path.lexists(run_dir):
            if not force:
                raise TlkitError(
                    f"{relpath(run_dir)} already exists; nothing was written. Use {option('force', True)} to "
                    f"replace it, {option('resume', relpath(run_dir))} to continue it, or another {option('name')}."
                )
            _clear_for_a_new_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    except BaseException:
        release_run(run_dir)
        raise
    return run_dir


def _new_stamped_run(runs_dir: Path) -> Path:
    """runs/<date-time>/, with -1, -2, ... when a run of that second exists or is being made."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for extra in range(1000):
        run_dir = runs_dir / (stamp + f"-{extra}" * bool(extra))
        try:
            claim_run(run_dir)
        except TlkitError:
            continue
        if not os.path.lexists(run_dir):
            run_dir.mkdir(parents=True)
            return run_dir
        release_run(run_dir)
    raise TlkitError(f"no free run name for {stamp} in {relpath(runs_dir)}; give one with {option('name')}.")


def _clear_for_a_new_run(run_dir: Path) -> None:
    """--force: remove the earlier run's files (tlkit's and unchanged, by the folders' records); anything else
    stays, said, and one where the new run writes stops it with nothing changed. A folder without a run's
    record (from before tlkit kept them) is judged as it was: by its names and its config.yaml."""
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise TlkitError(f"{relpath(run_dir)} is {'a link' if run_dir.is_symlink() else 'a file'}, not a run folder; "
                         f"{option('force', True)} replaces only tlkit's run folders, so nothing was changed. "
                         f"Choose another {option('name')} (or {option('runs_dir')}), or move it away.")
    def named_by_a_run(path: Path) -> bool:
        return _named_by_a_run(path.relative_to(run_dir).parts)

    legacy = not wrote_any(run_dir, RUN_FILES)  # a record of other files (a predictions csv) is no run's
    if legacy:
        _check_a_run(run_dir)
    found = survey(run_dir, named_by_a_run if legacy else None)
    in_the_way = [f"{relpath(path)} ({why})" for path, why in found.kept.items()
                  if path.parent == run_dir and path.name in RUN_FILES]
    if in_the_way:
        raise TlkitError(f"{relpath(run_dir)} holds {', '.join(in_the_way)}, where the new run would write; "
                         f"{option('force', True)} replaces only what tlkit wrote, so nothing was changed. Move it "
                         f"away, or choose another {option('name')}.")
    clear(found)


def _named_by_a_run(parts: tuple[str, ...]) -> bool:
    """Whether a file of a run folder without a record bears a name tlkit gives: a run's files, evaluate's in
    evaluate-<data>/, TensorBoard's event files under tb/."""
    if len(parts) == 1:
        return parts[0] in RUN_FILES or bool(_RUN_NAMES.fullmatch(parts[0]))
    if parts[0] == "tb":
        return parts[-1].startswith("events.out.tfevents.")
    return len(parts) == 2 and parts[0].startswith("evaluate-") and parts[1] in EVALUATE_FILES


def _check_a_run(path: Path) -> None:
    """A run folder without a record: --force replaces it only when it holds nothing but a run's names and a
    run's config.yaml (or nothing)."""
    others = sorted(entry.name for entry in path.iterdir()
                    if entry.name not in RUN_FILES and not _RUN_NAMES.fullmatch(entry.name))
    if others or (any(path.iterdir()) and not _a_runs_config(path / "config.yaml")):
        held = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise TlkitError(f"{relpath(path)} is not a tlkit run folder (it holds {held or 'no config.yaml of a run'}); "
                         f"{option('force', True)} replaces only run folders, so nothing was changed. Choose "
                         f"another {option('name')} (or {option('runs_dir')}), or move it away.")


def _a_runs_config(path: Path) -> bool:
    """Whether `path` is a config.yaml that a run of tlkit's wrote (it records every setting)."""
    import yaml

    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(settings, dict) and _RUN_CONFIG_KEYS <= settings.keys()


def claim_run(run_dir: Path) -> None:
    """Hold runs/.<name>.lock while this process writes runs/<name>: a second run of the same name (with
    --force, or a second --resume) is refused instead of writing into the same folder. Held until
    release_run, or until the process ends (atomic.lock_file)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = run_dir.parent / f".{run_dir.name}.lock"
    try:
        handle = lock_file(lock, wait=False)
    except BlockingIOError:
        raise TlkitError(f"another tlkit process is writing {relpath(run_dir)} right now; nothing was written. "
                         f"Wait for it to finish, or choose another {option('name')}.") from None
    _claims[run_dir.absolute()] = (handle, lock)


def release_run(run_dir: Path) -> None:
    """Let go of a claim_run (its lock file removed)."""
    handle, lock = _claims.pop(Path(run_dir).absolute(), (None, None))
    unlock_file(handle, lock)


def discard_untrained(run_dir: Path) -> bool:
    """Remove the files of a run that failed or was interrupted with nothing trained (no weights, no resume
    file), and its folder once empty, so that its name is free again; whether the folder went. What tlkit
    did not write there stays (said)."""
    if (run_dir / BEST_WEIGHTS).exists() or (run_dir / RESUME).exists():
        return False
    clear(survey(run_dir))
    return not os.path.lexists(run_dir)


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
