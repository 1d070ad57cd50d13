"""`tlkit audit`: what is wrong in a dataset before it costs accuracy: likely label errors, leaks and
near-duplicates, photos of no class, photos showing several classes; found in the frozen trunk's features.

Gathers the features (a split's cache, the one `finetune --precompute-features` reads; an unsplit folder's
own cache, all its photos as one subset) and those of each photo's tiles (tlkit/tiles.py, cached beside), asks
tlkit/findings.py, and turns its flags into one reviewable row per photo and issue with a suggested action
(tlkit/audit_report.py writes them). Never moves, renames or deletes a photo.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlkit.backbone import Backbone
from tlkit.cache import WHOLE, default_cache_root, file_rows
from tlkit.config import FinetuneConfig, resolve_config
from tlkit.data import open_split
from tlkit.errors import TlkitError
from tlkit.features import FeatureSet, cache_dir_for, precompute_folders, split_cache_dir
from tlkit.findings import AUDIT_BACKBONE, DUPLICATE_SIMILARITY, Findings, find_problems
from tlkit.inputs import cached_features
from tlkit.labelfile import SEPARATOR
from tlkit.multilabel import is_multi_label_split, label_set, multi_hot
from tlkit.run_backbone import create_backbone, run_config
from tlkit.runtime import compute_for, default_workers, info, relpath
from tlkit.scan import list_dataset, photo_root, warn_rows_left_out
from tlkit.split import SUBSETS, finish_pending_split
from tlkit.tiles import cached_tile_features

ISSUES = ("label", "near-duplicate", "identical", "outlier", "several-classes")
RELABEL_ABOVE = 0.9  # out-of-fold probability of the suggested class from which a label issue is relabelled


@dataclass(frozen=True)
class Photo:
    path: Path  # relative to the audited folder
    subset: str  # training, validation, or "all" for a folder not split yet
    label: str


@dataclass(frozen=True)
class Issue:
    """One row of audit.csv: a photo, what is wrong with it, and what audit suggests doing."""

    path: Path  # relative to the audited folder
    subset: str
    label: str
    issue: str  # one of ISSUES
    score: float  # label: P(own label) out of fold; pairs: similarity; outlier: OOD score (low = unlike);
    # several-classes: the second class's strongest tile probability (findings.several_classes)
    suggested: str  # label issues: the class the other photos point to; several-classes: the classes shown, "cat|dog"
    action: str  # exclude, relabel or keep (tlkit.exclusions.ACTIONS: what --exclude acts on)
    other: Path | None = None  # the pair's other photo


@dataclass
class Audit:
    """What `tlkit audit` found in `root`: the photos (rows of the arrays), the findings, and audit.csv's rows."""

    root: Path
    classes: list[str]
    backbone: str  # whose features judged the photos
    photos: list[Photo]
    findings: Findings
    issues: list[Issue]  # audit.csv's rows (issue_rows)
    multi_label: bool = False  # a multi-label split's: a photo's label is its labels joined by '|'

    def labels_of(self, label: str) -> list[str]:
        return label.split(SEPARATOR) if self.multi_label else [label]

    def counts(self) -> dict[str, Counter]:
        """{class: Counter(issue -> photos)} of the issues found."""
        counts = {label: Counter() for label in self.classes}
        for issue in self.issues:
            for label in self.labels_of(issue.label):  # a multi-label photo's issue counts for each of its labels
                counts[label][issue.issue] += 1
        return counts

    def photo_counts(self) -> Counter:
        """{class: photos}; a multi-label photo counts for each of its labels."""
        return Counter(label for photo in self.photos for label in self.labels_of(photo.label))

    def of(self, kind: str) -> list[Issue]:
        return [issue for issue in self.issues if issue.issue == kind]

    def ranked(self, kind: str, limit: int) -> list[int]:
        """The rows most likely to have a label issue ("label") or to be outliers ("outlier"), flagged or not."""
        scores = self.findings.label_quality if kind == "label" else self.findings.outlier_score
        return np.argsort(scores, kind="stable")[:limit].tolist()


