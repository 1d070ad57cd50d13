"""What every stage knows of a model: a Backbone (the classifier, cut into trunk and head, with
the Preprocessing its weights expect), the helpers that cut it, and an inference copy with its
BatchNorm folded into the convolutions. The factories that build
one live in tlkit/models.py (torchvision, the classic nets) and tlkit/timm_models.py (timm);
both import this module, and neither imports the other's internals. No weights, no data here.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tlkit.errors import TlkitError
from tlkit.runtime import memory_format


@dataclass(frozen=True)
class Preprocessing:
    """What an image must look like when it reaches the network, as the weights were trained."""

    input_size: tuple[int, int]  # (height, width) the network is fed
    resize_size: int | None  # eval: scale to this as crop_mode says, then centre crop; None: straight to input_size
    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]
    interpolation: str  # "bilinear" | "bicubic" | "nearest"
    in_chans: int
    # timm's eval crop_mode, what resize_size scales: "center" the shorter side (aspect kept), "squash" both
    # sides (aspect not kept), "border" the longer side (aspect kept; padded with the mean where short)
    crop_mode: str = "center"

    def to_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(input_size=tuple(d["input_size"]), resize_size=d["resize_size"], mean=tuple(d["mean"]),
                   std=tuple(d["std"]), interpolation=d["interpolation"], in_chans=d["in_chans"],
                   crop_mode=d.get("crop_mode", "center"))  # files written before crop_mode: centre crop


@dataclass
class Backbone:
    """A classifier and its trunk/head split. `model`, `trunk` and `head` share their modules,
    so training one trains the others. A timm trunk wraps the whole model, so its `.to()` and
    `.train()` reach the head too; its parameters() and state_dict() are the trunk's only."""

    name: str
    model: nn.Module  # the whole classifier; model(x) == head(trunk(x)) exactly
    trunk: nn.Module  # images [N, C, H, W] -> features [N, feature_dim]
    head: nn.Module  # features -> logits [N, num_classes]
    feature_dim: int
    num_classes: int
    preprocessing: Preprocessing
    weights: str  # what was asked: "imagenet", "none", or the path given
    pretrained: bool  # whether pretrained tensors were actually loaded
    weights_note: str = ""  # where the tensors came from, which head layers start fresh
    fresh_head: tuple[str, ...] = ()  # head tensors a weights file did not fill (shaped for other classes)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def trunk_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(parameter) for parameter in self.head.parameters()}
        return [parameter for parameter in self.model.parameters() if id(parameter) not in head_ids]

    def freeze_trunk(self) -> None:
        """requires_grad False on the trunk (BatchNorm running statistics still move in train mode)."""
        for parameter in self.trunk_parameters():
            parameter.requires_grad_(False)

    def unfreeze(self) -> None:
        """Every parameter trainable, trunk and head."""
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)

    def freeze_first(self, share: float) -> None:
        """requires_grad False on the trunk's first parameters (in the order the forward pass meets them, as
        modules are registered), up to `share` of the trunk's parameter count: no gradient flows back through
        the layers below the first trainable one."""
        total = sum(parameter.numel() for parameter in self.trunk_parameters())
        counted = 0
        for parameter in self.trunk_parameters():
            counted += parameter.numel()
            if counted > share * total:
                return
            parameter.requires_grad_(False)

    def param_groups(self, lr: float, trunk_lr_mult: float = 1.0) -> list[dict]:
        """Optimizer groups of the trainable parameters: the trunk at lr * trunk_lr_mult, the head at lr (last).
        Each part's biases and normalisation weights (every parameter of one dimension) form a group of their
        own without weight decay, as timm's param_groups_weight_decay keeps them: decay pulls a weight matrix
        towards small, simple maps, while a BatchNorm scale pulled towards 0 silences its channel."""
        groups = []
        for name, parameters, part_lr in (("trunk", self.trunk_parameters(), lr * trunk_lr_mult),
                                          ("head", self.head_parameters(), lr)):
            trainable = [p for p in parameters if p.requires_grad]
            groups.append({"params": [p for p in trainable if p.ndim > 1], "lr": part_lr, "name": name})
            groups.append({"params": [p for p in trainable if p.ndim <= 1], "lr": part_lr, "weight_decay": 0.0,
                           "name": f"{name} (no decay)"})
        return [group for group in groups if group["params"]]


