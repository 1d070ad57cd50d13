"""`tlkit evaluate`: a trained model's numbers on labelled photos, and what it gets wrong.

Accuracy and scikit-learn's per-class precision / recall / F1, a confusion matrix, the expected calibration
error with its reliability diagram, and a contact sheet and a page of the most confident mistakes (fastai's
"top losses"). Labels come from the folder or label file the same way `tlkit split` reads them (tlkit.scan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlkit import distributed
from tlkit.calibration import expected_calibration_error, log_loss, reliability, uncalibrated
from tlkit.atomic import check_writable
from tlkit.checkpoint import EVALUATE_FILES, Checkpoint
from tlkit.errors import TlkitError, option
from tlkit.labelfile import SEPARATOR, is_label_file
from tlkit.multilabel import LABELS_FILE, MULTI_LABEL, metrics, multi_hot, worst_mistakes
from tlkit.ownership import replace_outputs, wrote_any
from tlkit.pathtext import refuse_stdout
from tlkit.photopage import Card, Section, write_page
from tlkit.predict import Predictions, predict_files
from tlkit.report import class_report, plot_confusion, plot_mistakes, plot_reliability, write_report
from tlkit.runtime import Compute, relpath
from tlkit.scan import list_dataset, warn_rows_left_out
from tlkit.split import finish_pending_split

OUTPUTS = EVALUATE_FILES  # what runs/NAME/evaluate-<data>/ holds


def default_out_dir(checkpoint: Checkpoint, data_dir: Path) -> Path:
    """Beside the checkpoint: runs/NAME/evaluate-validation/ for data/validation."""
    return checkpoint.path.parent / f"evaluate-{Path(data_dir).resolve().name}"


def labelled_images(data_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The images of a flat or class-foldered folder or of a label file, with their class indices in the model's
    order."""
    finish_pending_split(Path(data_dir))  # DATA/validation of a split interrupted while swapping in
    scan = list_dataset(Path(data_dir))
    warn_rows_left_out(scan)
    unknown = sorted(set(scan.classes) - set(classes))
    if unknown:
        raise TlkitError(
            f"{relpath(Path(data_dir))} has class(es) {', '.join(unknown)} that the model does not know; it "
            f"was trained on {', '.join(classes)}. Remove those images or train a model that has them."
        )
    if not scan.images:
        raise TlkitError(f"{relpath(Path(data_dir))} holds no labelled images (cat.0.jpg or <class>/<image>).")
    return [path for path, _ in scan.images], [classes.index(label) for _, label in scan.images]


def most_confident_mistakes(pred: Predictions, targets: list[int], limit: int) -> list[dict]:
    """Wrong predictions, the most confident first."""
    mistakes = []
    for index, (row, target) in enumerate(zip(pred.probabilities, targets)):
        if index in pred.failures or int(row.argmax()) == target:
            continue
        mistakes.append({"path": str(pred.paths[index]), "true": pred.classes[target],
                         "predicted": pred.classes[int(row.argmax())], "confidence": float(row.max())})
    return sorted(mistakes, key=lambda m: -m["confidence"])[:limit]


def evaluate_folder(checkpoint: Checkpoint, data_dir: Path, out_dir: Path, *, compute: Compute,
                    batch_size: int | None = None, workers: int = 0, tta: bool = False, force: bool = False,
                    mistakes: int = 16) -> dict:
    """Predict every labelled image of data_dir, write report.json, and the plots and page of the model's task:
    one class a photo (_class_numbers, _class_pages) or several (_label_set_numbers, label_mistakes_page)."""
    refuse_stdout(out_dir, "a folder of a report, plots and a page")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, force)
    check_writable(out_dir, "out")
    multi_label = checkpoint.meta.task == MULTI_LABEL
    paths, targets = (label_sets if multi_label else labelled_images)(data_dir, checkpoint.classes)
    pred = predict_files(checkpoint, paths, compute=compute, batch_size=batch_size, workers=workers, tta=tta,
                         familiar=False)  # a report of the labels: no familiar column to fill
    scored = [i for i in range(len(paths)) if i not in pred.failures]
    if not scored:
        raise TlkitError(f"no image in {relpath(Path(data_dir))} could be decoded; check them with `tlkit check`.")
    numbers, worst = (_label_set_numbers if multi_label else _class_numbers)(checkpoint, pred, targets, scored,
                                                                             tta=tta, mistakes=mistakes)
    report = {"checkpoint": str(checkpoint.path), "data": str(data_dir), **numbers,
              "failed": {str(paths[i]): why for i, why in sorted(pred.failures.items())}, **worst,
              "images_per_s": len(paths) / max(pred.seconds, 1e-9)}
    if distributed.is_main():  # under torchrun every process holds every prediction; rank 0 alone writes
        check_out_dir(out_dir, force)  # again: the folder may have changed while the photos were predicted
        target = replace_outputs(out_dir, OUTPUTS, force)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_report(target["report.json"], report)
        if multi_label:
            label_mistakes_page(target["mistakes.html"], report)
        else:
            _class_pages(target, report, [targets[i] for i in scored], pred.predicted()[scored].tolist(),
                         checkpoint.classes)
    return report


