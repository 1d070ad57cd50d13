"""Write scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) as image files.

The flat Kaggle-style layout `<digit>.<n>.png`, so the demo exercises the same path a user's
photos take. Offline: the data ships inside scikit-learn.

    python scripts/make_digits.py demo/digits/train
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(out_dir: Path, scale: int = 4) -> int:
    """Save every digit as an 8*scale px grayscale PNG; returns how many were written."""
    digits = load_digits()
    out_dir.mkdir(parents=True, exist_ok=True)
    for n, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        image = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        image = image.resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
        image.save(out_dir / f"{label}.{n}.png")
    return len(digits.target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder to write <digit>.<n>.png into")
    parser.add_argument("--scale", type=int, default=4, help="upscale factor of the 8x8 scans (default: 4)")
    args = parser.parse_args()
    count = write_digits(args.out_dir, scale=args.scale)
    print(f"wrote {count} digits to {args.out_dir}")


if __name__ == "__main__":
    main()
