"""Use a trained model: label new photos (predict) and measure it on labelled ones (evaluate).

The model comes from a checkpoint alone (tlkit.checkpoint.load_checkpoint); images go
through the same batched decode as precompute (tlkit.decode). A file that fails to decode
is a row with an error, never the end of the run. The same forward pass keeps the trunk's features, which say
how unlike the training photos each one is (tlkit/familiar.py). Writes only the outputs it is asked for.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlkit import distributed
from tlkit.atomic import atomic_write_text, check_writable
from tlkit.backbone import TrunkHead
from tlkit.checkpoint import Checkpoint
from tlkit.config import PREDICT_FORMATS
from tlkit.decode import Batch, ImageBatches
from tlkit.errors import TlkitError, option
from tlkit.familiar import Reference, is_familiar
from tlkit.labelfile import SEPARATOR
from tlkit.multilabel import MULTI_LABEL, checked_threshold, decisions, label_set
from tlkit.ownership import why_kept
from tlkit.pathtext import is_stdout, path_text, write_stdout
from tlkit.runtime import Compute, inference_batch_size, progress, relpath
from tlkit.scan import is_image_name, list_folder
from tlkit.split import finish_pending_split

FORMATS = PREDICT_FORMATS
UNSCORED = "the model gave no finite score (NaN or infinite pixels, or damaged weights)"


@dataclass
class Predictions:
    """Class probabilities for each file; the rows of failed files are NaN, with the reason in `failures`."""

    paths: list[Path]  # the files; api.Classifier's images or tensor rows: their indices
    probabilities: np.ndarray  # float32 [N, C]
    classes: list[str]
    failures: dict[int, str]
    seconds: float
    thresholds: list[float] | None = None  # a multi-label model's, one per class: probabilities are sigmoids
    novelty: np.ndarray | None = None  # float32 [N]: with the checkpoint's reference features (tlkit/familiar.py)
    threshold: float | None = None  # novelty above it: unlike the training photos
    features: np.ndarray | None = None  # float32 [N, D] the trunk's, when asked for (keep_features)

    def predicted(self) -> np.ndarray:
        return np.nan_to_num(self.probabilities, nan=-1.0).argmax(axis=1)

    def counts(self) -> dict[str, int]:
        """How many photos each class was given: the most probable class, or a multi-label model's every class at
        or above its threshold."""
        scored = [index for index in range(len(self.paths)) if index not in self.failures]
        if self.thresholds is not None:
            held = decisions(self.probabilities[scored], self.thresholds).sum(axis=0)
            return {name: int(count) for name, count in zip(self.classes, held)}
        given = self.predicted()[scored]
        return {name: int((given == index).sum()) for index, name in enumerate(self.classes)}


    def familiar(self) -> np.ndarray | None:
        """[N] bool: whether each photo is like the training photos (its novelty at most the threshold)."""
        return None if self.novelty is None else is_familiar(self.novelty, self.threshold)


def model_thresholds(checkpoint: Checkpoint, threshold: float | None = None) -> list[float] | None:
    """A multi-label model's thresholds: threshold (--threshold) for every class where given, else those chosen on
    its validation photos (best.json); None for a single-label model, which takes no threshold."""
    threshold = checked_threshold(threshold)
    if checkpoint.meta.task != MULTI_LABEL:
        if threshold is not None:
            raise TlkitError(f"{option('threshold', threshold)} decides which labels a photo holds in a multi-label "
                             "model; this one gives each photo its one most probable class. Leave it out.")
        return None
    return [threshold] * len(checkpoint.classes) if threshold is not None else list(checkpoint.meta.thresholds)

@dataclass
class Scores:
    """score_batches' rows: NaN where no batch held the index (a failed decode)."""

    probabilities: np.ndarray  # float32 [N, C]
    novelty: np.ndarray | None  # float32 [N]: with a reference
    features: np.ndarray | None  # float32 [N, D]: with keep_features


@dataclass
class FoundImages:
    """The files find_images takes, and what it passed over inside the folders named (to be said)."""

    images: list[Path]
    non_images: int  # files of a folder named that are not images by their suffix
    hidden: list[Path]  # hidden files and folders of a folder named (scan.is_hidden), each folder once
    repeated: list[Path]  # links to a folder walked already (a loop): not walked again (scan.list_folder)


