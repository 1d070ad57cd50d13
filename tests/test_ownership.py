"""--force removes or replaces only what tlkit wrote and is unchanged since (tlkit/ownership.py): the record
itself, then every command that has --force, each with a file of the user's planted in or beside its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_flat, make_learnable, write_image
from tlkit.atomic import atomic_write_text
from tlkit.cli import main
from tlkit.ownership import CHANGED, NO_RECORD, RECORD, clear, survey, why_kept

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = ["--backbone", "simple-cnn", "--weights", "none", "--workers", "0", "--batch-size", "8", "--img-size", "32"]


def _said(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_learnable(tmp_path_factory.mktemp("data"))


def test_the_record_knows_what_tlkit_wrote_and_sees_an_edit(tmp_path):
    atomic_write_text(tmp_path / "ours.csv", "a,b\n")
    atomic_write_text(tmp_path / "edited.csv", "keep\n")
    (tmp_path / "edited.csv").write_text("drop\n")  # same size, other bytes
    (tmp_path / "mine.txt").write_text("notes")
    assert why_kept(tmp_path / "ours.csv") is None
    assert why_kept(tmp_path / "edited.csv") == CHANGED and why_kept(tmp_path / "mine.txt") == NO_RECORD
    (tmp_path / RECORD).write_text(json.dumps({"format": 99, "files": {}}))  # a later tlkit's: nothing trusted
    assert why_kept(tmp_path / "ours.csv") == NO_RECORD


def test_clear_removes_only_recorded_unchanged_files_then_empty_folders(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    atomic_write_text(tmp_path / "a" / "x.json", "{}")
    atomic_write_text(tmp_path / "b" / "y.json", "{}")
    (tmp_path / "b" / "mine.ipynb").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "b" / "mine.ipynb")
    found = survey(tmp_path)
    assert sorted(p.name for p in found.ours) == ["x.json", "y.json"]
    clear(found)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["b", "b/mine.ipynb", "link"]


# ---------------------------------------------------------------- the three cases of issue 30


def _finetune(tmp_path: Path, data: Path, *extra: str) -> int:
    return main(["finetune", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), *QUICK, "--epochs", "1",
                 "--name", "base", *extra])


def test_finetune_force_keeps_what_the_user_put_in_the_run_folder(tmp_path, data, capsys):
    """Issue 30: a notebook in evaluate-validation/ and notes in tb/ were deleted with the run, rc 0."""
    assert _finetune(tmp_path, data) == 0
    run = tmp_path / "runs" / "base"
    assert main(["evaluate", str(data / "validation"), "--checkpoint", str(run)]) == 0
    notebook, notes = run / "evaluate-validation" / "my_analysis.ipynb", run / "tb" / "notes.txt"
    notes.parent.mkdir(exist_ok=True)
    notebook.write_text("{}")
    notes.write_text("lr 3e-3 was better")
    capsys.readouterr()
    assert _finetune(tmp_path, data, "--force") == 0
    said = _said(capsys)
    assert notebook.read_text() == "{}" and notes.read_text() == "lr 3e-3 was better"
    assert "my_analysis.ipynb" in said and "notes.txt" in said
    assert not (run / "evaluate-validation" / "report.json").exists()  # the earlier run's evaluation went
    assert (run / "best.safetensors").is_file()


def test_a_user_file_where_the_new_run_writes_stops_it_with_nothing_changed(tmp_path, data, capsys):
    assert _finetune(tmp_path, data) == 0
    run = tmp_path / "runs" / "base"
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "# my note\n")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*"))
    assert _finetune(tmp_path, data, "--force") == 1
    assert "config.yaml (changed since tlkit wrote it)" in _said(capsys)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


@pytest.fixture
def tiny(tmp_path):
    from conftest import make_checkpoint

    return make_checkpoint(tmp_path / "runs" / "tiny", img_size=32)


def test_evaluate_force_never_writes_over_or_among_the_users_files(tiny, tmp_path, capsys):
    """Issue 30: `evaluate --out mine --force` overwrote the user's report.json; --out at a photo folder dropped
    tlkit's files among the photos."""
    photos = make_flat(tmp_path / "photos", {"cat": 2, "dog": 2})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.json").write_text('{"my": "report"}')
    (mine / "mistakes.html").write_text("<p>mine</p>")
    assert main(["evaluate", str(photos), "--checkpoint", str(tiny), "--out", str(mine), "--force"]) == 1
    assert "did not write (mistakes.html, report.json)" in _said(capsys)
    assert (mine / "report.json").read_text() == '{"my": "report"}' and sorted(p.name for p in mine.iterdir()) == [
        "mistakes.html", "report.json"]
    before = sorted(p.name for p in photos.iterdir())
    assert main(["evaluate", str(photos), "--checkpoint", str(tiny), "--out", str(photos)]) == 1
    assert "scattered" in _said(capsys) and sorted(p.name for p in photos.iterdir()) == before


def test_evaluate_force_keeps_an_edited_page_and_writes_the_new_one_beside_it(tiny, tmp_path, capsys):
    photos = make_flat(tmp_path / "photos", {"cat": 2, "dog": 2})
    out = tmp_path / "eval"
    command = ["evaluate", str(photos), "--checkpoint", str(tiny), "--out", str(out), "--force"]
    assert main(command) == 0
    (out / "mistakes.html").write_text("<p>annotated</p>")
    (out / "analysis.ipynb").write_text("{}")
    assert main(command) == 0
    said = _said(capsys)
    assert (out / "mistakes.html").read_text() == "<p>annotated</p>" and (out / "analysis.ipynb").read_text() == "{}"
    assert (out / "mistakes.new.html").is_file() and "mistakes.new.html" in said and "analysis.ipynb" in said


