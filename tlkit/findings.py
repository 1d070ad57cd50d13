"""What is wrong in a dataset, told from its photos' features: labels that the other photos contradict,
near-identical photos (above all across training and validation), photos unlike every class, and photos
whose parts (tiles) show different classes.

Works on arrays (features, labels, file digests) and returns per-row scores and flags; reads no photo,
writes nothing, prints nothing (tlkit/auditing.py does). scikit-learn gives the out-of-fold heads and
the neighbour search; cleanlab turns the scores into issues with its published rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlkit.errors import TlkitError

AUDIT_BACKBONE = "efficientnet_lite0"  # whose features judge, unless told: its ImageNet weights install with tlkit
FOLDS = 5  # out-of-fold heads: each photo is judged by a head that never saw it
# Cosine similarity of two photos' features from which they are near-duplicates (docs/benchmarks.md, "Audit").
DUPLICATE_SIMILARITY = 0.90
SEARCH_MEMORY_MB = 64  # what one block of the neighbour search's distances may take (sklearn working_memory)
# cleanlab Datalab's default for outliers on features: an average distance to the k nearest neighbours above
# Q3 + (1 / 0.37037 - 1) x IQR of all of them (cleanlab.datalab ... OutlierIssueManager.DEFAULT_THRESHOLDS).
OUTLIER_IQR_SCALE = 1 / 0.37037 - 1
# Out-of-fold probability of a class from which a photo's half shows it, and the cosine similarity of two halves'
# features below which they are two scenes: a photo whose two halves so show two classes holds several. A head
# fitted on whole photos reads a dog's hindquarters as a cat, but the halves of one photo share its scene and stay
# alike. A looser probability with a stricter similarity finds more and flags fewer (docs/benchmarks.md, "Several
# classes in one photo": tuned on the planted composites of seeds 1, 6, 7, 8; reported on seeds 2-5 and 9-14).
SEVERAL_ABOVE = 0.8
SEVERAL_SIMILARITY_BELOW = 0.425


@dataclass(frozen=True)
class DuplicatePair:
    """Two photos (rows) whose features are nearly the same; identical: the same bytes."""

    first: int
    second: int
    similarity: float
    identical: bool


@dataclass
class Findings:
    """Per row (photo): the out-of-fold verdict on its label, how unlike the rest it is; and the pairs."""

    probabilities: np.ndarray  # [N, C] out of fold: from a head trained on the other folds
    label_quality: np.ndarray  # [N] the probability of the photo's own label (cleanlab's self_confidence)
    label_issue: np.ndarray  # [N] bool: confident learning counts the label as wrong
    outlier_score: np.ndarray  # [N] in (0, 1], low = far from every other photo (cleanlab's OutOfDistribution)
    outlier: np.ndarray  # [N] bool: Datalab's rule on the same distances
    pairs: list[DuplicatePair]  # most similar first
    groups: np.ndarray  # [N] a group number shared by photos joined by pairs, -1 for a photo in none
    tile_probabilities: np.ndarray  # [N, P, 2, C] out of fold (the photo's fold's head), of each half of P pairs
    half_similarity: np.ndarray  # [N, P] cosine similarity of the two halves' features of each pair
    shown: np.ndarray  # [N, C] bool: the halves of a pair are unlike, disagree, each sure, and one says it
    several_score: np.ndarray  # [N] the best pair's less sure half's P when the halves disagree, else 0

    @property
    def suggested(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def several(self) -> np.ndarray:
        """[N] bool: two halves of the photo show different classes."""
        return self.shown.sum(axis=1) >= 2

def find_problems(features: np.ndarray, labels: np.ndarray, digests: list[str], *, tiles: np.ndarray | None = None,
                  seed: int = 0, similarity: float = DUPLICATE_SIMILARITY) -> Findings:
    """Everything audit reports, from features [N, D] (any scale), labels [N] (or a multi-label split's 0/1 rows
    [N, L]: judge_label_sets), the files' digests and the features of each photo's pairs of halves [N, P, 2, D]
    (None: each photo is both its halves, and none shows two classes; a multi-label split's photos are not judged
    on their halves: their labels say which classes they show)."""
    unit = unit_rows(features)
    if labels.ndim == 2:
        probabilities = out_of_fold_label_probabilities(unit, labels, seed=seed)
        quality, issue = judge_label_sets(labels, probabilities)
        tile_probabilities = np.zeros((len(labels), 0, 2, labels.shape[1]))
        similarity_of_halves = np.zeros((len(labels), 0))
        shown, several_score = np.zeros(labels.shape, dtype=bool), np.zeros(len(labels))
    else:
        heads = fold_heads(unit, labels, seed=seed)
        probabilities = out_of_fold_probabilities(unit, heads)
        tiles = unit[:, None, None].repeat(2, axis=2) if tiles is None else tiles
        tile_probabilities, similarity_of_halves = out_of_fold_tiles(tiles, heads), half_similarity(tiles)
        shown, several_score = several_classes(tile_probabilities, similarity_of_halves)
        quality, issue = judge_labels(labels, probabilities)
    outlier_score, outlier = outliers(unit)
    pairs = near_duplicates(unit, digests, similarity=similarity)
    return Findings(probabilities=probabilities, label_quality=quality, label_issue=issue, outlier_score=outlier_score,
                    outlier=outlier, pairs=pairs, groups=duplicate_groups(pairs, len(labels)),
                    tile_probabilities=tile_probabilities, half_similarity=similarity_of_halves, shown=shown,
                    several_score=several_score)


def unit_rows(features: np.ndarray) -> np.ndarray:
    """float32 rows of length 1: cosine similarity is then a dot product, and distances comparable."""
    rows = np.asarray(features, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def out_of_fold_probabilities(features: np.ndarray, heads: list[tuple[np.ndarray, object]]) -> np.ndarray:
    """[N, C] class probabilities of each photo from a logistic-regression head trained on the other folds
    (heads: fold_heads of these features)."""
    probabilities = np.zeros((len(features), len(heads[0][1].classes_)))
    for held_out, head in heads:
        probabilities[held_out] = head.predict_proba(features[held_out])
    return probabilities


def fold_heads(features: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> list[tuple[np.ndarray, object]]:
    """(the rows of a fold, the head fitted on every other fold) for each of min(FOLDS, smallest class) folds."""
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    if smallest < 2:
        raise TlkitError("a class holds fewer than 2 photos, too few to judge its labels out of fold; add photos "
                         "of that class or remove it.")
    folds = min(FOLDS, smallest)
    # C=0.1: a stronger L2 than scikit-learn's default; a trunk's 1,280 features separate a few thousand photos,
    # and an unregularised head's probabilities saturate at 0 and 1, where a ranking can no longer tell them apart.
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels)
    return [(held_out, clone(head).fit(features[kept], labels[kept])) for kept, held_out in splits]


def out_of_fold_tiles(tiles: np.ndarray, heads: list[tuple[np.ndarray, object]]) -> np.ndarray:
    """[N, ..., C] class probabilities of each photo's tiles (features [N, ..., D], any scale), each by the head
    that never saw the photo: its fold's."""
    probabilities = np.zeros((*tiles.shape[:-1], len(heads[0][1].classes_)))
    for held_out, head in heads:
        flat = unit_rows(tiles[held_out].reshape(-1, tiles.shape[-1]))
        probabilities[held_out] = head.predict_proba(flat).reshape(probabilities[held_out].shape)
    return probabilities


