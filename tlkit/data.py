"""Training and validation images as PyTorch datasets and loaders, built from a backbone's preprocessing.

Reads DATA/training and DATA/validation (what `tlkit split` writes) and checks that both
hold the same two or more classes. Batches are uint8 [N, C, H, W]; the trainer normalises
them on its device. Augmentation draws from a seed per sample, so the data of an epoch is
the same whatever the worker count, and a resumed run sees what an uninterrupted one saw.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import functional as F

from tlkit import distributed
from tlkit.augment import Augmentation, crop_flip_photo, policy
from tlkit.decode import load_image as load_eval_image
from tlkit.errors import TlkitError, option
from tlkit.exclusions import Exclusions
from tlkit.labelfile import is_label_file
from tlkit.multilabel import check_subset_labels, is_multi_label_split, multi_hot, read_subset_labels
from tlkit.runtime import relpath
from tlkit.scan import (DECODE_ERRORS, class_folders, class_images, detect_layout, is_image_name, open_photo,
                        visible_files)
from tlkit.split import SUBSETS, TRAINING, VALIDATION, finish_pending_split



@dataclass
class DataBundle:
    """What the trainer iterates, and what it reports."""

    classes: list[str]
    train_set: "FolderDataset"
    val_set: "FolderDataset"
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    train_sampler: "EpochSampler"


def subset_dirs(data_dir: Path) -> tuple[Path, Path]:
    """DATA/training and DATA/validation, or a message saying to run `tlkit split`."""
    data_dir = Path(data_dir)
    if is_label_file(data_dir) and data_dir.is_file():
        raise TlkitError(
            f"{relpath(data_dir)} is a label file; fine-tuning reads the training/ and validation/ folders a split "
            f"writes. Run `tlkit split {relpath(data_dir)} --val 0.2` (it writes them beside it), then "
            f"{option('data', relpath(data_dir.parent))}."
        )
    finish_pending_split(data_dir)  # never train on half of one split and half of another
    dirs = tuple(data_dir / subset for subset in SUBSETS)
    for subset_dir in dirs:
        if not subset_dir.is_dir() and _holds_photos(data_dir):
            raise TlkitError(
                f"{relpath(data_dir)} holds photos, not the training/ and validation/ folders fine-tuning reads. "
                f"Run `tlkit split {relpath(data_dir)} --val 0.2` (it writes {relpath(data_dir.parent)}/training and "
                f"{relpath(data_dir.parent)}/validation), then {option('data', relpath(data_dir.parent))}."
            )
        if not subset_dir.is_dir():
            raise TlkitError(
                f"{relpath(subset_dir)} does not exist. Fine-tuning reads {relpath(data_dir)}/training and "
                f"{relpath(data_dir)}/validation: run `tlkit split YOUR_PHOTOS --val 0.2 --out {relpath(data_dir)}` "
                f"first, or point {option('data')} at the folder that holds them."
            )
    return dirs


def _holds_photos(folder: Path) -> bool:
    """Images in the folder itself (flat layout) or one level down (class folders)."""
    return folder.is_dir() and any(is_image_name(p) for p in visible_files(folder, depth=2))


def check_classes(data_dir: Path) -> list[str]:
    """The class names, the same in training and validation, at least two, none empty; photos named by class
    loose beside the class folders are refused (scan.detect_layout), not passed over."""
    train_dir, val_dir = subset_dirs(data_dir)
    for subset_dir in (train_dir, val_dir):
        detect_layout(subset_dir)
    train_classes, val_classes = class_folders(train_dir), class_folders(val_dir)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        parts = [f"only in training: {', '.join(only_train)}" if only_train else "",
                 f"only in validation: {', '.join(only_val)}" if only_val else ""]
        raise TlkitError(
            f"the class folders of {relpath(train_dir)} and {relpath(val_dir)} differ ("
            + "; ".join(p for p in parts if p) + "). Both need the same classes: re-run `tlkit split`."
        )
    if len(train_classes) < 2:
        found = f"one class only ({train_classes[0]})" if train_classes else "no class folders"
        raise TlkitError(
            f"{relpath(train_dir)} holds {found}; a classifier needs at least two classes, one folder each "
            "(training/cat/, training/dog/)."
        )
    return train_classes


def open_multi_label(data_dir: Path) -> SplitFolders:
    """A multi-label split (DATA/<subset>/labels.csv, tlkit/multilabel.py) with each subset's rows, read once here
    for every stage; its classes are training's labels (multilabel.check_subset_labels)."""
    label_rows = {subset: tuple(read_subset_labels(data_dir / subset)) for subset in SUBSETS}
    held = {subset: {name for _, labels in rows for name in labels} for subset, rows in label_rows.items()}
    check_subset_labels(held[TRAINING], held[VALIDATION], f"the multi-label split in {relpath(data_dir)}",
                        "Re-run `tlkit split --multi-label`.")
    return SplitFolders(data_dir, sorted(held[TRAINING]), label_rows=label_rows)