def audit_folder(data: Path, settings: dict, *, config_file: Path | None = None,
                 similarity: float = DUPLICATE_SIMILARITY) -> Audit:
    """Audit a split folder (training/ + validation/) or a flat or class-foldered folder not split yet.
    settings: the run's backbone settings (FinetuneConfig fields: backbone, weights, img_size, device, ...),
    over config_file's; without a file the backbone is AUDIT_BACKBONE unless settings name one."""
    data = Path(data)
    finish_pending_split(data)
    defaults = {} if config_file else {"backbone": AUDIT_BACKBONE}
    config = run_config(resolve_config(config_file, {**defaults, **settings, "data": str(data), "precompute_views": 0}))
    photos, classes, features, backbone = gather_features(data, config)
    multi_label = is_multi_label_split(data)
    labels = photo_labels(photos, classes, multi_label=multi_label)
    root = photo_root(data)  # a label file's paths are relative to its folder
    tiles = None if multi_label else photo_tiles(data, photos, features, backbone, config)
    info(f"audit: judging {len(photos)} photos' labels ({len(classes)} classes), near-duplicates, outliers"
         + ("" if multi_label else " and photos of several classes"))
    findings = find_problems(features, labels, file_digests(root, photos), tiles=tiles, similarity=similarity,
                             seed=config.seed)
    return Audit(root=root, classes=classes, backbone=config.backbone, photos=photos, findings=findings,
                 issues=issue_rows(photos, classes, findings, multi_label=multi_label), multi_label=multi_label)


def photo_labels(photos: list[Photo], classes: list[str], *, multi_label: bool) -> np.ndarray:
    """The photos' class indices [N], or a multi-label split's 0/1 rows [N, L] (a photo's labels joined by '|')."""
    if multi_label:
        return np.array([multi_hot(tuple(photo.label.split(SEPARATOR)), classes) for photo in photos])
    return np.array([classes.index(photo.label) for photo in photos], dtype=np.int64)


def is_split(data: Path) -> bool:
    return all((Path(data) / subset).is_dir() for subset in SUBSETS)


def gather_features(data: Path, config: FinetuneConfig) -> tuple[list[Photo], list[str], np.ndarray, Backbone]:
    """(photos, classes, features [N, D], the backbone) of every photo that decoded, the trunk's as config sets
    it up: from the cache, or computed into it."""
    compute = compute_for(config.device, config.precision)
    if is_split(data):
        split = open_split(data)
        classes = split.classes
        backbone = create_backbone(config, classes)
        sets = cached_features(config, backbone, compute, split)
    else:
        classes, folders, files = _unsplit_files(data)
        backbone = create_backbone(config, classes)
        sets = precompute_folders(backbone, folders, files, classes, features_cache_dir(data, config, backbone.name),
                                  compute=compute, workers=default_workers(config.workers), views=0,
                                  dtype=config.cache_dtype)
    features = np.concatenate([np.asarray(s.features) for s in sets.values()])
    return _photos(sets, classes), classes, features, backbone


def features_cache_dir(data: Path, config: FinetuneConfig, backbone_name: str) -> Path:
    """The whole photos' feature cache an audit reads: a split's own (finetune's), or one beside a folder or label
    file not split yet, named after it."""
    if is_split(data):
        return split_cache_dir(data, config.cache_dir, backbone_name)
    cache_root = Path(config.cache_dir) if config.cache_dir else default_cache_root(data.resolve().parent)
    return cache_dir_for(cache_root, f"{data.resolve().name}-{backbone_name}")


def photo_tiles(data: Path, photos: list[Photo], features: np.ndarray, backbone: Backbone,
                config: FinetuneConfig) -> np.ndarray:
    """[N, P, 2, D] features of each photo's pairs of halves (tlkit/tiles.py), cached beside the whole photos'
    (features_cache_dir, -halves). A photo that decoded for the cache but no longer does has its whole-photo
    features as every half: halves that agree, so it is not judged on them."""
    whole_cache = features_cache_dir(data, config, backbone.name)
    root = photo_root(data)
    rows = file_rows(root, [(photo.path.as_posix(), 0) for photo in photos])  # 0: the halves hold no label
    tiles, failed = cached_tile_features(backbone, root, rows, whole_cache.with_name(f"{whole_cache.name}-halves"),
                                         compute=compute_for(config.device, config.precision),
                                         workers=default_workers(config.workers), dtype=config.cache_dtype)
    for row in failed:
        tiles[row] = features[row]
    return tiles


def _unsplit_files(data: Path) -> tuple[list[str], dict[str, Path], dict[str, list]]:
    """A flat or class-foldered folder, or a label file, as one subset: (classes, {all: folder}, {all: file rows})."""
    scan = list_dataset(data)
    warn_rows_left_out(scan)
    classes = scan.classes
    if len(classes) < 2:
        raise TlkitError(f"{relpath(data)} holds {len(classes)} class(es) of labelled photos; an audit judges labels "
                         "against at least two. Name photos <class>.<n>.jpg, or put them in <class>/ folders.")
    listed = [(path.relative_to(scan.root).as_posix(), classes.index(label)) for path, label in scan.images]
    return classes, {WHOLE: scan.root}, {WHOLE: file_rows(scan.root, listed)}