def find_images(paths: list[Path]) -> FoundImages:
    """Every file named, whatever its name (one that does not decode is a row with its reason); of a
    folder named, its visible image files as tlkit.scan lists them, sorted. A file met twice (a folder
    named twice, or a file and its folder) is taken once."""
    found, seen = FoundImages(images=[], non_images=0, hidden=[], repeated=[]), set()
    for path in map(Path, paths):
        finish_pending_split(path)  # a folder of a split interrupted while swapping in: finished first
        if not path.exists():
            raise TlkitError(f"{relpath(path)} does not exist; give image files or folders of them.")
        if not path.is_dir():
            found.images += _first_time([path], seen)
            continue
        listing = list_folder(path)
        found.images += _first_time([file for file in listing.files if is_image_name(file)], seen)
        found.non_images += len(_first_time([file for file in listing.files if not is_image_name(file)], seen))
        found.hidden += _first_time(listing.hidden, seen)
        found.repeated += listing.repeated
    if not found.images:
        raise TlkitError(f"no image files in {', '.join(relpath(Path(p)) for p in paths)} (looked for .jpg, "
                         f".png, ...; {found.non_images} other and {len(found.hidden)} hidden file(s) or "
                         "folder(s) passed over).")
    return found


def _first_time(paths: list[Path], seen: set[Path]) -> list[Path]:
    """The paths whose files were not met before (compared resolved); they are added to seen."""
    fresh = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            fresh.append(path)
    return fresh


def predict_files(checkpoint: Checkpoint, paths: list[Path], *, compute: Compute, batch_size: int | None = None,
                  workers: int = 0, tta: bool = False, gpu_decode: bool | None = None,
                  threshold: float | None = None, familiar: bool = True, keep_features: bool = False) -> Predictions:
    """Softmax probabilities of every image, calibrated by the checkpoint's temperature; with tta, averaged with
    the horizontally flipped view. familiar: each image's novelty too, where the checkpoint has reference
    features (Checkpoint.reference); keep_features: the trunk's features of each image.
    compute: the device and arithmetic (runtime.compute_for).
    batch_size None: runtime.inference_batch_size. The model runs with its BatchNorm folded, once per checkpoint
    (Checkpoint.inference_model).

    A multi-label model's probabilities are each class's sigmoid, decided by model_thresholds (threshold: one for all).
    Under torchrun each process predicts its share of the files; every process returns all of them.
    """
    thresholds = model_thresholds(checkpoint, threshold)
    device = compute.device
    distributed.setup(device)
    model = checkpoint.inference_model(device)
    reference = checkpoint.reference(device) if familiar else None
    mine = distributed.shard(range(len(paths)))  # every file in a single process
    batches = ImageBatches([paths[index] for index in mine], checkpoint.backbone.preprocessing, device=device,
                           batch_size=inference_batch_size(device, batch_size), workers=workers, gpu_decode=gpu_decode)
    started = time.perf_counter()
    scores = score_batches(model, batches, len(mine), len(checkpoint.classes), compute=compute, tta=tta,
                           scaling=checkpoint.meta.logit_scaling(), multi_label=thresholds is not None,
                           reference=reference, keep_features=keep_features)
    failures = {mine[index]: why for index, why in batches.failures.items()}
    if distributed.world_size() > 1:
        scores, failures = _unshard(scores, failures, len(paths))
    return predictions_of(paths, scores, failures, classes=checkpoint.classes, thresholds=thresholds,
                          reference=reference, seconds=time.perf_counter() - started)


def predictions_of(paths: list, scores: Scores, failures: dict[int, str], *, classes: list[str],
                   thresholds: list[float] | None, reference: Reference | None, seconds: float) -> Predictions:
    """score_batches' scores as predict's result, of predict_files and api.Classifier alike: failures with every
    unscored row (with_unscored), the novelty judged at the reference's threshold."""
    return Predictions(paths=list(paths), probabilities=scores.probabilities, classes=list(classes),
                       failures=with_unscored(scores.probabilities, failures), seconds=seconds, thresholds=thresholds,
                       novelty=scores.novelty, threshold=None if reference is None else reference.threshold,
                       features=scores.features)