def half_similarity(tiles: np.ndarray) -> np.ndarray:
    """[N, P] cosine similarity of the two halves of each pair, from their features [N, P, 2, D] (any scale)."""
    unit = unit_rows(tiles.reshape(-1, tiles.shape[-1])).reshape(tiles.shape)
    return (unit[..., 0, :] * unit[..., 1, :]).sum(axis=-1)


def several_classes(half_probabilities: np.ndarray, similarity: np.ndarray, above: float = SEVERAL_ABOVE,
                    below: float = SEVERAL_SIMILARITY_BELOW) -> tuple[np.ndarray, np.ndarray]:
    """(shown [N, C], score [N]) from [N, P, 2, C] class probabilities of the two halves of P pairs of each photo
    and their similarity [N, P] (half_similarity): a pair whose halves are unlike (similarity below `below`) and
    name different classes scores its less sure half's probability, and at `above` or more both classes are shown;
    a photo scores its best pair's. Halves that share no pixel: two parts of one animal seldom both look surely like
    different classes (docs/benchmarks.md, "Several classes in one photo", against any two tiles)."""
    said, sure = half_probabilities.argmax(axis=-1), half_probabilities.max(axis=-1)  # [N, P, 2]
    pair_score = np.where((said[..., 0] != said[..., 1]) & (similarity < below), sure.min(axis=-1), 0.0)  # [N, P]
    apart = pair_score >= above
    one_hot = np.eye(half_probabilities.shape[-1], dtype=bool)[said]  # [N, P, 2, C]
    return (one_hot & apart[..., None, None]).any(axis=(1, 2)), pair_score.max(axis=1)


