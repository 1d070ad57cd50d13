"""Shared test helpers: tiny images and checkpoints made on the spot, the real photos in
../shared/data, an offline weights cache, and a callback that interrupts a run."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason it is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data beside the repo)")
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """TLKIT_NO_SKIPS=1 turns a skip into a failure: a check run to prove something (scripts/gpu_checks.sh
    on the device machine, and its rehearsal on the CPU) must not pass by skipping."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("TLKIT_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, which TLKIT_NO_SKIPS=1 forbids: {report.longrepr}"


def device_under_test() -> str:
    """The device of the tests marked gpu: TLKIT_TEST_DEVICE (cpu rehearses them with torchvision's CPU
    decoder, as `gpu_checks.sh all --device cpu` does), else cuda, skipped where there is none."""
    import torch

    device = os.environ.get("TLKIT_TEST_DEVICE", "cuda")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA (TLKIT_TEST_DEVICE=cpu rehearses it on the CPU)")
    return device


def real_photos() -> Path:
    """A flat folder of Kaggle photos: TLKIT_TEST_PHOTOS (the device machine has no ../shared; gpu_checks.sh
    carries its photos in .device-data), else ../shared's."""
    folder = os.environ.get("TLKIT_TEST_PHOTOS")
    if folder:
        if not any(Path(folder).glob("*.jpg")):
            pytest.fail(f"TLKIT_TEST_PHOTOS={folder} holds no .jpg photo")
        return Path(folder)
    return shared_data("dogs-vs-cats-2k") / "train"


def shared_photos(folder: Path, per_class: int) -> Path:
    """folder holding cat.0..N-1.jpg and dog.0..N-1.jpg of the shared photos (copies: ../shared is
    read-only, and a test may write beside them), or skip when ../shared is absent."""
    import shutil

    photos = shared_data("dogs-vs-cats-2k") / "train"
    folder.mkdir(parents=True)
    for label in ("cat", "dog"):
        for n in range(per_class):
            shutil.copy(photos / f"{label}.{n}.jpg", folder / f"{label}.{n}.jpg")
    return folder


def write_image(path: Path, size: tuple[int, int] = (16, 12), color: int = 0, mode: str = "RGB") -> Path:
    """A small image whose pixels depend on `color`, in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(color)
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)
    image.save(path)
    return path


def write_large_image(path: Path, side: int = 12_000) -> Path:
    """A side x side image of one grey, in the format the suffix names: 144 megapixels at 12000, over
    Pillow's Image.MAX_IMAGE_PIXELS but under twice it (where Pillow only warns, then decodes it whole),
    yet a few hundred KB on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (side, side), 90).save(path)
    return path


def make_flat(root: Path, counts: dict[str, int], suffix: str = ".jpg") -> Path:
    """A Kaggle-style flat folder: <class>.<n><suffix>."""
    for label, count in counts.items():
        for n in range(count):
            write_image(root / f"{label}.{n}{suffix}", color=zlib.crc32(f"{label}/{n}".encode()))
    return root


def make_foldered(root: Path, counts: dict[str, int], suffix: str = ".png") -> Path:
    """A class-foldered tree: <class>/<n><suffix>."""
    for label, count in counts.items():
        for n in range(count):
            write_image(root / label / f"{n}{suffix}", color=zlib.crc32(f"{label}/{n}".encode()))
    return root


def make_checkpoint(run_dir: Path, classes=("cat", "dog"), backbone: str = "simple-cnn", img_size: int = 32,
                    seed: int = 0, thresholds: list[float] | None = None) -> Path:
    """A run folder with best.safetensors + best.json of a randomly initialised small model (thresholds given: a
    multi-label one's, a threshold per class)."""
    import torch

    from tlkit import models
    from tlkit.checkpoint import point_latest
    from tlkit.checkpoint_format import CheckpointMeta, save_best

    torch.manual_seed(seed)
    made = models.create(backbone, num_classes=len(classes), weights="none", img_size=img_size)
    meta = CheckpointMeta(backbone=backbone, weights="none", classes=list(classes), preprocessing=made.preprocessing,
                          config={"data": str(run_dir / "no-data")},
                          task="single-label" if thresholds is None else "multi-label", thresholds=thresholds)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_best(run_dir, made.model.state_dict(), meta)
    point_latest(run_dir)
    return run_dir


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """The run folder of a randomly initialised simple-cnn for cat and dog (make_checkpoint's defaults)."""
    return make_checkpoint(tmp_path / "runs" / "tiny")


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty temporary caches, offline, and any attempt to open a connection fails the test.
    Modules that load weights use it for every test: pytestmark = pytest.mark.usefixtures(...)."""
    import torch

    from tlkit import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to open a connection: {args}")

    monkeypatch.setattr(weights.socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def interrupt_at(epoch: int):
    """A fine-tune callback that stops the run like Ctrl-C at the end of `epoch` (before its resume file)."""
    from tlkit.callbacks import Callback

    class InterruptAt(Callback):
        def on_epoch_end(self, trainer):
            if trainer.epoch == epoch:
                raise KeyboardInterrupt

    return InterruptAt()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads
    spin-waiting on each other made whole modules several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_learnable(root: Path, train_per_class: int = 12, val_per_class: int = 4, size: int = 24) -> Path:
    """DATA/training and DATA/validation where a class is told by brightness (dark cats, bright dogs)."""
    classes = ("cat", "dog")
    rng = np.random.default_rng(0)
    for subset, count in (("training", train_per_class), ("validation", val_per_class)):
        for label_index, label in enumerate(classes):
            folder = root / subset / label
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                base = 60 + 120 * label_index
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{n}.png")
    return root
