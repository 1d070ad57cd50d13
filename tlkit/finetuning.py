"""`tlkit finetune` as a Python function: config -> data -> backbone -> trainer -> run folder.

Builds the pieces train.py runs, owns the run folder (config.yaml, checkpoints, reports,
runs/latest) and what the user sees at the end. `tlkit.finetune(...)` and the CLI call
`finetune()`; `tlkit lr-find` reuses `build_trainer()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

import yaml

from tlkit import callbacks as cbs
from tlkit.checkpoint import (
    BEST_META, BEST_WEIGHTS, RESUME, atomic_write_text, load_resume, new_run_dir, point_latest, save_best,
    save_resume,
)
from tlkit.config import FinetuneConfig, config_to_dict, config_yaml, make_config, resolve_config
from tlkit.data import DataBundle, Normalizer, check_classes, make_data
from tlkit.errors import TlkitError
from tlkit.runtime import console, default_workers, info, out, relpath, seed_everything, warn
from tlkit.train import Trainer, evaluate, fit, make_optimizer, make_scheduler

LIST_LIMIT = 10


@dataclass
class FinetuneResult:
    """What a finished run left behind; `backbone` holds the best weights."""

    run_dir: Path
    classes: list[str]
    history: list[dict]
    best_epoch: int | None
    report: dict  # scikit-learn per-class report of the best weights on validation, + accuracy
    outputs: dict[str, Path]
    backbone: object
    skipped: list[str]


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TlkitError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto.")
    return torch.device(name)


def build_trainer(config: FinetuneConfig, classes: list[str], *, extra_callbacks=(),
                  source=None) -> tuple[Trainer, object, DataBundle]:
    """The backbone, its data and a Trainer, all from the config (seeded first, so init repeats).

    source: another data source than config.data (tlkit.datasets.TrainingSource, for `tlkit train`);
    it builds the backbone fed its data and the DataBundle.
    """
    from tlkit import models

    seed_everything(config.seed)
    device = select_device(config.device)
    if source is None:
        backbone = models.create(config.backbone, num_classes=len(classes), weights=config.weights,
                                 img_size=config.img_size)
    else:
        backbone = source.create_backbone(config, num_classes=len(classes))
    prep = backbone.preprocessing
    workers = default_workers() if config.workers is None else config.workers
    loaders = dict(batch_size=config.batch_size, workers=workers, device=device, seed=config.seed, augment=config.augment)
    data = make_data(Path(config.data), prep, **loaders) if source is None else source.make_data(prep, **loaders)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        backbone.model.to(device, memory_format=torch.channels_last)
    else:
        backbone.model.to(device)
        if workers > 0:
            # Loader processes decode on some cores; more compute threads than the cores left
            # make OpenMP threads wait on each other (several times slower on a 2-core machine).
            torch.set_num_threads(max(1, default_workers() + 1 - workers))
    backbone.unfreeze()  # every group in the optimizer from the start; freezing only stops gradients
    optimizer = make_optimizer(backbone.param_groups(config.lr, config.trunk_lr_mult), config)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(data.train_loader))
    callbacks = [cbs.FreezeSchedule(backbone, config.freeze, config.unfreeze_after), cbs.BestWeights(config.monitor)]
    if config.patience is not None:
        callbacks.append(cbs.EarlyStopping(config.monitor, config.patience))
    meta = {
        "backbone": backbone.name, "weights": backbone.weights, "pretrained": backbone.pretrained,
        "num_classes": len(classes), "classes": classes, "in_chans": prep.in_chans, "img_size": prep.input_size[0],
        "preprocessing": prep.to_dict(), "monitor": config.monitor, "config": config_to_dict(config),
        "data_source": source.settings if source is not None else None,
    }
    trainer = Trainer(
        model=backbone.model, optimizer=optimizer, scheduler=scheduler, scheduler_name=config.scheduler,
        train_loader=data.train_loader, val_loader=data.val_loader, train_sampler=data.train_sampler,
        normalize=Normalizer(prep, device), device=device, precision=config.precision, epochs=config.epochs,
        label_smoothing=config.label_smoothing, callbacks=callbacks + list(extra_callbacks), meta=meta,
    )
    return trainer, backbone, data


def _resume_config(resume: Path, config_file, settings: dict) -> tuple[FinetuneConfig, dict]:
    """The interrupted run's own config (flags given may change it, but not the backbone)."""
    if config_file is not None:
        raise TlkitError("--resume continues with the run's own config.yaml; leave out --config.")
    state = load_resume(resume)
    saved = state["meta"]["config"]
    asked = settings.get("backbone")
    if asked is not None and asked != saved["backbone"]:
        raise TlkitError(
            f"{relpath(resume)} was trained with backbone {saved['backbone']}, not {asked}; resume it without "
            "--backbone, or start a new run (another --name) for the other backbone."
        )
    changed = sorted(key for key, value in settings.items() if saved.get(key) != value)
    if changed:
        warn(f"resuming with changed settings ({', '.join(changed)}): the result may differ from an uninterrupted run")
    return make_config({**saved, **settings}, where=f"{relpath(resume)}/config + flags"), state


