"""tlkit.export and `tlkit export`: round trips through TorchScript, torch.export (.pt2) and ONNX, checked on images."""

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tlkit.checkpoint import load_checkpoint
from tlkit.cli import main
from tlkit.decode import ImageBatches
from tlkit.export import sidecar_path
from tlkit.runtime import compute_for

from conftest import real_photos, write_image


@pytest.fixture
def images(tmp_path):
    return [write_image(tmp_path / "img" / f"{n}.jpg", size=(36, 30), color=n) for n in range(5)]


def _reference(tiny_run, images):
    checkpoint = load_checkpoint(tiny_run)
    (batch,) = ImageBatches(images, checkpoint.backbone.preprocessing, device="cpu", batch_size=8)
    with torch.inference_mode():
        return batch.images, checkpoint.backbone.model(batch.images).numpy()


def test_torchscript_round_trip_with_dynamic_batch(tiny_run, images, tmp_path, capsys):
    target = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target),
                 "--images", *map(str, images)]) == 0
    assert "verified on 5 real image(s)" in capsys.readouterr().err
    inputs, expected = _reference(tiny_run, images)
    loaded = torch.jit.load(str(target))
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(inputs).numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(loaded(inputs[:3]).numpy(), expected[:3], atol=1e-4)
    meta = json.loads(sidecar_path(target).read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["input"]["height"] == 32
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def test_pt2_round_trip_on_real_photos_with_dynamic_batch(tiny_run, tmp_path, capsys):
    """torch.export's ExportedProgram: checked on real photos when written, then loaded by torch.export alone,
    it gives PyTorch's logits at batch sizes other than the one it was traced at (1 included)."""
    photos = [real_photos() / f"{label}.{n}.jpg" for label in ("cat", "dog") for n in range(3)][:5]
    target = tmp_path / "model.pt2"
    assert main(["export", "--format", "pt2", "--checkpoint", str(tiny_run), "--out", str(target),
                 "--images", *map(str, photos)]) == 0
    assert "verified on 5 real image(s)" in capsys.readouterr().err
    inputs, expected = _reference(tiny_run, photos)
    program = torch.export.load(str(target)).module()
    with torch.inference_mode():
        for count in (1, 3, 5):
            np.testing.assert_allclose(program(inputs[:count]).numpy(), expected[:count], atol=1e-4)
    meta = json.loads(sidecar_path(target).read_text())
    assert meta["check"]["format"] == "pt2" and meta["check"]["verified"] is True
    assert meta["classes"] == ["cat", "dog"] and meta["input"]["batch"] == "dynamic"


def test_onnx_round_trip(tiny_run, images, tmp_path):
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (pip install 'tlkit[onnx]')")
    import onnxruntime

    target = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(tiny_run), "--out", str(target),
                 "--images", *map(str, images)]) == 0
    inputs, expected = _reference(tiny_run, images)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    for count in (1, 5):
        got = session.run(["logits"], {"images": inputs[:count].numpy()})[0]
        np.testing.assert_allclose(got, expected[:count], atol=1e-4)
    assert json.loads(sidecar_path(target).read_text())["check"]["verified"] is True


def test_existing_export_needs_force_and_no_images_is_said(tiny_run, tmp_path, capsys):
    target = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target)]) == 0
    assert "random tensors" in capsys.readouterr().err
    assert main(["export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target)]) == 1
    assert "--force" in capsys.readouterr().err


def test_images_that_all_fail_to_decode_are_named_not_called_none_given(tiny_run, tmp_path, capsys):
    broken = [tmp_path / "img" / name for name in ("a.jpg", "b.png")]
    for path in broken:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not an image")
    target = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target),
                 "--images", *map(str, broken)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "no images given" not in err and "none of the 2 image(s) to verify on decoded" in err
    assert "could not be decoded" in err and "a.jpg" in err and "b.png" in err
    check = json.loads(sidecar_path(target).read_text())["check"]
    assert sorted(check["images_failed"]) == sorted(map(str, broken))


def test_export_beside_the_checkpoint_leaves_best_json_alone(tiny_run, tmp_path):
    before = (tiny_run / "best.json").read_text()
    assert main(["export", "--format", "torchscript", "--checkpoint", str(tiny_run),
                 "--out", str(tiny_run / "best.pt")]) == 0
    assert (tiny_run / "best.json").read_text() == before and (tiny_run / "best.pt.json").is_file()
    assert load_checkpoint(tiny_run).classes == ["cat", "dog"]


def test_a_failed_check_keeps_the_earlier_export(tiny_run, tmp_path, monkeypatch):
    from tlkit import export as export_module

    target = tmp_path / "model.pt"
    assert main(["export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target)]) == 0
    earlier = target.read_bytes()
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # every comparison now fails
    assert main(["export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target),
                 "--force"]) == 1
    assert target.read_bytes() == earlier and not list(tmp_path.glob(".*unverified"))


def test_onnx_without_the_onnx_package_is_one_message_with_the_pip_command(tiny_run, images, tmp_path, capsys,
                                                                          monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real_find_spec(name, *a))
    target = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(tiny_run), "--out", str(target),
                 "--images", *map(str, images)]) == 1
    err = capsys.readouterr().err
    assert "pip install onnx onnxruntime" in err and "Traceback" not in err
    assert not target.exists() and not list(tmp_path.glob("model.onnx*"))


def _pixels_from_the_json_alone(path, meta) -> np.ndarray:
    """An ONNX user's preprocessing, written from the sidecar's `decode` steps and numbers only (Pillow and
    numpy, no tlkit code)."""
    from PIL import Image, ImageOps

    prep = meta["preprocessing"]
    mode = "RGB" if meta["input"]["channels"] == 3 else "L"
    height, width = prep["input_size"]
    side = prep["resize_size"] or max(height, width)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[prep["interpolation"]]
    with Image.open(path) as image:
        image.draft(mode, (side, side))
        image = ImageOps.exif_transpose(image).convert(mode)
    if prep["resize_size"]:
        short, long = sorted(image.size)
        scaled = (side, int(side * long / short))
        image = image.resize(scaled if image.width <= image.height else scaled[::-1], resample)
        left, top = int(round((image.width - width) / 2)), int(round((image.height - height) / 2))
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height), resample)
    pixels = np.asarray(image, dtype=np.float32).reshape(image.height, image.width, -1).transpose(2, 0, 1) / 255
    return (pixels - np.array(prep["mean"], np.float32)[:, None, None]) / np.array(prep["std"], np.float32)[:, None, None]


