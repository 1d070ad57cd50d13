"""Class imbalance (issue 32): --class-weights none, auto (the default) and balanced on imbalanced cats-vs-dogs.

From the shared photos (1,001 cats, 1,001 dogs): a balanced validation set (200 + 200, seeded), and training sets
of every remaining dog (801) with 1/3, 1/10 and 1/50 as many cats (267, 80, 16; drawn by --draws seeds), linked
into a temporary folder. Each is one feature cache: `tlkit finetune --backbone efficientnet_lite0
--precompute-features` computes it in the first run, and every setting compared trains on it. Validation is
balanced, so its accuracy is the balanced accuracy; the cats' recall is the minority's. (A balanced sampler,
`--class-weights sampler` at commit 9c5a686, measured no better than the weights and was removed:
docs/benchmarks.md, "Class imbalance".)

    python scripts/bench_imbalance.py [--photos ../shared/data/dogs-vs-cats-2k/train] [--draws 2] [--seeds 0]
        [--ratios 3 10 50] [--work DIR]

--seeds trains each setting with each training seed on the same cache; --work keeps the folders and their
caches (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

from tlkit import cli

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-2k" / "train"
VAL_PER_CLASS = 200
RATIOS = (3, 10, 50)  # dogs over cats in training
SETTINGS = ("none", "auto", "balanced")


def link(photos: list[Path], folder: Path) -> None:
    for photo in photos:
        target = folder / photo.name.split(".")[0] / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(photo, target)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(photo, target)


def make_split(photos: Path, folder: Path, ratio: int, draw: int) -> Path:
    """folder/training (every dog of the pool, 1/ratio as many cats) and folder/validation (balanced)."""
    by_class = {name: sorted(photos.glob(f"{name}.*.jpg")) for name in ("cat", "dog")}
    for name, files in by_class.items():
        random.Random(0).shuffle(files)  # the same validation photos in every case
    link([p for files in by_class.values() for p in files[:VAL_PER_CLASS]], folder / "validation")
    dogs, cats = (by_class[name][VAL_PER_CLASS:] for name in ("dog", "cat"))
    random.Random(draw).shuffle(cats)
    link(dogs + cats[:len(dogs) // ratio], folder / "training")
    return folder


def run(data: Path, runs: Path, name: str, setting: str, seed: int) -> dict:
    """The run's report.json; a run that --work holds already is read, not run again."""
    if (runs / name / "report.json").is_file():
        return json.loads((runs / name / "report.json").read_text())
    argv = ["-q", "finetune", "--data", str(data), "--backbone", "efficientnet_lite0", "--precompute-features",
            "--class-weights", setting, "--seed", str(seed), "--runs-dir", str(runs), "--name", name]
    if cli.main(argv) != 0:
        raise SystemExit(f"tlkit {' '.join(argv)} failed")
    return json.loads((runs / name / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=SHARED_PHOTOS)
    parser.add_argument("--draws", type=int, default=2, help="draws of the minority's photos per ratio")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of each setting")
    parser.add_argument("--ratios", type=int, nargs="+", default=list(RATIOS), help="dogs over cats in training")
    parser.add_argument("--work", type=Path, help="keep the folders and caches here (default: a temporary folder)")
    args = parser.parse_args()
    rows = ["| training dogs:cats | draw | seed | --class-weights | balanced accuracy | macro F1 | cat recall | "
            "dog recall |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    with (nullcontext(args.work) if args.work else tempfile.TemporaryDirectory()) as scratch:
        for ratio in args.ratios:
            for draw in range(args.draws):
                data = Path(scratch) / f"r{ratio}-d{draw}"
                if not data.is_dir():
                    make_split(args.photos, data, ratio, draw)
                for seed in args.seeds:
                    for setting in SETTINGS:
                        report = run(data, Path(scratch) / "runs", f"r{ratio}-d{draw}-s{seed}-{setting}", setting, seed)
                        rows.append(f"| {ratio}:1 | {draw} | {seed} | {setting} | {report['balanced_accuracy']:.4f} | "
                                    f"{report['macro_f1']:.4f} | {report['recall']['cat']:.4f} | "
                                    f"{report['recall']['dog']:.4f} |")
                        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
