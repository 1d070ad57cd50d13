"""Several labels a photo, end to end on the shared Kaggle photos: a label file of cats, dogs and composites (a cat
and a dog side by side, labelled cat|dog) split with --multi-label, a head trained on cached features, the thresholds
in best.json and export's sidecar, evaluate's metrics and page, predict's label sets; and the refusals around it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_flat, shared_data
from tlkit import api, cli
from tlkit.config import CACHED_HEAD_LR, MULTI_LABEL_HEAD_LR
from tlkit.errors import TlkitError
from tlkit.multilabel import calibrate_labels, choose_thresholds, metrics, positive_weights, sigmoid, validation_choice

SIDE = 48  # px of each photo written: small, so the trunk runs fast on a CPU


def labelled_photos(root: Path, singles: int = 10, composites: int = 8) -> Path:
    """root/labels.csv over cat and dog photos of the shared set (shrunk) and composites of one of each."""
    photos = shared_data("dogs-vs-cats-2k") / "train"
    (root / "photos").mkdir(parents=True)
    rows = []
    for label in ("cat", "dog"):
        for n in range(singles):
            photo = Image.open(photos / f"{label}.{n}.jpg").convert("RGB").resize((SIDE, SIDE))
            photo.save(root / "photos" / f"{label}.{n}.jpg")
            rows.append((f"photos/{label}.{n}.jpg", label))
    for n in range(composites):
        cat, dog = (Image.open(photos / f"{label}.{100 + n}.jpg").convert("RGB").resize((SIDE, SIDE))
                    for label in ("cat", "dog"))
        both = Image.new("RGB", (2 * SIDE, SIDE))
        both.paste(cat, (0, 0))
        both.paste(dog, (SIDE, 0))
        both.save(root / "photos" / f"both.{n}.jpg")
        rows.append((f"photos/both.{n}.jpg", "cat|dog"))
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    return root / "labels.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A multi-label split of the photos and a run trained on it (the head on cached features)."""
    root = tmp_path_factory.mktemp("multilabel")
    split = api.split(labelled_photos(root), val=0.3, out=root / "data", multi_label=True, quiet=True)
    run = api.finetune(root / "data", backbone="timm:test_resnet", weights="none", img_size=32, epochs=3,
                       precompute_features=True, batch_size=8, runs_dir=str(root / "runs"), name="ml", device="cpu",
                       precision="fp32", workers=0, cache_dir=str(root / "cache"), quiet=True)
    return root, split, run


def test_the_split_writes_photos_and_a_label_file_per_subset(trained):
    root, split, _ = trained
    validation = list(csv.DictReader(open(root / "data" / "validation" / "labels.csv")))
    training = list(csv.DictReader(open(root / "data" / "training" / "labels.csv")))
    assert len(validation) + len(training) == 28 and {"cat|dog", "cat", "dog"} == {row["label"] for row in validation}
    assert all((root / "data" / "validation" / row["path"]).is_file() for row in validation)
    # a composite counts for both labels; stratified on each photo's rarest label, the composites reach validation
    assert sum(row["label"] == "cat|dog" for row in validation) in (2, 3)
    assert split.counts["validation"]["cat"] == sum("cat" in row["label"] for row in validation)


def test_the_run_is_multi_label_with_thresholds_and_metrics(trained):
    root, _, run = trained
    best = json.loads((run.path / "best.json").read_text())
    assert best["task"] == "multi-label" and len(best["thresholds"]) == 2
    assert all(0 <= value <= 1 for value in best["thresholds"])
    report = json.loads((run.path / "report.json").read_text())
    assert report["task"] == "multi-label" and set(report["per_label"]) == {"cat", "dog"}
    for key in ("mean_average_precision", "micro_f1", "macro_f1", "subset_accuracy"):
        assert 0 <= report[key] <= 1
    assert [report["per_label"][name]["threshold"] for name in ("cat", "dog")] == best["thresholds"]
    assert "val_map" in json.loads((run.path / "metrics.jsonl").read_text().splitlines()[0])
    assert not (run.path / "confusion.png").exists()
    # by default the best epoch is the one of the highest validation mAP (the first of equals), not the lowest loss
    assert best["monitor"] == "val_map" and run.best_epoch == max(run.history, key=lambda row: row["val_map"])["epoch"]


