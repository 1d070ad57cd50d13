"""The training loop: schedulers, freezing, best-weight restore, resume, early stopping, seeds, lr-find."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tlkit.backbone import head_keys
from tlkit.callbacks import Callback
from tlkit.checkpoint import load_checkpoint
from tlkit.config import make_config
from tlkit.errors import TlkitError
from tlkit.finetuning import finetune
from tlkit.lrfind import build_trainer, lr_range_test
from tlkit.report import plot_lr_find
from tlkit.train import Diverged, evaluate, fit, unused_momentum

from conftest import interrupt_at, make_learnable

CLASSES = ["cat", "dog"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_learnable(tmp_path_factory.mktemp("data"))


def settings(data_dir: Path, **overrides) -> dict:
    base = dict(data=str(data_dir), backbone="simple-cnn", weights="none", epochs=2, batch_size=8, precision="fp32",
                workers=0, optimizer="sgd", lr=0.01, scheduler="none", seed=3)
    return {**base, **overrides}


def trainer_for(data_dir: Path, **overrides):
    return build_trainer(make_config(settings(data_dir, **overrides)))


def snapshot(module: torch.nn.Module) -> dict:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("scheduler", ["step", "plateau", "cosine", "onecycle", "none"])
def test_every_scheduler_runs_without_pytorch_warnings(data_dir, scheduler):
    trainer, _, _ = trainer_for(data_dir, scheduler=scheduler, epochs=3, step_size=1, gamma=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(trainer)
    assert not [w for w in caught if "lr_scheduler" in str(w.filename) or "scheduler" in str(w.message)]
    lrs = [row["lr"] for row in trainer.history]
    assert len(lrs) == 3
    if scheduler == "step":  # recorded before the epoch's step: 0.01, then halved each epoch
        assert lrs == pytest.approx([0.01, 0.005, 0.0025])
    elif scheduler == "none":
        assert lrs == [0.01, 0.01, 0.01]
    elif scheduler in ("cosine", "onecycle"):
        assert lrs[-1] < lrs[0] or scheduler == "onecycle" and len(set(lrs)) == 3


def test_a_momentum_that_one_cycle_or_adamw_does_not_use_is_said(data_dir):
    # One-cycle moves SGD's momentum itself (0.95 -> 0.85 -> 0.95): a --momentum given trains as any other would.
    trained = []
    for momentum in (0.1, 0.5):
        trainer, _, _ = trainer_for(data_dir, scheduler="onecycle", momentum=momentum, epochs=1)
        fit(trainer)
        trained.append(snapshot(trainer.model))
    assert same(*trained)
    said = {key: unused_momentum(make_config(settings(data_dir, **values))) for key, values in {
        "onecycle": {"scheduler": "onecycle", "momentum": 0.5}, "adamw": {"optimizer": "adamw", "momentum": 0.5},
        "step": {"scheduler": "step", "momentum": 0.5}, "off": {"scheduler": "onecycle", "momentum": 0},
        "default": {"scheduler": "onecycle"}}.items()}
    assert "--momentum 0.5 is not used: the onecycle schedule moves SGD's momentum itself" in said["onecycle"]
    assert "--momentum 0.5 is not used: it is SGD's, and adamw has none" in said["adamw"]
    assert said["step"] is said["off"] is said["default"] is None  # used; 0 turns one-cycle's off; the default


def initial_model(run) -> dict:
    """The run's model as it started: built again, seeded, from its config.yaml."""
    import yaml

    from tlkit.config import make_config
    from tlkit.run_backbone import create_backbone, run_config

    config = run_config(make_config(yaml.safe_load((run.run_dir / "config.yaml").read_text())))
    return snapshot(create_backbone(config, run.classes).model)


