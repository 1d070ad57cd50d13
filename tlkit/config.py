"""The settings of a fine-tune run as one dataclass, and the YAML files that seed them.

Precedence: the dataclass defaults, then a `--config` YAML file, then the flags given.
Unknown keys are an error that names them and the valid ones. Knows nothing of models
or data; it only checks that each value is of the right kind and in range.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from tlkit.errors import TlkitError

OPTIMIZERS = ("auto", "sgd", "adamw")
SCHEDULERS = ("auto", "step", "plateau", "cosine", "onecycle", "none")
FREEZE_MODES = ("auto", "none", "trunk")
AUGMENTS = ("auto", "default", "light", "none")  # tlkit/augment.py says what each does
MONITORS = ("val_loss", "val_acc")
PRECISIONS = ("bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
CACHE_DTYPES = ("float16", "float32")
LR_SCALES = ("none", "linear")
# Choices of the other commands, here so that building the CLI's parser imports no torch (start-up time).
PREDICT_FORMATS = ("csv", "json", "kaggle")
EXPORT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
BUILT_IN_DATASETS = ("cifar10", "digits", "fashion-mnist", "mnist")  # tlkit.datasets.dataset_names(), tested
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


@dataclass
class FinetuneConfig:
    """Everything that decides what a run computes (and where it writes)."""

    data: str = "data"  # holds training/ and validation/, as `tlkit split` writes them
    backbone: str = "resnet18"
    weights: str = "default"  # default | imagenet | none | a file
    img_size: int | None = None  # None: the backbone's own input size
    epochs: int | None = None  # None: 10, or 30 when only the head trains, from cached features
    batch_size: int = 64
    optimizer: str = "auto"  # auto: adamw
    lr: float | None = None  # None: chosen for the situation (see resolve_auto)
    lr_scale: str = "none"  # under torchrun, linear: lr times the number of processes (the batch grows as much)
    momentum: float = 0.9  # SGD only
    weight_decay: float | None = None  # None: PyTorch's default for the optimizer (sgd 0, adamw 0.01)
    scheduler: str = "auto"  # auto: onecycle
    step_size: int = 7  # step scheduler: epochs between drops
    gamma: float = 0.1  # step scheduler: factor of each drop
    freeze: str = "auto"  # trunk: train the head only; none: every layer; auto: see resolve_auto
    unfreeze_after: int | None = None  # train the head alone for this many epochs, then everything
    trunk_lr_mult: float | None = None  # the trunk's lr is lr times this; None: 1 from scratch, 0.1 pretrained
    freeze_bn: bool | None = None  # the trunk's BatchNorm keeps its running statistics; None: on a pretrained trunk
    label_smoothing: float = 0.0
    augment: str = "auto"  # auto | default | light | none (tlkit/augment.py); auto: the data's own choice
    monitor: str = "val_loss"  # which validation metric picks the best epoch
    patience: int | None = None  # early stopping: epochs without improvement; None: never
    precision: str = "bf16"  # bf16 autocast where the device supports it (runtime.compute_precision), else fp32
    device: str = "auto"
    workers: int | None = None  # loader processes; None: every core but one
    cache_images: bool = False  # decode every photo once into DATA/.tlkit-cache, augment on the device
    precompute_features: bool = False  # train the head on cached trunk features (tlkit/features.py)
    head_lr: float | None = None  # the head's lr on cached features; None: --lr if given, else see resolve_auto
    head_weight_decay: float | None = None  # its weight decay there; None: --weight-decay if given, else resolve_auto
    precompute_views: int = 0  # with precompute: K augmented views cached per training image
    cache_dir: str | None = None  # feature and decoded-image caches; None: DATA/.tlkit-cache
    cache_dtype: str = "float16"  # how cached features are stored
    resume_every_epochs: int | None = None  # write resume.pt after this many epochs ...
    resume_every_seconds: float | None = 60.0  # ... or this many seconds (whichever first; always at the end and on Ctrl-C)
    seed: int = 0
    name: str | None = None  # run folder name; None: a timestamp
    runs_dir: str = "runs"


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(FinetuneConfig)]


def _check_keys(values: dict, where: str) -> None:
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise TlkitError(
            f"{where}: unknown setting(s) {', '.join(unknown)}. Valid settings: {', '.join(config_keys())}."
        )


def _coerce(key: str, value, where: str):
    """YAML reads `1e-3` as a string and `5` as an int; give each setting its declared kind."""
    kind = typing.get_type_hints(FinetuneConfig)[key]
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    if value is None:
        if type(None) in typing.get_args(kind):
            return None
        raise TlkitError(f"{where}: {key} needs a value ({_KIND_NAMES[options[0]]}).")
    target = options[0]
    if key == "augment" and isinstance(value, bool):  # configs written before the named choices
        return "default" if value else "none"
    try:
        if target is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
                return str(value).lower() in ("true", "yes", "1")
            raise ValueError(value)
        if target is int and isinstance(value, float) and value != int(value):
            raise ValueError(value)
        return target(value)
    except (TypeError, ValueError):
        raise TlkitError(f"{where}: {key} must be {_KIND_NAMES[target]}, not {value!r}.") from None


def _check_ranges(config: FinetuneConfig, where: str) -> None:
    choices = {
        "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "freeze": FREEZE_MODES,
        "monitor": MONITORS, "precision": PRECISIONS, "device": DEVICES, "cache_dtype": CACHE_DTYPES,
        "lr_scale": LR_SCALES, "augment": AUGMENTS,
    }
    for key, valid in choices.items():
        if getattr(config, key) not in valid:
            raise TlkitError(f"{where}: {key} {getattr(config, key)!r} is not one of {', '.join(valid)}.")
    positive = ("epochs", "batch_size", "lr", "head_lr", "resume_every_epochs", "step_size", "img_size", "patience", "trunk_lr_mult")
    for key in positive:
        value = getattr(config, key)
        if value is not None and value <= 0:
            raise TlkitError(f"{where}: {key} must be above 0, not {value}.")
    for key in ("unfreeze_after", "workers", "weight_decay", "head_weight_decay", "resume_every_seconds", "momentum", "label_smoothing", "precompute_views"):
        value = getattr(config, key)
        if value is not None and value < 0:
            raise TlkitError(f"{where}: {key} must be 0 or more, not {value}.")


def make_config(values: dict, where: str = "settings") -> FinetuneConfig:
    """A checked FinetuneConfig from plain values (keys may use - or _)."""
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    _check_keys(values, where)
    config = FinetuneConfig(**{key: _coerce(key, value, where) for key, value in values.items()})
    _check_ranges(config, where)
    return config


def read_yaml(path: Path) -> dict:
    """The `setting: value` lines of a YAML file as plain values (keys with - written _): the one
    reader of settings files, for `finetune --config` and `train --config` alike. Checks no names."""
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"config file {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise TlkitError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise TlkitError(f"{path} must hold `setting: value` lines, not a {type(values).__name__}.")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def read_config_file(path: Path) -> dict:
    """The settings of a fine-tune YAML file, as plain values; unknown keys are an error."""
    values = read_yaml(path)
    make_config(values, where=str(path))  # checks names, kinds and ranges, naming the file
    return values


def resolve_config(config_file: Path | None, flags: dict) -> FinetuneConfig:
    """Defaults, then the file's settings, then the flags given (flags win)."""
    file_values = read_config_file(config_file) if config_file else {}
    return make_config({**file_values, **flags}, where="flags" if not config_file else f"{config_file} + flags")


