"""Benchmark: images/s of end-to-end ResNet18 fine-tuning, tlkit's loop vs the seed tutorial's loop.

Figures from one run on the same files and device (and, for each loader, how many images/s it
can put on the device with no model: --feed-only measures only those):
  1. the tutorial's way: ImageFolder + PIL transforms + DataLoader(num_workers=3), fp32, batch 64;
  2. tlkit's loop (tlkit.train.train_one_epoch: seeded sampler, uint8 batches normalised on the
     device, bf16 autocast and channels_last on CUDA), decoding every epoch in loader workers;
  3. the same loop with --cache-images: photos decoded once (timed on its own), then random resized
     crops and flips cut on the device from the cached pixels;
  4. the model alone on random tensors (the compute ceiling for the training step).
The shared 2,002 photos are hard-linked --copies times into a class-foldered set (~20,000 at 10).
On a machine without CUDA it runs at a tiny scale (64 px, a few batches) as a smoke test.

    python scripts/bench_finetune.py                      # CUDA: 224 px, 10 copies, 2 epochs (the 2nd is reported)
    python scripts/bench_finetune.py --copies 1 --max-batches 5   # CPU smoke run
    python scripts/bench_finetune.py --copies 1 --img-size 224 --max-batches 1000 --feed-only   # CPU loaders
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHOTOS = ROOT.parent / "shared" / "data" / "dogs-vs-cats-2k" / "train"


def replicate(photos: Path, out: Path, copies: int, val_per_class: int) -> Path:
    """out/training/<class>/<copy>_<name> for every photo and copy; a small fixed validation set (numbers
    under val_per_class)."""
    for path in sorted(photos.glob("*.jpg")):
        label, number = path.name.split(".")[:2]
        subset = "validation" if int(number) < val_per_class else "training"
        for copy in range(1 if subset == "validation" else copies):
            target = out / subset / label / f"{copy}_{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    return out


def _timed_epochs(run_epoch, epochs: int) -> list[float]:
    """images/s of each epoch, synchronising CUDA so the clock sees the work. The first epoch holds cuDNN's
    autotuning and the loaders' start: the last is the steady state."""
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        images = run_epoch()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(images / (time.perf_counter() - started))
    return rates


def feed_rate(batches, to_device, max_batches: int | None) -> float:
    """images/s of one pass over a loader with each batch put on the device, no model: how fast it can feed."""
    def run_epoch() -> int:
        seen = 0
        for batch, (images, labels, *_) in enumerate(batches):
            if max_batches is not None and batch >= max_batches:
                break
            to_device(images)
            seen += len(labels)
        return seen

    return _timed_epochs(run_epoch, 1)[0]


def tutorial_loader(data: Path, img_size: int) -> torch.utils.data.DataLoader:
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize((img_size, img_size)), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    return torch.utils.data.DataLoader(datasets.ImageFolder(str(data / "training"), transform), batch_size=64,
                                       shuffle=True, num_workers=3)


def tutorial_loop(data: Path, img_size: int, device: torch.device, epochs: int, max_batches: int | None) -> list[float]:
    from torchvision import models

    loader = tutorial_loader(data, img_size)
    model = models.resnet18(weights=None)
    model.fc = torch.nn.Linear(512, 2)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()

    def run_epoch() -> int:
        seen = 0
        for batch, (inputs, labels) in enumerate(loader):
            if max_batches is not None and batch >= max_batches:
                break
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        return seen

    return _timed_epochs(run_epoch, epochs)


def tlkit_loop(data: Path, device: torch.device, img_size: int, epochs: int, batch_size: int, workers: int | None,
               max_batches: int | None, cache_images: bool = False) -> dict:
    """images/s of each epoch (`epochs` 0: none), of the loader alone, and the seconds spent building
    the decoded-image cache (0 without it)."""
    from tlkit.config import make_config
    from tlkit.lrfind import build_trainer
    from tlkit.train import train_one_epoch

    config = make_config({"data": str(data), "device": device.type, "backbone": "resnet18", "weights": "none",
                          "img_size": img_size,
                          "batch_size": batch_size, "workers": workers, "epochs": max(1, epochs), "scheduler": "none",
                          "optimizer": "sgd", "lr": 0.001, "cache_images": cache_images,
                          "cache_dir": str(data / "cache")})
    started = time.perf_counter()
    trainer, _, data_bundle = build_trainer(config)
    build_seconds = time.perf_counter() - started
    if max_batches is not None:  # CPU smoke runs: a few batches per epoch
        data_bundle.train_sampler.size = min(data_bundle.train_sampler.size, max_batches * batch_size)
    trainer.call("on_epoch_start")

    def run_epoch() -> int:
        trainer.train_sampler.set_epoch(trainer.epoch + 1)
        result = train_one_epoch(trainer)
        trainer.epoch += 1
        return result["train_images"]

    return {"images_per_s": _timed_epochs(run_epoch, epochs), "build_seconds": round(build_seconds, 2),
            "feed_images_per_s": feed_rate(trainer.train_loader, trainer.normalize, max_batches)}


