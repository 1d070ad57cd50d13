"""Confidence that means what it says: temperature scaling (Guo et al. 2017) and how far it is from that.

One temperature T > 0, fitted on the validation logits at the end of a run, divides the logits before the
softmax: the labels stay the same, the confidences move. Expected calibration error (ECE) over equal-width
bins says how far the confidences are from the accuracy they claim. numpy and scipy only: given numbers.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

BINS = 15  # equal-width confidence bins, as in Guo et al. 2017
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))  # a temperature outside these says the validation is degenerate


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """The mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    scores = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-scores[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T that minimises the validation NLL of logits / T. A bounded 1-d search (Brent) on log T: the NLL is
    convex in 1/T, so it has one minimum along log T, which a 1-d search finds to a tolerance without a learning
    rate, step count or autograd state to tune (LBFGS would need all three for one number)."""
    targets = np.asarray(targets, dtype=np.int64)
    found = minimize_scalar(lambda log_t: nll(logits, targets, math.exp(log_t)), bounds=LOG_T_BOUNDS,
                            method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature), as float32."""
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1).astype(np.float32)


def uncalibrated(calibrated: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities at T = 1 from those at `temperature` (softmax(T * log p) = softmax(logits)): what the
    model said before scaling, without predicting again. Exact for one view's softmax, not for a tta average."""
    with np.errstate(divide="ignore"):  # a probability that underflowed to 0 stays 0
        return softmax(temperature * np.log(np.asarray(calibrated, dtype=np.float64)), axis=1).astype(np.float32)


def reliability(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width confidence bin that holds any prediction: its range, how many, mean confidence, accuracy."""
    confidence = np.asarray(probabilities).max(axis=1)
    correct = np.asarray(probabilities).argmax(axis=1) == np.asarray(targets)
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # a confidence of 1.0 in the last bin
    rows = []
    for number in range(bins):
        inside = which == number
        if inside.any():
            rows.append({"low": number / bins, "high": (number + 1) / bins, "count": int(inside.sum()),
                         "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return rows


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    """ECE: the gap between mean confidence and accuracy in each bin, weighted by the bin's share of predictions."""
    curve = reliability(probabilities, targets, bins)
    total = sum(row["count"] for row in curve)
    return float(sum(row["count"] * abs(row["confidence"] - row["accuracy"]) for row in curve) / max(total, 1))


def log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The mean negative log of the probability given to the true class (floored at 1e-12: one photo given 0
    would make it infinite)."""
    given = np.asarray(probabilities, dtype=np.float64)[np.arange(len(targets)), np.asarray(targets)]
    return float(-np.log(np.maximum(given, 1e-12)).mean())


def calibrate(logits: np.ndarray, targets: np.ndarray) -> dict:
    """The temperature fitted on these logits, with the ECE and NLL on them before and after (what best.json
    records: the figures are on the images T was fitted on, so the after-figure is optimistic)."""
    targets = np.asarray(targets, dtype=np.int64)
    # With every image right, each one's loss falls as T falls: no finite T fits, and T -> 0 would claim certainty
    # on every new photo. Then T stays 1. One mistake is enough for the loss to rise again towards T = 0.
    kept = bool((np.asarray(logits).argmax(axis=1) == targets).all())
    temperature = 1.0 if kept else fit_temperature(logits, targets)
    return {"temperature": temperature, "images": len(targets), "bins": BINS, "kept_at_one": bool(kept),
            "ece_before": expected_calibration_error(probabilities(logits), targets),
            "ece_after": expected_calibration_error(probabilities(logits, temperature), targets),
            "nll_before": nll(logits, targets, 1.0), "nll_after": nll(logits, targets, temperature)}
