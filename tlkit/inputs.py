"""What a phase of training runs on: its batches, how they reach the model, and which module they train.

Four sources give a TrainingInput: folders of photos (tlkit/data.py), the decoded-image cache
(tlkit/imagecache.py), the datasets of `tlkit train` (tlkit/datasets.py), and the frozen trunk's
cached features (tlkit/features.py). Training the head on cached features is a different input,
whose module is the head, not a mode of the trainer. Builds no optimizer; trains nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from tlkit import models
from tlkit.backbone import Backbone, Preprocessing
from tlkit.config import FinetuneConfig
from tlkit.data import DataBundle, SplitFolders, make_data, open_split
from tlkit.decode import Normalizer
from tlkit.errors import TlkitError, option
from tlkit.exclusions import Exclusions, read_exclusions
from tlkit.features import FeatureLoader, FeatureSet, precompute, to_device_float
from tlkit.imagecache import make_cached_data
from tlkit.multilabel import positive_weights
from tlkit.runtime import Compute, default_workers


class PhotoSource(Protocol):
    """What a run trains on, as every source declares it: `tlkit finetune`'s split folders (SplitSource) and
    `tlkit train`'s datasets (tlkit.datasets.TrainingSource). open_photos makes one from the settings, with
    every setting that shapes the photos applied or refused there; nothing else makes one."""

    classes: list[str]
    command: str  # the command that trains on it (and resumes it)
    augment: str  # what --augment auto means for these photos
    caches: bool  # whether its photos and the trunk's features can be cached on disk
    settings: dict | None  # what a run records to open it again (None: config.data says it all)
    channels: int | None  # the classic nets' input, where the data fixes it
    image_size: int | None
    # whether the data has a normalisation of its own (tlkit train's datasets; run_backbone.resolve_preprocessing
    # reads it), or always takes the backbone's (photo folders)
    own_normalisation: bool
    multi_label: bool  # several labels a photo (a split's labels.csv, tlkit/multilabel.py): one yes/no output per label

    def make_data(self, prep: Preprocessing, **loaders) -> DataBundle: ...

    def excluding(self, exclusions: Exclusions) -> PhotoSource: ...


def open_photos(config: FinetuneConfig, given: PhotoSource | None = None) -> PhotoSource:
    """The photos of finetune, lr-find and precompute (given: `tlkit train`'s dataset; None: config.data's split
    folders), with every setting that says which photos are read and how they are served (data, exclude,
    cache_images, cache_dir, precompute_features) applied, or refused where the source cannot honour it.
    The one place a source is made from the settings, so no command can leave one of them out."""
    source = given or SplitSource(open_split(config.data), config.cache_images, config.cache_dir)
    for key in ("precompute_features", "cache_images"):
        if getattr(config, key) and not source.caches:
            raise TlkitError(f"{option(key)} needs DATA/training and DATA/validation image folders (tlkit finetune); "
                             "built-in datasets are decoded into memory already and train end to end.")
    return source.excluding(read_exclusions(config.exclude)) if config.exclude else source


@dataclass
class SplitSource:
    """`tlkit finetune`'s data: the split folders DATA/training and DATA/validation (checked once by
    data.open_split), decoded per epoch or served from the decoded-image cache."""

    split: SplitFolders
    cache_images: bool = False  # --cache-images
    cache_root: str | None = None  # --cache-dir
    command = "finetune"
    augment = "default"  # photos: crops and mirroring
    caches = True
    settings = None
    channels = image_size = None  # the backbone's own input
    own_normalisation = False  # the backbone's own

    @property
    def classes(self) -> list[str]:
        return self.split.classes

    @property
    def multi_label(self) -> bool:
        return self.split.multi_label

    def make_data(self, prep: Preprocessing, **loaders) -> DataBundle:
        if self.cache_images:
            return make_cached_data(self.split, prep, cache_root=self.cache_root, **loaders)
        return make_data(self.split, prep, **loaders)

    def excluding(self, exclusions: Exclusions) -> SplitSource:
        return dataclasses.replace(self, split=self.split.excluding(exclusions))


@dataclass
class TrainingInput:
    """Loaders of (batch, labels, files that failed to decode), and what trains on them."""

    classes: list[str]
    train_loader: object
    val_loader: object
    train_sampler: object  # its set_epoch(n) fixes the order (and augmentation) of epoch n
    normalize: Callable[[torch.Tensor], torch.Tensor]  # a loader's batch -> the module's input, on the device
    module: nn.Module  # what trains: the whole classifier, or its head on cached features
    sizes: tuple[int, int]  # training and validation images, for the run's first line
    train_labels: list[int]  # the class index of every training image: the loss's class weights count them
    test_loader: object | None = None  # the final report's images, where the data has a test split
    positive_weights: torch.Tensor | None = None  # a multi-label run's, one per label (split_positive_weights)

    @property
    def multi_label(self) -> bool:
        return self.positive_weights is not None


def split_positive_weights(split: SplitFolders) -> torch.Tensor | None:
    """A multi-label split's loss weight on each label's positives (multilabel.positive_weights of its training
    rows); None for one class a photo."""
    if not split.multi_label:
        return None
    return torch.from_numpy(positive_weights(np.asarray([target for _, target in split.images("training")],
                                                        dtype=np.float32)))


def image_input(config: FinetuneConfig, backbone: Backbone, compute: Compute, source, *,
                train_scale: float = 1.0) -> TrainingInput:
    """The images of `source`: a SplitSource, or a tlkit.datasets.TrainingSource (`tlkit train`). train_scale:
    the training crops' side as a share of the input's (recipe.Phase), where the net takes any size (the classic
    nets flatten a map of their one input size: they keep it)."""
    prep, device = backbone.preprocessing, compute.device
    loaders = dict(batch_size=config.batch_size, workers=default_workers(config.workers), device=device, seed=config.seed,
                   augment=config.augment)
    if train_scale != 1 and not models.is_classic(backbone.name):
        loaders["train_size"] = tuple(round(side * train_scale) for side in prep.input_size)
    data = source.make_data(prep, **loaders)
    backbone.model.to(device, memory_format=compute.layout)
    return TrainingInput(
        classes=data.classes, train_loader=data.train_loader, val_loader=data.val_loader,
        train_sampler=data.train_sampler, normalize=Normalizer(prep, device), module=backbone.model,
        sizes=(len(data.train_set), len(data.val_set)), test_loader=getattr(data, "test_loader", None),
        train_labels=[] if source.multi_label else [int(label) for label in data.train_set.labels],
        positive_weights=split_positive_weights(source.split) if source.multi_label else None)


def cached_features(config: FinetuneConfig, backbone: Backbone, compute: Compute, split: SplitFolders, *,
                    batch_size: int | None = None, force: bool = False) -> dict[str, FeatureSet]:
    """The frozen trunk's features of the split folders' images as the config asks for them (views,
    their augmentation, dtype), from the cache or computed now (force: computed again)."""
    return precompute(backbone, split, compute=compute, cache_root=config.cache_dir, batch_size=batch_size,
                      workers=default_workers(config.workers), views=config.precompute_views, augment=config.augment,
                      dtype=config.cache_dtype, force=force)


def feature_input(config: FinetuneConfig, backbone: Backbone, compute: Compute, split: SplitFolders) -> TrainingInput:
    """The frozen trunk's cached features (cached_features), in the order the image sampler gives; the
    head trains on them."""
    sets = cached_features(config, backbone, compute, split)
    device = compute.device
    backbone.model.to(device)
    train_loader = FeatureLoader(sets["training"], batch_size=config.batch_size, device=device, shuffle=True,
                                 seed=config.seed)
    val_loader = FeatureLoader(sets["validation"], batch_size=config.batch_size, device=device, shuffle=False)
    return TrainingInput(classes=split.classes, train_loader=train_loader, val_loader=val_loader,
                         train_sampler=train_loader, normalize=to_device_float(device), module=backbone.head,
                         sizes=(train_loader.size, val_loader.size), positive_weights=split_positive_weights(split),
                         train_labels=[] if split.multi_label else sets["training"].labels.tolist())