def test_frozen_trunk_stays_put_and_unfreeze_after_thaws_it(data_dir, tmp_path):
    states, optimized = [], []

    class Record(Callback):
        def on_fit_start(self, trainer):
            optimized.append([group["name"] for group in trainer.optimizer.param_groups])

        def on_epoch_end(self, trainer):
            states.append(snapshot(trainer.model))

    run = finetune(**settings(data_dir, backbone="timm:test_resnet", img_size=24, unfreeze_after=1, epochs=2,
                              runs_dir=str(tmp_path / "runs"), name="thaw"), callbacks=[Record()])
    # Epoch 1: the head alone, with an optimizer of its own; the trunk (BatchNorm statistics included) does
    # not move. Epoch 2: every layer, with another optimizer.
    assert optimized == [["head", "head (no decay)"], ["trunk", "trunk (no decay)", "head", "head (no decay)"]]
    head = head_keys(run.backbone.model, run.backbone.head)
    start = initial_model(run)
    assert all(torch.equal(start[key], states[0][key]) for key in start if key not in head)
    assert not all(torch.equal(states[0][key], states[1][key]) for key in start if key not in head)


def test_freeze_trunk_trains_the_head_only(data_dir, tmp_path):
    run = finetune(**settings(data_dir, freeze="trunk", epochs=1, runs_dir=str(tmp_path / "runs"), name="head"))
    start, now = initial_model(run), snapshot(run.backbone.model)
    head = head_keys(run.backbone.model, run.backbone.head)
    assert all(torch.equal(start[key], now[key]) for key in now if key not in head)
    assert not all(torch.equal(start[key], now[key]) for key in head)


def test_trunk_lr_mult_gives_the_trunk_its_own_lr(data_dir):
    trainer, _, _ = trainer_for(data_dir, lr=0.02, trunk_lr_mult=0.1)
    lrs = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert lrs == pytest.approx({"trunk": 0.002, "trunk (no decay)": 0.002, "head": 0.02, "head (no decay)": 0.02})


def test_a_resume_file_with_other_parameter_groups_is_one_message(data_dir):
    """A resume file from a tlkit that grouped the parameters otherwise (trunk and head, every parameter decayed)
    cannot feed this optimizer: the message says why, instead of PyTorch's ValueError."""
    trainer, _, _ = trainer_for(data_dir, lr=0.02, trunk_lr_mult=0.1)
    state = trainer.state_dict()
    groups = state["optimizer"]["param_groups"]
    state["optimizer"]["param_groups"] = [{**groups[0], "params": groups[0]["params"] + groups[1]["params"]},
                                          {**groups[2], "params": groups[2]["params"] + groups[3]["params"]}]
    with pytest.raises(TlkitError, match="parameter groups trunk, head, and this tlkit trains trunk, trunk "
                                         r"\(no decay\), head, head \(no decay\)"):
        trainer.load_state_dict(state)


class LrBump(Callback):
    """From epoch `at` on, another lr; a negative one climbs the loss, so the last epochs are worse."""

    def __init__(self, at: int, lr: float):
        self.at, self.lr = at, lr

    def on_epoch_start(self, trainer):
        if trainer.epoch + 1 >= self.at:
            for group in trainer.optimizer.param_groups:
                group["lr"] = self.lr


def test_restored_model_scores_the_best_epoch_not_the_last(data_dir, tmp_path):
    result = finetune(**settings(data_dir, epochs=4, lr=0.05, runs_dir=str(tmp_path / "runs"), name="best"),
                      callbacks=[LrBump(at=3, lr=-0.5)])
    history = result.history
    best_row = min(history, key=lambda row: row["val_loss"])
    assert result.best_epoch == best_row["epoch"] == 2
    assert not history[-1]["val_loss"] <= best_row["val_loss"]  # the last epoch is worse (or NaN)
    trainer, _, data = trainer_for(data_dir)
    rescored = evaluate(result.backbone.model, data.val_loader, trainer.normalize)
    assert rescored["val_loss"] == best_row["val_loss"]
    assert rescored["val_acc"] == best_row["val_acc"] == result.report["accuracy"]
    reloaded = load_checkpoint(result.run_dir)
    assert evaluate(reloaded.backbone.model, data.val_loader, trainer.normalize)["val_loss"] == best_row["val_loss"]


