"""What happens around the training loop: best weights, early stopping, logs, plots, TensorBoard.

Six events, each given the trainer explicitly: on_fit_start, on_epoch_start, on_batch_end,
on_epoch_end, on_fit_end, and on_interrupt when a run stops on Ctrl-C. A callback with state a resumed run needs has state_dict() and
load_state_dict(). Also the plots and the per-class report written at the end of a run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tlkit import distributed
from tlkit.checkpoint import atomic_write, atomic_write_text, point_latest, save_best


class Callback:
    """Does nothing at every event; subclasses override what they need."""

    def on_fit_start(self, trainer) -> None: ...
    def on_epoch_start(self, trainer) -> None: ...
    def on_batch_end(self, trainer) -> None: ...
    def on_epoch_end(self, trainer) -> None: ...
    def on_fit_end(self, trainer) -> None: ...
    def on_interrupt(self, trainer) -> None: ...  # Ctrl-C or a kill signal Python sees: the run stops

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def _cpu_copy(module) -> dict:
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def is_better(monitor: str, value: float, best: float | None) -> bool:
    """Lower validation loss or higher validation accuracy is better."""
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor.endswith("loss") else value > best


class BestWeights(Callback):
    """Keeps a true copy of the best epoch's weights, writes them as the best checkpoint, restores them at the end.

    While the head alone trains (on cached features) the copy is of the head, and the checkpoint (the
    whole classifier: 528 MB for VGG16) is written once, when that phase ends or is interrupted, not at
    every improving epoch of a second. The resume file holds the best head meanwhile."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None  # {name: tensor} of what trains, copies on the CPU

    def on_epoch_end(self, trainer) -> None:
        row = trainer.history[-1]
        if not is_better(self.monitor, row[self.monitor], self.best_value):
            return
        # A copy: state_dict() returns live references that the next optimizer step would change.
        self.best_state = _cpu_copy(trainer.model)
        self.best_value, self.best_epoch = row[self.monitor], row["epoch"]  # after the copy: a Ctrl-C in it
        if trainer.model is trainer.checkpointed:
            self._write(trainer)

    def on_fit_end(self, trainer) -> None:
        if self.best_state is None:
            return
        self._restore(trainer)
        if trainer.model is not trainer.checkpointed:  # the head phase ends: the whole classifier from now on
            self.best_state = _cpu_copy(trainer.checkpointed)
            self._write(trainer)

    def on_interrupt(self, trainer) -> None:
        if self.best_state is not None and trainer.model is not trainer.checkpointed:
            self._restore(trainer)
            self._write(trainer)

    def _restore(self, trainer) -> None:
        """The best weights back into what trains (or into the whole classifier, where an older head-phase
        resume file held all of it)."""
        trains_keys = trainer.model.state_dict().keys()
        (trainer.model if self.best_state.keys() == trains_keys else trainer.checkpointed).load_state_dict(
            self.best_state)

    def _write(self, trainer) -> None:
        if trainer.run_dir is None or not distributed.is_main():  # under torchrun, rank 0 alone writes
            return
        row = next(row for row in trainer.history if row["epoch"] == self.best_epoch)
        state = self.best_state if trainer.model is trainer.checkpointed else trainer.checkpointed.state_dict()
        save_best(trainer.run_dir, state, trainer.checkpoint_meta(row))
        point_latest(trainer.run_dir)  # only now: runs/latest never names a run that has no model yet

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.best_epoch, self.best_state = state["best_value"], state["best_epoch"], state["best_state"]


class EarlyStopping(Callback):
    """Stops the run after `patience` epochs without improvement of the monitored metric."""

    def __init__(self, monitor: str, patience: int):
        self.monitor, self.patience = monitor, patience
        self.best_value: float | None = None
        self.stale_epochs = 0

    def on_epoch_end(self, trainer) -> None:
        value = trainer.history[-1][self.monitor]
        if is_better(self.monitor, value, self.best_value):
            self.best_value, self.stale_epochs = value, 0
            return
        self.stale_epochs += 1
        if self.stale_epochs >= self.patience:
            trainer.stop_reason = f"early stop: {self.monitor} did not improve for {self.patience} epochs"

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "stale_epochs": self.stale_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.stale_epochs = state["best_value"], state["stale_epochs"]


class MetricsLog(Callback):
    """metrics.jsonl: one JSON line per epoch; rewritten from the history when a run resumes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_fit_start(self, trainer) -> None:
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in trainer.history))

    def on_epoch_end(self, trainer) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(trainer.history[-1]) + "\n")


class Curves(Callback):
    """curves.png: loss and accuracy, training vs validation; redrawn at most every 30 s and at the end."""

    def __init__(self, path: Path, every_s: float = 30.0):
        self.path, self.every_s, self.drawn_at = Path(path), every_s, 0.0

    def on_epoch_end(self, trainer) -> None:
        if time.monotonic() - self.drawn_at > self.every_s:
            self.on_fit_end(trainer)

    def on_fit_end(self, trainer) -> None:
        if trainer.history:
            plot_curves(self.path, trainer.history)
            self.drawn_at = time.monotonic()


class TensorBoard(Callback):
    """Event files under tb/ (only made when tensorboard is installed; see `tensorboard_available`)."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.writer = Path(log_dir), None

    def on_fit_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=len(trainer.history) + 1)

    def on_epoch_end(self, trainer) -> None:
        row = trainer.history[-1]
        for kind in ("loss", "acc"):
            self.writer.add_scalars(kind, {"train": row[f"train_{kind}"], "val": row[f"val_{kind}"]}, row["epoch"])
        self.writer.add_scalar("lr", row["lr"], row["epoch"])
        self.writer.flush()

    def on_fit_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


# ---------------------------------------------------------------- plots and reports


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
    """scikit-learn's per-class precision / recall / F1 (as a dict), plus the accuracy."""
    from sklearn.metrics import accuracy_score, classification_report

    report = classification_report(
        targets, predictions, labels=list(range(len(classes))), target_names=classes,
        output_dict=True, zero_division=0,
    )
    report["accuracy"] = float(accuracy_score(targets, predictions))
    return report


def write_report(path: Path, report: dict) -> None:
    atomic_write_text(path, json.dumps(report, indent=2))


class FreezeSchedule(Callback):
    """--freeze trunk trains the head only; --unfreeze-after E trains the head alone for E epochs, then all."""

    def __init__(self, backbone, freeze: str, unfreeze_after: int | None):
        self.backbone, self.freeze, self.unfreeze_after = backbone, freeze, unfreeze_after

    def trunk_frozen(self, epoch: int) -> bool:
        if self.unfreeze_after is not None:
            return epoch <= self.unfreeze_after
        return self.freeze == "trunk"

    def on_epoch_start(self, trainer) -> None:
        epoch = trainer.epoch + 1
        if self.trunk_frozen(epoch):
            self.backbone.freeze_trunk()
            trainer.frozen = (self.backbone.trunk, self.backbone.head)
            return
        if trainer.frozen is not None and epoch > 1:
            from tlkit.runtime import info

            info(f"epoch {epoch}: trunk unfrozen, training every layer from now on")
        self.backbone.unfreeze()
        trainer.frozen = None
