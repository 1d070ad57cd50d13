"""What the throughput benchmarks share: the shared photos linked many times over, and the seed
tutorial's way of feeding a network (ImageFolder + PIL + DataLoader(num_workers=3), fp32, batch 64)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-2k" / "train"


def link_photos(src: Path, folder: Path, copies: int, limit: int | None) -> list[Path]:
    """folder/<class>/<copy>-<name>, each photo hard-linked (or copied) `copies` times; half cats, half dogs with limit."""
    half = None if limit is None else limit // 2
    photos = sorted(src.glob("cat.*.jpg"))[:half] + sorted(src.glob("dog.*.jpg"))[:half]
    paths = []
    for copy in range(copies):
        for photo in photos:
            target = folder / photo.name.split(".")[0] / f"{copy}-{photo.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(photo, target)
            except OSError:  # another file system (EXDEV), or one without hard links: a copy
                shutil.copy2(photo, target)
            paths.append(target)
    return sorted(paths)


def tutorial_throughput(network: torch.nn.Module, prep, folder: Path, device: torch.device) -> float:
    """Images/s of the tutorial's loop through `network` (a trunk or a whole model)."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.Resize(prep.input_size), transforms.ToTensor(),
                                    transforms.Normalize(prep.mean, prep.std)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), transform), batch_size=64, num_workers=3)
    network = network.to(device).eval()
    start, seen = time.perf_counter(), 0
    with torch.inference_mode():
        for images, _ in loader:
            network(images.to(device)).cpu()
            seen += len(images)
    return seen / (time.perf_counter() - start)
