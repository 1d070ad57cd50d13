"""The raw files of MNIST, Fashion-MNIST and CIFAR-10, and scikit-learn's digits, as uint8 tensors.

Finds the files torchvision downloads (IDX, gzipped or not; CIFAR batches) in its layout
under --data-root or directly in it, and reads them without unpickling code. Downloads only
when they are absent and the network answers; otherwise names the files and the folder.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlkit.errors import TlkitError, option
from tlkit.runtime import info, relpath
from tlkit.weights import offline_reason

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Builtin:
    """A dataset torchvision downloads: where its raw files go under --data-root, and what they hold."""

    title: str
    folder: str  # torchvision's folder under --data-root (IDX files in <folder>/raw/)
    files: dict  # "train"/"test" -> (images, labels) IDX names, or the CIFAR batch names
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # of the training set, per channel
    std: tuple[float, ...]
    flip: bool = False  # whether a mirrored image is still of its class (not for digits)


def _idx_files(prefix: str) -> tuple[str, str]:
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


IDX_SPLITS = {"train": _idx_files("train"), "test": _idx_files("t10k")}
CIFAR_BIN = {"train": tuple(f"data_batch_{n}.bin" for n in range(1, 6)), "test": ("test_batch.bin",)}
CIFAR_URL, CIFAR_MD5 = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"
BUILTINS = {
    "mnist": Builtin("MNIST", "MNIST", IDX_SPLITS, tuple(str(n) for n in range(10)), (0.1307,), (0.3081,)),
    "fashion-mnist": Builtin(
        "Fashion-MNIST", "FashionMNIST", IDX_SPLITS,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,)),
    "cifar10": Builtin(
        "CIFAR-10", "cifar-10-batches-bin", CIFAR_BIN,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), flip=True),
}


# ---------------------------------------------------------------- raw files


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not, checked to be whole."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:  # a cut .gz ends early (EOFError) or fails its CRC (OSError)
        raise TlkitError(f"{relpath(path)} cannot be read ({error}): it is damaged or truncated; delete it "
                         "and download it again.") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_TYPES or not 1 <= data[3] <= 4:
        raise TlkitError(f"{relpath(path)} is not an IDX file (MNIST's format); delete it and download it again.")
    ndim, dtype = data[3], np.dtype(IDX_TYPES[data[2]])
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = data[4 + 4 * ndim:]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(body) != expected:
        raise TlkitError(f"{relpath(path)} is truncated: it holds {len(body):,} bytes of data where its header "
                         f"promises {expected:,} ({' x '.join(map(str, dims))}); delete it and download it again.")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 1, H, W] and int64 labels [N] from an images/labels IDX pair."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise TlkitError(f"{relpath(images_path)} ({images.shape}) and {relpath(labels_path)} ({labels.shape}) "
                         "are not N images and their N labels.")
    return torch.from_numpy(images.astype(np.uint8)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _find(folders: list[Path], name: str) -> Path | None:
    """`name`, or `name.gz`, in the first folder holding it."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    records = np.fromfile(path, dtype=np.uint8)
    if records.size % 3073:
        raise TlkitError(f"{relpath(path)} is truncated ({records.size:,} bytes is not a whole number of "
                         "3,073-byte CIFAR records); delete it and download it again.")
    records = records.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays, lists and dicts, and refuses anything else (no code runs)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def _read_cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's python-version batch (cifar-10-batches-py/data_batch_1 ...)."""
    try:
        with open(path, "rb") as handle:
            batch = _ArraysOnly(handle, encoding="latin1").load()
        return np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch["labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise TlkitError(f"{relpath(path)} is not a whole CIFAR-10 batch ({error}); delete it and download "
                         "it again.") from None


def _raw_paths(spec: Builtin, data_root: Path, split: str) -> list[Path] | None:
    """The raw files of one split, wherever they are under data_root; None when any is missing."""
    if not spec.folder.startswith("cifar"):
        found = [_find([data_root / spec.folder / "raw", data_root], name) for name in spec.files[split]]
        return found if all(found) else None
    binary_names = spec.files[split]
    python_names = tuple(name.removesuffix(".bin") for name in binary_names)  # torchvision's download
    for folder, names in ((data_root / spec.folder, binary_names), (data_root / "cifar-10-batches-py", python_names),
                          (data_root, binary_names), (data_root, python_names)):
        if all((folder / name).is_file() for name in names):
            return [folder / name for name in names]
    return None


def _read_split(spec: Builtin, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    if not spec.folder.startswith("cifar"):
        return read_idx_pair(*paths)
    parts = [_read_cifar_pickle(p) if p.suffix != ".bin" else _read_cifar_bin(p) for p in paths]
    return (torch.from_numpy(np.concatenate([images for images, _ in parts])),
            torch.from_numpy(np.concatenate([labels for _, labels in parts]).astype(np.int64)))


def _download(name: str, spec: Builtin, data_root: Path) -> None:
    """Fetch the raw files into torchvision's layout, or say which files to put where."""
    import socket

    expected = ", ".join(f for split in ("train", "test") for f in spec.files[split])
    where = data_root / spec.folder / ("" if spec.folder.startswith("cifar") else "raw")
    url = CIFAR_URL if name == "cifar10" else "https://ossci-datasets.s3.amazonaws.com/mnist/"
    reason = offline_reason(url if name != "fashion-mnist" else "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
    advice = (f"{spec.title} needs {expected} (IDX files may be .gz) in {relpath(where)}/ or directly in "
              f"{relpath(data_root)}/; copy them there, or point {option('data_root')} at the folder that holds them.")
    if reason:
        raise TlkitError(f"{spec.title} is not in {relpath(data_root)} and cannot be downloaded ({reason}). {advice}")
    info(f"downloading {spec.title} into {relpath(data_root)}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # torchvision's urllib calls give no timeout: a stalled server must not hang us
    try:
        if name == "cifar10":
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(CIFAR_URL, str(data_root), md5=CIFAR_MD5, remove_finished=True)
        else:
            import torchvision.datasets as tvd

            (tvd.MNIST if name == "mnist" else tvd.FashionMNIST)(str(data_root), train=True, download=True)
    except (OSError, RuntimeError) as error:
        raise TlkitError(f"downloading {spec.title} failed ({error}). {advice}") from None
    finally:
        socket.setdefaulttimeout(previous)


def load_builtin(name: str, data_root: Path, download: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": (images, labels), "test": (...)} of MNIST, Fashion-MNIST or CIFAR-10, as uint8 [N, C, H, W]."""
    spec, data_root = BUILTINS[name], Path(data_root)
    paths = {split: _raw_paths(spec, data_root, split) for split in ("train", "test")}
    if paths["train"] is None:
        if not download:
            raise TlkitError(f"{spec.title}: no training files in {relpath(data_root)} and --no-download was given.")
        _download(name, spec, data_root)
        paths = {split: _raw_paths(spec, data_root, split) for split in ("train", "test")}
    return {split: _read_split(spec, found) for split, found in paths.items() if found is not None}


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images, 0-16 grey levels) as uint8 [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(digits.target.astype(np.int64))
