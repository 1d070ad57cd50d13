"""`finetune --precompute-features`: the head trained from cached features is the head trained
through the frozen trunk; resumes and --unfreeze-after continue exactly; predict reads the result."""

import json

import pytest
import torch

from tlkit import finetune
from tlkit.checkpoint import load_checkpoint
from tlkit.cli import main

from conftest import interrupt_at, make_foldered

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_foldered(root / "training", {"cat": 10, "dog": 9})
    make_foldered(root / "validation", {"cat": 4, "dog": 4})
    return root


def recipe(data_dir, tmp_path, **overrides):
    base = dict(data=str(data_dir), backbone="timm:test_resnet", weights="none", img_size=32, epochs=3,
                batch_size=4, workers=0, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.0, scheduler="step",
                step_size=2, seed=5, augment=False, cache_dtype="float32", runs_dir=str(tmp_path / "runs"))
    return {**base, **overrides}


def _close(first: dict, second: dict, tolerance: float) -> bool:
    return first.keys() == second.keys() and all(
        torch.allclose(first[k].float(), second[k].float(), rtol=tolerance, atol=tolerance) for k in first)


def _rows(history):
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in history]


def test_cached_features_train_the_same_head_as_the_frozen_trunk(data_dir, tmp_path):
    # In fp32: precompute folds the trunk's BatchNorm and training does not, which in bf16 moves the features
    # by bf16 rounding (and the loss by 1e-4), in fp32 by 1e-6.
    through_trunk = finetune(**recipe(data_dir, tmp_path, freeze="trunk", name="frozen", precision="fp32"))
    from_cache = finetune(**recipe(data_dir, tmp_path, precompute_features=True, name="cached", precision="fp32"))
    assert _close(from_cache.backbone.model.state_dict(), through_trunk.backbone.model.state_dict(), 1e-4)
    for ours, theirs in zip(from_cache.history, through_trunk.history):
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)
        assert ours["train_acc"] == pytest.approx(theirs["train_acc"])
    # The checkpoint is the whole classifier: it rebuilds and scores like the trained model.
    reloaded = load_checkpoint(from_cache.run_dir)
    assert _close(reloaded.backbone.model.state_dict(), from_cache.backbone.model.state_dict(), 0)


@pytest.mark.slow
@pytest.mark.parametrize("cut_after", [2, 3])  # resumes inside the head phase, and at its end
def test_unfreeze_after_and_resume_repeat_exactly(data_dir, tmp_path, cut_after):
    settings = recipe(data_dir, tmp_path, precompute_features=True, unfreeze_after=2, epochs=4, augment=True,
                      precompute_views=2)
    whole = finetune(**settings, name="whole")
    assert len(whole.history) == 4
    with pytest.raises(KeyboardInterrupt):
        finetune(**settings, name="cut", callbacks=[interrupt_at(cut_after)])
    resumed = finetune(resume=tmp_path / "runs" / "cut")
    assert _rows(resumed.history) == _rows(whole.history)
    assert _close(resumed.backbone.model.state_dict(), whole.backbone.model.state_dict(), 0)


