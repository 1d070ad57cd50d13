"""Precompute: run a frozen trunk over the images once and cache its features on disk.

Cached features are an input of their own (FeatureLoader; tlkit/inputs.py), not a mode of the model. A
cache is valid only for the exact backbone, trunk weights (hashed tensors), preprocessing,
views and files (path, size, modification time) it was made from; anything else makes
tlkit recompute and say why. Written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from tlkit import distributed
from tlkit.augment import view_seed
from tlkit.backbone import for_inference
from tlkit.cache import (
    CACHE_FORMAT, commit, default_cache_root, digest_rows, file_rows, kept_rows, label_array, new_staging, read_manifest,
    subset_entry, to_device, why_stale,
)
from tlkit.data import EpochRows, SplitFolders, open_split, train_load
from tlkit.decode import ImageBatches
from tlkit.errors import option
from tlkit.runtime import (
    Compute, inference_batch_size, info, progress, relpath,
)
from tlkit.split import SUBSETS

STALE_REASONS = {
    "format": "the cache format changed",
    "backbone": "another backbone",
    "trunk_weights_sha256": "other trunk weights",
    "preprocessing": "other preprocessing (image size, resize, mean/std)",
    "classes": "other classes",
    "views": "another number of augmented views",
    "augment": "another augmentation of the views",
    "dtype": "another feature dtype",
    "compute": "another arithmetic (bf16 vs fp32, or another device's bf16)",
}


@dataclass
class FeatureSet:
    """One subset's cached features; rows whose image failed to decode are left out."""

    features: np.ndarray  # float16 [N, D], or [K, N, D] for K augmented views (memory-mapped)
    labels: np.ndarray  # int64 [N], or a multi-label split's 0/1 float32 [N, L] (cache.label_array)
    files: list[str]  # relative to the subset folder, in row order


def weights_digest(module: torch.nn.Module) -> str:
    """A hash of the tensors themselves: two checkpoints with one name are told apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_identity(backbone, classes: list[str], files: dict[str, list], views: int, dtype: str,
                   compute: str = "fp32", augment: str = "none") -> dict:
    """Everything a cache depends on, in JSON types; the manifest stores it to explain a miss."""
    identity = {
        "format": CACHE_FORMAT,
        "backbone": backbone.name,
        "trunk_weights_sha256": weights_digest(backbone.trunk),
        "preprocessing": backbone.preprocessing.to_dict(),
        "classes": classes,
        "views": views,
        "augment": augment,  # of the views; "none" without views
        "dtype": dtype,
        "compute": compute,  # "cuda-bf16", "cpu-bf16" or "fp32": bf16 features are not the ones an fp32 run would see
        "files_sha256": {subset: digest_rows(rows) for subset, rows in files.items()},
    }
    return json.loads(json.dumps(identity))  # tuples become lists, as they come back from the manifest


def cache_dir_for(cache_root: Path, backbone_name: str) -> Path:
    """One cache folder per backbone; `timm:resnet50` -> `timm-resnet50`."""
    return Path(cache_root) / backbone_name.replace(":", "-").replace("/", "-")


def split_cache_dir(split_root: Path, cache_root: Path | str | None, backbone_name: str) -> Path:
    """Where precompute keeps a split's features: under cache_root (default: the split's own), one per backbone."""
    return cache_dir_for(cache_root or default_cache_root(split_root), backbone_name)


def run_trunk(trunk: torch.nn.Module, batches: ImageBatches, rows: np.ndarray, compute: Compute,
               on_progress) -> None:
    """Fill rows[i] with the trunk's features of image i (images that fail to decode stay zero)."""
    with torch.inference_mode(), compute.autocast():
        for batch in batches:
            rows[batch.indices] = trunk(batch.images).float().cpu().numpy()
            on_progress(len(batch.indices))


