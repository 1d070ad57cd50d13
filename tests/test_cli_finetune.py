"""`tlkit finetune` and `tlkit lr-find` through cli.main: outputs, messages for bad input, real photos."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_foldered, make_learnable, shared_photos
from tlkit.checkpoint import load_checkpoint, resolve_run
from tlkit.cli import main

QUICK = ["--backbone", "simple-cnn", "--weights", "none", "--workers", "0", "--batch-size", "8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def finetune_cli(tmp_path: Path, data: Path, *extra: str) -> int:
    return main(["finetune", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), *QUICK, *extra])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_learnable(tmp_path_factory.mktemp("data"))


def error_of(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


def test_no_split_folders_says_to_run_split(tmp_path, capsys):
    assert finetune_cli(tmp_path, tmp_path / "nowhere") == 1
    err = error_of(capsys)
    assert "training does not exist" in err and "tlkit split" in err and "Traceback" not in err


def test_photos_given_as_data_get_the_split_command_that_works(tmp_path, capsys):
    from conftest import make_flat

    photos = make_flat(tmp_path / "data" / "train", {"cat": 5, "dog": 5})
    assert finetune_cli(tmp_path, photos) == 1
    err = error_of(capsys)
    assert "holds photos" in err and "--data" in err
    command = err.split("Run `")[1].split("`")[0].split()  # the suggested command, as a user would paste it
    assert command[:2] == ["tlkit", "split"] and main([*command[1:], "--quiet"]) == 0
    assert (tmp_path / "data" / "training").is_dir()


def test_class_mismatch_and_single_class_are_explained(tmp_path, capsys):
    make_foldered(tmp_path / "odd" / "training", {"cat": 2, "dog": 2, "fox": 2})
    make_foldered(tmp_path / "odd" / "validation", {"cat": 1, "dog": 1})
    assert finetune_cli(tmp_path, tmp_path / "odd") == 1
    assert "only in training: fox" in error_of(capsys)
    make_foldered(tmp_path / "one" / "training", {"cat": 2})
    make_foldered(tmp_path / "one" / "validation", {"cat": 1})
    assert finetune_cli(tmp_path, tmp_path / "one") == 1
    assert "one class only (cat)" in error_of(capsys)


def test_unknown_config_key_is_named(tmp_path, data_dir, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    assert finetune_cli(tmp_path, data_dir, "--config", str(config)) == 1
    err = error_of(capsys)
    assert "unknown setting(s) learning_rate" in err and "Valid settings:" in err
    assert not (tmp_path / "runs").exists()  # nothing written for a run that never started


def test_a_run_writes_every_output_and_they_load(tmp_path, data_dir, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 5\noptimizer: adamw\nlr: 0.003\nscheduler: cosine\n")
    assert finetune_cli(tmp_path, data_dir, "--config", str(config), "--epochs", "2", "--name", "cli") == 0
    run = tmp_path / "runs" / "cli"
    for name in ("config.yaml", "best.safetensors", "best.json", "resume.pt", "metrics.jsonl", "curves.png",
                 "confusion.png", "report.json"):
        assert (run / name).is_file(), name
    captured = capsys.readouterr()
    assert "best: epoch" in captured.out and "best.safetensors" in captured.out
    saved = (run / "config.yaml").read_text()
    assert "epochs: 2" in saved and "optimizer: adamw" in saved  # the flag won over the file
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "report.json").read_text())["accuracy"] >= 0
    assert resolve_run(None, runs_dir=tmp_path / "runs").resolve() == run.resolve()
    checkpoint = load_checkpoint(run)
    assert checkpoint.classes == ["cat", "dog"] and checkpoint.meta.backbone == "simple-cnn"
    # Same run folder again: refused without --force, replaced with it.
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--name", "cli") == 1
    assert "already exists" in error_of(capsys)
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--name", "cli", "--force") == 0


def test_python_entry_point_result_equals_the_reloaded_checkpoint(tmp_path, data_dir):
    import tlkit

    result = tlkit.finetune(data=str(data_dir), backbone="simple-cnn", weights="none", epochs=1, batch_size=8,
                            workers=0, runs_dir=str(tmp_path / "runs"), name="api")
    images = torch.randn(3, 3, 32, 32)
    reloaded = load_checkpoint(result.run_dir)
    result.backbone.model.eval()
    with torch.inference_mode():
        assert torch.equal(reloaded.backbone.model(images), result.backbone.model(images))


def test_import_tlkit_stays_cheap():
    code = "import sys, tlkit; print('torch' in sys.modules, 'finetune' in tlkit.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    import tlkit

    assert callable(tlkit.finetune)


def test_commands_that_need_no_torch_start_without_it(tmp_path):
    """--help, split, check and cache start in a fraction of a second: torch (seconds to import) stays out."""
    photos = make_foldered(tmp_path / "photos", {"cat": 3, "dog": 3})
    code = ("import sys; from tlkit.cli import main; "
            f"codes = [main(['split', {str(photos)!r}, '--val', '2', '--quiet']), "
            f"main(['check', {str(photos)!r}, '--quiet']), main(['cache', 'ls', '--data', {str(tmp_path)!r}])]; "
            "print(codes, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[-2] == "[0, 0, 0] False"


def test_built_in_dataset_names_listed_for_the_parser_are_the_real_ones():
    from tlkit.config import BUILT_IN_DATASETS
    from tlkit.datasets import dataset_names

    assert BUILT_IN_DATASETS == tuple(sorted(dataset_names()))


def test_resume_refuses_another_backbone_and_a_non_run(tmp_path, data_dir, capsys):
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--name", "r") == 0
    capsys.readouterr()
    assert main(["finetune", "--resume", str(tmp_path / "runs" / "r"), "--backbone", "lenet"]) == 1
    assert "trained with backbone simple-cnn, not lenet" in error_of(capsys)
    assert main(["finetune", "--resume", str(tmp_path)]) == 1
    assert "not a tlkit run folder" in error_of(capsys)


def test_resume_with_another_process_count_warns_about_the_scaled_lr(tmp_path, data_dir, capsys):
    # A per-epoch schedule: the resume file below is rewound by an epoch, which a per-batch one-cycle refuses.
    assert finetune_cli(tmp_path, data_dir, "--epochs", "2", "--lr-scale", "linear", "--scheduler", "step",
                        "--name", "r") == 0
    resume_file = tmp_path / "runs" / "r" / "resume.pt"
    state = torch.load(resume_file, weights_only=True)
    state["epoch"], state["history"] = 1, state["history"][:1]
    state["meta"]["processes"] = 2  # as if two torchrun processes had trained the first epoch
    torch.save(state, resume_file)
    capsys.readouterr()
    assert main(["finetune", "--resume", str(tmp_path / "runs" / "r")]) == 0
    assert "trained by 2 process(es) and resumes with 1" in error_of(capsys)


def test_a_run_folder_as_weights_brings_its_image_size(tmp_path, data_dir, capsys):
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--img-size", "40", "--name", "first") == 0
    first = tmp_path / "runs" / "first"
    # Neither the file nor --img-size: the run folder alone, trained at 40 px (simple-cnn's own size is 32).
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--weights", str(first), "--name", "second") == 0
    second = load_checkpoint(tmp_path / "runs" / "second")
    assert second.backbone.preprocessing.input_size == (40, 40)
    assert second.meta.weights == str(first / "best.safetensors")


def test_lr_find_plots_and_suggests(tmp_path, data_dir, capsys):
    plot = tmp_path / "lr.png"
    assert main(["lr-find", "--data", str(data_dir), *QUICK, "--steps", "10", "--out", str(plot)]) == 0
    assert plot.is_file() and "suggested lr:" in capsys.readouterr().out
    before = plot.read_bytes()
    assert main(["lr-find", "--data", str(data_dir), *QUICK, "--steps", "10", "--out", str(plot)]) == 1
    assert "already exists" in error_of(capsys) and plot.read_bytes() == before  # nothing replaced
    assert main(["lr-find", "--data", str(data_dir), *QUICK, "--steps", "10", "--out", str(plot), "--force"]) == 0


@pytest.mark.slow
def test_fine_tune_on_the_real_photos(tmp_path, capsys):
    """A subset of the shared dogs-vs-cats photos at 32 px: the loss falls, every output loads."""
    flat = shared_photos(tmp_path / "photos", per_class=200)
    assert main(["split", str(flat), "--val", "80", "--out", str(tmp_path / "data")]) == 0
    assert main(["finetune", "--data", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"),
                 "--backbone", "simple-cnn", "--weights", "none", "--img-size", "32", "--epochs", "3",
                 "--optimizer", "adamw", "--lr", "0.002", "--batch-size", "32", "--workers", "0",
                 "--name", "real", "-q"]) == 0
    run = tmp_path / "runs" / "real"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert load_checkpoint(run).classes == ["cat", "dog"]
    assert json.loads((run / "report.json").read_text())["cat"]["support"] == 40
    for name in ("curves.png", "confusion.png", "resume.pt", "config.yaml"):
        assert (run / name).stat().st_size > 0


def test_weights_of_a_run_with_other_classes_say_the_head_starts_fresh(tmp_path, data_dir, capsys):
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--name", "two") == 0
    three = make_foldered(tmp_path / "three" / "training", {"a": 4, "b": 4, "c": 4}).parent
    make_foldered(three / "validation", {"a": 2, "b": 2, "c": 2})
    capsys.readouterr()
    assert main(["finetune", "--data", str(three), "--runs-dir", str(tmp_path / "runs"), *QUICK, "--epochs", "1",
                 "--weights", str(tmp_path / "runs" / "two"), "--name", "three"]) == 0
    err = error_of(capsys)
    assert "trained for other classes than these 3" in err and "head starts from a random initialisation" in err
    assert "new head tensors, randomly initialised" in err  # the weights line says which tensors


def test_the_new_setting_flags_reach_config_yaml_and_bad_values_are_one_message(tmp_path, data_dir, capsys):
    import yaml

    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--augment", "light", "--freeze-bn", "true",
                        "--resume-every-epochs", "2", "--resume-every-seconds", "0", "--name", "flags") == 0
    saved = yaml.safe_load((tmp_path / "runs" / "flags" / "config.yaml").read_text())
    assert (saved["augment"], saved["freeze_bn"], saved["resume_every_epochs"], saved["resume_every_seconds"]) == (
        "light", True, 2, 0.0)
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--precompute-features", "--head-lr", "0.02",
                        "--head-weight-decay", "0.5", "--name", "head") == 0
    saved = yaml.safe_load((tmp_path / "runs" / "head" / "config.yaml").read_text())
    assert (saved["head_lr"], saved["head_weight_decay"]) == (0.02, 0.5)
    assert "the head on cached features: adamw lr 0.02, weight decay 0.5" in error_of(capsys)
    for flag, value, words in (("--freeze-bn", "maybe", "--freeze-bn must be true or false"),
                               ("--head-lr", "0", "--head-lr must be a number above 0"),
                               ("--resume-every-seconds", "-1", "--resume-every-seconds must be a number 0 or more")):
        assert finetune_cli(tmp_path, data_dir, flag, value, "--name", "bad") == 1
        err = error_of(capsys)
        assert words in err and "Traceback" not in err


def test_predict_precision_fp32_is_said_and_a_bad_one_refused(tmp_path, data_dir, capsys):
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--name", "p") == 0
    capsys.readouterr()
    out = tmp_path / "p.csv"
    assert main(["predict", str(data_dir / "validation"), "--runs-dir", str(tmp_path / "runs"), "--precision", "fp32",
                 "--workers", "0", "--out", str(out)]) == 0
    assert "cpu, fp32" in error_of(capsys) and out.is_file()
    with pytest.raises(SystemExit):  # argparse's own message: its choices
        main(["predict", str(data_dir / "validation"), "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_a_run_that_fails_before_training_leaves_its_name_free(tmp_path, data_dir, capsys):
    """A run that stops before its first epoch ends (a fault, Ctrl-C) leaves no run folder blocking --name; one
    that trained something keeps its folder, to resume or look at."""
    import tlkit
    from tlkit.callbacks import Callback

    class FailAt(Callback):
        def __init__(self, epoch):
            self.at = epoch

        def on_epoch_end(self, trainer):
            if trainer.epoch == self.at:
                raise RuntimeError("a fault in the middle of the run")

    settings = dict(data=str(data_dir), backbone="simple-cnn", weights="none", epochs=2, batch_size=8,
                    img_size=24, runs_dir=str(tmp_path), name="exp")
    with pytest.raises(RuntimeError):
        tlkit.finetune(callbacks=[FailAt(1)], resume_every_epochs=5, **{**settings, "epochs": 5})
    assert (tmp_path / "exp" / "best.safetensors").exists()  # an epoch was trained: the folder stays
    with pytest.raises(KeyboardInterrupt):
        tlkit.finetune(callbacks=[interrupt_before_training()], force=True, **settings)
    assert not (tmp_path / "exp").exists()
    assert "before anything was trained" in capsys.readouterr().err
    assert main(["finetune", "--data", str(data_dir), "--backbone", "simple-cnn", "--weights", "none", "--epochs", "1",
                 "--batch-size", "8", "--img-size", "24", "--runs-dir", str(tmp_path), "--name", "exp"]) == 0


def interrupt_before_training():
    from tlkit.callbacks import Callback

    class Interrupt(Callback):
        def on_epoch_start(self, trainer):
            raise KeyboardInterrupt

    return Interrupt()


def test_a_reader_that_goes_away_does_not_stop_the_run(tmp_path, data_dir):
    """`tlkit finetune ... 2>&1 | head -2`: the pipe closes after two lines, and the run still finishes and
    writes every output."""
    command = [sys.executable, "-m", "tlkit", "finetune", "--data", str(data_dir), *QUICK, "--epochs", "2",
               "--img-size", "24", "--runs-dir", str(tmp_path), "--name", "piped"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    process.stdout.readline()
    process.stdout.readline()
    process.stdout.close()  # what `head -2` does after its second line
    assert process.wait(timeout=300) == 0
    assert (tmp_path / "piped" / "report.json").is_file() and (tmp_path / "piped" / "best.safetensors").is_file()


@pytest.mark.parametrize("flags, words", [
    (["--lr", "nan"], "--lr must be a number above 0, not nan."),
    (["--label-smoothing", "2"], "--label-smoothing must be a number 0 or more and below 1, not 2."),
    (["--gamma", "-1", "--scheduler", "step"], "--gamma must be a number above 0 and below 1, not -1."),
    (["--trunk-lr-mult", "nan"], "--trunk-lr-mult must be a number above 0, not nan."),
    (["--momentum", "5"], "--momentum must be a number 0 or more and below 1, not 5."),
    (["--epochs", "1.5"], "--epochs must be a whole number 1 or more, not 1.5."),
])
def test_a_setting_out_of_range_is_one_message_and_writes_nothing(tmp_path, data_dir, capsys, flags, words):
    assert finetune_cli(tmp_path, data_dir, *flags, "--name", "bad") == 1
    err = error_of(capsys)
    assert words in err and "Traceback" not in err
    assert "diverged" not in err and "lower --lr" not in err  # --trunk-lr-mult nan was "try a lower --lr"
    assert not (tmp_path / "runs").exists()  # no run folder, no config.yaml blocking the name


def test_a_boolean_for_a_number_in_a_config_file_names_the_file_and_the_key(tmp_path, data_dir, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: true\n")
    assert finetune_cli(tmp_path, data_dir, "--config", str(recipe)) == 1
    assert f"{recipe}: epochs must be a whole number 1 or more, not true." in error_of(capsys)
    assert not (tmp_path / "runs").exists()


def test_a_momentum_the_schedule_does_not_use_is_said_at_the_start(tmp_path, data_dir, capsys):
    assert finetune_cli(tmp_path, data_dir, "--epochs", "1", "--optimizer", "sgd", "--momentum", "0.5") == 0
    assert ("--momentum 0.5 is not used: the onecycle schedule moves SGD's momentum itself, from 0.95 down to 0.85"
            in error_of(capsys))


def test_a_run_that_diverges_stops_with_a_message_not_a_score(tmp_path, data_dir, capsys):
    # It used to finish "validation accuracy of the saved model: 0.5000", rc 0, from NaN weights.
    assert finetune_cli(tmp_path, data_dir, "--epochs", "3", "--optimizer", "sgd", "--lr", "1e4", "--scheduler",
                        "none", "--monitor", "val_acc", "--precision", "fp32") == 1
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "the loss became nan in epoch 1" in err and "the training diverged" in err and "lower --lr" in err
    assert "accuracy of the saved model" not in captured.out and "Traceback" not in err


def test_a_run_records_its_folders_absolute_so_it_works_from_anywhere(tmp_path, data_dir, monkeypatch, capsys):
    """Started with a relative --data, the run's config.yaml names the folder absolutely: export finds the
    run's validation photos, and --resume its data, from another working directory."""
    import shutil

    import yaml

    shutil.copytree(data_dir, tmp_path / "project" / "data")
    monkeypatch.chdir(tmp_path / "project")
    assert main(["finetune", "--data", "data", *QUICK, "--epochs", "1", "--img-size", "24", "--name", "exp"]) == 0
    config = yaml.safe_load((tmp_path / "project" / "runs" / "exp" / "config.yaml").read_text())
    assert config["data"] == str(tmp_path / "project" / "data") and Path(config["runs_dir"]).is_absolute()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    run = str(tmp_path / "project" / "runs" / "exp")
    assert main(["export", "--format", "torchscript", "--checkpoint", run, "--out", "model.pt"]) == 0
    assert "real image(s)" in capsys.readouterr().err


