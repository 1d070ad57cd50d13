"""`tlkit summary`: layer shapes and parameter counts, and the check that a model takes an input size."""

from __future__ import annotations

import pytest

from tlkit import cli
from tlkit.errors import TlkitError
from tlkit.summary import check_input_fits, parse_input, smallest_input, summarize


def _distinct_shapes(rows) -> list[tuple[int, ...]]:
    shapes = []
    for row in rows:
        if not shapes or shapes[-1] != row.output_shape:
            shapes.append(row.output_shape)
    return shapes


def test_lenet_shapes_are_the_books():
    backbone, rows, shape = summarize("lenet", (1, 28, 28))
    assert shape == (1, 28, 28)
    assert _distinct_shapes(rows) == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (400,), (120,), (84,), (10,)]
    assert [row.kind for row in rows][:3] == ["Conv2d", "Sigmoid", "AvgPool2d"]
    assert sum(row.params for row in rows) == 61_706 == sum(p.numel() for p in backbone.model.parameters())
    assert [row.name for row in rows if row.in_head] == ["classifier"]


def test_summary_command_prints_the_table(capsys):
    assert cli.main(["summary", "lenet", "--input", "1x28x28"]) == 0
    printed = capsys.readouterr().out
    for text in ("conv2.2", "16x5x5", "AvgPool2d", "48,120", "parameters: 61,706"):
        assert text in printed


def test_a_reused_module_is_listed_at_each_call_but_counted_once():
    backbone, rows, shape = summarize("resnet18")
    assert shape == (3, 224, 224) and rows[-1].output_shape == (10,)
    assert sum(row.params for row in rows) == sum(p.numel() for p in backbone.model.parameters())
    assert sum(row.name == "layer1.0.relu" for row in rows) == 2  # BasicBlock calls its ReLU twice


@pytest.mark.parametrize("name,shape,layer,smallest", [
    ("mnist-net", (1, 8, 8), r"conv2.0 \(Conv2d\) is given 20x2x2", 16),
    ("alexnet", (3, 28, 28), r"features.5 \(MaxPool2d\) is given 192x2x2", 63),
])
def test_too_small_input_names_the_layer_and_the_size_that_works(name, shape, layer, smallest):
    with pytest.raises(TlkitError, match=f"{name} cannot take {'x'.join(map(str, shape))} images: layer {layer}.*"
                                         f"smallest input it takes is {smallest}x{smallest}"):
        summarize(name, shape)
    assert smallest_input(name, 10, shape[0], shape[1]) == smallest


def test_check_input_fits_returns_a_working_model():
    backbone = check_input_fits("mnist-net", 10, weights="none", in_chans=1, img_size=16)
    assert backbone.preprocessing.input_size == (16, 16)


@pytest.mark.parametrize("text", ["28x28x", "1x28x28x2", "abc", "0x28x28"])
def test_bad_input_shape(text):
    with pytest.raises(TlkitError, match="is not CxHxW"):
        parse_input(text)
    assert parse_input("3x32") == (3, 32, 32)


def test_unknown_model_lists_the_valid_ones(capsys):
    assert cli.main(["summary", "lenet5"]) == 1
    assert "unknown backbone 'lenet5'" in capsys.readouterr().err
