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
    ({"epochs": 0}, "epochs must be a whole number 1 or more, not 0"),
    ({"epochs": "three"}, "epochs must be a whole number 1 or more, not three"),
    ({"augment": "maybe"}, "augment 'maybe' is not one of auto, default, light, none"),
    ({"batch_size": 2.5}, "batch_size must be a whole number 1 or more and at most 1048576, not 2.5"),
])
def test_bad_values_are_explained(values, words):
    with pytest.raises(TlkitError, match=words):
        make_config(values)


def test_every_number_setting_has_its_range_beside_it():
    import dataclasses

    from tlkit.config import setting_kind

    numbers = [f for f in dataclasses.fields(FinetuneConfig) if setting_kind(f.name)[0] in (int, float)]
    assert len(numbers) >= 18 and all(f.metadata["range"] is not None for f in numbers)
    assert all(f.metadata["range"] is None for f in dataclasses.fields(FinetuneConfig) if f not in numbers)


# What issue 23 found taken without a word (nan as 0, true as 1 epoch, a negative gamma) or as a traceback.
BAD_NUMBERS = [
    ("lr", "nan", "a number above 0, not nan"),
    ("lr", "inf", "a number above 0, not inf"),
    ("head_lr", "-1e-3", "a number above 0, not -1e-3"),
    ("momentum", "5", "a number 0 or more and below 1, not 5"),
    ("momentum", "-0.1", "a number 0 or more and below 1, not -0.1"),
    ("gamma", "-1", "a number above 0 and below 1, not -1"),
    ("label_smoothing", "2", "a number 0 or more and below 1, not 2"),
    ("label_smoothing", "nan", "a number 0 or more and below 1, not nan"),
    ("trunk_lr_mult", "nan", "a number above 0, not nan"),
    ("weight_decay", "-inf", "a number 0 or more, not -inf"),
    ("epochs", "true", "a whole number 1 or more, not true"),
    ("epochs", "1.5", "a whole number 1 or more, not 1.5"),
    ("epochs", "three", "a whole number 1 or more, not three"),
    ("batch_size", "0", "a whole number 1 or more and at most 1048576, not 0"),
    ("workers", "-1", "a whole number 0 or more and at most 512, not -1"),
    ("seed", "4294967296", "a whole number 0 or more and at most 4294967295, not 4294967296"),
    ("resume_every_seconds", "nan", "a number 0 or more, not nan"),
]


@pytest.mark.parametrize("key, value, words", BAD_NUMBERS)
def test_a_number_out_of_range_is_refused_naming_the_key_and_its_file(tmp_path, key, value, words):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"{key}: {'.nan' if value == 'nan' else value}\n")  # YAML's own: .nan a float, true a boolean
    with pytest.raises(TlkitError) as error:
        resolve_config(path, {})
    assert str(error.value) == f"{path}: {key} must be {words}."


@pytest.mark.parametrize("key, value, words", BAD_NUMBERS)
def test_a_number_out_of_range_is_refused_naming_the_flag(key, value, words):
    with pytest.raises(TlkitError) as error:
        resolve_config(None, {key: value})  # a flag's text, as the command line gives it
    assert str(error.value) == f"--{key.replace('_', '-')} must be {words}."


def test_numbers_in_range_are_read_from_text_as_their_kind():
    config = resolve_config(None, {"lr": "1e-3", "epochs": "3", "momentum": "0", "seed": "4294967295",
                                   "label_smoothing": "0.1", "gamma": "0.5"})
    assert (config.lr, config.epochs, config.momentum, config.seed) == (1e-3, 3, 0.0, 2**32 - 1)
    assert (config.label_smoothing, config.gamma) == (0.1, 0.5)
    assert isinstance(config.epochs, int) and isinstance(config.momentum, float)


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
