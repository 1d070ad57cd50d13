"""Built-in datasets read from raw files the tests write (no network), digits, folders, --val,
normalisation and what each model is fed; every model trains one small batch on the CPU."""

from __future__ import annotations

import gzip
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_foldered, write_large_image
from tlkit import datasets, models, rawdata
from tlkit.config import make_config
from tlkit.decode import Normalizer
from tlkit.errors import TlkitError
from tlkit.run_backbone import create_backbone, resolve_preprocessing

IDX_NAMES = {split: rawdata.IDX_SPLITS[split] for split in ("train", "test")}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of uint8 values, gzipped when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as handle:
        handle.write(data)
    return path


def tiny_digits(count: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """`count` images whose brightest row band says their class (0-9), so a model can learn them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 40, size=(count, size, size))
    for image, label in zip(images, labels):
        band = label * size // 10
        image[band:band + size // 10, :] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_mnist(folder: Path, train: int = 40, test: int = 20, gz: bool = True) -> Path:
    """The four MNIST files in `folder` (torchvision's raw/ layout or any other)."""
    suffix = ".gz" if gz else ""
    for split, count in (("train", train), ("test", test)):
        images, labels = tiny_digits(count, seed=len(split))
        images_name, labels_name = IDX_NAMES[split]
        write_idx(folder / f"{images_name}{suffix}", images)
        write_idx(folder / f"{labels_name}{suffix}", labels)
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("TLKIT_OFFLINE", "1")  # a test must never reach for the network


# ---------------------------------------------------------------- raw files


@pytest.mark.parametrize("layout", ["MNIST/raw", "."])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files_gzipped_or_not_in_either_layout(tmp_path, layout, gz):
    write_mnist(tmp_path / layout, gz=gz)
    splits = rawdata.load_builtin("mnist", tmp_path)
    images, labels = splits["train"]
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [n % 10 for n in range(40)]
    assert splits["test"][0].shape == (20, 1, 28, 28)
    expected, _ = tiny_digits(40, seed=len("train"))
    assert torch.equal(images[:, 0], torch.from_numpy(expected))


def test_fashion_mnist_uses_its_own_folder(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw")
    source = datasets.open_source("fashion-mnist", data_root=tmp_path, val=10)
    assert source.classes[0] == "T-shirt/top" and source.sizes == {"training": 30, "validation": 10, "test": 20}


def test_missing_files_offline_name_files_and_folder_quickly(tmp_path):
    started = time.perf_counter()
    with pytest.raises(TlkitError) as error:
        datasets.open_source("mnist", data_root=tmp_path / "nowhere")
    message = str(error.value)
    assert time.perf_counter() - started < 5
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "MNIST/raw" in message and "cannot be downloaded" in message and "TLKIT_OFFLINE" in message


def test_truncated_idx_file_is_named(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TlkitError, match="train-images-idx3-ubyte is truncated: it holds 31,260 bytes"):
        rawdata.load_builtin("mnist", tmp_path)


def test_cut_gzip_and_foreign_file_are_refused(tmp_path):
    write_mnist(tmp_path)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])
    with pytest.raises(TlkitError, match="damaged or truncated"):
        rawdata.load_builtin("mnist", tmp_path)
    gz.write_bytes(gzip.compress(b"<html>not found</html>"))
    with pytest.raises(TlkitError, match="is not an IDX file"):
        rawdata.load_builtin("mnist", tmp_path)


def _cifar_records(count: int) -> bytes:
    labels = np.arange(count, dtype=np.uint8) % 10
    pixels = np.tile(labels[:, None], (1, 3072)).astype(np.uint8)
    return np.concatenate([labels[:, None], pixels], axis=1).tobytes()


def test_cifar10_binary_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in (*rawdata.CIFAR_BIN["train"], *rawdata.CIFAR_BIN["test"]):
        (folder / name).write_bytes(_cifar_records(4))
    splits = rawdata.load_builtin("cifar10", tmp_path)
    images, labels = splits["train"]
    assert images.shape == (20, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3] * 5
    assert int(images[3].float().mean()) == 3
    (folder / "test_batch.bin").write_bytes(_cifar_records(4)[:-10])
    with pytest.raises(TlkitError, match="test_batch.bin is truncated"):
        rawdata.load_builtin("cifar10", tmp_path)


def test_cifar10_python_batches_are_read_without_running_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {"data": np.full((2, 3072), 7, dtype=np.uint8), "labels": [1, 2]}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch))
    images, labels = rawdata.load_builtin("cifar10", tmp_path)["train"]
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == [1, 2] * 5

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": [1]}))
    with pytest.raises(TlkitError, match="builtins.print is not allowed"):
        rawdata.load_builtin("cifar10", tmp_path)