def test_predict_writes_each_photos_label_set_and_every_probability(trained, capsys):
    root, _, run = trained
    out = root / "predictions.csv"
    assert cli.main(["predict", str(root / "photos"), "--checkpoint", str(run.path), "--device", "cpu", "--out",
                     str(out), "--threshold", "0.01"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 28 and {"labels", "familiar", "novelty", "p_cat", "p_dog"} <= set(rows[0])
    assert all(row["labels"] == "cat|dog" for row in rows)  # every probability of a sigmoid is above 0.01
    assert {row["familiar"] for row in rows} <= {"true", "false"} and all(float(row["novelty"]) >= 0 for row in rows)
    assert cli.main(["predict", str(root / "photos" / "both.0.jpg"), "--checkpoint", str(run.path), "--device", "cpu",
                     "--out", str(root / "p.json"), "--format", "json", "--threshold", "0.999999"]) == 0
    record, = json.loads((root / "p.json").read_text())
    assert record["labels"] == [] and set(record["probabilities"]) == {"cat", "dog"}  # none reaches 0.999999
    assert isinstance(record["familiar"], bool) and record["novelty"] >= 0
    classifier = api.load(run.path, device="cpu")
    rows = classifier.predict(root / "photos" / "both.0.jpg", quiet=True)
    thresholds = json.loads((run.path / "best.json").read_text())["thresholds"]
    said = tuple(name for name, t in zip(("cat", "dog"), thresholds) if rows[0].probabilities[name] >= t)
    assert rows[0].labels == said and rows[0].label == "|".join(said) and rows[0].confidence is None
    assert cli.main(["predict", str(root / "photos"), "--checkpoint", str(run.path), "--device", "cpu", "--out",
                     str(root / "k.csv"), "--format", "kaggle"]) == 1
    assert "--format kaggle ranks one class a photo" in capsys.readouterr().err


def test_evaluate_reports_the_labels_and_pages_their_worst_mistakes(trained):
    root, _, run = trained
    report = api.load(run.path, device="cpu").evaluate(root / "data" / "validation", out=root / "eval", quiet=True)
    assert report["task"] == "multi-label" and set(report["worst_mistakes"]) == {"cat", "dog"}
    validation = list(csv.DictReader(open(root / "data" / "validation" / "labels.csv")))
    assert report["per_label"]["cat"]["support"] == sum("cat" in row["label"] for row in validation)
    page = (root / "eval" / "mistakes.html").read_text()
    assert "cat: false positives" in page and "dog: false negatives" in page


def test_export_sidecar_holds_the_task_and_thresholds(trained):
    root, _, run = trained
    path = api.load(run.path, device="cpu").export("onnx", root / "model.onnx", quiet=True)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    best = json.loads((run.path / "best.json").read_text())
    assert sidecar["task"] == "multi-label" and list(sidecar["thresholds"].values()) == best["thresholds"]
    assert "sigmoid" in sidecar["output"]


def test_a_multi_label_run_gets_the_multi_label_head_defaults_and_a_single_label_one_does_not(trained, tmp_path):
    # Both start from the fixture's weights (a file: a pretrained trunk, whose cached head has the recipe's defaults).
    root, _, run = trained
    api.split(labelled_photos(tmp_path, composites=0), val=0.3, out=tmp_path / "single", quiet=True)
    for name, data, lr in (("multi", root / "data", MULTI_LABEL_HEAD_LR), ("single", tmp_path / "single", CACHED_HEAD_LR)):
        again = api.finetune(data, backbone="timm:test_resnet", weights=str(run.path / "best.safetensors"),
                             img_size=32, epochs=2, precompute_features=True, batch_size=8,
                             runs_dir=str(tmp_path / "runs"), name=name, device="cpu", precision="fp32", workers=0,
                             cache_dir=str(tmp_path / "cache"), quiet=True)
        # what trained: each epoch's last lr, on the one-cycle towards the phase's lr (5x apart, the two)
        assert lr / 2 < max(row["lr"] for row in again.history) <= lr
        assert f"the head on cached features: adamw lr {lr:g}, weight decay 2," in (again.path / "config.yaml").read_text()


def test_several_labels_without_multi_label_is_one_message_saying_to_add_it(tmp_path, capsys):
    make_flat(tmp_path, {"cat": 3, "dog": 3})
    (tmp_path / "labels.csv").write_text("path,label\ncat.0.jpg,cat|dog\ncat.1.jpg,cat\ncat.2.jpg,cat\n"
                                         "dog.0.jpg,dog\ndog.1.jpg,dog\ndog.2.jpg,dog\n")
    assert cli.main(["split", str(tmp_path / "labels.csv"), "--val", "2", "--out", str(tmp_path / "out")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "gives several labels to 1 photo(s)" in err and "add --multi-label" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_with_multi_label_is_refused(tmp_path, capsys):
    make_flat(tmp_path / "flat", {"cat": 3, "dog": 3})
    assert cli.main(["split", str(tmp_path / "flat"), "--val", "2", "--multi-label", "--out", str(tmp_path / "o")]) == 1
    assert "a folder's names or class folders give one label a photo" in " ".join(capsys.readouterr().err.split())


def test_label_sep_names_another_separator_and_refuses_a_bad_one(tmp_path):
    make_flat(tmp_path, {"cat": 4, "dog": 4})
    rows = "".join(f"{label}.{n}.jpg,{'cat;dog' if n == 0 else label}\n" for label in ("cat", "dog") for n in range(4))
    (tmp_path / "labels.csv").write_text("path,label\n" + rows)
    split = api.split(tmp_path / "labels.csv", val=0.25, out=tmp_path / "out", multi_label=True, label_sep=";",
                      quiet=True)
    assert sum(split.counts[subset]["cat"] for subset in split.counts) == 5  # 4 cats and dog.0's cat;dog
    with pytest.raises(TlkitError, match="label_sep=',' cannot separate"):
        api.split(tmp_path / "labels.csv", val=0.25, out=tmp_path / "o2", multi_label=True, label_sep=",", quiet=True)


def test_val_map_is_refused_for_one_class_a_photo(tmp_path):
    from conftest import make_learnable

    make_learnable(tmp_path / "data", 3, 2, size=16)
    with pytest.raises(TlkitError, match="monitor='val_map' is the mean average precision of a multi-label run"):
        api.finetune(tmp_path / "data", backbone="simple-cnn", monitor="val_map", runs_dir=str(tmp_path / "runs"),
                     device="cpu", quiet=True)


def test_stratification_thresholds_weights_and_metrics_by_hand():
    rows = [("a",)] * 10 + [("a", "b")] * 5 + [("c",)] * 5
    chosen = validation_choice(rows, 4, seed=0)
    assert len(chosen) == 4 and sum(rows[i] == ("a", "b") for i in chosen) == 1  # each rarest-label group its share
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32)
    assert positive_weights(np.array([[1, 0]] + [[0, 1]] * 39, dtype=np.float32)).tolist() == [10.0, 1.0]
    probabilities = np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.6], [0.1, 0.1]])
    thresholds = choose_thresholds(targets, probabilities)
    assert thresholds == [0.8, 0.6]  # the lowest probability of each label's positives: F1 1
    report = metrics(targets, probabilities, thresholds, ["cat", "dog"])
    assert report["subset_accuracy"] == 1.0 and report["mean_average_precision"] == 1.0 and report["macro_f1"] == 1.0


