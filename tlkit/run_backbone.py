"""The backbone a run would use: its settings with every `auto` chosen (run_config), the model built and
seeded (create_backbone), and its trunk's cached features (`tlkit precompute`).

Shared by fine-tuning, lr-find and the audit, below all three; trains nothing and writes no run folder.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tlkit import models
from tlkit.backbone import Backbone
from tlkit.config import FinetuneConfig, resolve_config
from tlkit.inputs import SplitSource, cached_features, open_photos
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
    class says what every one declares)."""
    kind = source or SplitSource
    absolute = os.path.abspath
    config = dataclasses.replace(config, data=absolute(config.data), runs_dir=absolute(config.runs_dir),
                                 cache_dir=config.cache_dir and absolute(config.cache_dir),
                                 exclude=config.exclude and absolute(config.exclude),
                                 weights=absolute(config.weights) if Path(config.weights).exists() else config.weights)
    return resolve_auto(config, pretrained=starts_pretrained(config), data_augment=kind.augment,
                        linear_head=models.has_linear_head(config.backbone), features_possible=kind.caches)


def create_backbone(config: FinetuneConfig, classes: list[str], source=SplitSource) -> Backbone:
    """The backbone the config names, seeded first so a random initialisation repeats, checked to take its
    input size. The classic nets take the source's channels and size where it has them (`tlkit train`'s
    datasets), and the source sets the normalisation (photo folders: the backbone's own, as the class
    SplitSource declares)."""
    seed_everything(config.seed)
    classic = models.is_classic(config.backbone)
    backbone = check_input_fits(config.backbone, len(classes), weights=config.weights,
                                in_chans=source.channels if classic else None,
                                img_size=config.img_size or (source.image_size if classic else None))
    backbone.preprocessing = source.preprocessing_for(backbone)
    return backbone


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