def _unshard(scores: Scores, failures: dict[int, str], count: int) -> tuple[Scores, dict[int, str]]:
    """Every process's rows of each score, in file order (distributed.unshard_rows), on every process."""
    parts = [scores.probabilities, scores.novelty, scores.features]
    whole = [None if part is None else distributed.unshard_rows(part.reshape(len(part), -1), failures, count,
                                                                everywhere=True) for part in parts]
    probabilities, novelty, features = [None if part is None else part[0] for part in whole]
    return Scores(probabilities, None if novelty is None else novelty[:, 0], features), whole[0][1]


def with_unscored(probabilities: np.ndarray, failures: dict[int, str]) -> dict[int, str]:
    """failures, plus every other row whose scores are not all finite (NaN pixels given, or damaged weights):
    such a row is no prediction, and gets no label."""
    unscored = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    return {**{int(index): UNSCORED for index in unscored}, **failures}


def score_batches(model: TrunkHead, batches: Iterable[Batch], count: int, num_classes: int, *,
                  compute: Compute, scaling: tuple[np.ndarray, np.ndarray], tta: bool = False,
                  multi_label: bool = False, reference: Reference | None = None, keep_features: bool = False) -> Scores:
    """The one inference loop, of predict_files and tlkit.api's Classifier: softmax probabilities [count,
    num_classes] of each batch's normalised images at its indices, NaN where no batch held an index (a failed
    decode); with tta averaged with the horizontally flipped view. compute: the device's autocast. scaling: the
    checkpoint's (scale, shift) of each logit before the softmax (CheckpointMeta.logit_scaling: 1 / its temperature,
    tlkit/calibration.py) or, with multi_label, before each class's own sigmoid (its Platt scaling).
    From the same forward pass, the trunk's features: each image's novelty against a reference (tlkit/familiar.py),
    and the features themselves with keep_features."""
    probabilities = np.full((count, num_classes), np.nan, dtype=np.float32)
    novelty = None if reference is None else np.full(count, np.nan, dtype=np.float32)
    kept = None
    scale, shift = (torch.as_tensor(part, device=compute.device) for part in scaling)
    with progress() as bar, torch.inference_mode(), compute.autocast():
        task = bar.add_task("predicting", total=count)
        for batch in batches:
            scores, features = _class_scores(model, batch.images, tta, (scale, shift), multi_label)
            probabilities[batch.indices] = scores.cpu().numpy()
            if reference is not None:
                novelty[batch.indices] = reference.novelty(features).cpu().numpy()
            if keep_features:
                kept = np.full((count, features.shape[1]), np.nan, dtype=np.float32) if kept is None else kept
                kept[batch.indices] = features.cpu().numpy()
            bar.advance(task, len(batch.indices))
        bar.update(task, completed=count)
    return Scores(probabilities, novelty, kept)