def test_each_labels_platt_scaling_is_fitted_where_validation_has_enough_of_both():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(400, 3))
    # label 0 as a model whose logits run low and flat would give; label 1 with 3 positives; label 2 backwards
    targets = np.stack([rng.random(400) < sigmoid(2 * logits[:, 0] + 1), np.arange(400) < 3,
                        rng.random(400) < sigmoid(-2 * logits[:, 2])], axis=1).astype(np.float32)
    scaling = calibrate_labels(logits, targets)
    assert abs(scaling["scale"][0] - 2) < 0.5 and abs(scaling["shift"][0] - 1) < 0.5
    assert scaling["log_loss_after"][0] < scaling["log_loss_before"][0]
    assert (scaling["scale"][1:], scaling["shift"][1:]) == ([1.0, 1.0], [0.0, 0.0])  # too few; it would reverse


def test_the_run_fits_a_scaling_and_predict_evaluate_and_export_apply_it(trained, tmp_path):
    root, _, run = trained
    best = json.loads((run.path / "best.json").read_text())
    assert set(best["label_scaling"]) >= {"scale", "shift", "images", "log_loss_before", "log_loss_after"}
    assert len(best["label_scaling"]["scale"]) == 2
    photo = root / "photos" / "both.0.jpg"
    before = api.load(run.path, device="cpu").predict(photo, quiet=True)[0].probabilities
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("best.safetensors", "familiar.safetensors"):
        (copy / name).write_bytes((run.path / name).read_bytes())
    planted = {**best["label_scaling"], "scale": [2.0, 0.5], "shift": [1.0, -1.0]}
    (copy / "best.json").write_text(json.dumps({**best, "label_scaling": planted}))
    after = api.load(copy, device="cpu").predict(photo, quiet=True)[0].probabilities
    for k, name in enumerate(("cat", "dog")):  # the same logit, scaled as best.json says
        old_scale, old_shift = best["label_scaling"]["scale"][k], best["label_scaling"]["shift"][k]
        logit = (np.log(before[name] / (1 - before[name])) - old_shift) / old_scale
        assert after[name] == pytest.approx(float(sigmoid(planted["scale"][k] * logit + planted["shift"][k])), abs=1e-4)
    path = api.load(copy, device="cpu").export("onnx", tmp_path / "model.onnx", quiet=True)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert (sidecar["scale"], sidecar["shift"]) == ({"cat": 2.0, "dog": 0.5}, {"cat": 1.0, "dog": -1.0})
    assert "sigmoid(logit x scale + shift)" in sidecar["output"]
    for bad in ({"scale": [0.0, 1.0], "shift": [0, 0]}, {"scale": [1.0], "shift": [0]}, {"scale": "x", "shift": 0}):
        (copy / "best.json").write_text(json.dumps({**best, "label_scaling": bad}))
        with pytest.raises(TlkitError, match="lacks or garbles"):
            api.load(copy, device="cpu")


def test_the_audit_of_a_multi_label_split_judges_each_photos_label_set(trained):
    root, _, _ = trained
    audit = api.audit(root / "data", out=root / "audit", backbone="timm:test_resnet", weights="none", img_size=32,
                      device="cpu", workers=0, cache_dir=str(root / "cache"), quiet=True)
    assert audit.multi_label and audit.classes == ["cat", "dog"]
    assert audit.photo_counts() == {"cat": 18, "dog": 18}  # 10 of each and the 8 composites, counted for both
    assert audit.findings.probabilities.shape == (28, 2)  # each label's out-of-fold probability
    for row in audit.of("label"):  # flagged sets keep their row: the label file is the user's to edit
        assert row.action == "keep" and set(row.suggested.split("|")) <= {"cat", "dog", ""}
    assert (root / "audit" / "audit.csv").is_file() and set(json.loads((root / "audit" / "audit.json").read_text())
                                                            ["counts"]) == {"cat", "dog"}
