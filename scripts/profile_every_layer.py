"""Where the default recipe's every-layer epoch spends its time (issue 34), measured paired on one machine.

Times, on the same photos and in one process, the parts of an every-layer training step of a pretrained
backbone (decoding and augmenting a photo, the forward pass, the backward pass, the optimizer step) and a
validation forward, for variants run in turn (A, B, A, B, ...), so that a machine shared with other work
slows each alike: the training side in px, the precision (bf16 or fp32), how much of the trunk trains (its
first parameters frozen: no backward through them). The trunk's BatchNorm statistics stay frozen, as the recipe
keeps them.

    python scripts/profile_every_layer.py --photos DIR [--sizes 224 168] [--frozen 0 0.02] [--precisions bf16 fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tlkit import models
from tlkit.backbone import Backbone
from tlkit.data import EvalLoad, train_load
from tlkit.decode import Normalizer
from tlkit.config import FinetuneConfig
from tlkit.train import make_optimizer


def photos_of(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*.jpg"))[:count]


def decoded(load, paths: list[Path]) -> tuple[torch.Tensor, float]:
    """The photos as one uint8 batch, as `load` reads them, and the seconds per photo that reading took."""
    start = time.perf_counter()
    images = torch.stack([load(path, seed) for seed, path in enumerate(paths)])
    return images, (time.perf_counter() - start) / len(paths)


def thaw(backbone: Backbone, share: float) -> None:
    """Every parameter trainable but the trunk's first `share` of them, as recipe.Phase.frozen_share keeps them."""
    backbone.unfreeze()
    backbone.freeze_first(share)


def training_mode(backbone: Backbone) -> None:
    """Training mode with the trunk's BatchNorm statistics frozen, as the recipe's every-layer phase has it."""
    backbone.model.train()
    for module in backbone.trunk.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def validation_seconds(backbone: Backbone, normalize, images: torch.Tensor) -> float:
    """Seconds per image of a validation forward pass (eval mode, bf16)."""
    start = time.perf_counter()
    backbone.model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        backbone.model(normalize(images))
    training_mode(backbone)
    return (time.perf_counter() - start) / len(images)


def step_times(backbone, optimizer, normalize, images, labels, bf16: bool) -> dict[str, float]:
    """One training step, each part timed (the CPU computes synchronously)."""
    times = {}
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = backbone.model(normalize(images))
        loss = torch.nn.functional.cross_entropy(logits, labels)
    times["forward"] = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    times["backward"] = time.perf_counter() - start
    start = time.perf_counter()
    optimizer.step()
    times["optimizer"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 168])
    parser.add_argument("--frozen", type=float, nargs="+", default=[0.0, 0.02],
                        help="fractions of the trunk's parameters frozen, first ones first")
    parser.add_argument("--precisions", nargs="+", default=["bf16"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--decode", type=int, default=128, help="photos decoded per size and round")
    args = parser.parse_args()
    backbone = models.create("efficientnet_lite0", 2, weights="imagenet")
    prep = backbone.preprocessing
    backbone.model.to(memory_format=torch.channels_last)
    normalize = Normalizer(prep, torch.device("cpu"))
    paths = photos_of(args.photos, max(args.batch, args.decode))
    labels = torch.tensor([0 if path.name.startswith("cat") else 1 for path in paths[:args.batch]])
    crops = {size: train_load(prep, "default", (size, size)) for size in args.sizes}
    batches = {size: decoded(crops[size], paths[:args.batch])[0] for size in args.sizes}
    val_batch = decoded(EvalLoad(prep), paths[:args.batch])[0]
    variants = [(size, frozen, precision) for precision in args.precisions for frozen in args.frozen
                for size in args.sizes]
    optimizers = {}
    for frozen in args.frozen:
        thaw(backbone, frozen)
        optimizers[frozen] = make_optimizer(backbone.param_groups(5e-4, 0.1),
                                            FinetuneConfig(optimizer="adamw", lr=5e-4, weight_decay=0.01))
    training_mode(backbone)
    parts = {variant: {"forward": [], "backward": [], "optimizer": []} for variant in variants}
    decode = {size: [] for size in args.sizes}
    validation = []
    for round_number in range(args.rounds + 1):  # round 0 warms up
        for size in args.sizes:
            seconds = decoded(crops[size], paths[:args.decode])[1]
            if round_number:
                decode[size].append(seconds)
        for variant in variants:
            size, frozen, precision = variant
            thaw(backbone, frozen)
            times = step_times(backbone, optimizers[frozen], normalize, batches[size], labels, precision == "bf16")
            if round_number:
                for part, value in times.items():
                    parts[variant][part].append(value / args.batch)
        seconds = validation_seconds(backbone, normalize, val_batch)
        if round_number:
            validation.append(seconds)
    ms = lambda values: statistics.median(values) * 1000  # noqa: E731
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, {args.rounds} rounds (medians, ms per image)")
    for size in args.sizes:
        print(f"decode + augment at {size} px: {ms(decode[size]):.2f}")
    print(f"validation forward at 224 px, bf16: {ms(validation):.2f}")
    print("| train px | frozen fraction | precision | forward | backward | optimizer | step | images/s |")
    for variant in variants:
        step = ms([sum(values) for values in zip(*parts[variant].values())])
        row = " | ".join(f"{ms(parts[variant][part]):.2f}" for part in ("forward", "backward", "optimizer"))
        print(f"| {variant[0]} | {variant[1]:g} | {variant[2]} | {row} | {step:.2f} | {1000 / step:.1f} |")


if __name__ == "__main__":
    main()