def _photos(sets: dict[str, FeatureSet], classes: list[str]) -> list[Photo]:
    """The photos in the features' row order; a split's paths start with their subset folder; a multi-label
    split's labels joined by '|'."""
    return [Photo(Path(name) if subset == WHOLE else Path(subset) / name, subset,
                  SEPARATOR.join(label_set(label, [0.5] * len(classes), classes)) if label.ndim else classes[label])
            for subset, feature_set in sets.items() for name, label in zip(feature_set.files, feature_set.labels)]


def file_digests(data: Path, photos: list[Photo]) -> list[str]:
    """SHA-1 of each photo's bytes: identical files are found even where decoding would tell them apart."""
    return [hashlib.sha1((data / photo.path).read_bytes()).hexdigest() for photo in photos]


def issue_rows(photos: list[Photo], classes: list[str], findings: Findings, *,
               multi_label: bool = False) -> list[Issue]:
    """audit.csv's rows: label issues, then near-duplicate and identical pairs, then outliers, then photos of several
    classes; each worst first."""
    labels = _label_set_rows(photos, classes, findings) if multi_label else _label_rows(photos, classes, findings)
    return [*labels, *_pair_rows(photos, findings), *_outlier_rows(photos, findings),
            *_several_rows(photos, classes, findings)]


def _label_set_rows(photos: list[Photo], classes: list[str], findings: Findings) -> list[Issue]:
    """A flagged label set (several labels a photo) with the set the other photos point to (each label's out-of-fold
    probability at 0.5); kept, as --exclude relabels one class a photo: the label file's row is the user's to edit."""
    return [Issue(photos[row].path, photos[row].subset, photos[row].label, "label", float(findings.label_quality[row]),
                  SEPARATOR.join(label_set(findings.probabilities[row], [0.5] * len(classes), classes)), "keep")
            for row in np.argsort(findings.label_quality, kind="stable") if findings.label_issue[row]]


def _label_rows(photos: list[Photo], classes: list[str], findings: Findings) -> list[Issue]:
    """A flagged label is relabelled where the other photos agree on another class (RELABEL_ABOVE) and the photo
    is no outlier nor of several classes, else excluded (the photo may hold both classes, or neither)."""
    rows = []
    for row in np.argsort(findings.label_quality, kind="stable"):
        if not findings.label_issue[row]:
            continue
        photo, suggested = photos[row], int(findings.suggested[row])
        sure = (findings.probabilities[row, suggested] >= RELABEL_ABOVE and classes[suggested] != photo.label
                and not findings.outlier[row]  # a photo of no class is no photo of the other class either
                and not findings.several[row])  # nor is a cat beside a dog a photo of a dog
        rows.append(Issue(photo.path, photo.subset, photo.label, "label", float(findings.label_quality[row]),
                          classes[suggested], "relabel" if sure else "exclude"))
    return rows


def _pair_rows(photos: list[Photo], findings: Findings) -> list[Issue]:
    """One row per pair (those across subsets first), for the photo to act on: across training and validation
    the training copy is excluded (validation stays as it was); identical files in one subset, the later copy;
    near-duplicates in one subset are kept (the same scene twice is no error, but worth a look)."""
    rows = []
    for pair in sorted(findings.pairs, key=lambda pair: photos[pair.first].subset == photos[pair.second].subset):
        first, second = photos[pair.first], photos[pair.second]
        crosses = first.subset != second.subset
        acted, other = (first, second) if crosses and first.subset == "training" else (second, first)
        action = "exclude" if crosses or pair.identical else "keep"
        rows.append(Issue(acted.path, acted.subset, acted.label, "identical" if pair.identical else "near-duplicate",
                          pair.similarity, "", action, other.path))
    return rows


def _outlier_rows(photos: list[Photo], findings: Findings) -> list[Issue]:
    order = np.argsort(findings.outlier_score, kind="stable")
    return [Issue(photos[row].path, photos[row].subset, photos[row].label, "outlier",
                  float(findings.outlier_score[row]), "", "exclude") for row in order if findings.outlier[row]]


def _several_rows(photos: list[Photo], classes: list[str], findings: Findings) -> list[Issue]:
    """Photos whose tiles show different classes, surest first: excluded, as no one class is the photo's."""
    order = np.argsort(-findings.several_score, kind="stable")
    return [Issue(photos[row].path, photos[row].subset, photos[row].label, "several-classes",
                  float(findings.several_score[row]), _shown(classes, findings.shown[row]), "exclude")
            for row in order if findings.several[row]]


def _shown(classes: list[str], shown: np.ndarray) -> str:
    return SEPARATOR.join(label for label, is_shown in zip(classes, shown) if is_shown)