def test_precompute_features_from_the_command_line(data_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["finetune", "--data", str(data_dir), "--backbone", "simple-cnn", "--weights", "none", "--img-size", "32",
            "--epochs", "2", "--batch-size", "4", "--workers", "0", "--precompute-features", "--runs-dir", str(runs),
            "--cache-dir", str(tmp_path / "cache"), "--name", "first"]
    assert main(args) == 0
    assert "computing (no cache yet)" in capsys.readouterr().err
    assert main([*args[:-1], "second"]) == 0
    assert "using the cache" in capsys.readouterr().err
    assert main(["predict", str(data_dir / "validation"), "--checkpoint", str(runs / "second"),
                 "--out", str(tmp_path / "p.csv"), "--workers", "0"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 9
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "simple-cnn" in capsys.readouterr().out


def test_built_in_datasets_refuse_precompute(tmp_path):
    from tlkit import finetuning
    from tlkit.datasets import TrainingSource
    from tlkit.errors import TlkitError

    source = TrainingSource("digits", ["0", "1"], {}, channels=1, image_size=8)
    with pytest.raises(TlkitError, match="--precompute-features"):
        finetuning.finetune(data=str(tmp_path), precompute_features=True, source=source)


def test_end_to_end_phase_gets_its_own_schedule(data_dir, tmp_path):
    result = finetune(**recipe(data_dir, tmp_path, precompute_features=True, unfreeze_after=1, epochs=3,
                               scheduler="cosine", name="cosine"))
    lrs = [row["lr"] for row in result.history]
    # The lr of each epoch's last step: the head's cosine over 1 epoch ends near 0; a fresh cosine over the
    # 2 epochs left is about half way down after epoch 2 and near 0 after epoch 3 (not restarted at the peak).
    assert lrs[0] < 0.01 and 0.02 < lrs[1] < 0.04 and lrs[2] < 0.01


def test_resume_follows_the_phase_that_wrote_the_file(data_dir, tmp_path, capsys):
    settings = recipe(data_dir, tmp_path, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        finetune(**settings, name="images", callbacks=[interrupt_at(2)])
    resumed = finetune(resume=tmp_path / "runs" / "images", precompute_features=True)  # a flag added later
    assert len(resumed.history) == 3
    # tlkit.finetune is the API's: the warning names its parameter, not the flag
    assert "precompute_features= not applied: a resumed run keeps the phases it planned" in capsys.readouterr().err


def test_precompute_and_cache_commands(data_dir, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["precompute", "--data", str(data_dir), "--backbone", "simple-cnn", "--weights", "none", "--img-size", "32",
            "--workers", "0", "--cache-dir", str(cache), "--precompute-views", "2", "--precision", "fp32"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "2 x 19 x 64" in captured.out and "8 x 64" in captured.out  # views x images x features; plain validation
    assert main(args) == 0 and "using the cache" in capsys.readouterr().err
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    assert "simple-cnn" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(cache)]) == 0
    assert "removed 1 cache folder" in capsys.readouterr().out and not any(cache.iterdir())
    with pytest.raises(SystemExit):
        main([*args, "--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err


def test_the_head_phase_writes_the_whole_classifier_once(data_dir, tmp_path, monkeypatch):
    """Head epochs take a second; the checkpoint (the trunk too) is written when the phase ends, not each time."""
    from tlkit import callbacks
    from tlkit.checkpoint import load_resume

    written, save_best = [], callbacks.save_best
    monkeypatch.setattr(callbacks, "save_best", lambda run_dir, state, meta: (
        written.append(meta.epoch), save_best(run_dir, state, meta)))
    result = finetune(**recipe(data_dir, tmp_path, precompute_features=True, epochs=4, name="once"))
    assert written == [result.best_epoch]
    best_state = load_resume(result.run_dir)["callbacks"]["BestWeights"]["best_state"]
    assert best_state.keys() == result.backbone.head.state_dict().keys()  # the resume file holds the head alone
    assert _close(load_checkpoint(result.run_dir).backbone.model.state_dict(), result.backbone.model.state_dict(), 0)


def test_an_interrupted_head_phase_keeps_its_best_checkpoint(data_dir, tmp_path):
    import json

    settings = recipe(data_dir, tmp_path, precompute_features=True, epochs=4, monitor="val_loss", name="cut")
    with pytest.raises(KeyboardInterrupt):
        finetune(**settings, callbacks=[interrupt_at(2)])
    run_dir = tmp_path / "runs" / "cut"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda row: row["val_loss"])
    assert json.loads((run_dir / "best.json").read_text())["epoch"] == best["epoch"]
    assert load_checkpoint(run_dir).classes == ["cat", "dog"]


def test_a_failure_while_saving_on_ctrl_c_does_not_hide_the_interrupt(data_dir, tmp_path, capsys):
    from tlkit.callbacks import Callback

    class DiskFull(Callback):
        def on_interrupt(self, trainer):
            raise OSError(28, "No space left on device")

    with pytest.raises(KeyboardInterrupt):
        finetune(**recipe(data_dir, tmp_path, precompute_features=True, name="full", resume_every_seconds=0),
                 callbacks=[interrupt_at(2), DiskFull()])
    err = capsys.readouterr().err
    assert "could not save on the way out" in err and "tlkit finetune --resume" in err


def test_precompute_reads_a_runs_settings_and_refuses_bad_ones(data_dir, tmp_path, capsys):
    """`tlkit precompute --config` computes the cache the run with that config reads; the views'
    augmentation is part of the cache; a wrong setting is one message, not a traceback."""
    cache = tmp_path / "cache"
    recipe_file = tmp_path / "run.yaml"
    recipe_file.write_text(f"data: {data_dir}\nbackbone: simple-cnn\nweights: none\nimg_size: 32\nworkers: 0\n"
                           f"cache_dir: {cache}\nprecision: fp32\nprecompute_views: 2\nepochs: 1\n")
    assert main(["precompute", "--config", str(recipe_file)]) == 0
    assert "computing (no cache yet)" in capsys.readouterr().err
    assert main(["finetune", "--config", str(recipe_file), "--precompute-features", "--runs-dir",
                 str(tmp_path / "runs")]) == 0
    assert "features: using the cache" in capsys.readouterr().err
    assert main(["precompute", "--config", str(recipe_file), "--augment", "light"]) == 0
    assert "another augmentation of the views" in capsys.readouterr().err
    recipe_file.write_text(recipe_file.read_text() + "learning_rate: 0.1\n")
    assert main(["precompute", "--config", str(recipe_file)]) == 1
    err = capsys.readouterr().err
    assert "unknown setting(s) learning_rate" in err and "Traceback" not in err


def test_each_phase_schedule_starts_from_its_own_first_step(data_dir, tmp_path):
    # The head on the cache for 2 epochs, then every layer for 2, each over a one-cycle of its own: the head
    # ends at its own last (lowest) lr before every layer starts, and every layer ends at its own.
    run = finetune(data=str(data_dir), backbone="timm:test_resnet", weights="none", img_size=32, batch_size=4,
                   workers=0, precompute_features=True, unfreeze_after=2, epochs=4, head_lr=0.01, lr=0.002,
                   cache_dtype="float32", runs_dir=str(tmp_path / "runs"), name="phases")
    lrs = [row["lr"] for row in run.history]  # the head's lr after each epoch's last step
    assert lrs[1] == pytest.approx(0.01 / 25 / 1e4, rel=1e-3)  # OneCycleLR's end: max / div / final_div
    assert lrs[3] == pytest.approx(0.002 / 25 / 1e4, rel=1e-3)
    assert lrs[0] > 1e-3 and lrs[2] > 1e-4  # each phase's peak is its own, after its own warm-up
    written = (run.run_dir / "config.yaml").read_text()
    assert "#   epochs 1-2: the head on cached features: adamw lr 0.01" in written
    assert "#   epochs 3-4: every layer on the images: adamw lr 0.002" in written
    meta = json.loads((run.run_dir / "best.json").read_text())
    assert len(meta["phases"]) == 2 and "augment none" in meta["phases"][0]