def _class_numbers(checkpoint: Checkpoint, pred: Predictions, targets: list[int], scored: list[int], *, tta: bool,
                   mistakes: int) -> tuple[dict, dict]:
    """A single-label model's numbers on the scored photos (accuracy, per-class scores, calibration), and its
    most confident mistakes."""
    y_true = [targets[i] for i in scored]
    per_class = class_report(y_true, pred.predicted()[scored].tolist(), checkpoint.classes)
    numbers = {"images": len(scored), "tta": tta, "accuracy": per_class["accuracy"],
               "balanced_accuracy": per_class["balanced_accuracy"], "macro_f1": per_class["macro_f1"],
               "recall": per_class["recall"], "per_class": per_class,
               **calibration_report(pred.probabilities[scored], y_true, checkpoint.meta.temperature, tta)}
    return numbers, {"most_confident_mistakes": most_confident_mistakes(pred, targets, mistakes)}


def _class_pages(target: dict[str, Path], report: dict, y_true: list[int], y_pred: list[int],
                 classes: list[str]) -> None:
    """confusion.png, mistakes.png, reliability.png and mistakes.html of a single-label model's report."""
    plot_confusion(target["confusion.png"], y_true, y_pred, classes, subset=Path(report["data"]).resolve().name)
    plot_mistakes(target["mistakes.png"], report["most_confident_mistakes"])
    plot_reliability(target["reliability.png"], report)
    mistakes_page(target["mistakes.html"], report, target["reliability.png"])


def calibration_report(probabilities: np.ndarray, targets: list[int], temperature: float, tta: bool) -> dict:
    """The expected calibration error of the confidences predict gives (at the checkpoint's temperature) with
    their reliability curve, and where the model has a temperature, the same before it: from the same predictions
    (tlkit.calibration.uncalibrated), which a tta average does not allow (then null)."""
    report = {"temperature": temperature, "ece": expected_calibration_error(probabilities, targets),
              "log_loss": log_loss(probabilities, targets), "reliability": reliability(probabilities, targets),
              "ece_uncalibrated": None, "log_loss_uncalibrated": None, "reliability_uncalibrated": None}
    if temperature != 1.0 and not tta:
        before = uncalibrated(probabilities, temperature)
        report.update(ece_uncalibrated=expected_calibration_error(before, targets),
                      log_loss_uncalibrated=log_loss(before, targets),
                      reliability_uncalibrated=reliability(before, targets))
    return report


