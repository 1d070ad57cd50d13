"""Checkpoints rebuild and label their model alone; writes are atomic; run folders and runs/latest."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import tlkit.checkpoint as checkpoint
from tlkit import models
from tlkit.checkpoint import (load_checkpoint, load_resume, new_run_dir, point_latest, release_run, resolve_run,
                             save_resume)
from tlkit.checkpoint_format import CheckpointMeta, read_meta, save_best
from tlkit.errors import TlkitError
from tlkit.ownership import RECORD

from conftest import make_checkpoint


def meta_for(backbone, classes) -> CheckpointMeta:
    return CheckpointMeta(backbone=backbone.name, weights=backbone.weights, classes=classes,
                          preprocessing=backbone.preprocessing, metrics={"val_acc": 0.5}, epoch=1)


@pytest.mark.parametrize("name, img_size", [("simple-cnn", 24), ("timm:test_resnet", 32)])
def test_checkpoint_rebuilds_and_labels_the_model(tmp_path, name, img_size):
    backbone = models.create(name, num_classes=3, weights="none", img_size=img_size)
    with torch.no_grad():
        for parameter in backbone.model.parameters():
            parameter.add_(0.01)  # not what a fresh build gives
    save_best(tmp_path, backbone.model.state_dict(), meta_for(backbone, ["ant", "bee", "cat"]))
    loaded = load_checkpoint(tmp_path)
    images = torch.randn(2, 3, img_size, img_size)
    backbone.model.eval()
    with torch.inference_mode():
        assert torch.equal(loaded.backbone.model(images), backbone.model(images))
    assert loaded.classes == ["ant", "bee", "cat"]
    assert loaded.backbone.preprocessing == backbone.preprocessing
    assert load_checkpoint(tmp_path / "best.json").classes == loaded.classes  # the sidecar names it too
    assert read_meta(tmp_path).tlkit_version


def test_a_checkpoint_written_before_crop_mode_loads_with_a_centre_crop(tmp_path):
    backbone = models.create("simple-cnn", num_classes=2, weights="none", img_size=24)
    save_best(tmp_path, backbone.model.state_dict(), meta_for(backbone, ["ant", "bee"]))
    written = json.loads((tmp_path / "best.json").read_text())
    written["preprocessing"] = {**written["preprocessing"], "resize_size": 28}
    del written["preprocessing"]["crop_mode"]  # as tlkit wrote it before timm's crop_mode was kept
    (tmp_path / "best.json").write_text(json.dumps(written))
    preprocessing = load_checkpoint(tmp_path).backbone.preprocessing
    assert (preprocessing.crop_mode, preprocessing.resize_size, preprocessing.input_size) == ("center", 28, (24, 24))


def test_a_failed_write_leaves_the_previous_best_intact(tmp_path, monkeypatch):
    backbone = models.create("simple-cnn", num_classes=2, weights="none")
    save_best(tmp_path, backbone.model.state_dict(), meta_for(backbone, ["a", "b"]))
    before = {name: (tmp_path / name).read_bytes() for name in ("best.safetensors", "best.json")}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(TlkitError, match="No space left on device.*previous version"):
        save_best(tmp_path, backbone.model.state_dict(), meta_for(backbone, ["x", "y"]))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path)) == [RECORD, "best.json", "best.safetensors"]  # no temporary files left


def test_resume_file_loads_with_weights_only(tmp_path):
    import random

    state = {"model": {"w": torch.ones(2)}, "rng": torch.get_rng_state(), "python": random.getstate(),
             "history": [{"epoch": 1, "val_loss": 0.5}], "best": None,
             "meta": meta_for(models.create("simple-cnn", num_classes=2, weights="none"), ["a", "b"]).to_dict()}
    save_resume(tmp_path, state)
    loaded = load_resume(tmp_path)  # torch.load(weights_only=True) inside
    assert torch.equal(loaded["model"]["w"], torch.ones(2)) and loaded["history"] == state["history"]
    with pytest.raises(TlkitError, match="not a tlkit run folder"):
        load_resume(tmp_path / "elsewhere")


def test_run_folders_are_not_overwritten_without_force(tmp_path):
    run = new_run_dir(tmp_path, "exp", force=False)
    release_run(run)
    (run / "config.yaml").write_text("backbone: resnet18\nweights: none\nruns_dir: runs\nseed: 0\n")
    for name in ("metrics.jsonl", ".best.json.tmp-7", "model.onnx", "model.onnx.json"):
        (run / name).write_text("x")
    (run / "evaluate-validation").mkdir()
    with pytest.raises(TlkitError, match="--force.*--resume"):
        new_run_dir(tmp_path, "exp", force=False)
    replaced = new_run_dir(tmp_path, "exp", force=True)
    assert not any(replaced.iterdir())
    release_run(replaced)
    stamped = new_run_dir(tmp_path, None, force=False)
    assert stamped.parent == tmp_path  # a timestamp
    release_run(stamped)
    with pytest.raises(TlkitError, match="usable folder name"):
        new_run_dir(tmp_path, "latest", force=False)


@pytest.mark.parametrize("planted", ["photos", "file", "link", "run with notes", "another tool's run"])
def test_force_replaces_only_a_run_folder(tmp_path, planted):
    """--force on a name that is not a run (the user's photos, a file, a link, a run the user wrote a note
    into) is one message, and everything stays."""
    target = tmp_path / "runs" / "exp"
    target.parent.mkdir()
    if planted == "photos":
        target.mkdir()
        for n in range(3):
            (target / f"{n}.jpg").write_bytes(b"photo")
    elif planted == "file":
        target.write_text("mine")
    elif planted == "link":
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    elif planted == "run with notes":
        target.mkdir()
        (target / "config.yaml").write_text("backbone: resnet18\nweights: none\nruns_dir: runs\nseed: 0\n")
        (target / "notes.txt").write_text("the good run")
    else:  # a config.yaml, a model and tb/ of another program's, whose names a tlkit run also uses
        (target / "tb").mkdir(parents=True)
        (target / "config.yaml").write_text("lr: 0.1\n")
        (target / "model.pt").write_bytes(b"weights")
    before = sorted((str(p), p.is_symlink()) for p in tmp_path.rglob("*"))
    with pytest.raises(TlkitError, match="not a (tlkit )?run folder.*nothing was changed"):
        new_run_dir(tmp_path / "runs", "exp", force=True)
    assert sorted((str(p), p.is_symlink()) for p in tmp_path.rglob("*")) == before


def test_a_run_name_is_held_while_its_run_lasts(tmp_path):
    """Two runs of one name at once (--force, or two --resume): the second is refused while the first holds
    it, from another process as from this one; once released, the name is free."""
    import subprocess
    import sys

    run = new_run_dir(tmp_path, "exp", force=False)
    (run / "config.yaml").write_text("backbone: resnet18\nweights: none\nruns_dir: runs\nseed: 0\n")
    other = subprocess.run([sys.executable, "-c", "import sys; from tlkit.checkpoint import new_run_dir; "
                            f"new_run_dir({str(tmp_path)!r}, 'exp', force=True)"], capture_output=True, text=True)
    assert other.returncode != 0 and "another tlkit process is writing" in other.stderr
    assert (run / "config.yaml").read_text().startswith("backbone: resnet18")
    release_run(run)
    assert not (tmp_path / ".exp.lock").exists()  # a released name leaves nothing beside the runs
    (tmp_path / ".exp.lock").write_text("")  # as a killed run leaves it: taken over
    release_run(new_run_dir(tmp_path, "exp", force=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_runs_started_in_the_same_second_get_names_of_their_own(tmp_path):
    first = new_run_dir(tmp_path, None, force=False)
    second = new_run_dir(tmp_path, None, force=False)  # the same second: the first is still being made
    assert first != second and second.name.startswith(first.name)
    release_run(first)
    release_run(second)


def test_latest_is_a_symlink_or_a_text_file(tmp_path, monkeypatch):
    with pytest.raises(TlkitError, match="tlkit finetune"):
        resolve_run(None, runs_dir=tmp_path)
    first, second = (new_run_dir(tmp_path, name, force=False) for name in ("one", "two"))
    point_latest(first)
    assert (tmp_path / "latest").is_symlink() and resolve_run(None, runs_dir=tmp_path) == first.resolve()

    def no_symlinks(*args, **kwargs):
        raise OSError(errno.EPERM, "symlinks not allowed")

    monkeypatch.setattr(checkpoint.os, "symlink", no_symlinks)
    point_latest(second)
    assert (tmp_path / "latest").read_text().strip() == "two"
    assert resolve_run(None, runs_dir=tmp_path) == second
    assert resolve_run(first) == first


def test_a_foreign_sidecar_is_refused(tmp_path):
    backbone = models.create("simple-cnn", num_classes=2, weights="none")
    save_best(tmp_path, backbone.model.state_dict(), meta_for(backbone, ["a", "b"]))
    meta = json.loads((tmp_path / "best.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "best.json").write_text(json.dumps(meta))
    with pytest.raises(TlkitError, match="cannot read"):
        load_checkpoint(tmp_path)
    with pytest.raises(TlkitError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")


def test_resume_writer_keeps_its_cadence_and_flushes_the_newest_epoch(tmp_path, monkeypatch):
    import tlkit.checkpoint as checkpoint

    writes = []
    monkeypatch.setattr(checkpoint, "save_resume", lambda run_dir, state: writes.append(state["epoch"]))
    meta = meta_for(models.create("simple-cnn", num_classes=2, weights="none"), ["a", "b"])
    weights = torch.zeros(3)
    writer = checkpoint.ResumeWriter(tmp_path, meta, every_epochs=3, every_seconds=None)
    for epoch in (1, 2, 3, 4):
        weights += 1  # the live tensor moves on after each epoch
        writer({"epoch": epoch, "model": {"w": weights}})
    assert writes == [3]  # every third epoch; epoch 4 waits in memory
    writer.flush()
    assert writes == [3, 4] and writer.pending is None
    writer({"epoch": 5, "model": {"w": weights}}, last=True)  # the end of a run is always written
    assert writes == [3, 4, 5]

    timed = checkpoint.ResumeWriter(tmp_path, meta, every_epochs=None, every_seconds=0)
    timed({"epoch": 6})
    assert writes[-1] == 6  # 0 seconds: every epoch
    copy = checkpoint._copied({"model": {"w": weights}, "rng": (1, [2, 3])})
    weights += 1
    assert torch.equal(copy["model"]["w"], weights - 1) and copy["rng"] == (1, [2, 3])


@pytest.mark.parametrize("damage", ["json", "meta-fields", "weights-bytes", "weights-of-another-model"])
def test_a_damaged_checkpoint_is_one_message(tmp_path, damage):
    run = make_checkpoint(tmp_path / "runs" / "tiny")
    meta_path, weights_path = run / "best.json", run / "best.safetensors"
    if damage == "json":
        meta_path.write_text(meta_path.read_text()[:40])
    elif damage == "meta-fields":
        meta = json.loads(meta_path.read_text())
        del meta["preprocessing"]
        meta_path.write_text(json.dumps(meta))
    elif damage == "weights-bytes":
        weights_path.write_bytes(weights_path.read_bytes()[:100])
    else:
        other = make_checkpoint(tmp_path / "runs" / "other", classes=("a", "b", "c"))
        weights_path.write_bytes((other / "best.safetensors").read_bytes())
    with pytest.raises(TlkitError) as caught:
        load_checkpoint(run)
    named = "best.json" if damage in ("json", "meta-fields") else "best.safetensors"
    assert named in str(caught.value) and "another run" in str(caught.value)


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KB tmpfs (root can mount one), or skip: the real errors of safetensors and torch.save."""
    import subprocess

    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("what", ["best", "resume"])