def model_only(img_size: int, device: torch.device, batch_size: int, steps: int) -> float:
    """Training steps on random images already on the device, as tlkit runs them (bf16, channels_last on CUDA)."""
    from tlkit import models

    backbone = models.create("resnet18", num_classes=2, weights="none", img_size=img_size)
    model = backbone.model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch_size,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up: cuDNN autotuning, allocator
        step()
    def run_steps() -> int:
        for _ in range(steps):
            step()
        return steps * batch_size

    return _timed_epochs(run_steps, 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--device", default="auto", help="auto (cuda where there is one), cpu or cuda")
    parser.add_argument("--copies", type=int, help="training copies of each photo (default: 10 on CUDA, 1 on a CPU)")
    parser.add_argument("--val-per-class", type=int, default=100, help="photos numbered below it validate (default: 100)")
    parser.add_argument("--img-size", type=int, help="default: 224 on CUDA, 64 on a CPU")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each loop; the last is reported (default: 2)")
    parser.add_argument("--batch-size", type=int, help="default: 64 on CUDA, 32 on a CPU")
    parser.add_argument("--workers", type=int, default=None, help="tlkit's loader workers (default: cores - 1)")
    parser.add_argument("--max-batches", type=int, help="batches per epoch (default: all on CUDA, 5 on a CPU)")
    parser.add_argument("--feed-only", action="store_true",
                        help="the loaders alone (images/s each can put on the device), no training")
    args = parser.parse_args()
    if not args.photos.is_dir():
        sys.exit(f"{args.photos} is absent; pass --photos DIR (the flat cat.N.jpg / dog.N.jpg folder)")
    from tlkit.runtime import select_device

    device = select_device(args.device)
    cuda = device.type == "cuda"
    copies = args.copies or (10 if cuda else 1)
    img_size, batch_size = args.img_size or (224 if cuda else 64), args.batch_size or (64 if cuda else 32)
    max_batches = args.max_batches if args.max_batches is not None else (None if cuda else 5)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        data = replicate(args.photos, Path(tmp), copies, args.val_per_class)
        count = sum(1 for _ in (data / "training").rglob("*.jpg"))
        results = {"device": torch.cuda.get_device_name() if cuda else "cpu", "training_images": count,
                   "img_size": img_size, "batch_size": batch_size}
        epochs = 0 if args.feed_only else args.epochs
        normalise = lambda images: images.to(device, non_blocking=True)  # noqa: E731 (the tutorial normalised in workers)
        results["tutorial_feed_images_per_s"] = feed_rate(tutorial_loader(data, img_size), normalise, max_batches)
        loop = (data, device, img_size, epochs, batch_size, args.workers, max_batches)
        for name, cached in (("tlkit", False), ("tlkit_cached", True)):
            for key, value in tlkit_loop(*loop, cache_images=cached).items():
                results[f"{name}_{key}"] = value
        if not args.feed_only:
            results["tutorial_images_per_s"] = tutorial_loop(data, img_size, device, args.epochs, max_batches)
            results["model_only_images_per_s"] = model_only(img_size, device, batch_size, steps=20 if cuda else 3)
    for name in ("tlkit", "tlkit_cached"):
        results[f"{name}_feed_vs_tutorial_feed"] = round(
            results[f"{name}_feed_images_per_s"] / results["tutorial_feed_images_per_s"], 2)
        if not args.feed_only:
            ours = results[f"{name}_images_per_s"][-1]
            results[f"{name}_speedup_vs_tutorial"] = round(ours / results["tutorial_images_per_s"][-1], 2)
            results[f"{name}_fraction_of_model_only"] = round(ours / results["model_only_images_per_s"], 3)
    print(json.dumps(results, indent=2))
    if not args.feed_only:
        print(f"figure: finetune resnet18 {img_size} px, {count} images, epoch {args.epochs}: tlkit "
              f"{results['tlkit_images_per_s'][-1]:,.0f} images/s ({results['tlkit_speedup_vs_tutorial']}x the tutorial's "
              f"{results['tutorial_images_per_s'][-1]:,.0f}), --cache-images {results['tlkit_cached_images_per_s'][-1]:,.0f} "
              f"({results['tlkit_cached_speedup_vs_tutorial']}x; cache built in {results['tlkit_cached_build_seconds']} s), "
              f"model alone {results['model_only_images_per_s']:,.0f}")


if __name__ == "__main__":
    main()
