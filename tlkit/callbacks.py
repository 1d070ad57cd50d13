"""What happens around the training loop: best weights, early stopping, the epoch's console line, logs,
curves, TensorBoard.

Six events, each given the trainer explicitly: on_fit_start, on_epoch_start, on_batch_end,
on_epoch_end, on_fit_end, and on_interrupt when a run stops early (Ctrl-C, a diverged loss). Everything
else a callback needs (where to write, what a checkpoint holds) it is given when it is made. A callback with
state a resumed run needs has state_dict() and load_state_dict(). Plots are drawn by tlkit/report.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

from tlkit import distributed
from tlkit.atomic import atomic_write_text
from tlkit.ownership import note_written
from tlkit.checkpoint import point_latest
from tlkit.checkpoint_format import CheckpointMeta, save_best
from tlkit.report import plot_curves
from tlkit.runtime import info


class Callback:
    """Does nothing at every event; subclasses override what they need."""

    def on_fit_start(self, trainer) -> None: ...
    def on_epoch_start(self, trainer) -> None: ...
    def on_batch_end(self, trainer) -> None: ...
    def on_epoch_end(self, trainer) -> None: ...
    def on_fit_end(self, trainer) -> None: ...
    def on_interrupt(self, trainer) -> None: ...  # Ctrl-C, a kill signal Python sees, a NaN loss: the run stops

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

    `classifier` is what a checkpoint holds: the whole model. While its head alone trains on cached
    features (the phase it is told of by `enter`) the copy is of the head, and the checkpoint (528 MB for
    VGG16) is written once, when that phase ends or is interrupted, not at every improving epoch of a
    second; the resume file holds the best head meanwhile. Without a run_dir (or off rank 0 under
    torchrun) nothing is written."""

    def __init__(self, monitor: str, classifier, *, run_dir: Path | None = None, meta: CheckpointMeta | None = None):
        self.monitor, self.classifier, self.run_dir, self.meta = monitor, classifier, run_dir, meta
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict | None = None  # {name: tensor} of what trains, copies on the CPU
        self.on_features = False  # the phase trains the head alone on cached features
        # The best epoch's validation results (train.evaluate's, collected): the run's end reads them rather than
        # predicting the validation photos again. Not in the resume file: a resumed run without them predicts.
        self.validation: dict | None = None

    def enter(self, phase) -> None:
        """The phase that trains from now on (a recipe.Phase)."""
        self.on_features = phase.on_features

    def on_epoch_end(self, trainer) -> None:
        row = trainer.history[-1]
        if not is_better(self.monitor, row[self.monitor], self.best_value):
            return
        # A copy: state_dict() returns live references that the next optimizer step would change.
        self.best_state = _cpu_copy(trainer.model)
        self.best_value, self.best_epoch = row[self.monitor], row["epoch"]  # after the copy: a Ctrl-C in it
        self.validation = trainer.last_validation
        if not self.on_features:
            self._write(trainer)

    def on_fit_end(self, trainer) -> None:
        if self.best_state is None:
            return
        self._restore(trainer)
        if self.on_features:  # the head phase ends: the whole classifier from now on
            self.best_state = _cpu_copy(self.classifier)
            self._write(trainer)

    def on_interrupt(self, trainer) -> None:
        if self.best_state is not None and self.on_features:
            self._restore(trainer)
            self._write(trainer)

    def _restore(self, trainer) -> None:
        """The best weights back into what trains (or into the whole classifier, where an older head-phase
        resume file held all of it)."""
        trains_keys = trainer.model.state_dict().keys()
        (trainer.model if self.best_state.keys() == trains_keys else self.classifier).load_state_dict(self.best_state)

    def _write(self, trainer) -> None:
        if self.run_dir is None or not distributed.is_main():  # under torchrun, rank 0 alone writes
            return
        row = next(row for row in trainer.history if row["epoch"] == self.best_epoch)
        state = self.classifier.state_dict() if self.on_features else self.best_state
        save_best(self.run_dir, state, self.meta.at_epoch(row))
        point_latest(self.run_dir)  # only now: runs/latest never names a run that has no model yet

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best_value, self.best_epoch, self.best_state = state["best_value"], state["best_epoch"], state["best_state"]


class EpochLine(Callback):
    """One line per epoch on the console: losses, accuracies, lr, speed, and a mark on the best epoch so far."""

    def __init__(self, best: BestWeights):
        self.best = best

    def on_epoch_end(self, trainer) -> None:
        row = trainer.history[-1]
        best = "  [green]* best[/]" if self.best.best_epoch == row["epoch"] else ""
        info(
            f"epoch {row['epoch']:>3}/{trainer.total_epochs}  train loss {row['train_loss']:.4f} acc "
            f"{row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  "
            + (f"map {row['val_map']:.4f}  " if "val_map" in row else "") + f"lr {row['lr']:.2e}  "
            f"{row['images_per_s']:,.0f} img/s  {row['seconds']:.1f}s{best}")


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
        note_written(self.path)  # appended, not rewritten: recorded anew as it grows


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
        self.log_dir, self.writer, self.found_before = Path(log_dir), None, set()

    def on_epoch_end(self, trainer) -> None:
        if self.writer is None:  # made with the first epoch's row: a run stopped before it leaves no tb/ behind
            from torch.utils.tensorboard import SummaryWriter

            self.found_before = self._event_files()
            self.writer = SummaryWriter(str(self.log_dir), purge_step=len(trainer.history))
        row = trainer.history[-1]
        for kind in ("loss", "acc"):
            self.writer.add_scalars(kind, {"train": row[f"train_{kind}"], "val": row[f"val_{kind}"]}, row["epoch"])
        self.writer.add_scalar("lr", row["lr"], row["epoch"])
        self.writer.flush()
        self._record()

    def on_fit_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self._record()

    def _event_files(self) -> set[Path]:
        return {path for path in self.log_dir.rglob("events.out.tfevents.*") if path.is_file()}

    def _record(self) -> None:
        """The event files this writer made, recorded as tlkit's as they grow (their writer is TensorBoard's)."""
        for path in self._event_files() - self.found_before:
            note_written(path)

    on_interrupt = on_fit_end


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None