# ---------------------------------------------------------------- sources, --val, normalisation


def test_digits_carve_a_stratified_validation_set():
    source = datasets.open_source("digits", val="0.2")
    assert source.sizes == {"training": 1438, "validation": 359}
    assert (source.channels, source.image_size) == (1, 8)
    assert torch.bincount(source.val[1]).tolist() == pytest.approx([36] * 10, abs=1)
    assert int(source.train[0].max()) == 255


@pytest.mark.parametrize("val", ["1797", "5000"])
def test_val_larger_than_the_data(val):
    with pytest.raises(TlkitError, match=f"--val {val} asks for {val} validation images but there are only 1797"):
        datasets.open_source("digits", val=val)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(TlkitError, match="unknown dataset 'mnsit'.*cifar10, fashion-mnist, mnist, digits, or a folder"):
        datasets.open_source("mnsit")


def test_normalisation_follows_data_and_model(tmp_path):
    write_mnist(tmp_path)
    source = datasets.open_source("mnist", data_root=tmp_path, val=10)
    lenet = models.create("lenet", 10, weights="none")
    assert resolve_preprocessing(lenet, source).mean == (0.1307,)  # MNIST's known statistics
    wide = models.create("simple-cnn", 10, weights="none", img_size=28)
    assert resolve_preprocessing(wide, source).std == (0.3081,) * 3  # repeated for a 3-channel model
    digits = datasets.open_source("digits", mean=0.5, std="0.25")
    assert resolve_preprocessing(lenet, digits).mean == (0.5,) and resolve_preprocessing(lenet, digits).std == (0.25,)
    measured = resolve_preprocessing(lenet, datasets.open_source("digits"))
    assert 0.2 < measured.mean[0] < 0.4 and 0.3 < measured.std[0] < 0.5  # computed from the training set


def test_alexnet_recipe_feeds_96px_three_channel_digits(tmp_path):
    write_mnist(tmp_path)
    source = datasets.open_source("mnist", data_root=tmp_path, val=10, mean=0.2, std=0.3)
    with torch.device("meta"):
        alexnet = models.create("alexnet", 10, weights="none", img_size=96)
    prep = resolve_preprocessing(alexnet, source)
    assert (prep.in_chans, prep.input_size, prep.mean, prep.resize_size) == (3, (96, 96), (0.2,) * 3, None)
    data = source.make_data(prep, batch_size=8, workers=0, device=torch.device("cpu"), seed=0, augment="none")
    images, labels, skipped = next(iter(data.train_loader))
    assert images.shape == (8, 3, 96, 96) and images.dtype == torch.uint8 and skipped == []
    assert torch.equal(images[:, 0], images[:, 2])  # the grey channel repeated
    assert data.test_loader is not None and len(data.test_set) == 20


def test_augmentation_is_a_shift_fixed_by_the_sample_seed():
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    dataset = datasets.MemoryImages(images, torch.tensor([0]), in_chans=1, size=(8, 8), augment="light")
    first, again, other = dataset[(0, 11)][0], dataset[(0, 11)][0], [dataset[(0, seed)][0] for seed in range(20)]
    assert torch.equal(first, again)
    assert any(not torch.equal(image, images[0]) for image in other)
    assert torch.equal(dataset[0][0], images[0])  # no seed (validation): untouched


