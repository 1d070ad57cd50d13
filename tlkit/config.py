"""The settings of a fine-tune run as one dataclass, and the YAML files that seed them.

Precedence: the dataclass defaults, then a `--config` YAML file, then the flags given.
Unknown keys are an error that names them and the valid ones. Knows nothing of models
or data; it only checks that each value is of the right kind and in range. The recipe's
numbers (what `auto` means, applied by tlkit/recipe.py) are here, so the help states them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tlkit.errors import TlkitError, option
from tlkit.imbalance import IMBALANCE_RATIO

OPTIMIZERS = ("auto", "sgd", "adamw")
SCHEDULERS = ("auto", "step", "plateau", "cosine", "onecycle", "none")
FREEZE_MODES = ("auto", "none", "trunk")
AUGMENTS = ("auto", "default", "light", "none")  # tlkit/augment.py says what each does
# Losses are minimised, the rest maximised; val_map: a multi-label run's mean average precision (val_balanced_acc and
# val_macro_f1: one label a photo); auto: recipe.resolve_auto decides.
MONITORS = ("auto", "val_loss", "val_acc", "val_balanced_acc", "val_macro_f1", "val_map")
CLASS_WEIGHTS = ("auto", "none", "balanced")  # tlkit/imbalance.py: loss_weights
PRECISIONS = ("bf16", "fp32")
DEFAULT_PRECISION = "bf16"  # of every command that runs a model, and of tlkit.api.load
DEVICES = ("auto", "cpu", "cuda")
CACHE_DTYPES = ("float16", "float32")
LR_SCALES = ("none", "linear")
# Choices of the other commands, here so that building the CLI's parser imports no torch (start-up time).
PREDICT_FORMATS = ("csv", "json", "kaggle")
EXPORT_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}
BUILT_IN_DATASETS = ("cifar10", "digits", "fashion-mnist", "mnist")  # tlkit.datasets.dataset_names(), tested
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}
FLAGS = "flags"  # the `where` of settings given as command-line flags, or as keywords to tlkit.api.finetune


PRECISION_HELP = ("bf16 autocast where the device supports it: CUDA, CPUs with AVX512-BF16 or AMX; fp32 elsewhere, "
                  "or on request")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: from `low` to `high`, each end included or not. NaN is in
    no range, and infinity in none of tlkit's (no setting includes an infinite end)."""

    low: float
    high: float = math.inf
    low_included: bool = True
    high_included: bool = False

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_included else value > self.low
        below = value <= self.high if self.high_included else value < self.high
        return above and below

    def __str__(self) -> str:
        low = f"{_number_text(self.low)} or more" if self.low_included else f"above {_number_text(self.low)}"
        if self.high == math.inf:
            return low
        high = f"at most {_number_text(self.high)}" if self.high_included else f"below {_number_text(self.high)}"
        return f"{low} and {high}"


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


ABOVE_ZERO, ZERO_OR_MORE, ONE_OR_MORE = Range(0, low_included=False), Range(0), Range(1)
FRACTION = Range(0, 1)  # [0, 1): momentum, label smoothing
SHRINK = Range(0, 1, low_included=False)  # (0, 1): a factor that lowers the lr
PROBABILITIES = Range(0, 1, low_included=False)  # (0, 1): predict's --threshold of a multi-label model
SEEDS = Range(0, 2**32 - 1, high_included=True)  # what NumPy's seed takes
# The commands' own numbers (not settings of a run), checked by checked_number as the settings are.
BATCH_SIZES = Range(1, 2**20, high_included=True)  # images per batch; more is a slip of the keyboard
IMAGE_SIDES = Range(1, 10_000, high_included=True)  # px of an input side
VIEW_COUNTS = Range(0, 100, high_included=True)  # augmented views cached per image: each is a copy of the features
WORKER_COUNTS = Range(0, 512, high_included=True)  # loader processes
SIMILARITIES = Range(0, 1, low_included=False, high_included=True)  # audit's cosine similarity of near-duplicates
CLASS_COUNTS = Range(1, 100_000, high_included=True)  # a head's outputs; more would not fit in memory
LR_FIND_STEPS = Range(1, 100_000, high_included=True)  # batches of a sweep
SCALED_MEANS = Range(0, 1, high_included=True)  # --mean, on the 0-1 scale of channel_stats
SCALED_STDS = Range(0, 1, low_included=False, high_included=True)  # --std: one of 0 would divide by zero


