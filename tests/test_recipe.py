"""The recipe (tlkit/recipe.py): what `auto` means, the phases a run trains in, each with its own optimizer
and schedule, contradictions refused, and the README's table of defaults."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import pytest

from tlkit import recipe
from tlkit.config import MULTI_LABEL_HEAD_EPOCHS, MULTI_LABEL_HEAD_LR, config_yaml, make_config
from tlkit.errors import TlkitError
from tlkit.recipe import EVERY_LAYER, HEAD, HEAD_ON_IMAGES, plan_phases, resolve_auto


README = Path(__file__).resolve().parents[1] / "README.md"


def planned(settings: dict, **situation) -> tuple:
    config = resolve_auto(make_config(settings), **{"pretrained": True, **situation})
    return config, plan_phases(config)


def test_auto_settings_are_chosen_for_the_situation_and_given_ones_kept():
    scratch, _ = planned({}, pretrained=False, data_augment="light")
    assert (scratch.optimizer, scratch.scheduler, scratch.lr, scratch.epochs) == ("adamw", "onecycle", 3e-3, 10)
    assert (scratch.freeze, scratch.unfreeze_after, scratch.trunk_lr_mult, scratch.augment) == ("none", None, 1.0, "light")
    on_images, _ = planned({"precompute_features": False})
    assert (on_images.lr, on_images.head_lr, on_images.trunk_lr_mult, on_images.unfreeze_after) == (5e-4, 1e-3, 0.1, 1)
    given, _ = planned({"optimizer": "sgd", "lr": 0.01, "scheduler": "step", "freeze": "trunk", "augment": False,
                        "epochs": 4})
    assert (given.optimizer, given.head_lr, given.scheduler, given.freeze, given.unfreeze_after, given.augment,
            given.epochs) == ("sgd", 0.01, "step", "trunk", None, "none", 4)
    recorded = config_yaml(scratch)
    assert all(f"{key}: auto" not in recorded for key in ("optimizer", "scheduler", "freeze", "augment"))


def test_a_pretrained_run_trains_the_head_on_the_cache_to_convergence_then_every_layer():
    config, phases = planned({})
    assert [(p.name, p.first, p.last, p.settings.epochs) for p in phases] == [(HEAD, 0, 30, 30), (EVERY_LAYER, 30, 31, 1)]
    head, every = phases
    assert (head.lr, head.weight_decay, head.trunk_lr, head.augment) == (1e-2, 2.0, None, "none")
    assert (every.lr, every.trunk_lr, every.augment, every.freeze_bn) == (5e-4, 5e-5, "default", True)
    # Where the features cannot be cached (a `tlkit train` dataset), the head trains one epoch on the images.
    _, phases = planned({}, features_possible=False)
    assert [(p.name, p.epochs) for p in phases] == [(HEAD_ON_IMAGES, 1), (EVERY_LAYER, 9)]


def test_every_layer_after_the_cached_head_trains_on_smaller_crops_with_the_first_layers_kept():
    # The default recipe's every-layer epoch: crops at 3/4 of the side, the trunk's first 21% of parameters kept.
    _, (_, every) = planned({})
    assert (every.train_scale, every.frozen_share) == (0.75, 0.21)
    _, (_, unaugmented) = planned({"augment": "none"})  # no random crops to cut smaller
    assert (unaugmented.train_scale, unaugmented.frozen_share) == (1.0, 0.21)
    # Every other every-layer phase trains at the whole side, every layer: from scratch, after a head on the images.
    for settings, situation in (({}, {"pretrained": False}), ({"precompute_features": False}, {})):
        _, phases = planned(settings, **situation)
        assert [(p.train_scale, p.frozen_share) for p in phases] == [(1.0, 0.0)] * len(phases)


def test_precompute_features_alone_trains_the_head_alone_and_records_no_lr_it_did_not_use():
    config, phases = planned({"precompute_features": True})
    assert [(p.name, p.epochs) for p in phases] == [(HEAD, 30)]
    assert (config.lr, config.weight_decay, config.head_lr, config.head_weight_decay) == (None, None, 1e-2, 2.0)
    mlp, _ = planned({"precompute_features": True}, linear_head=False)
    assert (mlp.head_lr, mlp.head_weight_decay) == (1e-3, None)  # VGG/AlexNet keep fc6/fc7
    given, _ = planned({"precompute_features": True, "lr": 0.02, "weight_decay": 0.1})
    assert (given.head_lr, given.head_weight_decay) == (0.02, 0.1)
    # The resolved config, read back, plans the same phases.
    again = resolve_auto(make_config(json.loads(json.dumps(config.__dict__))), pretrained=True)
    assert plan_phases(again) == phases


def test_every_resolved_config_plans_the_same_phases_when_read_back():
    for _, given, pretrained in recipe.SITUATIONS:
        config, phases = planned(given, pretrained=pretrained)
        again = resolve_auto(make_config(dict(config.__dict__)), pretrained=pretrained)
        assert plan_phases(again) == phases, given


def test_a_one_layer_head_on_a_multi_label_splits_cache_has_defaults_of_its_own_and_nothing_else_changes():
    _, (single,) = planned({"precompute_features": True})
    _, (multi,) = planned({"precompute_features": True}, multi_label=True)
    assert (single.lr, single.weight_decay, single.epochs) == (1e-2, 2.0, 30)
    assert (multi.lr, multi.weight_decay, multi.epochs) == (MULTI_LABEL_HEAD_LR, 2.0, MULTI_LABEL_HEAD_EPOCHS)
    # The default recipe: the head to convergence at those, then every layer as for one class a photo, but for 3
    # epochs on crops that keep most of each photo (its labelled things stay in the crop).
    _, (head, every) = planned({}, multi_label=True)
    _, (_, single_every) = planned({})
    assert (head.lr, head.epochs) == (MULTI_LABEL_HEAD_LR, MULTI_LABEL_HEAD_EPOCHS)
    assert (every.epochs, every.augment, single_every.epochs, single_every.augment) == (3, "light", 1, "default")
    assert [(p.lr, p.trunk_lr, p.weight_decay, p.train_scale, p.frozen_share, p.freeze_bn)
            for p in (every, single_every)] == [(5e-4, 5e-5, None, 0.75, 0.21, True)] * 2
    assert (planned({}, multi_label=True)[0].monitor, planned({})[0].monitor) == ("val_map", "val_loss")
    config, (_, given) = planned({"augment": "default", "epochs": 101, "monitor": "val_loss"}, multi_label=True)
    assert (given.epochs, given.augment, config.monitor) == (1, "default", "val_loss")  # given values are kept
    # Not measured, so kept: VGG/AlexNet's head of several layers, a head on the images, from scratch; given values.
    # Their crops keep most of each photo too: a tight crop cuts a labelled thing out on any multi-label run.
    mlp, (mlp_head,) = planned({"precompute_features": True}, linear_head=False, multi_label=True)
    assert (mlp.head_lr, mlp_head.epochs) == (1e-3, 30)
    for given, pretrained in (({"precompute_features": False}, True), ({}, False)):
        (multi, multi_phases), (single, single_phases) = (planned(given, pretrained=pretrained, multi_label=multi)
                                                          for multi in (True, False))
        assert (multi.augment, single.augment) == ("light", "default")
        assert [phase.augment for phase in multi_phases] == ["light"] * len(single_phases)
        assert [dataclasses.replace(phase, augment=None, settings=None) for phase in multi_phases] == [
            dataclasses.replace(phase, augment=None, settings=None) for phase in single_phases]
    given, _ = planned({"precompute_features": True, "head_lr": 0.02, "epochs": 5}, multi_label=True)
    assert (given.head_lr, given.epochs) == (0.02, 5)
    for _, settings in recipe.MULTI_LABEL_SITUATIONS:  # read back (a resumed run), the same phases
        config, phases = planned(settings, multi_label=True)
        assert plan_phases(resolve_auto(make_config(dict(config.__dict__)), pretrained=True, multi_label=True)) == phases


@pytest.mark.parametrize("settings, words", [
    ({"freeze": "trunk", "unfreeze_after": 2, "epochs": 1}, "give one of them"),
    ({"freeze": "none", "precompute_features": True}, "give one of them"),
])
def test_contradictory_settings_are_one_message(settings, words):
    with pytest.raises(TlkitError, match=words):
        planned(settings)


def test_settings_no_phase_uses_are_named():
    given = {"unfreeze_after": 4, "epochs": 3, "precompute_features": True}
    config, phases = planned(given)
    notes = recipe.unused_settings(given, config, phases)
    assert [(p.name, p.epochs) for p in phases] == [(HEAD, 3)]
    assert any("--unfreeze-after 4 is not before the run's end" in note for note in notes)
    given = {"freeze": "none", "head_lr": 0.1}
    assert any("--head-lr" in note for note in recipe.unused_settings(given, *planned(given)))
    given = {"precompute_features": True, "augment": "light"}
    assert any("--augment light is not used" in note for note in recipe.unused_settings(given, *planned(given)))


def test_a_resume_file_of_a_phase_these_settings_do_not_plan_is_refused():
    config, _ = planned({"precompute_features": True})
    with pytest.raises(TlkitError, match="every layer on the images"):
        recipe.remaining(plan_phases(config), EVERY_LAYER)
    config, phases = planned({})
    assert recipe.remaining(phases, EVERY_LAYER) == phases[1:]


def test_the_readme_table_of_defaults_is_the_recipe():
    readme = "\n".join(line.strip() for line in README.read_text(encoding="utf-8").splitlines())
    assert recipe.defaults_table() in readme