def _compute_subset(backbone, trunk: torch.nn.Module, subset_dir: Path, rows: list, target: Path, *, views: int,
                    augment: str, dtype: str, compute: Compute, batch_size: int, workers: int,
                    on_progress) -> dict[str, str]:
    """Write target (.npy, memory-mapped while filled); returns {failed file: reason}. With views, view k
    of each image is the training augmentation `augment` drawn from a seed fixed by (k, file).

    Under torchrun each process computes its share of the rows and rank 0 writes them all, in order.
    """
    mine = distributed.shard(range(len(rows)))  # every row in a single process
    paths = [subset_dir / rows[index][0] for index in mine]
    shape = (views, len(mine), backbone.feature_dim) if views else (len(mine), backbone.feature_dim)
    if distributed.world_size() == 1:
        array = _open_target(target, shape, dtype)
    else:
        array = np.zeros(shape, dtype=dtype)  # this share, in memory until rank 0 gathers it
    augmented = train_load(backbone.preprocessing, augment)
    loads = [partial(_view, augmented, view) for view in range(views)] or [None]
    failures: dict[int, str] = {}
    for view, load in enumerate(loads):
        batches = ImageBatches(paths, backbone.preprocessing, device=compute.device, batch_size=batch_size,
                               workers=workers, load=load)
        run_trunk(trunk, batches, array[view] if views else array, compute, on_progress)
        failures.update({mine[index]: why for index, why in batches.failures.items()})
    if distributed.world_size() > 1:  # rank 0 writes every process's share into target, in row order
        array, failures = distributed.unshard_rows(array, failures, len(rows), everywhere=False,
                                                   allocate=partial(_open_target, target)) or (array, failures)
    if isinstance(array, np.memmap):  # the file target (the other ranks hold only their share, in memory)
        array.flush()
    del array
    return {rows[index][0]: why for index, why in sorted(failures.items())}


def _view(augmented, view: int, path: Path) -> torch.Tensor:
    return augmented(path, seed=view_seed(view, path))


def _open_target(target: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=shape)


def precompute(backbone, data: Path | SplitFolders, *, compute: Compute, cache_root: Path | None = None,
               batch_size: int | None = None, workers: int = 0, views: int = 0, augment: str = "default",
               dtype: str = "float16", force: bool = False) -> dict[str, FeatureSet]:
    """Features of DATA/training and DATA/validation from the cache, computing them if stale.

    compute: the device and arithmetic (bf16 autocast or fp32), as training runs.
    views: K augmented views of each training image (augmented as `augment` names), beside none.
    batch_size None: runtime.inference_batch_size."""
    split = open_split(data)
    folders = {subset: split.subset(subset) for subset in SUBSETS}
    files = {subset: file_rows(folder, split.images(subset)) for subset, folder in folders.items()}
    cache_dir = split_cache_dir(split.root, cache_root, backbone.name)
    return precompute_folders(backbone, folders, files, split.classes, cache_dir, compute=compute,
                              batch_size=batch_size, workers=workers, views=views, augment=augment, dtype=dtype,
                              force=force)


def precompute_folders(backbone, folders: dict[str, Path], files: dict[str, list], classes: list[str], cache_dir: Path,
                       *, compute: Compute, batch_size: int | None = None, workers: int = 0, views: int = 0,
                       augment: str = "default", dtype: str = "float16", force: bool = False) -> dict[str, FeatureSet]:
    """precompute's work for any named subsets: folders[name] holds files[name] (cache.file_list rows, paths
    relative to it); the views go to a subset named training. `tlkit audit` caches an unsplit folder so."""
    identity = cache_identity(backbone, classes, files, views, dtype, compute.arithmetic, augment if views else "none")
    device = compute.device
    distributed.setup(device)
    # Decided once, by rank 0: every process must take the same branch (the compute gathers).
    reason = option("force", True) if force else distributed.on_main(
        lambda: why_stale(cache_dir, identity, STALE_REASONS))
    if reason is None:
        info(f"features: using the cache in {relpath(cache_dir)}")
        return load_cache(cache_dir)
    info(f"features: computing ({reason}) into {relpath(cache_dir)}; {compute.words()}")
    # Folded as predict folds (for_inference): the features differ from the unfolded trunk's by rounding only,
    # bf16's or 1e-6 in fp32, and the trunk is faster (fold_batchnorm).
    trunk = for_inference(backbone.trunk, backbone.preprocessing, device)
    batch_size = inference_batch_size(device, batch_size)
    rows = sum(len(rows) * (max(1, views) if subset == "training" else 1) for subset, rows in files.items())
    needed = rows * backbone.feature_dim * np.dtype(dtype).itemsize
    staging = distributed.on_main(lambda: new_staging(cache_dir, needed, "the features"))
    subsets, started = {}, time.perf_counter()
    with progress() as bar:
        for subset in files:
            subset_views = views if subset == "training" else 0
            share = len(distributed.shard(files[subset]))
            task = bar.add_task(f"features {subset}", total=share * max(1, subset_views))
            failed = _compute_subset(
                backbone, trunk, folders[subset], files[subset], staging / f"{subset}.npy", views=subset_views,
                augment=augment, dtype=dtype, compute=compute, batch_size=batch_size, workers=workers,
                on_progress=lambda n, task=task: bar.advance(task, n))
            subsets[subset] = subset_entry(subset, files[subset], failed)
    summary = {"holds": f"{backbone.name} features", "input_size": list(backbone.preprocessing.input_size),
               "views": views}
    commit(staging, cache_dir, identity=identity, subsets=subsets, summary=summary)
    seconds = time.perf_counter() - started
    info(f"features: {rows:,} image views in {seconds:.1f} s ({rows / seconds:,.0f} a second)")
    return load_cache(cache_dir)


