"""`--cache-images`: photos decoded once into uint8 arrays, crops and flips drawn and cut on the device.

The cached run must be the uncached run: same validation pixels, same training when nothing is
augmented, the same crop distribution when it is; and a stale cache is never used."""

import math
import os
import shutil

import numpy as np
import pytest
import torch

from tlkit import finetune
from tlkit.cli import main
from tlkit.decode import load_image
from tlkit.imagecache import cache_images, make_cached_data, storage_side
from tlkit.backbone import Preprocessing

from conftest import interrupt_at, make_foldered, shared_data, write_image

pytestmark = pytest.mark.usefixtures("one_thread")

PREP = Preprocessing(input_size=(32, 32), resize_size=36, mean=(0.5,) * 3, std=(0.25,) * 3,
                     interpolation="bilinear", in_chans=3)

@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    make_foldered(root / "training", {"cat": 7, "dog": 6}, suffix=".jpg")
    make_foldered(root / "validation", {"cat": 3, "dog": 3}, suffix=".jpg")
    for path in sorted((root / "training").rglob("*.jpg")):  # photos of several sizes and aspect ratios
        write_image(path, size=(40 + 7 * len(path.stem) + int(path.stem) * 5, 30 + int(path.stem) * 3),
                    color=int(path.stem))
    return root


def recipe(data_dir, tmp_path, **overrides):
    base = dict(data=str(data_dir), backbone="simple-cnn", weights="none", img_size=32, epochs=2, batch_size=4,
                workers=0, optimizer="sgd", lr=0.05, scheduler="none", seed=3, runs_dir=str(tmp_path / "runs"),
                cache_dir=str(tmp_path / "cache"))
    return {**base, **overrides}


def _rows(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in history]


def test_cache_holds_the_eval_pixels_and_is_reused(data_dir, tmp_path, capfd):
    cache_root = tmp_path / "cache"
    (data_dir / "validation" / "cat" / "0a.jpg").write_bytes(b"")  # sorts among the good ones: rows must not shift
    sets = cache_images(data_dir, PREP, cache_root=cache_root, device=torch.device("cpu"))
    err = capfd.readouterr().err
    assert "decoding every photo once (no cache yet)" in err and "validation/cat/0a.jpg" in err
    val = sets["validation"]
    assert val.failed == ["cat/0a.jpg"] and len(val) == 6 and val.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for index, name in enumerate(val.files):
        assert np.array_equal(val.images[val.rows[index]], load_image(data_dir / "validation" / name, PREP).numpy())
    train = sets["training"]
    side = storage_side(PREP)
    assert train.images.shape == (13, 3, side, side) and len(train.labels) == 13
    first = data_dir / "training" / train.files[0]
    from PIL import Image

    with Image.open(first) as photo:
        assert tuple(train.photo_sizes[0]) == (photo.height, photo.width)
    cache_images(data_dir, PREP, cache_root=cache_root, device=torch.device("cpu"))
    assert "using the cache" in capfd.readouterr().err


def test_an_edited_photo_makes_the_cache_stale_and_says_why(data_dir, tmp_path, capfd):
    cache_images(data_dir, PREP, cache_root=tmp_path / "cache", device=torch.device("cpu"))
    photo = next((data_dir / "training" / "cat").iterdir())
    write_image(photo, size=(50, 50), color=99)
    os.utime(photo, ns=(1, 1))
    capfd.readouterr()
    cache_images(data_dir, PREP, cache_root=tmp_path / "cache", device=torch.device("cpu"))
    assert "files in training/ were added, removed or edited" in capfd.readouterr().err