# What `auto` (or an unset lr, epochs or trunk lr) means; measured in docs/benchmarks.md ("Defaults").
AUTO_OPTIMIZER, AUTO_SCHEDULER = "adamw", "onecycle"
SCRATCH_LR = 3e-3  # AdamW + one-cycle from scratch: mnist-net, simple-cnn, lenet-relu and the MLPs alike
PRETRAINED_LR = 1e-3  # the head's lr on a pretrained trunk (the trunk gets it x PRETRAINED_TRUNK_LR_MULT)
PRETRAINED_TRUNK_LR_MULT = 0.1  # ImageNet features need small steps, or the first epochs undo them
AFTER_CACHE_LR = 5e-4  # every layer after a head trained on the cache: half the lr, as fastai's fine_tune unfreezes
HEAD_FIRST_EPOCHS = 1  # pretrained, trained on the images: the head alone first (fastai's fine_tune)
EPOCHS, CACHED_HEAD_EPOCHS = 10, 30  # an epoch of the head on cached features takes well under a second
# A linear head on cached features overfits them within a few epochs (train loss 0.001, val 98.5%):
# a strong decoupled weight decay holds it where scikit-learn's L2 logistic regression is (99.25%).
CACHED_HEAD_LR, CACHED_HEAD_WEIGHT_DECAY = 1e-2, 2.0


