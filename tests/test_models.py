"""The backbone factory: every backbone's trunk/head split is exact, heads are swapped,
preprocessing comes from the weights' metadata, freezing works, and ImageNet weights load
from a planted offline cache (never the network)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file
from torch import nn

from tlkit.backbone import head_keys

from tlkit import cli, models, weights
from tlkit.errors import TlkitError

# timm's tiny test models, and ResNetV2 for a classifier that is a 1x1 convolution
TIMM_TEST_MODELS = ["timm:test_resnet", "timm:test_vit", "timm:test_convnext", "timm:test_efficientnet", "timm:resnetv2_18"]
SMALL_INPUT = {"alexnet": 64}  # AlexNet's pooling needs at least 63 px; everything else runs at 32
# Empty temporary caches, offline, no network (the fixture lives in conftest.py).
pytestmark = pytest.mark.usefixtures("offline_caches", "one_thread")


@pytest.fixture(scope="module")
def built():
    """build(name): each backbone built once for this module (3 classes, small input); tests that
    change a backbone build their own. Freed when the module's tests are done."""
    cache: dict[str, models.Backbone] = {}

    def build(name: str) -> models.Backbone:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = models.create(name, 3, weights="none", img_size=SMALL_INPUT.get(name, 32))
        return cache[name]

    yield build
    cache.clear()


def _images(backbone: models.Backbone, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, backbone.preprocessing.in_chans, *backbone.preprocessing.input_size)


def _set_mode(backbone: models.Backbone, mode: str) -> None:
    backbone.model.train(mode != "eval")
    if mode == "frozen trunk":  # as the trainer runs a frozen trunk: eval, with the head training
        backbone.trunk.eval()
        backbone.head.train()


@pytest.mark.parametrize("name", models.available() + TIMM_TEST_MODELS)
def test_head_of_trunk_equals_the_model_exactly(name, built):
    backbone = built(name)
    images = _images(backbone)
    # In train modes the random draws are replayed: dropout must sit on the same side of the cut,
    # so training the head on cached features is training the model with a frozen trunk.
    for mode in ("eval", "train", "frozen trunk"):
        _set_mode(backbone, mode)
        with torch.no_grad():
            torch.manual_seed(1)
            whole = backbone.model(images)
            torch.manual_seed(1)
            features = backbone.trunk(images)
            assert features.shape == (2, backbone.feature_dim)
            assert torch.equal(backbone.head(features), whole), mode
    backbone.model.eval()
    assert whole.shape == (2, 3)


@pytest.mark.parametrize("name", models.available() + TIMM_TEST_MODELS)
def test_trunk_and_head_share_the_models_parameters(name, built):
    backbone = built(name)
    model_ids = {id(p) for p in backbone.model.parameters()}
    trunk_ids = {id(p) for p in backbone.trunk_parameters()}
    head_ids = {id(p) for p in backbone.head_parameters()}
    assert trunk_ids | head_ids == model_ids and not trunk_ids & head_ids and head_ids


def test_feature_sizes_and_swapped_heads_of_the_torchvision_backbones(built):
    resnet, vgg, alexnet = built("resnet18"), built("vgg16"), built("alexnet")
    assert (resnet.feature_dim, vgg.feature_dim, alexnet.feature_dim) == (512, 25_088, 9_216)
    assert resnet.head is resnet.model.fc and resnet.head.out_features == 3
    for backbone in (vgg, alexnet):
        linears = [m for m in backbone.head if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(backbone.feature_dim, 4096), (4096, 4096), (4096, 3)]
        assert backbone.head is backbone.model.classifier


def test_vgg16_imagenet_keeps_fc6_fc7_and_renews_only_the_last_layer():
    with torch.device("meta"):  # shapes only: a real VGG16 state dict is half a gigabyte
        vgg = models.create("vgg16", 2, weights="none")
        imagenet = tvm.vgg16(weights=None).state_dict()
    fresh = weights.load_matching(vgg.model, imagenet, head_keys(vgg.model, vgg.head), "vgg16 ImageNet")
    assert fresh == ["classifier.6.bias", "classifier.6.weight"]