def test_a_loss_that_becomes_nan_stops_the_run_at_once_and_keeps_the_best_weights(data_dir, tmp_path):
    class BreakWeights(Callback):  # what too high an lr does, here at the start of epoch 2
        def on_epoch_start(self, trainer):
            if trainer.epoch == 1:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(math.nan)

    batches = []

    class CountBatches(Callback):
        def on_batch_end(self, trainer):
            batches.append(trainer.epoch + 1)

    run = tmp_path / "runs" / "nan"
    with pytest.raises(Diverged, match=r"the loss became nan in epoch 2, by batch 1 of 3: the training diverged, "
                                       r"and stopped\..*lower --lr.*best.safetensors keeps the best epoch before it"):
        finetune(**settings(data_dir, epochs=4, runs_dir=str(tmp_path / "runs"), name="nan"),
                 callbacks=[BreakWeights(), CountBatches()])
    assert batches == [1, 1, 1, 2]  # stopped at the first read of the loss, not at the end of the run
    saved = load_checkpoint(run)
    assert saved.meta.epoch == 1
    assert all(torch.isfinite(value).all() for value in saved.backbone.model.state_dict().values())
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.slow
def test_resume_after_interruption_equals_an_uninterrupted_run(data_dir, tmp_path):
    recipe = settings(data_dir, epochs=4, optimizer="adamw", lr=3e-3, scheduler="onecycle",
                      monitor="val_acc", patience=3, runs_dir=str(tmp_path / "runs"))
    whole = finetune(**recipe, name="whole")
    with pytest.raises(KeyboardInterrupt):
        finetune(**recipe, name="cut", callbacks=[interrupt_at(2)])
    resumed = finetune(resume=tmp_path / "runs" / "cut")
    timing = ("seconds", "images_per_s")
    strip = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert same(resumed.backbone.model.state_dict(), whole.backbone.model.state_dict())
    last = [torch.load(run / "resume.pt", weights_only=True)["model"] for run in (whole.run_dir, resumed.run_dir)]
    assert same(*last)
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == [1, 2, 3, 4]


def test_same_seed_repeats_exactly_on_the_cpu(data_dir):
    states = []
    for _ in range(2):
        trainer, backbone, _ = trainer_for(data_dir, epochs=1)
        fit(trainer)
        states.append(snapshot(backbone.model))
    assert same(*states)


def test_early_stopping_stops(data_dir):
    trainer, _, _ = trainer_for(data_dir, epochs=10, lr=1e-9, monitor="val_acc", patience=2)
    fit(trainer)
    assert len(trainer.history) == 3
    assert "early stop" in trainer.stop_reason


