"""The `tlkit` command line, the only module that reads argv, prints user errors and chooses the exit code.
Each subcommand is a `cmd_*` function (under its @_command: its --help and arguments) that calls tlkit.api, or
for the commands that start without torch the stage itself, and hands the result to tlkit/screens.py to show."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

from tlkit import config, screens
from tlkit.errors import COMMAND_LINE, TlkitError, naming
from tlkit.findings import AUDIT_BACKBONE, DUPLICATE_SIMILARITY  # not tlkit.auditing: it loads torch
from tlkit.runtime import info, is_quiet, machine_fault, relpath, reporting, result, warn
from tlkit.split import MODES
from tlkit.version import __version__


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


class _Command(NamedTuple):  # a subcommand: its line in `tlkit --help`, its own --help, its arguments, its cmd_*
    name: str
    summary: str
    description: str
    arguments: tuple[Callable[[argparse.ArgumentParser], object], ...]
    example: str
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[_Command] = []  # in `tlkit --help`'s order: the order they are defined in below


def _command(name: str, summary: str, description: str, *arguments, example: str):
    """Adds the function it decorates to COMMANDS as the subcommand `name`: its texts and arguments in the order
    its --help shows them."""

    def add(run: Callable[[argparse.Namespace], int]):
        COMMANDS.append(_Command(name, summary, description, arguments, example, run))
        return run

    return add


def _arg(*names: str, **options) -> Callable[[argparse.ArgumentParser], object]:
    """One argument of a command: argparse's add_argument, held until build_parser makes the command's parser."""
    return lambda parser: parser.add_argument(*names, **options)


def _settings(only: tuple[str, ...] | None = None, *, config_file: bool = True):
    """The setting flags of a command (_add_setting_flags), held like _arg."""
    return lambda parser: _add_setting_flags(parser, only, config_file=config_file)


def _add_setting_flags(parser, only: tuple[str, ...] | None = None, *, config_file: bool = True) -> None:
    """`--config` (unless config_file is false) and one flag per FinetuneConfig field (of `only`), built from
    the field's help and choices (config.setting); the help shows the built-in default. Their argparse default
    is SUPPRESS, so only the flags given reach the config and override its YAML file."""
    if config_file:
        parser.add_argument("--config", type=Path, help="YAML file of settings (flags given win over it)")
    for field in dataclasses.fields(config.FinetuneConfig):
        if only is not None and field.name not in only:
            continue
        flag, text = "--" + field.name.replace("_", "-"), field.metadata["help"]
        kind, optional = config.setting_kind(field.name)
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
    if only is None or "augment" in only:
        parser.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                            default=argparse.SUPPRESS, help="the same as --augment none")


def _given_settings(args: argparse.Namespace, keys: tuple[str, ...] | None = None) -> dict:
    """The settings given as flags (of `keys` alone, where a command's own argument shares a setting's name)."""
    return {key: getattr(args, key) for key in keys or config.config_keys() if hasattr(args, key)}


# ---------------------------------------------------------------- split, check, audit

@_command("split", "split a folder of photos into training/ and validation/ class folders",
          "Split a flat folder (cat.0.jpg, dog.0.jpg, ...), a class-foldered tree or a label file (labels.csv: path,label "
          "rows, paths relative to it; a split column keeps your split) into OUT/training/<class>/ and "
          "OUT/validation/<class>/, stratified by class.",
          _arg("src", type=Path, help="the folder of images, or a label file (.csv)"),
          _arg("--val", help="validation size: a count (2000) or a fraction (0.1); needed unless SRC is a label file "
               "with a split column"),
          _arg("--out", help="where training/ and validation/ go (default: beside SRC)"),
          _arg("--seed", type=_number(int, config.SEEDS), default=0, help="seed of the random split"),
          _arg("--mode", choices=MODES, default="link",
               help="hard-link (copies across file systems), copy, symlink, or move the originals"),
          _arg("--force", action="store_true", help="replace an existing split in OUT"),
          _arg("--dry-run", action="store_true", help="show the split, write nothing"),
          _arg("--quick", action="store_true", help="read image headers only: faster, but a truncated image or an "
               "identical pair is not found (by default every image is decoded and hashed)"),
          _arg("--exclude", type=Path, metavar="FILE",
               help="a reviewed list, such as the audit.csv of `tlkit audit SRC`: its exclude rows are left out, "
                    "its relabel rows split under their new class, its near-duplicate pairs kept in one subset; "
                    "no photo is moved or changed"),
          _arg("--multi-label", action="store_true", help="SRC is a label file whose label cells give several labels "
               "a photo (cat|dog): the split writes OUT/training/ and OUT/validation/ with the photos and a labels.csv "
               "each, stratified on each photo's rarest label; every later step trains and predicts one yes/no per "
               "label"),
          _arg("--label-sep", default="|", help="what separates the labels of a photo with --multi-label (default: |)"),
          example="tlkit split data/train --val 2000    # writes data/training, data/validation")
def cmd_split(args: argparse.Namespace) -> int:
    from tlkit.split import execute_split, prepare_split

    scan, plan = prepare_split(args.src, args.val, args.out, seed=args.seed, force=args.force, quick=args.quick,
                               exclude=args.exclude, dry_run=args.dry_run, multi_label=args.multi_label,
                               label_sep=args.label_sep)
    screens.split_plan(scan, plan, args.seed)
    if args.dry_run:
        info("dry run: nothing written")
        return 0
    execute_split(plan, mode=args.mode, force=args.force)
    screens.split_written(plan)
    return 0


@_command("check", "report classes, broken or odd images and duplicates in a dataset folder",
          "Decode every image of a flat or class-foldered dataset, or of a label file, and report images per class, "
          "unreadable / empty / non-image files, a label file's rows left out, sizes, colour modes and duplicate files.",
          _arg("dir", type=Path, help="the dataset folder, or a label file (.csv)"),
          _arg("--strict", action="store_true", help="exit non-zero when any problem is found"),
          example="tlkit check data/train --strict")
def cmd_check(args: argparse.Namespace) -> int:
    from tlkit.check import check_dataset

    report = check_dataset(Path(args.dir))
    for folder in report.folders:
        if folder.refusal:
            screens.skipped(folder.scan)
            raise TlkitError(folder.refusal)
        screens.folder_check(folder)
    screens.check_total(report)
    if report.problems and args.strict:
        raise TlkitError(f"{relpath(report.root)} has {report.problems} problem(s), listed above (--strict).")
    return 0


@_command("audit", "find likely label errors, leaks, near-duplicates, photos of no class and of several",
          "Judge every photo by the frozen trunk's features (from the feature cache, computed once): labels that heads "
          "trained on the other photos contradict (out of fold), near-identical pairs (above all across training/ and "
          "validation/) and identical files, photos unlike every other, photos whose halves show different classes "
          "(the halves' features are computed on each run). DATA is a split folder or a flat or "
          "class-foldered folder not split yet (audited as one set). Writes OUT/audit.csv (path, issue, suggested "
          "action: exclude / relabel / keep), audit.html (thumbnails to look at), audit.png and audit.json; moves no "
          "photo. Give the reviewed audit.csv to --exclude of finetune (or of split, for a folder not split yet).",
          _arg("data", type=Path, help="a split folder (training/, validation/), a folder of photos, or a label file "
               "(.csv)"),
          _settings(tuple(key for key in config.AUDIT_READS if key != "backbone")),
          _arg("--backbone", default=argparse.SUPPRESS,
               help=f"the network whose features judge the photos (`tlkit models` lists them; default: "
                    f"{AUDIT_BACKBONE}, whose ImageNet weights come with tlkit, or --config's)"),
          _arg("--out", help="the report folder (default: DATA-audit beside DATA)"),
          _arg("--force", action="store_true", help="replace an earlier audit in --out"),
          _arg("--similarity", type=_number(float, config.SIMILARITIES), default=DUPLICATE_SIMILARITY,
               help="cosine similarity of two photos' features from which they are near-duplicates"),
          _arg("--show", type=_number(int, config.ZERO_OR_MORE), default=10, help="rows of each issue shown on screen"),
          example="tlkit audit data    # writes data-audit/audit.csv; then tlkit finetune --exclude "
                  "data-audit/audit.csv")
def cmd_audit(args: argparse.Namespace) -> int:
    from tlkit import api
    from tlkit.audit_report import default_report_dir

    audit = api.audit(args.data, out=args.out, force=args.force, config_file=args.config, similarity=args.similarity,
                      **_given_settings(args, config.AUDIT_READS))
    screens.audit(audit, args.show, Path(args.out) if args.out else default_report_dir(args.data))
    return 0


# ---------------------------------------------------------------- finetune, lr-find, precompute, cache

_RUN_FOLDER = (  # a training command's own flags
    _arg("--resume", type=Path, help="continue the interrupted run in this folder (runs/NAME)"),
    _arg("--force", action="store_true", help="replace an existing run folder of the same --name"),
)


@_command("finetune", "fine-tune a backbone on DATA/training, keep the best epoch on DATA/validation",
          "Train a backbone on DATA/training and validate on DATA/validation each epoch; keep the best epoch's "
          "weights. Writes runs/NAME/: config.yaml, best.safetensors + best.json, resume.pt, metrics.jsonl, "
          "curves.png, confusion.png, report.json (and tb/ with tensorboard installed).",
          _settings(), *_RUN_FOLDER,
          example="tlkit finetune --config configs/resnet18-tutorial.yaml --data data --name cats")
def cmd_finetune(args: argparse.Namespace) -> int:
    from tlkit.finetuning import finetune

    finetune(args.config, resume=args.resume, force=args.force, **_given_settings(args))
    return 0


@_command("lr-find", "learning-rate range test: a short sweep, a plot, a suggested --lr",
          "Train for a few batches while the learning rate grows exponentially from --start-lr to --end-lr, plot the "
          "loss against it and suggest the lr where the loss falls fastest. Nothing is trained for keeps.",
          _settings(config.LR_FIND_READS),
          _arg("--start-lr", type=_number(float, config.ABOVE_ZERO), default=1e-7, help="lr of the first step"),
          _arg("--end-lr", type=_number(float, config.ABOVE_ZERO), default=10.0, help="lr of the last step"),
          _arg("--steps", type=_number(int, config.LR_FIND_STEPS), default=100,
               help="batches in the sweep (it stops early when the loss explodes)"),
          _arg("--out", type=Path, default=Path("runs/lr-find.png"), help="where the plot goes"),
          _arg("--force", action="store_true", help="replace an existing --out file"),
          example="tlkit lr-find --backbone resnet18 --data data --freeze trunk")
def cmd_lr_find(args: argparse.Namespace) -> int:
    from tlkit import api

    found = api.lr_find(out=args.out, force=args.force, config_file=args.config, start_lr=args.start_lr,
                        end_lr=args.end_lr, steps=args.steps, **_given_settings(args))
    screens.lr_sweep(found, args.out)
    return 0


@_command("precompute", "run the frozen trunk once and cache its features on disk",
          "Compute the trunk features of DATA/training and DATA/validation once and cache them, so that `tlkit "
          "finetune --precompute-features` with the same settings trains the head in seconds. A cache is reused only "
          "while the backbone, its weights, the preprocessing and every file are unchanged.",
          _settings(config.PRECOMPUTE_READS),
          _arg("--batch-size", dest="trunk_batch_size", type=_number(int, config.BATCH_SIZES),
               help="images per trunk batch (default: 256 on a GPU, 32 on a CPU)"),
          _arg("--force", action="store_true", help="recompute even when the cache is valid"),
          example="tlkit precompute --backbone vgg16")
def cmd_precompute(args: argparse.Namespace) -> int:
    from tlkit import api

    cache = api.precompute(config_file=args.config, batch_size=args.trunk_batch_size, force=args.force,
                           **_given_settings(args))
    screens.feature_cache(cache.backbone, cache.sets)
    return 0


@_command("cache", "list or clear the feature and decoded-image caches",
          "List the caches `tlkit precompute` and `--cache-images` made (ls), or delete them (clear).",
          _arg("action", choices=("ls", "clear"), help="ls: list; clear: delete every cache"),
          _arg("--data", default="data", help="the data folder whose cache is meant"),
          _arg("--cache-dir", type=Path, help="the cache folder (default: DATA/.tlkit-cache)"),
          example="tlkit cache ls --data data")
def cmd_cache(args: argparse.Namespace) -> int:
    from tlkit.cache import clear_caches, default_cache_root, list_caches

    root = args.cache_dir or default_cache_root(Path(args.data))
    if args.action == "clear":
        result(f"removed {clear_caches(root)} cache folder(s) from {relpath(root)}")
        return 0
    screens.caches(root, list_caches(root))
    return 0


# ---------------------------------------------------------------- predict, evaluate, export

_CHECKPOINT = _arg("--checkpoint", help="a run folder or .safetensors file (default: runs/latest)")
_INFERENCE = (  # how a model runs: the run's settings (config.INFERENCE_READS), a batch size of inference's own
    _CHECKPOINT,
    _settings(config.INFERENCE_READS, config_file=False),
    _arg("--batch-size", type=_number(int, config.BATCH_SIZES),
         help="images per batch (default: 256 on a GPU, 32 on a CPU)"),
    _arg("--tta", action="store_true", help="average with the horizontally flipped view"),
)


def _load_for_inference(args: argparse.Namespace):
    """The checkpoint, its Compute (api.load) and the decode workers, said on stderr."""
    from tlkit import api
    from tlkit.runtime import default_workers

    settings = config.checked_settings(_given_settings(args, config.INFERENCE_READS), config.FLAGS)
    workers = default_workers(settings.pop("workers", None))
    classifier = api.load(args.checkpoint, **settings)
    screens.model_loaded(classifier.checkpoint, classifier.compute)
    return classifier.checkpoint, classifier.compute, workers


@_command("predict", "label new photos with a trained model",
          "Predict the class of every image in PATH (files, or folders searched recursively) with the best weights of "
          "a run, and write one row per image.",
          _arg("paths", nargs="+", type=Path, help="image files or folders"),
          *_INFERENCE,
          _arg("--out", default="predictions.csv", help="the file to write; - for standard output"),
          _arg("--format", choices=config.PREDICT_FORMATS, default="csv",
               help="csv / json: label, confidence, probabilities; kaggle: id,label (P(dog))"),
          _arg("--topk", type=_number(int, config.ONE_OR_MORE),
               help="write the K best classes instead of every probability"),
          _arg("--threshold", type=_number(float, config.PROBABILITIES),
               help="a multi-label model: a photo holds each label whose probability reaches this (default: each "
                    "label's own threshold, chosen on validation at the end of the run)"),
          _arg("--force", action="store_true", help="replace an existing --out file"),
          example="tlkit predict data/test --format kaggle --out submission.csv")
def cmd_predict(args: argparse.Namespace) -> int:
    from tlkit.pathtext import is_stdout
    from tlkit.predict import check_request, find_images, model_thresholds, predict_files, write_predictions

    checkpoint, compute, workers = _load_for_inference(args)
    found = find_images(args.paths)
    check_request(Path(args.out), fmt=args.format, topk=args.topk, classes=checkpoint.classes, paths=found.images,
                  force=args.force, multi_label=model_thresholds(checkpoint, args.threshold) is not None)
    pred = predict_files(checkpoint, found.images, compute=compute, batch_size=args.batch_size, workers=workers,
                         tta=args.tta, threshold=args.threshold)
    target = write_predictions(pred, Path(args.out), fmt=args.format, topk=args.topk, force=args.force)
    screens.predictions(pred, found, target, table=not is_quiet() and not is_stdout(args.out))
    return 0


@_command("evaluate", "measure a trained model on labelled photos",
          "Accuracy and per-class precision / recall / F1 on DIR (class folders or flat cat.0.jpg names), a confusion "
          "matrix and the most confident mistakes.",
          _arg("dir", type=Path, help="labelled images: <class>/<image>, <class>.<n>.jpg, or a label file (.csv)"),
          *_INFERENCE,
          _arg("--out", help="output folder (default: RUN/evaluate-<DIR name>)"),
          _arg("--force", action="store_true", help="replace earlier outputs in --out"),
          example="tlkit evaluate data/validation")
def cmd_evaluate(args: argparse.Namespace) -> int:
    from tlkit.evaluate import default_out_dir, evaluate_folder

    checkpoint, compute, workers = _load_for_inference(args)
    out_dir = Path(args.out) if args.out else default_out_dir(checkpoint, args.dir)
    report = evaluate_folder(checkpoint, args.dir, out_dir, compute=compute, batch_size=args.batch_size,
                             workers=workers, tta=args.tta, force=args.force)
    screens.evaluation(report, checkpoint.classes, Path(args.dir), out_dir)
    return 0


@_command("export", "write a trained model as ONNX, an ExportedProgram (.pt2) or TorchScript",
          "Export the best weights of a run with their preprocessing in a .json beside them, and check that the export "
          "gives PyTorch's outputs on real images.",
          _arg("--format", choices=sorted(config.EXPORT_SUFFIXES), required=True,
               help="onnx; pt2 (torch.export's ExportedProgram: torch.export.load(FILE).module()); or torchscript "
                    "(deprecated upstream by PyTorch, in favour of torch.export: kept while it works)"),
          _CHECKPOINT,
          _settings(("runs_dir",), config_file=False),
          _arg("--out", help="the file to write (default: RUN/model.onnx, RUN/model.pt2 or RUN/model.pt)"),
          _arg("--images", nargs="*", type=Path,
               help="images to verify on (default: a few of the run's validation images)"),
          _arg("--force", action="store_true", help="replace an existing --out file"),
          example="tlkit export --format onnx --out model.onnx")
def cmd_export(args: argparse.Namespace) -> int:
    from tlkit.checkpoint import load_checkpoint, resolve_run
    from tlkit.export import export_checkpoint
    from tlkit.predict import find_images

    checkpoint = load_checkpoint(resolve_run(args.checkpoint, **_given_settings(args, ("runs_dir",))))
    images = find_images(args.images).images if args.images else []
    check = export_checkpoint(checkpoint, args.format, args.out, images=images, force=args.force)
    screens.export_check(check)
    return 0


# ---------------------------------------------------------------- train (classic datasets), summary, models

def _source(*names: str, help: str, **options):
    """A flag of train's dataset (tlkit.datasets.SOURCE_DEFAULTS), absent unless given, as a setting flag is."""
    return _arg(*names, default=argparse.SUPPRESS, help=help, **options)