def judge_labels(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label quality, is a label issue) by cleanlab: self-confidence, and confident learning's count of
    errors per class (filter_by="prune_by_noise_rate", its default)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    return quality, find_label_issues(labels, probabilities, n_jobs=1)  # 1: no pool of processes for a few classes


def out_of_fold_label_probabilities(features: np.ndarray, targets: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """[N, L] each label's probability for each photo (several labels a photo), from one logistic-regression head
    per label (one-vs-rest, as out_of_fold_probabilities' head) trained on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    held = targets.sum(axis=0)
    if held.min() < 2 or (len(targets) - held).min() < 2:
        raise TlkitError("a label is held by fewer than 2 photos (or missing from fewer than 2), too few to judge it "
                         "out of fold; add photos with and without each label.")
    head = OneVsRestClassifier(make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)))
    return cross_val_predict(head, features, targets.astype(np.int64), method="predict_proba",
                             cv=KFold(min(FOLDS, len(targets)), shuffle=True, random_state=seed))


def judge_label_sets(targets: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label quality, is a label issue) of several labels a photo, by cleanlab.multilabel_classification: each
    label's self-confidence aggregated over the labels, and confident learning per label."""
    from cleanlab.multilabel_classification.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    given = [np.flatnonzero(row).tolist() for row in targets]
    return get_label_quality_scores(given, probabilities), find_label_issues(given, probabilities, n_jobs=1)


def outliers(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, is an outlier): cleanlab's OutOfDistribution score from the average cosine distance to the
    k=10 nearest photos, and Datalab's rule for which of them are outliers, applied to those distances."""
    from cleanlab.outlier import OutOfDistribution

    scores = OutOfDistribution().fit_score(features=features, verbose=False)
    # The score is exp(-distance / median distance): its -log is the distance on a scale that the
    # quartile rule does not depend on.
    distance = -np.log(np.clip(scores, 1e-30, 1.0))
    q1, q3 = np.percentile(distance, [25, 75])
    return scores, distance > q3 + OUTLIER_IQR_SCALE * (q3 - q1)


def near_duplicates(features: np.ndarray, digests: list[str], *, similarity: float = DUPLICATE_SIMILARITY,
                    memory_mb: int = SEARCH_MEMORY_MB) -> list[DuplicatePair]:
    """Every pair of unit rows at cosine similarity >= `similarity`, and every pair of identical files.

    scikit-learn's radius search on unit vectors (euclidean distance^2 = 2 - 2 cos): it computes the
    distances a block of rows at a time (working_memory), so memory grows with n, never n x n."""
    from sklearn import config_context
    from sklearn.neighbors import NearestNeighbors

    radius = float(np.sqrt(max(0.0, 2 - 2 * similarity)))
    with config_context(working_memory=memory_mb):
        search = NearestNeighbors(radius=radius, algorithm="brute").fit(features)
        distances, neighbours = search.radius_neighbors(features, sort_results=True)
    found = {}
    for row, (row_distances, row_neighbours) in enumerate(zip(distances, neighbours)):
        for distance, other in zip(row_distances, row_neighbours):
            if other > row:
                found[row, int(other)] = 1 - float(distance) ** 2 / 2
    for first, second in _identical_files(digests):
        found[first, second] = 1.0
    pairs = [DuplicatePair(first, second, min(1.0, value), digests[first] == digests[second] != "")
             for (first, second), value in found.items()]
    return sorted(pairs, key=lambda pair: (-pair.similarity, pair.first, pair.second))


def _identical_files(digests: list[str]) -> list[tuple[int, int]]:
    """(earlier, later) rows of files with the same bytes (found even when decoding made their features differ)."""
    first_with: dict[str, int] = {}
    pairs = []
    for row, digest in enumerate(digests):
        if digest and digest in first_with:
            pairs.append((first_with[digest], row))
        first_with.setdefault(digest, row)
    return pairs


def duplicate_groups(pairs: list[DuplicatePair], rows: int) -> np.ndarray:
    """[rows] a number per group of photos that pairs join (connected components), -1 for a photo in none."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not pairs:
        return np.full(rows, -1)
    first, second = np.array([[pair.first, pair.second] for pair in pairs]).T
    graph = coo_matrix((np.ones(len(pairs)), (first, second)), shape=(rows, rows))
    _, component = connected_components(graph, directed=False)
    in_pair = np.zeros(rows, bool)
    in_pair[first] = in_pair[second] = True
    return np.where(in_pair, component, -1)