# The recipe's numbers: what `auto` (or an unset lr, epochs or trunk lr) means. tlkit/recipe.py applies them;
# they are here so that the settings' help below states them from the same names. Measured in docs/benchmarks.md
# ("Defaults", "The default recipe").
AUTO_OPTIMIZER, AUTO_SCHEDULER = "adamw", "onecycle"
SCRATCH_LR = 3e-3  # AdamW + one-cycle from scratch: mnist-net, simple-cnn, lenet-relu and the MLPs alike
HEAD_LR = 1e-3  # a head on the images, or a head of several layers (VGG, AlexNet) on cached features
CACHED_HEAD_LR, CACHED_HEAD_WEIGHT_DECAY = 1e-2, 2.0  # a one-layer head on cached features: see below
AFTER_HEAD_LR = 5e-4  # every layer once the head is trained: half the head's lr, as fastai's fine_tune unfreezes
PRETRAINED_TRUNK_LR_MULT = 0.1  # ImageNet features need small steps, or the first epochs undo them
HEAD_EPOCHS_ON_IMAGES = 1  # each an epoch of decoding: fastai's fine_tune trains its head for one
# An epoch of the head on cached features takes well under a second: 30 reach convergence. A linear
# head there overfits within a few epochs unless held by a strong decoupled weight decay, which keeps
# it where scikit-learn's L2 logistic regression is.
CACHED_HEAD_EPOCHS = 30
# The same head on a multi-label split (a sigmoid per label, binary cross-entropy) under-trained at those numbers:
# on scripts/bench_multilabel.py's 280 training photos (5 steps an epoch) its best validation loss was at its last
# epoch, and its mAP 0.004-0.007 below a tuned one-vs-rest logistic regression on the same features. 100 epochs at
# lr 0.05 (the weight decay kept), chosen on seeds 0 and 1, bring it level on seeds 2-4: mAP within 0.0003 either
# way, subset accuracy level to 3 photos in 120 below (docs/benchmarks.md: "The multi-label head defaults").
MULTI_LABEL_HEAD_LR, MULTI_LABEL_HEAD_EPOCHS = 5e-2, 100
EPOCHS = 10  # every layer from scratch, or a pretrained run on the images
# Every layer on the images after the head on the cache: the slow part (an epoch of EfficientNet-Lite0 on 1,602
# photos took about 2 minutes on 2 CPU cores at 224 px, every layer trained), and the first such epoch is the best
# one (docs/benchmarks.md: "The default recipe"), as in fastai's fine_tune(1).
EPOCHS_AFTER_CACHED_HEAD = 1
# That epoch, made cheaper with accuracy kept (docs/benchmarks.md: "The every-layer epoch at a fraction of its
# cost"). Its random crops are cut at 3/4 of the input side (168 px of 224) and validated at the full side, as
# FixRes and fastai's progressive resizing do: the forward and backward passes cost about the square of the side.
# And the trunk's first 21% of parameters stay as pretrained, so no gradient flows through them: for
# EfficientNet-Lite0 its stem and blocks 0-4 (the layers at 1/2 to 1/16 of the input side, where the backward pass
# costs most per parameter); its last two blocks and final convolution train. Paired against the first 2% kept, a
# training step took 9.8 against 15.5 ms an image, with the same validation and hold-out figures.
AFTER_CACHED_HEAD_TRAIN_SCALE = 0.75
AFTER_CACHED_HEAD_FROZEN_SHARE = 0.21
# On a multi-label split, that phase is 3 epochs on crops that keep most of each photo ("light": 60% of its area or
# more). The default's crops (down to 8% of the area) cut a labelled thing out while its label stays; with them, or
# with fewer epochs, the run kept a head epoch; with these it kept an every-layer one on every seed of a 1,500-photo
# benchmark, above a tuned one-vs-rest logistic regression on the cached features (docs/benchmarks.md: "Every layer
# on a multi-label split").
MULTI_LABEL_EPOCHS_AFTER_CACHED_HEAD, MULTI_LABEL_AUGMENT = 3, "light"
# And its best epoch is the one of the highest validation mAP, not the lowest loss: each label's threshold is chosen
# on the validation photos after the run, so the ranking is what decides, and the every-layer epochs (trained on
# 168 px crops, validated at 224) rank better while their probabilities shift, which the loss counts against them.
MULTI_LABEL_MONITOR = "val_map"
ADAMW_WEIGHT_DECAY = 0.01  # torch.optim.AdamW's own default, which a weight decay left unset keeps


