"""Layer-by-layer output shapes and parameter counts of any model tlkit builds (`tlkit summary`),
and the check that a model can take images of a given size, naming the layer that cannot.

Models are built on PyTorch's meta device: shapes without memory, weights or downloads.
Reads models through forward hooks only; never trains, never loads weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tlkit import models
from tlkit.errors import TlkitError, option

MAX_SIZE = 2048  # the largest input side tried when looking for the smallest that works


@dataclass
class LayerRow:
    name: str  # the module's path in the model, e.g. "conv1.0"
    kind: str  # its class, e.g. "Conv2d"
    output_shape: tuple[int, ...]  # per image (batch dimension left out)
    params: int  # counted at the module's first call only (a reused module's weights are counted once)
    in_head: bool


MAX_INPUT_SIDE = 10_000  # channels or pixels of a side; one such image is already 400 MB per 1,000 channels


def parse_input(text: str) -> tuple[int, int, int]:
    """`1x28x28` -> (1, 28, 28); `3x224` -> (3, 224, 224)."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) not in (2, 3) or min(dims) < 1 or max(dims) > MAX_INPUT_SIDE:
        raise TlkitError(f"--input {text!r} is not CxHxW (1x28x28) or CxS (3x224), each from 1 to "
                         f"{MAX_INPUT_SIDE:,}.")
    return dims if len(dims) == 3 else (dims[0], dims[1], dims[1])


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if not list(module.children())]


def trace_layers(backbone, input_shape: tuple[int, int, int]) -> list[LayerRow]:
    """Run one image of `input_shape` through the model, recording every leaf module call in order."""
    head_ids = {id(module) for module in backbone.head.modules()}
    rows, seen = [], set()

    def record(name: str):
        def hook(module, inputs, output):
            first_call = id(module) not in seen
            seen.add(id(module))
            params = sum(p.numel() for p in module.parameters(recurse=False)) if first_call else 0
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
            rows.append(LayerRow(name, type(module).__name__, shape, params, id(module) in head_ids))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in _leaves(backbone.model)]
    try:
        _forward(backbone.model, input_shape)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def _forward(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """One forward pass in eval mode of two images (BatchNorm1d refuses one) on the model's device."""
    device = next(iter(model.parameters()), torch.zeros(())).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(2, *input_shape, device=device))
    finally:
        model.train(was_training)


def _failing_layer(model: nn.Module, input_shape: tuple[int, ...]) -> str | None:
    """`layer conv2.0 (Conv2d), given 20x2x2, fails: ...`, or None when the input passes."""
    current = {}

    def remember(name: str):
        def hook(module, inputs):
            shape = tuple(inputs[0].shape[1:]) if inputs and isinstance(inputs[0], torch.Tensor) else ()
            current.update(name=name, kind=type(module).__name__, shape=shape)
        return hook

    handles = [module.register_forward_pre_hook(remember(name)) for name, module in _leaves(model)]
    try:
        _forward(model, input_shape)
        return None
    except RuntimeError as error:
        given = "x".join(map(str, current.get("shape", ()))) or "?"
        reason = str(error).strip().splitlines()[0]
        return f"layer {current.get('name', '?')} ({current.get('kind', '?')}) is given {given} and fails: {reason}"
    finally:
        for handle in handles:
            handle.remove()


def _builds_and_runs(name: str, num_classes: int, in_chans: int | None, size: int) -> bool:
    try:
        with torch.device("meta"):
            backbone = models.create(name, num_classes, weights="none", in_chans=in_chans, img_size=size)
            return _failing_layer(backbone.model, (in_chans or 3, size, size)) is None
    except TlkitError:
        return False


def smallest_input(name: str, num_classes: int, in_chans: int | None, too_small: int) -> int | None:
    """The smallest square side above `too_small` the model takes (None: none up to MAX_SIZE)."""
    low, high = too_small, max(too_small * 2, 8)
    while not _builds_and_runs(name, num_classes, in_chans, high):
        low, high = high, high * 2
        if high > MAX_SIZE:
            return None
    while high - low > 1:  # the largest failing side is `low`, the smallest working one `high`
        middle = (low + high) // 2
        low, high = (low, middle) if _builds_and_runs(name, num_classes, in_chans, middle) else (middle, high)
    return high


def _too_small_message(name: str, num_classes: int, in_chans: int | None, size: int) -> str:
    with torch.device("meta"):  # the net at its own size, fed the small images, says where they fail
        reference = models.create(name, num_classes, weights="none", in_chans=in_chans)
        where = _failing_layer(reference.model, (in_chans or 3, size, size))
    smallest = smallest_input(name, num_classes, in_chans, size)
    fix = (f"the smallest input it takes is {smallest}x{smallest} px: add {option('img_size', smallest)} (or more) "
           "to resize the images" if smallest else f"no input size up to {MAX_SIZE} px works")
    return f"{name} cannot take {in_chans or 3}x{size}x{size} images" + (f": {where}" if where else "") + f"; {fix}."


def check_input_fits(name: str, num_classes: int, *, weights: str, in_chans: int | None, img_size: int | None):
    """models.create(...), then one forward pass at that size; a size the model cannot take is a
    TlkitError naming the layer that fails and the smallest size that works."""
    spec = models.REGISTRY.get(name)
    try:
        backbone = models.create(name, num_classes, weights=weights, in_chans=in_chans, img_size=img_size)
    except TlkitError:
        # The classic nets size their first Linear from img_size, so too small an input fails while building.
        if spec is None or spec.family != "classic" or not img_size or _builds_and_runs(name, num_classes, in_chans, img_size):
            raise
        raise TlkitError(_too_small_message(name, num_classes, in_chans, img_size)) from None
    size = backbone.preprocessing.input_size
    if _failing_layer(backbone.model, (backbone.preprocessing.in_chans, *size)) is not None:
        raise TlkitError(_too_small_message(name, num_classes, in_chans, size[0]))
    return backbone


def summarize(name: str, input_shape: tuple[int, int, int] | None = None, num_classes: int = 10):
    """(backbone on the meta device, its layer rows, the input shape used) for `tlkit summary`."""

    in_chans, size = (input_shape[0], input_shape[1]) if input_shape else (None, None)
    if input_shape and input_shape[1] != input_shape[2]:
        size = None  # the model's own size is built; the probe below says whether HxW passes
    with torch.device("meta"):
        backbone = check_input_fits(name, num_classes, weights="none", in_chans=in_chans, img_size=size)
        shape = input_shape or (backbone.preprocessing.in_chans, *backbone.preprocessing.input_size)
        where = _failing_layer(backbone.model, shape)
        if where:
            raise TlkitError(f"{name} cannot take {'x'.join(map(str, shape))} images: {where}.")
        return backbone, trace_layers(backbone, shape), shape
