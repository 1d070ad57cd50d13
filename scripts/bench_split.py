"""Time `tlkit split` on 25,000 small JPEGs (the Kaggle training set's count), and on a
quarter and a half of them to show the cost grows linearly with the number of files. Every
image is decoded and hashed, as `tlkit split` does by default (--quick: headers only).

    python scripts/bench_split.py [--files 25000] [--workdir /tmp/tlkit-bench-split]
"""

from __future__ import annotations

import argparse
import io
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tlkit.scan import scan_dataset
from tlkit.split import execute_split, plan_split


def make_files(folder: Path, count: int) -> None:
    """`count` distinct 32x32 JPEGs in the flat layout, half cats and half dogs."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(base).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    for n in range(count):
        label = "cat" if n % 2 == 0 else "dog"
        # Appending the index after the JPEG end marker keeps each file distinct and valid.
        (folder / f"{label}.{n // 2}.jpg").write_bytes(jpeg + n.to_bytes(4, "little"))


def time_split(src: Path, out: Path, val: int, full: bool) -> dict:
    start = time.perf_counter()
    scan = scan_dataset(src, full=full)
    scanned = time.perf_counter()
    plan = plan_split(scan, val, out, seed=0)
    execute_split(plan, mode="link")
    done = time.perf_counter()
    return {"files": len(plan.rows), "scan_s": scanned - start, "split_s": done - scanned, "total_s": done - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=25_000, help="largest file count (default: 25000)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tlkit-bench-split"))
    parser.add_argument("--quick", action="store_true", help="header check only, as `tlkit split --quick`")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"{'files':>7} {'scan+check s':>12} {'plan+link s':>11} {'total s':>8} {'files/s':>8}")
    for count in (args.files // 4, args.files // 2, args.files):
        src = args.workdir / str(count) / "train"
        make_files(src, count)
        result = time_split(src, src.parent, val=count // 12, full=not args.quick)
        print(
            f"{result['files']:>7} {result['scan_s']:>12.2f} {result['split_s']:>11.2f} "
            f"{result['total_s']:>8.2f} {result['files'] / result['total_s']:>8.0f}"
        )
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
