"""The timm adapter behind `timm:<name>` backbones: builds the model, cuts it into trunk and
head at the pre_logits features, groups its trunk blocks and reads its preprocessing from the
pretrained_cfg. tlkit.models.create calls `create_timm`; nothing else here is public.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from tlkit.errors import TlkitError
from tlkit.models import TIMM_PREFIX, Backbone, Preprocessing, _head_keys, _in_features, _per_channel
from tlkit.weights import fetch, load_file, read_tensors, timm_weights

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


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
        self._head_keys = {f"model.{key}" for key in _head_keys(model, head)}

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
    from timm.layers import ClassifierHead, NormMlpClassifierHead

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


def _timm_blocks(model: nn.Module, head: nn.Module) -> list[list[nn.Parameter]]:
    """timm's coarse parameter groups (stem, stages or transformer blocks), head left out; a final
    group of norm layers only (ViT's `norm`) joins the block before it."""
    from timm.models import group_parameters

    head_ids = {id(parameter) for parameter in head.parameters()}
    by_name = dict(model.named_parameters())
    if hasattr(model, "group_matcher"):
        named_groups = group_parameters(model, model.group_matcher(coarse=True)).values()
    else:  # the model's own parameters (embeddings, tokens) first, then one group per child
        named_groups = [[n for n, _ in model.named_parameters(recurse=False)]] + [
            [f"{child}.{p}" for p, _ in module.named_parameters()] for child, module in model.named_children()]
    blocks = [[by_name[n] for n in names if id(by_name[n]) not in head_ids] for names in named_groups]
    blocks = [block for block in blocks if block]
    norm_ids = {id(p) for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)}
    if len(blocks) > 1 and all(id(parameter) in norm_ids for parameter in blocks[-1]):
        blocks[-2:] = [blocks[-2] + blocks[-1]]
    return blocks


def _timm_config(name: str):
    """timm's pretrained config for timm:<name> (None for a model without one); TlkitError for a bad name or tag."""
    import timm
    from timm.models import get_pretrained_cfg

    timm_name = name[len(TIMM_PREFIX):]
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('.')[0]}*")[:8]
        raise TlkitError(f"timm has no model '{timm_name}'" + (f"; close: {', '.join(close)}" if close else ""))
    try:
        return get_pretrained_cfg(timm_name)
    except RuntimeError as error:  # an unknown tag after the dot
        tags = timm.list_pretrained(f"{timm_name.split('.')[0]}.*")[:8]
        raise TlkitError(f"{error} Known: {', '.join(tags) or 'none'}") from error


def _timm_pretrained(name: str, options: dict):
    """timm.create_model with ImageNet weights from the cache, through timm's own loader, which
    adapts the first convolution to in_chans and drops a classifier shaped for other classes."""
    import timm

    location = timm_weights(name[len(TIMM_PREFIX):])
    if location is None:
        raise TlkitError(f"{name} has no pretrained weights in timm; use --weights none or --weights PATH.")
    path = fetch(location, name)
    tensors = read_tensors(path, delete_hint=location.folder)
    try:
        model = timm.create_model(name[len(TIMM_PREFIX):], pretrained=True,
                                  pretrained_cfg_overlay={"state_dict": tensors}, **options)
    except RuntimeError as error:
        raise TlkitError(f"{path} does not fit {name}: {str(error).splitlines()[0]}; delete "
                         f"{location.folder}, or use --weights PATH / --weights none.") from error
    return model, f"ImageNet weights {path}; classifier newly initialised for {options['num_classes']} classes"


def _timm_preprocessing(data_cfg: dict, in_chans: int, img_size: int | None) -> Preprocessing:
    """From the model's pretrained_cfg, as timm's resolve_data_config reads it; crop_pct sets the resize."""
    height, width = (img_size, img_size) if img_size else tuple(data_cfg["input_size"][1:])
    crop_pct = data_cfg.get("crop_pct") or 0.875  # timm's default when a config gives none
    interpolation = data_cfg.get("interpolation")
    return Preprocessing(
        input_size=(height, width), resize_size=math.floor(min(height, width) / crop_pct),
        mean=_per_channel(tuple(data_cfg["mean"]), in_chans), std=_per_channel(tuple(data_cfg["std"]), in_chans),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic", in_chans=in_chans,
    )


def create_timm(name: str, num_classes: int, weights: str, in_chans: int | None, img_size: int | None) -> Backbone:
    import timm

    cfg = _timm_config(name)
    chans = in_chans or 3
    # drop_rate 0: timm applies its head dropout before or after the pre_logits cut depending on
    # the model; no dropout there keeps head(trunk(x)) training exactly like model(x).
    options = {"num_classes": num_classes, "in_chans": chans, "drop_rate": 0.0}
    if img_size and cfg is not None and cfg.fixed_input_size:
        options["img_size"] = img_size  # position embeddings are sized when built (resampled when loaded)
    if weights == "imagenet":
        model, note = _timm_pretrained(name, options)
    else:
        try:
            model = timm.create_model(name[len(TIMM_PREFIX):], pretrained=False, **options)
        except TypeError as error:  # feature encoders take no num_classes / drop_rate
            raise TlkitError(f"{name} cannot be built as a classifier: {error}") from error
        note = "random initialisation (--weights none): no pretrained tensors"
    head = _timm_head(name, model)
    if weights not in ("imagenet", "none"):
        note = load_file(model, _head_keys(model, head), Path(weights), f"weights file {weights}")
    return Backbone(name, model, TimmTrunk(model, head), head, _in_features(head), num_classes,
                    _timm_preprocessing(model.pretrained_cfg, chans, img_size), weights,
                    pretrained=weights != "none", trunk_blocks=_timm_blocks(model, head), weights_note=note)
