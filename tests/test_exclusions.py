"""--exclude FILE (tlkit/exclusions.py): split, finetune, precompute and train leave out the rows marked
exclude, take relabel rows under their new class, and split keeps near-duplicate pairs in one subset; the
photos themselves are never touched, and the feature cache knows the difference."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tlkit import cli
from tlkit.data import make_data, open_split
from tlkit.exclusions import read_exclusions

from conftest import make_flat, make_learnable

HEADER = ("path", "subset", "class", "issue", "score", "suggested", "action", "other")


def write_list(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, HEADER)
        writer.writeheader()
        writer.writerows({key: row.get(key, "") for key in HEADER} for row in rows)
    return path


def _split_rows(out: Path) -> dict[str, dict]:
    with open(out / "split.csv", newline="", encoding="utf-8") as handle:
        return {row["source"]: row for row in csv.DictReader(handle)}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_split_leaves_out_relabels_and_keeps_pairs_together(tmp_path):
    photos = make_flat(tmp_path / "photos", {"cat": 8, "dog": 8})
    before = _files(photos)
    listed = write_list(tmp_path / "audit.csv", [
        {"path": "cat.0.jpg", "issue": "outlier", "action": "exclude"},
        {"path": "cat.1.jpg", "issue": "label", "suggested": "dog", "action": "relabel"},
        {"path": "dog.2.jpg", "issue": "near-duplicate", "action": "keep", "other": "cat.3.jpg"}])
    for seed in range(6):  # the pair lands together whatever the draw
        out = tmp_path / f"split{seed}"
        assert cli.main(["-q", "split", str(photos), "--val", "0.5", "--out", str(out), "--seed", str(seed),
                         "--exclude", str(listed)]) == 0
        rows = _split_rows(out)
        assert "cat.0.jpg" not in rows and len(rows) == 15
        assert rows["cat.1.jpg"]["class"] == "dog" and rows["cat.1.jpg"]["destination"].endswith("dog/cat.1.jpg")
        assert rows["dog.2.jpg"]["subset"] == rows["cat.3.jpg"]["subset"]
    assert _files(photos) == before


def test_finetune_inputs_and_the_feature_cache_follow_the_list(tmp_path):
    data = make_learnable(tmp_path / "data", train_per_class=6, val_per_class=3)
    listed = write_list(tmp_path / "audit.csv", [
        {"path": "training/cat/0.png", "action": "exclude"},
        {"path": "validation/dog/1.png", "action": "exclude"},
        {"path": "training/dog/2.png", "suggested": "cat", "action": "relabel"}])
    split = open_split(data).excluding(read_exclusions(listed))
    bundle = make_data(split, _prep(), batch_size=4, workers=0, device=__import__("torch").device("cpu"), seed=0)
    assert (len(bundle.train_set), len(bundle.val_set)) == (11, 5)
    relabelled = [target for path, target in bundle.train_set.samples if path.endswith("dog/2.png")]
    assert relabelled == [0]
    common = ["precompute", "--data", str(data), "--backbone", "simple-cnn", "--weights", "none", "--img-size", "32",
              "--device", "cpu", "--workers", "0", "-q"]
    assert cli.main(common) == 0
    cache = data / ".tlkit-cache" / "simple-cnn" / "manifest.json"
    whole = json.loads(cache.read_text())
    assert cli.main([*common, "--exclude", str(listed)]) == 0
    fewer = json.loads(cache.read_text())
    assert fewer["identity"]["files_sha256"] != whole["identity"]["files_sha256"]
    assert "cat/0.png" not in fewer["subsets"]["training"]["files"] and len(fewer["subsets"]["validation"]["files"]) == 5
    assert fewer["subsets"]["training"]["labels"][fewer["subsets"]["training"]["files"].index("dog/2.png")] == 0


def _prep():
    from tlkit import models

    return models.create("simple-cnn", num_classes=2, weights="none", img_size=24).preprocessing


@pytest.mark.usefixtures("one_thread")
def test_finetune_and_train_take_the_list(tmp_path):
    data = make_learnable(tmp_path / "data", train_per_class=6, val_per_class=3)
    listed = write_list(tmp_path / "audit.csv", [{"path": "training/cat/0.png", "action": "exclude"}])
    common = ["--backbone", "simple-cnn", "--weights", "none", "--img-size", "24", "--epochs", "1", "--device", "cpu",
              "--workers", "0", "--runs-dir", str(tmp_path / "runs"), "--exclude", str(listed), "-q"]
    assert cli.main(["finetune", "--data", str(data), "--name", "f", *common]) == 0
    assert "exclude:" in (tmp_path / "runs" / "f" / "config.yaml").read_text()
    train = [arg if arg != "--backbone" else "--model" for arg in common]
    assert cli.main(["train", "--dataset", str(data), "--name", "t", *train]) == 0


def test_a_list_that_cannot_serve_is_one_clear_message(tmp_path, capsys):
    data = make_learnable(tmp_path / "data", train_per_class=3, val_per_class=2)
    no_path = tmp_path / "bad.csv"
    no_path.write_text("file,action\nx.jpg,exclude\n")
    elsewhere = write_list(tmp_path / "other.csv", [{"path": "training/cat/elsewhere.png", "action": "exclude"}])
    for listed, words in ((no_path, "no path column"), (elsewhere, "no row of"),
                          (tmp_path / "missing.csv", "cannot read the list")):
        assert cli.main(["precompute", "--data", str(data), "--backbone", "simple-cnn", "--weights", "none",
                         "--device", "cpu", "--exclude", str(listed)]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert cli.main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1", "--exclude",
                     str(elsewhere), "--runs-dir", str(tmp_path / "runs")]) == 1
    assert "training/ and validation/" in capsys.readouterr().err


TINY = ["--backbone", "simple-cnn", "--weights", "none", "--img-size", "24", "--device", "cpu", "--workers", "0"]


@pytest.mark.usefixtures("one_thread")
def test_finetune_trains_without_the_excluded_photos_from_the_cli_and_from_python(tmp_path, capsys):
    """The run's inputs shrink by the list's exclude rows (it trained on all of them before: the list was
    lost on its way to the split folders), and the feature cache `precompute --exclude` wrote is the one the
    run reads."""
    from tlkit import api

    data = make_learnable(tmp_path / "data", train_per_class=6, val_per_class=3)
    listed = write_list(tmp_path / "audit.csv", [
        {"path": "training/cat/0.png", "action": "exclude"}, {"path": "training/cat/1.png", "action": "exclude"},
        {"path": "validation/dog/0.png", "action": "exclude"}])
    assert cli.main(["precompute", "--data", str(data), *TINY, "--exclude", str(listed)]) == 0
    capsys.readouterr()
    assert cli.main(["finetune", "--data", str(data), *TINY, "--precompute-features", "--epochs", "1", "--exclude",
                     str(listed), "--runs-dir", str(tmp_path / "runs"), "--name", "cli"]) == 0
    err = capsys.readouterr().err
    assert "cached features of 10 training / 5 validation" in err and "using the cache" in err
    run = api.finetune(data, **{key.lstrip("-").replace("-", "_"): value for key, value in zip(TINY[::2], TINY[1::2])},
                       epochs=1, exclude=listed, runs_dir=tmp_path / "runs", name="api", quiet=True)
    assert run.report["macro avg"]["support"] == 5  # validation less its excluded photo


@pytest.mark.parametrize("command", ["finetune", "lr-find", "precompute", "train"])
def test_a_list_the_run_cannot_act_on_stops_every_command_before_it_starts(tmp_path, capsys, command):
    """Each was accepted and ignored by finetune (the list was never read): a list naming no photo here, a relabel
    to a class the folders lack, an unknown action, a list that does not exist."""
    data = make_learnable(tmp_path / "data", train_per_class=3, val_per_class=2)
    unknown_action = tmp_path / "action.csv"
    unknown_action.write_text("path,action\ntraining/cat/0.png,delete\n")
    cases = {"names no photo": (write_list(tmp_path / "other.csv", [{"path": "training/cat/x.png"}]), "no row of"),
             "unknown class": (write_list(tmp_path / "relabel.csv", [
                 {"path": "training/cat/0.png", "suggested": "horse", "action": "relabel"}]), "'horse'"),
             "unknown action": (unknown_action, "line 2 of"),
             "missing": (tmp_path / "missing.csv", "cannot read the list")}
    where = ["--dataset", str(data), "--model", "simple-cnn"] if command == "train" else ["--data", str(data), *TINY[:2]]
    out = {"lr-find": ["--out", str(tmp_path / "lr.png")], "finetune": ["--runs-dir", str(tmp_path / "runs")],
           "train": ["--runs-dir", str(tmp_path / "runs")]}.get(command, [])
    for listed, words in cases.values():
        code = cli.main([command, *where, *TINY[2:], *out, "--exclude", str(listed)])
        err = capsys.readouterr().err
        assert code == 1 and words in err and "Traceback" not in err, (listed.name, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lr.png").exists()