def test_the_onnx_sidecar_describes_tlkits_own_decoding(tiny_run, tmp_path):
    """Large JPEGs, where decoding at reduced size matters: the ONNX model fed by the sidecar's steps
    gives tlkit predict's probabilities."""
    from tlkit.predict import predict_files

    photos = [write_image(tmp_path / "big" / f"{n}.jpg", size=(400 + 40 * n, 300), color=n) for n in range(4)]
    target = tmp_path / "model.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(tiny_run), "--out", str(target)]) == 0
    meta = json.loads(sidecar_path(target).read_text())
    assert any("draft" in step for step in meta["decode"]) and any("exif" in step.lower() for step in meta["decode"])
    import onnxruntime

    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    inputs = np.stack([_pixels_from_the_json_alone(path, meta) for path in photos])
    (batch,) = ImageBatches(photos, load_checkpoint(tiny_run).backbone.preprocessing, device="cpu", batch_size=8)
    # The very pixels tlkit feeds its model (without the reduced-size JPEG decoding: up to 0.16 apart here).
    np.testing.assert_allclose(inputs, batch.images.numpy(), atol=1e-5)
    logits = session.run(["logits"], {"images": inputs})[0]
    theirs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ours = predict_files(load_checkpoint(tiny_run), photos, compute=compute_for("cpu", "fp32")).probabilities
    np.testing.assert_allclose(theirs, ours, atol=2e-3)


def test_the_decode_steps_name_the_crop_mode():
    from tlkit.export import decode_steps
    from tlkit.backbone import Preprocessing

    prep = Preprocessing((48, 64), 53, (0.6, 0.5, 0.4), (0.25,) * 3, "bicubic", 3)
    resize_step = {mode: decode_steps(replace(prep, crop_mode=mode))[4] for mode in ("center", "squash", "border")}
    assert resize_step["center"] == "resize the shorter side to 53 px (bicubic, antialiased), then centre-crop to 48x64"
    assert resize_step["squash"].startswith("resize to 53x70 (bicubic, antialiased), aspect ratio not kept")
    assert "fit inside 53x70" in resize_step["border"] and resize_step["border"].endswith("with (153, 128, 102)")
    assert decode_steps(replace(prep, crop_mode="squash"))[0].startswith("Pillow: Image.open(file); draft('RGB', (70, 70))")


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "onnx"])
def test_an_export_that_would_not_fit_the_disk_is_refused_before_writing(tiny_run, tmp_path, monkeypatch, capsys, fmt):
    from types import SimpleNamespace

    from tlkit import export

    monkeypatch.setattr(export.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))  # 1 KB left
    target = tmp_path / "model.out"
    assert main(["export", "--format", fmt, "--checkpoint", str(tiny_run), "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert "1.0 kB free" in err and "nothing was written" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*model.out*"))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "onnx"])
@pytest.mark.parametrize("fails", ["model", "sidecar"])
def test_a_disk_that_fills_during_the_export_leaves_the_earlier_export_whole(tiny_run, tmp_path, monkeypatch, capsys,
                                                                           fmt, fails):
    """Another process takes the last space after the check: the write fails like any other (TorchScript's own
    writer would abort the process), no partial or staged file stays, and an earlier model and its sidecar
    stay together."""
    import errno
    from pathlib import Path

    target = tmp_path / "model.out"
    assert main(["export", "--format", fmt, "--checkpoint", str(tiny_run), "--out", str(target)]) == 0
    earlier = target.read_bytes(), sidecar_path(target).read_text()
    real_write = Path.write_bytes if fails == "model" else Path.write_text

    def full_disk(self, data, *args, **kwargs):
        if self.name.startswith(".") and ".unverified" in self.name:
            real_write(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes" if fails == "model" else "write_text", full_disk)
    assert main(["export", "--format", fmt, "--checkpoint", str(tiny_run), "--out", str(target), "--force"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert (target.read_bytes(), sidecar_path(target).read_text()) == earlier
    assert sorted(p.name for p in tmp_path.iterdir() if "model" in p.name) == ["model.out", "model.out.json"]


def test_force_replaces_an_export_but_never_another_file(tiny_run, tmp_path, capsys):
    target = tmp_path / "model.pt"
    command = ["export", "--format", "torchscript", "--checkpoint", str(tiny_run), "--out", str(target), "--force"]
    assert main(command) == 0 and main(command) == 0  # its own export, replaced
    mine = tmp_path / "weights.pt"
    mine.write_bytes(b"a model of my own")
    assert main([*command[:-2], str(mine), "--force"]) == 1
    assert "not an export of tlkit's" in capsys.readouterr().err
    assert mine.read_bytes() == b"a model of my own" and not sidecar_path(mine).exists()
