"""Precompute throughput, three ways on the same files in one run (images/s):

1. the seed tutorial's way: ImageFolder + PIL + DataLoader(num_workers=3) + fp32 trunk, batch 64;
2. `tlkit precompute` (tlkit.features.precompute: decode pipeline, bf16 trunk on CUDA, cache write);
3. the trunk alone on random tensors (the compute ceiling), bf16 + channels_last on CUDA;
and then the head's training epochs from the cache just written, through tlkit's Trainer as
`finetune --precompute-features` runs them (seconds per epoch over every cached training row).

The real photos are hard-linked `--copies` times into a scratch folder to reach scale
(2,002 x 10 = ~20,000). Weights are random (none can be downloaded here); speed does not
depend on them.

    python scripts/bench_precompute.py --copies 10 --backbones resnet18 vgg16 alexnet
    python scripts/bench_precompute.py --copies 1 --limit 256 --backbones resnet18   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch

from _bench_common import SHARED_PHOTOS, link_photos, tutorial_throughput
from tlkit import models
from tlkit.features import precompute
from tlkit.runtime import compute_for, default_workers, select_device

def build_data(src: Path, work: Path, copies: int, limit: int | None) -> int:
    """work/training/<class>/ with each photo linked `copies` times; a one-image-per-class validation/."""
    shutil.rmtree(work, ignore_errors=True)
    paths = link_photos(src, work / "training", copies, limit)
    for label in ("cat", "dog"):
        (work / "validation" / label).mkdir(parents=True)
        os.link(next(p for p in paths if p.parent.name == label), work / "validation" / label / "0.jpg")
    return len(paths)


def tlkit_way(backbone, data: Path, device: torch.device, batch_size: int) -> tuple[float, dict]:
    cache = data / ".bench-cache"
    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    sets = precompute(backbone, data, cache_root=cache, compute=compute_for(device), batch_size=batch_size,
                      workers=default_workers(), force=True)
    seen = sum(len(s.files) for s in sets.values())
    return seen / (time.perf_counter() - start), sets


def head_epochs(backbone, train_set, device: torch.device, batch_size: int, epochs: int = 3) -> list[float]:
    """Seconds of each head epoch over the cached training features (the first includes moving them to the GPU)."""
    from tlkit.features import FeatureLoader, to_device_float
    from tlkit.train import Trainer, train_one_epoch

    seconds = []
    start = time.perf_counter()
    loader = FeatureLoader(train_set, batch_size=batch_size, device=device, shuffle=True)
    head = backbone.head.to(device)
    trainer = Trainer(model=head, optimizer=torch.optim.SGD(head.parameters(), lr=1e-3, momentum=0.9),
                      scheduler=None, scheduler_name="none", train_loader=loader, val_loader=loader,
                      train_sampler=loader, normalize=to_device_float(device), compute=compute_for(device),
                      epochs=epochs)
    for epoch in range(1, epochs + 1):
        loader.set_epoch(epoch)
        train_one_epoch(trainer)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
    return seconds


def trunk_alone(backbone, device: torch.device, batch_size: int, batches: int) -> float:
    trunk = backbone.trunk.to(device).eval()
    images = torch.randn(batch_size, 3, *backbone.preprocessing.input_size, device=device)
    if device.type == "cuda":
        trunk, images = trunk.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        trunk(images)  # warm-up: cudnn picks its kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            trunk(images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=SHARED_PHOTOS, help="flat folder of cat.N.jpg / dog.N.jpg")
    parser.add_argument("--copies", type=int, default=10, help="times each photo is linked (default: 10)")
    parser.add_argument("--limit", type=int, help="use only the first N photos (CPU smoke runs)")
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "vgg16", "alexnet"])
    parser.add_argument("--batch-size", type=int, default=256, help="tlkit and trunk-alone batch (default: 256)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlkit-bench-precompute"))
    args = parser.parse_args()
    device = select_device(args.device)
    count = build_data(args.src, args.work, args.copies, args.limit)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{count} images on {name}, torch {torch.__version__}")
    print(f"{'backbone':<10} {'seed way':>9} {'tlkit':>9} {'trunk only':>11} {'tlkit/seed':>10} {'tlkit/trunk':>11} "
          f"{'head epochs (s)':>22}")
    for backbone_name in args.backbones:
        backbone = models.create(backbone_name, num_classes=2, weights="none")
        seed = tutorial_throughput(backbone.trunk, backbone.preprocessing, args.work / "training", device)
        ours, sets = tlkit_way(backbone, args.work, device, args.batch_size)
        epochs = head_epochs(backbone, sets["training"], device, args.batch_size)
        ceiling = trunk_alone(backbone, device, args.batch_size, batches=max(2, min(20, count // args.batch_size)))
        print(f"{backbone_name:<10} {seed:>9,.0f} {ours:>9,.0f} {ceiling:>11,.0f} {ours / seed:>9.1f}x "
              f"{ours / ceiling:>10.0%} {' '.join(f'{t:.3f}' for t in epochs):>22}")
        print(f"figure: precompute {backbone_name}, {count} images: tlkit {ours:,.0f} images/s, {ours / seed:.1f}x the "
              f"tutorial's {seed:,.0f}, {ours / ceiling:.0%} of the trunk alone; head epoch {epochs[-1]:.3f} s")
    print(f"head epochs: over {count} cached training rows, batch {args.batch_size}")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