def setting(default, help: str, choices: tuple | None = None, within: Range | None = None):
    """A FinetuneConfig field with what its command-line flag says: the CLI builds every setting flag
    from these (help, choices), so a new setting's flag follows from its line here (docs/architecture.md
    says what else a new setting needs). A help that says "(default" names
    the default itself; otherwise the flag's help shows the field's. `within`: a number's range, which
    flags, YAML files and Python callers alike are checked against."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": within})


@dataclass
class FinetuneConfig:
    """Everything that decides what a run computes (and where it writes); `auto` and None are chosen
    for the situation by resolve_auto when the run starts."""

    data: str = setting("data", "folder holding training/ and validation/ (what `tlkit split` wrote)")
    backbone: str = setting("resnet18", "network to fine-tune (`tlkit models` lists them; timm:NAME for timm)")
    weights: str = setting("default", "imagenet, none (random init), a weights file, or default (imagenet where "
                           "the backbone has it)")
    img_size: int | None = setting(None, "input size in px (default: the backbone's own)", within=IMAGE_SIDES)
    epochs: int | None = setting(None, "epochs of the whole run, the head's first included (default, pretrained: "
                                 f"{CACHED_HEAD_EPOCHS} of the head on cached features ({MULTI_LABEL_HEAD_EPOCHS} of a "
                                 f"one-layer head on a multi-label split) + {EPOCHS_AFTER_CACHED_HEAD} of every layer "
                                 f"({MULTI_LABEL_EPOCHS_AFTER_CACHED_HEAD} on a multi-label split); "
                                 f"{CACHED_HEAD_EPOCHS} ({MULTI_LABEL_HEAD_EPOCHS}) with --precompute-features alone; "
                                 f"{EPOCHS} otherwise)", within=ONE_OR_MORE)
    batch_size: int = setting(64, "images per batch", within=BATCH_SIZES)
    optimizer: str = setting("auto", f"optimizer (auto: {AUTO_OPTIMIZER})", OPTIMIZERS)
    lr: float | None = setting(None, "learning rate of the head while every layer trains; the trunk's is lr x "
                               f"--trunk-lr-mult (default: {AFTER_HEAD_LR:g} after a head phase, {SCRATCH_LR:g} from "
                               "scratch)",
                               within=ABOVE_ZERO)
    lr_scale: str = setting("none", "under torchrun, linear: lr x the number of processes (--batch-size is per "
                            "process)", LR_SCALES)
    momentum: float = setting(0.9, "SGD momentum, with every schedule but onecycle, which moves it from 0.95 to "
                               "0.85 and back itself (0 turns it off there too)", within=FRACTION)
    weight_decay: float | None = setting(None, "weight decay (default: PyTorch's, sgd 0, adamw "
                                         f"{ADAMW_WEIGHT_DECAY:g})", within=ZERO_OR_MORE)
    scheduler: str = setting("auto", "lr schedule: step, plateau (on val loss), cosine, onecycle, none (auto: "
                             f"{AUTO_SCHEDULER})", SCHEDULERS)
    step_size: int = setting(7, "step schedule: epochs between lr drops", within=ONE_OR_MORE)
    gamma: float = setting(0.1, "step / plateau schedule: factor of each lr drop", within=SHRINK)
    freeze: str = setting("auto", "trunk: train the head only; none: every layer from the start (or after "
                          "--unfreeze-after); auto: a pretrained trunk trains its head first, then every layer",
                          FREEZE_MODES)
    unfreeze_after: int | None = setting(None, "train the head alone for E epochs, with an optimizer and schedule "
                                         f"of its own, then every layer (default: {CACHED_HEAD_EPOCHS} on cached "
                                         f"features ({MULTI_LABEL_HEAD_EPOCHS} of a one-layer head on a multi-label "
                                         f"split), {HEAD_EPOCHS_ON_IMAGES} on the images, none from scratch or with "
                                         "--precompute-features alone)",
                                         within=ZERO_OR_MORE)
    trunk_lr_mult: float | None = setting(None, "the trunk's lr as a multiple of --lr (default: "
                                          f"{PRETRAINED_TRUNK_LR_MULT:g} pretrained, 1 from scratch)",
                                          within=ABOVE_ZERO)
    freeze_bn: bool | None = setting(None, "true: the trunk's BatchNorm layers keep their running statistics "
                                     "while their weights train (as Keras' transfer-learning guide does); false: "
                                     "they follow the new photos (default: true on a pretrained trunk, false from "
                                     "scratch)")
    label_smoothing: float = setting(0.0, "label smoothing of the training loss", within=FRACTION)
    class_weights: str = setting("auto", "balanced: each class weighs the same in the training loss (scikit-learn's "
                                 "'balanced' weights: images / (classes x images of the class)); none: every image "
                                 "counts once; "
                                 f"auto: balanced where the largest class has {IMBALANCE_RATIO:g} times the smallest's "
                                 "images or more, else none", CLASS_WEIGHTS)
    augment: str = setting("auto", "training augmentation (tlkit/augment.py): default (random resized crops and "
                           "mirroring, for photos), light (milder crops, no mirror: digits, text), none; auto: "
                           "the data's own (light for the built-in digit datasets and a multi-label split, whose "
                           "tight crops would cut a labelled thing out; default for photo folders)",
                           AUGMENTS)
    monitor: str = setting("auto", "validation metric that picks the best epoch (val_map: mean average precision, "
                           "of a multi-label run; auto: val_map on a multi-label split, val_loss otherwise)", MONITORS)
    patience: int | None = setting(None, "stop after this many epochs without improvement (default: never)",
                                   within=ONE_OR_MORE)
    precision: str = setting(DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS)
    device: str = setting("auto", "where to compute (auto: cuda where there is one)", DEVICES)
    workers: int | None = setting(None, "image loaders: processes in training, decode threads in inference "
                                 "(default: every core but one)", within=WORKER_COUNTS)
    cache_images: bool = setting(False, "decode every photo once into the cache folder (uint8, about 340 KB a "
                                 "training photo at 224 px) and crop and flip on the device: later epochs and "
                                 "runs decode nothing")
    precompute_features: bool | None = setting(None, "run the frozen trunk once, cache its features, train the "
                                               "head from the cache (tlkit/features.py); given alone, the head is "
                                               "all that trains; false: the head trains on the images (default: "
                                               "the head phase of a pretrained run on split folders)")
    head_lr: float | None = setting(None, "the lr of the phase that trains the head alone (default: --lr if "
                                    f"given, else on cached features {CACHED_HEAD_LR:g} for a one-layer head "
                                    f"({MULTI_LABEL_HEAD_LR:g} on a multi-label split), {HEAD_LR:g} for VGG/AlexNet's; "
                                    f"{HEAD_LR:g} on the images)", within=ABOVE_ZERO)
    head_weight_decay: float | None = setting(None, "the weight decay of the phase that trains the head alone "
                                              "(default: --weight-decay if given, else on cached features "
                                              f"{CACHED_HEAD_WEIGHT_DECAY:g} for a one-layer head: as strong as "
                                              "logistic regression's L2)",
                                              within=ZERO_OR_MORE)
    precompute_views: int = setting(0, "with --precompute-features: augmented views cached per training image "
                                    "(augmented as --augment says)", within=VIEW_COUNTS)
    cache_dir: str | None = setting(None, "folder of the feature and decoded-image caches (default: "
                                    "DATA/.tlkit-cache)")
    cache_dtype: str = setting("float16", "how cached features are stored", CACHE_DTYPES)
    exclude: str | None = setting(None, "a reviewed list of photos (the audit.csv of `tlkit audit DATA`): its exclude "
                                  "rows leave training and validation, its relabel rows count under their new class; "
                                  "the photos stay untouched")
    resume_every_epochs: int | None = setting(None, "write resume.pt after this many epochs (or "
                                              "--resume-every-seconds, whichever comes first; always at the end "
                                              "and on Ctrl-C) (default: by time only)",
                                              within=ONE_OR_MORE)
    resume_every_seconds: float | None = setting(60.0, "write resume.pt when this many seconds passed since the "
                                                 "last write: a kill loses at most that much training; 0 writes "
                                                 "every epoch", within=ZERO_OR_MORE)
    seed: int = setting(0, "seed of init, data order and augmentation: a CPU run repeats exactly",
                       within=SEEDS)
    name: str | None = setting(None, "run folder name under --runs-dir (default: a timestamp)")
    runs_dir: str = setting("runs", "where run folders go, and where runs/latest is looked for")


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(FinetuneConfig)]


# What each command reads of the settings: its parser offers these flags, and its tlkit.api call refuses any
# other setting as the parser refuses the flag. finetune reads them all. Here beside the schema, not beside each
# stage, so that building the parser imports no torch (start-up time).
AUDIT_READS = ("backbone", "weights", "img_size", "precision", "device", "workers", "seed", "cache_dir",
               "cache_dtype")  # the backbone whose features judge the photos; DATA is the audit's first argument
PRECOMPUTE_READS = ("data", "backbone", "weights", "img_size", "augment", "precision", "device", "workers", "seed",
                    "exclude", "precompute_views", "cache_dir", "cache_dtype")  # enough for the cache a run uses
CACHED_FEATURE_SETTINGS = ("precompute_features", "precompute_views", "cache_dir", "cache_dtype", "head_lr",
                           "head_weight_decay")  # read only by the runs that train from cached features
# lr-find's one sweep of every layer on the images: no schedule, epochs, run folder or cached features.
LR_FIND_READS = tuple(key for key in config_keys() if key not in (
    "epochs", "scheduler", "step_size", "gamma", "unfreeze_after", "monitor", "resume_every_epochs",
    "resume_every_seconds", "patience", "name", "runs_dir", *CACHED_FEATURE_SETTINGS))
# `tlkit train`: its dataset settings name the data (--dataset; its --model is the backbone), and it caches nothing.
TRAIN_READS = tuple(key for key in config_keys() if key not in ("data", "cache_images", *CACHED_FEATURE_SETTINGS))
INFERENCE_READS = ("device", "precision", "workers", "runs_dir")  # predict and evaluate: how the model runs


def check_reads(command: str, given: dict, reads: tuple[str, ...]) -> None:
    """Refuses a setting `command` does not read, as its parser refuses the flag (a setting given and left
    unread would look as though it acted)."""
    unread = [key for key in given if key not in reads]
    if unread:
        raise TlkitError(f"{command} does not read {', '.join(map(option, unread))}; it reads "
                         f"{', '.join(map(option, reads))}.")


def _check_keys(values: dict, where: str) -> None:
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise TlkitError(
            f"{where}: unknown setting(s) {', '.join(unknown)}. Valid settings: {', '.join(config_keys())}."
        )


def setting_kind(key: str) -> tuple[type, bool]:
    """A setting's declared kind (int, float, bool or str) and whether it may be left unset (None):
    what a YAML value or a flag's text is read as."""
    kind = _declared_kinds()[key]
    options = [t for t in typing.get_args(kind) if t is not type(None)] or [kind]
    return options[0], type(None) in typing.get_args(kind)


