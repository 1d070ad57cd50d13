"""tlkit from Python: split -> audit -> finetune -> load -> predict / evaluate / export, in a few calls.

Each call runs the same functions as its `tlkit` command (prepare_split/execute_split, audit_folder,
finetuning.finetune, load_checkpoint, predict_files, evaluate_folder, export_checkpoint) with the
command's defaults, and the commands call these (split, check and cache, which start without torch, call their
stages directly). `quiet=True` silences stdout and
stderr for that call alone (runtime.reporting). Errors meant for users are TlkitError, and name the
parameter to change (`val=`, `force=True`) where the command's would name its flag (errors.option).

    >>> from tlkit import api
    >>> data = api.split("photos/train", val="0.2", out="data")
    >>> run = api.finetune(data.out, backbone="efficientnet_lite0", precompute_features=True)
    >>> [row.label for row in run.classifier.predict("photos/test")]
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from tlkit import finetuning, models as registry
from tlkit.audit_report import check_report_dir, default_report_dir, write_audit
from tlkit.auditing import Audit, audit_folder
from tlkit.checkpoint import Checkpoint, load_checkpoint, resolve_run
from tlkit.checkpoint_format import BEST_WEIGHTS, read_meta
from tlkit.config import (ABOVE_ZERO, AUDIT_READS, BATCH_SIZES, DEFAULT_PRECISION, EXPORT_SUFFIXES, LR_FIND_READS,
                          LR_FIND_STEPS, PRECOMPUTE_READS, SIMILARITIES, check_reads, checked_number, config_keys)
from tlkit.decode import pixel_batches, resize_crop
from tlkit.errors import PYTHON, TlkitError, naming, option
from tlkit.evaluate import default_out_dir, evaluate_folder
from tlkit.export import export_checkpoint
from tlkit.features import FeatureSet
from tlkit.findings import DUPLICATE_SIMILARITY
from tlkit.backbone import Backbone
from tlkit.lrfind import LrFindResult, find_lr
from tlkit.labelfile import SEPARATOR
from tlkit.multilabel import label_set
from tlkit.predict import (Predictions, find_images, model_thresholds, predict_files, predictions_of,
                           score_batches)
from tlkit.run_backbone import precompute_features
from tlkit.runtime import (Compute, compute_for, default_workers, inference_batch_size, info, relpath, reporting,
                           warn)
from tlkit.scan import upright_photo
from tlkit.split import MANIFEST, MODES, execute_split, prepare_split


@contextlib.contextmanager
def _call(quiet: bool = False):
    """Around each call here: its messages name its parameters (`val=`, not the command's `--val`), and with
    quiet nothing is printed on stdout or stderr until it returns. Both hold for this call alone: another
    thread's call, and the next one, keep their own. A command that calls here keeps naming its flags."""
    with naming(PYTHON, keep_chosen=True), (reporting(quiet=True) if quiet else contextlib.nullcontext()):
        yield


def _path(name: str, value, *, optional: bool = True) -> Path | None:
    """A path parameter checked at the first hop: a str or os.PathLike (None where optional), else TlkitError
    naming the parameter, rather than a TypeError from deep inside."""
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise TlkitError(f"{option(name)} must be a path (a str or pathlib.Path), not {_given(value)}.")


def _switch(name: str, value) -> bool:
    """A yes/no parameter: True or False only, as `force="no"` would otherwise mean yes."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TlkitError(f"{option(name)} must be True or False, not {_given(value)}.")


def _given(value) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "None"


# ---------------------------------------------------------------- split


@dataclass(frozen=True)
class Split:
    """What `split` wrote: OUT/training and OUT/validation (class folders) and the manifest OUT/split.csv."""

    out: Path
    training: Path
    validation: Path
    counts: dict[str, dict[str, int]]  # {"training": {"cat": 96, ...}, "validation": {...}}
    manifest: Path


def split(src: Path | str, val: str | int | float | None = "0.2", out: Path | str | None = None, *, seed: int = 0,
          mode: str = "link", force: bool = False, quick: bool = False, exclude: Path | str | None = None,
          multi_label: bool = False, label_sep: str = "|", quiet: bool = False) -> Split:
    """`tlkit split`: a stratified, seeded split of a flat (cat.0.jpg) or class-foldered folder, or of a label file
    (labels.csv: path,label rows, paths relative to it; a split column, where it has one, is kept and val unused).

    val: a count (2000) or a fraction (0.2) of the images (None: the label file's split column); out None: beside src (data/train ->
    data/training, data/validation). mode: link, copy, symlink or move. force: replace an earlier split.
    quick: check image headers only. exclude: a reviewed list (the audit.csv of `audit(src)`): its exclude rows
    left out, relabel rows split under their new class, near-duplicate pairs kept in one subset. multi_label: src
    is a label file giving several labels a photo, separated by label_sep (cat|dog); counts are per label. Example:

        >>> data = split("photos", val=0.2, out="data", quiet=True)
        >>> data.counts["validation"]
        {'cat': 24, 'dog': 50}
    """
    with _call(quiet):
        src, out, exclude = _path("src", src, optional=False), _path("out", out), _path("exclude", exclude)
        force, quick = _switch("force", force), _switch("quick", quick)
        multi_label = _switch("multi_label", multi_label)
        if mode not in MODES:
            raise TlkitError(f"mode {mode!r} is not one of {', '.join(MODES)}.")
        if isinstance(val, bool) or not isinstance(val, (str, int, float, type(None))):
            raise TlkitError(f"{option('val')} must be a count (2000) or a fraction (0.2), not {_given(val)}.")
        scan, plan = prepare_split(src, None if val is None else str(val), out, seed=seed, force=force, quick=quick,
                                   exclude=exclude, multi_label=multi_label, label_sep=label_sep)
        if scan.problems:
            warn(f"{scan.problems} file(s) or row(s) of {relpath(scan.source)} passed over (no class in the name, not "
                 "an image, unreadable, or a label file's bad row); `tlkit check` lists them")
        execute_split(plan, mode=mode, force=force)
        info(f"split {relpath(scan.source)} into {relpath(plan.out)}/training and validation ({len(plan.rows)} images)")
    counts = {subset: dict(sorted(by_class.items())) for subset, by_class in plan.counts().items()}
    return Split(out=plan.out, training=plan.out / "training", validation=plan.out / "validation", counts=counts,
                 manifest=plan.out / MANIFEST)


# ---------------------------------------------------------------- predictions


@dataclass(frozen=True)
class Prediction:
    """One input's prediction. source: its path, or its index in a list of images or a tensor batch.
    A file that failed to decode has error set (why), label and confidence None, probabilities {}. A multi-label
    model's: labels holds every label at or above its threshold, label them joined by '|', confidence None.
    familiar: whether the input looks like the training photos, from its novelty (the mean cosine distance of its
    features to the nearest training photos'; tlkit/familiar.py); both None for a checkpoint without them."""

    source: Path | int
    label: str | None
    confidence: float | None
    probabilities: dict[str, float]
    error: str | None = None
    labels: tuple[str, ...] | None = None
    familiar: bool | None = None
    novelty: float | None = None


def _rows(pred: Predictions) -> list[Prediction]:
    """predict's result as a row per input (pred.paths: a file, or an image's index), with the familiar and
    novelty it holds."""
    rows, familiar = [], pred.familiar()
    for index, source in enumerate(pred.paths):
        if index in pred.failures:
            rows.append(Prediction(source, None, None, {}, pred.failures[index]))
            continue
        row = pred.probabilities[index]
        every = dict(zip(pred.classes, map(float, row)))
        said = {} if familiar is None else {"familiar": bool(familiar[index]), "novelty": float(pred.novelty[index])}
        if pred.thresholds is not None:  # multi-label
            labels = tuple(label_set(row, pred.thresholds, pred.classes))
            rows.append(Prediction(source, SEPARATOR.join(labels), None, every, labels=labels, **said))
            continue
        best = int(row.argmax())
        rows.append(Prediction(source, pred.classes[best], float(row[best]), every, **said))
    return rows


def predictions_frame(rows: list[Prediction]):
    """The rows as a pandas DataFrame: source, label, confidence, familiar and novelty (where the model has
    them), p_<class> for each class, error.
    pandas comes with cleanlab (what `audit` uses); where it is missing this raises TlkitError.

        >>> predictions_frame(classifier.predict("photos/test")).groupby("label").size()
    """
    try:
        import pandas
    except ImportError:
        raise TlkitError("predictions_frame needs pandas, which is not installed here: `pip install pandas`, or "
                         "use the list of Prediction rows as it is.") from None
    familiar = any(row.novelty is not None for row in rows)
    return pandas.DataFrame([{"source": str(row.source) if isinstance(row.source, Path) else row.source,
                              "label": row.label, "confidence": row.confidence,
                              **({"familiar": row.familiar, "novelty": row.novelty} if familiar else {}),
                              **{f"p_{name}": p for name, p in row.probabilities.items()}, "error": row.error}
                             for row in rows])


# ---------------------------------------------------------------- the classifier


class Classifier:
    """A trained model with its classes and preprocessing, ready to label images.

        >>> classifier = load("runs/latest")
        >>> classifier.predict("photos/cat.1.jpg")[0].label
        'cat'
    """

    def __init__(self, checkpoint: Checkpoint, compute: Compute):
        self.checkpoint, self.compute, self.device = checkpoint, compute, compute.device

    @property
    def classes(self) -> list[str]:
        return list(self.checkpoint.classes)

    def predict(self, x, *, tta: bool = False, batch_size: int | None = None, threshold: float | None = None,
                quiet: bool = False) -> list[Prediction]:
        """Label x: an image file or folder (or a list of them), a PIL image (or a list), or a tensor batch
        [N, C, H, W]: uint8 raw pixels (resized and cropped as files are) or float already normalised at
        the model's input size. Files go through `tlkit predict`'s decode (a file that fails is a row with
        its error); PIL images are read as files are (EXIF orientation, RGB or L), at the same geometry.
        tta: average with the horizontally flipped view. batch_size None: 256 on a GPU, 32 on a CPU. threshold: a
        multi-label model's one threshold for every label (None: each label's own, chosen on validation).
        Each row says whether the input looks like the training photos (familiar, novelty), where the run kept
        their features (tlkit/familiar.py)."""
        with _call(quiet):
            tta = _switch("tta", tta)
            thresholds = model_thresholds(self.checkpoint, threshold)
            if batch_size is not None:
                batch_size = checked_number("batch_size", batch_size, int, BATCH_SIZES)
            if isinstance(x, torch.Tensor):
                return self._predict_tensor(x, tta, batch_size, thresholds)
            items = list(x) if isinstance(x, (list, tuple)) else [x]
            if items and all(isinstance(item, Image.Image) for item in items):
                return self._predict_pil(items, tta, batch_size, thresholds)
            if items and all(isinstance(item, (str, Path)) for item in items):
                return self._predict_files(items, tta, batch_size, threshold)
        given = ("an empty list" if not items else f"a list of {', '.join(sorted({type(i).__name__ for i in items}))}"
                 if isinstance(x, (list, tuple)) else f"a {type(x).__name__}")
        raise TlkitError("predict takes an image file or folder, a PIL image, a list of either (not mixed), or a "
                         f"tensor batch [N, C, H, W]; it was given {given}.")

    def _predict_files(self, paths: list, tta: bool, batch_size: int | None,
                       threshold: float | None) -> list[Prediction]:
        images = find_images([Path(path) for path in paths]).images
        pred = predict_files(self.checkpoint, images, compute=self.compute, batch_size=batch_size,
                             workers=default_workers(), tta=tta, threshold=threshold)
        return _rows(pred)

    def _predict_pil(self, images: list[Image.Image], tta: bool, batch_size: int | None,
                     thresholds: list[float] | None) -> list[Prediction]:
        """Each image read as a file is; one with no pixels, or in a mode that does not convert, is a row with its
        error, as a file that fails to decode is."""
        pixels, failures = {}, {}
        for index, image in enumerate(images):
            try:
                if 0 in image.size:
                    raise ValueError(f"the image is {image.width}x{image.height}: it has no pixels")
                pixels[index] = self._pil_pixels(image)
            except (ValueError, OSError) as error:
                failures[index] = f"not predicted: {error}"
        return self._predict_pixels(pixels, tta, batch_size, len(images), thresholds, failures)

    def _pil_pixels(self, image: Image.Image) -> torch.Tensor:
        prep = self.checkpoint.backbone.preprocessing
        photo = upright_photo(image, "RGB" if prep.in_chans == 3 else "L")
        return F.pil_to_tensor(resize_crop(photo, prep))

    def _predict_tensor(self, images: torch.Tensor, tta: bool, batch_size: int | None,
                        thresholds: list[float] | None) -> list[Prediction]:
        prep = self.checkpoint.backbone.preprocessing
        expected = (prep.in_chans, *prep.input_size)
        if images.dim() != 4 or images.shape[1] != prep.in_chans:
            raise TlkitError(f"a tensor batch must be [N, {prep.in_chans}, H, W] for this model; got "
                             f"{list(images.shape)}.")
        if images.dtype == torch.uint8:
            if 0 in images.shape[2:]:
                raise TlkitError(f"a tensor batch of {list(images.shape)} holds images with no pixels; each needs a "
                                 "height and width of at least 1.")
            return self._predict_pixels(dict(enumerate(resize_crop(image, prep) for image in images)), tta,
                                        batch_size, len(images), thresholds)
        if not images.is_floating_point() or tuple(images.shape[1:]) != expected:
            raise TlkitError(f"a float batch must be normalised images of the model's input size, [N, "
                             f"{', '.join(map(str, expected))}]; got {images.dtype} {list(images.shape)}. Give "
                             "uint8 pixels to have them resized and normalised.")
        finite = torch.isfinite(images).flatten(1).all(dim=1).tolist() if len(images) else []
        failures = {index: "not predicted: the tensor holds NaN or infinite values" for index, ok in
                    enumerate(finite) if not ok}
        return self._predict_pixels({index: image for index, image in enumerate(images) if finite[index]}, tta,
                                    batch_size, len(images), thresholds, failures)

    def _predict_pixels(self, images: dict[int, torch.Tensor], tta: bool, batch_size: int | None, count: int,
                        thresholds: list[float] | None, failures: dict[int, str] | None = None) -> list[Prediction]:
        """Rows for `count` inputs: those in `images` (by index) predicted, uint8 pixels at the model's geometry
        (normalised as decoded files are) or normalised floats; those in failures rows with their error. Scored by
        predict_files' loop (score_batches), on the checkpoint's model prepared once."""
        batches = pixel_batches(images, self.checkpoint.backbone.preprocessing, self.device,
                                inference_batch_size(self.device, batch_size))
        reference = self.checkpoint.reference(self.device)
        started = time.perf_counter()
        scores = score_batches(self.checkpoint.inference_model(self.device), batches, count, len(self.classes),
                               compute=self.compute, tta=tta, scaling=self.checkpoint.meta.logit_scaling(),
                               multi_label=thresholds is not None, reference=reference)
        return _rows(predictions_of(range(count), scores, failures or {}, classes=self.classes, thresholds=thresholds,
                                    reference=reference, seconds=time.perf_counter() - started))

    def evaluate(self, folder: Path | str, *, out: Path | str | None = None, force: bool = False,
                 quiet: bool = False) -> dict:
        """`tlkit evaluate`: accuracy, per-class precision / recall / F1 and the expected calibration error (`ece`, and
        `ece_uncalibrated` at T = 1) on labelled images (class folders or cat.0.jpg names); writes report.json,
        confusion.png, mistakes.png, reliability.png and mistakes.html to out (None: beside the checkpoint,
        RUN/evaluate-<folder name>) and returns the report. quiet: print nothing.

            >>> classifier.evaluate("data/validation")["accuracy"]
            0.97
        """
        with _call(quiet):
            folder, out, force = _path("folder", folder, optional=False), _path("out", out), _switch("force", force)
            out_dir = out if out is not None else default_out_dir(self.checkpoint, folder)
            return evaluate_folder(self.checkpoint, folder, out_dir, compute=self.compute,
                                   workers=default_workers(), force=force)

    def export(self, fmt: str = "onnx", path: Path | str | None = None, *, force: bool = False,
               quiet: bool = False) -> Path:
        """`tlkit export`: the model as ONNX, torch.export's ExportedProgram ("pt2") or TorchScript (deprecated
        upstream) with its preprocessing in a .json beside it, checked against PyTorch on the run's validation
        images; the file written (path None: RUN/model.onnx, .pt2 or .pt). quiet: print nothing.

            >>> classifier.export("pt2")
            PosixPath('runs/pets/model.pt2')
        """
        with _call(quiet):
            path, force = _path("path", path), _switch("force", force)
            if fmt not in EXPORT_SUFFIXES:
                raise TlkitError(f"export format {fmt!r} is not one of {', '.join(EXPORT_SUFFIXES)}.")
            return Path(export_checkpoint(self.checkpoint, fmt, path, force=force)["file"])


def load(path_or_run: Path | str | Run | None = None, *, device: str = "auto", precision: str = DEFAULT_PRECISION,
         runs_dir: Path | str = "runs", quiet: bool = False) -> Classifier:
    """The Classifier of a run folder or .safetensors file (None: what RUNS_DIR/latest names, as the commands
    do), on device (auto: a GPU when there is one), computing in precision (bf16 where the device has it,
    or fp32). A Run gives its own classifier. quiet: print nothing.

        >>> classifier = load()
    """
    if isinstance(path_or_run, Run):
        return path_or_run.classifier
    with _call(quiet):
        path, runs_dir = _path("path_or_run", path_or_run), _path("runs_dir", runs_dir, optional=False)
        compute = compute_for(device, precision)
        return Classifier(load_checkpoint(resolve_run(path, runs_dir), device=str(compute.device)), compute)


# ---------------------------------------------------------------- fine-tuning


@dataclass
class Run(finetuning.FinetuneResult):
    """A finished fine-tune: everything FinetuneResult holds (run_dir, report, history, best_epoch, classes,
    backbone, outputs, skipped), its folder as `path`, its `accuracy`, and a `classifier` of the trained
    model as it is in memory."""

    classifier: Classifier

    @property
    def path(self) -> Path:
        return self.run_dir

    @property
    def accuracy(self) -> float:
        """Of the best weights, on the validation images (the test split where the data has one)."""
        return self.report["accuracy"]


def finetune(data: Path | str | None = None, *, config_file: Path | str | None = None,
             resume: Path | str | None = None, force: bool = False, callbacks=(), quiet: bool = False,
             backbone: str | None = None, weights: str | None = None, img_size: int | None = None,
             epochs: int | None = None, batch_size: int | None = None, optimizer: str | None = None,
             lr: float | None = None, lr_scale: str | None = None, momentum: float | None = None,
             weight_decay: float | None = None, scheduler: str | None = None, step_size: int | None = None,
             gamma: float | None = None, freeze: str | None = None, unfreeze_after: int | None = None,
             trunk_lr_mult: float | None = None, freeze_bn: bool | None = None, label_smoothing: float | None = None,
             class_weights: str | None = None, augment: str | bool | None = None, monitor: str | None = None,
             patience: int | None = None,
             precision: str | None = None, device: str | None = None, workers: int | None = None,
             cache_images: bool | None = None, precompute_features: bool | None = None, head_lr: float | None = None,
             head_weight_decay: float | None = None, precompute_views: int | None = None,
             cache_dir: str | None = None, cache_dtype: str | None = None, resume_every_epochs: int | None = None,
             resume_every_seconds: float | None = None, seed: int | None = None, name: str | None = None,
             runs_dir: str | None = None, exclude: str | None = None) -> Run:
    """`tlkit finetune`: train a backbone on DATA/training, keep the best epoch on DATA/validation, write runs/<name>/.

    data None: the config's (data/ unless config_file says otherwise). Every other keyword is the
    run's setting of that name (`tlkit finetune --help` says what each does); None, the default, leaves
    it to config_file or to the recipe (tlkit/recipe.py: on a pretrained trunk the head trains on cached
    features to convergence, then every layer). resume: a run folder to continue. callbacks: extra
    tlkit.callbacks.Callback objects. quiet: print nothing. Example:

        >>> run = finetune("data", backbone="efficientnet_lite0", precompute_features=True, quiet=True)
        >>> run.accuracy, run.best_epoch, run.path
    """
    # The keywords above restate config.py's settings on purpose: help(), editors and type checkers see each one
    # with its type, where a derived **settings would show nothing. tests/test_api.py holds them equal to
    # config_keys(), so a new setting fails the suite until it is added here.
    # The settings given: every keyword named like a FinetuneConfig field and not left at None.
    settings = {key: value for key, value in locals().items() if key in config_keys() and value is not None}
    with _call(quiet):
        if data is not None:
            settings["data"] = str(_path("data", data))
        config_file, resume = _path("config_file", config_file), _path("resume", resume)
        result = finetuning.finetune(config_file, resume=resume, force=_switch("force", force), callbacks=callbacks,
                                     **settings)
    result.backbone.model.eval()
    checkpoint = Checkpoint(backbone=result.backbone, classes=list(result.classes), meta=read_meta(result.run_dir),
                            path=result.run_dir / BEST_WEIGHTS)
    fields = {field.name: getattr(result, field.name) for field in dataclasses.fields(result)}
    return Run(**fields, classifier=Classifier(checkpoint, result.compute))


# ---------------------------------------------------------------- audit


def audit(data: Path | str, *, out: Path | str | None = None, force: bool = False, config_file: Path | str | None = None,
          similarity: float = DUPLICATE_SIMILARITY, quiet: bool = False, **settings) -> Audit:
    """`tlkit audit`: likely label errors, near-duplicates (across training and validation above all),
    identical files, outliers and photos showing several classes of a split folder or of a folder not split
    yet, judged by the backbone's cached features and those of each photo's halves (efficientnet_lite0 unless
    settings say otherwise: backbone=, weights=, device=, ...; the settings config.AUDIT_READS names, and no other).
    Writes OUT/audit.csv, audit.json, audit.html and audit.png (out None: DATA-audit beside DATA) and
    returns the Audit: its
    `issues` are audit.csv's rows, `counts()` the table per class, `findings` every photo's scores.

        >>> report = audit("data", quiet=True)
        >>> [(row.path, row.action) for row in report.of("label")][:3]
    """
    with _call(quiet):
        check_reads("audit", settings, AUDIT_READS)
        data, out, config_file = _path("data", data, optional=False), _path("out", out), _path("config_file", config_file)
        force, similarity = _switch("force", force), checked_number("similarity", similarity, float, SIMILARITIES)
        out_dir = out if out is not None else default_report_dir(data)
        check_report_dir(out_dir, force)
        found = audit_folder(data, settings, config_file=config_file, similarity=similarity)
        write_audit(found, out_dir, settings, force=force)
    return found


# ---------------------------------------------------------------- the feature cache, the lr range test


@dataclass(frozen=True)
class FeatureCache:
    """What `precompute` found valid or computed: the backbone whose trunk made the features, and its FeatureSet
    of each subset (`files`, `features`: one row per image and view)."""

    backbone: Backbone
    sets: dict[str, FeatureSet]


def precompute(data: Path | str | None = None, *, config_file: Path | str | None = None, batch_size: int | None = None,
               force: bool = False, quiet: bool = False, **settings) -> FeatureCache:
    """`tlkit precompute`: the trunk's features of DATA/training and DATA/validation, cached on disk, that
    `finetune(..., precompute_features=True)` with the same settings reads (the settings config.PRECOMPUTE_READS
    names, and no other). data None: the config's. batch_size: images per trunk batch (None: 256 on a GPU, 32 on
    a CPU). force: compute again even where the cache is valid. Example:

        >>> cache = precompute("data", backbone="efficientnet_lite0", quiet=True)
        >>> cache.sets["training"].features.shape
    """
    with _call(quiet):
        check_reads("precompute", settings, PRECOMPUTE_READS)
        if data is not None:
            settings["data"] = str(_path("data", data))
        if batch_size is not None:
            batch_size = checked_number("batch_size", batch_size, int, BATCH_SIZES)
        backbone, sets = precompute_features(_path("config_file", config_file), batch_size=batch_size,
                                             force=_switch("force", force), **settings)
    return FeatureCache(backbone, sets)


def lr_find(data: Path | str | None = None, *, out: Path | str = "runs/lr-find.png", force: bool = False,
            config_file: Path | str | None = None, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            quiet: bool = False, **settings) -> LrFindResult:
    """`tlkit lr-find`: a few batches while the lr grows exponentially from start_lr to end_lr, the loss
    plotted against it in out (a .png), and the lr where it falls fastest (`suggested_lr`); nothing is trained
    for keeps. settings: those config.LR_FIND_READS names (backbone=, freeze=, batch_size=, ...), and no
    other. Example:

        >>> lr_find("data", backbone="resnet18", freeze="trunk", quiet=True).suggested_lr
    """
    with _call(quiet):
        check_reads("lr-find", settings, LR_FIND_READS)
        if data is not None:
            settings["data"] = str(_path("data", data))
        start_lr, end_lr = (checked_number(name, value, float, ABOVE_ZERO)
                            for name, value in (("start_lr", start_lr), ("end_lr", end_lr)))
        return find_lr(_path("config_file", config_file), out=_path("out", out, optional=False),
                       force=_switch("force", force), start_lr=start_lr, end_lr=end_lr,
                       steps=checked_number("steps", steps, int, LR_FIND_STEPS), **settings)


# ---------------------------------------------------------------- backbones


def models(*, quiet: bool = False) -> list[dict]:
    """The backbones `tlkit models` lists: name, family, summary, feature_dim, input_size, parameters (with a
    1000-class head; 10 for the nets trained from scratch) and pretrained (where the ImageNet weights are:
    package, cached, damaged, missing, or none). quiet: print nothing.

        >>> [m["name"] for m in models() if m["pretrained"] in ("package", "cached")]
    """
    rows = []
    with _call(quiet):
        names, _ = registry.listed(None)
        for name in names:
            backbone = registry.describe(name)
            rows.append({"name": name, "family": backbone.family, "summary": backbone.summary,
                         "feature_dim": backbone.feature_dim, "input_size": tuple(backbone.input_size),
                         "parameters": backbone.trunk_params + backbone.head_params,
                         "pretrained": backbone.weights_state})
    return rows
