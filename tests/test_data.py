"""Datasets and loaders: class checks, transforms from the preprocessing, seeded order, skipped images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_foldered, write_image
from tlkit.data import EpochSampler, check_classes, collate_skipping, make_data
from tlkit.decode import Normalizer
from tlkit.errors import TlkitError
from tlkit.backbone import Preprocessing

RGB = Preprocessing(input_size=(16, 16), resize_size=20, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                    interpolation="bilinear", in_chans=3)
GRAY = Preprocessing(input_size=(12, 12), resize_size=None, mean=(0.5,), std=(0.5,), interpolation="bilinear",
                     in_chans=1)


def make_split(root: Path, train: dict, val: dict) -> Path:
    make_foldered(root / "training", train)
    make_foldered(root / "validation", val)
    return root


def data(root: Path, prep=RGB, **overrides):
    options = dict(batch_size=4, workers=0, device=torch.device("cpu"), seed=0, augment="default")
    return make_data(root, prep, **{**options, **overrides})


def test_missing_subsets_say_to_run_split(tmp_path):
    make_foldered(tmp_path / "training", {"a": 2, "b": 2})
    with pytest.raises(TlkitError, match="tlkit split"):
        check_classes(tmp_path)


def test_classes_must_match_and_be_two_or_more(tmp_path):
    make_split(tmp_path / "x", {"a": 2, "b": 2, "c": 2}, {"a": 1, "b": 1, "d": 1})
    with pytest.raises(TlkitError, match="only in training: c; only in validation: d"):
        check_classes(tmp_path / "x")
    make_split(tmp_path / "y", {"a": 2}, {"a": 1})
    with pytest.raises(TlkitError, match="one class only"):
        check_classes(tmp_path / "y")
    make_split(tmp_path / "z", {"a": 2, "b": 2}, {"a": 1, "b": 1})
    assert check_classes(tmp_path / "z") == ["a", "b"]


def test_an_empty_class_folder_is_named(tmp_path):
    make_split(tmp_path, {"a": 2, "b": 2}, {"a": 1, "b": 1})
    for image in (tmp_path / "validation" / "b").iterdir():
        image.unlink()
    with pytest.raises(TlkitError, match="b of .*hold no images"):
        data(tmp_path)


def test_batches_follow_the_preprocessing(tmp_path):
    make_split(tmp_path, {"a": 5, "b": 5}, {"a": 3, "b": 3})
    bundle = data(tmp_path)
    images, labels, skipped = next(iter(bundle.train_loader))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16) and skipped == []
    assert len(bundle.train_loader) == 3  # 10 images in batches of 4: 4 + 4 + 2, every image trains
    nine = data(tmp_path, batch_size=3)  # 10 = 3 + 3 + 3 + 1: the lone last image (BatchNorm) waits an epoch
    assert len(nine.train_loader) == 3 and sum(len(labels) for _, labels, _ in nine.train_loader) == 9
    gray = data(tmp_path, prep=GRAY)  # RGB photos become L for a 1-channel net
    assert next(iter(gray.val_loader))[0].shape == (4, 1, 12, 12)
    assert bundle.classes == ["a", "b"] and bundle.val_set.classes == ["a", "b"]
    smaller = data(tmp_path, train_size=(12, 12))  # the training crops alone (recipe.Phase.train_scale)
    assert next(iter(smaller.train_loader))[0].shape == (4, 3, 12, 12)
    assert next(iter(smaller.val_loader))[0].shape == (4, 3, 16, 16)


def test_validation_is_deterministic_and_in_order(tmp_path):
    make_split(tmp_path, {"a": 4, "b": 4}, {"a": 3, "b": 3})
    bundle = data(tmp_path)
    first = torch.cat([images for images, _, _ in bundle.val_loader])
    second = torch.cat([images for images, _, _ in bundle.val_loader])
    assert torch.equal(first, second)
    assert torch.cat([labels for _, labels, _ in bundle.val_loader]).tolist() == [0, 0, 0, 1, 1, 1]


def epoch_batches(bundle, epoch: int) -> torch.Tensor:
    bundle.train_sampler.set_epoch(epoch)
    return torch.cat([images for images, _, _ in bundle.train_loader])


def test_augmentation_repeats_per_epoch_and_seed_whatever_the_workers(tmp_path):
    make_split(tmp_path, {"a": 4, "b": 4}, {"a": 1, "b": 1})
    in_process, with_worker = data(tmp_path), data(tmp_path, workers=1)
    assert torch.equal(epoch_batches(in_process, 1), epoch_batches(with_worker, 1))
    assert torch.equal(epoch_batches(in_process, 2), epoch_batches(in_process, 2))
    assert not torch.equal(epoch_batches(in_process, 1), epoch_batches(in_process, 2))
    assert not torch.equal(epoch_batches(in_process, 1), epoch_batches(data(tmp_path, seed=1), 1))


def test_sampler_is_a_permutation_fixed_by_seed_and_epoch():
    sampler = EpochSampler(10, seed=5)
    sampler.set_epoch(3)
    order = [index for index, _ in sampler]
    assert sorted(order) == list(range(10)) and order == [index for index, _ in sampler]
    sampler.set_epoch(4)
    assert order != [index for index, _ in sampler]


def test_a_broken_image_is_skipped_and_named(tmp_path):
    make_split(tmp_path, {"a": 3, "b": 3}, {"a": 1, "b": 1})
    broken = tmp_path / "training" / "a" / "zz.png"
    broken.write_bytes(b"\x89PNG broken")
    bundle = data(tmp_path, batch_size=8)
    images, labels, skipped = next(iter(bundle.train_loader))
    assert skipped == [str(broken)] and len(images) == len(labels) == 6


def test_collate_of_only_failures_is_an_empty_batch():
    images, labels, skipped = collate_skipping([(None, "x.png"), (None, "y.png")])
    assert len(images) == len(labels) == 0 and skipped == ["x.png", "y.png"]


def test_normalizer_applies_mean_and_std(tmp_path):
    normalize = Normalizer(RGB, torch.device("cpu"))
    batch = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    expected = (batch.float() / 255 - 0.5) / 0.25
    assert torch.allclose(normalize(batch), expected, atol=1e-6)


def test_grayscale_photos_become_three_channels_for_rgb_nets(tmp_path):
    make_split(tmp_path, {"a": 2, "b": 2}, {"a": 1, "b": 1})
    write_image(tmp_path / "validation" / "a" / "gray.png", mode="L")
    images, _, _ = next(iter(data(tmp_path, batch_size=8).val_loader))
    assert images.shape[1] == 3


def test_light_augmentation_never_mirrors_and_crops_mildly(tmp_path):
    from PIL import Image

    from tlkit.augment import POLICIES
    from tlkit.data import TrainLoad

    # Dark left half, bright right half: a mirrored crop is brighter on the left.
    pixels = np.zeros((40, 40, 3), dtype=np.uint8)
    pixels[:, 20:] = 255
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    prep = Preprocessing(input_size=(20, 20), resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3,
                         interpolation="bilinear", in_chans=3)

    def mirrored(policy: str) -> int:
        images = [TrainLoad(prep, POLICIES[policy])(path, seed) for seed in range(40)]
        return sum(int(image[:, :, 0].float().mean() > image[:, :, -1].float().mean()) for image in images)

    assert mirrored("light") == 0 and 5 < mirrored("default") < 35