def test_preprocessing_comes_from_the_weights_metadata_even_without_weights(built):
    resnet = models.create("resnet18", 2, weights="none")
    assert resnet.preprocessing == models.Preprocessing(
        (224, 224), 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 3)
    assert not resnet.pretrained and resnet.weights == "none" and "random" in resnet.weights_note
    assert built("resnet18").preprocessing.input_size == (32, 32)
    assert built("resnet18").preprocessing.resize_size == round(32 * 256 / 224)
    vit = models.create("timm:test_vit", 2, weights="none")  # pretrained_cfg: 160 px, crop_pct 0.95, bicubic
    assert vit.preprocessing == models.Preprocessing((160, 160), 168, (0.5,) * 3, (0.5,) * 3, "bicubic", 3)
    assert models.create("mnist-net", 10).preprocessing == models.Preprocessing(
        (28, 28), None, (0.1307,), (0.3081,), "bilinear", 1)


def test_timm_preprocessing_follows_timms_resolver_and_its_crop_mode():
    import math

    from timm.data import resolve_model_data_config
    from timm.models import get_pretrained_cfg

    from tlkit.decode import scale_size
    from tlkit.timm_models import timm_preprocessing

    # pretrained_cfg: 240 px, crop_pct 0.9, crop_mode squash (timm resizes both sides to 266, then crops)
    squashed = models.create("timm:tf_efficientnetv2_b3.in21k_ft_in1k", 2, weights="none")
    resolved = resolve_model_data_config(squashed.model)
    prep = squashed.preprocessing
    assert resolved["crop_mode"] == prep.crop_mode == "squash"
    assert prep.input_size == tuple(resolved["input_size"][1:]) == (240, 240)
    assert prep.resize_size == math.floor(240 / resolved["crop_pct"]) == 266 and scale_size(prep) == (266, 266)
    assert (prep.mean, prep.std, prep.interpolation) == (resolved["mean"], resolved["std"], resolved["interpolation"])
    assert models.create("timm:test_vit", 2, weights="none").preprocessing.crop_mode == "center"
    assert models.create("resnet18", 2, weights="none").preprocessing.crop_mode == "center"
    # border, and a non-square squash, from their configs alone (the models are too big to build here)
    border_cfg = get_pretrained_cfg("deepseek_vit_412m.deepseek_v4_flash_vision_exp").to_dict()
    border = timm_preprocessing(border_cfg, 3, None)
    assert (border.crop_mode, border.input_size, border.resize_size) == ("border", (392, 392), 392)
    tall_cfg = get_pretrained_cfg("vit_base_patch16_sapiens2.fb").to_dict()  # 1024x768, crop_pct 1
    assert scale_size(timm_preprocessing(tall_cfg, 3, None)) == (1024, 768)
    gray = timm_preprocessing(tall_cfg, 1, 512)  # tlkit's img_size and in_chans still apply
    assert (gray.crop_mode, gray.input_size, gray.resize_size, gray.mean) == ("squash", (512, 512), 512, (0.449,))


def test_preprocessing_round_trips_through_json(built):
    preprocessing = built("timm:test_resnet").preprocessing
    assert models.Preprocessing.from_dict(json.loads(json.dumps(preprocessing.to_dict()))) == preprocessing


def test_one_channel_input_for_timm_and_classic_nets_but_not_torchvision():
    gray = models.create("timm:test_resnet", 2, weights="none", in_chans=1, img_size=32)
    assert gray.preprocessing.in_chans == 1 and len(gray.preprocessing.mean) == 1
    assert gray.model(torch.randn(2, 1, 32, 32)).shape == (2, 2)
    assert models.create("simple-cnn", 10, in_chans=1).preprocessing.mean == (0.5,)
    with pytest.raises(TlkitError, match="3-channel images.*repeats a grayscale photo"):
        models.create("resnet18", 2, weights="none", in_chans=1)