class FolderDataset(ImageFolder):
    """An ImageFolder whose items are (uint8 image, class index), or (None, path) when decoding fails.

    An index may be a plain int or (int, seed); the seed drives that sample's augmentation. Its classes
    and files are tlkit.scan's (class_folders, class_images), the ones check, split and the caches count.
    """

    def __init__(self, root: Path, load, listed: list[tuple[str, int]] | None = None, classes: list[str] | None = None):
        """listed: the (path relative to root, class index) rows to serve instead of every image (SplitFolders.images:
        --exclude's list applied; a label file's rows). classes: the class names where root's folders are not them
        (a label file's)."""
        self.listed, self.given_classes = listed, classes
        super().__init__(str(root), loader=str, allow_empty=True)
        self.load = load
        if self.targets and isinstance(self.targets[0], tuple):
            return  # a multi-label split's 0/1 rows: its labels are checked by open_multi_label
        empty = [name for name, count in zip(self.classes, torch.bincount(
            torch.tensor(self.targets, dtype=torch.long), minlength=len(self.classes)).tolist()) if count == 0]
        if empty:
            raise TlkitError(f"class folder(s) {', '.join(empty)} of {relpath(root)} hold no images.")

    @property
    def labels(self) -> list[int]:
        """The class index of every image, as the other datasets name it (ImageFolder's `targets`)."""
        return self.targets

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = self.given_classes or class_folders(Path(directory))
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
        listed = self.listed if self.listed is not None else class_images(Path(directory), classes)
        return [(os.path.join(directory, relative), index) for relative, index in listed]

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, target = self.samples[index]
        try:
            return self.load(Path(path), seed), target
        except DECODE_ERRORS:
            return None, path


class EvalLoad:
    """Deterministic: the backbone's eval geometry (resize + centre crop, or a straight resize)."""

    def __init__(self, prep):
        self.prep = prep

    def __call__(self, path: Path, seed: int | None = None) -> torch.Tensor:
        return load_eval_image(path, self.prep)


class TrainLoad:
    """A photo as training sees it: augmented as the policy says (tlkit/augment.py), from the sample's seed."""

    def __init__(self, prep, augmentation: Augmentation):
        self.prep, self.augmentation = prep, augmentation

    def __call__(self, path: Path, seed: int | None = None) -> torch.Tensor:
        mode = "RGB" if self.prep.in_chans == 3 else "L"
        # JPEGs decode at 1/2..1/8 scale when that still leaves twice the input size.
        image = open_photo(path, mode, draft_side=2 * max(self.prep.input_size))
        image = crop_flip_photo(image, self.augmentation, self.prep.input_size, self.prep.interpolation, seed)
        return F.pil_to_tensor(image)


def trained_rows(rows: int, batch_size: int) -> int:
    """How many of an epoch's rows train: all of them, but a last batch of a single image is left out
    (BatchNorm cannot normalise one image in training mode). Every loader of training rows uses this,
    on its own process's share under torchrun (each process normalises its own batch)."""
    return rows - 1 if rows > 1 and rows % batch_size == 1 else rows


