"""Several labels a photo: the split's label files, its stratified choice of validation photos, the positive
weight of each label, the threshold of each label chosen on validation, the metrics, and a photo's label set.
Arrays and files in, numbers and rows out; trains nothing, and knows no model (the stages call it).
"""

from __future__ import annotations

import csv
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np

from tlkit.config import PROBABILITIES, checked_number
from tlkit.errors import TlkitError, option
from tlkit.labelfile import SEPARATOR, bad_row_text, read_label_file
from tlkit.pathtext import ENCODING, ERRORS, path_text
from tlkit.runtime import relpath

MULTI_LABEL, SINGLE_LABEL = "multi-label", "single-label"  # a run's task (best.json, report.json)
LABELS_FILE = "labels.csv"  # beside the photos of DATA/training and DATA/validation of a multi-label split
POSITIVE_WEIGHT_CAP = 10.0  # a rare label's loss weight: negatives / positives on training, at most this
DEFAULT_THRESHOLD = 0.5  # of a label without a positive validation photo (no F1 to maximise)
MIN_CALIBRATION_PHOTOS = 5  # validation photos with a label, and without it, that its calibration is fitted on


def is_multi_label_split(data_dir: Path) -> bool:
    """Whether DATA's split holds several labels a photo: its training folder holds LABELS_FILE."""
    return (Path(data_dir) / "training" / LABELS_FILE).is_file()


def write_subset_labels(path: Path, rows: list[tuple[Path, str]]) -> None:
    """A split subset's LABELS_FILE: (photo path relative to the subset, labels joined by SEPARATOR) rows."""
    with open(path, "w", newline="", encoding=ENCODING, errors=ERRORS) as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([path_text(relative), labels] for relative, labels in rows)


