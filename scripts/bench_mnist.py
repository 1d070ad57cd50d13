"""The real-data check of issue 7: train `mnist-net` and `lenet` from scratch on 8,000 of the
real MNIST test digits (../shared/data/mnist-t10k) and report accuracy on the other 2,000,
through the same loop, checkpoints and reports as `tlkit train`, on the CPU.

Each run starts from a recipe in configs/; the recipes are tuned for 60,000 training images,
so a second row per model changes what 7,500 images (8x fewer steps) need. 500 of the 8,000
are held out as validation to pick the best epoch; the other 2,000 are the test set.

    python scripts/bench_mnist.py [--data ../shared/data/mnist-t10k] [--runs mnist-net lenet-adam]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tlkit.datasets import memory_source, resolve_train_settings
from tlkit.finetuning import finetune
from tlkit.rawdata import BUILTINS, read_idx_pair
from tlkit.runtime import silence

# name -> (model, recipe, changes to the recipe)
RUNS = {
    "mnist-net": ("mnist-net", "configs/mnist-net.yaml", {}),
    "mnist-net-fast": ("mnist-net", "configs/mnist-net.yaml", {"lr": 0.05, "momentum": 0.9}),
    "lenet": ("lenet", "configs/lenet-fashion-mnist.yaml", {}),
    "lenet-adam": ("lenet", "configs/lenet-fashion-mnist.yaml", {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.0,
                                                                 "batch_size": 64}),
}


def load_t10k(folder: Path, train_count: int, seed: int = 0):
    """(train, held-out) pairs of uint8 images and labels: a seeded shuffle of the 10,000 digits."""
    images, labels = read_idx_pair(*(folder / f"{name}.gz" for name in BUILTINS["mnist"].files["test"]))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    train, held_out = order[:train_count], order[train_count:]
    return (images[train], labels[train]), (images[held_out], labels[held_out])


def run(name: str, train, held_out, *, val: int, epochs: int | None, runs_dir: Path) -> dict:
    model, recipe, changes = RUNS[name]
    source_settings, settings = resolve_train_settings(Path(recipe), {"runs_dir": str(runs_dir)})
    settings.update(backbone=model, name=name, device="cpu", workers=0, **changes)
    if epochs is not None:
        settings["epochs"] = epochs
    source = memory_source("MNIST t10k", list(BUILTINS["mnist"].classes), train, held_out,
                           settings={**source_settings, "dataset": "mnist-t10k", "val": val},
                           known_stats=(BUILTINS["mnist"].mean, BUILTINS["mnist"].std))
    started = time.perf_counter()
    result = finetune(force=True, source=source, **settings)
    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    changed = ", ".join(f"{key} {value}" for key, value in changes.items()) or "as is"
    return {"run": f"{name} ({Path(recipe).name}: {changed})", "epochs": len(result.history), "best_epoch": result.best_epoch,
            "val_acc": best["val_acc"], "test_acc": result.report["accuracy"], "subset": result.report.get("subset"),
            "minutes": (time.perf_counter() - started) / 60, "images_per_s": best["images_per_s"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mnist-t10k"), help="folder of the t10k IDX .gz files")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--train", type=int, default=8000, help="digits trained on (validation carved from them)")
    parser.add_argument("--val", type=int, default=500, help="of the training digits, held out to pick the best epoch")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/tlkit-bench-mnist"))
    args = parser.parse_args(argv)
    silence()  # the script prints its own table: no chatter, bars or run summaries
    train, held_out = load_t10k(args.data, args.train)
    rows = [run(name, train, held_out, val=args.val, epochs=args.epochs, runs_dir=args.runs_dir) for name in args.runs]
    print(f"trained on {args.train - args.val:,} digits (+{args.val} validation), tested on {len(held_out[1]):,}; "
          f"{torch.get_num_threads()} CPU threads")
    print("| run | epochs | best epoch | validation acc | test acc (2,000) | minutes | train img/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['run']} | {row['epochs']} | {row['best_epoch']} | {row['val_acc']:.4f} | "
              f"{row['test_acc']:.4f} | {row['minutes']:.1f} | {row['images_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
