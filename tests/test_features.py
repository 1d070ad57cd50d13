"""tlkit.features: the feature cache (hits, misses, every invalidation) and its loader."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tlkit import features as features_module
from tlkit.data import EpochSampler
from tlkit.cache import clear_caches, list_caches
from tlkit.features import FeatureLoader, FeatureSet, cache_dir_for, precompute
from tlkit.runtime import compute_for

from conftest import make_foldered, write_image


class _Prep(SimpleNamespace):
    def to_dict(self):
        return dict(vars(self))


def _backbone(seed=0, size=16, name="tiny"):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(1))
    prep = _Prep(input_size=(size, size), resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3,
                 interpolation="bilinear", in_chans=3)
    return SimpleNamespace(name=name, trunk=trunk, feature_dim=16, preprocessing=prep)


@pytest.fixture
def data(tmp_path):
    make_foldered(tmp_path / "data" / "training", {"cat": 4, "dog": 4})
    make_foldered(tmp_path / "data" / "validation", {"cat": 2, "dog": 2})
    return tmp_path / "data"


def _run(data, backbone=None, capsys=None, **kwargs):
    # Compared with the fp32 trunk exactly; bf16 has its own test.
    kwargs.setdefault("compute", compute_for("cpu", kwargs.pop("precision", "fp32")))
    sets = precompute(backbone or _backbone(), data, batch_size=3, **kwargs)
    said = capsys.readouterr().err if capsys else ""
    return sets, said


def test_features_match_the_trunk_and_the_cache_is_reused(data, capsys):
    backbone = _backbone()
    sets, said = _run(data, backbone, capsys, dtype="float32")
    assert "no cache yet" in said
    assert sets["training"].features.shape == (8, 16) and list(sets["training"].labels) == [0] * 4 + [1] * 4
    from tlkit.decode import load_image

    image = load_image(data / "training" / sets["training"].files[5], backbone.preprocessing).float() / 255
    with torch.inference_mode():
        expected = backbone.trunk(((image - 0.5) / 0.5)[None])[0].numpy()
    np.testing.assert_allclose(sets["training"].features[5], expected, rtol=1e-5, atol=1e-6)
    again, said = _run(data, backbone, capsys, dtype="float32")
    assert "using the cache" in said
    np.testing.assert_array_equal(again["validation"].features, sets["validation"].features)


@pytest.mark.parametrize("change, reason", [
    ("add", "added, removed or edited"),
    ("remove", "added, removed or edited"),
    ("edit", "added, removed or edited"),
    ("weights", "other trunk weights"),
    ("size", "other preprocessing"),
    ("views", "augmented views"),
    ("backbone", "no cache yet"),  # another backbone has a folder of its own
])
def test_every_change_recomputes_and_says_why(data, capsys, change, reason):
    _run(data, capsys=capsys)
    backbone, kwargs = _backbone(), {}
    if change == "add":
        write_image(data / "training" / "cat" / "new.png", color=99)
    elif change == "remove":
        os.remove(data / "validation" / "dog" / "0.png")
    elif change == "edit":
        path = data / "training" / "dog" / "1.png"
        write_image(path, color=12345)
        os.utime(path, ns=(1, 1))
    elif change == "weights":
        backbone = _backbone(seed=1)
    elif change == "size":
        backbone = _backbone(size=20)
    elif change == "views":
        kwargs = {"views": 2}
    elif change == "backbone":
        backbone = _backbone(name="other")
    _, said = _run(data, backbone, capsys, **kwargs)
    assert reason in said


def test_interrupted_precompute_leaves_no_valid_cache(data, capsys, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(features_module, "run_trunk", crash)
    with pytest.raises(KeyboardInterrupt):
        _run(data)
    monkeypatch.undo()
    assert list_caches(data / ".tlkit-cache") == []
    _, said = _run(data, capsys=capsys)
    assert "no cache yet" in said and len(list_caches(data / ".tlkit-cache")) == 1
    assert not list((data / ".tlkit-cache").glob(".*partial*"))  # the interrupted one's leftover is gone
    assert clear_caches(data / ".tlkit-cache") == 1 and list_caches(data / ".tlkit-cache") == []


def test_a_corrupt_image_is_named_and_left_out(data, capsys):
    (data / "training" / "cat" / "9.png").write_bytes(b"garbage")
    sets, said = _run(data, capsys=capsys)
    assert "cat/9.png" in said and "left out" in said
    assert len(sets["training"].files) == 8 and "cat/9.png" not in sets["training"].files


def test_views_store_k_augmented_copies(data):
    sets, _ = _run(data, views=3)
    views = sets["training"].features
    assert views.shape == (3, 8, 16) and sets["validation"].features.shape == (4, 16)
    assert not np.array_equal(views[0], views[1])
    again = precompute(_backbone(), data, compute=compute_for("cpu", "fp32"), views=3, force=True)["training"].features
    np.testing.assert_array_equal(again, views)  # seeded by (view, file): a recompute is identical
    in_threads = precompute(_backbone(), data, compute=compute_for("cpu", "fp32"), views=3, force=True, workers=3,
                            batch_size=2)["training"].features
    np.testing.assert_array_equal(in_threads, views)  # and so is one whose decode threads draw at once


def test_loader_order_matches_the_image_sampler():
    labels = np.arange(10)
    feature_set = FeatureSet(features=np.arange(10, dtype=np.float32)[:, None], labels=labels, files=[])
    for batch_size, batches in ((4, 3), (3, 3)):  # 10 = 4 + 4 + 2; 10 = 3 + 3 + 3 + a lone image, left out
        loader = FeatureLoader(feature_set, batch_size=batch_size, device=torch.device("cpu"), shuffle=True, seed=7)
        sampler = EpochSampler(10, seed=7, batch_size=batch_size)
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            sampler.set_epoch(epoch)
            order = [index for index, _ in sampler]
            got = torch.cat([labels for _, labels, _ in loader]).tolist()
            assert got == order and len(loader) == batches and len(order) == (10 if batch_size == 4 else 9)


def test_loader_draws_one_view_per_image():
    features = np.stack([np.full((6, 1), view, dtype=np.float32) for view in range(3)])
    loader = FeatureLoader(FeatureSet(features, np.arange(6), []), batch_size=6, device=torch.device("cpu"),
                           shuffle=False)
    seen = set()
    for epoch in range(1, 6):
        loader.set_epoch(epoch)
        (batch, _, _), = list(loader)
        seen.update(batch.flatten().tolist())
    assert seen == {0.0, 1.0, 2.0}


def test_cache_folder_names_are_safe():
    assert cache_dir_for("c", "timm:resnet50").name == "timm-resnet50"


def test_clear_deletes_only_caches(data, capsys):
    _run(data)
    assert clear_caches(data) == 0  # the data folder itself: its training/ and validation/ stay
    assert (data / "training").is_dir() and (data / "validation").is_dir()
    (data / "notes").mkdir()
    (data / "notes" / "manifest.json").write_text("{}")  # someone else's manifest: not a cache
    assert clear_caches(data) == 0 and (data / "notes" / "manifest.json").is_file()
    assert clear_caches(data / ".tlkit-cache") == 1


def test_a_live_precompute_keeps_its_staging_folder_and_ls_survives_a_bad_manifest(data, capsys):
    import subprocess

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        live = data / ".tlkit-cache" / f".tiny.partial-{sleeper.pid}"
        live.mkdir(parents=True)
        _run(data)
        assert live.is_dir()  # another process's work in progress is left alone
    finally:
        sleeper.kill()
        sleeper.wait()
    (data / ".tlkit-cache" / "tiny" / "manifest.json").write_text("{not json")
    assert list_caches(data / ".tlkit-cache") == []
    assert "unreadable" in capsys.readouterr().err


def test_bf16_features_are_not_reused_for_fp32(data, tmp_path):
    from tlkit.cache import file_list, why_stale
    from tlkit.features import STALE_REASONS, cache_identity

    backbone = _backbone()
    _run(data, backbone)  # fp32
    files = {s: file_list(data / s, ["cat", "dog"]) for s in ("training", "validation")}
    as_bf16 = cache_identity(backbone, ["cat", "dog"], files, 0, "float16", compute="cuda-bf16")
    assert why_stale(data / ".tlkit-cache" / "tiny", as_bf16, STALE_REASONS) == "another arithmetic (bf16 vs fp32, or another device's bf16)"


def test_a_folder_in_the_caches_place_is_not_replaced(data):
    """A cache is rebuilt over a stale cache of tlkit's only; any other folder of that name stays."""
    from tlkit.errors import TlkitError

    folder = cache_dir_for(data / ".tlkit-cache", "tiny")
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(TlkitError, match="not a tlkit cache"):
        _run(data)
    assert (folder / "notes.txt").read_text() == "mine" and not list(folder.parent.glob(".*partial*"))


def test_a_feature_pass_written_to_a_log_file_says_how_far_it_is_and_its_time(data, capsys, monkeypatch):
    # stderr is no terminal here, as in a log file: lines instead of a bar (each task past LOG_EVERY_S, 0 here).
    from tlkit import runtime

    monkeypatch.setattr(runtime, "LOG_EVERY_S", 0.0)
    _, err = _run(data, capsys=capsys)
    assert "features training: 8 done in" in err and "features validation: 4 done in" in err
    assert "features: 12 image views in" in err
