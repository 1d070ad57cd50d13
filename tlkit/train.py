"""The training loop: train_one_epoch(), evaluate() and fit() around a Trainer that holds the state.

The loop knows a model, an optimizer, a scheduler, loaders and callbacks, not where they
came from (tlkit/finetuning.py builds them). Everything a resumed run needs is in
Trainer.state_dict(): tensors and plain types only. Schedulers step after optimizer.step()
(per batch for cosine / one-cycle), ReduceLROnPlateau after validation.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext

import torch
from torch import nn
from rich.progress import TextColumn

from tlkit import distributed
from tlkit.config import FinetuneConfig
from tlkit.errors import TlkitError, option
from tlkit.multilabel import mean_average_precision
from tlkit.imbalance import balance_scores
from tlkit.runtime import Compute, info, out_of_memory, progress

# Planned over the phase's steps and stepped each batch; so a resumed run cannot change its epochs (finetuning.py).
PER_BATCH_SCHEDULERS = ("cosine", "onecycle")
ONE_CYCLE_MOMENTUM = (0.95, 0.85)  # OneCycleLR's own: SGD's momentum (AdamW's beta1) at the lowest and highest lr
DISPLAY_EVERY = 10  # batches between reads of the loss from the GPU: the progress bar's figures, the divergence check


class Diverged(TlkitError):
    """The loss became NaN or infinite: every step after it trains broken weights, so the run stops there.
    fit() has the callbacks keep the best weights so far, as on Ctrl-C."""


def diverged(trainer: Trainer, where: str, loss: float) -> Diverged:
    """What to say when the loss is `loss` (NaN or inf) at `where` ("epoch 3, by batch 21 of 40")."""
    rates = ", ".join(f"{group.get('name', 'lr')} {group['lr']:.2e}" for group in trainer.optimizer.param_groups)
    return Diverged(f"the loss became {loss} in {where}: the training diverged, and stopped. The usual cause is "
                    f"too high a learning rate (lr at the time: {rates}); start again with a lower {option('lr')} "
                    f"(`tlkit lr-find` suggests one), or {option('head_lr')} for a head on cached features.")


def make_optimizer(param_groups: list[dict], config) -> torch.optim.Optimizer:
    """SGD with momentum, or AdamW; weight_decay None keeps PyTorch's default."""
    decay = {} if config.weight_decay is None else {"weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, **decay)
    return torch.optim.AdamW(param_groups, lr=config.lr, **decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int):
    """The scheduler the config names (None for `none`)."""
    schedulers = torch.optim.lr_scheduler
    total_steps = max(1, config.epochs * steps_per_epoch)
    if config.scheduler == "step":
        return schedulers.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.scheduler == "plateau":
        return schedulers.ReduceLROnPlateau(optimizer, mode="min", factor=config.gamma, patience=2)
    if config.scheduler == "cosine":
        return schedulers.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.scheduler == "onecycle":
        high, low = ONE_CYCLE_MOMENTUM
        return schedulers.OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
                                     total_steps=total_steps, max_momentum=high, base_momentum=low,
                                     cycle_momentum=config.optimizer == "adamw" or config.momentum > 0)
    return None


def unused_momentum(config) -> str | None:
    """Why the run does not use the --momentum given, or None where it does (or where it is the default): AdamW
    has none, and one-cycle moves SGD's with the lr, as Smith's schedule does; --momentum 0 keeps SGD's off."""
    if config.momentum == FinetuneConfig.momentum:
        return None
    high, low = ONE_CYCLE_MOMENTUM
    if config.optimizer == "adamw":
        return (f"{option('momentum', config.momentum)} is not used: it is SGD's, and adamw has none (its beta1 "
                f"plays the part); add {option('optimizer', 'sgd')} to use it")
    if config.scheduler == "onecycle" and config.momentum > 0:
        return (f"{option('momentum', config.momentum)} is not used: the onecycle schedule moves SGD's momentum "
                f"itself, from {high:g} down to {low:g} as the lr rises and back; use another {option('scheduler')} "
                f"(step, cosine, plateau, none) to keep it, or {option('momentum', 0)} for none")
    return None


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy in which each image counts by its class's weight (None: once), averaged over the batch's
    weights as CrossEntropyLoss(weight=) averages. A smoothed target stays the unweighted loss's: torch's own
    weight= with label_smoothing would weigh the smoothed share of each class by that class's weight instead,
    pulling every image's target towards the small classes."""

    def __init__(self, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.class_weights, self.label_smoothing = class_weights, label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_weights is None:
            return nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        per_image = nn.functional.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="none")
        weights = self.class_weights[labels]
        return (per_image * weights).sum() / weights.sum()


