"""The seed tutorial's way of doing tlkit's jobs, as the yardstick of scripts/bench_cpu.py: ImageFolder,
PIL `Resize((224, 224))`, ToTensor, Normalize, a DataLoader of batch 64 and 3 workers, fp32, NCHW.
The network is the same as tlkit's (built by tlkit.models, so both run the very same layers).

    python scripts/tutorial_way.py precompute DATA --backbone resnet18    # features of training/ + validation/
    python scripts/tutorial_way.py predict DATA --backbone resnet18       # softmax of every image, to a CSV
    python scripts/tutorial_way.py finetune DATA --backbone resnet18      # one epoch: train, then validate
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets, transforms

from tlkit import models


def loader(folder: Path, prep, shuffle: bool = False) -> torch.utils.data.DataLoader:
    transform = transforms.Compose([transforms.Resize(prep.input_size), transforms.ToTensor(),
                                    transforms.Normalize(prep.mean, prep.std)])
    return torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), transform), batch_size=64,
                                       shuffle=shuffle, num_workers=3)


def precompute(data: Path, backbone) -> None:
    trunk = backbone.trunk.eval()
    with torch.inference_mode():
        for subset in ("training", "validation"):
            features = [trunk(images).numpy() for images, _ in loader(data / subset, backbone.preprocessing)]
            np.save(Path(tempfile.gettempdir()) / f"tutorial-{subset}.npy", np.concatenate(features))


def predict(data: Path, backbone) -> None:
    model = backbone.model.eval()
    out = Path(tempfile.gettempdir()) / "tutorial-predictions.csv"
    with torch.inference_mode(), out.open("w", newline="") as file:
        rows = csv.writer(file)
        for subset in ("training", "validation"):
            for images, _ in loader(data / subset, backbone.preprocessing):
                rows.writerows(model(images).softmax(dim=1).tolist())


def finetune_epoch(data: Path, backbone) -> None:
    model, criterion = backbone.model, torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for images, labels in loader(data / "training", backbone.preprocessing, shuffle=True):
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        for images, labels in loader(data / "validation", backbone.preprocessing):
            criterion(model(images), labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=("precompute", "predict", "finetune"))
    parser.add_argument("data", type=Path, help="holds training/ and validation/")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--weights", default="none", help="as tlkit's --weights (speed does not depend on them)")
    args = parser.parse_args()
    classes = sorted(p.name for p in (args.data / "training").iterdir() if p.is_dir())
    backbone = models.create(args.backbone, len(classes), weights=args.weights)
    {"precompute": precompute, "predict": predict, "finetune": finetune_epoch}[args.job](args.data, backbone)


if __name__ == "__main__":
    main()
