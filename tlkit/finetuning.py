"""`tlkit finetune` and `tlkit train` as a Python function: config -> backbone -> input -> trainer -> run folder.

A run is one or two phases, planned by tlkit/recipe.py (the head alone, on cached features or on the
images, then every layer on the images), each a Trainer over a TrainingInput (tlkit/inputs.py) with an
optimizer and schedule of its own. `assemble_trainer` is the one place a Trainer is put together; the
trackers (best weights, early stopping, logs) are made once with what they need and carry through
both phases. Owns the run folder (config.yaml, checkpoints, reports, runs/latest) and what the user sees at
the end. The backbone a run starts from is tlkit/run_backbone.py's; lr-find's Trainer is built in tlkit/lrfind.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from rich.table import Table

from tlkit import callbacks as cbs, distributed, models
from tlkit.backbone import Backbone, first_layer
from tlkit.checkpoint import (RESUME, Checkpoint, ResumeWriter, claim_run, discard_untrained, load_resume, new_run_dir,
                              release_run)
from tlkit.calibration import calibrate
from tlkit.checkpoint_format import BEST_META, BEST_WEIGHTS, FAMILIAR, CheckpointMeta, read_meta, save_meta
from tlkit.atomic import atomic_write_text, check_writable
from tlkit.config import (FLAGS, FinetuneConfig, checked_settings, config_to_dict, config_yaml, make_config,
                          resolve_config, setting_name)
from tlkit.datasets import open_source, resolve_train_settings, split_settings
from tlkit.errors import TlkitError, option
from tlkit.familiar import fit as fit_familiar, save_reference
from tlkit.features import FeatureLoader
from tlkit.imbalance import describe_weights, loss_weights
from tlkit.inputs import TrainingInput, feature_input, image_input, open_photos
from tlkit.multilabel import (MULTI_LABEL, POSITIVE_WEIGHT_CAP, SINGLE_LABEL, calibrate_labels, check_monitor,
                              choose_thresholds, metrics, sigmoid, summary_lines)
from tlkit.predict import predict_files
from tlkit.recipe import EVERY_LAYER, Phase, describe, plan_phases, remaining, unused_settings
from tlkit.report import class_report, plot_confusion, write_report
from tlkit.run_backbone import create_backbone, run_config
from tlkit.runtime import Compute, compute_for, default_workers, info, relpath, result, warn
from tlkit.train import (PER_BATCH_SCHEDULERS, Diverged, Trainer, evaluate, fit, make_optimizer, make_scheduler,
                         unused_momentum)

LIST_LIMIT = 10
PLAN_SETTINGS = ("freeze", "unfreeze_after", "precompute_features")  # which phases a run trains in: --resume keeps them


@dataclass
class FinetuneResult:
    """What a finished run left behind; `backbone` holds the best weights."""

    run_dir: Path
    classes: list[str]
    history: list[dict]
    best_epoch: int | None
    report: dict  # scikit-learn per-class report of the best weights on validation, + accuracy
    outputs: dict[str, Path]
    backbone: Backbone
    skipped: list[str]
    compute: Compute  # where and in what arithmetic the run computed: its model's, to predict with


def run_meta(config: FinetuneConfig, backbone: Backbone, classes: list[str], source,
             phases: list[Phase]) -> CheckpointMeta:
    """What best.json and the resume file record beside the weights, to rebuild and label the model."""
    return CheckpointMeta(
        backbone=backbone.name, weights=backbone.weights, classes=list(classes),
        preprocessing=backbone.preprocessing, pretrained=backbone.pretrained, config=config_to_dict(config),
        monitor=config.monitor, data_source=source.settings,
        processes=distributed.world_size(), phases=describe(phases, config),
        task=MULTI_LABEL if source.multi_label else SINGLE_LABEL)


def trackers(config: FinetuneConfig, backbone: Backbone, *, run_dir: Path | None = None,
             meta: CheckpointMeta | None = None, extra=()) -> list[cbs.Callback]:
    """The callbacks every phase of a run shares (made once: their state carries from phase to phase):
    best weights (first), early stopping, the epoch line, and with a run folder its logs and curves."""
    best = cbs.BestWeights(config.monitor, backbone.model, run_dir=run_dir, meta=meta)
    shared = [best]
    if config.patience is not None:
        shared.append(cbs.EarlyStopping(config.monitor, config.patience))
    if run_dir is not None and distributed.is_main():  # under torchrun rank 0 alone writes
        shared += [cbs.MetricsLog(run_dir / "metrics.jsonl"), cbs.Curves(run_dir / "curves.png")]
        if cbs.tensorboard_available():
            shared.append(cbs.TensorBoard(run_dir / "tb"))
    return [*shared, cbs.EpochLine(best), *extra]


def phase_input(phase: Phase, config: FinetuneConfig, backbone: Backbone, compute: Compute, source) -> TrainingInput:
    """What the phase trains on: the cached features of the split folders, or the source's images."""
    if phase.on_features:
        return feature_input(config, backbone, compute, source.split)
    return image_input(config, backbone, compute, source, train_scale=phase.train_scale)