def test_resuming_runs_latest_continues_the_run_it_names(tmp_path, data_dir):
    """`--resume runs/latest`: the run is claimed and written by its own name, and runs/latest still names it
    (it used to become a link to itself at the next best epoch)."""
    runs = tmp_path / "runs"
    base = ["--data", str(data_dir), *QUICK, "--img-size", "24", "--runs-dir", str(runs), "--scheduler", "step"]
    assert main(["finetune", *base, "--epochs", "1", "--name", "exp", "--resume-every-epochs", "1"]) == 0
    assert main(["finetune", "--resume", str(runs / "latest"), "--epochs", "2"]) == 0
    assert resolve_run(None, runs_dir=runs) == (runs / "exp").resolve()
    assert len((runs / "exp" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_cannot_stretch_a_schedule_planned_over_the_epochs(tmp_path, data_dir, capsys):
    runs = tmp_path / "runs"
    assert main(["finetune", "--data", str(data_dir), *QUICK, "--img-size", "24", "--runs-dir", str(runs), "--epochs",
                 "1", "--name", "exp", "--resume-every-epochs", "1", "--scheduler", "onecycle"]) == 0
    assert main(["finetune", "--resume", str(runs / "exp"), "--epochs", "2"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot change --epochs" in err and "--weights" in err and "Traceback" not in err


def test_precompute_features_takes_true_or_false_and_false_trains_the_head_on_the_images(tmp_path, data_dir, capsys):
    assert finetune_cli(tmp_path, data_dir, "--precompute-features", "false", "--unfreeze-after", "1", "--epochs", "2",
                        "--name", "images") == 0
    err = error_of(capsys)
    assert "epoch 1: the head on the images" in err and "cached features" not in err
    assert finetune_cli(tmp_path, data_dir, "--precompute-features", "maybe", "--name", "bad") == 1
    err = error_of(capsys)
    assert "--precompute-features must be true or false" in err and "Traceback" not in err
