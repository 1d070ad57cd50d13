"""Old defaults against new, from scratch, on real digits (issue 13): what a user gets who gives no
optimizer, lr, schedule or augmentation flag.

- MNIST: `mnist-net`, 2 epochs, the real MNIST test set (../shared/data/mnist-t10k) as 8,000
  training / 2,000 validation digits, opened as `tlkit train --dataset mnist` opens MNIST.
- digits: `simple-cnn`, 40 epochs, scikit-learn's 1,797 digits (1,617 / 180), as the demo runs it.
Old defaults: SGD lr 1e-3 (momentum 0.9), StepLR every 7 epochs, the data's shift augmentation.

    python scripts/bench_defaults.py [--data ../shared/data/mnist-t10k]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tlkit.datasets import memory_source, open_source
from tlkit.finetuning import finetune
from tlkit.rawdata import BUILTINS, read_idx_pair
from tlkit.runtime import silence

OLD_DEFAULTS = {"optimizer": "sgd", "lr": 1e-3, "scheduler": "step", "augment": "light"}


def mnist_source(folder: Path):
    images, labels = read_idx_pair(*(folder / f"{name}.gz" for name in BUILTINS["mnist"].files["test"]))
    return memory_source("MNIST t10k", list(BUILTINS["mnist"].classes), (images, labels), settings={"val": 2000},
                         known_stats=(BUILTINS["mnist"].mean, BUILTINS["mnist"].std), augment="light")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/mnist-t10k"))
    args = parser.parse_args()
    silence()  # the script prints its own table: no chatter, bars or run summaries
    cases = [("MNIST 8,000/2,000", mnist_source(args.data), "mnist-net", 2),
             ("digits 1,617/180", open_source("digits"), "simple-cnn", 40)]
    rows = ["| data | model | epochs | defaults | validation accuracy | time (s) |", "| --- | --- | ---: | --- | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as runs:
        for title, source, model, epochs in cases:
            for label, changes in (("old: sgd 1e-3, step", OLD_DEFAULTS), ("new: none given", {})):
                start = time.perf_counter()
                result = finetune(source=source, backbone=model, epochs=epochs, workers=0, runs_dir=runs,
                                  name=f"{model}-{len(changes)}", **changes)
                rows.append(f"| {title} | {model} | {epochs} | {label} | {result.report['accuracy']:.4f} | "
                            f"{time.perf_counter() - start:.1f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