def test_freeze_unfreeze_and_parameter_groups():
    backbone = models.create("resnet18", 2, weights="none")
    backbone.freeze_trunk()
    assert not any(p.requires_grad for p in backbone.trunk_parameters())
    groups = backbone.param_groups(lr=0.01, trunk_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["head", "head (no decay)"] and {g["lr"] for g in groups} == {0.01}
    backbone.unfreeze()
    assert all(p.requires_grad for p in backbone.model.parameters())
    trunk_group, trunk_no_decay, head_group, head_no_decay = backbone.param_groups(lr=0.01, trunk_lr_mult=0.1)
    assert trunk_group["lr"] == pytest.approx(0.001) and trunk_no_decay["lr"] == pytest.approx(0.001)
    assert len(trunk_group["params"]) + len(trunk_no_decay["params"]) == len(backbone.trunk_parameters())
    assert head_group["lr"] == 0.01 and head_no_decay["lr"] == 0.01


def test_freeze_first_keeps_the_trunks_first_parameters():
    backbone = models.create("resnet18", 2, weights="none")
    backbone.freeze_first(0.02)
    trunk = dict(backbone.trunk.named_parameters())
    frozen = [name for name, parameter in trunk.items() if not parameter.requires_grad]
    assert frozen == list(trunk)[:len(frozen)] and frozen[0] == "stem.0.weight"  # the stem first, then in order
    share = sum(trunk[name].numel() for name in frozen) / sum(p.numel() for p in trunk.values())
    assert 0.01 < share <= 0.02 and all(p.requires_grad for p in backbone.head_parameters())
    backbone.unfreeze()
    backbone.freeze_first(0.0)  # a share of 0 keeps nothing
    assert all(p.requires_grad for p in backbone.model.parameters())


def test_biases_and_batchnorm_weights_are_not_decayed():
    """timm's rule (param_groups_weight_decay): every parameter of one dimension (biases, BatchNorm's and
    LayerNorm's scales) goes without weight decay; weight matrices and kernels keep the optimizer's."""
    backbone = models.create("resnet18", 2, weights="none")
    trunk, trunk_no_decay, head, head_no_decay = backbone.param_groups(lr=0.01)
    norms = [m for m in backbone.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    exempt = {id(p) for p in trunk_no_decay["params"]}
    assert norms and all(id(m.weight) in exempt and id(m.bias) in exempt for m in norms)
    assert all(p.ndim > 1 for p in trunk["params"]) and "weight_decay" not in trunk
    assert trunk_no_decay["weight_decay"] == 0.0 and head_no_decay["weight_decay"] == 0.0
    assert head["params"] == [backbone.head.weight] and head_no_decay["params"] == [backbone.head.bias]


def test_a_timm_trunk_leaves_the_head_out_of_its_parameters_and_state_dict():
    backbone = models.create("timm:test_resnet", 3, weights="none", img_size=32)
    assert {id(p) for p in backbone.trunk.parameters()} == {id(p) for p in backbone.trunk_parameters()}
    assert set(backbone.trunk.state_dict()) == {f"model.{key}" for key in backbone.model.state_dict()} - {
        "model.fc.weight", "model.fc.bias"}
    backbone.trunk.to(torch.float64)  # yet it moves the whole model, head included
    assert backbone.head.weight.dtype == torch.float64


def test_timm_models_whose_classifier_cannot_be_cut_are_refused():
    with torch.device("meta"), pytest.raises(TlkitError, match="classifier \\(tuple\\) is not one module"):
        models.create("timm:deit_tiny_distilled_patch16_224", 2, weights="none")


# ---------------------------------------------------------------- weights: ImageNet from an offline cache


def _plant_torchvision(tmp_path: Path, file_name: str, state: dict) -> Path:
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / file_name)
    return folder / file_name


def test_imagenet_resnet18_loads_the_very_tensors_in_the_offline_cache(tmp_path, monkeypatch):
    from tlkit import weights

    # The planted tensors cannot have the real file's sha256: let them pass for it here (the check has its test).
    monkeypatch.setattr(weights, "matches_its_name", lambda path: True)
    torch.manual_seed(7)
    planted = tvm.resnet18(weights=None).state_dict()  # 1000 classes, as the real file
    path = _plant_torchvision(tmp_path, "resnet18-f37072fd.pth", planted)
    backbone = models.create("resnet18", 2)  # weights="default" means imagenet for resnet18
    assert backbone.pretrained and backbone.weights == "imagenet"
    assert torch.equal(backbone.model.conv1.weight, planted["conv1.weight"])
    assert torch.equal(backbone.model.layer4[1].bn2.running_var, planted["layer4.1.bn2.running_var"])
    assert backbone.model.fc.out_features == 2
    assert str(path) in backbone.weights_note and "fc.weight" in backbone.weights_note


def test_imagenet_with_an_empty_cache_names_the_file_the_folder_and_the_alternatives(tmp_path):
    with pytest.raises(TlkitError) as caught:
        models.create("resnet18", 2, weights="imagenet")
    message = str(caught.value)
    for expected in ("resnet18-f37072fd.pth", str(tmp_path / "torch" / "hub" / "checkpoints"),
                     "--weights PATH", "--weights none"):
        assert expected in message


@pytest.mark.parametrize("content", ["truncated", "other tensors"])
def test_a_cached_file_that_is_not_what_its_name_says_is_refused(tmp_path, content, capsys):
    """torchvision's file names carry the start of their sha256: a truncated download, or other tensors
    saved under the ImageNet name, never train as "pretrained"."""
    path = _plant_torchvision(tmp_path, "resnet18-f37072fd.pth", tvm.resnet18(weights=None).state_dict())
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(TlkitError, match=rf"{path} is truncated or altered.*Delete it"):
        models.create("resnet18", 2)
    from tlkit.cli import main

    assert main(["models"]) == 0
    assert "damaged" in capsys.readouterr().out


def _plant_hf(tmp_path: Path, repo_id: str, state: dict) -> Path:
    repo = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("feedface")
    (repo / "snapshots" / "feedface").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "feedface" / "model.safetensors")
    return repo