def test_folder_of_class_folders_carves_val_and_split_folder_refuses_it(tmp_path):
    make_foldered(tmp_path / "photos", {"cat": 6, "dog": 6})
    source = datasets.open_source(str(tmp_path / "photos"), val="4")
    assert source.classes == ["cat", "dog"] and source.sizes == {"training": 8, "validation": 4}
    lenet = models.create("lenet", 2, weights="none", in_chans=3, img_size=16)
    prep = resolve_preprocessing(lenet, source)
    data = source.make_data(prep, batch_size=4, workers=0, device=torch.device("cpu"), seed=0)
    images, labels, _ = next(iter(data.train_loader))
    assert images.shape == (4, 3, 16, 16) and len(data.val_set) == 4
    make_foldered(tmp_path / "split" / "training", {"cat": 2, "dog": 2})
    make_foldered(tmp_path / "split" / "validation", {"cat": 1, "dog": 1})
    assert datasets.open_source(str(tmp_path / "split")).sizes == {"training": 4, "validation": 2}
    with pytest.raises(TlkitError, match="already holds validation/; leave out --val"):
        datasets.open_source(str(tmp_path / "split"), val="2")


def test_a_first_photo_over_the_pixel_limit_is_skipped_by_training_as_everywhere(tmp_path):
    """The channel count comes from the first photo that opens; the loaders skip the refused one."""
    make_foldered(tmp_path / "photos", {"cat": 6, "dog": 6})
    write_large_image(tmp_path / "photos" / "cat" / "0.png")  # grey, where the others are RGB
    source = datasets.open_source(str(tmp_path / "photos"), val="4")
    lenet = models.create("lenet", 2, weights="none", in_chans=3, img_size=16)
    data = source.make_data(resolve_preprocessing(lenet, source), batch_size=4, workers=0, device=torch.device("cpu"),
                            seed=0)
    skipped = [path for loader in (data.train_loader, data.val_loader) for *_, paths in loader for path in paths]
    assert source.channels == 3
    assert [Path(path).relative_to(tmp_path / "photos").as_posix() for path in skipped] == ["cat/0.png"]


# ---------------------------------------------------------------- every model, one batch


MODELS = [("lenet", None), ("mnist-net", None), ("mlp", None), ("mlp-relu", None), ("mlp-bn", None),
          ("simple-cnn", None), ("alexnet", 64), ("resnet18", 32), ("timm:resnet18", 32)]


@pytest.mark.parametrize("name,img_size", MODELS)
def test_every_model_trains_one_batch_of_mnist(tmp_path, name, img_size):
    write_mnist(tmp_path, train=20, test=0)
    source = datasets.open_source("mnist", data_root=tmp_path, val=4)
    config = make_config({"backbone": name, "weights": "none", "img_size": img_size})
    backbone = create_backbone(config, source.classes, source)
    prep = backbone.preprocessing
    data = source.make_data(prep, batch_size=4, workers=0, device=torch.device("cpu"), seed=0)
    images, labels, _ = next(iter(data.train_loader))
    backbone.model.train()
    loss = torch.nn.functional.cross_entropy(backbone.model(Normalizer(prep, torch.device("cpu"))(images)), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in backbone.model.parameters() if p.requires_grad)
    expected_chans = 1 if models.REGISTRY.get(name, models.REGISTRY["resnet18"]).family == "classic" else 3
    assert images.shape[1] == expected_chans


def test_a_model_too_small_for_the_data_names_layer_and_size():
    source = datasets.open_source("digits")
    config = make_config({"backbone": "mnist-net", "weights": "none"})
    with pytest.raises(TlkitError, match=r"mnist-net cannot take 1x8x8 images: layer conv2.0 \(Conv2d\) is given "
                                         r"20x2x2.*add --img-size 16"):
        create_backbone(config, source.classes, source)