@_command("train", "train a model on MNIST, Fashion-MNIST, CIFAR-10, digits or a folder",
          "Train any tlkit model (the classic nets from scratch, or a pretrained backbone) on a built-in dataset or a "
          "folder, with the fine-tune loop: same run folder, checkpoints, metrics, plots and --resume. Built-in "
          "datasets are read from --data-root (downloaded when absent and online); --val carves a validation set from "
          "the training data; the final report uses the test split.",
          _source("--dataset", help=f"{', '.join(config.BUILT_IN_DATASETS)}, a folder (class folders, or "
                  "training/ + validation/ from `tlkit split`), or a label file (.csv)"),
          _source("--model", dest="backbone", metavar="MODEL", help="network to train (`tlkit models` lists them): "
                  "lenet, mnist-net, mlp, mlp-relu, mlp-bn, simple-cnn, alexnet, resnet18, timm:NAME ..."),
          _source("--data-root", help="where the built-in datasets' raw files are, or go (default: data)"),
          _source("--val", help="validation images carved from the training data: a count or a fraction "
                  "(default: 0.1)"),
          _source("--mean", help="normalisation mean, one value or one per channel (default: the dataset's; a "
                  "pretrained backbone's own)"),
          _source("--std", help="normalisation std, like --mean"),
          _source("--no-download", dest="download", action="store_const", const=False,
                  help="never download; read the files in --data-root only"),
          _settings(tuple(key for key in config.TRAIN_READS if key != "backbone")),
          *_RUN_FOLDER,
          example="tlkit train --config configs/mnist-net.yaml --data-root ~/data")