class Trainer:
    """The state of one run (or one phase of it): what trains, on what, and what it has done so far.

    `model` is what the optimizer trains: the whole classifier, or its head alone when the batches are
    cached features. `train_model` is what the training steps call: `model`, or under torchrun a
    DistributedDataParallel around it; evaluation, state and checkpoints use `model`. A phase that
    continues a run starts from the `history` (and the `skipped` files) of the one before it. A multi-label run's
    labels are 0/1 rows [N, L] (its `positive_weights` given): its loss is binary cross-entropy per label."""

    def __init__(self, *, model: nn.Module, optimizer, scheduler, scheduler_name: str, train_loader,
                 val_loader, train_sampler, normalize, compute: Compute, epochs: int,
                 total_epochs: int | None = None, label_smoothing: float = 0.0,
                 class_weights: torch.Tensor | None = None, callbacks: list | None = None,
                 train_model: nn.Module | None = None, frozen: tuple[nn.Module, nn.Module] | None = None,
                 frozen_norms: list[nn.Module] = (), history: list[dict] = (), skipped: set[str] = (),
                 positive_weights: torch.Tensor | None = None, features_of: nn.Module | None = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        # The layer whose input each validation keeps (the trunk's features), and the latest validation's results.
        self.features_of, self.last_validation = features_of, None
        self.train_model: nn.Module = train_model or model
        self.scheduler_name = scheduler_name
        self.train_loader, self.val_loader, self.train_sampler = train_loader, val_loader, train_sampler
        self.normalize, self.compute, self.epochs = normalize, compute, epochs
        self.total_epochs = total_epochs or epochs  # what "epoch 3/10" shows: the whole run's, in any phase
        if positive_weights is not None:  # a multi-label run: a yes/no output per label (tlkit/multilabel.py)
            self.criterion = nn.BCEWithLogitsLoss(pos_weight=positive_weights.to(compute.device))
        else:
            weights = None if class_weights is None else class_weights.to(compute.device, torch.float32)
            self.criterion = WeightedCrossEntropy(weights, label_smoothing)
        self.callbacks = list(callbacks or [])
        self.history: list[dict] = list(history)  # one row per finished epoch
        self.epoch = self.history[-1]["epoch"] if self.history else 0  # epochs finished
        self.stop_reason: str | None = None
        # (frozen trunk, head) while the trunk is frozen: the trunk stays in eval mode (BatchNorm keeps
        # its statistics, dropout off), so training it frozen equals training the head on its features.
        self.frozen = frozen
        # BatchNorm layers that keep their running statistics (eval mode) while their weights train:
        # a pretrained trunk's, so that small batches of new photos do not replace ImageNet's statistics.
        self.frozen_norms: list[nn.Module] = list(frozen_norms)
        self.skipped: set[str] = set(skipped)  # images that failed to decode

    @property
    def device(self) -> torch.device:
        return self.compute.device

    def autocast(self):
        return self.compute.autocast()

    def call(self, event: str) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where the run is; loads with weights_only=True."""
        import numpy as np

        numpy_state = np.random.get_state()
        return {
            "epoch": self.epoch, "history": self.history, "stop_reason": self.stop_reason,
            "skipped": sorted(self.skipped),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
            "rng": {
                "torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def _check_groups(self, saved: dict) -> None:
        """A resume file's optimizer state fits only the parameter groups it was saved with; a tlkit that
        groups them otherwise (before biases and normalisation weights went without weight decay) says so."""
        saved_names = [group.get("name", "lr") for group in saved["param_groups"]]
        names = [group.get("name", "lr") for group in self.optimizer.param_groups]
        if saved_names != names:
            raise TlkitError(f"the resume file's optimizer holds the parameter groups {', '.join(saved_names)}, "
                             f"and this tlkit trains {', '.join(names)} (it takes biases and normalisation weights "
                             "apart, without weight decay), so the run cannot go on from it. Finish it with the "
                             "tlkit that wrote it, or start it again.")

    def load_state_dict(self, state: dict) -> None:
        import numpy as np

        self.epoch, self.history, self.stop_reason = state["epoch"], state["history"], state["stop_reason"]
        self.skipped = set(state["skipped"])
        self.model.load_state_dict(state["model"])
        self._check_groups(state["optimizer"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for callback in self.callbacks:
            callback.load_state_dict(state["callbacks"].get(type(callback).__name__, {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        kind, keys, *rest = rng["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _stats_text(loss_sum, correct, seen: int, started: float) -> str:
    if not seen:
        return ""
    return (f"loss {float(loss_sum) / seen:.4f}  acc {float(correct) / seen:.3f}  "
            f"{seen / max(time.perf_counter() - started, 1e-9):,.0f} img/s")


def set_training_mode(trainer: Trainer) -> None:
    """model.train(), except a frozen trunk and frozen BatchNorm statistics, which stay in eval mode."""
    trainer.model.train()
    for norm in trainer.frozen_norms:
        norm.eval()
    if trainer.frozen is not None:
        trunk, head = trainer.frozen
        trunk.eval()
        head.train()  # a timm trunk wraps the whole model: put the head back in training mode


def train_one_epoch(trainer: Trainer) -> dict:
    """One pass over the training images; returns the per-sample mean loss, accuracy, images/s (of every process)."""
    model, optimizer = trainer.train_model, trainer.optimizer
    set_training_mode(trainer)
    per_batch = trainer.scheduler is not None and trainer.scheduler_name in PER_BATCH_SCHEDULERS
    loss_sum = torch.zeros((), device=trainer.device)  # summed on the device: no sync per batch
    correct = torch.zeros((), device=trainer.device, dtype=torch.long)
    seen, started, lr = 0, time.perf_counter(), None
    with progress(TextColumn("{task.fields[stats]}")) as bar:
        task = bar.add_task(f"epoch {trainer.epoch + 1}/{trainer.total_epochs}", total=len(trainer.train_loader), stats="")
        for batch_index, (images, labels, skipped) in enumerate(trainer.train_loader):
            trainer.skipped.update(skipped)
            if not len(labels) and distributed.world_size() > 1:
                # Skipping this step here would leave the other processes waiting in DDP's all-reduce.
                raise TlkitError(
                    f"every image of a training batch failed to decode in process {distributed.rank()} "
                    f"({', '.join(sorted(skipped)[:3])}, ...); under torchrun each batch needs a usable image. "
                    "Find the broken files with `tlkit check` and remove them."
                )
            if len(labels):
                images, labels = trainer.normalize(images), labels.to(trainer.device, non_blocking=True)
                with trainer.autocast():
                    logits = model(images)
                    loss = trainer.criterion(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = optimizer.param_groups[-1]["lr"]  # the head's (the last group), as this step uses it
                optimizer.step()
                if per_batch:
                    trainer.scheduler.step()
                loss_sum += loss.detach() * len(labels)  # mean per batch x batch size = per-sample sum
                correct += hits(decide(logits, labels), labels)
                seen += len(labels)
            trainer.call("on_batch_end")
            if batch_index % DISPLAY_EVERY == 0 or batch_index + 1 == len(trainer.train_loader):
                _stop_if_diverged(trainer, loss_sum, batch_index)
                if not bar.disable:
                    bar.update(task, stats=_stats_text(loss_sum, correct, seen, started))
            bar.advance(task)
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = distributed.sum_all([loss_sum, correct, seen], trainer.device)
    seen = int(seen)
    if seen == 0:
        raise TlkitError("no training image could be decoded in this epoch; check the images with `tlkit check`.")
    return {"train_loss": float(loss_sum) / seen, "train_acc": float(correct) / seen,
            "train_images": seen, "seconds": seconds, "images_per_s": seen / seconds, "lr": lr}


def decide(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What the model says of a batch: the class (argmax), or for 0/1 label rows each label at logit 0
    (probability 0.5)."""
    return logits > 0 if labels.dim() == 2 else logits.argmax(dim=1)


def hits(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The right answers among a batch's decisions (decide): the class, or for 0/1 label rows the whole set of
    labels (subset accuracy)."""
    if labels.dim() == 2:
        return (predicted == (labels > 0.5)).all(dim=1).sum()
    return (predicted == labels).sum()


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed validation loss: cross-entropy, or for 0/1 label rows binary cross-entropy averaged over the
    labels of each photo (no positive weights: the loss the monitor compares is the plain one)."""
    if labels.dim() == 2:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=1).sum()
    return nn.functional.cross_entropy(logits, labels, reduction="sum")


def _stop_if_diverged(trainer: Trainer, loss_sum: torch.Tensor, batch_index: int) -> None:
    """Raises Diverged once the summed training loss is NaN or infinite. Summed over every process under
    torchrun, so that all of them stop at the same batch (one stopping alone would leave the others waiting)."""
    total = distributed.sum_all([loss_sum], trainer.device)[0]
    if not math.isfinite(total):
        where = f"epoch {trainer.epoch + 1}, by batch {batch_index + 1} of {len(trainer.train_loader)}"
        raise diverged(trainer, where, total)


def evaluate(model: nn.Module, loader, normalize, *, autocast=nullcontext, collect: bool = False,
             skipped: set | None = None, features_of: nn.Module | None = None) -> dict:
    """Mean loss, accuracy, balanced accuracy and macro F1 (tlkit/imbalance.py) over a loader in eval mode; with
    collect, the targets, predictions and logits (float32 numpy [N, C], to fit the temperature on:
    tlkit/calibration.py) too, and with features_of (the head's first layer: backbone.first_layer) its input for
    each image, the trunk's features as predict keeps them (float32 numpy [N, D]: "features"). Multi-label batches
    (0/1 label rows) give the mean average precision, val_map, instead of the balanced scores, and always keep the
    logits (its ranking needs every photo).

    Under torchrun each process evaluates its share of the loader, and the result is over all of them.
    """
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, targets, predictions, outputs, class_count, multi_label = 0, [], [], [], 0, 0
    features = []
    hook = None if features_of is None else features_of.register_forward_pre_hook(
        lambda _, inputs: features.append(inputs[0].flatten(1).float().cpu()))  # [N, D, 1, 1] into a 1x1 conv
    with torch.inference_mode(), hook or nullcontext():  # a RemovableHandle removes the hook on leaving
        for images, labels, bad in loader:
            if skipped is not None:
                skipped.update(bad)
            if not len(labels):
                continue
            images, labels = normalize(images), labels.to(device, non_blocking=True)
            with autocast():
                logits = model(images)
            loss_sum += _loss_sum(logits.float(), labels)
            predicted = decide(logits, labels)
            correct += hits(predicted, labels)
            seen += len(labels)
            multi_label = int(labels.dim() == 2)
            targets.append(labels)  # on the device: read back once, after the loop
            predictions.append(predicted)
            class_count = logits.shape[1]
            if collect or multi_label:
                outputs.append(logits.float().cpu())
    # Summed with the rest: every process learns that the batches are multi-label, even one whose share was empty.
    loss_sum, correct, seen, multi_label = distributed.sum_all([loss_sum, correct, seen, multi_label], device)
    targets, predictions = (torch.cat(rows).tolist() if rows else [] for rows in (targets, predictions))
    if distributed.world_size() > 1:
        shares = distributed.all_gather((targets, predictions, outputs, class_count, features))
        targets = [target for share, *_ in shares for target in share]
        predictions = [predicted for _, share, *_ in shares for predicted in share]
        outputs = [rows for _, _, share, *_ in shares for rows in share]
        class_count = max(count for _, _, _, count, _ in shares)
        features = [rows for *_, share in shares for rows in share]
    if seen == 0:
        raise TlkitError("no validation image could be decoded; check them with `tlkit check`.")
    seen = int(seen)
    result = {"val_loss": loss_sum / seen, "val_acc": correct / seen, "val_images": seen}
    if multi_label:
        result["val_map"] = mean_average_precision(torch.tensor(targets).numpy(), torch.cat(outputs).sigmoid().numpy())
    else:
        balance = balance_scores(targets, predictions, class_count)
        result.update(val_balanced_acc=balance["balanced_accuracy"], val_macro_f1=balance["macro_f1"])
    if not collect:
        return result
    logits = torch.cat(outputs).numpy()
    features = torch.cat(features).numpy() if features else None
    # Not where the layer ran other than once an image (a model that calls its head twice): predict computes them.
    kept = {"features": features} if features is not None and len(features) == len(logits) else {}
    return {**result, "targets": targets, "predictions": predictions, "logits": logits, **kept}


def _run_epoch(trainer: Trainer) -> dict:
    trainer.train_sampler.set_epoch(trainer.epoch + 1)
    trainer.call("on_epoch_start")
    train = train_one_epoch(trainer)
    val = evaluate(trainer.model, trainer.val_loader, trainer.normalize, autocast=trainer.autocast,
                   skipped=trainer.skipped, collect=True, features_of=trainer.features_of)
    trainer.last_validation = val  # the run's end reports the best epoch's, not predicted again
    if not math.isfinite(val["val_loss"]):  # the last steps of the epoch broke the weights
        raise diverged(trainer, f"the validation after epoch {trainer.epoch + 1}", val["val_loss"])
    if trainer.scheduler_name == "plateau":
        trainer.scheduler.step(val["val_loss"])
    elif trainer.scheduler is not None and trainer.scheduler_name not in PER_BATCH_SCHEDULERS:
        trainer.scheduler.step()
    return {"epoch": trainer.epoch + 1, "train_loss": train["train_loss"], "train_acc": train["train_acc"],
            "val_loss": val["val_loss"], "val_acc": val["val_acc"],
            # a single-label run's balanced scores, or a multi-label run's val_map
            **{key: val[key] for key in ("val_balanced_acc", "val_macro_f1", "val_map") if key in val},
            "lr": train["lr"],  # of the epoch's last step (a schedule's next value may lie past its end)
            "seconds": round(train["seconds"], 3), "images_per_s": round(train["images_per_s"], 1)}


def fit(trainer: Trainer, save_resume=None) -> None:
    """Train until trainer.epochs (or a callback stops it); then the callbacks' on_fit_end (best weights back).

    save_resume(state, last=...) is offered the state after every epoch (checkpoint.ResumeWriter decides
    when to write it)."""
    trainer.call("on_fit_start")
    try:
        while trainer.epoch < trainer.epochs and trainer.stop_reason is None:
            row = _run_epoch(trainer)
            trainer.history.append(row)
            trainer.epoch = row["epoch"]
            trainer.call("on_epoch_end")
            if save_resume is not None:
                save_resume(trainer.state_dict(), last=trainer.epoch >= trainer.epochs or trainer.stop_reason is not None)
    except (KeyboardInterrupt, Diverged):
        try:
            trainer.call("on_interrupt")
        except Exception as error:  # noqa: BLE001 (the Ctrl-C or divergence and its hint must still come through)
            info(f"[red]could not save on the way out: {error}[/]")
        raise
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        held = getattr(trainer.train_loader, "images", None)  # --cache-images keeps the pixels on the GPU
        cache = (f", or leave out {option('cache_images')} (its pixels take {held.nbytes / 1e9:.1f} GB of the GPU)"
                 if isinstance(held, torch.Tensor) and held.is_cuda else "")
        message = out_of_memory(error, batch_size=trainer.train_loader.batch_size, gpu_hint=cache)
        if message is None:
            raise
        raise TlkitError(message) from None
    if trainer.stop_reason:
        info(trainer.stop_reason)
    trainer.call("on_fit_end")
