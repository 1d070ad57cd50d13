"""The learning-rate range test (Leslie Smith; fastai's lr_find): train briefly while the lr grows
exponentially, record the loss, suggest the lr where the loss falls fastest.

Sweeps a Trainer of its own (build_trainer: one phase on the images, no run folder), leaves its model and
optimizer exactly as it found them, and writes nothing but the plot.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from tlkit import distributed
from tlkit.atomic import check_writable
from tlkit.backbone import Backbone
from tlkit.config import FinetuneConfig, resolve_config
from tlkit.errors import TlkitError, option
from tlkit.finetuning import assemble_trainer, trackers
from tlkit.inputs import TrainingInput, image_input, open_photos
from tlkit.ownership import why_kept
from tlkit.pathtext import refuse_stdout
from tlkit.recipe import plan_phases
from tlkit.report import plot_lr_find
from tlkit.run_backbone import create_backbone, run_config
from tlkit.runtime import compute_for, progress, relpath
from tlkit.train import Trainer, set_training_mode

MIN_FALL = 0.05  # the loss must fall by this share of its starting value for a suggestion to mean something


@dataclass
class LrFindResult:
    lrs: list[float]  # the head's lr at each step
    losses: list[float]  # the smoothed training loss after each step
    suggested_lr: float  # where the smoothed loss falls fastest (steepest descent in log lr)
    min_loss_lr: float  # where it is lowest; a tenth of this is the other common choice
    loss_fell: bool  # False: the loss never fell clearly, and the two lrs above are noise


def _batches(loader):
    """The loader's batches, again and again, for as many steps as the sweep wants."""
    while True:
        yield from loader


def lr_range_test(trainer: Trainer, *, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
                  smoothing: float = 0.98, diverge: float = 4.0) -> LrFindResult:
    """Sweep the lr from start_lr to end_lr over `steps` batches (each group keeps its ratio to the head's)."""
    model, optimizer = trainer.model, trainer.optimizer
    saved_model = {key: value.detach().clone() for key, value in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())  # its tensors change in place as it steps
    head_lr = optimizer.param_groups[-1]["lr"]
    ratios = [group["lr"] / head_lr for group in optimizer.param_groups]
    lrs, losses, running, best = [], [], 0.0, math.inf
    trainer.call("on_epoch_start")  # the freeze schedule of the first epoch
    set_training_mode(trainer)
    try:
        with progress() as bar:
            task = bar.add_task("lr range test", total=steps)
            for step, (images, labels, _) in zip(range(steps), _batches(trainer.train_loader)):
                if not len(labels):
                    continue  # every image of this batch failed to decode
                lr = start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))
                for group, ratio in zip(optimizer.param_groups, ratios):
                    group["lr"] = lr * ratio
                images, labels = trainer.normalize(images), labels.to(trainer.device, non_blocking=True)
                with trainer.autocast():
                    loss = trainer.criterion(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                running = smoothing * running + (1 - smoothing) * loss.item()
                smoothed = running / (1 - smoothing ** (step + 1))  # bias-corrected running mean
                lrs.append(lr)
                losses.append(smoothed)
                bar.advance(task)
                best = min(best, smoothed)
                if not math.isfinite(smoothed) or (step > 10 and smoothed > diverge * best):
                    break  # diverged: larger lrs only get worse
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    return LrFindResult(lrs=lrs, losses=losses, **suggest(lrs, losses))


def suggest(lrs: list[float], losses: list[float]) -> dict:
    """The steepest fall of the loss (in log lr) before its minimum, the lr of the minimum, and whether the
    loss fell clearly at all (by MIN_FALL of where it started); without a fall the suggestion follows noise.

    The first tenth of the sweep is left out: the running mean is still settling there, and those lrs are
    far too small to train with anyway."""
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    if len(finite) < 3:
        first = finite[0][0] if finite else lrs[0]
        return {"suggested_lr": first, "min_loss_lr": first, "loss_fell": False}
    skip = len(finite) // 10
    lowest = min(range(skip, len(finite)), key=lambda i: finite[i][1])
    slopes = {i: (finite[i + 1][1] - finite[i][1]) / (math.log(finite[i + 1][0]) - math.log(finite[i][0]))
              for i in range(skip, max(skip + 1, lowest))}
    steepest = min(slopes, key=slopes.get)
    fell = finite[lowest][1] < (1 - MIN_FALL) * finite[skip][1]
    return {"suggested_lr": finite[steepest][0], "min_loss_lr": finite[lowest][0], "loss_fell": fell}


def build_trainer(config: FinetuneConfig, *, source=None) -> tuple[Trainer, Backbone, TrainingInput]:
    """A Trainer on the images, with no run folder (what `tlkit lr-find` sweeps): of the head alone with
    --freeze trunk, else of every layer."""
    one_phase = dataclasses.replace(config, freeze="trunk" if config.freeze == "trunk" else "none",
                                    unfreeze_after=None, precompute_features=False)
    config = run_config(one_phase, source)
    source = open_photos(config, source)
    compute = compute_for(config.device, config.precision)
    distributed.setup(compute.device)  # under torchrun: before the loaders, which take this process's share
    backbone = create_backbone(config, source.classes, source)
    phase = plan_phases(config)[0]
    data = image_input(config, backbone, compute, source)
    return assemble_trainer(phase, backbone, data, compute, trackers(config, backbone)), backbone, data


def find_lr(config_file: Path | str | None = None, *, out: Path, force: bool = False, start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 100, **settings) -> LrFindResult:
    """`tlkit lr-find`: the range test on the model and data the settings name (as `finetune` would train
    them, without a schedule), its plot written to `out` (never over a file without force)."""
    refuse_stdout(out, "a plot")
    out = Path(out)
    if out.exists() and not force:
        raise TlkitError(f"{relpath(out)} already exists; nothing was written. Use {option('force', True)} to replace "
                         f"it, or {option('out', 'FILE')}.")
    if out.exists() and (why := why_kept(out)):
        raise TlkitError(f"{relpath(out)} is not a plot of tlkit's ({why}), and {option('force', True)} replaces only "
                         f"those; nothing was written. Choose another {option('out', 'FILE')}, or move it away.")
    check_writable(out.parent, "out")
    if not start_lr < end_lr:
        raise TlkitError(f"{option('start_lr', start_lr)} must be below {option('end_lr', end_lr)}: the sweep grows "
                         "the lr.")
    config = resolve_config(Path(config_file) if config_file else None, {**settings, "scheduler": "none"})
    trainer, _, _ = build_trainer(config)
    result = lr_range_test(trainer, start_lr=start_lr, end_lr=end_lr, steps=steps)
    plot_lr_find(out, result)
    return result
