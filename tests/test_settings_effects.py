"""Every setting of every command has an effect a user can see, or says why it has none there.

The cases are generated from the commands' own parsers (tlkit.cli.build_parser) crossed with the settings
schema (tlkit.config.FinetuneConfig): a command that accepts a setting needs an entry in EFFECTS, a value
and the observation it changes against the same command run without it (what trained, on what, what was
written, what was said), or a NoEffect with the reason. A new setting, or a new command taking one, without
an entry fails here. Runs are tiny (12 + 6 learnable images, simple-cnn, one thread) and in-process.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tlkit import cli, models
from tlkit.checkpoint import ResumeWriter
from tlkit.config import config_keys
from tlkit.ownership import RECORD

from conftest import make_checkpoint, make_flat, make_learnable, write_image

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Effect:
    value: str  # the flag's value
    observed: str  # the observation that must differ from the run without the flag
    extra: tuple[str, ...] = ()  # flags both runs take (the situation where the setting acts)


@dataclass(frozen=True)
class NoEffect:
    reason: str


# The run's folders are relative to each run's own folder (R): tests fill in the paths.
FEATURES = ("--precompute-features",)
STEP = ("--optimizer", "sgd", "--scheduler", "step", "--step-size", "1", "--epochs", "2")
FEWER_CATS = ("--exclude", "R/fewer-cats.csv")  # 4 cats and 6 dogs: imbalanced, below auto's ratio
FROZEN = ("--lr", "1e-12", "--epochs", "3", "--patience", "1")  # AdamW moves no weight: no epoch improves
RUN_EFFECTS = {
    "data": Effect("R/three", "trained_on"),
    "backbone": Effect("mlp", "model"),
    "weights": Effect("R/start.safetensors", "weights"),
    "img_size": Effect("32", "model"),
    "epochs": Effect("2", "history"),
    "batch_size": Effect("6", "weights"),
    "optimizer": Effect("sgd", "weights"),
    "lr": Effect("0.1", "weights"),
    "lr_scale": NoEffect("multiplies the lr by the number of torchrun processes: one process here "
                         "(tests/test_distributed.py runs two)"),
    "momentum": Effect("0.5", "weights", ("--optimizer", "sgd", "--scheduler", "none")),
    "weight_decay": Effect("3", "weights"),
    "scheduler": Effect("step", "history", ("--epochs", "2")),
    "step_size": Effect("1", "history", ("--scheduler", "step", "--epochs", "2")),
    "gamma": Effect("0.5", "history", STEP),
    "freeze": Effect("trunk", "weights"),
    "unfreeze_after": Effect("1", "phases", ("--epochs", "2")),
    "trunk_lr_mult": Effect("0.01", "weights"),
    "freeze_bn": Effect("true", "weights", ("--backbone", "mlp-bn")),
    "label_smoothing": Effect("0.2", "history"),
    "class_weights": Effect("balanced", "weights", FEWER_CATS),  # auto leaves 4 cats to 6 dogs unweighted
    "augment": Effect("none", "weights"),
    "monitor": Effect("val_acc", "said", FROZEN),
    "patience": Effect("1", "history", FROZEN[:4]),
    "precision": Effect("fp32", "trained_on"),
    "device": NoEffect("auto is cuda where there is one, else cpu: the same device on a machine without a GPU "
                       "(tests/test_runtime.py covers the choice, scripts/gpu_checks.sh the GPU)"),
    "workers": NoEffect("loader processes change the speed, never the result: the order and augmentation "
                        "are seeded per sample (tests/test_data.py proves workers 0 and 2 give the same batches)"),
    "cache_images": Effect("", "written"),
    "precompute_features": Effect("true", "phases"),
    "head_lr": Effect("0.05", "weights", FEATURES),
    "head_weight_decay": Effect("0.5", "weights", FEATURES),
    "precompute_views": Effect("2", "cache", FEATURES),
    "cache_dir": Effect("R/elsewhere", "written", FEATURES),
    "cache_dtype": Effect("float32", "cache", FEATURES),
    "exclude": Effect("R/audit.csv", "trained_on"),
    "resume_every_epochs": Effect("1", "resume_writes", ("--epochs", "2")),
    "resume_every_seconds": Effect("0", "resume_writes", ("--epochs", "2")),
    "seed": Effect("1", "weights"),
    "name": Effect("other", "written"),
    "runs_dir": Effect("R/elsewhere", "written"),
}
# `tlkit train`'s datasets are trained from scratch here (--weights none): what only a head phase reads is
# said to be unused at the start, and the effect of each is the finetune row's.
TRAIN_EFFECTS = {**RUN_EFFECTS, "data": NoEffect("train names its data with --dataset (a source flag)"),
                 "unfreeze_after": Effect("1", "phases", ("--epochs", "2")),
                 "head_lr": NoEffect("from scratch no phase trains the head alone: said at the start "
                                     "(test_unused_head_settings_are_said)"),
                 "head_weight_decay": NoEffect("as head_lr")}
SWEEP_EFFECTS = {
    "data": Effect("R/three", "sweep"),
    "backbone": Effect("mlp", "sweep"),
    "weights": Effect("R/start.safetensors", "sweep"),
    "img_size": Effect("32", "sweep"),
    "batch_size": Effect("6", "sweep"),
    "optimizer": Effect("sgd", "sweep"),
    "lr": NoEffect("the sweep sets the lr itself, from --start-lr to --end-lr"),
    "lr_scale": RUN_EFFECTS["lr_scale"],
    "momentum": Effect("0.5", "sweep", ("--optimizer", "sgd")),
    "weight_decay": Effect("3", "sweep"),
    "freeze": Effect("trunk", "sweep"),
    "trunk_lr_mult": Effect("0.01", "sweep"),
    "freeze_bn": Effect("true", "sweep", ("--backbone", "mlp-bn")),
    "label_smoothing": Effect("0.2", "sweep"),
    "class_weights": Effect("balanced", "sweep", FEWER_CATS),
    "augment": Effect("none", "sweep"),
    "precision": Effect("fp32", "sweep"),
    "device": RUN_EFFECTS["device"],
    "workers": RUN_EFFECTS["workers"],
    "cache_images": Effect("", "written"),
    "exclude": Effect("R/audit.csv", "sweep"),
    "seed": Effect("1", "sweep"),
}
CACHE_EFFECTS = {
    "data": Effect("R/three", "cache"),
    "backbone": Effect("mlp", "cache"),
    "weights": Effect("R/start.safetensors", "features"),
    "img_size": Effect("32", "features"),
    "augment": Effect("none", "features", ("--precompute-views", "1")),
    "precision": Effect("fp32", "features"),
    "device": RUN_EFFECTS["device"],
    "workers": RUN_EFFECTS["workers"],
    "seed": Effect("1", "features"),  # the random initialisation of --weights none
    "exclude": Effect("R/audit.csv", "cache"),
    "precompute_views": Effect("1", "cache"),
    "cache_dir": Effect("R/elsewhere", "written"),
    "cache_dtype": Effect("float32", "cache"),
}
AUDIT_EFFECTS = {key: CACHE_EFFECTS[key] for key in ("weights", "img_size", "precision", "device", "workers",
                                                    "cache_dir", "cache_dtype")}
AUDIT_EFFECTS.update({"data": Effect("R/three", "findings"), "backbone": Effect("mlp", "written"),
                      "seed": Effect("5", "findings"),
                      "weights": Effect("R/start.safetensors", "findings"),
                      "precision": Effect("fp32", "findings")})
# predict, evaluate and export read a trained run: R/runs/latest, or R/other-runs/latest (another model).
SAME_RESULT = NoEffect("images per batch change the speed and memory, not the probabilities (each image is "
                       "scored alone: BatchNorm in eval mode)")
INFERENCE_EFFECTS = {"batch_size": SAME_RESULT, "device": RUN_EFFECTS["device"], "workers": RUN_EFFECTS["workers"],
                     "precision": Effect("fp32", "content"), "runs_dir": Effect("R/other-runs", "content")}
EFFECTS = {"split": {"exclude": Effect("R/flat-audit.csv", "content"), "seed": Effect("2", "content")},
           "cache": {"data": Effect("R/three", "output"), "cache_dir": Effect("R/three/.tlkit-cache", "output")},
           "predict": INFERENCE_EFFECTS,
           "evaluate": {**INFERENCE_EFFECTS, "precision": NoEffect(
               "evaluate reports counts and rates of the labels: bf16 moves probabilities in the third decimal, "
               "not which class wins here (predict's file shows the probabilities)")},
           "export": {"runs_dir": Effect("R/other-runs", "content")},
           "finetune": RUN_EFFECTS, "train": TRAIN_EFFECTS, "lr-find": SWEEP_EFFECTS, "precompute": CACHE_EFFECTS,
           "audit": AUDIT_EFFECTS}


def _command_actions(command: str) -> list:
    parser = cli.build_parser()
    commands = next(action for action in parser._actions if isinstance(action.choices, dict))
    return commands.choices[command]._actions


def _accepted(command: str) -> list[str]:
    """The settings the command's parser takes, as a flag or in a place of its own (audit's DATA)."""
    return sorted({action.dest for action in _command_actions(command)} & set(config_keys()))


def _is_positional(command: str, key: str) -> bool:
    return any(action.dest == key and not action.option_strings for action in _command_actions(command))


def _cases() -> list[tuple[str, str]]:
    parser = cli.build_parser()
    names = next(action for action in parser._actions if isinstance(action.choices, dict)).choices
    return [(command, key) for command in names for key in _accepted(command)]


def test_every_command_that_takes_settings_is_in_the_table():
    assert {command for command, _ in _cases()} == set(EFFECTS)


# ---------------------------------------------------------------- running a command and looking at it


def _world(root: Path) -> Path:
    """R: the learnable split, a three-class copy, a weights file, a list of photos to exclude."""
    data = make_learnable(root / "data", train_per_class=6, val_per_class=3)
    shutil.copytree(data, root / "three")
    for subset, count in (("training", 6), ("validation", 3)):
        for n in range(count):
            write_image(root / "three" / subset / "bird" / f"{n}.png", size=(24, 24), color=100 + n)
    (root / "audit.csv").write_text("path,action\ntraining/cat/0.png,exclude\ntraining/dog/1.png,exclude\n")
    (root / "fewer-cats.csv").write_text("path,action\ntraining/cat/0.png,exclude\ntraining/cat/1.png,exclude\n")
    torch.manual_seed(7)
    made = models.create("simple-cnn", num_classes=2, weights="none", img_size=24)
    save_file({k: v.contiguous() for k, v in made.model.state_dict().items()}, str(root / "start.safetensors"))
    make_flat(root / "flat", {"cat": 4, "dog": 4})
    (root / "flat-audit.csv").write_text("path,action\ncat.0.jpg,exclude\n")
    make_checkpoint(root / "runs" / "trained", img_size=24)
    make_checkpoint(root / "other-runs" / "trained", img_size=24, seed=1)
    make_checkpoint(root / "multi-runs" / "trained", img_size=24, thresholds=[0.99, 0.99])
    cells = {"cat.2.jpg": "cat;dog", "dog.2.jpg": "cat;dog"}  # one label "cat;dog" unless --label-sep ';'
    (root / "labels.csv").write_text("path,label\n" + "".join(
        f"flat/{label}.{n}.jpg,{cells.get(f'{label}.{n}.jpg', label)}\n" for label in ("cat", "dog") for n in range(4)))
    assert cli.main(["-q", "precompute", "--data", str(root / "three"), "--backbone", "simple-cnn", "--weights", "none",
                     "--img-size", "24", "--workers", "0"]) == 0
    return root


def _argv(command: str, root: Path, flags: tuple[str, ...], positional: str | None = None) -> list[str]:
    """The command on R's files, with `flags`; positional: the setting given in the place of its first argument."""
    model = ["--backbone", "simple-cnn"] if "backbone" in _accepted(command) else []
    base = {"split": ["R/flat", "--val", "0.5", "--out", "R/split"], "cache": ["ls", "--data", "R/data"],
            "predict": ["R/data/validation", "--runs-dir", "R/runs", "--out", "R/predictions.csv"],
            "evaluate": ["R/data/validation", "--runs-dir", "R/runs", "--out", "R/evaluation"],
            "export": ["--runs-dir", "R/runs", "--format", "onnx", "--out", "R/model.onnx"],
            "finetune": ["--data", "R/data", "--runs-dir", "R/runs", "--name", "run", "--epochs", "1"],
            "train": ["--dataset", "R/data", "--runs-dir", "R/runs", "--name", "run", "--epochs", "1"],
            "lr-find": ["--data", "R/data", "--steps", "3", "--out", "R/lr.png"],
            "precompute": ["--data", "R/data"],
            "audit": ["R/data", "--out", "R/report"]}[command]
    common = {"weights": "none", "img_size": "24", "workers": "0", "batch_size": "4", "device": "cpu"}
    taken = [arg for key, value in common.items() if key in _accepted(command) for arg in (_flag(key), value)]
    argv = [command, *([positional, *base[1:]] if positional else base), *model, *taken, *flags]
    if command == "train":
        argv = [("--model" if arg == "--backbone" else arg) for arg in argv]
    return [arg.replace("R/", f"{root}/") if arg.startswith("R/") else arg for arg in argv]


