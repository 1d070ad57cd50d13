"""Class imbalance: how uneven a dataset's classes are, the loss weights that even them out, and the scores
that do not hide a minority class behind the accuracy (balanced accuracy, macro F1, recall per class).

Numbers in, numbers out (numpy and scikit-learn): no torch, so `check` and `split` can say it; no printing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from tlkit.errors import option

# Largest class over smallest from which `check` and `split` call the classes imbalanced, and from which
# --class-weights auto weighs the loss (docs/benchmarks.md, "Class imbalance").
IMBALANCE_RATIO = 3.0


def imbalance_ratio(counts: Sequence[int]) -> float:
    """The largest class's count over the smallest's (infinity where a class is empty)."""
    smallest = min(counts)
    return float("inf") if smallest == 0 else max(counts) / smallest


def imbalance_note(counts: Mapping[str, int]) -> str | None:
    """One line for `check` and `split` when the largest class holds IMBALANCE_RATIO times the smallest or more,
    naming both counts; None otherwise."""
    if len(counts) < 2 or imbalance_ratio(list(counts.values())) < IMBALANCE_RATIO:
        return None
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    return (f"the classes are imbalanced: {largest} has {counts[largest]} images, {smallest} {counts[smallest]} "
            f"({imbalance_ratio(list(counts.values())):.1f}:1), and a model may neglect the small class: "
            f"{option('class_weights', 'balanced')} weighs the loss by class ({option('class_weights', 'auto')}, the "
            f"default, does from {IMBALANCE_RATIO:g}:1), and a run reports its balanced accuracy and recall per class")


def loss_weights(how: str, labels: Sequence[int], class_count: int) -> np.ndarray | None:
    """The training loss's weight of each class: None (every image counts once) for `none`, and for `auto` below
    IMBALANCE_RATIO; else scikit-learn's 'balanced' weights, n_images / (n_classes x n_images_of_class), which give
    each class the same total weight. `labels`: the class index of every training image. (A balanced sampler
    measured no better than these weights: docs/benchmarks.md, "Class imbalance".)"""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=class_count)
    if how == "none" or (how == "auto" and imbalance_ratio(counts) < IMBALANCE_RATIO):
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.flatnonzero(counts)  # a class with no training image gets no weight (no image carries it)
    weights = np.zeros(class_count)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    return weights


def balance_scores(targets: Sequence[int], predictions: Sequence[int], class_count: int) -> dict:
    """Balanced accuracy (the mean recall over the classes present), macro F1 (over every class) and each
    class's recall (a list in class order), by scikit-learn: the figures that show a neglected minority class."""
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

    labels = list(range(class_count))
    with warnings.catch_warnings():  # a class predicted but absent from the targets: its recall is left out
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(targets, predictions)
    return {"balanced_accuracy": float(balanced),
            "macro_f1": float(f1_score(targets, predictions, labels=labels, average="macro", zero_division=0)),
            "recall": [float(value) for value in recall_score(targets, predictions, labels=labels, average=None,
                                                              zero_division=0)]}


def describe_weights(how: str, labels: Sequence[int], classes: Sequence[str]) -> str:
    """What --class-weights does on these training labels, for the run's first lines."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    ratio = f"the training classes are {imbalance_ratio(counts):.1f}:1 (largest over smallest)"
    weights = loss_weights(how, labels, len(classes))
    if weights is None:
        rule = f", below auto's {IMBALANCE_RATIO:g}:1" if how == "auto" else ""
        return f"{how}: every training image counts once in the loss; {ratio}{rule}"
    shown = ", ".join(f"{name} {weight:.3g}" for name, weight in list(zip(classes, weights))[:10])
    rule = f", from auto's {IMBALANCE_RATIO:g}:1 on" if how == "auto" else ""
    return f"{how}: balanced loss weights ({shown}{', ...' if len(classes) > 10 else ''}); {ratio}{rule}"