def test_timm_imagenet_loads_from_a_planted_hugging_face_cache(tmp_path):
    import timm

    torch.manual_seed(3)
    planted = timm.create_model("test_resnet", num_classes=1000).state_dict()
    _plant_hf(tmp_path, "timm/test_resnet.r160_in1k", planted)
    backbone = models.create("timm:test_resnet", 4, img_size=32)
    assert backbone.pretrained and "feedface" in backbone.weights_note
    assert torch.equal(backbone.model.conv1[0].weight, planted["conv1.0.weight"])
    assert backbone.model.fc.out_features == 4
    gray = models.create("timm:test_resnet", 4, in_chans=1)  # timm sums the first conv over RGB
    assert torch.allclose(gray.model.conv1[0].weight[:, 0], planted["conv1.0.weight"].sum(1))


def test_timm_imagenet_not_cached_names_the_hugging_face_file_and_folder(tmp_path):
    with pytest.raises(TlkitError) as caught:
        models.create("timm:test_resnet", 2)
    message = str(caught.value)
    assert "model.safetensors of timm/test_resnet.r160_in1k" in message
    assert str(tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k") in message
    assert "--weights PATH" in message and "--weights none" in message


# ---------------------------------------------------------------- weights: a PATH


def test_a_tlkit_checkpoint_rebuilds_the_model(tmp_path):
    trained = models.create("lenet", 10)
    save_file({f"model.{k}": v for k, v in trained.model.state_dict().items()}, tmp_path / "best.safetensors")
    (tmp_path / "best.json").write_text(json.dumps({"backbone": "lenet"}))
    rebuilt = models.create("lenet", 10, weights=str(tmp_path / "best.safetensors"))
    assert rebuilt.pretrained and rebuilt.weights == str(tmp_path / "best.safetensors")
    images = torch.randn(2, 1, 28, 28)
    assert torch.equal(rebuilt.model(images), trained.model(images))


def test_a_path_of_another_architecture_names_missing_and_unexpected_keys(tmp_path):
    torch.save(models.create("mnist-net", 10).model.state_dict(), tmp_path / "other.pth")
    with pytest.raises(TlkitError, match=r"other\.pth does not fit.*missing keys: fc1\.weight, fc1\.bias, fc2\.weight"
                       r".*unexpected keys: conv1\.0\.weight"):
        models.create("mlp", 10, weights=str(tmp_path / "other.pth"))


def test_a_timm_layout_path_loads_into_a_timm_backbone(tmp_path, built):
    source = built("timm:test_convnext")
    torch.save(source.model.state_dict(), tmp_path / "convnext.pth")
    loaded = models.create("timm:test_convnext", 3, weights=str(tmp_path / "convnext.pth"), img_size=32)
    assert torch.equal(loaded.model.stem[0].weight, source.model.stem[0].weight)
    assert torch.equal(loaded.head.weight, source.head.weight)  # same class count: the head loads too


def test_a_path_with_a_pickled_object_is_refused(tmp_path):
    torch.save({"fc.weight": torch.ones(1), "why": tmp_path}, tmp_path / "pickled.pth")
    with pytest.raises(TlkitError, match="refused .*pickled.pth.*pickled Python objects"):
        models.create("resnet18", 2, weights=str(tmp_path / "pickled.pth"))


# ---------------------------------------------------------------- names, registry, describe, CLI


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(TlkitError, match="unknown backbone 'resnet19'.*resnet18.*alexnet.*timm:<name>"):
        models.create("resnet19", 2)
    with pytest.raises(TlkitError, match="timm has it: use timm:resnet50"):
        models.create("resnet50", 2)
    with pytest.raises(TlkitError, match="timm has no model 'no_such_net'"):
        models.create("timm:no_such_net", 2)
    with pytest.raises(TlkitError, match="Invalid pretrained tag"):
        models.create("timm:test_resnet.no_such_tag", 2)
    with pytest.raises(TlkitError, match="lenet has no pretrained weights"):
        models.create("lenet", 10, weights="imagenet")


def test_the_registry_literal_has_no_duplicate_names():
    tree = ast.parse(Path(models.__file__).read_text())
    registry = next(node.value for node in ast.walk(tree) if isinstance(node, ast.AnnAssign)
                    and getattr(node.target, "id", "") == "REGISTRY")
    names = [key.value for key in registry.keys]
    assert len(names) == len(set(names)) == len(models.available())


def test_describe_matches_a_real_build_and_sees_the_cache_change(tmp_path):
    info = models.describe("resnet18", num_classes=2)
    assert (info.feature_dim, info.input_size) == (512, (224, 224))
    assert info.trunk_params == 11_176_512 and info.head_params == 512 * 2 + 2
    assert info.weights.path is None
    _plant_torchvision(tmp_path, "resnet18-f37072fd.pth", {})
    assert models.describe("resnet18").weights.path is not None
    assert models.describe("lenet").weights is None


def test_tlkit_models_lists_every_backbone(capsys):
    assert cli.main(["models"]) == 0
    table = capsys.readouterr().out
    for name in models.available():
        assert name in table
    assert "25,088" in table and "not cached" in table


def _randomise_norms(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine maps far from the identity, so that a fold that ignores one shows."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.running_mean, module.weight.data, module.bias.data):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])
def test_folding_batchnorm_keeps_the_outputs_and_leaves_the_model_alone(name):
    from tlkit.backbone import fold_batchnorm

    model = _randomise_norms(models.create(name, num_classes=3, weights="none", img_size=64).model)
    images = torch.randn(2, 3, 64, 64)
    folded = fold_batchnorm(model, images)
    count = lambda m: sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # noqa: E731
    assert folded is not model and count(folded) == 0 < count(model)
    with torch.inference_mode():
        assert torch.allclose(folded(images), model(images), rtol=1e-4, atol=1e-4)


def test_a_norm_that_does_not_follow_its_convolution_is_not_folded():
    from tlkit.backbone import fold_batchnorm

    class NormFirst(nn.Module):  # registers conv, then norm, but normalises before convolving
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, images):
            return self.conv(self.norm(images))

    model = _randomise_norms(NormFirst())
    assert fold_batchnorm(model, torch.randn(2, 3, 8, 8)) is model
    vgg_like = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    assert fold_batchnorm(vgg_like, torch.randn(1, 3, 8, 8)) is vgg_like  # nothing to fold: no copy
