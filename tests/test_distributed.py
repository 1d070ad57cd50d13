"""Two processes on the CPU (gloo), set up as torchrun sets them up: fine-tune (from the images and
from the decoded-image cache), precompute, predict and evaluate give what one process gives, rank 0 alone writes and prints, and the run resumes in one process.

One spawned job runs all three commands through cli.main (a process start costs seconds here);
the tests compare its outputs with one-process runs in the pytest process.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tlkit.ownership import RECORD
import torch
import torch.multiprocessing as mp

from conftest import make_learnable
from tlkit import finetune
from tlkit.checkpoint import LATEST, load_checkpoint
from tlkit.checkpoint_format import FAMILIAR
from tlkit.cli import main

WORLD = 2
PER_PROCESS_BATCH = 4
# epochs 1: the head alone on a frozen trunk (DistributedDataParallel with find_unused_parameters;
# AdamW would decay the trunk if its missing gradients came back as zeros), then every layer.
RECIPE = dict(backbone="simple-cnn", weights="none", img_size=16, workers=0, device="cpu", precision="fp32",
              optimizer="adamw", lr=0.01, scheduler="step", step_size=1, gamma=0.5, unfreeze_after=1, seed=3)
FEATURES = ["--backbone", "simple-cnn", "--weights", "none", "--img-size", "16", "--workers", "0", "--device", "cpu",
            "--cache-dtype", "float32", "--precompute-views", "2"]
# Per process, DistributedDataParallel averages the gradients of the mean losses of equal shards: the
# gradient of the mean over the whole batch, up to the order of float32 sums. Those rounding differences
# (~1e-7) grow a little over the steps, so values are compared with rtol 1e-4; accuracies match exactly.
# simple-cnn has no BatchNorm (whose statistics would be per process) and no dropout.
RTOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _flags(settings: dict) -> list[str]:
    return [text for key, value in settings.items() for text in (f"--{key.replace('_', '-')}", str(value))]


def _as_rank(rank: int, root: str, port: int) -> None:
    """This spawned process as torchrun would start rank `rank`; its stdout/stderr go to root/rank<N>.out/.err."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    for fd, suffix in ((1, "out"), (2, "err")):
        os.dup2(os.open(f"{root}/rank{rank}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)


def _job(rank: int, root: str, port: int) -> None:
    """One process of the two, with torchrun's environment; its stdout/stderr go to root/rank<N>.out/.err."""
    _as_rank(rank, root, port)
    codes = [
        main(["finetune", "--data", f"{root}/data", "--runs-dir", f"{root}/runs", "--epochs", "2",
              "--batch-size", str(PER_PROCESS_BATCH), *_flags(RECIPE)]),  # no --name: rank 0 names the folder
        main(["precompute", "--data", f"{root}/data", "--cache-dir", f"{root}/cache2", "--batch-size", "5", *FEATURES]),
        main(["predict", f"{root}/data/validation", "--checkpoint", f"{root}/runs/{LATEST}", "--device", "cpu",
              "--workers", "0", "--batch-size", "3", "--out", f"{root}/predictions.csv"]),
        main(["evaluate", f"{root}/data/validation", "--checkpoint", f"{root}/runs/{LATEST}", "--device", "cpu",
              "--workers", "0", "--batch-size", "3", "--out", f"{root}/evaluate"]),
        main(["finetune", "--data", f"{root}/data", "--runs-dir", f"{root}/runs-cached", "--epochs", "2",
              "--batch-size", str(PER_PROCESS_BATCH), "--cache-images", "--cache-dir", f"{root}/images",
              *_flags(RECIPE)]),
    ]
    sys.stdout.flush()
    if any(codes):
        raise SystemExit(f"rank {rank}: exit codes {codes}")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> Path:
    """The folder the two-process job worked in (data, runs, cache2, predictions.csv, rank*.out/err)."""
    root = tmp_path_factory.mktemp("ddp")
    # 28 training images: 14 a process, 4 + 4 + 4 + 2; one process at batch 8: 8 + 8 + 8 + 4. (With 13 a class, each
    # process would leave out a lone last image that one process trains on: BatchNorm is per process.)
    make_learnable(root / "data", train_per_class=14, val_per_class=5, size=16)
    # An odd number of validation images: the two shares differ in length, and every image counts once.
    shutil.copy(root / "data/validation/cat/0.png", root / "data/validation/cat/extra.png")
    context = mp.start_processes(_job, args=(str(root), _free_port()), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):
        if time.monotonic() > deadline:  # a collective that waits forever: fail, don't hang CI
            for process in context.processes:
                process.kill()
            pytest.fail("the two-process job did not finish in 300 s")
    return root


@pytest.fixture(scope="module")
def one_process(two_processes, tmp_path_factory):
    """The same fine-tune in one process, 3 epochs, its batch as large as the two processes' together."""
    return finetune(data=str(two_processes / "data"), runs_dir=str(tmp_path_factory.mktemp("one") / "runs"),
                    epochs=3, batch_size=WORLD * PER_PROCESS_BATCH, **RECIPE)


def _assert_rows_match(ours: list[dict], theirs: list[dict], atol: float = 0.0) -> None:
    assert len(ours) == len(theirs)
    for mine, single in zip(ours, theirs):
        assert mine["epoch"] == single["epoch"]
        assert mine["train_acc"] == single["train_acc"] and mine["val_acc"] == single["val_acc"]
        for key in ("train_loss", "val_loss", "lr"):
            assert mine[key] == pytest.approx(single[key], rel=RTOL, abs=atol)


def test_finetune_matches_one_process_and_rank_0_alone_writes(two_processes, one_process):
    runs = two_processes / "runs"
    run_dirs = [p for p in runs.iterdir() if p.name != LATEST]
    assert len(run_dirs) == 1 and (runs / LATEST).resolve() == run_dirs[0].resolve()
    run_dir = run_dirs[0]
    from tlkit.callbacks import tensorboard_available

    expected = ["config.yaml", "best.safetensors", "best.json", "resume.pt", "metrics.jsonl", "curves.png",
                "confusion.png", "report.json", FAMILIAR, RECORD, *(["tb"] if tensorboard_available() else [])]
    # no leftover temporary files of a second writer
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(expected)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    _assert_rows_match(history, one_process.history[:2])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["macro avg"]["support"] == 11  # the whole validation set, not rank 0's share
    # Rank 0 printed the results and the effective batch; rank 1 printed nothing.
    assert "validation accuracy of the saved model" in (two_processes / "rank0.out").read_text()
    assert "effective batch size 8 (4 per process x 2)" in (two_processes / "rank0.err").read_text()
    assert (two_processes / "rank1.out").read_text() == ""
    assert "fine-tuning" not in (two_processes / "rank1.err").read_text()
    # The checkpoint is the unwrapped model: it loads in one process and scores the best epoch's metric.
    checkpoint = load_checkpoint(run_dir)
    assert not any(key.startswith("module.") for key in checkpoint.backbone.model.state_dict())
    best_epoch = json.loads((run_dir / "best.json").read_text())["epoch"]
    assert report["accuracy"] == pytest.approx(history[best_epoch - 1]["val_acc"])


def test_a_two_process_run_resumes_in_one_process(two_processes, one_process, tmp_path):
    run_dir = shutil.copytree((two_processes / "runs" / LATEST).resolve(), tmp_path / "copy")
    resumed = finetune(resume=run_dir, epochs=3, batch_size=WORLD * PER_PROCESS_BATCH)
    _assert_rows_match(resumed.history, one_process.history)


def test_precompute_gives_one_process_rows_in_order(two_processes, tmp_path):
    cache = Path(two_processes / "cache2" / "simple-cnn")
    assert main(["precompute", "--data", str(two_processes / "data"), "--cache-dir", str(tmp_path / "cache1"),
                 *FEATURES]) == 0
    single = tmp_path / "cache1" / "simple-cnn"
    assert sorted(p.name for p in cache.parent.iterdir()) == ["simple-cnn"]  # no staging folder left
    ours, theirs = (json.loads((folder / "manifest.json").read_text()) for folder in (cache, single))
    assert ours["subsets"] == theirs["subsets"] and ours["identity"] == theirs["identity"]
    for subset in ("training", "validation"):
        mine, one = np.load(cache / f"{subset}.npy"), np.load(single / f"{subset}.npy")
        assert mine.shape == one.shape and np.abs(mine).sum() > 0
        np.testing.assert_allclose(mine, one, rtol=1e-5, atol=1e-6)


def test_predict_gives_one_process_rows_in_order(two_processes, tmp_path):
    out = tmp_path / "one.csv"
    assert main(["predict", str(two_processes / "data" / "validation"), "--checkpoint",
                 str(two_processes / "runs" / LATEST), "--device", "cpu", "--workers", "0", "--out", str(out)]) == 0
    ours, theirs = (list(csv.DictReader(path.open())) for path in (two_processes / "predictions.csv", out))
    assert [row["path"] for row in ours] == [row["path"] for row in theirs] and len(ours) == 11
    assert [row["label"] for row in ours] == [row["label"] for row in theirs]
    for mine, one in zip(ours, theirs):
        assert float(mine["p_cat"]) == pytest.approx(float(one["p_cat"]), abs=2e-6)
        assert mine["familiar"] == one["familiar"]  # the run's reference, made by two processes, and each row's
        assert float(mine["novelty"]) == pytest.approx(float(one["novelty"]), abs=1e-4)


def test_cached_images_train_as_one_process_does(two_processes, tmp_path):
    (folder,) = (two_processes / "images").iterdir()  # one cache, no staging folder left
    assert folder.name.startswith("images-") and (folder / "manifest.json").is_file()
    single = finetune(data=str(two_processes / "data"), runs_dir=str(tmp_path / "runs"), epochs=2,
                      batch_size=WORLD * PER_PROCESS_BATCH, cache_images=True, cache_dir=str(tmp_path / "images"),
                      **RECIPE)
    (single_folder,) = (tmp_path / "images").iterdir()
    for subset in ("training", "validation"):  # each process decoded its share into the one file
        assert np.array_equal(np.load(folder / f"{subset}.npy"), np.load(single_folder / f"{subset}.npy"))
    run_dir = (two_processes / "runs-cached" / LATEST).resolve()
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # This recipe's second epoch takes the validation loss from 0.69 to ~0.0125 in a few steps, and the
    # float-sum order of two processes moves that small value by ~6e-5 (training losses agree to 3e-5).
    _assert_rows_match(history, single.history, atol=2e-4)


def test_evaluate_writes_once_what_one_process_reports(two_processes, tmp_path):
    assert sorted(p.name for p in (two_processes / "evaluate").iterdir()) == [
        RECORD, "confusion.png", "mistakes.html", "mistakes.png", "reliability.png",
        "report.json"]  # no second writer's leftovers
    assert main(["evaluate", str(two_processes / "data" / "validation"), "--checkpoint",
                 str(two_processes / "runs" / LATEST), "--device", "cpu", "--workers", "0",
                 "--out", str(tmp_path / "one")]) == 0
    ours, theirs = (json.loads((folder / "report.json").read_text()) for folder in (two_processes / "evaluate",
                                                                                   tmp_path / "one"))
    assert ours["images"] == theirs["images"] == 11 and ours["per_class"] == theirs["per_class"]


def _multi_label_job(rank: int, root: str, port: int) -> None:
    """A multi-label fine-tune by two processes, the best epoch by val_map (every process must agree on it)."""
    _as_rank(rank, root, port)
    code = main(["finetune", "--data", f"{root}/data", "--runs-dir", f"{root}/runs", "--epochs", "2", "--monitor",
                 "val_map", "--batch-size", str(PER_PROCESS_BATCH), *_flags(RECIPE)])
    if code:
        raise SystemExit(f"rank {rank}: exit code {code}")


def test_a_multi_label_run_of_two_processes_matches_one_process(tmp_path):
    """val_map is computed on every process from all the validation photos (gathered), so both processes keep the
    same best epoch, and the run is the one-process run's."""
    from tlkit import api

    make_learnable(tmp_path / "photos", train_per_class=14, val_per_class=5, size=16)
    rows = [(f"{subset}/{label}/{n}.png", label if n >= (2 if subset == "training" else 1) else "cat|dog", subset)
            for subset, count in (("training", 14), ("validation", 5)) for label in ("cat", "dog") for n in range(count)]
    (tmp_path / "photos" / "labels.csv").write_text("path,label,split\n" + "".join(",".join(row) + "\n" for row in rows))
    api.split(tmp_path / "photos" / "labels.csv", val=None, out=tmp_path / "data", multi_label=True, quiet=True)
    context = mp.start_processes(_multi_label_job, args=(str(tmp_path), _free_port()), nprocs=WORLD, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two-process multi-label job did not finish in 300 s")
    one = finetune(data=str(tmp_path / "data"), runs_dir=str(tmp_path / "one"), epochs=2, monitor="val_map",
                   batch_size=WORLD * PER_PROCESS_BATCH, **RECIPE)
    history = [json.loads(line) for line in (tmp_path / "runs" / LATEST / "metrics.jsonl").read_text().splitlines()]
    _assert_rows_match(history, one.history)
    assert [row["val_map"] for row in history] == pytest.approx([row["val_map"] for row in one.history], rel=RTOL)
    report = json.loads((tmp_path / "runs" / LATEST / "report.json").read_text())
    assert report["images"] == 10 and report["task"] == "multi-label"  # the whole validation set
