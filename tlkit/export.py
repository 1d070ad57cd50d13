"""`tlkit export`: a checkpoint as ONNX, torch.export's ExportedProgram (.pt2) or TorchScript (deprecated
upstream, kept while it works), with its preprocessing beside it.

Every export is checked before it is kept: the exported model's outputs on real images (or,
without any that decode, on random ones, said plainly with the files that failed) must match
PyTorch's, at two batch sizes. The reference photos' features (tlkit/familiar.py) go beside it,
with their threshold in the sidecar.
ONNX is checked with onnxruntime when it is installed; otherwise the export says so.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from tlkit.atomic import atomic_write, atomic_write_text, check_writable
from tlkit.checkpoint import Checkpoint
from tlkit.checkpoint_format import FAMILIAR
from tlkit.config import EXPORT_SUFFIXES
from tlkit.decode import ImageBatches, draft_side, scale_size
from tlkit.errors import TlkitError, option
from tlkit.multilabel import MULTI_LABEL
from tlkit.ownership import move_into_place, why_kept
from tlkit.pathtext import refuse_stdout
from tlkit.runtime import relpath, size_words
from tlkit.scan import is_image_name, visible_files

FORMATS = EXPORT_SUFFIXES
TOLERANCE = 1e-3  # absolute, on logits; fp32 kernels differ between runtimes in the last bits


def sample_images(checkpoint: Checkpoint, images: list[Path]) -> tuple[torch.Tensor, str, dict[Path, str]]:
    """Up to 8 normalised real images to verify with (the first that decode), what they are in words, and
    the files that failed to decode with why; random tensors when none decodes, and the words say so."""
    prep = checkpoint.backbone.preprocessing
    decoded, failed = [], {}
    if images:
        batches = ImageBatches(images, prep, device=torch.device("cpu"), batch_size=8)
        for batch in batches:
            decoded.append(batch.images)
            if sum(len(part) for part in decoded) >= 8:
                break
        failed = {images[index]: why for index, why in sorted(batches.failures.items())}
    if decoded:
        samples = torch.cat(decoded)[:8]
        return samples, f"{len(samples)} real image(s)", failed
    generator = torch.Generator().manual_seed(0)
    why = f"none of the {len(images)} image(s) to verify on decoded" if images else "no images given"
    return torch.randn(4, prep.in_chans, *prep.input_size, generator=generator), f"4 random tensors ({why})", failed


@contextmanager
def _quiet_deprecations():
    """torch 2.14 marks TorchScript and the TorchScript-based ONNX exporter deprecated; both still
    work, and their warnings would only alarm a user who asked for exactly this format."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_deprecations():
        traced = torch.jit.trace(model, example[:1], check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    _write_bytes(path, buffer.getvalue())


def _export_pt2(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export's ExportedProgram, where PyTorch is taking TorchScript's place: `torch.export.load(path)
    .module()` runs it. Traced at a batch of two, as torch.export specialises a size of 1 to the constant 1."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example[:1].repeat(2, 1, 1, 1),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    _write_bytes(path, buffer.getvalue())


def _write_bytes(path: Path, data: bytes) -> None:
    """An exporter's file, serialised in memory first and written by Python: a disk that fills under the write
    (another process taking the last space) is then an error like any other, where TorchScript's own writer
    would abort the whole process and leave its partial file."""
    _check_disk_room(len(data), path)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


ONNX_INSTALL = "pip install onnx onnxruntime"  # both are tlkit dependencies; a --no-deps install may lack them


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    if importlib.util.find_spec("onnx") is None:
        raise TlkitError(f"exporting to ONNX needs the onnx package, which is not installed in this Python "
                         f"({sys.executable}); nothing was written. Run `{ONNX_INSTALL}` and export again, "
                         f"or use {option('format', 'pt2', python='fmt')}.")

    buffer = io.BytesIO()
    with _quiet_deprecations():
        # The TorchScript-based exporter: one self-contained file, and no onnxscript needed.
        torch.onnx.export(model, (example[:1],), buffer, dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    _write_bytes(path, buffer.getvalue())


EXPORTERS = {"onnx": _export_onnx, "pt2": _export_pt2, "torchscript": _export_torchscript}  # one per EXPORT_SUFFIXES key


def _run_exported(fmt: str, path: Path, images: torch.Tensor) -> np.ndarray | None:
    if fmt == "torchscript":
        with torch.inference_mode(), _quiet_deprecations():
            return torch.jit.load(str(path)).eval()(images).numpy()
    if fmt == "pt2":
        with torch.inference_mode():
            return torch.export.load(str(path)).module()(images).numpy()
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": images.numpy()})[0]


ROOM_MARGIN = 1.2  # an exported file is its tensors plus the graph; the staged copy and the final file never coexist


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_disk_room(size: int, out: Path) -> None:
    """Refuse before writing when the disk cannot hold `size` bytes at `out` (with a margin): checked before
    the export's slow steps, and again with the exact size right before the write."""
    needed = ROOM_MARGIN * size + (1 << 20)
    folder = next((p for p in (Path(out).parent, *Path(out).parent.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TlkitError(f"{relpath(folder)} has {size_words(free)} free and the export needs about "
                         f"{size_words(needed)}; nothing was written. Free some space, or "
                         f"{option('out', python='path')} on another disk.")


def decode_steps(prep) -> list[str]:
    """How tlkit turns a file into the model's input, step by step, for a user of the exported model
    (scan.open_photo, then decode.load_image): follow them and the pixels are tlkit's own."""
    mode, side = "RGB" if prep.in_chans == 3 else "L", draft_side(prep)
    return [
        f"Pillow: Image.open(file); draft('{mode}', ({side}, {side})): a JPEG decodes at 1/2, 1/4 or 1/8 "
        f"scale while both sides stay at least {side} px",
        "ImageOps.exif_transpose: upright as the camera's EXIF orientation says",
        "16-bit samples (modes I;16, I) shifted right by 8 bits",
        f"convert('{mode}')",
        _resize_step(prep),
        "to float in 0..1 (divide by 255), then (x - mean) / std per channel",
    ]


def validation_images(checkpoint: Checkpoint) -> list[Path]:
    """A few images of the run's own validation set to check an export on, when they are still there."""
    folder = Path(checkpoint.meta.config.get("data", "data")) / "validation"
    found = [p for p in visible_files(folder) if is_image_name(p)] if folder.is_dir() else []
    return found[:: max(1, len(found) // 8)][:8]


def _resize_step(prep) -> str:
    """decode.resize_crop in words, for each crop_mode."""
    height, width = prep.input_size
    how, crop = f"({prep.interpolation}, antialiased)", f"centre-crop to {height}x{width}"
    if not prep.resize_size:
        return f"resize to {height}x{width} {how}"
    if prep.crop_mode == "center":
        return f"resize the shorter side to {prep.resize_size} px {how}, then {crop}"
    scale_h, scale_w = scale_size(prep)
    if prep.crop_mode == "squash":
        return f"resize to {scale_h}x{scale_w} {how}, aspect ratio not kept, then {crop}"
    fill = ", ".join(str(round(255 * value)) for value in prep.mean)
    return (f"resize, keeping the aspect ratio, to fit inside {scale_h}x{scale_w} (the side that meets it set "
            f"exactly, the other rounded) {how}, then {crop}, padding a short side evenly (the odd pixel "
            f"after) with ({fill})")


def sidecar_path(out: Path) -> Path:
    """`model.onnx` -> `model.onnx.json`: never the `best.json` of a checkpoint beside it."""
    return out.with_name(out.name + ".json")


def reference_path(out: Path) -> Path:
    """`model.onnx` -> `model.onnx.familiar.safetensors`: the reference features of an export."""
    return out.with_name(f"{out.name}.{FAMILIAR}")


def _verified(fmt: str, path: Path, samples: torch.Tensor, expected: np.ndarray, source: str) -> dict:
    """Run the exported file at batch 1 and at the full sample batch; compare with PyTorch."""
    check = {"format": fmt, "verified_on": source, "batch_sizes": [1, len(samples)]}
    got = [_run_exported(fmt, path, samples[:1]), _run_exported(fmt, path, samples)]
    if got[0] is None:
        return {**check, "verified": False,
                "note": f"onnxruntime is not installed, so the export was not run; {ONNX_INSTALL}"}
    error = max(float(np.abs(got[0] - expected[:1]).max()), float(np.abs(got[1] - expected).max()))
    if error > TOLERANCE:
        raise TlkitError(f"the {fmt} export's outputs differ from PyTorch's by {error:.2g} (over {TOLERANCE}); "
                         "nothing was written. Please report this with the backbone name.")
    return {**check, "verified": True, "max_abs_difference": error}


def export_checkpoint(checkpoint: Checkpoint, fmt: str, out: Path | None = None, *, images: list[Path] = (),
                      force: bool = False) -> dict:
    """Write the model and `<out>.json` (input size, mean/std, classes); verify; return what was checked,
    with the file written. out None: model.onnx / .pt2 / .pt beside the checkpoint. images: what the export
    is checked on; none given: a few of the run's own validation images, when they are still there."""
    refuse_stdout(out, "a model file and its sidecar", python="path")
    out = Path(out) if out is not None else checkpoint.path.with_name(f"model{FORMATS[fmt]}")
    images = list(images) or validation_images(checkpoint)
    sidecar, reference = sidecar_path(out), _reference_source(checkpoint)
    for target in (out, sidecar, *([reference_path(out)] if reference else [])):
        if target.exists() and not force:
            raise TlkitError(f"{relpath(target)} already exists; nothing was written. Use {option('force', True)}, "
                             f"or {option('out', 'FILE', python='path')}.")
        if target.exists() and (why := why_kept(target)):
            raise TlkitError(f"{relpath(target)} is not an export of tlkit's ({why}), and {option('force', True)} "
                             f"replaces only those; nothing was written. Choose another "
                             f"{option('out', python='path')}, or move it away.")
    check_writable(out.parent, "out", python="path")
    model = checkpoint.backbone.model.float().cpu().eval()
    _check_disk_room(model_bytes(model), out)
    samples, source, failed = sample_images(checkpoint, images)
    with torch.inference_mode():
        expected = model(samples).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    # The model and its sidecar are written and checked under other names first, and renamed in together: a
    # failed check or write leaves an earlier export in place, and never a model without its sidecar.
    staged, staged_sidecar, staged_reference = (path.with_name(f".{path.name}.unverified")
                                                for path in (out, sidecar, reference_path(out)))
    try:
        EXPORTERS[fmt](model, samples, staged)
        check = {**_verified(fmt, staged, samples, expected, source), "file": str(out),
                 "images_failed": {str(path): why for path, why in failed.items()}}
        atomic_write_text(staged_sidecar, json.dumps(_sidecar(checkpoint, check, out if reference else None), indent=2))
        if reference:
            atomic_write(staged_reference, lambda tmp: shutil.copyfile(reference, tmp))
            move_into_place(staged_reference, reference_path(out))
        move_into_place(staged, out)
        move_into_place(staged_sidecar, sidecar)
    finally:
        for path in (staged, staged_sidecar, staged_reference):
            path.unlink(missing_ok=True)
    return check


def _reference_source(checkpoint: Checkpoint) -> Path | None:
    """The checkpoint's reference features, to go beside the export; None where it has none (said)."""
    rule = checkpoint.meta.familiar
    path = checkpoint.path.with_name(rule["file"]) if rule else None
    if rule and not path.is_file():
        raise TlkitError(f"{relpath(path)} is missing: it holds the reference photos' features that the export's "
                         "`familiar` signal needs. Copy it back beside the weights, or retrain; nothing was written.")
    return path


def _sidecar(checkpoint: Checkpoint, check: dict, out: Path | None) -> dict:
    """What a user of the exported model needs beside it: classes, input, preprocessing and decode steps, the
    temperature, and (out: with reference features beside it) the familiar rule. The exported model outputs the
    logits as PyTorch does (its check compares them), the division left to the user, as the sidecar says: the
    labels need no softmax, and a runtime's model stays the network."""
    prep = checkpoint.backbone.preprocessing
    temperature = checkpoint.meta.temperature
    familiar = {} if out is None else {"familiar": _familiar_words(checkpoint.meta.familiar, out)}
    return {"backbone": checkpoint.meta.backbone, "classes": checkpoint.classes,
            "input": {"layout": "NCHW", "dtype": "float32", "batch": "dynamic", "channels": prep.in_chans,
                      "height": prep.input_size[0], "width": prep.input_size[1]},
            "preprocessing": prep.to_dict(), "decode": decode_steps(prep),
            "output": f"logits: softmax(logits / temperature) gives the calibrated probabilities (temperature "
                      f"{temperature:g}, fitted on the validation photos), the same as tlkit predict's",
            "temperature": temperature, "check": check, **familiar, **multi_label_output(checkpoint)}


def multi_label_output(checkpoint: Checkpoint) -> dict:
    """A multi-label model's sidecar entries: its task, each class's threshold, its Platt scaling and how its logits
    read (a sigmoid each, no temperature); nothing for a single-label model."""
    if checkpoint.meta.task != MULTI_LABEL:
        return {}
    scale, shift = (dict(zip(checkpoint.classes, part.tolist())) for part in checkpoint.meta.logit_scaling())
    return {"task": MULTI_LABEL, "thresholds": dict(zip(checkpoint.classes, checkpoint.meta.thresholds)),
            "scale": scale, "shift": shift,
            "output": "logits: sigmoid(logit x scale + shift) is each class's probability (its scale and shift fitted "
                      "on the validation photos), the same as tlkit predict's; a photo holds every class whose "
                      "probability reaches its threshold (chosen on the validation photos)"}


def _familiar_words(rule: dict, out: Path) -> dict:
    """The familiar rule of tlkit/familiar.py for a user of the export: the file, k, the threshold and how."""
    photos = f"the {rule.get('reference', 'training')} photos'"  # a checkpoint from before validation ones
    return {"file": reference_path(out).name, "neighbours": rule["neighbours"], "threshold": rule["threshold"],
            "rule": f"features: the trunk's output, the classifier layer's input ({FAMILIAR}'s `features` holds "
                    f"{photos}, float16, each of length 1); novelty: the mean of 1 - cosine similarity "
                    "to the `neighbours` most similar of them; a photo whose novelty is above `threshold` is unlike "
                    "the training photos (tlkit predict's familiar false). The exported model outputs the logits "
                    "only: the features come from the checkpoint's trunk."}
