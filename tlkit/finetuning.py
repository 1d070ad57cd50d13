"""`tlkit finetune` as a Python function: config -> data -> backbone -> trainer -> run folder.

Builds the pieces train.py runs, owns the run folder (config.yaml, checkpoints, reports,
runs/latest) and what the user sees at the end. `tlkit.finetune(...)` and the CLI call
`finetune()`; `tlkit lr-find` reuses `build_trainer()`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table

import yaml

from tlkit import callbacks as cbs, distributed
from tlkit.checkpoint import (
    BEST_META, BEST_WEIGHTS, RESUME, ResumeWriter, atomic_write_text, load_resume, new_run_dir,
)
from tlkit.config import FinetuneConfig, config_to_dict, config_yaml, make_config, resolve_auto, resolve_config
from tlkit.data import DataBundle, check_classes, make_data
from tlkit.decode import Normalizer
from tlkit.errors import TlkitError
from tlkit.runtime import (
    channels_last, console, default_workers, info, out, precision_words, relpath, seed_everything, select_device, warn,
)
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


def starts_pretrained(config: FinetuneConfig) -> bool:
    """Whether the run starts from trained tensors: ImageNet's (the default where the backbone has
    them) or a file's; the classic nets and --weights none start from a random initialisation."""
    from tlkit import models

    if config.weights == "default":
        spec = models.REGISTRY.get(config.backbone)
        return spec is None or spec.family != "classic"
    return config.weights != "none"


def run_config(config: FinetuneConfig, source=None) -> FinetuneConfig:
    """The config with every `auto` chosen for this backbone and data (config.resolve_auto)."""
    from tlkit import models

    data_augment = getattr(source, "augment", "default")  # a folder of photos: crops and mirroring
    return resolve_auto(config, pretrained=starts_pretrained(config), data_augment=data_augment,
                        linear_head=models.has_linear_head(config.backbone))


def _create_backbone(config: FinetuneConfig, classes: list[str], source=None):
    """Seeded first, so a random initialisation repeats."""
    from tlkit import models

    seed_everything(config.seed)
    if source is not None:
        return source.create_backbone(config, num_classes=len(classes))
    return models.create(config.backbone, num_classes=len(classes), weights=config.weights, img_size=config.img_size)