def assemble_trainer(phase: Phase, backbone: Backbone, data: TrainingInput, compute: Compute, callbacks: list,
                     *, history: list[dict] = (), skipped=()) -> Trainer:
    """The Trainer of one phase, with an optimizer and schedule of its own over its epochs (from its own
    first step), over what the phase trains: the head alone (the trunk frozen, and in eval mode on the
    images) or every layer."""
    settings = phase.settings
    if phase.trunk_frozen:
        backbone.freeze_trunk()
    else:
        backbone.unfreeze()
        backbone.freeze_first(phase.frozen_share)
    optimizer = make_optimizer(backbone.param_groups(phase.lr, settings.trunk_lr_mult), settings)
    scheduler = make_scheduler(optimizer, settings, steps_per_epoch=len(data.train_loader))
    norms = [module for module in backbone.trunk.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    torch.backends.cudnn.benchmark = compute.device.type == "cuda"
    # A multi-label run weighs each label's positives instead (data.positive_weights: tlkit/multilabel.py).
    class_weights = None if data.multi_label else loss_weights(settings.class_weights, data.train_labels,
                                                               len(data.classes))
    return Trainer(
        model=data.module, optimizer=optimizer, scheduler=scheduler, scheduler_name=settings.scheduler,
        train_loader=data.train_loader, val_loader=data.val_loader, train_sampler=data.train_sampler,
        normalize=data.normalize, compute=compute, epochs=phase.last,
        total_epochs=phase.total, label_smoothing=settings.label_smoothing, callbacks=callbacks,
        class_weights=None if class_weights is None else torch.from_numpy(class_weights),
        train_model=distributed.wrap_model(data.module, compute.device),
        frozen=(backbone.trunk, backbone.head) if phase.trunk_frozen and not phase.on_features else None,
        frozen_norms=norms if phase.freeze_bn else [], history=history, skipped=skipped,
        positive_weights=data.positive_weights, features_of=first_layer(backbone.head))


def _resume_config(resume: Path, config_file, settings: dict) -> tuple[FinetuneConfig, dict]:
    """The interrupted run's own config (flags given may change it, but not the backbone)."""
    if config_file is not None:
        raise TlkitError(f"{option('resume')} continues with the run's own config.yaml; leave out "
                         f"{option('config', python='config_file')}.")
    state = load_resume(resume)
    saved, settings = state["meta"].config, checked_settings(settings, FLAGS)
    saved.setdefault("class_weights", "none")  # a run from before --class-weights trained unweighted, and goes on so
    asked = settings.get("backbone")
    if asked is not None and asked != saved["backbone"]:
        raise TlkitError(
            f"{relpath(resume)} was trained with backbone {saved['backbone']}, not {asked}; resume it without "
            f"{option('backbone')}, or start a new run (another {option('name')}) for the other backbone."
        )
    if "epochs" in settings and settings["epochs"] != saved["epochs"] and saved.get("scheduler") in PER_BATCH_SCHEDULERS:
        raise TlkitError(
            f"{relpath(resume)} follows a {saved['scheduler']} schedule planned over its {saved['epochs']} epochs, so "
            f"{option('resume')} cannot change {option('epochs')}. Resume it as it is, or start a new run from its "
            f"weights: tlkit finetune --weights {relpath(resume)} --epochs {settings['epochs']} --name NEW."
        )
    replanned = [key for key in PLAN_SETTINGS if key in settings and settings[key] != saved.get(key)]
    if replanned:
        warn(f"{', '.join(setting_name(key, FLAGS) for key in replanned)} not applied: a resumed run keeps the phases "
             f"it planned (config.yaml's first lines); start a new run to train in others")
        settings = {key: value for key, value in settings.items() if key not in replanned}
    changed = sorted(key for key, value in settings.items() if saved.get(key) != value)
    if changed:
        warn(f"resuming with changed settings ({', '.join(changed)}): the result may differ from an uninterrupted run")
    return make_config({**saved, **settings}, where=f"{relpath(resume)}/config"), state


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
    if distributed.is_main():  # before anything is computed: the run folder can be made
        check_writable(Path(config.runs_dir) if resume is None else Path(resume), "runs_dir",
                       advice=None if resume is None else "Copy the run to a folder of yours and resume it there.")
    source = open_photos(config, source)
    check_monitor(config.monitor, source.multi_label)
    classes = source.classes
    if state is not None and state["meta"].classes != classes:
        raise TlkitError(f"{relpath(Path(config.data))} holds classes {classes}, but {relpath(Path(resume))} "
                         f"was trained on {state['meta'].classes}; resume with its own {option('data')}.")
    planned = plan_phases(config, processes=distributed.world_size())
    phases = planned
    if state is not None:  # the resume file says which phase wrote it: the head alone, or the whole model
        phases = remaining(planned, state["meta"].phase or EVERY_LAYER)
    else:
        for note in unused_settings(checked_settings(settings, FLAGS), config, planned):
            warn(note)
    compute = compute_for(config.device, config.precision)  # the device and arithmetic, once for the run
    distributed.setup(compute.device)
    backbone = create_backbone(config, classes, source)
    data = phase_input(phases[0], config, backbone, compute, source)
    with _run_folder(config, resume, force, source, planned) as run_dir:  # only now: everything above checked out
        meta = run_meta(config, backbone, classes, source, planned)
        shared = trackers(config, backbone, run_dir=run_dir, meta=meta, extra=callbacks)
        trainer = assemble_trainer(phases[0], backbone, data, compute, shared)
        if state is not None:
            _continue(trainer, state, run_dir, config)
        _announce(config, backbone, data, compute, run_dir, planned)
        for number, phase in enumerate(phases):
            if number > 0:
                if trainer.stop_reason is not None:
                    break
                data = phase_input(phase, config, backbone, compute, source)
                trainer = assemble_trainer(phase, backbone, data, compute, shared, history=trainer.history,
                                           skipped=trainer.skipped)
                info(f"epoch {trainer.epoch + 1}: the head is trained; every layer now trains on the images, with an "
                     f"optimizer and {config.scheduler} schedule of its own over the {phase.epochs} epoch(s) left")
            shared[0].enter(phase)
            _fit(trainer, run_dir, source.command, config, dataclasses.replace(meta, phase=phase.name))
        result = _finish(trainer, shared[0], backbone, data, run_dir, source, workers=default_workers(config.workers))
        distributed.barrier()  # every process returns once rank 0 has written the run folder
        return result


@contextlib.contextmanager
def _run_folder(config: FinetuneConfig, resume: Path | str | None, force: bool, source, phases: list[Phase]):
    """The resumed run's folder, or a new runs/<name>/ with the config.yaml that repeats the run, its phases
    in a comment (under torchrun rank 0 makes the folder, names it and tells the others), held for this
    process while the run lasts. A new folder that the run leaves with nothing trained in it is removed: its
    name stays free."""
    if resume is not None:
        run_dir = Path(resume).resolve()  # runs/latest: the run it names, claimed and written by its own name
        if distributed.is_main():
            claim_run(run_dir)
    else:
        run_dir = distributed.on_main(lambda: new_run_dir(Path(config.runs_dir), config.name, force))
    try:
        if resume is None and distributed.is_main():
            source_yaml = yaml.safe_dump(source.settings, sort_keys=False) if source.settings else ""
            planned = "".join(f"#   {line}\n" for line in describe(phases, config))
            atomic_write_text(run_dir / "config.yaml", f"# the phases these settings train in:\n{planned}"
                              + source_yaml + config_yaml(config))
        yield run_dir
    except BaseException:
        if resume is None and distributed.is_main() and discard_untrained(run_dir):
            warn(f"removed {relpath(run_dir)}: the run stopped before anything was trained")
        raise
    finally:
        release_run(run_dir)


def _continue(trainer: Trainer, state: dict, run_dir: Path, config: FinetuneConfig) -> None:
    """The trainer where the resume file left it (weights, optimizer, schedule, trackers, generators)."""
    trainer.load_state_dict(state)
    info(f"resuming {relpath(run_dir)} after epoch {trainer.epoch} of {config.epochs}")
    before, now = state["meta"].processes, distributed.world_size()
    if config.lr_scale == "linear" and before != now:
        warn(f"the run was trained by {before} process(es) and resumes with {now}: its optimizer and schedule "
             f"keep the lr scaled for {before} ({option('lr_scale', 'linear')}); the result differs from either run")


def train(config_file: Path | str | None = None, *, resume: Path | str | None = None, force: bool = False,
          callbacks=(), **flags) -> FinetuneResult:
    """`tlkit train`: any model on a built-in dataset or a folder (tlkit.datasets), with the fine-tune loop.

    flags: the dataset's settings (dataset, data_root, val, mean, std, download) and FinetuneConfig
    fields (`model` names the backbone); they override the YAML config_file. resume: a run folder
    to continue, on the dataset it recorded (flags given may change its settings)."""
    if resume is not None:
        if config_file is not None:
            raise TlkitError(f"{option('resume')} continues with the run's own settings; leave out "
                             f"{option('config', python='config_file')}.")
        given_source, settings = split_settings(flags, "flags")
        saved = load_resume(Path(resume))["meta"].data_source
        if not saved:
            raise TlkitError(f"{relpath(Path(resume))} is a `tlkit finetune` run; continue it with "
                             f"`tlkit finetune --resume {relpath(Path(resume))}`.")
        source_settings = {**saved, **given_source}
    else:
        source_settings, settings = resolve_train_settings(Path(config_file) if config_file else None, flags)
        if "backbone" not in settings:
            raise TlkitError(f"no model given: add {option('model')} ({', '.join(models.available())}, or timm:NAME).")
    source = open_source(**source_settings)
    info(f"data: {source.describe()}")
    return finetune(resume=resume, force=force, callbacks=callbacks, source=source, **settings)


def _fit(trainer: Trainer, run_dir: Path, command: str, config: FinetuneConfig, meta: CheckpointMeta) -> None:
    writer = ResumeWriter(run_dir, meta, every_epochs=config.resume_every_epochs,
                          every_seconds=config.resume_every_seconds)
    try:
        fit(trainer, save_resume=writer if distributed.is_main() else None)
    except Diverged as error:
        if (run_dir / BEST_WEIGHTS).is_file():
            raise Diverged(f"{error} {relpath(run_dir / BEST_WEIGHTS)} keeps the best epoch before it.") from None
        raise
    except KeyboardInterrupt:
        if distributed.is_main():
            try:
                writer.flush()  # the last finished epoch, if the cadence had not written it yet
            except Exception as error:  # noqa: BLE001 (the Ctrl-C and its hint must still come through)
                info(f"[red]could not write {RESUME} on the way out: {error}[/]")
        if (run_dir / RESUME).is_file():
            info(f"continue this run with: tlkit {command} --resume {relpath(run_dir)}")
        else:  # stopped before the first epoch ended: nothing to continue from
            info(f"no epoch had ended, so there is nothing to resume: start again (add {option('force', True)} to "
                 f"replace {relpath(run_dir)})")
        raise


def _announce(config: FinetuneConfig, backbone: Backbone, data: TrainingInput, compute: Compute, run_dir: Path,
              phases: list[Phase]) -> None:
    """The run's first line: what trains on what, and every setting that decides the result."""
    init = "pretrained weights" if backbone.pretrained else "random init (no pretrained weights)"
    size = "x".join(str(n) for n in backbone.preprocessing.input_size)
    what = "the head, on cached features of " if phases[0].on_features else ""
    what += f"{data.sizes[0]} training / {data.sizes[1]}"
    info(f"fine-tuning {backbone.name} ({init}) at {size} px: {what} validation images, {len(data.classes)} "
         f"classes; {compute.words()} -> {relpath(run_dir)}")
    info(f"weights: {backbone.weights_note}")
    if backbone.weights not in ("none", "imagenet") and backbone.fresh_head:
        warn(f"{relpath(Path(backbone.weights))} was trained for other classes than these {len(data.classes)}: its "
             "trunk is used, but the head starts from a random initialisation")
    info(f"settings: {config.epochs} epochs; batch {config.batch_size}, monitor {config.monitor}, seed "
         f"{config.seed} (all in config.yaml)")
    for line in describe(phases, config):
        info(f"  {line}")
    info("class weights: none; each label's positives weigh negatives / positives of the training photos (at most "
         f"{POSITIVE_WEIGHT_CAP:g})" if data.multi_label else
         f"class weights: {describe_weights(config.class_weights, data.train_labels, data.classes)}")
    if (unused := unused_momentum(config)) is not None:
        warn(unused)
    world = distributed.world_size()
    if world > 1:
        info(f"{world} processes (DistributedDataParallel): effective batch size {config.batch_size * world} "
             f"({config.batch_size} per process x {world}); "
             + (f"the lrs above are scaled by it ({option('lr_scale', 'linear')})" if config.lr_scale == "linear"
                else f"the lrs above are as given ({option('lr_scale', 'none')})"))


def _finish(trainer: Trainer, best: cbs.BestWeights, backbone: Backbone, data: TrainingInput,
            run_dir: Path, source, *, workers: int) -> FinetuneResult:
    """Best weights are back in the model: write the checkpoint (its temperature and reference features), confusion
    matrix and report; show the summary."""
    if best.best_state is None:
        raise TlkitError(f"no epoch gave a usable {best.monitor} (NaN: the training diverged); try a lower "
                         f"{option('lr')}.")
    # The best epoch's own validation results (the restored weights would predict the same), else predicted now.
    validation = best.validation or evaluate(trainer.model, data.val_loader, trainer.normalize, collect=True,
                                             autocast=trainer.autocast, features_of=trainer.features_of)
    # The final report is on the test split where the data has one (tlkit train), else on validation.
    subset, result = ("test", evaluate(trainer.model, data.test_loader, trainer.normalize, autocast=trainer.autocast,
                                       collect=True)) if data.test_loader is not None else ("validation", validation)
    meta = read_meta(run_dir)  # best.json as BestWeights wrote it; written again once, below, with what the end adds
    if data.multi_label:
        report, meta = _thresholds_report(data, result, validation, subset, meta)
    else:
        report = {**class_report(result["targets"], result["predictions"], data.classes), "subset": subset,
                  "calibration": calibrate(validation["logits"], validation["targets"])}
        meta = meta.calibrated(report["calibration"])
    meta = meta.with_familiar(_familiar(trainer, backbone, data, run_dir, source, workers, meta, validation))
    backbone.model.to(memory_format=torch.contiguous_format)  # handed back as a checkpoint loads: plain NCHW
    # best.safetensors was written by BestWeights (when that epoch or the head phase ended); not again here.
    if distributed.is_main():  # under torchrun rank 0 alone writes (every process holds the same results)
        save_meta(run_dir, meta)
        if not data.multi_label:
            plot_confusion(run_dir / "confusion.png", result["targets"], result["predictions"], data.classes)
        write_report(run_dir / "report.json", report)
    skipped = sorted(set().union(*distributed.all_gather(trainer.skipped)))  # met by any process
    outputs = {name: run_dir / name for name in (
        "config.yaml", BEST_WEIGHTS, BEST_META, RESUME, "metrics.jsonl", "curves.png", "confusion.png", "report.json")
        if name != "confusion.png" or not data.multi_label}
    if meta.familiar is not None:
        outputs["familiar"] = run_dir / FAMILIAR
    if (run_dir / "tb").is_dir():
        outputs["tb"] = run_dir / "tb"
    _print_summary(trainer.history, best.best_epoch, report, outputs, skipped)
    return FinetuneResult(run_dir=run_dir, classes=data.classes, history=trainer.history, best_epoch=best.best_epoch,
                          report=report, outputs=outputs, backbone=backbone, skipped=skipped, compute=trainer.compute)


def _thresholds_report(data: TrainingInput, result: dict, validation: dict, subset: str,
                       meta: CheckpointMeta) -> tuple[dict, CheckpointMeta]:
    """A multi-label run's end: each label's Platt scaling fitted on the validation photos
    (multilabel.calibrate_labels), the threshold chosen on its calibrated probabilities there
    (multilabel.choose_thresholds), the report's metrics at them, and the meta holding both (for best.json)."""
    scaling = calibrate_labels(validation["logits"], np.asarray(validation["targets"]))
    meta = dataclasses.replace(meta, label_scaling=scaling)
    scale, shift = meta.logit_scaling()  # float32, as predict applies them: a threshold then decides alike there
    thresholds = choose_thresholds(np.asarray(validation["targets"]), sigmoid(validation["logits"] * scale + shift))
    report = {**metrics(np.asarray(result["targets"]), sigmoid(result["logits"] * scale + shift), thresholds,
                        data.classes), "subset": subset, "label_scaling": scaling}
    return report, dataclasses.replace(meta, thresholds=thresholds)


def _familiar(trainer: Trainer, backbone: Backbone, data: TrainingInput, run_dir: Path, source,
              workers: int, meta: CheckpointMeta, validation: dict) -> dict | None:
    """The reference features for `familiar` at predict time, written as familiar.safetensors, and the threshold
    set on the validation photos' (tlkit/familiar.py), for best.json (meta: what it will hold besides). Where the
    trunk stayed as it made the feature cache (the head trained on it alone, without augmented views), the
    training photos' cached features; else the validation photos' features under the final weights, from the best
    epoch's validation (validation: train.evaluate's results) or, where it kept none, a pass of predict's loop.
    None for a source that is not photo folders (tlkit train's datasets)."""
    if not source.caches:
        info("no reference features for `familiar` at predict time: they are kept for runs on photo folders")
        return None
    started = time.perf_counter()
    if isinstance(data.train_loader, FeatureLoader) and not data.train_loader.views:
        training, features = (loader.features.float().cpu().numpy() for loader in (data.train_loader, data.val_loader))
        how = "the cached features"
    elif "features" in validation:
        training, features, how = None, validation["features"], "the validation pass of the best weights"
    else:
        checkpoint = Checkpoint(backbone=backbone, classes=data.classes, meta=meta, path=run_dir / BEST_WEIGHTS)
        training, features = None, _photo_features(checkpoint, source.split, trainer.compute, workers)
        how = "a pass over the validation photos"
    reference, rule = fit_familiar(training, features, seconds=time.perf_counter() - started, source=how)
    if distributed.is_main():
        save_reference(run_dir / FAMILIAR, reference)
    info(f"familiar: {len(reference)} {rule['reference']} photos' features from {how} ({rule['seconds']:.1f} s); "
         f"photos further from them than {rule['threshold']:.4f} (mean cosine distance to the {rule['neighbours']} "
         f"nearest) are marked unfamiliar, as {rule['validation_flagged']:.1%} of the validation photos are")
    return rule


def _photo_features(checkpoint: Checkpoint, split, compute: Compute, workers: int) -> np.ndarray:
    """The trunk's features of the validation photos as predict computes them; those that fail to decode left out."""
    paths = [split.subset("validation") / relative for relative, _ in split.images("validation")]
    pred = predict_files(checkpoint, paths, compute=compute, workers=workers, familiar=False, keep_features=True)
    return pred.features[[index for index in range(len(paths)) if index not in pred.failures]]


def _print_summary(history: list[dict], best_epoch: int, report: dict, outputs: dict, skipped: list[str]) -> None:
    best_row = next(row for row in history if row["epoch"] == best_epoch)
    last_row = history[-1]
    table = Table(title="best epoch (the saved model) and last epoch")
    table.add_column("")
    table.add_column(f"best: epoch {best_epoch} (saved)", justify="right")
    table.add_column(f"last: epoch {last_row['epoch']}", justify="right")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_macro_f1"):
        # a run resumed from a tlkit before the balanced scores has epochs without them
        table.add_row(key.replace("_", " "), *(f"{row[key]:.4f}" if key in row else "-" for row in (best_row, last_row)))
    result(table)
    if report.get("task") == MULTI_LABEL:
        for line in summary_lines(report):
            result(line)
    else:
        _single_label_lines(report)
    for name, path in outputs.items():
        result(f"  {name:<16} {relpath(path)}")
    if skipped:
        warn(f"images that failed to decode and were skipped: {len(skipped)}")
        for path in skipped[:LIST_LIMIT]:
            info(f"  {path}")
        if len(skipped) > LIST_LIMIT:
            info(f"  ... and {len(skipped) - LIST_LIMIT} more")


def _single_label_lines(report: dict) -> None:
    """What a single-label run says of its final report: accuracy, and the temperature fitted."""
    recall = ", ".join(f"{name} {value:.4f}" for name, value in list(report["recall"].items())[:LIST_LIMIT])
    more = f", ... ({len(report['recall'])} classes in report.json)" if len(report["recall"]) > LIST_LIMIT else ""
    result(f"{report.get('subset', 'validation')} accuracy of the saved model: {report['accuracy']:.4f}; balanced "
           f"accuracy {report['balanced_accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}; recall {recall}{more}")
    calibration = report["calibration"]
    if calibration.get("kept_at_one"):
        result(f"temperature kept at 1: every one of the {calibration['images']} validation images is right, so no "
               "temperature fits (the fit would claim certainty); more validation images help")
    else:
        result(f"temperature {calibration['temperature']:.3f} (fitted on validation): expected calibration error "
               f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} on those {calibration['images']} "
               "images")