def test_loss_is_averaged_per_sample_and_accuracy_is_a_float(data_dir):
    trainer, backbone, data = trainer_for(data_dir, batch_size=3)  # 8 images: batches of 3, 3, 2
    result = evaluate(backbone.model, data.val_loader, trainer.normalize, collect=True)
    images = torch.cat([trainer.normalize(batch) for batch, _, _ in data.val_loader])
    targets = torch.tensor(result["targets"])
    with torch.inference_mode():
        expected = torch.nn.functional.cross_entropy(backbone.model(images), targets)
    assert result["val_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert isinstance(result["val_acc"], float)


def test_out_of_gpu_memory_suggests_a_smaller_batch(data_dir, monkeypatch):
    import tlkit.train

    def out_of_memory(trainer):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(tlkit.train, "train_one_epoch", out_of_memory)
    trainer, _, _ = trainer_for(data_dir, batch_size=8)
    with pytest.raises(TlkitError, match="--batch-size 4"):
        fit(trainer)


def test_an_image_that_fails_to_decode_is_skipped_and_counted(tmp_path):
    data_dir = make_learnable(tmp_path / "data", train_per_class=6, val_per_class=2)
    broken = data_dir / "training" / "cat" / "broken.png"
    broken.write_bytes(b"not a png at all")
    trainer, _, _ = trainer_for(data_dir, epochs=1, batch_size=16)  # one batch: no short tail dropped
    fit(trainer)
    assert trainer.skipped == {str(broken)}
    assert len(trainer.history) == 1


def test_lr_find_sweeps_suggests_and_restores_the_state(data_dir, tmp_path):
    trainer, backbone, _ = trainer_for(data_dir, optimizer="adamw")
    fit(trainer)  # so the optimizer has state to restore
    model_before = snapshot(backbone.model)
    optimizer_before = trainer.optimizer.state_dict()
    moments = {k: v["exp_avg"].clone() for k, v in optimizer_before["state"].items()}
    lrs_before = [group["lr"] for group in trainer.optimizer.param_groups]
    result = lr_range_test(trainer, start_lr=1e-5, end_lr=1.0, steps=12)
    assert result.lrs == sorted(result.lrs) and 1e-5 <= result.suggested_lr <= 1.0
    assert same(snapshot(backbone.model), model_before)
    assert all(torch.equal(trainer.optimizer.state_dict()["state"][k]["exp_avg"], v) for k, v in moments.items())
    assert [group["lr"] for group in trainer.optimizer.param_groups] == lrs_before
    plot_lr_find(tmp_path / "lr.png", result)
    assert (tmp_path / "lr.png").stat().st_size > 1000


def test_lr_suggestion_follows_the_fall_and_admits_noise():
    from tlkit.lrfind import suggest

    lrs = [10 ** (-7 + 8 * i / 99) for i in range(100)]
    # Flat until 1e-4, falls fastest around 1e-3, bottoms out at 1e-2, explodes after.
    falling = [0.7 - 0.4 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + (0.5 * (lr - 1e-2) if lr > 1e-2 else 0)
               for lr in lrs]
    result = suggest(lrs, falling)
    assert result["loss_fell"] and 3e-4 <= result["suggested_lr"] <= 3e-3
    rng = np.random.default_rng(0)
    flat = [0.695 + 0.002 * rng.standard_normal() for _ in lrs]  # nothing learnt: noise only
    assert not suggest(lrs, flat)["loss_fell"]


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_the_trunks_batchnorm_statistics_while_its_weights_train(data_dir, freeze_bn):
    # mlp-bn's trunk holds BatchNorm1d layers; a pretrained trunk gets freeze_bn by default.
    trainer, backbone, _ = trainer_for(data_dir, backbone="mlp-bn", img_size=24, epochs=1, freeze_bn=freeze_bn)
    norms = [m for m in backbone.trunk.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and (len(trainer.frozen_norms) == len(norms)) == freeze_bn
    stats = [m.running_mean.clone() for m in norms]
    weights = [m.weight.detach().clone() for m in norms]
    fit(trainer)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, norms)) == freeze_bn
    assert not all(torch.equal(a, m.weight) for a, m in zip(weights, norms))  # the weights train either way


def test_runs_latest_moves_only_once_a_run_has_a_best_checkpoint(data_dir, tmp_path):
    from tlkit.checkpoint import resolve_run

    class CrashFirstEpoch(Callback):
        def on_epoch_start(self, trainer):
            raise RuntimeError("out of disk")  # a crash before any epoch ended

    runs = tmp_path / "runs"
    good = finetune(**settings(data_dir, epochs=1, runs_dir=str(runs)), name="good")
    with pytest.raises(RuntimeError, match="out of disk"):
        finetune(**settings(data_dir, epochs=1, runs_dir=str(runs)), name="crashed", callbacks=[CrashFirstEpoch()])
    assert not (runs / "crashed").exists()  # nothing was trained: the name stays free
    assert resolve_run(None, runs_dir=runs) == good.run_dir.resolve()


