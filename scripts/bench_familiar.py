"""Does predict's `familiar` mark photos of neither class, and leave the classes' own? (issue 32, item 3)

Splits the shared dogs-vs-cats photos 1,602 / 400 with `tlkit split` (seed 0) and fine-tunes efficientnet_lite0
with the default recipe (the trunk changes: the reference is the validation photos' features, kept by the best
epoch's validation) and with --precompute-features (the head alone: the training photos' cached features). Then predicts, and counts the photos
marked unlike the training photos (familiar false) among: in-class, the 400 validation photos (the threshold is
set on them, so also half of them against the rule set on the other half) and the 370 shipped Oxford pets
(cats and dogs from another source); out-of-class, MNIST test digits (as RGB PNG), textures rendered here (noise,
stripes, checks, gradients) and the audit benchmark's planted photos of neither class (scripts/bench_audit.py).

    python scripts/bench_familiar.py [--photos DIR] [--keep DIR] [--recipes default,head]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import SHARED_PHOTOS  # noqa: E402
from bench_audit import neither_class  # noqa: E402

SHARED = SHARED_PHOTOS.parents[1]
DIGITS, TEXTURES, PLANTED_SETS = 300, 300, 20  # the audit's generator gives 5 photos a set
HALVES = 50  # random halves of the validation photos: the threshold set on one, the other counted


def write_digits(folder: Path, count: int, rng) -> Path:
    """`count` MNIST test digits, 28 x 28, white on black, saved as RGB PNG."""
    with gzip.open(SHARED / "mnist-t10k" / "t10k-images-idx3-ubyte.gz") as handle:
        digits = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    folder.mkdir(parents=True)
    for number, index in enumerate(rng.choice(len(digits), count, replace=False)):
        Image.fromarray(digits[index]).convert("RGB").save(folder / f"digit.{number}.png")
    return folder


def texture(kind: str, rng, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    """An RGB uint8 image of one kind: noise, stripes (any angle and period), checks, or a gradient."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    colours = rng.integers(0, 256, (2, 3)).astype(np.float32)
    if kind == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 40)
        mix = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    elif kind == "checks":
        side = int(rng.integers(8, 60))
        mix = ((x // side + y // side) % 2).astype(np.float32)
    else:  # gradient, linear at any angle
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        mix = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    return (colours[0] * (1 - mix[..., None]) + colours[1] * mix[..., None]).astype(np.uint8)


def write_textures(folder: Path, count: int, rng) -> Path:
    folder.mkdir(parents=True)
    kinds = ("noise", "stripes", "checks", "gradient")
    for number in range(count):
        kind = kinds[number % len(kinds)]
        Image.fromarray(texture(kind, rng)).save(folder / f"{kind}.{number}.png")
    return folder


def write_planted(folder: Path, sets: int) -> Path:
    """The audit benchmark's photos of neither class (3 MNIST digits at 400 px, noise, stripes), `sets` draws."""
    folder.mkdir(parents=True)
    for seed in range(sets):
        for number, image in enumerate(neither_class(np.random.default_rng(seed))):
            image.save(folder / f"odd.{seed}.{number}.jpg", quality=90)
    return folder


def unlike_share(classifier, folder: Path) -> tuple[float, np.ndarray]:
    """(the share of folder's images marked familiar false, their novelty)."""
    rows = [row for row in classifier.predict(folder, quiet=True) if row.error is None]
    return float(np.mean([not row.familiar for row in rows])), np.array([row.novelty for row in rows])


def held_out_half(run, validation: Path, rule: dict) -> float:
    """The share flagged in one random half of the validation photos by the run's rule set on the other half,
    averaged over HALVES draws: what the rule gives on in-class photos it was not set on. The rule as the run
    applied it: against the training photos' features (the reference the run keeps), or, where the run's reference
    is the validation photos', against the fitted half's own (leave-one-out threshold)."""
    import torch

    from tlkit import familiar
    from tlkit.predict import find_images, predict_files

    checkpoint, photos = run.classifier.checkpoint, find_images([validation]).images
    features = predict_files(checkpoint, photos, compute=run.classifier.compute, familiar=False,
                             keep_features=True).features
    training = checkpoint.reference(torch.device("cpu")).features.numpy() if rule["reference"] == "training" else None
    rng, shares = np.random.default_rng(0), []
    for _ in range(HALVES):
        order = rng.permutation(len(features))
        fitted, counted = features[order[: len(order) // 2]], features[order[len(order) // 2:]]
        reference, fitted_rule = familiar.fit(training, fitted, seconds=0, source="half")
        novelty = familiar.novelty(torch.from_numpy(counted), torch.from_numpy(reference)).numpy()
        shares.append(float((novelty > fitted_rule["threshold"]).mean()))
    return float(np.mean(shares))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=SHARED_PHOTOS)
    parser.add_argument("--keep", type=Path, help="work in this folder and leave it (default: a temporary one)")
    parser.add_argument("--recipes", default="default,head", help="default (every layer at the end), head, or both")
    args = parser.parse_args(argv)
    from tlkit import api
    from tlkit.checkpoint_format import read_meta

    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        rng = np.random.default_rng(0)
        sets = {"validation (in-class; threshold set here)": None,
                "Oxford pets (in-class, another source)": SHARED / "oxford-pets-370",
                f"MNIST digits ({DIGITS})": write_digits(work / "digits", DIGITS, rng),
                f"textures ({TEXTURES})": write_textures(work / "textures", TEXTURES, rng),
                f"the audit's planted photos of neither class ({5 * PLANTED_SETS})":
                    write_planted(work / "planted", PLANTED_SETS)}
        split = api.split(args.photos, val="400", out=work / "data", quiet=True)
        for recipe in args.recipes.split(","):
            settings = {"precompute_features": True} if recipe == "head" else {}  # alone: the head, 30 epochs
            run = api.finetune(split.out, backbone="efficientnet_lite0", runs_dir=str(work / "runs"), name=recipe,
                               quiet=True, **settings)
            rule = read_meta(run.path).familiar
            print(f"\n{recipe}: validation accuracy {run.report['accuracy']:.4f}; reference: "
                  f"{rule['reference_photos']} photos from {rule['features']} in {rule['seconds']:.1f} s; threshold "
                  f"{rule['threshold']:.4f} (quantile {rule['quantile']} of {rule['validation_photos']} validation "
                  "photos' novelty)")
            print("| photos | marked unfamiliar | median novelty |\n| --- | ---: | ---: |")
            for name, folder in sets.items():
                if folder is None:
                    print(f"| validation, half against the rule set on the other half ({HALVES} draws) | "
                          f"{held_out_half(run, split.validation, rule):.1%} | |")
                    if rule["reference"] == "validation":  # each is its own nearest reference photo at predict time
                        continue
                share, novelty = unlike_share(run.classifier, folder or split.validation)
                print(f"| {name} | {share:.1%} | {np.median(novelty):.4f} |")


if __name__ == "__main__":
    main()