def _class_scores(model: TrunkHead, images: torch.Tensor, tta: bool, scaling: tuple[torch.Tensor, torch.Tensor],
                  multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax probabilities of a normalised batch's logits x scale + shift (multi_label: sigmoids), with tta
    averaged with the horizontally flipped view; the trunk's float32 features of the unflipped view, as the
    reference's were made). Called inside inference_mode and the autocast of the run's precision (score_batches)."""
    scale, shift = scaling

    def scores_of(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() * scale + shift
        return logits.sigmoid() if multi_label else logits.softmax(dim=1)

    features = model.trunk(images)
    scores = scores_of(model.head(features))
    if tta:
        scores = (scores + scores_of(model(images.flip(-1)))) / 2
    return scores, features.float()


# ---------------------------------------------------------------- writing predictions


def _top(row: np.ndarray, classes: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-row)[:k]
    return [(classes[i], float(row[i])) for i in order]


@dataclass(frozen=True)
class _Columns:
    """What a predictions file says of a scored photo besides its path, familiar and novelty: the CSV's columns
    before those two (lead) and after (tail, then error), with each photo's cells of them, and its JSON fields
    before them and probabilities after. The writing (_csv_text, _json_text) is one for every model."""

    lead: list[str]
    tail: list[str]
    cells: Callable[[np.ndarray], tuple[list[str], list[str]]]  # a photo's probabilities -> lead and tail cells
    fields: Callable[[np.ndarray], tuple[dict, dict[str, float]]]  # -> JSON fields, probabilities by class


def _one_class_columns(classes: list[str], topk: int | None) -> _Columns:
    """A single-label model's: the most probable class and its confidence; every class's probability, or with
    topk the topk classes ranked with theirs."""
    def cells(row: np.ndarray) -> tuple[list[str], list[str]]:
        (label, confidence), *_ = _top(row, classes, 1)
        if topk:
            return [label, f"{confidence:.6f}"], [v for name, p in _top(row, classes, topk) for v in (name, f"{p:.6f}")]
        return [label, f"{confidence:.6f}"], [f"{p:.6f}" for p in row]

    def fields(row: np.ndarray) -> tuple[dict, dict[str, float]]:
        ranked = _top(row, classes, topk or len(classes))
        return {"label": ranked[0][0], "confidence": ranked[0][1]}, dict(ranked)

    tail = ([name for rank in range(1, topk + 1) for name in (f"top{rank}", f"p{rank}")] if topk
            else [f"p_{name}" for name in classes])
    return _Columns(["label", "confidence"], tail, cells, fields)


def _label_set_columns(classes: list[str], thresholds: list[float]) -> _Columns:
    """A multi-label model's: the labels at or above their thresholds (the CSV's joined by SEPARATOR; empty:
    none), and every label's probability."""
    def cells(row: np.ndarray) -> tuple[list[str], list[str]]:
        return [SEPARATOR.join(label_set(row, thresholds, classes))], [f"{p:.6f}" for p in row]

    def fields(row: np.ndarray) -> tuple[dict, dict[str, float]]:
        return {"labels": label_set(row, thresholds, classes)}, {name: float(p) for name, p in zip(classes, row)}

    return _Columns(["labels"], [f"p_{name}" for name in classes], cells, fields)


def _csv_text(pred: Predictions, columns: _Columns) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    familiar = pred.familiar()
    novelty = [] if familiar is None else ["familiar", "novelty"]
    writer.writerow(["path", *columns.lead, *novelty, *columns.tail, "error"])
    for index, path in enumerate(pred.paths):
        if index in pred.failures:
            blank = [""] * (len(columns.lead) + len(novelty) + len(columns.tail))
            writer.writerow([path_text(path), *blank, pred.failures[index]])
            continue
        lead, tail = columns.cells(pred.probabilities[index])
        said = [] if familiar is None else [str(bool(familiar[index])).lower(), f"{pred.novelty[index]:.6f}"]
        writer.writerow([path_text(path), *lead, *said, *tail, ""])
    return buffer.getvalue()


def _json_text(pred: Predictions, columns: _Columns) -> str:
    records, familiar = [], pred.familiar()
    for index, path in enumerate(pred.paths):
        if index in pred.failures:
            records.append({"path": path_text(path), "error": pred.failures[index]})
            continue
        fields, probabilities = columns.fields(pred.probabilities[index])
        said = {} if familiar is None else {"familiar": bool(familiar[index]), "novelty": float(pred.novelty[index])}
        records.append({"path": path_text(path), **fields, **said, "probabilities": probabilities})
    return json.dumps(records, indent=1)


def kaggle_id(path: Path) -> int | None:
    """The id a Kaggle submission gives a file: `123.jpg` -> 123, `007.jpg` -> 7 (the number, as int()
    reads decimal digits of any script); None when the name is not a number (`².jpg`, `cat.5.jpg`)."""
    stem = Path(path).stem
    return int(stem) if stem.isdecimal() else None