@pytest.mark.parametrize("supported", [True, False])
def test_bf16_on_the_cpu_where_it_is_supported_channels_last_either_way(data_dir, monkeypatch, capsys, supported):
    import tlkit.runtime as runtime

    monkeypatch.setattr(runtime, "bf16_supported", lambda device: supported)
    trainer, backbone, _ = trainer_for(data_dir, precision="bf16", epochs=1)
    conv = next(m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert trainer.compute.bf16 == supported
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # faster in fp32 as well
    with trainer.autocast():
        assert torch.is_autocast_enabled("cpu") == supported
    fit(trainer)
    assert math.isfinite(trainer.history[-1]["train_loss"])
    assert runtime.compute_for("cpu", "bf16").words() == (
        "cpu, bf16" if supported else "cpu, fp32 (this CPU has no bf16 instructions)")
    fp32, _, _ = trainer_for(data_dir, precision="fp32", epochs=1)
    assert not fp32.compute.bf16


def test_ctrl_c_before_the_first_epoch_ends_does_not_suggest_resume(data_dir, tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        finetune(**settings(data_dir, runs_dir=str(tmp_path / "runs")), name="early", callbacks=[interrupt_at(1)])
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "--resume" not in err
    assert not (tmp_path / "runs" / "early" / "resume.pt").exists()


def test_out_of_memory_on_the_cpu_suggests_a_smaller_batch(data_dir, monkeypatch):
    trainer, backbone, _ = trainer_for(data_dir, epochs=1)

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 9663676416 bytes.")

    monkeypatch.setattr(trainer, "train_model", exhausted)
    with pytest.raises(TlkitError, match=r"out of memory \(the computer's.*--batch-size 4"):
        fit(trainer)


def test_the_runs_end_reads_the_best_epochs_validation_rather_than_predicting_it_again(data_dir, tmp_path,
                                                                                        monkeypatch):
    import tlkit.finetuning as finetuning

    passes = []
    for name in ("evaluate", "predict_files"):  # what the end would call to predict the validation photos again
        monkeypatch.setattr(finetuning, name, lambda *args, _name=name, _real=getattr(finetuning, name), **kw:
                            passes.append(_name) or _real(*args, **kw))
    result = finetune(**settings(data_dir, epochs=3, runs_dir=str(tmp_path / "runs"), name="once"))
    best_row = next(row for row in result.history if row["epoch"] == result.best_epoch)
    assert passes == [] and result.report["accuracy"] == best_row["val_acc"]
    rule = json.loads((result.run_dir / "best.json").read_text())["familiar"]
    assert rule["reference"] == "validation" and rule["features"] == "the validation pass of the best weights"


@pytest.mark.parametrize("name", ["timm:resnetv2_18", "timm:test_efficientnet", "vgg16", "simple-cnn"])
def test_validation_keeps_the_trunks_features_as_predict_computes_them_whatever_the_head(name):
    """A 1x1 convolution head (ResNetV2) that the model calls without the cut's wrapper, a Linear, a head of
    several layers (VGG): the first layer's input is the trunk's output."""
    from tlkit import models
    from tlkit.backbone import first_layer

    torch.manual_seed(0)
    backbone = models.create(name, 3, weights="none", img_size=32 if name != "vgg16" else 64)
    backbone.model.eval()
    images = torch.randn(5, 3, *backbone.preprocessing.input_size)
    result = evaluate(backbone.model, [(images, torch.tensor([0, 1, 2, 0, 1]), [])], lambda batch: batch,
                      collect=True, features_of=first_layer(backbone.head))
    with torch.inference_mode():
        expected = backbone.trunk(images)
    torch.testing.assert_close(torch.from_numpy(result["features"]), expected.flatten(1), rtol=1e-4, atol=1e-5)
