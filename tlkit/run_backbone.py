"""The backbone a run would use: its settings with every `auto` chosen (run_config), the model built and
seeded (create_backbone) with the preprocessing it gets on this data (resolve_preprocessing), and its trunk's
cached features (`tlkit precompute`).

Shared by fine-tuning, lr-find and the audit, below all three; trains nothing and writes no run folder.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tlkit import models
from tlkit.backbone import Backbone, Preprocessing, per_channel
from tlkit.config import FinetuneConfig, resolve_config
from tlkit.errors import option
from tlkit.inputs import SplitSource, cached_features, open_photos
from tlkit.multilabel import is_multi_label_split
from tlkit.recipe import resolve_auto
from tlkit.runtime import compute_for, seed_everything
from tlkit.summary import check_input_fits


def starts_pretrained(config: FinetuneConfig) -> bool:
    """Whether the run starts from trained tensors: ImageNet's (the default where the backbone has
    them) or a file's; the classic nets and --weights none start from a random initialisation."""
    if config.weights == "default":
        return not models.is_classic(config.backbone)
    return config.weights != "none"


def run_config(config: FinetuneConfig, source=None) -> FinetuneConfig:
    """The config with every `auto` chosen for this backbone and data (recipe.resolve_auto), and its folders
    absolute: config.yaml and best.json then repeat the run, resume it and find its validation photos from any
    working directory (messages still show them relative). source None: split folders (a SplitSource, whose
    class says what every one declares; the split's own files whether it gives several labels a photo)."""
    kind = source or SplitSource
    absolute = os.path.abspath
    config = dataclasses.replace(config, data=absolute(config.data), runs_dir=absolute(config.runs_dir),
                                 cache_dir=config.cache_dir and absolute(config.cache_dir),
                                 exclude=config.exclude and absolute(config.exclude),
                                 weights=absolute(config.weights) if Path(config.weights).exists() else config.weights)
    multi_label = is_multi_label_split(Path(config.data)) if source is None else source.multi_label
    return resolve_auto(config, pretrained=starts_pretrained(config), data_augment=kind.augment,
                        linear_head=models.has_linear_head(config.backbone), features_possible=kind.caches,
                        multi_label=multi_label)


def create_backbone(config: FinetuneConfig, classes: list[str], source=SplitSource) -> Backbone:
    """The backbone the config names, seeded first so a random initialisation repeats, checked to take its
    input size, with the preprocessing it gets on the source's data (resolve_preprocessing). The classic nets
    take the source's channels and size where it has them (`tlkit train`'s datasets)."""
    seed_everything(config.seed)
    classic = models.is_classic(config.backbone)
    backbone = check_input_fits(config.backbone, len(classes), weights=config.weights,
                                in_chans=source.channels if classic else None,
                                img_size=config.img_size or (source.image_size if classic else None))
    return dataclasses.replace(backbone, preprocessing=resolve_preprocessing(backbone, source))


def resolve_preprocessing(backbone: Backbone, source) -> Preprocessing:
    """What this model gets on this data, answered here alone. The model's own preprocessing comes from its
    weights' config, read by models.weights_preprocessing (torchvision's weights enum, a classic net's
    spec, timm's resolve_data_config), and is what photo folders get. A source with a normalisation of its
    own (`tlkit train`'s datasets) sets the mean/std: the settings' if given; a pretrained backbone's own;
    else the training set's (known per dataset, or measured); and its geometry where the data fixes it."""
    native = backbone.preprocessing
    if not source.own_normalisation:
        return native
    mean, std = source.given_stats()
    if mean is not None or std is not None:
        mean = per_channel(mean or native.mean, native.in_chans, given_as=option("mean"))
        std = per_channel(std or native.std, native.in_chans, given_as=option("std"))
    elif backbone.pretrained:
        mean, std = native.mean, native.std
    elif source.known_stats is not None and source.channels <= native.in_chans:
        mean, std = (per_channel(values, native.in_chans) for values in source.known_stats)
    else:
        mean, std = source.measured_stats(native)
    return dataclasses.replace(native, mean=tuple(mean), std=tuple(std), **source.geometry(native))


def precompute_features(config_file: Path | str | None = None, *, batch_size: int | None = None, force: bool = False,
                        **settings) -> tuple[Backbone, dict]:
    """`tlkit precompute`: the feature cache that `finetune --precompute-features` with these settings reads,
    found valid or computed now (force: computed again). Returns the backbone and its FeatureSets."""
    config = run_config(resolve_config(Path(config_file) if config_file else None, settings))
    split = open_photos(config).split
    compute = compute_for(config.device, config.precision)
    # Seeded: random-init weights (--weights none) repeat, and so does their cache.
    backbone = create_backbone(config, split.classes)
    return backbone, cached_features(config, backbone, compute, split, batch_size=batch_size, force=force)
