"""The command line: help, exit codes, and user errors as one clean message."""

import subprocess
import sys

import pytest
import torch

from tlkit.cli import main

from conftest import make_checkpoint, make_flat, write_image


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("split", "check"):
        assert name in text


def test_subcommand_help_shows_defaults_and_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["split", "--help"])
    text = capsys.readouterr().out
    assert "(default: link)" in text and "example:" in text and "tlkit split data/train --val 2000" in text


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "tlkit", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("tlkit ")


def test_the_command_leaves_its_output_and_files_whole_and_its_exit_code(tmp_path):
    # `tlkit` ends with os._exit (no interpreter teardown): what it printed and wrote must all be there first.
    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})
    done = subprocess.run([sys.executable, "-m", "tlkit", "split", str(src), "--val", "0.5"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("┘")  # the table's last line, flushed
    assert len((tmp_path / "split.csv").read_text().splitlines()) == 13  # a header and every photo
    failed = subprocess.run([sys.executable, "-m", "tlkit", "check", str(tmp_path / "nowhere")], capture_output=True,
                            text=True)
    assert failed.returncode == 1 and "error:" in failed.stderr


def test_split_prints_the_table_and_writes(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})
    assert main(["split", str(src), "--val", "0.5"]) == 0
    captured = capsys.readouterr()
    assert "training" in captured.out and "validation" in captured.out
    assert (tmp_path / "training" / "cat").is_dir() and (tmp_path / "split.csv").is_file()


def test_dry_run_writes_nothing(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 6, "dog": 6})
    assert main(["split", str(src), "--val", "4", "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_user_errors_are_one_message_without_traceback(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 3, "dog": 3})
    assert main(["split", str(src), "--val", "6"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "only 6 usable images" in err and "Traceback" not in err
    assert main(["split", str(tmp_path / "nowhere"), "--val", "2"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_split_lists_skipped_files(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    (src / "readme.md").write_text("hi")
    write_image(src / "42.jpg")
    (src / "dog.99.jpg").write_bytes(b"")
    assert main(["split", str(src), "--val", "2"]) == 0
    err = capsys.readouterr().err
    assert "42.jpg" in err and "readme.md" in err and "dog.99.jpg" in err


def test_check_reports_and_strict_fails(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 3, "dog": 3})
    assert main(["check", str(src)]) == 0
    assert "no problems found" in capsys.readouterr().out
    (src / "cat.7.jpg").write_bytes(b"broken")
    write_image(src / "dog.8.png", mode="RGBA")
    assert main(["check", str(src)]) == 0
    captured = capsys.readouterr()
    assert "problems found: 1" in captured.out and "cat.7.jpg" in captured.err and "dog.8.png" in captured.err
    assert main(["check", "--strict", str(src)]) == 1
    assert "--strict" in capsys.readouterr().err


def test_quiet_silences_chatter(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    assert main(["split", str(src), "--val", "2", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_quiet_still_prints_errors(tmp_path, capsys):
    assert main(["split", str(tmp_path / "nowhere"), "--val", "2", "--quiet"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_quiet_and_debug_may_come_before_the_command(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 4, "dog": 4})
    assert main(["-q", "split", str(src), "--val", "2"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["--debug", "split", str(tmp_path / "elsewhere" / "nowhere"), "--val", "2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "does not exist" in err


@pytest.mark.parametrize("before", [True, False])
def test_quiet_predict_prints_nothing_but_writes_its_file(tmp_path, capsys, before):
    run = make_checkpoint(tmp_path / "runs" / "run")
    photos = make_flat(tmp_path / "photos", {"cat": 2, "dog": 2})
    predict = ["predict", str(photos), "--checkpoint", str(run), "--workers", "0", "--out", str(tmp_path / "p.csv")]
    assert main(["-q", *predict] if before else [*predict, "-q"]) == 0
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")  # not "4 images, 14 images/s" and its table
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 5


def test_check_reads_a_split_folder_as_its_two_subsets(tmp_path, capsys):
    src = make_flat(tmp_path / "data" / "train", {"cat": 4, "dog": 4})
    assert main(["split", str(src), "--val", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["check", str(tmp_path / "data")]) == 0  # training/ and validation/, not three classes
    captured = capsys.readouterr()
    assert "training (folders layout)" in captured.out and "validation (folders layout)" in captured.out
    assert "no problems found" in captured.out and "split.csv" not in captured.err
    (tmp_path / "data" / "training" / "bird").mkdir()  # a class folder training would refuse
    assert main(["check", str(tmp_path / "data")]) == 0
    captured = capsys.readouterr()
    assert "class folders with no usable image" in captured.err and "bird" in captured.err


def test_check_of_a_folder_without_usable_images_fails(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photos here")
    assert main(["check", str(tmp_path / "notes")]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "holds no usable labelled image" in err and "readme.txt" in err


def test_check_of_a_single_class_folder_is_a_problem(tmp_path, capsys):
    src = make_flat(tmp_path / "train", {"cat": 4})
    assert main(["check", str(src)]) == 0
    captured = capsys.readouterr()
    assert "problems found: 1" in captured.out and "one class only (cat)" in captured.err
    assert main(["check", "--strict", str(src)]) == 1


def test_debug_shows_the_traceback_behind_a_message(tmp_path, capsys):
    assert main(["split", str(tmp_path / "nowhere"), "--val", "2"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert main(["split", str(tmp_path / "nowhere"), "--val", "2", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "error:" in err


@pytest.mark.parametrize("fault, words", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9663676416 bytes"),
     "out of memory (the computer's, not a GPU's); try a smaller --batch-size"),
    (torch.OutOfMemoryError("CUDA out of memory"), "out of GPU memory; try a smaller --batch-size"),
    (OSError(28, "No space left on device", "predictions.csv"), "the disk is full writing predictions.csv"),
])
def test_a_fault_of_the_machine_is_one_message_from_any_command(tmp_path, capsys, monkeypatch, fault, words):
    import tlkit.check

    def failing(folder):
        raise fault

    monkeypatch.setattr(tlkit.check, "check_dataset", failing)  # what cmd_check calls, looked up at each call
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import tlkit.check

    def buggy(folder):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tlkit.check, "check_dataset", buggy)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["check", str(tmp_path)])
