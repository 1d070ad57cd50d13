"""Settings: defaults, YAML files, flags winning, unknown keys and bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlkit.config import FinetuneConfig, config_keys, config_yaml, make_config, read_config_file, resolve_config
from tlkit.errors import TlkitError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_the_dataclass_defaults():
    assert make_config({}) == FinetuneConfig()


def test_the_file_seeds_and_flags_win(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("backbone: vgg16\nlr: 1e-3\nbatch-size: 32\nfreeze: trunk\n")
    config = resolve_config(path, {"batch_size": 8})
    assert (config.backbone, config.lr, config.batch_size, config.freeze) == ("vgg16", 0.001, 8, "trunk")
    assert isinstance(config.lr, float)  # YAML reads 1e-3 as a string


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("lrr: 0.1\nepochs: 3\nshedule: step\n")
    with pytest.raises(TlkitError) as error:
        read_config_file(path)
    message = str(error.value)
    assert "lrr, shedule" in message and "typo.yaml" in message
    assert all(key in message for key in ("lr", "scheduler", "batch_size"))


@pytest.mark.parametrize("values, words", [
    ({"optimizer": "adam"}, "sgd, adamw"),
    ({"epochs": 0}, "epochs must be above 0"),
    ({"epochs": "three"}, "epochs must be a whole number"),
    ({"augment": "maybe"}, "augment 'maybe' is not one of auto, default, light, none"),
    ({"batch_size": 2.5}, "batch_size must be a whole number"),
])
def test_bad_values_are_explained(values, words):
    with pytest.raises(TlkitError, match=words):
        make_config(values)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- lr\n- 0.1\n")
    with pytest.raises(TlkitError, match="setting: value"):
        read_config_file(path)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = make_config({"backbone": "lenet", "patience": 3, "weight_decay": 0.01})
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(config))
    assert resolve_config(path, {}) == config
    assert list(read_config_file(path)) == config_keys()


@pytest.mark.parametrize("name", ["resnet18-tutorial", "vgg16-transfer", "alexnet-adamw", "scratch-resnet18"])
def test_shipped_recipes_load(name):
    config = resolve_config(CONFIGS / f"{name}.yaml", {})
    assert config.backbone in ("resnet18", "vgg16", "alexnet")
    if name == "resnet18-tutorial":
        assert (config.optimizer, config.lr, config.momentum, config.step_size, config.gamma, config.batch_size) == (
            "sgd", 0.001, 0.9, 7, 0.1, 64)
    if name == "vgg16-transfer":
        assert config.freeze == "trunk"
    if name == "alexnet-adamw":
        assert (config.optimizer, config.lr) == ("adamw", 1e-4)
    if name == "scratch-resnet18":
        assert config.weights == "none"


def test_auto_settings_are_chosen_for_the_situation_and_given_ones_kept():
    from tlkit.config import resolve_auto

    scratch = resolve_auto(make_config({}), pretrained=False, data_augment="light")
    assert (scratch.optimizer, scratch.scheduler, scratch.lr, scratch.epochs) == ("adamw", "onecycle", 3e-3, 10)
    assert (scratch.freeze, scratch.unfreeze_after, scratch.trunk_lr_mult, scratch.augment) == ("none", None, 1.0, "light")
    pretrained = resolve_auto(make_config({}), pretrained=True)
    assert (pretrained.lr, pretrained.trunk_lr_mult, pretrained.unfreeze_after) == (1e-3, 0.1, 1)
    assert pretrained.augment == "default"
    cached = resolve_auto(make_config({"precompute_features": True}), pretrained=True)
    assert (cached.epochs, cached.unfreeze_after) == (30, None)
    given = resolve_auto(make_config({"optimizer": "sgd", "lr": 0.01, "scheduler": "step", "freeze": "trunk",
                                      "augment": False, "epochs": 4}), pretrained=True)
    assert (given.optimizer, given.lr, given.scheduler, given.freeze, given.unfreeze_after, given.augment,
            given.epochs) == ("sgd", 0.01, "step", "trunk", None, "none", 4)
    recorded = config_yaml(scratch)
    assert all(f"{key}: auto" not in recorded for key in ("optimizer", "scheduler", "freeze", "augment"))
    assert "unfreeze_after: 1" in config_yaml(pretrained)


def test_a_head_on_cached_features_gets_its_own_lr_and_weight_decay():
    from tlkit.config import resolve_auto

    cached = resolve_auto(make_config({"precompute_features": True}), pretrained=True)
    assert (cached.head_lr, cached.head_weight_decay, cached.freeze_bn) == (1e-2, 2.0, True)
    assert cached.lr == 5e-4  # what every layer gets after the head (--unfreeze-after)
    mlp_head = resolve_auto(make_config({"precompute_features": True}), pretrained=True, linear_head=False)
    assert (mlp_head.head_lr, mlp_head.head_weight_decay) == (1e-3, None)  # VGG/AlexNet keep fc6/fc7
    given = resolve_auto(make_config({"precompute_features": True, "lr": 0.02, "weight_decay": 0.1}), pretrained=True)
    assert (given.head_lr, given.head_weight_decay, given.lr) == (0.02, 0.1, 0.02)
    scratch = resolve_auto(make_config({}), pretrained=False)
    assert (scratch.head_lr, scratch.freeze_bn) == (None, False)