def finetune(config_file: Path | str | None = None, *, resume: Path | str | None = None, force: bool = False,
             callbacks=(), source=None, **settings) -> FinetuneResult:
    """Fine-tune a backbone on DATA/training, pick the best epoch on DATA/validation, write runs/<name>/.

    settings are FinetuneConfig fields (data="data", backbone="resnet18", epochs=10, ...); they
    override the YAML config_file. resume: a run folder to continue where it stopped.
    source: train on this (tlkit.datasets.TrainingSource) instead of config.data; the final report
    uses its test split where it has one.
    """
    if resume is not None:
        config, state = _resume_config(Path(resume), config_file, settings)
    else:
        config, state = resolve_config(Path(config_file) if config_file else None, settings), None
    classes = source.classes if source is not None else check_classes(Path(config.data))
    if state is not None and state["meta"]["classes"] != classes:
        raise TlkitError(f"{relpath(Path(config.data))} holds classes {classes}, but {relpath(Path(resume))} "
                         f"was trained on {state['meta']['classes']}; resume with its own --data.")
    trainer, backbone, data = build_trainer(config, classes, extra_callbacks=callbacks, source=source)
    run_dir = Path(resume) if resume is not None else new_run_dir(Path(config.runs_dir), config.name, force)
    _attach_run_dir(trainer, config, run_dir)
    if state is not None:
        trainer.load_state_dict(state)
        info(f"resuming {relpath(run_dir)} after epoch {trainer.epoch} of {config.epochs}")
    else:
        source_yaml = yaml.safe_dump(source.settings, sort_keys=False) if source is not None else ""
        atomic_write_text(run_dir / "config.yaml", source_yaml + config_yaml(config))
    point_latest(run_dir)
    _announce(config, backbone, data, trainer.device, run_dir)
    try:
        fit(trainer, save_resume=lambda resume_state: save_resume(run_dir, resume_state))
    except KeyboardInterrupt:
        command = "train" if source is not None else "finetune"
        console.print(f"continue this run with: tlkit {command} --resume {relpath(run_dir)}")
        raise
    return _finish(trainer, backbone, data, run_dir)


def _attach_run_dir(trainer: Trainer, config: FinetuneConfig, run_dir: Path) -> None:
    """The run folder is made only once everything checked out; give it to the trainer and its writers."""
    trainer.run_dir = run_dir
    writers = [cbs.MetricsLog(run_dir / "metrics.jsonl"), cbs.Curves(run_dir / "curves.png")]
    if cbs.tensorboard_available():
        writers.append(cbs.TensorBoard(run_dir / "tb"))
    trainer.callbacks[2:2] = writers  # after the freeze schedule and the best-weights tracker


def _announce(config: FinetuneConfig, backbone, data: DataBundle, device: torch.device, run_dir: Path) -> None:
    init = "pretrained weights" if backbone.pretrained else "random init (no pretrained weights)"
    precision = "bf16" if device.type == "cuda" and config.precision == "bf16" else "fp32"
    size = "x".join(str(n) for n in backbone.preprocessing.input_size)
    info(f"fine-tuning {backbone.name} ({init}) at {size} px on {len(data.train_set)} training / "
         f"{len(data.val_set)} validation images, {len(data.classes)} classes; {device.type}, {precision}; "
         f"{config.optimizer} lr {config.lr:g}, {config.scheduler} schedule -> {relpath(run_dir)}")


def _finish(trainer: Trainer, backbone, data: DataBundle, run_dir: Path) -> FinetuneResult:
    """Best weights are back in the model: write the checkpoint, confusion matrix and report; show the summary."""
    best = next(cb for cb in trainer.callbacks if isinstance(cb, cbs.BestWeights))
    if best.best_state is None:
        raise TlkitError(f"no epoch gave a usable {best.monitor} (NaN: the training diverged); try a lower --lr.")
    # The final report is on the test split where the data has one (tlkit train), else on validation.
    subset, loader = ("test", data.test_loader) if getattr(data, "test_loader", None) else ("validation", data.val_loader)
    result = evaluate(trainer.model, loader, trainer.normalize, autocast=trainer.autocast, collect=True)
    report = {**cbs.class_report(result["targets"], result["predictions"], data.classes), "subset": subset}
    best_row = next(row for row in trainer.history if row["epoch"] == best.best_epoch)
    save_best(run_dir, best.best_state, trainer.checkpoint_meta(best_row))
    cbs.plot_confusion(run_dir / "confusion.png", result["targets"], result["predictions"], data.classes)
    cbs.write_report(run_dir / "report.json", report)
    outputs = {name: run_dir / name for name in (
        "config.yaml", BEST_WEIGHTS, BEST_META, RESUME, "metrics.jsonl", "curves.png", "confusion.png", "report.json")}
    if (run_dir / "tb").is_dir():
        outputs["tb"] = run_dir / "tb"
    _print_summary(trainer.history, best.best_epoch, report, outputs, sorted(trainer.skipped))
    return FinetuneResult(run_dir=run_dir, classes=data.classes, history=trainer.history, best_epoch=best.best_epoch,
                          report=report, outputs=outputs, backbone=backbone, skipped=sorted(trainer.skipped))


def _print_summary(history: list[dict], best_epoch: int, report: dict, outputs: dict, skipped: list[str]) -> None:
    best_row = next(row for row in history if row["epoch"] == best_epoch)
    last_row = history[-1]
    table = Table(title="best epoch (the saved model) and last epoch")
    table.add_column("")
    table.add_column(f"best: epoch {best_epoch} (saved)", justify="right")
    table.add_column(f"last: epoch {last_row['epoch']}", justify="right")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        table.add_row(key.replace("_", " "), f"{best_row[key]:.4f}", f"{last_row[key]:.4f}")
    out.print(table)
    out.print(f"{report.get('subset', 'validation')} accuracy of the saved model: {report['accuracy']:.4f}")
    for name, path in outputs.items():
        out.print(f"  {name:<16} {relpath(path)}")
    if skipped:
        warn(f"images that failed to decode and were skipped: {len(skipped)}")
        for path in skipped[:LIST_LIMIT]:
            console.print(f"  {path}")
        if len(skipped) > LIST_LIMIT:
            console.print(f"  ... and {len(skipped) - LIST_LIMIT} more")
