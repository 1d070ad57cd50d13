"""The training recipe: what each `auto` setting means, and the phases a run trains in, fully resolved.

A run on a pretrained trunk trains the head first, to convergence, then every layer at lower rates;
each phase has an optimizer and a schedule of its own that start from the phase's first step (no
phase is the warm-up of another's). The head trains on the frozen trunk's cached features where
they are valid: the run reads split folders, and the head's inputs are the trunk's features of the
photos, unaugmented (or of the views --precompute-views caches). From scratch, every layer trains
from the first epoch. `plan_phases` returns every phase with everything it uses; finetuning.py
builds one trainer per phase and reads nothing else of the recipe. `defaults_table` is the README's
table of defaults (tests/test_recipe.py holds the README to it). Its numbers (SCRATCH_LR, CACHED_HEAD_EPOCHS, ...)
are in tlkit/config.py, whose settings' help states them. Knows no models and no data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tlkit.config import (ADAMW_WEIGHT_DECAY, AFTER_CACHED_HEAD_FROZEN_SHARE, AFTER_CACHED_HEAD_TRAIN_SCALE,
                          AFTER_HEAD_LR, AUTO_OPTIMIZER, AUTO_SCHEDULER, CACHED_HEAD_EPOCHS,
                          CACHED_HEAD_LR, CACHED_HEAD_WEIGHT_DECAY, EPOCHS, EPOCHS_AFTER_CACHED_HEAD,
                          HEAD_EPOCHS_ON_IMAGES, HEAD_LR, MULTI_LABEL_AUGMENT, MULTI_LABEL_EPOCHS_AFTER_CACHED_HEAD,
                          MULTI_LABEL_HEAD_EPOCHS, MULTI_LABEL_HEAD_LR, MULTI_LABEL_MONITOR, PRETRAINED_TRUNK_LR_MULT,
                          SCRATCH_LR, FinetuneConfig)
from tlkit.errors import TlkitError, option

HEAD, HEAD_ON_IMAGES, EVERY_LAYER = "head", "head-images", "images"  # phase names, as resume files record them


def resolve_auto(config: FinetuneConfig, *, pretrained: bool, data_augment: str = "default", linear_head: bool = True,
                 features_possible: bool = True, multi_label: bool = False) -> FinetuneConfig:
    """The config with every `auto` and unset value chosen for the situation, so that config.yaml records
    what the run uses and repeats it; values given (flags, a config file) are kept. `pretrained`: the
    trunk starts from trained tensors; `data_augment`: what the data declares (no mirror for digits);
    `linear_head`: the head is one layer; `features_possible`: the run reads split folders, whose
    features can be cached (not a `tlkit train` dataset); `multi_label`: the data gives several labels a photo
    (a sigmoid output per label), whose one-layer head on cached features has defaults of its own
    (MULTI_LABEL_HEAD_LR, MULTI_LABEL_HEAD_EPOCHS), as have its every-layer epochs after that head, its
    augmentation and the metric that picks its best epoch (MULTI_LABEL_EPOCHS_AFTER_CACHED_HEAD,
    MULTI_LABEL_AUGMENT, MULTI_LABEL_MONITOR). Contradictory settings are a TlkitError."""
    _refuse_contradictions(config)
    every_layer = config.freeze != "trunk"
    precompute = config.precompute_features
    if precompute is None:  # auto: the head first on cached features, where a head trains first at all
        precompute = pretrained and features_possible and config.freeze == "auto"
    cached_head_epochs = MULTI_LABEL_HEAD_EPOCHS if multi_label and linear_head else CACHED_HEAD_EPOCHS
    head_first = config.unfreeze_after
    if head_first is None and precompute and config.precompute_features is None:
        head_first = cached_head_epochs  # the default recipe: the head to convergence, then every layer
    elif head_first is None and pretrained and not precompute and config.freeze == "auto":
        head_first = HEAD_EPOCHS_ON_IMAGES
    every_layer_epochs = MULTI_LABEL_EPOCHS_AFTER_CACHED_HEAD if multi_label else EPOCHS_AFTER_CACHED_HEAD
    epochs = config.epochs or _default_epochs(precompute, head_first, every_layer, cached_head_epochs,
                                              every_layer_epochs)
    head_only = not every_layer or (precompute and head_first is None) or (head_first or 0) >= epochs
    trains_head = head_only or bool(head_first)
    return dataclasses.replace(
        config, epochs=epochs, precompute_features=precompute, unfreeze_after=None if head_only else head_first,
        freeze="trunk" if head_only else "none",  # as config.yaml records it: what trains, plainly
        lr=config.lr or (None if head_only else SCRATCH_LR if not pretrained else
                         AFTER_HEAD_LR if trains_head else HEAD_LR),
        head_lr=_head_lr(config, precompute, linear_head, pretrained, multi_label) if trains_head else None,
        head_weight_decay=_head_weight_decay(config, precompute, linear_head) if trains_head else None,
        weight_decay=None if head_only else config.weight_decay,
        optimizer=AUTO_OPTIMIZER if config.optimizer == "auto" else config.optimizer,
        scheduler=AUTO_SCHEDULER if config.scheduler == "auto" else config.scheduler,
        trunk_lr_mult=config.trunk_lr_mult or (PRETRAINED_TRUNK_LR_MULT if pretrained else 1.0),
        freeze_bn=pretrained if config.freeze_bn is None else config.freeze_bn,
        augment=config.augment if config.augment != "auto" else MULTI_LABEL_AUGMENT if multi_label else data_augment,
        monitor=config.monitor if config.monitor != "auto" else MULTI_LABEL_MONITOR if multi_label else "val_loss",
    )


def _refuse_contradictions(config: FinetuneConfig) -> None:
    if config.freeze == "trunk" and config.unfreeze_after is not None:
        raise TlkitError(f"{option('freeze', 'trunk')} trains the head alone for the whole run, and "
                         f"{option('unfreeze_after', config.unfreeze_after)} unfreezes the trunk after epoch "
                         f"{config.unfreeze_after}: give one of them ({option('unfreeze_after')} alone trains the head "
                         "first, then every layer).")
    if config.freeze == "none" and config.precompute_features and config.unfreeze_after is None:
        raise TlkitError(f"{option('freeze', 'none')} trains every layer from the first epoch, and "
                         f"{option('precompute_features', True)} trains the head alone on cached features: give one "
                         f"of them, or add {option('unfreeze_after', 'E')} to train the head on the cache for E "
                         "epochs, then every layer.")


def _default_epochs(precompute: bool, head_first: int | None, every_layer: bool, cached_head_epochs: int,
                    every_layer_epochs: int) -> int:
    if not precompute:
        return EPOCHS
    if head_first is None or not every_layer:
        return cached_head_epochs  # the head alone, on the cache
    return head_first + every_layer_epochs


def _head_lr(config: FinetuneConfig, on_features: bool, linear_head: bool, pretrained: bool,
             multi_label: bool) -> float:
    if config.head_lr or config.lr:
        return config.head_lr or config.lr
    if not pretrained:
        return SCRATCH_LR
    if not (on_features and linear_head):
        return HEAD_LR
    return MULTI_LABEL_HEAD_LR if multi_label else CACHED_HEAD_LR


def _head_weight_decay(config: FinetuneConfig, on_features: bool, linear_head: bool) -> float | None:
    given = next((value for value in (config.head_weight_decay, config.weight_decay) if value is not None), None)
    if given is not None or not on_features:
        return given
    return CACHED_HEAD_WEIGHT_DECAY if linear_head else None


@dataclass(frozen=True)
class Phase:
    """One stretch of a run with its own optimizer and schedule, from epoch `first` + 1 to epoch `last`.

    `settings` is what its optimizer and schedule read: the run's, with the phase's own lr (the head's,
    scaled for the number of processes), weight decay and epochs. `augment` is what its training batches
    get ("none" on cached features without views). After the head on cached features, every layer trains on
    crops cut at `train_scale` of the input side (validation keeps the whole side), with the trunk's first
    `frozen_share` of parameters left as they are (Backbone.freeze_first)."""

    name: str  # HEAD (on cached features), HEAD_ON_IMAGES or EVERY_LAYER
    first: int
    last: int
    total: int  # the run's epochs, for "epoch 3/33"
    augment: str
    settings: FinetuneConfig
    train_scale: float = 1.0  # the training crops' side, as a share of the input's
    frozen_share: float = 0.0  # the trunk's first parameters that stay frozen, as a share of their count

    @property
    def on_features(self) -> bool:
        return self.name == HEAD

    @property
    def trunk_frozen(self) -> bool:
        return self.name != EVERY_LAYER

    @property
    def epochs(self) -> int:
        return self.last - self.first

    @property
    def lr(self) -> float:
        return self.settings.lr

    @property
    def weight_decay(self) -> float | None:
        return self.settings.weight_decay

    @property
    def trunk_lr(self) -> float | None:
        """None while the trunk is frozen."""
        return None if self.trunk_frozen else self.lr * self.settings.trunk_lr_mult

    @property
    def freeze_bn(self) -> bool:
        """The trunk's BatchNorm statistics stay as they are while every layer trains on the images."""
        return self.settings.freeze_bn and not self.trunk_frozen