def _kaggle_text(pred: Predictions) -> str:
    """Dogs-vs-Cats submission: `id,label` with the id from `123.jpg` and the probability of `dog`."""
    positive = pred.classes.index("dog") if "dog" in pred.classes else 1
    rows = []
    for index, path in enumerate(pred.paths):
        if index in pred.failures:
            raise TlkitError(f"{relpath(path)} {pred.failures[index]}, so it has no prediction and a Kaggle "
                             f"submission needs every id; replace the file or use {option('format', 'csv')}.")
        rows.append((kaggle_id(path), float(pred.probabilities[index, positive])))
    return "id,label\n" + "".join(f"{id_},{p:.6f}\n" for id_, p in sorted(rows))


def _check_kaggle_ids(paths: list[Path]) -> None:
    """Every file has a number for a name, and no two the same number (`007.jpg` and `7.png` are both 7)."""
    named = [path for path in map(Path, paths) if kaggle_id(path) is None]
    if named:
        raise TlkitError(f"{option('format', 'kaggle')} takes ids from file names like 123.jpg; {relpath(named[0])} "
                         f"is not one ({len(named)} such file(s)). Use {option('format', 'csv')}, or predict on the "
                         "Kaggle test folder.")
    first_with_id: dict[int, Path] = {}
    for path in map(Path, paths):
        id_ = kaggle_id(path)
        if id_ in first_with_id:
            raise TlkitError(f"{option('format', 'kaggle')} needs one file per id; {relpath(first_with_id[id_])} and "
                             f"{relpath(path)} are both id {id_}. Rename or remove one, or use "
                             f"{option('format', 'csv')}.")
        first_with_id[id_] = path


def check_request(out: Path, *, fmt: str, topk: int | None, classes: list[str], paths: list[Path],
                  force: bool, multi_label: bool = False) -> None:
    """Everything that would stop the writing, checked before any image is predicted. out `-`: standard output.
    multi_label: the model gives a set of labels a photo (csv and json, every label's probability)."""
    if not is_stdout(out):
        _check_out_file(Path(out), force)
    if multi_label and (fmt == "kaggle" or topk is not None):
        said = option('format', 'kaggle') if fmt == "kaggle" else option('topk', topk)
        raise TlkitError(f"{said} ranks one class a photo; this multi-label model writes each photo's labels and every "
                         f"label's probability: use {option('format', 'csv')} or {option('format', 'json')}.")
    if topk is not None and not 1 <= topk <= len(classes):
        raise TlkitError(f"{option('topk', topk)} must be between 1 and the number of classes ({len(classes)}).")
    if fmt == "kaggle":
        if len(classes) != 2:
            raise TlkitError(f"{option('format', 'kaggle')} needs a two-class model; this one has {len(classes)} "
                             "classes.")
        _check_kaggle_ids(paths)


def _check_out_file(out: Path, force: bool) -> None:
    """A file may be written at out: nothing there, or a predictions file and force."""
    if out.exists() and not force:
        raise TlkitError(f"{relpath(out)} already exists; nothing was written. Use {option('force', True)} to replace "
                         f"it, or {option('out')} to write elsewhere.")
    if out.exists() and not out.is_dir() and (why := why_kept(out)):
        raise TlkitError(f"{relpath(out)} is not a predictions file of tlkit's ({why}), and {option('force', True)} "
                         f"replaces only those; nothing was written. Choose another {option('out')}, or move it away.")
    check_writable(out.parent, "out")


def write_predictions(pred: Predictions, out: Path, *, fmt: str = "csv", topk: int | None = None,
                      force: bool = False) -> Path:
    """Write predictions in `fmt` (out `-`: to standard output); an existing file is replaced only with force.
    Under torchrun rank 0 alone writes (every process holds all the predictions)."""
    out = Path(out)
    if not distributed.is_main():
        return out
    check_request(out, fmt=fmt, topk=topk, classes=pred.classes, paths=pred.paths, force=force,
                  multi_label=pred.thresholds is not None)
    if fmt == "kaggle":
        text = _kaggle_text(pred)
    else:
        columns = (_one_class_columns(pred.classes, topk) if pred.thresholds is None
                   else _label_set_columns(pred.classes, pred.thresholds))
        text = (_csv_text if fmt == "csv" else _json_text)(pred, columns)
    if is_stdout(out):
        write_stdout(text)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out
