"""Several labels a photo on the shared photos (issue 33): cats, dogs and composites (a cat photo and a dog photo
side by side, labelled cat|dog), split with `--multi-label`.

compare: tlkit's head on the cached efficientnet_lite0 features (`--freeze trunk --precompute-features`, the
recipe's defaults otherwise; `--recipe default`: plain finetune, the head on the cache, then every layer;
`--singles` and `--composites` set the size) against a one-vs-rest logistic regression on the very same features
(standardised, C in 0.01 / 0.1 / 1 chosen by validation mAP: the reference's best case, and chosen by 5-fold
cross-validation on the training photos: as a practitioner would, without the photos it is scored on); both with
thresholds chosen on validation, and both at 0.5. audit: 4 cats and 4 dogs given the other label and 4
composites given one label, in 150 photos; how many the multi-label audit flags.

    python scripts/bench_multilabel.py compare|audit [--seed N] [--keep DIR] [--recipe head|default]
                                      [--singles N] [--composites N]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlkit import api
from tlkit.multilabel import choose_thresholds, metrics, sigmoid

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats-2k" / "train"
KEYS = ("mean_average_precision", "subset_accuracy", "micro_f1", "macro_f1")


def composite(n: int, side: int) -> Image.Image:
    """cat.{500+n} and dog.{500+n}, each resized to side x side, side by side."""
    both = Image.new("RGB", (2 * side, side))
    for k, label in enumerate(("cat", "dog")):
        both.paste(Image.open(PHOTOS / f"{label}.{500 + n}.jpg").convert("RGB").resize((side, side)), (side * k, 0))
    return both


def labelled(root: Path, singles: int, composites: int, wrong: int = 0, side: int = 224) -> tuple[Path, set[str]]:
    """root/labels.csv over the photos; `wrong` of each kind given a wrong label set. Returns (file, wrong names)."""
    (root / "p").mkdir(parents=True)
    rows, planted = [], set()
    for label in ("cat", "dog"):
        for n in range(singles):
            Image.open(PHOTOS / f"{label}.{n}.jpg").convert("RGB").save(root / "p" / f"{label}.{n}.jpg", quality=90)
            given = ("dog" if label == "cat" else "cat") if n < wrong else label
            rows.append((f"p/{label}.{n}.jpg", given))
            planted |= {f"{label}.{n}.jpg"} if n < wrong else set()
    for n in range(composites):
        composite(n, side).save(root / "p" / f"both.{n}.jpg", quality=90)
        rows.append((f"p/both.{n}.jpg", ("cat" if n % 2 else "dog") if n < wrong else "cat|dog"))
        planted |= {f"both.{n}.jpg"} if n < wrong else set()
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return root / "labels.csv", planted


def reference(sets: dict) -> tuple[float, dict, dict]:
    """(C, metrics at validation thresholds, metrics at 0.5) of the best one-vs-rest logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, val = sets["training"], sets["validation"]
    best = None
    for c in (0.01, 0.1, 1.0):
        head = OneVsRestClassifier(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)))
        head.fit(np.asarray(train.features, dtype=np.float32), train.labels.astype(int))
        probabilities = head.predict_proba(np.asarray(val.features, dtype=np.float32)).astype(np.float32)
        chosen = metrics(val.labels, probabilities, choose_thresholds(val.labels, probabilities), ["cat", "dog"])
        if best is None or chosen["mean_average_precision"] > best[1]["mean_average_precision"]:
            best = (c, chosen, metrics(val.labels, probabilities, [0.5, 0.5], ["cat", "dog"]))
    return best