def read_subset_labels(subset_dir: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(photo path relative to the subset in posix form, its labels) of a split subset's LABELS_FILE; a row
    that names no photo (one removed by hand) stops here, as a class folder's missing photo would not."""
    labels = read_label_file(Path(subset_dir) / LABELS_FILE, SEPARATOR)
    if labels.bad:
        raise TlkitError(f"{relpath(labels.path)} holds {len(labels.bad)} row(s) that give no photo of it (such as "
                         f"{bad_row_text(labels.bad[0])}); it was changed after `tlkit split` wrote it. Split again "
                         f"({option('force', True)} replaces the split).")
    return [(row.path.relative_to(subset_dir).as_posix(), row.labels) for row in labels.rows]


def check_subset_labels(training: set[str], validation: set[str], where: str, mend: str) -> None:
    """The labels a multi-label split's subsets hold make a model: two at least in training, some in validation,
    and each validation label among training's. where: the split as the message names it; mend: what to do."""
    if len(training) >= 2 and validation and training >= validation:
        return
    trained = ", ".join(sorted(training)) or "none"
    given = ", ".join(sorted(validation)) or "none: no validation photo"
    raise TlkitError(f"{where} holds the label(s) {trained} in training and {given} in validation; a model needs two "
                     f"labels at least, and each validation label among training's. {mend}")


def multi_hot(labels: tuple[str, ...], classes: list[str]) -> tuple[float, ...]:
    """A photo's labels as one 0/1 target per class, in the classes' order (float: binary cross-entropy's)."""
    return tuple(float(name in labels) for name in classes)


def validation_choice(label_sets: list[tuple[str, ...]], val_size: int, seed: int) -> set[int]:
    """Which rows go to validation: stratified on each row's rarest label (the label fewest rows hold), each such
    group giving its share of val_size (largest remainders, then names, take the rounding), its rows drawn in a
    seeded order. So a rare label reaches validation in proportion, as single-label stratification does."""
    counts = Counter(name for labels in label_sets for name in labels)
    groups: dict[str, list[int]] = {}
    for row, labels in enumerate(label_sets):
        groups.setdefault(min(labels, key=lambda name: (counts[name], name)), []).append(row)
    shares = {key: val_size * len(rows) / len(label_sets) for key, rows in groups.items()}
    taken = {key: math.floor(share) for key, share in shares.items()}
    for key in sorted(shares, key=lambda key: (taken[key] - shares[key], key))[:val_size - sum(taken.values())]:
        taken[key] += 1
    generator, chosen = random.Random(seed), set()
    for key in sorted(groups):
        rows = list(groups[key])
        generator.shuffle(rows)
        chosen.update(rows[:taken[key]])
    return chosen


def positive_weights(targets: np.ndarray) -> np.ndarray:
    """Each label's weight on its positives in the training loss: negatives / positives of the training targets
    [N, L], at most POSITIVE_WEIGHT_CAP (and 1 for a label no training photo holds), so a rare label counts."""
    positives = targets.sum(axis=0)
    ratio = (len(targets) - positives) / np.maximum(positives, 1)
    return np.clip(ratio, 1.0, POSITIVE_WEIGHT_CAP).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32, as predict's probabilities are: a threshold chosen on them decides a photo alike there."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def calibrate_labels(logits: np.ndarray, targets: np.ndarray) -> dict:
    """Each label's Platt scaling fitted on the validation photos: sigmoid(scale x logit + shift) is its calibrated
    probability (a one-feature logistic regression on the logit, scikit-learn's L2 at C=1 keeping the scale finite
    where validation separates the label). The every-layer epochs shift a label's probabilities (docs/benchmarks.md:
    "Every layer on a multi-label split"), as a softmax's temperature does for one class a photo. A label with fewer
    than MIN_CALIBRATION_PHOTOS photos with it or without it keeps scale 1, shift 0. Monotone in the logit: a label's
    ranking, average precision and decisions at its thresholds chosen after are the same (a scale above 0: one
    that would reverse the ranking is not applied)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    scale, shift, before, after = [], [], [], []
    for column in range(targets.shape[1]):
        z, y = logits[:, [column]], targets[:, column].astype(int)
        if min(y.sum(), len(y) - y.sum()) < MIN_CALIBRATION_PHOTOS:
            fitted = (1.0, 0.0)
        else:
            platt = LogisticRegression(C=1.0).fit(z, y)
            fitted = (float(platt.coef_[0, 0]), float(platt.intercept_[0]))
            fitted = fitted if fitted[0] > 0 else (1.0, 0.0)  # a logit that ranks the label backwards: left alone
        scale.append(fitted[0])
        shift.append(fitted[1])
        for losses, (a, b) in ((before, (1.0, 0.0)), (after, fitted)):
            losses.append(float(log_loss(y, sigmoid(a * z[:, 0] + b), labels=[0, 1])))
    return {"scale": scale, "shift": shift, "images": len(targets), "log_loss_before": before,
            "log_loss_after": after}


def choose_thresholds(targets: np.ndarray, probabilities: np.ndarray) -> list[float]:
    """Each label's threshold on the validation photos: the probability that maximises that label's F1 (a photo
    holds the label from it up); DEFAULT_THRESHOLD for a label that no validation photo holds."""
    from sklearn.metrics import precision_recall_curve

    thresholds = []
    for column in range(targets.shape[1]):
        if not targets[:, column].any():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(targets[:, column], probabilities[:, column])
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        thresholds.append(float(cuts[int(np.argmax(f1))]))
    return thresholds


def decisions(probabilities: np.ndarray, thresholds) -> np.ndarray:
    """bool [N, L]: which labels each photo holds (its probability at or above the label's threshold)."""
    return np.asarray(probabilities) >= np.asarray(thresholds, dtype=np.float64)


def mean_average_precision(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean over labels of average precision (sklearn), of the labels some photo holds (NaN when none)."""
    from sklearn.metrics import average_precision_score

    held = [column for column in range(targets.shape[1]) if targets[:, column].any()]
    if not held:
        return float("nan")
    return float(np.mean([average_precision_score(targets[:, column], probabilities[:, column]) for column in held]))


def metrics(targets: np.ndarray, probabilities: np.ndarray, thresholds, classes: list[str]) -> dict:
    """mAP, micro and macro F1, subset accuracy (every label of a photo right) and each label's precision,
    recall, F1, AP, support and threshold (scikit-learn), for targets and probabilities [N, L]."""
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support

    truth, said = np.asarray(targets) > 0.5, decisions(probabilities, thresholds)
    precision, recall, f1, support = precision_recall_fscore_support(truth, said, average=None, zero_division=0)
    per_label = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1-score": float(f1[i]),
                        "average_precision": float(average_precision_score(truth[:, i], probabilities[:, i]))
                        if truth[:, i].any() else None,
                        "support": int(support[i]), "threshold": float(thresholds[i])}
                 for i, name in enumerate(classes)}
    return {"task": MULTI_LABEL, "images": len(truth),
            "mean_average_precision": mean_average_precision(truth, probabilities),
            "micro_f1": float(f1_score(truth, said, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth, said, average="macro", zero_division=0)),
            "subset_accuracy": float((truth == said).all(axis=1).mean()), "per_label": per_label}


def worst_mistakes(paths: list, targets: np.ndarray, probabilities: np.ndarray, thresholds, classes: list[str],
                   limit: int) -> dict[str, dict[str, list[dict]]]:
    """For each label, its worst false positives (the highest probabilities of photos without it that said it)
    and false negatives (the lowest of photos with it that missed it), `limit` of each."""
    truth, said = np.asarray(targets) > 0.5, decisions(probabilities, thresholds)
    worst = {}
    for column, name in enumerate(classes):
        scores = probabilities[:, column]
        false_positive = np.flatnonzero(said[:, column] & ~truth[:, column])
        false_negative = np.flatnonzero(~said[:, column] & truth[:, column])
        worst[name] = {
            "false_positives": [_mistake(paths[i], truth[i], scores[i], classes) for i in
                                false_positive[np.argsort(-scores[false_positive], kind="stable")][:limit]],
            "false_negatives": [_mistake(paths[i], truth[i], scores[i], classes) for i in
                                false_negative[np.argsort(scores[false_negative], kind="stable")][:limit]]}
    return worst


def _mistake(path, truth: np.ndarray, probability: float, classes: list[str]) -> dict:
    return {"path": str(path), "true": SEPARATOR.join(name for name, held in zip(classes, truth) if held),
            "probability": float(probability)}


def label_set(row: np.ndarray, thresholds, classes: list[str]) -> list[str]:
    """The labels a photo's probabilities say, in the classes' order."""
    return [name for name, held in zip(classes, decisions(row, thresholds)) if held]


def checked_threshold(threshold: float | None) -> float | None:
    """--threshold: one probability for every label, above 0 and below 1 (None: the checkpoint's own)."""
    return None if threshold is None else checked_number("threshold", threshold, float, PROBABILITIES)


ONE_LABEL_MONITORS = ("val_balanced_acc", "val_macro_f1")  # scores of one class a photo (tlkit/imbalance.py)


def check_monitor(monitor: str, multi_label: bool) -> None:
    """val_map ranks the labels of a multi-label run; a run of one class a photo has no such number, and the
    balanced scores (tlkit/imbalance.py) are of one class a photo."""
    if monitor == "val_map" and not multi_label:
        raise TlkitError(f"{option('monitor', 'val_map')} is the mean average precision of a multi-label run (a split "
                         f"made with `tlkit split --multi-label`); this data gives one class a photo: use "
                         f"{option('monitor', 'val_loss')} or {option('monitor', 'val_acc')}.")
    if monitor in ONE_LABEL_MONITORS and multi_label:
        raise TlkitError(f"{option('monitor', monitor)} scores one class a photo; this split gives a photo several "
                         f"labels: use {option('monitor', 'val_loss')} or {option('monitor', 'val_map')}.")


def summary_lines(report: dict) -> list[str]:
    """What a multi-label run's end and `tlkit evaluate` say of its metrics (metrics' report)."""
    per_label = ", ".join(f"{name} {values['threshold']:.2f}" for name, values in report["per_label"].items())
    return [f"{report.get('subset', 'validation')} of the saved model, {report['images']} photos: mean average "
            f"precision {report['mean_average_precision']:.4f}, micro F1 {report['micro_f1']:.4f}, macro F1 "
            f"{report['macro_f1']:.4f}, subset accuracy {report['subset_accuracy']:.4f}",
            f"thresholds (each label's, maximising its F1 on validation): {per_label}",
            *_scaling_lines(report.get("label_scaling"), list(report["per_label"]))]


def _scaling_lines(scaling: dict | None, labels: list[str]) -> list[str]:
    """The run's end: each label's Platt scaling and the validation log loss it brought (evaluate has none)."""
    if scaling is None:
        return []
    each = ", ".join(f"{name} x{a:.2f} {b:+.2f} (log loss {before:.4f} -> {after:.4f})" for name, a, b, before, after
                     in zip(labels, scaling["scale"], scaling["shift"], scaling["log_loss_before"],
                            scaling["log_loss_after"]))
    return [f"probabilities calibrated on the {scaling['images']} validation photos, sigmoid(logit x scale + shift): "
            f"{each}"]