class TrunkHead(nn.Module):
    """A Backbone's model as head(trunk(images)), which it equals exactly: inference can then keep the features
    between the two (the head's input) from the same forward pass."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def per_channel(values, in_chans: int, *, given_as: str | None = None) -> tuple[float, ...]:
    """A mean or std for `in_chans` channels: as many values as channels, or one value repeated.

    The weights' own statistics (given_as None) for a 1-channel input are averaged to one value, as
    the first convolution's weights are summed; values the user gave (given_as names the flag) must
    fit, or the message says how many to give."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1 and given_as is None:
        return (sum(values) / len(values),)
    raise TlkitError(f"{given_as or 'the normalisation'} gives {len(values)} values; the model takes {in_chans} "
                     f"channel(s): give 1 or {in_chans}.")


def head_keys(model: nn.Module, head: nn.Module) -> set[str]:
    """The model's state-dict names of the head's tensors (found by identity, whatever the prefix)."""
    head_ids = {id(tensor) for tensor in (*head.parameters(), *head.buffers())}
    return {name for name, tensor in (*model.named_parameters(), *model.named_buffers()) if id(tensor) in head_ids}


def first_layer(head: nn.Module) -> nn.Linear | nn.Conv2d:
    """The head's first Linear or 1x1 convolution: what takes the features at the cut. The model's own forward
    calls it even where it calls no wrapper the cut put around it (timm's 1x1 convolution heads)."""
    return next(m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def in_features(head: nn.Module) -> int:
    """The feature size at the cut: what the head's first layer takes."""
    first = first_layer(head)
    return first.in_features if isinstance(first, nn.Linear) else first.in_channels


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """For inference only: a copy of `model` (in eval mode) in which each BatchNorm that directly follows a
    convolution is folded into it (torch's fuse_conv_bn_eval): one pass over the activations fewer, so the
    trunk runs faster (docs/benchmarks.md: Again, after issue 15's session). A pair is taken where a module
    registers a Conv2d and then its BatchNorm2d (timm's BatchNormAct2d keeps its activation); the copy is
    checked against the model on `example`, and where it differs, or nothing folds, the model itself is returned."""
    folded, count = copy.deepcopy(model).eval(), 0
    for parent in folded.modules():
        names = list(parent._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            conv, norm = parent._modules[conv_name], parent._modules[norm_name]
            rest = _after_norm(norm) if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) else None
            if rest is None or norm.num_features != conv.out_channels or norm.running_mean is None:
                continue
            parent._modules[conv_name], parent._modules[norm_name] = fuse_conv_bn_eval(conv, norm), rest
            count += 1
    if not count:
        return model
    with torch.inference_mode():
        expected, got = model.eval()(example).float(), folded(example).float()
    return folded if torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max())) else model


def for_inference(module: nn.Module, preprocessing: Preprocessing, device: torch.device) -> nn.Module:
    """`module` on the device in eval mode and the layout its batches come in (runtime.memory_format), with its
    BatchNorm folded (fold_batchnorm, checked on two random images of the preprocessing's shape, drawn from a
    generator of their own: the global one is the run's)."""
    module = module.to(device).eval()
    layout = memory_format(device)
    module.to(memory_format=layout)
    example = torch.randn(2, preprocessing.in_chans, *preprocessing.input_size, device=device,
                          generator=torch.Generator(device).manual_seed(0))
    return fold_batchnorm(module, example.contiguous(memory_format=layout))


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module | None:
    """What is left of a BatchNorm once its affine map is in the convolution: nothing, or timm's
    BatchNormAct2d's dropout and activation; None for another subclass (left unfolded)."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    if hasattr(norm, "act") and hasattr(norm, "drop"):
        return nn.Sequential(norm.drop, norm.act)
    return None
