"""Where the default recipe's every-layer epoch spends its time (issue 34), measured paired on one machine.

Times, on the same photos and in one process, the parts of an every-layer training step of a pretrained
backbone (decoding and augmenting a photo, the forward pass, the backward pass, the optimizer step) and a
validation forward, for variants run in turn (A, B, A, B, ...), so that a machine shared with other work
slows each alike: the training side in px, the precision (bf16 or fp32), how much of the trunk trains (its
first parameters frozen: no backward through them). The trunk's BatchNorm statistics stay frozen, as the recipe
keeps them.

    python scripts/profile_every_layer.py --photos DIR [--sizes 224 176 160] [--frozen 0 0.02] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tlkit import models
from tlkit.augment import policy
from tlkit.backbone import Backbone
from tlkit.data import EvalLoad, TrainLoad
from tlkit.decode import Normalizer
from tlkit.train import make_optimizer
from tlkit.config import FinetuneConfig


def photos_of(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*.jpg"))[:count]


def decoded(load, paths: list[Path], size: int) -> tuple[torch.Tensor, float]:
    """The photos as one uint8 batch at `size` px, and the seconds per photo that decoding and augmenting took."""
    start = time.perf_counter()
    images = torch.stack([load(path, seed) for seed, path in enumerate(paths)])
    return images, (time.perf_counter() - start) / len(paths)


def train_load_at(prep, size: int) -> TrainLoad:
    from dataclasses import replace

    return TrainLoad(replace(prep, input_size=(size, size)), policy("default"))


def freeze_first(backbone: Backbone, fraction: float) -> None:
    """requires_grad False on the trunk's first parameters, up to `fraction` of its parameter count."""
    backbone.unfreeze()
    total = sum(p.numel() for p in backbone.trunk_parameters())
    counted = 0
    for parameter in backbone.trunk_parameters():
        counted += parameter.numel()
        if counted > fraction * total:
            break
        parameter.requires_grad_(False)


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
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 176, 160])
    parser.add_argument("--frozen", type=float, nargs="+", default=[0.0],
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
    batches = {size: decoded(train_load_at(prep, size), paths[:args.batch], size)[0] for size in args.sizes}
    val_batch = decoded(EvalLoad(prep), paths[:args.batch], 224)[0]
    variants = [(size, frozen, precision) for precision in args.precisions for frozen in args.frozen
                for size in args.sizes]
    optimizers = {}
    for frozen in args.frozen:
        freeze_first(backbone, frozen)
        optimizers[frozen] = make_optimizer(backbone.param_groups(5e-4, 0.1),
                                            FinetuneConfig(optimizer="adamw", lr=5e-4, weight_decay=0.01))
    backbone.model.train()
    for module in backbone.trunk.modules():  # the recipe's frozen BatchNorm statistics
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    parts = {variant: {"forward": [], "backward": [], "optimizer": []} for variant in variants}
    decode = {size: [] for size in args.sizes}
    validation = []
    for round_number in range(args.rounds + 1):  # round 0 warms up
        for size in args.sizes:
            seconds = decoded(train_load_at(prep, size), paths[:args.decode], size)[1]
            if round_number:
                decode[size].append(seconds)
        for variant in variants:
            size, frozen, precision = variant
            freeze_first(backbone, frozen)
            times = step_times(backbone, optimizers[frozen], normalize, batches[size], labels, precision == "bf16")
            if round_number:
                for part, value in times.items():
                    parts[variant][part].append(value / args.batch)
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            backbone.model.eval()
            backbone.model(normalize(val_batch))
            backbone.model.train()
            for module in backbone.trunk.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if round_number:
            validation.append((time.perf_counter() - start) / args.batch)
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
