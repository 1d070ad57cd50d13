"""Transfer-learning quality with real ImageNet weights (issue 12), on the CPU or a GPU.

Splits the shared dogs-vs-cats photos (../shared/data/dogs-vs-cats-2k/train) 1,602 / 400 with
`tlkit split`, then runs `tlkit finetune --backbone efficientnet_lite0 --precompute-features`
with its defaults, and reports beside it what scikit-learn's logistic regression reaches on the
very same cached features (the ceiling a linear head can be held to). `--unfreeze-after E`
runs then continue the cached head end to end on the images, to show that the defaults for a
pretrained trunk keep (or improve) what the head reached. `--plain` times the default recipe alone
(`tlkit finetune --backbone efficientnet_lite0`, no other flag: the head on the cache to convergence,
then every layer) from a split of its own, its feature cache built inside the time, and its time as a multiple
of the `--precompute-features` run's; `--before` adds the default recipe with its every-layer epoch as it was
before issue 34 (full-size crops, every layer of the trunk trained), for that epoch's training images a second
before and after in one run. Each run's saved
model is also scored on `--holdout` (photos of cats and dogs no run trains on: by default the 370
Oxford-IIIT Pet photos, another source than Kaggle's): accuracy and mean log loss.

    python scripts/bench_transfer.py [--photos DIR] [--val 400] [--subset N] [--unfreeze 1] [--plain [--before]]
                                     [--holdout DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import yaml

from tlkit import recipe
from tlkit.api import load
from tlkit.cli import main as cli
from tlkit.features import load_cache
from tlkit.finetuning import finetune
from tlkit.runtime import silence


def subset_of(photos: Path, count: int | None, target: Path) -> Path:
    """The first `count` photos of each class (all when None), linked into target (copied across devices)."""
    import os
    import shutil

    if count is None:
        return photos
    target.mkdir(parents=True)
    for cls in ("cat", "dog"):
        for path in sorted(photos.glob(f"{cls}.*.jpg"), key=lambda p: int(p.name.split(".")[1]))[:count // 2]:
            try:
                os.link(path, target / path.name)
            except OSError:
                shutil.copy2(path, target / path.name)
    return target


def logistic_regression(cache_dir: Path) -> float:
    """Validation accuracy of scikit-learn's logistic regression on the cached features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    sets = load_cache(cache_dir)
    train, val = sets["training"], sets["validation"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(np.asarray(train.features, dtype=np.float32), train.labels)
    return float(model.score(np.asarray(val.features, dtype=np.float32), val.labels))


def best_loss(result) -> str:
    """The saved epoch's validation loss."""
    return f"{next(row['val_loss'] for row in result.history if row['epoch'] == result.best_epoch):.4f}"


def holdout_scores(run_dir: Path, photos: Path | None) -> str:
    """Accuracy and mean log loss of the run's saved model on the hold-out photos (class: the name before the
    first dot), as a table cell; "-" without a hold-out."""
    if photos is None:
        return "-"
    rows = load(run_dir).predict(photos, quiet=True)
    truths = [Path(row.source).name.split(".")[0] for row in rows]
    correct = sum(row.label == truth for row, truth in zip(rows, truths))
    log_loss = -np.mean([np.log(max(row.probabilities.get(truth, 0.0), 1e-12)) for row, truth in zip(rows, truths)])
    return f"{correct / len(rows):.4f} (loss {log_loss:.4f}, {correct} of {len(rows)})"


def plain_recipe(data: Path, runs: Path, backbone: str, device: str, figures: list[str], holdout: Path | None,
                 name: str = "plain") -> tuple[str, float]:
    """The default recipe on a fresh split (its cache built in the time): the table row, and a figure; its seconds."""
    start = time.perf_counter()
    result = finetune(data=str(data), backbone=backbone, runs_dir=str(runs), name=name, device=device)
    seconds = time.perf_counter() - start
    head_epochs = yaml.safe_load((result.run_dir / "config.yaml").read_text())["unfreeze_after"]
    head_best = min(result.history[:head_epochs], key=lambda row: row["val_loss"])
    every_layer = ", ".join(f"{row['val_acc']:.4f} (loss {row['val_loss']:.4f}, {row['images_per_s']:.1f} training "
                            "images/s)" for row in result.history[head_epochs:])
    figures.append(f"{name} finetune {result.report['accuracy']:.4f} in {seconds:.1f} s (head phase's best "
                   f"{head_best['val_acc']:.4f})")
    return (f"| {name} `finetune --backbone {backbone}` (head's best epoch {head_best['epoch']}: "
            f"{head_best['val_acc']:.4f} (loss {head_best['val_loss']:.4f}); every layer: {every_layer}) | "
            f"{result.report['accuracy']:.4f} | {best_loss(result)} | {holdout_scores(result.run_dir, holdout)} | "
            f"{result.best_epoch} | {seconds:.1f} |"), seconds


def before_issue_34():
    """The default recipe's every-layer epoch as it was before issue 34: full-size crops, every trunk layer trained."""
    return mock.patch.multiple(recipe, AFTER_CACHED_HEAD_TRAIN_SCALE=1.0, AFTER_CACHED_HEAD_FROZEN_SHARE=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/dogs-vs-cats-2k/train"))
    parser.add_argument("--val", default="400", help="validation photos (count or fraction)")
    parser.add_argument("--subset", type=int, help="use the first N photos (half cats, half dogs)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--unfreeze", type=int, nargs="*", default=[],
                        help="also run --unfreeze-after E (the head on the cache for E epochs, then every layer)")
    parser.add_argument("--e2e-epochs", type=int, default=2, help="epochs of every layer after the head")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--plain", action="store_true", help="also time the default recipe, no flag but --backbone")
    parser.add_argument("--before", action="store_true",
                        help="with --plain: also the default recipe's every-layer epoch as before issue 34")
    parser.add_argument("--holdout", type=Path, default=Path("../shared/data/oxford-pets-370"),
                        help="photos no run trains on, scored by each run's saved model (missing: not scored)")
    args = parser.parse_args()
    silence()  # the script prints its own table: no chatter, bars or run summaries
    holdout = args.holdout if args.holdout.is_dir() else None
    rows = ["| run | validation accuracy | validation loss | hold-out accuracy | best epoch | time (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        photos = subset_of(args.photos, args.subset, work / "photos")
        assert cli(["split", str(photos), "--val", args.val, "--out", str(work / "data"), "--quiet"]) == 0
        common = dict(data=str(work / "data"), backbone=args.backbone, precompute_features=True,
                      runs_dir=str(work / "runs"), device=args.device)
        start = time.perf_counter()
        result = finetune(name="defaults", **common)
        head_seconds = time.perf_counter() - start
        rows.append(f"| finetune --precompute-features, defaults (cache built) | {result.report['accuracy']:.4f} | "
                    f"{best_loss(result)} | {holdout_scores(result.run_dir, holdout)} | {result.best_epoch} | "
                    f"{head_seconds:.1f} |")
        figures = [f"{args.backbone} --precompute-features {result.report['accuracy']:.4f} in {head_seconds:.1f} s"]
        cache = next((work / "data" / ".tlkit-cache").iterdir())
        start = time.perf_counter()
        ceiling = logistic_regression(cache)
        rows.append(f"| logistic regression on the same cache | {ceiling:.4f} | - | - | - | "
                    f"{time.perf_counter() - start:.1f} |")
        figures.append(f"logistic regression {ceiling:.4f}")
        for head_epochs in args.unfreeze:
            start = time.perf_counter()
            result = finetune(name=f"unfreeze{head_epochs}", unfreeze_after=head_epochs,
                              epochs=head_epochs + args.e2e_epochs, **common)
            per_epoch = ", ".join(f"{row['val_acc']:.4f}" for row in result.history[head_epochs - 1:])
            rows.append(f"| --unfreeze-after {head_epochs} --epochs {head_epochs + args.e2e_epochs} (head's last, "
                        f"then every layer: {per_epoch}) | {result.report['accuracy']:.4f} | {best_loss(result)} | "
                        f"{holdout_scores(result.run_dir, holdout)} | {result.best_epoch} | "
                        f"{time.perf_counter() - start:.1f} |")
            figures.append(f"--unfreeze-after {head_epochs} --epochs {head_epochs + args.e2e_epochs} "
                           f"{result.report['accuracy']:.4f} in {time.perf_counter() - start:.1f} s")
        if args.plain:
            assert cli(["split", str(photos), "--val", args.val, "--out", str(work / "plain"), "--quiet"]) == 0
            row, plain_seconds = plain_recipe(work / "plain", work / "runs", args.backbone, args.device, figures,
                                              holdout)
            rows.append(row)
            figures.append(f"plain / --precompute-features time {plain_seconds / head_seconds:.2f}x")
        if args.plain and args.before:
            assert cli(["split", str(photos), "--val", args.val, "--out", str(work / "before"), "--quiet"]) == 0
            with before_issue_34():
                row, before_seconds = plain_recipe(work / "before", work / "runs", args.backbone, args.device,
                                                   figures, holdout, name="before-issue-34")
            rows.append(row)
            figures.append(f"before-issue-34 / --precompute-features time {before_seconds / head_seconds:.2f}x")
    print("\n".join(rows))
    print(f"figure: transfer, validation accuracy: {'; '.join(figures)}")


if __name__ == "__main__":
    main()