@functools.cache
def _declared_kinds() -> dict[str, object]:
    return typing.get_type_hints(FinetuneConfig)  # evaluates every annotation: once, not once per flag


@functools.cache
def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}


def setting_name(key: str, where: str) -> str:
    """A setting as its user wrote it: for FLAGS the option (errors.option: --batch-size on the command line,
    batch_size= from Python), else the key and where it was."""
    return option(key) if where == FLAGS else f"{where}: {key}"


def _as_number(value, kind: type) -> int | float:
    """A number given as a number or text (YAML reads `1e-3` as text); ValueError for anything else,
    a boolean (YAML's `true` is no epoch count) and a fraction where a whole number goes."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(value)
    if kind is int and isinstance(value, float):
        if not value.is_integer():  # NaN and infinity included
            raise ValueError(value)
        return int(value)
    return kind(value)


def number_in(value, kind: type, within: Range) -> int | float:
    """value (a number, or a flag's text) as `kind` (int or float) within `within`; ValueError saying what it
    must be: "must be a whole number 1 or more, not 0"."""
    wanted = f"must be {_KIND_NAMES[kind]} {within}, not {_as_written(value)}"
    try:
        number = _as_number(value, kind)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(wanted) from None
    if number not in within:
        raise ValueError(wanted)
    return number


def checked_number(name: str, value, kind: type, within: Range, *, python: str | None = None) -> int | float:
    """A number that is not a run's setting (split's seed, predict's topk, a tlkit.api parameter) checked as
    the settings are, or TlkitError naming it (errors.option: --seed, or seed=; python: the parameter's name
    where it differs from the flag's)."""
    try:
        return number_in(value, kind, within)
    except ValueError as error:
        raise TlkitError(f"{option(name, python=python)} {error}.") from None


def _as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
        return str(value).lower() in ("true", "yes", "1")
    raise ValueError(value)


def _wanted(key: str) -> str:
    """What a setting takes, in words: "a whole number 1 or more", "true or false"."""
    kind = setting_kind(key)[0]
    within = _fields()[key].metadata["range"]
    return _KIND_NAMES[kind] + (f" {within}" if within is not None else "")


def _checked(key: str, value, where: str):
    """The value given for a setting as its declared kind, checked against its choices or range."""
    kind, optional = setting_kind(key)
    if value is None:
        if optional:
            return None
        raise TlkitError(f"{setting_name(key, where)} needs a value ({_KIND_NAMES[kind]}).")
    if key == "augment" and isinstance(value, bool):  # configs written before the named choices
        return "default" if value else "none"
    refusal = f"{setting_name(key, where)} must be {_wanted(key)}, not {_as_written(value)}."
    try:
        value = _as_bool(value) if kind is bool else _as_number(value, kind) if kind in (int, float) else kind(value)
    except (TypeError, ValueError):
        raise TlkitError(refusal) from None
    choices, within = _fields()[key].metadata["choices"], _fields()[key].metadata["range"]
    if choices and value not in choices:
        given = option(key, value) if where == FLAGS else f"{setting_name(key, where)} {value!r}"
        raise TlkitError(f"{given} is not one of {', '.join(choices)}.")
    if within is not None and value not in within:
        raise TlkitError(refusal)
    return value


def _as_written(value) -> str:
    """A value as a flag or YAML file spells it: 1e-3 and true, not '1e-3' and True."""
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) and value.strip() else repr(value)


def checked_settings(values: dict, where: str) -> dict:
    """Plain values (keys may use - or _) as their settings' kinds, each checked against its choices or
    range: the one check of flags, YAML files and Python callers alike. `where` names them in messages."""
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    _check_keys(values, where)
    return {key: _checked(key, value, where) for key, value in values.items()}


def make_config(values: dict, where: str = "settings") -> FinetuneConfig:
    """A checked FinetuneConfig from plain values (keys may use - or _)."""
    return FinetuneConfig(**checked_settings(values, where))


def read_yaml(path: Path) -> dict:
    """The `setting: value` lines of a YAML file as plain values (keys with - written _): the one
    reader of settings files, for `finetune --config` and `train --config` alike. Checks no names."""
    path = Path(path)
    if not path.is_file():
        raise TlkitError(f"config file {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise TlkitError(f"{path} is not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise TlkitError(f"{path} is not a text file in UTF-8 (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start}): a settings file holds `setting: value` lines; save it as UTF-8.") from None
    except OSError as error:
        raise TlkitError(f"cannot read {path}: {error.strerror or error}.") from None
    if values is None:
        raise TlkitError(f"{path} holds no settings (it is empty, or only comments): write `setting: value` lines "
                         f"in it, or leave out {option('config', python='config_file')}.")
    if not isinstance(values, dict):
        raise TlkitError(f"{path} must hold `setting: value` lines, not a {type(values).__name__}.")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def read_config_file(path: Path) -> dict:
    """The settings of a fine-tune YAML file, checked (naming the file); unknown keys are an error."""
    return checked_settings(read_yaml(path), str(path))


def resolve_config(config_file: Path | None, flags: dict) -> FinetuneConfig:
    """Defaults, then the file's settings, then the flags given (flags win). Each is checked where it
    came from: a bad value names the file's key, or the flag."""
    file_values = read_config_file(config_file) if config_file else {}
    return FinetuneConfig(**{**file_values, **checked_settings(flags, FLAGS)})


def config_to_dict(config: FinetuneConfig) -> dict:
    return dataclasses.asdict(config)


def config_yaml(config: FinetuneConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
