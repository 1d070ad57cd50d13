"""What `tlkit train` trains on: MNIST, Fashion-MNIST, CIFAR-10, scikit-learn's digits, a folder or a label file.

Opens a dataset (raw files via tlkit/rawdata.py, folders via tlkit/data.py, label files via tlkit/scan.py), carves a
validation set where it has none, knows its normalisation (given, known or measured; chosen by
tlkit/run_backbone.py: resolve_preprocessing), and serves uint8 images at the model's channels and size
in the DataBundle the fine-tune loop runs on unchanged. Builds no model; trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from tlkit.data import (
    DataBundle, EpochSampler, EvalLoad, FolderDataset, ShardSampler, SplitFolders, check_classes, make_loader,
    train_load,
)
from tlkit import rawdata
from tlkit.augment import policy, shift_flip
from tlkit.config import SCALED_MEANS, SCALED_STDS, checked_settings, config_keys, number_in, read_yaml
from tlkit.errors import TlkitError, option
from tlkit.exclusions import Exclusions
from tlkit.runtime import relpath
from tlkit.labelfile import is_label_file
from tlkit.scan import DECODE_ERRORS, detect_layout, list_dataset, open_image, warn_rows_left_out
from tlkit.split import SUBSETS, TRAINING, VALIDATION, parse_val, val_count

STATS_SAMPLE = 2000  # images of a folder read to estimate its mean and std


# ---------------------------------------------------------------- serving images to a model


def adapt_image(image: torch.Tensor, in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [C, H, W] -> the model's channel count (grey repeated, or RGB to luminance) and size."""
    if image.shape[0] == 3 and in_chans == 1:
        image = F.rgb_to_grayscale(image)
    if tuple(image.shape[1:]) != tuple(size):
        image = F.resize(image, list(size), antialias=True)
    return image.expand(3, -1, -1) if image.shape[0] == 1 and in_chans == 3 else image


class MemoryImages(torch.utils.data.Dataset):
    """uint8 images held in memory, served like data.FolderDataset: (uint8 [C, H, W], class index).

    An index may be a plain int or (int, seed); the seed drives that sample's augmentation.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, in_chans: int, size: tuple[int, int],
                 augment: str = "none"):
        self.images, self.labels = images, labels
        self.in_chans, self.size, self.augmentation = in_chans, tuple(size), policy(augment)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = self.images[index]
        if self.augmentation is not None and seed is not None:
            image = shift_flip(image, seed, self.augmentation)
        return adapt_image(image, self.in_chans, self.size), int(self.labels[index])


class IndexedSubset(torch.utils.data.Dataset):
    """Some items of a dataset; passes (index, seed) items through, unlike torch's Subset."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> list[int]:
        return [int(self.dataset.labels[index]) for index in self.indices]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        return self.dataset[(self.indices[index], seed)]


