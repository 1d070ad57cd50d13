"""`tlkit predict` throughput against the seed tutorial's way of predicting, in one run on the
same files (images/s):

1. the tutorial's way: ImageFolder + PIL + DataLoader(num_workers=3) + fp32 model, batch 64;
2. tlkit's predict_files (batched decode: nvjpeg on CUDA, PIL workers otherwise; bf16 on CUDA).

The real photos are hard-linked `--copies` times to reach scale (2,002 x 10 = ~20,000).
Weights are random (none can be downloaded here); speed does not depend on them.

    python scripts/bench_predict.py --copies 10                       # the issue's H100 run
    python scripts/bench_predict.py --copies 1 --limit 256 --batch-size 64   # a CPU smoke run
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
from tlkit.checkpoint import Checkpoint
from tlkit.checkpoint_format import CheckpointMeta
from tlkit.predict import predict_files
from tlkit.runtime import compute_for, default_workers, select_device

def tlkit_way(backbone, paths: list[Path], device: torch.device, batch_size: int) -> float:
    meta = CheckpointMeta(backbone=backbone.name, weights=backbone.weights, classes=["cat", "dog"],
                          preprocessing=backbone.preprocessing)
    checkpoint = Checkpoint(backbone=backbone, classes=["cat", "dog"], meta=meta, path=Path("bench"))
    start = time.perf_counter()
    predict_files(checkpoint, paths, compute=compute_for(device), batch_size=batch_size, workers=default_workers())
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=SHARED_PHOTOS, help="flat folder of cat.N.jpg / dog.N.jpg")
    parser.add_argument("--copies", type=int, default=10, help="times each photo is linked (default: 10)")
    parser.add_argument("--limit", type=int, help="use only the first N photos (CPU smoke runs)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=256, help="tlkit's batch (default: 256)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlkit-bench-predict"))
    args = parser.parse_args()
    device = select_device(args.device)
    shutil.rmtree(args.work, ignore_errors=True)
    paths = link_photos(args.src, args.work, args.copies, args.limit)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    backbone = models.create(args.backbone, num_classes=2, weights="none")
    print(f"{len(paths)} images, {args.backbone}, on {name}, torch {torch.__version__}")
    tutorial = tutorial_throughput(backbone.model, backbone.preprocessing, args.work, device)
    ours = tlkit_way(backbone, paths, device, args.batch_size)
    print(f"tutorial way {tutorial:,.0f} img/s   tlkit predict {ours:,.0f} img/s   ratio {ours / tutorial:.1f}x")
    print(f"figure: predict {args.backbone}, {len(paths)} images: tlkit {ours:,.0f} images/s, {ours / tutorial:.1f}x the "
          f"tutorial's {tutorial:,.0f}")
    shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