def _audit(data: Path, *extra: str) -> int:
    return main(["audit", str(data), "--device", "cpu", *QUICK[:4], "--img-size", "32", "--workers", "0",
                 *extra])


def test_audit_force_keeps_an_edited_audit_csv_and_writes_audit_new_csv(tmp_path, capsys):
    """Issue 30: after the user's review (relabel -> keep) `audit --force` silently reverted audit.csv."""
    data = make_learnable(tmp_path / "data")
    assert _audit(data) == 0
    review = tmp_path / "data-audit" / "audit.csv"
    reviewed = review.read_text().replace(",exclude,", ",keep,")
    review.write_text(reviewed)
    assert _audit(data, "--force") == 0
    said = _said(capsys)
    assert review.read_text() == reviewed and (review.parent / "audit.new.csv").is_file()
    assert "audit.csv is kept (changed since tlkit wrote it); the new one is" in said and "audit.new.csv" in said
    assert _audit(data, "--force") == 0  # the next one replaces its own audit.new.csv, still beside the review
    assert review.read_text() == reviewed


# ---------------------------------------------------------------- every command that has --force


def test_train_force_keeps_a_users_file_in_the_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TLKIT_OFFLINE", "1")
    command = ["train", "--runs-dir", str(tmp_path / "runs"), "--workers", "0", "--dataset", "digits", "--model",
               "mlp-relu", "--epochs", "1", "--batch-size", "64", "--name", "digits"]
    assert main(command) == 0
    (tmp_path / "runs" / "digits" / "plan.md").write_text("next: more epochs")
    assert main([*command, "--force"]) == 0
    assert (tmp_path / "runs" / "digits" / "plan.md").read_text() == "next: more epochs"
    assert "plan.md (tlkit has no record of writing it)" in _said(capsys)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_predict_force_never_replaces_a_users_file(tiny, tmp_path, capsys, fmt):
    photo = write_image(tmp_path / "photos" / "12.jpg")
    out = tmp_path / f"predictions.{fmt}"
    out.write_text("path,label,confidence,\nmy,own,table\n" if fmt == "csv" else '[{"path": "mine"}]')  # tlkit's look
    before = out.read_text()
    assert main(["predict", str(photo), "--checkpoint", str(tiny), "--out", str(out), "--format", fmt, "--force"]) == 1
    assert f"predictions.{fmt} is not a predictions file of tlkit's (tlkit has no record" in _said(capsys)
    assert out.read_text() == before


def test_export_force_through_the_api_never_replaces_a_users_sidecar(tiny, tmp_path, capsys):
    import tlkit

    classifier = tlkit.load(tiny)
    target = tmp_path / "model.pt"
    assert classifier.export("torchscript", target, force=True) == target
    sidecar = tmp_path / "model.pt.json"
    sidecar.write_text(sidecar.read_text().replace('"classes"', '"classes_i_renamed"'))
    model = target.read_bytes()
    with pytest.raises(tlkit.TlkitError, match=r"model.pt.json is not an export of tlkit's \(changed since"):
        classifier.export("torchscript", target, force=True)
    assert "classes_i_renamed" in sidecar.read_text() and target.read_bytes() == model


def test_lr_find_force_never_replaces_a_users_plot(tmp_path, data, capsys):
    plot = tmp_path / "lr.png"
    plot.write_bytes(b"my own plot")
    assert main(["lr-find", "--data", str(data), *QUICK, "--steps", "5", "--out", str(plot), "--force"]) == 1
    assert "lr.png is not a plot of tlkit's (tlkit has no record of writing it)" in _said(capsys)
    assert plot.read_bytes() == b"my own plot"


def test_precompute_force_and_cache_clear_keep_a_users_file_in_the_cache(tmp_path, data, capsys):
    cache = tmp_path / "cache"
    command = ["precompute", "--data", str(data), *QUICK, "--cache-dir", str(cache), "--precision", "fp32"]
    assert main(command) == 0
    folder = next(path.parent for path in cache.glob("*/manifest.json"))
    (folder / "why.txt").write_text("features for the paper")
    assert main([*command, "--force"]) == 0
    assert (folder / "why.txt").read_text() == "features for the paper" and (folder / "manifest.json").is_file()
    assert "why.txt (tlkit has no record of writing it)" in _said(capsys)
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["why.txt"] and "why.txt" in _said(capsys)


def test_split_force_keeps_a_users_file_in_or_beside_the_split(tmp_path, capsys):
    """split swaps whole folders in (tlkit/split.py): a file of the user's inside the old split stops the
    re-split (check_nothing_lost names it); one beside the split is never touched."""
    src = make_flat(tmp_path / "photos", {"cat": 4, "dog": 4})
    out = tmp_path / "data"
    command = ["split", str(src), "--val", "2", "--out", str(out), "--force"]
    assert main(command) == 0
    beside, inside = out / "notes.txt", out / "training" / "cat" / "my_extra.jpg"
    beside.write_text("mine")
    write_image(inside, color=99)
    assert main(command) == 1
    assert "my_extra.jpg" in _said(capsys) and inside.is_file() and beside.read_text() == "mine"
    inside.unlink()
    assert main(command) == 0 and beside.read_text() == "mine"