def carve_val(labels: list[int], val: int | float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(training, validation) indices: `val` images (a count or a fraction), stratified by class when possible."""
    from sklearn.model_selection import train_test_split

    count = val_count(val, len(labels))
    indices = np.arange(len(labels))
    try:
        train, valid = train_test_split(indices, test_size=count, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to appear on both sides: split without stratifying
        train, valid = train_test_split(indices, test_size=count, random_state=seed)
    return sorted(train.tolist()), sorted(valid.tolist())


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images [N, C, H, W], on the 0-1 scale."""
    pixels = images.transpose(0, 1).reshape(images.shape[1], -1).double() / 255
    std = pixels.std(dim=1).clamp_min(1e-3)  # a blank channel must not divide by zero
    return tuple(pixels.mean(dim=1).tolist()), tuple(std.tolist())


@dataclass
class TrainData(DataBundle):
    """A DataBundle with the test split, where the dataset has one (used for the final report)."""

    test_set: object = None
    test_loader: torch.utils.data.DataLoader | None = None


# ---------------------------------------------------------------- what `tlkit train` trains on


@dataclass
class TrainingSource:
    """A dataset opened for `tlkit train`: classes, subsets, and how to serve them to a given model."""

    title: str
    classes: list[str]
    settings: dict  # what rebuilds this source (dataset, data_root, val, mean, std); recorded in the run
    channels: int  # of the images as stored
    image_size: int | None  # their side; None when images differ in size (folders)
    sizes: dict = field(default_factory=dict)  # images per subset, for the announcement
    known_stats: tuple | None = None  # (mean, std) of the training set, when the dataset's are known
    augment: str = "default"  # what --augment auto means here: "light" where a mirror changes the class
    command = "train"  # the command that trains on it (and resumes it)
    own_normalisation = True  # given, known or measured (run_backbone.resolve_preprocessing chooses)
    caches = False  # decoded into memory already: no decoded-image or feature cache
    multi_label = False  # one class a photo (several labels a photo come from `tlkit split --multi-label`)

    def excluding(self, exclusions: Exclusions) -> "TrainingSource":
        """This source without the photos a reviewed list excludes (--exclude); only a split photo folder has them."""
        raise TlkitError(f"{option('exclude')} names photo files of a folder split into training/ and validation/ "
                         f"(tlkit split); {self.title} is not one. Leave out {option('exclude')}, or split the photos "
                         "first.")

    def describe(self) -> str:
        subsets = " / ".join(f"{count:,} {subset}" for subset, count in self.sizes.items())
        shape = f"{self.channels}x{self.image_size}x{self.image_size}" if self.image_size else "images"
        return f"{self.title}: {subsets} ({shape}, {len(self.classes)} classes)"

    def given_stats(self) -> tuple:
        """The settings' (mean, std), each None where not given."""
        return self.settings.get("mean"), self.settings.get("std")

    def measured_stats(self, prep) -> tuple:
        """The training set's (mean, std) per channel, measured on a sample served at the model's channels."""
        return channel_stats(self.stats_sample(prep))

    def geometry(self, prep) -> dict:
        return {}

    def stats_sample(self, prep) -> torch.Tensor:
        raise NotImplementedError

    def make_data(self, prep, *, batch_size: int, workers: int, device: torch.device, seed: int,
                  augment: str = "default") -> TrainData:
        raise NotImplementedError


def _bundle(classes, train_set, val_set, test_set, *, batch_size: int, workers: int, device, seed: int) -> TrainData:
    """Loaders as data.make_data makes them (shuffled by a resumable sampler, failed decodes skipped)."""
    sampler = EpochSampler(len(train_set), seed, batch_size)
    return TrainData(
        classes=classes, train_set=train_set, val_set=val_set, train_sampler=sampler,
        train_loader=make_loader(train_set, batch_size, sampler, workers, device),
        # Sharded under torchrun (each image on one process; metrics are summed across them).
        val_loader=make_loader(val_set, batch_size, ShardSampler(len(val_set)), workers, device),
        test_set=test_set,
        test_loader=(make_loader(test_set, batch_size, ShardSampler(len(test_set)), workers, device)
                     if test_set is not None else None),
    )


@dataclass
class MemorySource(TrainingSource):
    """MNIST, Fashion-MNIST, CIFAR-10 or digits: uint8 tensors in memory, (images, labels) per subset."""

    train: tuple = ()
    val: tuple = ()
    test: tuple | None = None

    def geometry(self, prep) -> dict:
        return {"resize_size": None}  # resized straight to the input size, as a file would be when predicting

    def stats_sample(self, prep) -> torch.Tensor:
        images = self.train[0][torch.randperm(len(self.train[0]), generator=torch.Generator().manual_seed(0))[:10_000]]
        return torch.stack([adapt_image(image, prep.in_chans, image.shape[1:]) for image in images])

    def make_data(self, prep, *, batch_size: int, workers: int, device: torch.device, seed: int,
                  augment: str = "default") -> TrainData:
        geometry = {"in_chans": prep.in_chans, "size": tuple(prep.input_size)}
        train_set = MemoryImages(*self.train, augment=augment, **geometry)
        val_set = MemoryImages(*self.val, **geometry)
        test_set = MemoryImages(*self.test, **geometry) if self.test is not None else None
        # Images already in memory at the right size need no loader processes (they would only add copies).
        resized = tuple(prep.input_size) != (self.image_size, self.image_size)
        return _bundle(self.classes, train_set, val_set, test_set, batch_size=batch_size,
                       workers=workers if resized else 0, device=device, seed=seed)


@dataclass
class FolderSource(TrainingSource):
    """A folder: class folders (validation carved by --val) or training/ + validation/ (+ test/); or a label file's
    photos under its folder (its split column's split, or carved by --val)."""

    root: Path = Path(".")
    train_indices: list[int] | None = None  # None: root holds training/ and validation/
    val_indices: list[int] | None = None
    listed: list[tuple[str, int]] | None = None  # a label file's (path relative to root, class index) rows
    exclusions: Exclusions | None = None  # --exclude's list (training/ and validation/ only)

    def excluding(self, exclusions: Exclusions) -> "FolderSource":
        if self.train_indices is not None:
            return super().excluding(exclusions)
        split = SplitFolders(self.root, self.classes).excluding(exclusions)
        return replace(self, exclusions=exclusions, sizes={**self.sizes, **{
            subset: len(split.images(subset)) for subset in SUBSETS}})

    def _subset(self, name: str, load) -> FolderDataset:
        """training/ or validation/, less --exclude's rows (SplitFolders.images applies them)."""
        return FolderDataset(self.root / name, load, SplitFolders(self.root, self.classes, self.exclusions).images(name))

    def _test_dir(self) -> Path | None:
        return self.root / "test" if self.train_indices is None and (self.root / "test").is_dir() else None

    def _whole(self, load) -> FolderDataset:
        """Every photo of root's class folders, or of the label file, to take the carved indices from."""
        return FolderDataset(self.root, load, self.listed, self.classes if self.listed is not None else None)

    def _train_set(self, load):
        if self.train_indices is None:
            return self._subset(TRAINING, load)
        return IndexedSubset(self._whole(load), self.train_indices)

    def stats_sample(self, prep) -> torch.Tensor:
        train_set = self._train_set(EvalLoad(prep))
        chosen = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].tolist()
        images = [image for image, _ in (train_set[index] for index in chosen) if image is not None]
        return torch.stack(images)

    def make_data(self, prep, *, batch_size: int, workers: int, device: torch.device, seed: int,
                  augment: str = "default") -> TrainData:
        train_set = self._train_set(train_load(prep, augment))
        if self.train_indices is None:
            val_set = self._subset(VALIDATION, EvalLoad(prep))
        else:
            val_set = IndexedSubset(self._whole(EvalLoad(prep)), self.val_indices)
        test_dir = self._test_dir()
        test_set = FolderDataset(test_dir, EvalLoad(prep)) if test_dir else None
        return _bundle(self.classes, train_set, val_set, test_set, batch_size=batch_size, workers=workers,
                       device=device, seed=seed)


