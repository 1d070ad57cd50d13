"""What a phase of training runs on: its batches, how they reach the model, and which module they train.

Four sources give a TrainingInput: folders of photos (tlkit/data.py), the decoded-image cache
(tlkit/imagecache.py), the datasets of `tlkit train` (tlkit/datasets.py), and the frozen trunk's
cached features (tlkit/features.py). Training the head on cached features is a different input,
whose module is the head, not a mode of the trainer. Builds no optimizer; trains nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tlkit.backbone import Backbone
from tlkit.config import FinetuneConfig
from tlkit.data import SplitFolders, make_data
from tlkit.decode import Normalizer
from tlkit.features import FeatureLoader, FeatureSet, precompute, to_device_float
from tlkit.imagecache import make_cached_data
from tlkit.runtime import default_workers, memory_format


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
    test_loader: object | None = None  # the final report's images, where the data has a test split


def image_input(config: FinetuneConfig, backbone: Backbone, device: torch.device, *,
                split: SplitFolders | None = None, source=None) -> TrainingInput:
    """The images: the split folders (config.data unless given; decoded per epoch, or from the
    decoded-image cache with --cache-images), or `source`'s (a tlkit.datasets.TrainingSource)."""
    prep = backbone.preprocessing
    loaders = dict(batch_size=config.batch_size, workers=default_workers(config.workers), device=device, seed=config.seed,
                   augment=config.augment)
    if source is not None:
        data = source.make_data(prep, **loaders)
    elif config.cache_images:
        data = make_cached_data(split or Path(config.data), prep, cache_root=config.cache_dir, **loaders)
    else:
        data = make_data(split or Path(config.data), prep, **loaders)
    backbone.model.to(device, memory_format=memory_format(device))
    return TrainingInput(
        classes=data.classes, train_loader=data.train_loader, val_loader=data.val_loader,
        train_sampler=data.train_sampler, normalize=Normalizer(prep, device), module=backbone.model,
        sizes=(len(data.train_set), len(data.val_set)), test_loader=getattr(data, "test_loader", None))


def cached_features(config: FinetuneConfig, backbone: Backbone, device: torch.device, split: SplitFolders, *,
                    batch_size: int | None = None, force: bool = False) -> dict[str, FeatureSet]:
    """The frozen trunk's features of the split folders' images as the config asks for them (views,
    their augmentation, dtype, precision), from the cache or computed now (force: computed again)."""
    return precompute(backbone, split, cache_root=config.cache_dir, device=device, batch_size=batch_size,
                      workers=default_workers(config.workers), views=config.precompute_views, augment=config.augment,
                      dtype=config.cache_dtype, precision=config.precision, force=force)


def feature_input(config: FinetuneConfig, backbone: Backbone, device: torch.device, split: SplitFolders) -> TrainingInput:
    """The frozen trunk's cached features (cached_features), in the order the image sampler gives; the
    head trains on them."""
    sets = cached_features(config, backbone, device, split)
    backbone.model.to(device)
    train_loader = FeatureLoader(sets["training"], batch_size=config.batch_size, device=device, shuffle=True,
                                 seed=config.seed)
    val_loader = FeatureLoader(sets["validation"], batch_size=config.batch_size, device=device, shuffle=False)
    return TrainingInput(classes=split.classes, train_loader=train_loader, val_loader=val_loader,
                         train_sampler=train_loader, normalize=to_device_float(device), module=backbone.head,
                         sizes=(train_loader.size, val_loader.size))
