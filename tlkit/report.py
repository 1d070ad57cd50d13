"""Every plot and report a run or an evaluation writes: training curves, the confusion matrix, the
per-class report, the reliability diagram, the most confident mistakes (and any contact sheet of photos) and the
lr range test's plot.

matplotlib draws without pyplot (no display, no global backend); each file is written atomically.
Knows nothing of models or training: it is given numbers and paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tlkit.atomic import atomic_write, atomic_write_text
from tlkit.imbalance import balance_scores
from tlkit.pathtext import shown
from tlkit.scan import open_photo


def save_figure(figure, path: Path) -> None:
    # Figure.savefig without pyplot renders with Agg: no display, no global backend switch.
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def plot_curves(path: Path, history: list[dict]) -> None:
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    for axes, kind, title in zip(figure.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        axes.plot(epochs, [row[f"train_{kind}"] for row in history], marker="o", label="training")
        axes.plot(epochs, [row[f"val_{kind}"] for row in history], marker="o", label="validation")
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
    save_figure(figure, path)


def text_colour(image, value) -> str:
    """Black on a light cell, white on a dark one: from the cell's own colour (its luminance), not from
    a threshold on the counts, which left e.g. 13 white on pale blue when the largest count was 17."""
    red, green, blue, _ = image.cmap(image.norm(value))
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"


def plot_confusion(path: Path, targets: list[int], predictions: list[int], classes: list[str], *,
                   subset: str = "validation") -> None:
    """The confusion matrix as an image: rows the true class, columns the predicted one; `subset`
    names the images in the title."""
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(targets, predictions, labels=list(range(len(classes))))
    size = min(4 + 0.4 * len(classes), 20)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
             title=f"confusion ({len(targets)} {subset} images)")
    axes.set_xticklabels(classes, rotation=90 if len(classes) > 6 else 0)
    axes.set_yticklabels(classes)
    if len(classes) <= 30:
        for (row, col), count in zip(((r, c) for r in range(len(classes)) for c in range(len(classes))), matrix.flat):
            axes.text(col, row, str(count), ha="center", va="center", color=text_colour(image, count))
    save_figure(figure, path)


def class_report(targets: list[int], predictions: list[int], classes: list[str]) -> dict:
    """scikit-learn's per-class precision / recall / F1 (as a dict), plus the accuracy, the balanced accuracy,
    the macro F1 and `recall` of each class by name (tlkit/imbalance.py: balance_scores)."""
    from sklearn.metrics import accuracy_score, classification_report

    report = classification_report(
        targets, predictions, labels=list(range(len(classes))), target_names=classes,
        output_dict=True, zero_division=0,
    )
    report["accuracy"] = float(accuracy_score(targets, predictions))
    balance = balance_scores(targets, predictions, len(classes))
    return {**report, **balance, "recall": dict(zip(classes, balance["recall"]))}


def write_report(path: Path, report: dict) -> None:
    atomic_write_text(path, json.dumps(report, indent=2))


def plot_mistakes(path: Path, mistakes: list[dict]) -> None:
    """A contact sheet: each image with its true label, the predicted one and the confidence."""
    plot_photo_sheet(path, [(Path(m["path"]), f"true {m['true']}\npred {m['predicted']} ({m['confidence']:.2f})")
                            for m in mistakes], empty="no mistakes")


def plot_reliability(path: Path, report: dict) -> None:
    """The reliability diagram of an evaluation: accuracy against mean confidence per bin, at the model's
    temperature and, where the report has it, before (tlkit.calibration.reliability); the diagonal is perfect."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="tab:gray", linestyle=":", label="perfectly calibrated")
    if report.get("reliability_uncalibrated"):
        _reliability_line(axes, report["reliability_uncalibrated"], f"T = 1: ECE {report['ece_uncalibrated']:.4f}",
                          "tab:red")
    _reliability_line(axes, report["reliability"], f"T = {report['temperature']:.3g}: ECE {report['ece']:.4f}",
                      "tab:blue")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (mean in each bin)", ylabel="accuracy",
             title=f"reliability ({report['images']} images)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left")
    save_figure(figure, path)


def _reliability_line(axes, curve: list[dict], label: str, colour: str) -> None:
    """One curve, each bin a point whose area grows with how many predictions it holds."""
    counts = np.array([row["count"] for row in curve], dtype=float)
    axes.plot([row["confidence"] for row in curve], [row["accuracy"] for row in curve], color=colour, label=label)
    axes.scatter([row["confidence"] for row in curve], [row["accuracy"] for row in curve], color=colour,
                 s=12 + 200 * counts / counts.sum())


def plot_photo_sheet(path: Path, photos: list[tuple[Path, str]], *, empty: str = "nothing to show") -> None:
    """A contact sheet of photos, four a row, each upright (as the model saw it) under its title."""
    from matplotlib.figure import Figure

    columns = min(4, max(1, len(photos)))
    rows = max(1, -(-len(photos) // columns))
    figure = Figure(figsize=(3 * columns, 3.2 * rows))
    axes_grid = np.atleast_1d(figure.subplots(rows, columns)).flat
    for axes in axes_grid:
        axes.axis("off")
    for axes, (photo, title) in zip(np.atleast_1d(figure.axes), photos):
        image = open_photo(Path(photo), "RGB", draft_side=256)
        image.thumbnail((256, 256))
        axes.imshow(np.asarray(image))
        axes.set_title(shown(title), fontsize=9)
    if not photos:
        figure.axes[0].text(0.5, 0.5, empty, ha="center", va="center")
    save_figure(figure, path)


def plot_lr_find(path: Path, result) -> None:
    """The smoothed loss against the lr (log scale) of an lr range test (tlkit.lrfind.LrFindResult)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(result.lrs, result.losses)
    axes.set_xscale("log")
    axes.axvline(result.suggested_lr, color="tab:red", linestyle="--", label=f"suggested {result.suggested_lr:.2e}")
    axes.axvline(result.min_loss_lr, color="tab:gray", linestyle=":", label=f"min loss {result.min_loss_lr:.2e}")
    axes.set(xlabel="learning rate (log scale)", ylabel="training loss (smoothed)", title="lr range test")
    axes.grid(alpha=0.3)
    axes.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, path)