def check_out_dir(out_dir: Path, force: bool) -> None:
    """evaluate writes into a new or empty folder, or over an earlier evaluation (with force): never among
    files of another's (photos, notes), nor over an evaluation written before tlkit kept records of its files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TlkitError(f"{relpath(out_dir)} is a file; evaluate writes a folder. Choose another {option('out', 'DIR')}.")
    present = sorted(path.name for path in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not wrote_any(out_dir, OUTPUTS):
        raise TlkitError(f"{relpath(out_dir)} holds files that tlkit's evaluate did not write ({', '.join(present[:3])}"
                         f"{' ...' if len(present) > 3 else ''}); its report would be scattered among them, so nothing "
                         f"was written. Choose a new or empty {option('out', 'DIR')} (an evaluation written before "
                         "tlkit kept records of its files counts as another's: move it away).")
    taken = [name for name in OUTPUTS if (out_dir / name).exists()]
    if taken and not force:
        raise TlkitError(f"{relpath(out_dir)} already holds {', '.join(taken)}; nothing was written. Use "
                         f"{option('force', True)} to replace them, or {option('out', 'DIR')}.")


def mistakes_page(path: Path, report: dict, reliability_png: Path) -> None:
    """The most confident mistakes on the page `tlkit audit` uses (tlkit/photopage.py): thumbnails, captions;
    then the reliability diagram."""
    cards = [Card(Path(m["path"]), (f"true {m['true']}, predicted {m['predicted']}", f"confidence {m['confidence']:.3f}",
                                    Path(m["path"]).name)) for m in report["most_confident_mistakes"]]
    write_page(path, f"mistakes on {Path(report['data']).resolve().name}",
               f"accuracy {report['accuracy']:.4f} on {report['images']} images of {report['data']} with "
               f"{report['checkpoint']}; the most confident mistakes first.",
               [Section("most confident mistakes", cards),
                Section(f"reliability: expected calibration error {report['ece']:.4f}", figure=reliability_png)])


# ---------------------------------------------------------------- several labels a photo (tlkit/multilabel.py)


def label_sets(data_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """The photos of a multi-label split's folder (its labels.csv) or of a label file of several labels a photo
    ('|' between them), with their 0/1 targets [N, L] in the model's order."""
    data_dir = Path(data_dir)
    finish_pending_split(data_dir)
    source = data_dir / LABELS_FILE if data_dir.is_dir() else data_dir
    if not is_label_file(source) or not source.is_file():
        raise TlkitError(f"{relpath(data_dir)} gives no labels of a multi-label model: give DATA/validation of a split "
                         f"made with `tlkit split --multi-label` (it holds {LABELS_FILE}), or a label file whose label "
                         f"cells give the labels of a photo separated by '{SEPARATOR}'.")
    scan = list_dataset(source, SEPARATOR)
    warn_rows_left_out(scan)
    unknown = sorted(set(scan.classes) - set(classes))
    if unknown or not scan.images:
        raise TlkitError(f"{relpath(source)} gives " + (f"the label(s) {', '.join(unknown)}, which the model does not "
                         f"know (it was trained on {', '.join(classes)}); remove them" if unknown else
                         "no photo with labels; give rows of path,label") + ".")
    return ([path for path, _ in scan.images],
            np.asarray([multi_hot(tuple(scan.labels_of(label)), classes) for _, label in scan.images]))


def _label_set_numbers(checkpoint: Checkpoint, pred: Predictions, targets: np.ndarray, scored: list[int], *,
                       tta: bool, mistakes: int) -> tuple[dict, dict]:
    """A multi-label model's numbers on the scored photos at its thresholds (multilabel.metrics: mAP, micro and
    macro F1, subset accuracy, each label's precision, recall and AP), and each label's worst false positives and
    false negatives."""
    probabilities = pred.probabilities[scored]
    numbers = {"tta": tta, **metrics(targets[scored], probabilities, pred.thresholds, checkpoint.classes)}
    return numbers, {"worst_mistakes": worst_mistakes([pred.paths[i] for i in scored], targets[scored], probabilities,
                                                      pred.thresholds, checkpoint.classes, mistakes)}


def label_mistakes_page(path: Path, report: dict) -> None:
    """Each label's worst false positives (said, not held: highest probability first) and false negatives (held,
    missed: lowest first), on the page `tlkit audit` uses."""
    sections = []
    for label, worst in report["worst_mistakes"].items():
        threshold = report["per_label"][label]["threshold"]
        for kind, words in (("false_positives", "said, not held"), ("false_negatives", "held, missed")):
            cards = [Card(Path(m["path"]), (f"p({label}) {m['probability']:.3f}", f"labels: {m['true'] or 'none'}",
                                            Path(m["path"]).name)) for m in worst[kind]]
            sections.append(Section(f"{label}: {kind.replace('_', ' ')} ({words}; threshold {threshold:.2f})", cards))
    write_page(path, f"mistakes on {Path(report['data']).resolve().name}",
               f"mean average precision {report['mean_average_precision']:.4f}, subset accuracy "
               f"{report['subset_accuracy']:.4f} on {report['images']} photos of {report['data']} with "
               f"{report['checkpoint']}.", sections)
