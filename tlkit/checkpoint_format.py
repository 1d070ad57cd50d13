"""The checkpoint format: best.safetensors (the tensors) beside best.json (a CheckpointMeta).

CheckpointMeta is the schema of everything saved beside the weights, versioned; this module
is its one writer (save_best, and `to_dict` for the resume file) and its one reader
(read_meta, and `from_dict`). The pair rebuilds *and* labels a model with no other file.
Models are built elsewhere (tlkit/checkpoint.py); nothing here imports torch's models.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tlkit.atomic import atomic_write, atomic_write_text
from tlkit.ownership import move_into_place
from tlkit.backbone import Preprocessing
from tlkit.errors import TlkitError
from tlkit.runtime import relpath
from tlkit.version import __version__

BEST_WEIGHTS = "best.safetensors"
BEST_META = "best.json"
FAMILIAR = "familiar.safetensors"  # the training photos' trunk features, from which tlkit/familiar.py measures
FORMAT = "tlkit-checkpoint"
FORMAT_VERSION = 1  # raise it when a field changes meaning; a reader refuses versions above its own


@dataclass
class CheckpointMeta:
    """What rebuilds and labels a model: its backbone, classes and preprocessing, and how it was trained."""

    backbone: str  # a tlkit.models name
    weights: str  # what the run started from: "imagenet", "none" or a file
    classes: list[str]  # the head's outputs, in order
    preprocessing: Preprocessing  # what an image must look like when it reaches the model
    pretrained: bool = False  # whether pretrained tensors were loaded before training
    config: dict = field(default_factory=dict)  # the run's FinetuneConfig, as config.yaml holds it
    monitor: str = "val_loss"
    data_source: dict | None = None  # `tlkit train`: what reopens its dataset
    processes: int = 1  # under torchrun: how many trained it (the lr of --lr-scale linear depends on it)
    phase: str | None = None  # resume files only: the phase that wrote it (tlkit/recipe.py: head, head-images, images)
    phases: list[str] = field(default_factory=list)  # what each phase of the run trained with, in words
    epoch: int | None = None  # best.json: the epoch these weights are from, and its metrics
    metrics: dict | None = None
    temperature: float = 1.0  # best.json: logits / temperature before the softmax (tlkit/calibration.py); 1 before it
    calibration: dict | None = None  # how the temperature was fitted: images, ECE and NLL before and after
    task: str = "single-label"  # or "multi-label": a sigmoid per class, a photo holds each above its threshold
    thresholds: list[float] | None = None  # best.json of a multi-label run: each class's, chosen on validation
    # best.json of a multi-label run: each class's Platt scaling, sigmoid(scale x logit + shift), fitted on validation
    # (multilabel.calibrate_labels: also the images and log losses); None: scale 1, shift 0 (a run from before it)
    label_scaling: dict | None = None
    # best.json: the reference features' file, k and the threshold of tlkit/familiar.py (None: no familiar column)
    familiar: dict | None = None
    tlkit_version: str = __version__  # of the tlkit that wrote it

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.preprocessing.in_chans

    @property
    def img_size(self) -> int:
        return self.preprocessing.input_size[0]

    def to_dict(self) -> dict:
        """Plain JSON types (the resume file loads with weights_only=True); the derived sizes are written
        too, for a reader of the JSON alone."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "tlkit_version": self.tlkit_version,
            "backbone": self.backbone, "weights": self.weights, "pretrained": self.pretrained,
            "num_classes": self.num_classes, "classes": list(self.classes), "in_chans": self.in_chans,
            "img_size": self.img_size, "preprocessing": self.preprocessing.to_dict(), "monitor": self.monitor,
            "config": self.config, "data_source": self.data_source, "processes": self.processes,
            "phase": self.phase, "phases": list(self.phases), "epoch": self.epoch, "metrics": self.metrics,
            "temperature": self.temperature, "calibration": self.calibration, "task": self.task,
            "thresholds": self.thresholds, "label_scaling": self.label_scaling, "familiar": self.familiar,
        }

    @classmethod
    def from_dict(cls, values: dict, where: Path) -> CheckpointMeta:
        """The meta `to_dict` wrote; a TlkitError naming `where` for another format or a damaged one."""
        if not isinstance(values, dict) or values.get("format") != FORMAT or values.get("format_version", 0) > FORMAT_VERSION:
            written_by = values.get("tlkit_version", "?") if isinstance(values, dict) else "?"
            raise TlkitError(f"{relpath(where)} was written by tlkit {written_by} in a format this tlkit "
                             f"{__version__} cannot read; upgrade tlkit or retrain.")
        try:
            return cls(
                backbone=values["backbone"], weights=values["weights"], classes=list(values["classes"]),
                preprocessing=Preprocessing.from_dict(values["preprocessing"]),
                pretrained=bool(values.get("pretrained", False)), config=dict(values.get("config") or {}),
                monitor=values.get("monitor", "val_loss"), data_source=values.get("data_source"),
                processes=int(values.get("processes", 1)), phase=values.get("phase"),
                phases=list(values.get("phases", [])), epoch=values.get("epoch"),
                metrics=values.get("metrics"), temperature=_temperature(values.get("temperature", 1.0)),
                calibration=values.get("calibration"), tlkit_version=values.get("tlkit_version", "?"),
                task=_task(values.get("task", "single-label")), thresholds=_thresholds(values.get("thresholds"),
                                                                                       len(values["classes"])),
                label_scaling=_label_scaling(values.get("label_scaling"), len(values["classes"])),
                familiar=_familiar(values.get("familiar")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TlkitError(f"{relpath(where)} lacks or garbles {error} of what rebuilds the model; it is not the "
                             "file tlkit wrote. Use another run, or retrain this one.") from None

    def calibrated(self, calibration: dict) -> CheckpointMeta:
        """This meta with the temperature fitted at the end of the run (tlkit.calibration.calibrate's result)."""
        return replace(self, temperature=calibration["temperature"], calibration=calibration)

    def logit_scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) [num_classes] float32: predict's probabilities are softmax or sigmoid of logits x scale +
        shift: 1 / temperature for one class a photo, each label's Platt scaling for several."""
        scale = np.full(self.num_classes, 1.0 / self.temperature, dtype=np.float32)
        shift = np.zeros(self.num_classes, dtype=np.float32)
        if self.label_scaling is not None:
            scale, shift = (np.asarray(self.label_scaling[key], dtype=np.float32) for key in ("scale", "shift"))
        return scale, shift

    def with_familiar(self, familiar: dict | None) -> CheckpointMeta:
        """This meta with the rule of tlkit/familiar.py fitted at the end of the run (None: none was)."""
        return replace(self, familiar=familiar)

    def at_epoch(self, row: dict) -> CheckpointMeta:
        """This meta for the weights of one epoch (its history row)."""
        return replace(self, epoch=row["epoch"], metrics=row)


def _temperature(value) -> float:
    """best.json's temperature: a finite number above 0 (a file written before calibration has none: 1)."""
    temperature = float(value)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature {value!r}")
    return temperature


def _task(value) -> str:
    if value not in ("single-label", "multi-label"):
        raise ValueError(f"task {value!r}")
    return value


def _thresholds(values, classes: int) -> list[float] | None:
    """best.json's thresholds: one probability in [0, 1] per class, or None (a single-label model's)."""
    if values is None:
        return None
    thresholds = [float(value) for value in values]
    if len(thresholds) != classes or not all(0 <= value <= 1 for value in thresholds):
        raise ValueError(f"thresholds {values!r}")
    return thresholds


def _label_scaling(value, classes: int) -> dict | None:
    """best.json's label scaling: None, or a finite scale above 0 and a finite shift for each class."""
    if value is None:
        return None
    scale, shift = [float(number) for number in value["scale"]], [float(number) for number in value["shift"]]
    finite = all(math.isfinite(number) for number in scale + shift)
    if len(scale) != classes or len(shift) != classes or not finite or min(scale) <= 0:
        raise ValueError(f"label_scaling {value!r}")
    return dict(value)


def _familiar(value) -> dict | None:
    """best.json's familiar rule: None, or a file name in the run folder, k >= 1 and a finite threshold."""
    if value is None:
        return None
    file, neighbours, threshold = value["file"], value["neighbours"], float(value["threshold"])
    if not isinstance(file, str) or Path(file).name != file or not isinstance(neighbours, int) or neighbours < 1 \
            or not math.isfinite(threshold):
        raise ValueError(f"familiar {value!r}")
    return dict(value)


def save_best(run_dir: Path, state_dict: dict, meta: CheckpointMeta) -> Path:
    """Write best.safetensors and best.json; both or neither replace the previous pair."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory; separate contiguous copies on the CPU.
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}
    weights_path, meta_path = Path(run_dir) / BEST_WEIGHTS, Path(run_dir) / BEST_META
    staged_weights = weights_path.with_name(f".{weights_path.name}.staged")
    staged_meta = meta_path.with_name(f".{meta_path.name}.staged")
    atomic_write(staged_weights, lambda tmp: save_file(tensors, str(tmp), metadata={"tlkit": "1"}))
    atomic_write_text(staged_meta, json.dumps(meta.to_dict(), indent=2))
    move_into_place(staged_weights, weights_path)
    move_into_place(staged_meta, meta_path)
    return weights_path


def save_meta(run_dir: Path, meta: CheckpointMeta) -> None:
    """Write best.json alone, beside the best.safetensors already there (the temperature fitted at the end)."""
    atomic_write_text(Path(run_dir) / BEST_META, json.dumps(meta.to_dict(), indent=2))


def checkpoint_paths(path: Path) -> tuple[Path, Path]:
    """(weights, sidecar) for a run folder, a .safetensors file or its .json sidecar."""
    path = Path(path)
    if path.is_dir():
        return path / BEST_WEIGHTS, path / BEST_META
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def read_meta(path: Path) -> CheckpointMeta:
    """The sidecar of a checkpoint (a run folder, its .safetensors or its .json), checked to be one tlkit can read."""
    weights_path, meta_path = checkpoint_paths(path)
    if Path(path).is_file() and Path(path).suffix not in (".safetensors", ".json"):
        raise TlkitError(f"{relpath(Path(path))} is not a tlkit checkpoint; give a run folder (runs/NAME) or its "
                         f"{BEST_WEIGHTS} (exported .onnx / .pt2 / .pt files and resume.pt are not read back).")
    for needed in (weights_path, meta_path):
        if not needed.is_file():
            raise TlkitError(
                f"{relpath(needed)} does not exist; a checkpoint is a .safetensors file with its .json "
                "beside it, as `tlkit finetune` writes them into runs/<name>/."
            )
    try:
        values = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TlkitError(f"{relpath(meta_path)} is damaged ({error.__class__.__name__}: {error}); it is not the "
                         "JSON tlkit wrote. Use another run, or retrain this one.") from None
    return CheckpointMeta.from_dict(values, meta_path)