def reference_by_cross_validation(sets: dict, seed: int) -> tuple[float, dict]:
    """(C, metrics at validation thresholds) of the one-vs-rest logistic regression whose C a 5-fold
    cross-validation on the training photos chose (mean average precision): as a practitioner would choose it, and
    as tlkit's head settings were chosen, without the photos it is scored on."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, val = sets["training"], sets["validation"]
    search = GridSearchCV(OneVsRestClassifier(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))),
                          {"estimator__logisticregression__C": [0.01, 0.1, 1.0]}, scoring="average_precision",
                          cv=KFold(5, shuffle=True, random_state=seed))
    search.fit(np.asarray(train.features, dtype=np.float32), train.labels.astype(int))
    probabilities = search.predict_proba(np.asarray(val.features, dtype=np.float32)).astype(np.float32)
    chosen = metrics(val.labels, probabilities, choose_thresholds(val.labels, probabilities), ["cat", "dog"])
    return search.best_params_["estimator__logisticregression__C"], chosen


def at_half(run, val) -> dict:
    """The run's head on the cached validation features in the run's arithmetic, every label decided at 0.5 (as the
    reference's column)."""
    with torch.no_grad(), run.compute.autocast():
        logits = run.backbone.head.eval()(torch.as_tensor(np.asarray(val.features, dtype=np.float32)))
    scores = metrics(val.labels, sigmoid(logits.float().numpy()), [0.5, 0.5], ["cat", "dog"])
    return {key: scores[key] for key in KEYS[1:]}


def compare(root: Path, seed: int, recipe: str, singles: int, composites: int) -> dict:
    source, _ = labelled(root, singles=singles, composites=composites)
    api.split(source, val=0.3, out=root / "data", multi_label=True, seed=seed, quiet=True)
    settings = dict(backbone="efficientnet_lite0", device="cpu", cache_dir=str(root / "cache"), seed=seed)
    started = time.time()
    trains = dict(freeze="trunk", precompute_features=True) if recipe == "head" else {}
    run = api.finetune(root / "data", runs_dir=str(root / "runs"), name="ml", quiet=True, **trains, **settings)
    seconds = time.time() - started
    sets = api.precompute(root / "data", quiet=True, **settings).sets
    c, chosen, half = reference(sets)
    cv_c, by_cv = reference_by_cross_validation(sets, seed)
    return {"seed": seed, "recipe": recipe, "validation photos": chosen["images"],
            "tlkit seconds (features included)": round(seconds),
            "tlkit best epoch": f"{run.best_epoch} of {len(run.history)} (by "
                                f"{json.loads((run.path / 'best.json').read_text())['monitor']})",
            "tlkit": {key: round(run.report[key], 4) for key in KEYS},
            "tlkit at 0.5": {key: round(value, 4) for key, value in at_half(run, sets["validation"]).items()},
            "reference C": c,
            "reference": {key: round(chosen[key], 4) for key in KEYS},
            "reference at 0.5": {key: round(half[key], 4) for key in KEYS[1:]},
            "reference C by cross-validation": cv_c,
            "reference, C by cross-validation": {key: round(by_cv[key], 4) for key in KEYS}}


def audit(root: Path, seed: int) -> dict:
    source, planted = labelled(root, singles=60, composites=30, wrong=4, side=160)
    api.split(source, val=0.2, out=root / "data", multi_label=True, seed=seed, quiet=True)
    started = time.time()
    found = api.audit(root / "data", out=root / "audit", device="cpu", quiet=True)
    flagged = {row.path.name for row in found.of("label")}
    return {"photos": len(found.photos), "planted": len(planted), "flagged": len(flagged),
            "planted flagged": len(flagged & planted), "others flagged": sorted(flagged - planted),
            "seconds": round(time.time() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("compare", "audit"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", choices=("head", "default"), default="head",
                        help="compare: the head alone on the cache (--freeze trunk --precompute-features), or the "
                             "default recipe (the head on the cache, then every layer)")
    parser.add_argument("--singles", type=int, default=150,
                        help="compare: photos of each class with one label (at most 500: cat.0-499, dog.0-499)")
    parser.add_argument("--composites", type=int, default=100,
                        help="compare: cat|dog composites (at most 501: of cat.500+n and dog.500+n)")
    parser.add_argument("--keep", type=Path, help="work here (kept) instead of a temporary folder")
    args = parser.parse_args()
    if not (1 <= args.singles <= 500 and 1 <= args.composites <= 501):
        parser.error("--singles takes 1-500 and --composites 1-501: the composites use cat.500+ and dog.500+")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-multilabel-"))
    try:
        print(json.dumps(compare(root, args.seed, args.recipe, args.singles, args.composites)
                         if args.what == "compare" else audit(root, args.seed)))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
