"""tlkit.export and `tlkit export`: round trips through TorchScript and ONNX, checked on images."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from tlkit.checkpoint import load_checkpoint
from tlkit.cli import main
from tlkit.decode import ImageBatches
from tlkit.export import sidecar_path

from conftest import make_checkpoint, write_image


@pytest.fixture
def run(tmp_path):
    return make_checkpoint(tmp_path / "runs" / "tiny")


@pytest.fixture
def images(tmp_path):
    return [write_image(tmp_path / "img" / f"{n}.jpg", size=(36, 30), color=n) for n in range(5)]


def _reference(run, images):
    checkpoint = load_checkpoint(run)
    (batch,) = ImageBatches(images, checkpoint.backbone.preprocessing, device="cpu", batch_size=8)
    with torch.inference_mode():
        return batch.images, checkpoint.backbone.model(batch.images).numpy()


def test_torchscript_round_trip_with_dynamic_batch(run, images, tmp_path, capsys):
    target = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--checkpoint", str(run), "--out", str(target),
                 "--images", *map(str, images)]) == 0
    assert "verified on 5 real image(s)" in capsys.readouterr().err
    inputs, expected = _reference(run, images)
    loaded = torch.jit.load(str(target))
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(inputs).numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(loaded(inputs[:3]).numpy(), expected[:3], atol=1e-4)
    meta = json.loads(sidecar_path(target).read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["input"]["height"] == 32
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def test_onnx_round_trip(run, images, tmp_path):
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (pip install 'tlkit[onnx]')")
    import onnxruntime

    target = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(run), "--out", str(target),
                 "--images", *map(str, images)]) == 0
    inputs, expected = _reference(run, images)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    for count in (1, 5):
        got = session.run(["logits"], {"images": inputs[:count].numpy()})[0]
        np.testing.assert_allclose(got, expected[:count], atol=1e-4)
    assert json.loads(sidecar_path(target).read_text())["check"]["verified"] is True


def test_existing_export_needs_force_and_no_images_is_said(run, tmp_path, capsys):
    target = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--checkpoint", str(run), "--out", str(target)]) == 0
    assert "random tensors" in capsys.readouterr().err
    assert main(["export", "--format", "torchscript", "--checkpoint", str(run), "--out", str(target)]) == 1
    assert "--force" in capsys.readouterr().err


def test_export_beside_the_checkpoint_leaves_best_json_alone(run, tmp_path):
    before = (run / "best.json").read_text()
    assert main(["export", "--format", "torchscript", "--checkpoint", str(run), "--out", str(run / "best.pt")]) == 0
    assert (run / "best.json").read_text() == before and (run / "best.pt.json").is_file()
    assert load_checkpoint(run).classes == ["cat", "dog"]


def test_a_failed_check_keeps_the_earlier_export(run, tmp_path, monkeypatch):
    from tlkit import export as export_module

    target = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--checkpoint", str(run), "--out", str(target)]) == 0
    earlier = target.read_bytes()
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # every comparison now fails
    assert main(["export", "--format", "torchscript", "--checkpoint", str(run), "--out", str(target), "--force"]) == 1
    assert target.read_bytes() == earlier and not list(tmp_path.glob(".*unverified"))


def test_onnx_without_the_onnx_package_is_one_message_with_the_pip_command(run, images, tmp_path, capsys,
                                                                          monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name, *a))
    target = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(run), "--out", str(target),
                 "--images", *map(str, images)]) == 1
    err = capsys.readouterr().err
    assert "pip install onnx onnxruntime" in err and "Traceback" not in err
    assert not target.exists() and not list(tmp_path.glob("model.onnx*"))