# ---------------------------------------------------------------- opening a dataset by name

SOURCE_DEFAULTS = {"dataset": None, "data_root": "data", "val": None, "mean": None, "std": None, "download": True}
DEFAULT_VAL = 0.1  # the validation share carved from training data that has no validation set


def dataset_help() -> str:
    return (f"{', '.join(dataset_names())}, or a folder (class folders, or training/ + validation/ from `tlkit split`) "
            "or label file (labels.csv)")


def dataset_names() -> list[str]:
    return [*sorted(rawdata.BUILTINS), "digits"]




def _floats(value, key: str) -> list[float] | None:
    """`0.5`, `"0.485,0.456,0.406"` or a YAML list -> a list of floats."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    within = SCALED_STDS if key == "std" else SCALED_MEANS
    try:
        return [number_in(part, float, within) for part in parts]
    except ValueError as error:
        raise TlkitError(f"{option(key)} {value!r}: each value {error} (on the 0-1 scale of pixels, as 0.485,0.456,"
                         f"0.406 is ImageNet's mean); give one value or one per channel, separated by commas.") from None


def memory_source(title: str, classes: list[str], train: tuple, test: tuple | None = None, *,
                  settings: dict | None = None, **extra) -> MemorySource:
    """A source over uint8 images [N, C, H, W] and labels in memory; validation carved from `train`
    by settings["val"] (default a tenth). extra: known_stats=(mean, std), augment="light"."""
    settings = {**SOURCE_DEFAULTS, "dataset": title, **(settings or {})}
    images, labels = train
    if len(labels) and int(labels.max()) >= len(classes):
        raise TlkitError(f"{title}: label {int(labels.max())} found, but the dataset has {len(classes)} classes.")
    val = parse_val(str(settings["val"] if settings["val"] is not None else DEFAULT_VAL))
    train_indices, val_indices = (torch.tensor(part) for part in carve_val(labels.tolist(), val))
    sizes = {TRAINING: len(train_indices), VALIDATION: len(val_indices)}
    if test is not None:
        sizes["test"] = len(test[1])
    return MemorySource(
        title=title, classes=list(classes), settings=settings, channels=images.shape[1], image_size=images.shape[-1],
        sizes=sizes, train=(images[train_indices], labels[train_indices]),
        val=(images[val_indices], labels[val_indices]), test=test, **extra,
    )


def _first_image_channels(dataset: FolderDataset) -> int:
    """1 for grey photos, else 3, from the header of the first photo that opens (the loaders skip the others)."""
    for path, _ in dataset.samples:
        try:
            with open_image(Path(path)) as image:
                return 1 if image.mode in ("L", "1", "I;16", "I", "F") else 3
        except DECODE_ERRORS:
            continue
    raise TlkitError(f"no image of {relpath(Path(dataset.root))} can be decoded; `tlkit check` lists why.")


def _folder_source(root: Path, settings: dict) -> FolderSource:
    """training/ + validation/ as `tlkit split` writes them, or class folders to carve --val from."""
    if any((root / subset).is_dir() for subset in SUBSETS):
        classes = check_classes(root)
        train_set, val_set = (FolderDataset(root / subset, None) for subset in SUBSETS)
        sizes = {TRAINING: len(train_set), VALIDATION: len(val_set)}
        if (root / "test").is_dir():
            sizes["test"] = len(FolderDataset(root / "test", None))
        return FolderSource(title=relpath(root), classes=classes, settings=settings, sizes=sizes,
                            channels=_first_image_channels(train_set), image_size=None, root=root)
    # detect_layout refuses photos named by class beside subfolders of images, rather than train on the subfolders
    whole = FolderDataset(root, None) if detect_layout(root) == "folders" else None
    if whole is None or len(whole.classes) < 2 or not len(whole):
        raise TlkitError(f"{relpath(root)} holds no class folders (cat/, dog/, ...) nor training/ + validation/; "
                         f"for a flat folder of cat.0.jpg, dog.0.jpg run `tlkit split {relpath(root)} --val 0.2` first.")
    val = parse_val(str(settings["val"] if settings["val"] is not None else DEFAULT_VAL))
    train_indices, val_indices = carve_val(whole.targets, val)
    return FolderSource(title=relpath(root), classes=whole.classes, settings=settings, channels=_first_image_channels(whole),
                        image_size=None, sizes={TRAINING: len(train_indices), VALIDATION: len(val_indices)},
                        root=root, train_indices=train_indices, val_indices=val_indices)


def _label_file_source(path: Path, settings: dict) -> FolderSource:
    """A label file's photos (tlkit.scan reads it, as split does), validation as its split column gives it, else
    carved by --val."""
    scan = list_dataset(path)
    warn_rows_left_out(scan)
    classes = scan.classes
    if len(classes) < 2:
        raise TlkitError(f"{relpath(path)} labels {len(classes)} class(es) of photos; a classifier needs at least two.")
    listed = [(photo.relative_to(scan.root).as_posix(), classes.index(label)) for photo, label in scan.images]
    if scan.given_subsets:
        if settings["val"] is not None:
            raise TlkitError(f"{relpath(path)} gives its split in its split column; leave out {option('val')}.")
        subsets = [scan.given_subsets[photo] for photo, _ in scan.images]
        train_indices, val_indices = ([i for i, subset in enumerate(subsets) if subset == name] for name in SUBSETS)
    else:
        val = parse_val(str(settings["val"] if settings["val"] is not None else DEFAULT_VAL))
        train_indices, val_indices = carve_val([index for _, index in listed], val)
    whole = FolderDataset(scan.root, None, listed, classes)
    return FolderSource(title=relpath(path), classes=classes, settings=settings, channels=_first_image_channels(whole),
                        image_size=None, sizes={TRAINING: len(train_indices), VALIDATION: len(val_indices)},
                        root=scan.root, train_indices=train_indices, val_indices=val_indices, listed=listed)


def open_source(dataset: str, *, data_root: str | Path = "data", val: str | float | None = None, mean=None, std=None,
                download: bool = True) -> TrainingSource:
    """A dataset by name (mnist, fashion-mnist, cifar10, digits) or folder, ready to serve any model."""
    settings = {"dataset": str(dataset), "data_root": str(data_root), "val": val,
                "mean": _floats(mean, "mean"), "std": _floats(std, "std"), "download": bool(download)}
    if dataset in rawdata.BUILTINS:
        spec = rawdata.BUILTINS[dataset]
        splits = rawdata.load_builtin(dataset, Path(data_root), download=download)
        return memory_source(spec.title, list(spec.classes), splits["train"], splits.get("test"), settings=settings,
                             known_stats=(spec.mean, spec.std), augment="default" if spec.flip else "light")
    if dataset == "digits":
        return memory_source("digits (scikit-learn)", [str(n) for n in range(10)], rawdata.load_digits(),
                             settings=settings, augment="light")
    if is_label_file(Path(dataset)) and Path(dataset).is_file():
        return _label_file_source(Path(dataset), settings)
    if Path(dataset).is_dir():
        if val is not None and (Path(dataset) / VALIDATION).is_dir():
            raise TlkitError(f"{relpath(Path(dataset))} already holds validation/; leave out {option('val')}.")
        return _folder_source(Path(dataset), settings)
    raise TlkitError(f"unknown dataset {dataset!r} (and no such folder). Valid: {dataset_help()}.")


# ---------------------------------------------------------------- `tlkit train` settings


def split_settings(values: dict, where: str) -> tuple[dict, dict]:
    """A train config's values -> (dataset settings, FinetuneConfig settings); `model` means `backbone`."""
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    if "model" in values:
        values["backbone"] = values.pop("model")
    unknown = sorted(set(values) - set(SOURCE_DEFAULTS) - set(config_keys()))
    if unknown:
        valid = [*SOURCE_DEFAULTS, "model", *(key for key in config_keys() if key not in ("backbone", "data"))]
        raise TlkitError(f"{where}: unknown setting(s) {', '.join(unknown)}. Valid settings: {', '.join(valid)}.")
    source = {key: values.pop(key) for key in list(values) if key in SOURCE_DEFAULTS}
    return source, values


def resolve_train_settings(config_file: Path | None, flags: dict) -> tuple[dict, dict]:
    """Defaults, then the YAML file, then the flags given: (open_source keywords, finetune settings)."""
    file_values = read_yaml(config_file) if config_file is not None else {}
    file_source, file_settings = split_settings(file_values, str(config_file))
    file_settings = checked_settings(file_settings, str(config_file))  # a bad value named in the file's words
    flag_source, flag_settings = split_settings(flags, "flags")
    source = {**SOURCE_DEFAULTS, **file_source, **flag_source}
    if source["dataset"] is None:
        raise TlkitError(f"no dataset given: add {option('dataset')} ({dataset_help()}).")
    return source, {**file_settings, **flag_settings}