def plan_phases(config: FinetuneConfig, *, processes: int = 1) -> list[Phase]:
    """The phases of a resolved config (resolve_auto)."""
    head_epochs = config.epochs if config.freeze == "trunk" else min(config.unfreeze_after or 0, config.epochs)
    phases = []
    if head_epochs:
        phases.append(_phase(config, HEAD if config.precompute_features else HEAD_ON_IMAGES, 0, head_epochs, processes))
    if head_epochs < config.epochs:
        every_layer = _phase(config, EVERY_LAYER, head_epochs, config.epochs, processes)
        phases.append(_after_cached_head(every_layer) if phases and phases[0].on_features else every_layer)
    return phases


def _after_cached_head(phase: Phase) -> Phase:
    """The every-layer phase after a head trained on cached features (a pretrained trunk's): its crops smaller
    than the input (where there are random crops) and the trunk's first layers kept, for a fraction of the cost."""
    scale = AFTER_CACHED_HEAD_TRAIN_SCALE if phase.augment != "none" else 1.0
    return dataclasses.replace(phase, train_scale=scale, frozen_share=AFTER_CACHED_HEAD_FROZEN_SHARE)


def _phase(config: FinetuneConfig, name: str, first: int, last: int, processes: int) -> Phase:
    scale = processes if config.lr_scale == "linear" else 1
    if name == EVERY_LAYER:
        lr, decay, augment = config.lr, config.weight_decay, config.augment
    else:
        lr, decay = config.head_lr, config.head_weight_decay
        augment = config.augment if name == HEAD_ON_IMAGES or config.precompute_views else "none"
    settings = dataclasses.replace(config, lr=lr * scale, weight_decay=decay, epochs=last - first)
    return Phase(name, first, last, config.epochs, augment, settings)


