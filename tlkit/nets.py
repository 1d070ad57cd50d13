"""The small from-scratch networks of the reference programs: LeNet-5 (sigmoid and ReLU), the
MNIST example's net, three MLPs and a CIFAR-style SimpleCNN.

Each is an `nn.Sequential` of named blocks whose last entry is the `classifier` Linear, so
the trunk is `net[:-1]` and the head `net[-1]`. Input size and channels are parameters. They
output logits (no log-softmax): the loss applies it. Nothing here loads weights.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def _flat_size(conv_blocks: nn.Sequential, in_chans: int, img_size: int) -> int:
    """How many numbers the convolutional blocks leave per image, found by running them once."""
    # Under a `torch.device("meta")` context this costs nothing, and it cannot disagree with the layers.
    with torch.no_grad():
        probe = torch.zeros(1, in_chans, img_size, img_size)
        try:
            return conv_blocks(probe).flatten(1).shape[1]
        except RuntimeError as error:
            raise ValueError(f"input size {img_size} px is too small for these convolutions") from error


def _classic(conv_blocks: list[tuple[str, nn.Module]], fc_sizes: list[int], activation: type[nn.Module] | None,
             num_classes: int, in_chans: int, img_size: int, batch_norm: bool = False) -> nn.Sequential:
    """Convolution blocks, then Linear blocks of `fc_sizes` (each with its activation), then the classifier."""
    layers = OrderedDict(conv_blocks)
    in_features = _flat_size(nn.Sequential(layers), in_chans, img_size) if conv_blocks else in_chans * img_size**2
    layers["flatten"] = nn.Flatten(1)
    for index, width in enumerate(fc_sizes, start=1):
        block = [nn.Linear(in_features, width)]
        if batch_norm:
            block.append(nn.BatchNorm1d(width))
        if activation is not None:
            block.append(activation())
        layers[f"fc{index}"] = nn.Sequential(*block) if len(block) > 1 else block[0]
        in_features = width
    layers["classifier"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(layers)


def _conv_block(in_chans: int, out_chans: int, kernel: int, padding: int, activation: type[nn.Module],
                pool: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, kernel, padding=padding), activation(), pool(2))


def _lenet_layout(num_classes: int, in_chans: int, img_size: int, activation: type[nn.Module],
                  pool: type[nn.Module]) -> nn.Sequential:
    """LeNet-5's layers: conv 6 (5x5, padding 2) and 16 (5x5), each activated and pooled, then 120-84-classes."""
    return _classic(
        [("conv1", _conv_block(in_chans, 6, 5, 2, activation, pool)),
         ("conv2", _conv_block(6, 16, 5, 0, activation, pool))],
        [120, 84], activation, num_classes, in_chans, img_size,
    )


def lenet(num_classes: int, in_chans: int = 1, img_size: int = 28) -> nn.Sequential:
    """LeNet-5 as in Dive into Deep Learning: conv 6 and 16 (5x5), sigmoid, average pooling,
    120-84-classes, Xavier-uniform weights (the book's init; default init trains far slower)."""
    net = _lenet_layout(num_classes, in_chans, img_size, nn.Sigmoid, nn.AvgPool2d)
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
    return net


def lenet_relu(num_classes: int, in_chans: int = 1, img_size: int = 28) -> nn.Sequential:
    """The modern LeNet-5: the same layers with ReLU and max-pooling, PyTorch's default init
    (ReLU does not saturate, so it needs no Xavier init to train)."""
    return _lenet_layout(num_classes, in_chans, img_size, nn.ReLU, nn.MaxPool2d)


def mnist_net(num_classes: int, in_chans: int = 1, img_size: int = 28) -> nn.Sequential:
    """PyTorch's MNIST example net: conv 20 and 50 (5x5) with ReLU and max-pooling, fc 500."""
    return _classic(
        [("conv1", _conv_block(in_chans, 20, 5, 0, nn.ReLU, nn.MaxPool2d)),
         ("conv2", _conv_block(20, 50, 5, 0, nn.ReLU, nn.MaxPool2d))],
        [500], nn.ReLU, num_classes, in_chans, img_size,
    )


def mlp(num_classes: int, in_chans: int = 1, img_size: int = 28) -> nn.Sequential:
    """Three linear layers 300-100-classes with no activation between them (a linear model)."""
    return _classic([], [300, 100], None, num_classes, in_chans, img_size)


def mlp_relu(num_classes: int, in_chans: int = 1, img_size: int = 28) -> nn.Sequential:
    """Three linear layers 300-100-classes with ReLU."""
    return _classic([], [300, 100], nn.ReLU, num_classes, in_chans, img_size)


def mlp_bn(num_classes: int, in_chans: int = 1, img_size: int = 28) -> nn.Sequential:
    """Three linear layers 300-100-classes, each hidden one followed by BatchNorm1d then ReLU."""
    return _classic([], [300, 100], nn.ReLU, num_classes, in_chans, img_size, batch_norm=True)


def simple_cnn(num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Sequential:
    """Three blocks conv 3x3 (32/64/128, padding 1) + ReLU + max-pool 2, then fc 512-64-classes."""
    return _classic(
        [(f"conv{index}", _conv_block(chans_in, chans_out, 3, 1, nn.ReLU, nn.MaxPool2d))
         for index, (chans_in, chans_out) in enumerate([(in_chans, 32), (32, 64), (64, 128)], start=1)],
        [512, 64], nn.ReLU, num_classes, in_chans, img_size,
    )