def cmd_train(args: argparse.Namespace) -> int:
    from tlkit.datasets import SOURCE_DEFAULTS  # the dataset's own settings: --dataset, --data-root, --val, ...
    from tlkit.finetuning import train

    flags = {**_given_settings(args), **_given_settings(args, tuple(SOURCE_DEFAULTS))}
    train(args.config, resume=args.resume, force=args.force, **flags)
    return 0


@_command("summary", "a model's layers: output shape and parameters of each",
          "Build MODEL (no weights are loaded) and run one input of the given shape through it, listing every layer's "
          "output shape and parameter count.",
          _arg("model", help="a model name (`tlkit models` lists them; timm:NAME for timm)"),
          _arg("--input", help="input shape CxHxW, e.g. 1x28x28 (default: the model's own)"),
          _arg("--classes", type=_number(int, config.CLASS_COUNTS), default=10, help="outputs of the last layer"),
          example="tlkit summary lenet --input 1x28x28")
def cmd_summary(args: argparse.Namespace) -> int:
    from tlkit.summary import parse_input, summarize

    backbone, rows, shape = summarize(args.model, parse_input(args.input) if args.input else None, args.classes)
    screens.layers(args.model, backbone, rows, shape, args.classes)
    return 0


TIMM_LIST_LIMIT = 40  # rows a --timm pattern adds at most