def remaining(phases: list[Phase], name: str) -> list[Phase]:
    """The phases from the one a resume file was written in (its `phase`: HEAD, HEAD_ON_IMAGES or
    EVERY_LAYER) to the end."""
    names = [phase.name for phase in phases]
    if name not in names:
        raise TlkitError(f"the resume file was written while {_WHAT[name]} trained, a phase that these settings no "
                         f"longer plan ({', '.join(_WHAT[n] for n in names)}); resume with the run's own settings.")
    return phases[names.index(name):]


_WHAT = {HEAD: "the head on cached features", HEAD_ON_IMAGES: "the head on the images",
         EVERY_LAYER: "every layer on the images"}


def describe(phases: list[Phase], config: FinetuneConfig) -> list[str]:
    """Each phase in words, with what it uses: the run's first lines and config.yaml's comment."""
    return [f"{_epochs(p)}: {_WHAT[p.name]}: {_rates(p, config)}, {config.scheduler} schedule, augment {p.augment}"
            + (f", crops at {p.train_scale:g} of the input side (validation at the whole side)"
               if p.train_scale != 1 else "")
            + (f", the trunk's first {p.frozen_share:.0%} of parameters (its lower layers) kept as they are"
               if p.frozen_share else "")
            + (", BatchNorm statistics frozen" if p.freeze_bn else "") for p in phases]