# How long things took: the one part of what a command says and writes that differs from run to run.
TIMINGS = r"[\d,.]+ ?(s|ms)\b|[\d,.]+ (a second|images/s|img/s)|\"(seconds|images_per_s)\": [\d.eE+-]+"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _observe(root: Path, code: int, out: str, err: str, resume_writes: list[int]) -> dict:
    """What a user can see of one command: what it said and wrote, and what trained on what."""
    inputs = {"data", "three", "audit.csv", "fewer-cats.csv", "start.safetensors", "flat", "flat-audit.csv",
              "other-runs", "multi-runs", "labels.csv"}
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                     if p.is_file() and p.relative_to(root).parts[0] not in inputs and "tb" not in p.parts)
    written += sorted(p.relative_to(root).as_posix() for p in root.glob("*/.tlkit-cache/**/*") if p.is_file())
    caches = [p for p in root.rglob("*") if p.is_file() and ("cache" in p.as_posix() or "elsewhere" in p.parts)
              and p.suffix in (".npy", ".json", ".bin", ".u8", ".f16", ".f32")]
    said = re.sub(TIMINGS, "", err)
    texts = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".csv", ".json", ".onnx") and p.name != RECORD
             and p.relative_to(root).parts[0] in ("split", "predictions.csv", "evaluation", "model.onnx", "model.onnx.json")]
    plain = lambda text: re.sub(TIMINGS, "", text.replace(str(root), "R"))  # noqa: E731
    seen = {"code": code, "written": written, "output": plain(out + err),
            "content": {p.relative_to(root).as_posix(): hashlib.sha256(plain(p.read_bytes().decode("latin-1"))
                                                                       .encode("latin-1")).hexdigest() for p in texts}, "said": [line for line in said.splitlines() if "early stop" in line],
            "cache": sorted((p.relative_to(root).as_posix(), p.stat().st_size) for p in caches),
            "features": sorted(_digest(p) for p in caches if p.suffix != ".json"),
            "resume_writes": resume_writes, "sweep": _digest(root / "lr.png") if (root / "lr.png").is_file() else None}
    first = re.search(r"fine-tuning (.*?) -> ", err.replace("\n", " "))
    seen["trained_on"] = first and first.group(1)
    run = root / "runs" / "run"
    if (run / "best.json").is_file():
        meta = json.loads((run / "best.json").read_text())
        seen.update(weights=_digest(run / "best.safetensors"), model=(meta["backbone"], meta["preprocessing"]),
                    phases=meta["phases"], history=[
                        {k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
                        for line in (run / "metrics.jsonl").read_text().splitlines()])
    if (root / "report" / "audit.csv").is_file():
        seen["findings"] = (root / "report" / "audit.csv").read_text()
    return seen


def _run(command: str, root: Path, flags: tuple[str, ...], capsys, monkeypatch, positional: str | None = None) -> dict:
    """The command on a fresh copy of the world (no cache or run of another case in it), looked at."""
    writes: list[int] = []
    with monkeypatch.context() as patch:
        real_write = ResumeWriter._write
        patch.setattr(ResumeWriter, "_write", lambda self, state: (writes.append(state["epoch"]),
                                                                    real_write(self, state)))
        capsys.readouterr()
        code = cli.main(_argv(command, root, flags, positional))
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    return _observe(root, code, out, err, writes)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return _world(tmp_path_factory.mktemp("world"))


_baselines: dict = {}


def _fresh(world: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(world, root, symlinks=True)
    return root


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


@pytest.mark.parametrize("command,key", _cases())
def test_a_setting_changes_what_the_user_sees_or_says_why_not(command, key, world, tmp_path, capsys, monkeypatch):
    entry = EFFECTS[command].get(key)
    assert entry is not None, (f"`tlkit {command}` takes {_flag(key)}: add to EFFECTS[{command!r}] what it changes "
                               f"(an Effect), or why nothing there (a NoEffect)")
    if isinstance(entry, NoEffect):
        assert len(entry.reason) > 20
        return
    baseline = _baselines.get((command, entry.extra))
    if baseline is None:
        baseline = _baselines[(command, entry.extra)] = _run(command, _fresh(world, tmp_path, "base"), entry.extra,
                                                             capsys, monkeypatch)
    root = _fresh(world, tmp_path, "given")
    value = entry.value.replace("R/", f"{root}/") if entry.value.startswith("R/") else entry.value
    if _is_positional(command, key):
        given = _run(command, root, entry.extra, capsys, monkeypatch, positional=value)
    else:
        given = _run(command, root, (*entry.extra, _flag(key), *([value] if value else [])), capsys, monkeypatch)
    assert given[entry.observed] != baseline[entry.observed], (
        f"`tlkit {command} {_flag(key)} {entry.value}` left {entry.observed} as it was: {given[entry.observed]!r}")


@pytest.mark.parametrize("command", sorted(EFFECTS))
def test_the_same_command_twice_is_seen_the_same(command, world, tmp_path, capsys, monkeypatch):
    """What makes a difference above mean something: two runs of one command see the same."""
    first = _run(command, _fresh(world, tmp_path, "one"), (), capsys, monkeypatch)
    second = _run(command, _fresh(world, tmp_path, "two"), (), capsys, monkeypatch)
    assert first == second


# The flags of several labels a photo (tlkit/multilabel.py), a command's own and no run setting: (command, the
# first argument, flags both runs take, the flag under test with its value, the observation it changes).
MULTI_LABEL_FLAGS = [
    ("split", "R/labels.csv", (), ("--multi-label",), "content"),
    ("split", "R/labels.csv", ("--multi-label",), ("--label-sep", ";"), "content"),
    ("predict", None, ("--runs-dir", "R/multi-runs"), ("--threshold", "0.01"), "content"),
]


@pytest.mark.parametrize("command, first, extra, flag, observed", MULTI_LABEL_FLAGS, ids=lambda value: str(value))
def test_a_multi_label_flag_changes_what_the_user_sees(command, first, extra, flag, observed, world, tmp_path, capsys,
                                                       monkeypatch):
    def run(name: str, flags: tuple[str, ...]) -> dict:
        root = _fresh(world, tmp_path, name)
        positional = first and first.replace("R/", f"{root}/")
        return _run(command, root, flags, capsys, monkeypatch, positional=positional)

    assert run("base", extra)[observed] != run("given", (*extra, *flag))[observed]