def resolve_auto(config: FinetuneConfig, *, pretrained: bool, data_augment: str = "default",
                 linear_head: bool = True) -> FinetuneConfig:
    """The config with every `auto` and unset value chosen for the situation, so that config.yaml
    records what the run really used and repeats it. Values given (flags, a config file) are kept.

    From scratch: AdamW, one-cycle, lr 3e-3, every layer trains. Pretrained: AdamW, one-cycle,
    lr 1e-3; the head trains alone first (one epoch on the images), then every layer with the
    trunk at a tenth of the lr. With --precompute-features the head trains on the cache (30
    epochs, a linear head at lr 1e-2 and weight decay 2); any epochs of every layer after it use
    lr 5e-4 (trunk 5e-5). `data_augment` is what the data declares (no flips for digits).
    """
    cached_head = config.precompute_features and config.unfreeze_after is None
    epochs = config.epochs or (CACHED_HEAD_EPOCHS if cached_head else EPOCHS)
    if config.epochs is None and config.precompute_features and config.unfreeze_after is not None:
        epochs = config.unfreeze_after + 3  # the head from the cache, then a few (slow) epochs of every layer
    freeze, unfreeze_after = config.freeze, config.unfreeze_after
    if freeze == "auto":
        freeze = "none"
        if pretrained and unfreeze_after is None and not config.precompute_features and epochs > HEAD_FIRST_EPOCHS:
            unfreeze_after = HEAD_FIRST_EPOCHS
    lr = config.lr or (SCRATCH_LR if not pretrained else AFTER_CACHE_LR if config.precompute_features else PRETRAINED_LR)
    head_lr, head_decay = None, None
    if config.precompute_features:
        head_lr = config.head_lr or config.lr or (CACHED_HEAD_LR if linear_head else PRETRAINED_LR)
        head_decay = next((value for value in (config.head_weight_decay, config.weight_decay) if value is not None),
                          CACHED_HEAD_WEIGHT_DECAY if linear_head else None)
    return dataclasses.replace(
        config, epochs=epochs, freeze=freeze, unfreeze_after=unfreeze_after, lr=lr, head_lr=head_lr,
        head_weight_decay=head_decay,
        optimizer=AUTO_OPTIMIZER if config.optimizer == "auto" else config.optimizer,
        scheduler=AUTO_SCHEDULER if config.scheduler == "auto" else config.scheduler,
        trunk_lr_mult=config.trunk_lr_mult or (PRETRAINED_TRUNK_LR_MULT if pretrained else 1.0),
        freeze_bn=pretrained if config.freeze_bn is None else config.freeze_bn,
        augment=data_augment if config.augment == "auto" else config.augment,
    )


def config_to_dict(config: FinetuneConfig) -> dict:
    return dataclasses.asdict(config)


def config_yaml(config: FinetuneConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