def _epochs(phase: Phase) -> str:
    return f"epoch {phase.last}" if phase.epochs == 1 else f"epochs {phase.first + 1}-{phase.last}"


def _rates(phase: Phase, config: FinetuneConfig) -> str:
    trunk = f" (trunk {phase.trunk_lr:g})" if phase.trunk_lr is not None and phase.trunk_lr != phase.lr else ""
    default_decay = f"{ADAMW_WEIGHT_DECAY:g} (adamw's)" if config.optimizer == "adamw" else "0"
    decay = f"{phase.weight_decay:g}" if phase.weight_decay is not None else default_decay
    return f"{config.optimizer} lr {phase.lr:g}{trunk}, weight decay {decay}"


def unused_settings(given: dict, config: FinetuneConfig, phases: list[Phase]) -> list[str]:
    """Why a setting given is not used by these phases, one sentence each (empty when all are)."""
    names = {phase.name for phase in phases}
    notes = []
    if {"head_lr", "head_weight_decay"} & given.keys() and not names & {HEAD, HEAD_ON_IMAGES}:
        notes.append(f"{option('head_lr')} and {option('head_weight_decay')} are not used: no phase trains the "
                     "head alone (every layer trains from the first epoch)")
    if "precompute_views" in given and HEAD not in names:
        notes.append(f"{option('precompute_views')} is not used: no phase trains on cached features")
    if "unfreeze_after" in given and "epochs" in given and EVERY_LAYER not in names:
        notes.append(f"{option('unfreeze_after', given['unfreeze_after'])} is not before the run's end "
                     f"({option('epochs', config.epochs)}): only the head trains")
    if "augment" in given and names == {HEAD} and not config.precompute_views:
        notes.append(f"{option('augment', config.augment)} is not used: the head trains on cached features of the "
                     f"unaugmented photos (add {option('precompute_views', 'N')} to cache augmented views)")
    return notes


# The README's table of defaults: a situation, the settings that make it, and what trains.
SITUATIONS = (
    ("from scratch (`--weights none`, the classic nets)", {}, False),
    ("pretrained (the default)", {}, True),
    ("pretrained, `--precompute-features`", {"precompute_features": True}, True),
    ("pretrained, `--precompute-features false`", {"precompute_features": False}, True),
    ("pretrained, `--freeze trunk`", {"freeze": "trunk"}, True),
)
# A split of several labels a photo (`tlkit split --multi-label`), pretrained: its cached head has defaults of its own.
MULTI_LABEL_SITUATIONS = (
    ("a multi-label split, pretrained (the default)", {}),
    ("a multi-label split, pretrained, `--precompute-features`", {"precompute_features": True}),
)


def defaults_table() -> str:
    """The README's table of defaults, from plan_phases on each situation."""
    rows = ["| situation | epochs | phases (each with its own optimizer and schedule) |", "| --- | --- | --- |"]
    situations = [(*row, False) for row in SITUATIONS] + [(*row, True, True) for row in MULTI_LABEL_SITUATIONS]
    for situation, given, pretrained, multi_label in situations:
        config = resolve_auto(FinetuneConfig(**given), pretrained=pretrained, multi_label=multi_label)
        phases = plan_phases(config)
        rows.append(f"| {situation} | {config.epochs} | {'; then '.join(describe(phases, config))} |")
    return "\n".join(rows) + "\n"
