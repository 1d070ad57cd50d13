"""scripts/gpu_checks.sh, rehearsed on the CPU: the call made on the GPU machine runs every step, with the same
argument passing, at tiny sizes, from the data `prepare` writes; a step that fails or skips fails the call."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_checks.sh"


def gpu_checks(*args: str, data: Path, out: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "GPU_CHECKS_DATA": str(data), "OUT": str(out), **env,
                   "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # this venv's python3
    for inherited in ("TLKIT_TEST_DEVICE", "TLKIT_TEST_PHOTOS", "TLKIT_NO_SKIPS", "GPU_CHECKS_DEVICE", "GPU_CHECKS_SMOKE"):
        environment.pop(inherited, None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment, timeout=900)


@pytest.fixture(scope="module")
def device_data(tmp_path_factory) -> Path:
    """What `prepare` carries to the device machine, with 24 photos of each class."""
    shared_data("dogs-vs-cats-2k")
    data = tmp_path_factory.mktemp("gpu-checks") / "device-data"
    done = gpu_checks("prepare", "--per-class", "24", data=data, out=data.parent / "unused")
    assert done.returncode == 0, done.stderr
    assert len(list((data / "photos").glob("*.jpg"))) == 48 and list((data / "wheels").glob("*.whl"))
    return data


@pytest.mark.slow
def test_the_rehearsal_runs_every_step_and_gets_a_figure_from_each(device_data, tmp_path):
    done = gpu_checks("all", "--device", "cpu", "--smoke", data=device_data, out=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    summary = (tmp_path / "summary.md").read_text()
    rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| ") and " | ok | " in line]
    assert [row[0].lstrip("| ") for row in rows] == ["test", "precompute", "predict", "finetune", "transfer", "quality"]
    assert all(row[3].strip(" |") for row in rows)  # a figure in every row
    assert "versions: python" in summary and "every step ran" in summary
    for step in ("test", "precompute", "transfer"):  # each step's log starts with the versions it ran on
        assert (tmp_path / f"{step}.log").read_text().startswith("versions: python")
    assert "batched decode of 26 JPEGs" in summary  # the decode test ran, on the photos prepare wrote


def test_a_gpu_test_that_skips_fails_the_call(device_data, tmp_path):
    """On a machine without CUDA the nvjpeg test can only skip, and the call must not count that as passed."""
    done = gpu_checks("all", "--only", "test", data=device_data, out=tmp_path)
    assert done.returncode != 0
    assert "| test | failed (exit 1) |" in (tmp_path / "summary.md").read_text()
    assert "TLKIT_NO_SKIPS" in (tmp_path / "test.log").read_text()


def test_a_step_without_its_photos_fails_the_call(tmp_path):
    empty = tmp_path / "no-data"
    (empty / "photos").mkdir(parents=True)
    done = gpu_checks("all", "--device", "cpu", "--smoke", "--only", "test,predict", data=empty, out=tmp_path / "out")
    assert done.returncode != 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| test | failed" in summary and "| predict | failed" in summary


def test_the_dry_run_shows_one_call_that_fits_twice_in_a_session(tmp_path):
    done = gpu_checks("--dry-run", data=tmp_path, out=tmp_path)
    assert done.returncode == 0
    call = next(line for line in done.stdout.splitlines() if line.strip().startswith("run("))
    timeout = int(call.split("timeout_s=")[1].rstrip(")"))
    assert 'carry=[".device-data"]' in call and 120 + 2 * timeout <= 900
    assert "no room" not in done.stdout and "over the budget" not in done.stdout


def test_unknown_steps_and_options_are_refused(tmp_path):
    assert gpu_checks("all", "--only", "tset", data=tmp_path, out=tmp_path).returncode == 2
    assert gpu_checks("all", "--fast", data=tmp_path, out=tmp_path).returncode == 2
    assert gpu_checks("prepare", "--size", "3", data=tmp_path / "data", out=tmp_path).returncode == 2
    for command in (("all", "--budget", "x"), ("--dry-run", "--budget", "-5"), ("prepare", "--per-class", "abc")):
        done = gpu_checks(*command, data=tmp_path / "data", out=tmp_path)
        assert done.returncode == 2 and f"{command[1]} takes a whole number above 0" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing prepared from a refused command
