"""Whether a photo looks like the photos a model was trained on: the mean cosine distance of its trunk
features (the head's input) to its k nearest reference photos' (the training photos', or the validation
photos' where the trunk changed after the feature cache), the distance the audit's outlier score is
made of (tlkit/findings.py), above a threshold set on the validation photos. The score, the threshold's
rule and the reference file; computes no features (tlkit/predict.py's loop does, in its forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlkit.atomic import atomic_write
from tlkit.checkpoint_format import FAMILIAR
from tlkit.findings import unit_rows
from tlkit.runtime import relpath, warn

NEIGHBOURS = 10  # k: as the audit's outlier score (cleanlab's OutOfDistribution default)
# The threshold: this quantile of the validation photos' novelty, so that about 1% of in-class photos are flagged
# (docs/benchmarks.md, "Familiar": out-of-class photos flagged at it).
QUANTILE = 0.99
QUERY_ROWS = 1024  # photos scored at once: a block of QUERY_ROWS x reference similarities in memory, never N x N


@dataclass
class Reference:
    """The reference photos' unit-length trunk features on a device, and the rule read from best.json."""

    features: torch.Tensor  # float32 [R, D], rows of length 1
    threshold: float
    neighbours: int

    def novelty(self, features: torch.Tensor) -> torch.Tensor:
        return novelty(features, self.features, self.neighbours)


def novelty(features: torch.Tensor, reference: torch.Tensor, neighbours: int = NEIGHBOURS, *,
            itself: bool = False) -> torch.Tensor:
    """[N] the mean cosine distance (1 - cosine similarity) of each row of features to its `neighbours` nearest
    rows of the unit-length reference; 0 for a photo among them, up to 2. itself: the features are the reference's
    own rows, in its order, and no row counts as its own neighbour (leave-one-out)."""
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    reference = reference.to(unit.device, torch.float32)
    nearest = min(neighbours, len(reference) - itself)
    blocks = []
    # In float32 even inside predict's bf16 autocast: near 1, bf16 rounds a similarity in steps of 0.004, about
    # the distance that tells photos apart. Clamped: rounding can put a similarity a hair above 1.
    with torch.autocast(unit.device.type, enabled=False):
        for first, block in zip(range(0, len(unit), QUERY_ROWS), unit.split(QUERY_ROWS)):
            similarity = block @ reference.T
            if itself:
                rows = torch.arange(len(block), device=unit.device)
                similarity[rows, first + rows] = -2.0  # below any cosine: never among the nearest
            blocks.append((1 - similarity.topk(nearest, dim=1).values).clamp(min=0).mean(dim=1))
    return torch.cat(blocks) if blocks else unit.new_zeros(0)


def is_familiar(novelty: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each photo is like the training photos: its novelty at most the threshold."""
    return np.asarray(novelty) <= threshold


def fit(training: np.ndarray | None, validation: np.ndarray, *, seconds: float,
        source: str) -> tuple[np.ndarray, dict]:
    """(the reference as float16 unit rows, and what best.json records of the rule): the threshold is QUANTILE of
    the validation photos' novelty against the reference. The reference is the training photos' features; or, with
    training None, the validation photos' own, each scored against the others (leave-one-out: a new photo like
    them is as far from them as one of them is from the rest). source, seconds: where the features came from and
    what they cost, in words and seconds (said, and recorded)."""
    reference = unit_rows(validation if training is None else training).astype(np.float16)
    scores = novelty(torch.from_numpy(np.asarray(validation, dtype=np.float32)), torch.from_numpy(reference),
                     itself=training is None).numpy()
    threshold = float(np.quantile(scores, QUANTILE))
    return reference, {"file": FAMILIAR, "neighbours": NEIGHBOURS, "threshold": threshold, "quantile": QUANTILE,
                       "reference": "validation" if training is None else "training",
                       "reference_photos": len(reference), "validation_photos": len(scores),
                       "validation_flagged": float(1 - is_familiar(scores, threshold).mean()), "features": source,
                       "seconds": round(seconds, 3)}


def save_reference(path: Path, reference: np.ndarray) -> None:
    """The reference as safetensors (one float16 tensor, `features`)."""
    from safetensors.numpy import save_file

    atomic_write(Path(path), lambda tmp: save_file({"features": np.ascontiguousarray(reference)}, str(tmp),
                                                   metadata={"tlkit": "familiar"}))


def load_reference(weights_path: Path, rule: dict | None, device: torch.device) -> Reference | None:
    """The reference beside a checkpoint's weights, as best.json's rule names it; None (said once) for a
    checkpoint written before tlkit kept one, or whose file is missing: then predict has no familiar column."""
    from safetensors.numpy import load_file

    if rule is None:
        warn("this checkpoint has no reference features of its training photos (trained before tlkit kept them, or "
             "not on photo folders): predictions have no familiar column")
        return None
    path = Path(weights_path).with_name(rule["file"])
    if not path.is_file():
        warn(f"{relpath(path)} is missing (it holds the training photos' features): predictions have no familiar "
             "column; copy it back beside the weights, or retrain")
        return None
    features = torch.from_numpy(load_file(str(path))["features"].astype(np.float32)).to(device)
    return Reference(features=features, threshold=float(rule["threshold"]), neighbours=int(rule["neighbours"]))