def test_a_full_disk_is_one_message_and_leaves_no_partial_file(full_disk, what):
    backbone = models.create("simple-cnn", num_classes=2, weights="none")
    with pytest.raises(TlkitError, match="could not write .*(no space left|No space left).*previous version"):
        if what == "best":  # safetensors: SafetensorError, 'os error 28'
            save_best(full_disk, backbone.model.state_dict(), meta_for(backbone, ["a", "b"]))
        else:  # torch.save: RuntimeError 'unexpected pos ...' from its zip writer
            save_resume(full_disk, {"model": backbone.model.state_dict()})
    assert not [name for name in os.listdir(full_disk) if "tmp" in name]


def test_a_loaded_checkpoint_holds_no_unfilled_tensor(tmp_path):
    """The model is built without its random initialisation and then filled: every tensor, and the
    trunk/head split's references to them, hold the saved values."""
    backbone = models.create("efficientnet_lite0", num_classes=2, weights="none", img_size=64)
    save_best(tmp_path, backbone.model.state_dict(), meta_for(backbone, ["a", "b"]))
    loaded = load_checkpoint(tmp_path).backbone
    saved = backbone.model.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in loaded.model.state_dict().items())
    model_ids = {id(parameter) for parameter in loaded.model.parameters()}
    referred = list(loaded.trunk.parameters()) + loaded.head_parameters()
    assert referred and all(id(parameter) in model_ids and not parameter.is_meta for parameter in referred)


def test_a_dangling_latest_is_named_as_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").symlink_to("gone")
    with pytest.raises(TlkitError) as error:
        resolve_run(None, runs_dir="runs")
    assert str(error.value).startswith("runs/latest names runs/gone, which no longer exists")