def test_each_geometry_has_its_own_cache(data_dir, tmp_path, capfd):
    smaller = Preprocessing(**{**PREP.__dict__, "input_size": (24, 24), "resize_size": 28})
    squashed = Preprocessing(**{**PREP.__dict__, "crop_mode": "squash"})  # same sizes, other validation pixels
    for prep in (PREP, smaller, squashed):
        cache_images(data_dir, prep, cache_root=tmp_path / "cache", device=torch.device("cpu"))
        assert "(no cache yet)" in capfd.readouterr().err
    cache_images(data_dir, PREP, cache_root=tmp_path / "cache", device=torch.device("cpu"))
    assert "using the cache" in capfd.readouterr().err
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_without_augmentation_the_cached_run_is_the_uncached_run(data_dir, tmp_path):
    plain = finetune(**recipe(data_dir, tmp_path, augment=False, name="plain"))
    cached = finetune(**recipe(data_dir, tmp_path, augment=False, cache_images=True, name="cached"))
    assert _rows(cached.history) == _rows(plain.history)  # same pixels, order and arithmetic: bit for bit
    state, reference = cached.backbone.model.state_dict(), plain.backbone.model.state_dict()
    assert all(torch.equal(state[key], reference[key]) for key in state)


def test_cached_run_with_augmentation_learns_resumes_and_reports_a_broken_photo(data_dir, tmp_path):
    broken = data_dir / "training" / "dog" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    settings = recipe(data_dir, tmp_path, cache_images=True, epochs=3)
    whole = finetune(**settings, name="whole")
    assert whole.skipped == [str(broken)]
    assert math.isfinite(whole.history[-1]["train_loss"])
    with pytest.raises(KeyboardInterrupt):
        finetune(**settings, name="cut", callbacks=[interrupt_at(2)])
    resumed = finetune(resume=tmp_path / "runs" / "cut")
    assert _rows(resumed.history) == _rows(whole.history)


def test_cache_images_from_the_cli_on_real_photos(tmp_path, capsys):
    photos = shared_data("dogs-vs-cats-2k") / "train"
    data = tmp_path / "data"
    for label in ("cat", "dog"):
        for n in range(16):
            subset = "validation" if n < 4 else "training"
            (data / subset / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(photos / f"{label}.{n}.jpg", data / subset / label / f"{n}.jpg")
    args = ["finetune", "--data", str(data), "--backbone", "simple-cnn", "--weights", "none", "--img-size", "48",
            "--epochs", "2", "--batch-size", "8", "--workers", "0", "--cache-images", "--runs-dir",
            str(tmp_path / "runs"), "--name", "real"]
    assert main(args) == 0
    assert main(["cache", "ls", "--cache-dir", str(data / ".tlkit-cache")]) == 0
    listing = capsys.readouterr().out
    assert "decoded images" in listing and "24" in listing and "8" in listing
    rows = (tmp_path / "runs" / "real" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_a_disk_without_room_stops_before_writing(data_dir, tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    from tlkit import cache

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    args = ["finetune", "--data", str(data_dir), "--backbone", "simple-cnn", "--weights", "none", "--img-size", "32",
            "--workers", "0", "--epochs", "1", "--cache-images", "--runs-dir", str(tmp_path / "runs")]
    assert main(args) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "the decoded images need" in err and "--cache-dir" in err and "Traceback" not in err
    assert not (data_dir / ".tlkit-cache").exists() or not any((data_dir / ".tlkit-cache").iterdir())
    assert not (tmp_path / "runs").exists()  # no run folder for a run that never started


def test_cached_features_then_cached_images(data_dir, tmp_path):
    """--precompute-features --unfreeze-after with --cache-images: the head from cached features, then every
    layer on cached images; both caches live side by side in the one cache folder."""
    result = finetune(**recipe(data_dir, tmp_path, precompute_features=True, unfreeze_after=1, epochs=2,
                               cache_images=True, name="both"))
    assert len(result.history) == 2 and math.isfinite(result.history[-1]["val_loss"])
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["images", "simple"]


def test_training_crops_can_be_cut_smaller_than_the_input(data_dir, tmp_path):
    """recipe.Phase.train_scale: the training crops at another side, validation at the input's."""
    bundle = make_cached_data(data_dir, PREP, batch_size=4, workers=0, device=torch.device("cpu"), seed=0,
                              cache_root=tmp_path / "cache", train_size=(24, 24))
    assert next(iter(bundle.train_loader))[0].shape[-2:] == (24, 24)
    assert next(iter(bundle.val_loader))[0].shape[-2:] == (32, 32)
