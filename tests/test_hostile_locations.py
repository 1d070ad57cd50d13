"""Hostile output and data locations over every writing command: a file where the output folder should be,
a read-only file system, a folder the user may not write to (an unprivileged process), a read-only data
folder whose cache cannot be built, a full disk. Each is one message naming the location and what to do,
found before any compute (atomic.check_writable), never a traceback; the inputs are unchanged and nothing
is left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_hostile_values import (FIRST_WORK, Reached, base_argv, place, stop_at_first_work,  # noqa: F401 (fixture)
                                 tree_digest)
from tlkit import cli

# precompute's output is its cache, checked before the trunk's pass (after the backbone is made).
WORK = {**FIRST_WORK, "precompute": ("tlkit.features", "_compute_subset")}
WRITERS = ("split", "audit", "finetune", "train", "lr-find", "precompute", "predict", "evaluate", "export")
# The flag naming each command's output location.
OUTPUT_FLAG = {"finetune": "--runs-dir", "train": "--runs-dir", "precompute": "--cache-dir"}


def argv_with_output(command: str, place: Path, output: Path) -> list[str]:
    """base_argv with its output flag pointed at `output` (a folder, or a file inside it)."""
    argv = base_argv(command, place)
    flag = OUTPUT_FLAG.get(command, "--out")
    suffix = {"lr-find": "plot.png", "predict": "p.csv", "export": "m.onnx"}.get(command)
    argv[argv.index(flag) + 1] = str(output / suffix if suffix else output)
    return argv


def run_in_process(argv: list[str], monkeypatch, capsys) -> tuple[int | None, str]:
    """(exit code, or None where the work started; stderr in one line)."""
    stop_at_first_work(monkeypatch, argv[0], WORK)
    try:
        code = cli.main(argv)
    except Reached:
        code = None
    return code, " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("command", WRITERS)
def test_a_file_where_the_output_folder_should_be_is_one_message_before_any_work(place, tmp_path, monkeypatch, capsys,
                                                                               command):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    before = tree_digest(place / "flat"), tree_digest(place / "data")
    code, err = run_in_process(argv_with_output(command, place, blocker / "inside"), monkeypatch, capsys)
    assert code == 1, err
    assert "blocker is a file, where a folder should be" in err and "Traceback" not in err
    assert blocker.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["blocker"]
    assert (tree_digest(place / "flat"), tree_digest(place / "data")) == before


LABEL_FILE_READERS = {"split": 1, "audit": 1, "evaluate": 1, "train": 2}  # where each command's data path is


@pytest.mark.parametrize("command", sorted(LABEL_FILE_READERS))
def test_a_label_file_given_for_data_meets_the_same_output_checks(place, tmp_path, monkeypatch, capsys, command):
    """A file where the output folder should be, with the photos named by a label file: the same one message."""
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    argv = argv_with_output(command, place, blocker / "inside")
    argv[LABEL_FILE_READERS[command]] = str(place / "labels.csv")
    code, err = run_in_process(argv, monkeypatch, capsys)
    assert code == 1 and "blocker is a file, where a folder should be" in err and "Traceback" not in err, err
    assert blocker.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["blocker"]


def mounted_tmpfs(tmp_path_factory, options: str):
    """A small tmpfs mounted with `options` while the module's tests run (root can mount one), or skip."""
    mount = tmp_path_factory.mktemp("tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root)")
    return mount


@pytest.fixture(scope="module")
def read_only_mount(tmp_path_factory):
    mount = mounted_tmpfs(tmp_path_factory, "ro,size=64k")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("command", WRITERS)
def test_a_read_only_file_system_is_one_message_before_any_work(place, read_only_mount, monkeypatch, capsys, command):
    code, err = run_in_process(argv_with_output(command, place, read_only_mount / "out"), monkeypatch, capsys)
    assert code == 1, err
    flag = OUTPUT_FLAG.get(command, "--out")
    assert "read-only file system" in err and f"choose another {flag} DIR" in err or "--cache-dir DIR" in err, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A 64 KB tmpfs filled to the last byte, or skip."""
    mount = mounted_tmpfs(tmp_path_factory, "size=64k")
    descriptor = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError:  # full
        pass
    finally:
        os.close(descriptor)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("command", ["split", "audit", "finetune", "predict"])
def test_a_full_disk_is_one_message_before_any_work(place, full_disk, monkeypatch, capsys, command):
    code, err = run_in_process(argv_with_output(command, place, full_disk / "out"), monkeypatch, capsys)
    assert code == 1 and "the disk is full" in err and "Traceback" not in err, err
    assert sorted(os.listdir(full_disk)) == ["filler"]


def unprivileged() -> list[str]:
    """A prefix that runs a command as a user to whom file modes apply: root without the capabilities that
    override them (the interpreter under /root stays reachable), or nothing for a user already; skip where
    neither is possible."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    if not shutil.which("setpriv") or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot drop root's file-mode override here")
    return prefix


def run_as_user(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([*unprivileged(), sys.executable, "-m", "tlkit", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["split", "audit", "finetune", "predict"])
def test_a_folder_the_user_may_not_write_is_one_message_before_any_work(place, tmp_path, command):
    """The examples of issue 30: each was a PermissionError traceback (audit's after its feature pass)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    before = tree_digest(place / "data")
    done = run_as_user(argv_with_output(command, place, locked / "out"), tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    err = " ".join(done.stderr.split())
    assert "you have no permission to write there" in err and "locked" in err, err
    assert "features: computing" not in err and not os.listdir(locked)
    assert tree_digest(place / "data") == before


def test_a_data_folder_the_user_may_not_write_asks_for_a_cache_dir(tmp_path):
    """The cache beside the photos cannot be made: said before the trunk runs, with --cache-dir to give."""
    from conftest import make_learnable

    data = make_learnable(tmp_path / "data", 3, 2, size=16)
    for folder in (data, *data.rglob("*")):
        if folder.is_dir():
            folder.chmod(0o555)
    before = tree_digest(data)
    done = run_as_user(["precompute", "--data", str(data), "--backbone", "simple-cnn", "--weights", "none",
                        "--device", "cpu"], tmp_path)
    err = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in err and "--cache-dir DIR" in err, err
    assert tree_digest(data) == before and not (data / ".tlkit-cache").exists()