def build_trainer(config: FinetuneConfig, classes: list[str], *, extra_callbacks=(), source=None,
                  backbone=None) -> tuple[Trainer, object, DataBundle]:
    """The backbone, its data and a Trainer, all from the config.

    source: another data source than config.data (tlkit.datasets.TrainingSource, for `tlkit train`);
    it builds the backbone fed its data and the DataBundle. backbone: continue with this one
    (after training its head from cached features) instead of building it, and without reseeding.
    """
    config = run_config(config, source)
    device = select_device(config.device)
    distributed.setup(device)  # under torchrun: before the loaders, which take this process's share
    backbone = backbone or _create_backbone(config, classes, source)
    prep = backbone.preprocessing
    workers = default_workers() if config.workers is None else config.workers
    loaders = dict(batch_size=config.batch_size, workers=workers, device=device, seed=config.seed, augment=config.augment)
    if source is not None:
        data = source.make_data(prep, **loaders)
    elif config.cache_images:
        from tlkit.imagecache import make_cached_data

        data = make_cached_data(Path(config.data), prep, cache_root=config.cache_dir, **loaders)
    else:
        data = make_data(Path(config.data), prep, **loaders)
    nhwc = channels_last(device, config.precision)
    backbone.model.to(device, memory_format=torch.channels_last) if nhwc else backbone.model.to(device)
    # On the CPU the training step keeps every core's thread while loader processes decode beside it:
    # decoding takes a few ms a photo, the step tens. Measured on 2 cores (ResNet18, bf16, 300 photos):
    # an epoch in 20.3 s with 2 threads, 29.7 s with one left to the loader; simple-cnn at 64 px equal.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    backbone.unfreeze()  # every group in the optimizer from the start; freezing only stops gradients
    optimizer = make_optimizer(backbone.param_groups(scaled_lr(config), config.trunk_lr_mult), config)
    # After a head trained from cached features, the images get the epochs that are left: a fresh
    # optimizer and schedule over those (not a schedule restarted at its peak for the whole run).
    epochs_left = config.epochs - head_epochs(config) if config.precompute_features else config.epochs
    scheduler = make_scheduler(optimizer, dataclasses.replace(config, epochs=max(1, epochs_left)),
                               steps_per_epoch=len(data.train_loader))
    callbacks = [cbs.FreezeSchedule(backbone, config.freeze, config.unfreeze_after), cbs.BestWeights(config.monitor)]
    if config.patience is not None:
        callbacks.append(cbs.EarlyStopping(config.monitor, config.patience))
    meta = _run_meta(config, backbone, classes, source)
    trainer = Trainer(
        model=backbone.model, optimizer=optimizer, scheduler=scheduler, scheduler_name=config.scheduler,
        train_loader=data.train_loader, val_loader=data.val_loader, train_sampler=data.train_sampler,
        normalize=Normalizer(prep, device, nhwc), device=device, precision=config.precision, epochs=config.epochs,
        label_smoothing=config.label_smoothing, callbacks=callbacks + list(extra_callbacks), meta=meta,
    )
    if config.freeze_bn:
        trainer.frozen_norms = [module for module in backbone.trunk.modules()
                                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    # A frozen trunk gets no gradients; DistributedDataParallel must be told to expect that. (After a head
    # trained from cached features, the trunk is never frozen again.)
    freezes = config.freeze == "trunk" or (config.unfreeze_after is not None and not config.precompute_features)
    trainer.train_model = distributed.wrap_model(backbone.model, device, find_unused_parameters=freezes)
    return trainer, backbone, data


def scaled_lr(config: FinetuneConfig) -> float:
    """The lr the optimizer starts from: --lr, times the number of processes with --lr-scale linear."""
    return config.lr * distributed.world_size() if config.lr_scale == "linear" else config.lr


def _run_meta(config: FinetuneConfig, backbone, classes: list[str], source=None) -> dict:
    """What best.json and the resume file record beside the weights, to rebuild and label the model."""
    prep = backbone.preprocessing
    return {
        "backbone": backbone.name, "weights": backbone.weights, "pretrained": backbone.pretrained,
        "num_classes": len(classes), "classes": classes, "in_chans": prep.in_chans, "img_size": prep.input_size[0],
        "preprocessing": prep.to_dict(), "monitor": config.monitor, "config": config_to_dict(config),
        "data_source": source.settings if source is not None else None,
        "processes": distributed.world_size(),  # the lr of --lr-scale linear depends on it
    }


@dataclass
class FeatureBundle:
    """Cached features standing in for the images (what _finish needs of a DataBundle)."""

    classes: list[str]
    train_loader: object
    val_loader: object


def head_epochs(config: FinetuneConfig) -> int:
    """With --precompute-features, the epochs the head trains from the cache."""
    return config.unfreeze_after if config.unfreeze_after is not None else config.epochs


def build_feature_trainer(config: FinetuneConfig, classes: list[str], *, extra_callbacks=()) -> tuple[Trainer, object, FeatureBundle]:
    """The head alone, trained on the frozen trunk's cached features (computed now if stale).

    Same init, order and optimizer as training through the frozen trunk, so the same head comes out.
    """
    from tlkit.features import FeatureLoader, precompute, to_device_float

    config = run_config(config)
    device = select_device(config.device)
    distributed.setup(device)
    backbone = _create_backbone(config, classes)
    sets = precompute(backbone, Path(config.data), cache_root=config.cache_dir, device=device,
                      workers=default_workers() if config.workers is None else config.workers,
                      views=config.precompute_views, dtype=config.cache_dtype, precision=config.precision)
    backbone.model.to(device)
    backbone.freeze_trunk()
    head_config = dataclasses.replace(config, lr=config.head_lr, weight_decay=config.head_weight_decay)
    train_loader = FeatureLoader(sets["training"], batch_size=config.batch_size, device=device, shuffle=True,
                                 seed=config.seed)
    val_loader = FeatureLoader(sets["validation"], batch_size=config.batch_size, device=device, shuffle=False)
    optimizer = make_optimizer(backbone.param_groups(scaled_lr(head_config), config.trunk_lr_mult), head_config)
    schedule = dataclasses.replace(head_config, epochs=head_epochs(config))
    scheduler = make_scheduler(optimizer, schedule, steps_per_epoch=len(train_loader))
    callbacks = [cbs.BestWeights(config.monitor)]
    if config.patience is not None:
        callbacks.append(cbs.EarlyStopping(config.monitor, config.patience))
    trainer = Trainer(
        model=backbone.head, optimizer=optimizer, scheduler=scheduler, scheduler_name=config.scheduler,
        train_loader=train_loader, val_loader=val_loader, train_sampler=train_loader,
        normalize=to_device_float(device), device=device, precision=config.precision, epochs=schedule.epochs,
        label_smoothing=config.label_smoothing, callbacks=callbacks + list(extra_callbacks),
        meta={**_run_meta(config, backbone, classes), "phase": "head"},
    )
    trainer.checkpointed = backbone.model  # best.safetensors holds the whole classifier
    trainer.total_epochs = config.epochs
    trainer.train_model = distributed.wrap_model(backbone.head, device)
    return trainer, backbone, FeatureBundle(classes, train_loader, val_loader)


def _continue_end_to_end(head_trainer: Trainer, config: FinetuneConfig, classes: list[str], backbone,
                         extra_callbacks) -> tuple[Trainer, DataBundle]:
    """After --unfreeze-after E epochs on the cache: every layer, on the images, same history and trackers."""
    trainer, _, data = build_trainer(config, classes, extra_callbacks=extra_callbacks, backbone=backbone)
    trainer.history, trainer.epoch, trainer.skipped = head_trainer.history, head_trainer.epoch, head_trainer.skipped
    earlier = {type(callback).__name__: callback for callback in head_trainer.callbacks}
    for callback in trainer.callbacks:
        if type(callback).__name__ in earlier:
            callback.load_state_dict(earlier[type(callback).__name__].state_dict())
    info(f"epoch {trainer.epoch + 1}: the head is trained; every layer now trains on the images, with a "
         f"fresh optimizer and {config.scheduler} schedule over the {config.epochs - trainer.epoch} epoch(s) left")
    return trainer, data


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
    config = run_config(config, source)
    for flag, asked in (("--precompute-features", config.precompute_features), ("--cache-images", config.cache_images)):
        if asked and source is not None:
            raise TlkitError(f"{flag} needs DATA/training and DATA/validation image folders (tlkit finetune); "
                             "built-in datasets are decoded into memory already and train end to end.")
    classes = source.classes if source is not None else check_classes(Path(config.data))
    if state is not None and state["meta"]["classes"] != classes:
        raise TlkitError(f"{relpath(Path(config.data))} holds classes {classes}, but {relpath(Path(resume))} "
                         f"was trained on {state['meta']['classes']}; resume with its own --data.")
    # With --precompute-features the head trains on cached features first. A resume file says which
    # phase wrote it (its weights are the head alone, or the whole model), whatever flags are given now.
    if state is not None:
        from_features = state["meta"].get("phase") == "head"
    else:
        from_features = config.precompute_features
    if from_features:
        trainer, backbone, data = build_feature_trainer(config, classes, extra_callbacks=callbacks)
    else:
        trainer, backbone, data = build_trainer(config, classes, extra_callbacks=callbacks, source=source)
    if resume is not None:
        run_dir = Path(resume)
    else:  # under torchrun rank 0 makes the folder (and names it) and tells the others
        run_dir = distributed.on_main(lambda: new_run_dir(Path(config.runs_dir), config.name, force))
    _attach_run_dir(trainer, config, run_dir)
    if state is not None:
        trainer.load_state_dict(state)
        info(f"resuming {relpath(run_dir)} after epoch {trainer.epoch} of {config.epochs}")
        before, now = state["meta"].get("processes", 1), distributed.world_size()
        if config.lr_scale == "linear" and before != now:
            warn(f"the run was trained by {before} process(es) and resumes with {now}: its optimizer and schedule "
                 f"keep the lr scaled for {before} (--lr-scale linear); the result differs from either run")
    elif distributed.is_main():
        source_yaml = yaml.safe_dump(source.settings, sort_keys=False) if source is not None else ""
        atomic_write_text(run_dir / "config.yaml", source_yaml + config_yaml(config))
    _announce(config, backbone, data, trainer.device, run_dir)
    command = "train" if source is not None else "finetune"
    _fit(trainer, run_dir, command, config)
    if from_features and trainer.epoch < config.epochs and trainer.stop_reason is None:
        trainer, data = _continue_end_to_end(trainer, config, classes, backbone, callbacks)
        _attach_run_dir(trainer, config, run_dir)
        _fit(trainer, run_dir, command, config)
    result = _finish(trainer, backbone, data, run_dir)
    distributed.barrier()  # every process returns once rank 0 has written the run folder
    return result


def _fit(trainer: Trainer, run_dir: Path, command: str, config: FinetuneConfig) -> None:
    writer = ResumeWriter(run_dir, config.resume_every_epochs, config.resume_every_seconds)
    try:
        fit(trainer, save_resume=writer if distributed.is_main() else None)
    except KeyboardInterrupt:
        if distributed.is_main():
            try:
                writer.flush()  # the last finished epoch, if the cadence had not written it yet
            except Exception as error:  # noqa: BLE001 (the Ctrl-C and its hint must still come through)
                console.print(f"[red]could not write {RESUME} on the way out: {error}[/]")
        if (run_dir / RESUME).is_file():
            console.print(f"continue this run with: tlkit {command} --resume {relpath(run_dir)}")
        else:  # stopped before the first epoch ended: nothing to continue from
            console.print(f"no epoch had ended, so there is nothing to resume: start again (add --force to "
                          f"replace {relpath(run_dir)})")
        raise


def _attach_run_dir(trainer: Trainer, config: FinetuneConfig, run_dir: Path) -> None:
    """The run folder is made only once everything checked out; give it to the trainer and its writers."""
    trainer.run_dir = run_dir
    if not distributed.is_main():
        return  # under torchrun rank 0 alone writes
    writers = [cbs.MetricsLog(run_dir / "metrics.jsonl"), cbs.Curves(run_dir / "curves.png")]
    if cbs.tensorboard_available():
        writers.append(cbs.TensorBoard(run_dir / "tb"))
    trainer.callbacks[2:2] = writers  # after the freeze schedule and the best-weights tracker


def _announce(config: FinetuneConfig, backbone, data: DataBundle, device: torch.device, run_dir: Path) -> None:
    """The run's first line: what trains on what, and every setting that decides the result."""
    init = "pretrained weights" if backbone.pretrained else "random init (no pretrained weights)"
    precision = precision_words(device, config.precision)
    size = "x".join(str(n) for n in backbone.preprocessing.input_size)
    if isinstance(data, FeatureBundle):
        what = f"the head, on cached features of {data.train_loader.size} training / {data.val_loader.size}"
    else:
        what = f"{len(data.train_set)} training / {len(data.val_set)}"
    info(f"fine-tuning {backbone.name} ({init}) at {size} px: {what} validation images, {len(data.classes)} "
         f"classes; {device.type}, {precision} -> {relpath(run_dir)}")
    info(f"weights: {backbone.weights_note}")
    if backbone.weights not in ("none", "imagenet") and "randomly initialised" in backbone.weights_note:
        warn(f"{relpath(Path(backbone.weights))} was trained for other classes than these {len(data.classes)}: its "
             "trunk is used, but the head starts from a random initialisation")
    info(f"settings: {_plan(config)}; {_rates(config)}; {config.scheduler} schedule, "
         f"batch {config.batch_size}, augment {config.augment}, BatchNorm statistics "
         f"{'frozen' if config.freeze_bn else 'updated'}, monitor {config.monitor}, seed {config.seed} "
         f"(all in config.yaml)")
    world = distributed.world_size()
    if world > 1:
        info(f"{world} processes (DistributedDataParallel): effective batch size {config.batch_size * world} "
             f"({config.batch_size} per process x {world}); lr {scaled_lr(config):g} "
             f"(--lr {config.lr:g}, --lr-scale {config.lr_scale})")


def _plan(config: FinetuneConfig) -> str:
    """What trains when, in words."""
    if config.precompute_features:
        head = config.unfreeze_after if config.unfreeze_after is not None else config.epochs
        rest = f", then every layer on the images for {config.epochs - head}" if config.epochs > head else ""
        return f"{config.epochs} epochs: the head on cached features for {head}{rest}"
    if config.freeze == "trunk":
        return f"{config.epochs} epochs of the head alone (trunk frozen)"
    if config.unfreeze_after:
        return f"{config.epochs} epochs: the head alone for {config.unfreeze_after}, then every layer"
    return f"{config.epochs} epochs of every layer"


def _rates(config: FinetuneConfig) -> str:
    """The optimizer's lr and weight decay in each phase, in words."""
    def rate(lr: float, decay: float | None, trunk: bool) -> str:
        trunk_lr = f" (trunk {lr * config.trunk_lr_mult:g})" if trunk and config.trunk_lr_mult != 1 else ""
        shown = f"{decay:g}" if decay is not None else ("0.01 (adamw's)" if config.optimizer == "adamw" else "0")
        return f"lr {lr:g}{trunk_lr}, weight decay {shown}"

    images = rate(scaled_lr(config), config.weight_decay, trunk=config.freeze != "trunk")
    if not config.precompute_features:
        return f"{config.optimizer} {images}"
    cache = rate(scaled_lr(dataclasses.replace(config, lr=config.head_lr)), config.head_weight_decay, trunk=False)
    later = config.unfreeze_after is not None and config.epochs > config.unfreeze_after
    return f"{config.optimizer} {cache} on the cache" + (f"; every layer: {images}" if later else "")


def _finish(trainer: Trainer, backbone, data: DataBundle, run_dir: Path) -> FinetuneResult:
    """Best weights are back in the model: write the checkpoint, confusion matrix and report; show the summary."""
    best = next(cb for cb in trainer.callbacks if isinstance(cb, cbs.BestWeights))
    if best.best_state is None:
        raise TlkitError(f"no epoch gave a usable {best.monitor} (NaN: the training diverged); try a lower --lr.")
    # The final report is on the test split where the data has one (tlkit train), else on validation.
    subset, loader = ("test", data.test_loader) if getattr(data, "test_loader", None) else ("validation", data.val_loader)
    result = evaluate(trainer.model, loader, trainer.normalize, autocast=trainer.autocast, collect=True)
    report = {**cbs.class_report(result["targets"], result["predictions"], data.classes), "subset": subset}
    backbone.model.to(memory_format=torch.contiguous_format)  # handed back as a checkpoint loads: plain NCHW
    # best.safetensors was written by BestWeights (when that epoch or the head phase ended); not again here.
    if distributed.is_main():  # under torchrun rank 0 alone writes (every process holds the same results)
        cbs.plot_confusion(run_dir / "confusion.png", result["targets"], result["predictions"], data.classes)
        cbs.write_report(run_dir / "report.json", report)
    skipped = sorted(set().union(*distributed.all_gather(trainer.skipped)))  # met by any process
    outputs = {name: run_dir / name for name in (
        "config.yaml", BEST_WEIGHTS, BEST_META, RESUME, "metrics.jsonl", "curves.png", "confusion.png", "report.json")}
    if (run_dir / "tb").is_dir():
        outputs["tb"] = run_dir / "tb"
    _print_summary(trainer.history, best.best_epoch, report, outputs, skipped)
    return FinetuneResult(run_dir=run_dir, classes=data.classes, history=trainer.history, best_epoch=best.best_epoch,
                          report=report, outputs=outputs, backbone=backbone, skipped=skipped)


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