def load_cache(cache_dir: Path) -> dict[str, FeatureSet]:
    """The subsets of a complete cache, memory-mapped; failed images' rows left out."""
    sets = {}
    for subset, entry in read_manifest(cache_dir)["subsets"].items():
        features = np.load(cache_dir / f"{subset}.npy", mmap_mode="r")
        keep = kept_rows(entry)
        if len(keep) < len(entry["files"]):
            features = features[..., keep, :]  # copies: only when some image failed
        sets[subset] = FeatureSet(features=features, labels=label_array(entry["labels"])[keep],
                                  files=[entry["files"][i] for i in keep])
    return sets


class FeatureLoader(EpochRows):
    """Cached features in batches shaped like the image loaders' (features, labels, skipped).

    Held on the device when they fit, so an epoch is a few hundred index lookups. The order
    comes from (seed, epoch) exactly as data.EpochSampler draws it, which makes training from
    the cache step for step the same as training through a frozen trunk. With K augmented
    views, each epoch draws one view per image. It is its own sampler (`set_epoch`). Under torchrun
    each process takes its share of the order, as EpochSampler does.
    """

    def __init__(self, feature_set: FeatureSet, *, batch_size: int, device: torch.device, shuffle: bool,
                 seed: int = 0):
        features = to_device(feature_set.features, device, "cached features")
        if isinstance(features, np.ndarray):  # on the CPU, or too large for the GPU: host memory
            features = torch.from_numpy(np.array(features))  # a writable copy of the memory map
            features = features.pin_memory() if device.type == "cuda" else features
        super().__init__(len(feature_set.labels), batch_size=batch_size, shuffle=shuffle, seed=seed)
        self.features, self.device = features, device
        self.labels = torch.from_numpy(feature_set.labels).to(features.device)
        self.views = features.shape[0] if features.dim() == 3 else 0

    def __iter__(self):
        generator, order = self._epoch()
        view_of = torch.randint(0, max(1, self.views), (self.size,), generator=generator)  # indexed by image
        order, view_of = self._mine(order).to(self.features.device), view_of.to(self.features.device)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = self._gather(view_of[rows] * self.size + rows if self.views else rows)
            yield batch.to(self.device, non_blocking=True).float(), self.labels[rows].to(self.device), []

    def _gather(self, flat_rows: torch.Tensor) -> torch.Tensor:
        """The rows (view x size + row with views) of the features; from host memory bound for the GPU,
        gathered straight into pinned memory, or the non_blocking copy that follows would not overlap."""
        table = self.features.reshape(-1, self.features.shape[-1])
        if table.device.type != "cpu" or self.device.type != "cuda":
            return table[flat_rows]
        pinned = torch.empty((len(flat_rows), table.shape[1]), dtype=table.dtype, pin_memory=True)
        return torch.index_select(table, 0, flat_rows, out=pinned)


def to_device_float(device: torch.device):
    """The Trainer's `normalize` for features: they are normalised already."""
    return lambda features: features.to(device, non_blocking=True).float()
