"""The classic from-scratch nets: the reference programs' shapes, sizes and init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tlkit import nets

BUILDERS = [nets.lenet, nets.lenet_relu, nets.mnist_net, nets.mlp, nets.mlp_relu, nets.mlp_bn, nets.simple_cnn]


def _parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_lenet_shapes_follow_the_book():
    net = nets.lenet(10)
    x = torch.zeros(1, 1, 28, 28)
    shapes = []
    for layer in [*net.conv1, *net.conv2, net.flatten, *net.fc1, *net.fc2, net.classifier]:
        x = layer(x)
        if isinstance(layer, (nn.AvgPool2d, nn.Conv2d, nn.Linear, nn.Flatten)):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (400,), (120,), (84,), (10,)]
    assert sum(isinstance(m, nn.Sigmoid) for m in net.modules()) == 4


def test_lenet_weights_are_xavier_uniform():
    torch.manual_seed(0)
    fc1 = nets.lenet(10).fc1[0]
    xavier_bound = math.sqrt(6 / (400 + 120))
    # PyTorch's default bound for this layer would be 1/sqrt(400) = 0.05, well below what Xavier reaches.
    assert 0.09 < fc1.weight.abs().max().item() <= xavier_bound


def test_lenet_relu_is_lenet_with_relu_max_pooling_and_default_init():
    torch.manual_seed(0)
    sigmoid_net, relu_net = nets.lenet(10), nets.lenet_relu(10)
    assert _parameter_count(relu_net) == _parameter_count(sigmoid_net)
    assert sum(isinstance(m, nn.ReLU) for m in relu_net.modules()) == 4
    assert [type(m) for m in relu_net.conv1] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    assert not any(isinstance(m, (nn.Sigmoid, nn.AvgPool2d)) for m in relu_net.modules())
    # PyTorch's default bound for fc1 is 1/sqrt(400) = 0.05; Xavier would reach past 0.09.
    assert relu_net.fc1[0].weight.abs().max().item() <= 1 / math.sqrt(400)


def test_mnist_net_is_the_examples_net():
    net = nets.mnist_net(10)
    assert net.fc1[0].in_features == 4 * 4 * 50
    assert (net.conv1[0].out_channels, net.conv2[0].out_channels, net.fc1[0].out_features) == (20, 50, 500)
    assert _parameter_count(net) == 520 + 25_050 + 400_500 + 5_010


def test_mlps_differ_only_in_activation_and_batchnorm():
    plain, relu, batchnorm = nets.mlp(10), nets.mlp_relu(10), nets.mlp_bn(10)
    assert _parameter_count(plain) == _parameter_count(relu) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert not any(isinstance(m, nn.ReLU) for m in plain.modules())
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 2
    assert [type(m) for m in batchnorm.fc1] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    # No activation: the plain MLP is affine, f(a) + f(b) = f(a + b) + f(0).
    a, b = torch.randn(1, 1, 28, 28), torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(plain(a) + plain(b), plain(a + b) + plain(torch.zeros_like(a)), atol=1e-5)


def test_simple_cnn_flattens_2048_at_32_px_and_scales_with_input_size():
    assert nets.simple_cnn(10).fc1[0].in_features == 128 * 4 * 4
    assert nets.simple_cnn(10, img_size=64).fc1[0].in_features == 128 * 8 * 8


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("in_chans,img_size", [(1, 28), (3, 36)])
def test_every_net_takes_channels_and_size_as_parameters(build, in_chans, img_size):
    net = build(7, in_chans=in_chans, img_size=img_size).eval()
    with torch.no_grad():
        logits = net(torch.randn(2, in_chans, img_size, img_size))
    assert logits.shape == (2, 7)
    assert isinstance(net[-1], nn.Linear) and net[-1] is net.classifier


def test_too_small_an_input_is_a_value_error():
    with pytest.raises(ValueError, match="too small"):
        nets.mnist_net(10, img_size=8)