class EpochRows:
    """An epoch's order fixed by (seed, epoch), shuffled for training and in order otherwise; this
    process's share of it under torchrun; the rows that train (trained_rows); batches of batch_size.
    The image sampler and the loaders of cached rows (features, decoded images) are built on it, so
    an epoch is the same rows in the same order whichever of them serves it."""

    def __init__(self, size: int, *, batch_size: int, shuffle: bool, seed: int):
        self.size, self.batch_size, self.shuffle, self.seed, self.epoch = size, batch_size, shuffle, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _share(self) -> torch.Tensor:
        """This process's positions in the order; training shares are equally long (same steps everywhere)."""
        return distributed.shard_order(torch.arange(self.size), equal=self.shuffle)

    def _rows(self) -> int:
        rows = len(self._share())
        return trained_rows(rows, self.batch_size) if self.shuffle else rows

    def __len__(self) -> int:
        return -(-self._rows() // self.batch_size)

    def _epoch(self) -> tuple[torch.Generator, torch.Tensor]:
        """The epoch's generator and whole order. Draw per-row randomness from the generator next, for
        every row, before _mine(): what a row gets must not depend on the number of processes."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        return generator, order

    def _mine(self, order: torch.Tensor) -> torch.Tensor:
        """This process's rows of the order, in batches' order."""
        return order[self._share()][:self._rows()]


class EpochSampler(EpochRows, torch.utils.data.Sampler):
    """A shuffled order and a seed per sample, both fixed by (seed, epoch): resumable, worker-independent.

    Under torchrun each process takes its share of that one order (positions rank, rank + world, ...),
    so the processes together see what a single one would, whatever their number.
    """

    def __init__(self, size: int, seed: int, batch_size: int = 1):
        EpochRows.__init__(self, size, batch_size=batch_size, shuffle=True, seed=seed)

    def __len__(self) -> int:
        return self._rows()  # a sampler's length counts samples, not batches

    def __iter__(self):
        generator, order = self._epoch()
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        return iter(zip(self._mine(order).tolist(), self._mine(seeds).tolist()))


class ShardSampler(torch.utils.data.Sampler):
    """Indices in order; under torchrun this process's share of them (for validation: each image once in all)."""

    def __init__(self, size: int):
        self.indices = distributed.shard_order(torch.arange(size), equal=False).tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def collate_skipping(samples: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack what decoded; name what did not (the trainer counts and reports those)."""
    good = [(image, target) for image, target in samples if image is not None]
    skipped = [path for image, path in samples if image is None]
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([image for image, _ in good])
    return images, torch.tensor([target for _, target in good]), skipped


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, sampler: torch.utils.data.Sampler | None,
                workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """A loader whose batches are (uint8 images, labels, paths that failed to decode)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate_skipping, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        # Its own generator: drawing worker seeds must not move the global RNG (dropout, init).
        generator=torch.Generator().manual_seed(0),
    )


def train_load(prep, augment: str, size: tuple[int, int] | None = None) -> TrainLoad | EvalLoad:
    """How a training image is read: augmented as `augment` names (tlkit/augment.py), its crops resized to
    `size` (default: the input size), or the eval view."""
    augmentation = policy(augment)
    if augmentation is None:
        return EvalLoad(prep)
    return TrainLoad(dataclasses.replace(prep, input_size=size) if size else prep, augmentation)


@dataclass(frozen=True)
class SplitFolders:
    """DATA/training and DATA/validation as `tlkit split` writes them, checked once (open_split): both
    there, the same two or more classes. The stages that read them take this, or a path they open."""

    root: Path
    classes: list[str]
    exclusions: Exclusions | None = None  # --exclude's reviewed list
    # several labels a photo: each subset's labels.csv rows (tlkit/multilabel.py), not folders; None: one class
    label_rows: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] | None = None

    @property
    def multi_label(self) -> bool:
        return self.label_rows is not None

    def subset(self, name: str) -> Path:
        return self.root / name

    def images(self, name: str) -> list[tuple[str, int]]:
        """(path relative to the subset folder, class index) of what a run takes from it: scan.class_images,
        less --exclude's exclude rows, its relabel rows under their new class. A multi-label split's rows give
        each photo's 0/1 target per class (multilabel.multi_hot) in place of its class index."""
        if self.multi_label:
            return [(relative, multi_hot(labels, self.classes)) for relative, labels in self.label_rows[name]]
        listed = class_images(self.subset(name), self.classes)
        return self.exclusions.apply(listed, self.classes, prefix=f"{name}/") if self.exclusions else listed

    def excluding(self, exclusions: Exclusions) -> SplitFolders:
        """These folders less what a reviewed list (--exclude) leaves out, its relabel rows under their new
        class. A list that names no photo here, or relabels one as a class the folders lack, stops here, before
        anything is computed."""
        if self.multi_label:
            raise TlkitError(f"{option('exclude')} relabels photos with one class each; a multi-label split's labels "
                             "are its label file's: edit that file's rows and split again.")
        every = {f"{subset}/{relative}" for subset in SUBSETS
                 for relative, _ in class_images(self.subset(subset), self.classes)}
        exclusions.check_matches(every, self.root)
        exclusions.check_classes(self.classes)
        return dataclasses.replace(self, exclusions=exclusions)


def open_split(data: Path | str | SplitFolders) -> SplitFolders:
    """The checked split folders of `data` (a path, or folders already opened, as they are)."""
    if isinstance(data, SplitFolders):
        return data
    finish_pending_split(Path(data))  # before its kind is read: a split interrupted while swapping in is finished
    if is_multi_label_split(Path(data)):
        return open_multi_label(Path(data))
    return SplitFolders(Path(data), check_classes(Path(data)))


def make_data(data: Path | SplitFolders, prep, *, batch_size: int, workers: int, device: torch.device,
              seed: int, augment: str = "default", train_size: tuple[int, int] | None = None) -> DataBundle:
    """Datasets and loaders for DATA/training (shuffled, augmented; its crops at train_size, default the input
    size) and DATA/validation (in order)."""
    split = open_split(data)
    classes, train_dir, val_dir = split.classes, split.subset("training"), split.subset("validation")
    train_set = FolderDataset(train_dir, train_load(prep, augment, train_size), split.images("training"), classes)
    val_set = FolderDataset(val_dir, EvalLoad(prep), split.images("validation"), classes)
    sampler = EpochSampler(len(train_set), seed, batch_size)
    return DataBundle(
        classes=classes, train_set=train_set, val_set=val_set, train_sampler=sampler,
        train_loader=make_loader(train_set, batch_size, sampler, workers, device),
        val_loader=make_loader(val_set, batch_size, ShardSampler(len(val_set)), workers, device),
    )