@_command("models", "list the backbones: feature size, input size, parameters, weights cached here",
          "List every registered backbone with its feature size at the trunk/head cut, its default input size, its "
          "parameter count and whether its ImageNet weights are in the local cache right now (nothing is downloaded).",
          _arg("--timm", metavar="PATTERN", help="also list the timm models matching PATTERN (e.g. 'convnext_*')"),
          _arg("--num-classes", type=_number(int, config.CLASS_COUNTS), help="count head parameters for this many "
               "classes (default: 1000, or 10 for the nets trained from scratch)"),
          example="tlkit models --timm 'convnext_*'")
def cmd_models(args: argparse.Namespace) -> int:
    from tlkit.models import listed

    names, matches = listed(args.timm, limit=TIMM_LIST_LIMIT)
    if matches > TIMM_LIST_LIMIT:
        warn(f"{matches} timm models match {args.timm!r}; showing the first {TIMM_LIST_LIMIT}")
    screens.backbones(names, args.num_classes)
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlkit", description="Transfer-learning image classification: split your photos, fine-tune a "
        "pretrained backbone, predict.", formatter_class=argparse.RawDescriptionHelpFormatter, parents=[_COMMON],
        epilog="workflow:\n  tlkit split data/train --val 2000\n  tlkit finetune --backbone resnet18\n"
        "  tlkit predict photos/")
    parser.add_argument("--version", action="version", version=f"tlkit {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.summary, description=command.description,
                                    epilog=f"example:\n  {command.example}", formatter_class=_HelpFormatter,
                                    parents=[_COMMON])
        for add in command.arguments:
            add(sub)
        sub.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A file name that is not UTF-8 in a message or a table is printed with escapes, never an encoding error (a
    # file tlkit writes keeps its bytes: tlkit.pathtext).
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        # -q: no chatter or bars for this command, and results still on stdout (predict's is its --out file).
        with reporting(quiet=getattr(args, "quiet", False), results=True), naming(COMMAND_LINE):
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
