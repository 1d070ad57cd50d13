"""Decoded-image cache (`--cache-images`): decode every photo once, then augment on the device.

JPEG decoding is what limits end-to-end fine-tuning on a GPU. With the cache, the first
epoch decodes DATA/training and DATA/validation into memory-mapped uint8 arrays, and every
later epoch, and every later run with the same image geometry, reads pixels instead:
- validation at the backbone's exact eval geometry (resize, centre crop): what the images
  give uncached, so the validation numbers are the same;
- training as the whole photo resized to S x S (S: 1.5 x the input, 336 for 224), with the
  photo's own height and width recorded, so that a random resized crop is drawn in the photo's
  coordinates (same areas and aspect ratios as uncached training) and cut out of the stored
  pixels on the device, with a flip, by one batched torchvision.ops.roi_align.
The arrays live on the GPU when they fit. A cache is valid only for the exact files (path,
size, modification time), classes and geometry it was made from (tlkit/cache.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlkit import distributed
from tlkit.augment import POLICIES, Augmentation, crop_resize_flip, policy, random_crop_boxes
from tlkit.cache import (
    CACHE_FORMAT, commit, default_cache_root, digest_rows, file_rows, kept_rows, label_array, new_staging, read_manifest,
    subset_entry, to_device, why_stale,
)
from tlkit.data import DataBundle, EpochRows, SplitFolders, open_split
from tlkit.decode import ImageBatches
from tlkit.runtime import info, map_ahead, progress, relpath
from tlkit.scan import open_image, upright_size
from tlkit.split import SUBSETS

STALE_REASONS = {
    "format": "the cache format changed",
    "geometry": "another image geometry (size, resize, interpolation, channels)",
    "classes": "other classes",
}


@dataclass
class ImageSet:
    """One subset's decoded images; rows whose photo failed to decode are left out."""

    images: np.ndarray  # uint8 [every file, C, H, W], memory-mapped; failed photos' rows are zeros
    rows: np.ndarray  # int64 [N]: the row of `images` that holds each usable photo
    photo_sizes: np.ndarray  # int64 [N, 2]: each photo's own (height, width); training only, else zeros
    labels: np.ndarray  # int64 [N]
    files: list[str]  # relative to the subset folder, in row order
    failed: list[str]  # photos left out, relative to the subset folder

    def __len__(self) -> int:
        return len(self.labels)


def storage_side(prep) -> int:
    """The side a whole training photo is stored at: 1.5 x the input (336 for 224), at least the eval resize.

    Crops cover 8%..100% of a photo; at 1.5 x most of them (from 45% of the area up) are cut at or above
    the input's resolution and shrunk, as the uncached loader's do, rather than blown up from fewer pixels."""
    return max(prep.resize_size or 0, math.ceil(max(prep.input_size) * 3 / 2))


def _geometries(prep, augment: bool) -> dict:
    """Per subset, the Preprocessing its pixels are stored in (only the geometry fields matter)."""
    side = storage_side(prep)
    whole_photo = dataclasses.replace(prep, input_size=(side, side), resize_size=None)  # squashed, nothing cut
    return {"training": whole_photo if augment else prep, "validation": prep}


def _geometry_dict(geometry) -> dict:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(geometry).items()
            if key in ("input_size", "resize_size", "crop_mode", "interpolation", "in_chans")}


def cache_images(data: Path | SplitFolders, prep, *, augment: bool = True, cache_root: Path | None = None,
                 device: torch.device, batch_size: int = 256, workers: int = 0) -> dict[str, ImageSet]:
    """DATA/training and DATA/validation decoded, from the cache or decoded now (and cached)."""
    split = open_split(data)
    data_dir, classes = split.root, split.classes
    files = {subset: file_rows(split.subset(subset), split.images(subset)) for subset in SUBSETS}
    geometries = _geometries(prep, augment)
    identity = json.loads(json.dumps({
        "format": CACHE_FORMAT,
        "geometry": {subset: _geometry_dict(geometry) for subset, geometry in geometries.items()},
        "classes": classes,
        "files_sha256": {subset: digest_rows(rows) for subset, rows in files.items()},
    }))
    # One folder per geometry: backbones that see images alike (resnet18, vgg16 at 224) share it.
    key = hashlib.sha256(json.dumps(identity["geometry"], sort_keys=True).encode()).hexdigest()[:10]
    cache_dir = Path(cache_root or default_cache_root(data_dir)) / f"images-{prep.input_size[0]}px-{key}"
    distributed.setup(device)
    reason = distributed.on_main(lambda: why_stale(cache_dir, identity, STALE_REASONS))  # one decision for all
    if reason is None:
        info(f"decoded images: using the cache in {relpath(cache_dir)}")
        return load_images(cache_dir)
    info(f"decoded images: decoding every photo once ({reason}) into {relpath(cache_dir)}")
    needed = sum(len(files[subset]) * geometry.in_chans * math.prod(geometry.input_size)
                 for subset, geometry in geometries.items())
    staging = distributed.on_main(lambda: new_staging(cache_dir, needed, "the decoded images"))
    subsets = {}
    with progress() as bar:
        for subset in SUBSETS:
            task = bar.add_task(f"decoding {subset}", total=len(distributed.shard(files[subset])))
            # Validation (and unaugmented training) through PIL, as the uncached loader decodes it: same pixels.
            whole_photos = subset == "training" and augment
            failed, sizes = _decode_subset(
                data_dir / subset, files[subset], staging / f"{subset}.npy", geometries[subset], device=device,
                batch_size=batch_size, workers=workers, gpu_decode=None if whole_photos else False,
                photo_sizes=whole_photos, on_progress=lambda n, task=task: bar.advance(task, n))
            if sizes is not None and distributed.is_main():
                np.save(staging / f"{subset}-photo-sizes.npy", sizes)
            subsets[subset] = subset_entry(subset, files[subset], failed)
    commit(staging, cache_dir, identity=identity, subsets=subsets,
           summary={"holds": "decoded images", "input_size": list(prep.input_size), "views": 0})
    return load_images(cache_dir)


def _decode_subset(subset_dir: Path, rows: list, target: Path, geometry, *, device: torch.device, batch_size: int,
                   workers: int, gpu_decode: bool | None, photo_sizes: bool,
                   on_progress) -> tuple[dict[str, str], np.ndarray | None]:
    """Fill target (uint8 .npy, memory-mapped) with every photo in `geometry`.

    Returns {failed file: reason} and, with photo_sizes, each photo's (height, width). Under torchrun
    each process decodes its share (rows rank, rank + world, ...) into the one file (one machine's
    page cache keeps the interleaved rows coherent: build a cache on one machine)."""
    shape = (len(rows), geometry.in_chans, *geometry.input_size)
    if distributed.is_main():
        np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=shape).flush()
    distributed.barrier()
    array = np.load(target, mmap_mode="r+")
    mine = distributed.shard(range(len(rows)))
    paths = [subset_dir / rows[index][0] for index in mine]
    batches = ImageBatches(paths, geometry, device=device, batch_size=batch_size, workers=workers,
                           gpu_decode=gpu_decode, normalise=False)
    for batch in batches:
        array[[mine[i] for i in batch.indices]] = batch.images.cpu().numpy()
        on_progress(len(batch.indices))
    array.flush()
    del array
    my_sizes = dict(zip(mine, _photo_sizes(paths, geometry, workers))) if photo_sizes else {}
    failures, sizes = {}, {}
    for share_failures, share_sizes in distributed.all_gather(
            ({mine[index]: why for index, why in batches.failures.items()}, my_sizes)):
        failures.update(share_failures)
        sizes.update(share_sizes)
    in_order = np.array([sizes[index] for index in range(len(rows))], dtype=np.int64) if photo_sizes else None
    return {rows[index][0]: why for index, why in sorted(failures.items())}, in_order


def _photo_sizes(paths: list[Path], stored, workers: int) -> list[tuple[int, int]]:
    """(height, width) of each photo from its header; the stored size where the header cannot be read."""
    def size_of(path: Path) -> tuple[int, int]:
        try:
            with open_image(path) as image:
                return upright_size(image)
        except Exception:  # noqa: BLE001 (the photo failed to decode too, and is left out)
            return tuple(stored.input_size)

    with ThreadPoolExecutor(max(4, 2 * workers)) as pool:
        return list(pool.map(size_of, paths))


def load_images(cache_dir: Path) -> dict[str, ImageSet]:
    """The subsets of a complete cache, memory-mapped; failed photos left out (their rows stay, unused)."""
    sets = {}
    for subset, entry in read_manifest(cache_dir)["subsets"].items():
        images = np.load(cache_dir / f"{subset}.npy", mmap_mode="r")
        sizes_file = cache_dir / f"{subset}-photo-sizes.npy"
        sizes = np.load(sizes_file) if sizes_file.is_file() else np.zeros((len(images), 2), dtype=np.int64)
        keep = np.asarray(kept_rows(entry), dtype=np.int64)
        sets[subset] = ImageSet(images=images, rows=keep, photo_sizes=sizes[keep],
                                labels=label_array(entry["labels"])[keep],
                                files=[entry["files"][i] for i in keep], failed=sorted(entry["failed"]))
    return sets


class CachedImageLoader(EpochRows):
    """Cached images in batches shaped like the image loaders' (images, labels, skipped); its own sampler.

    The order comes from (seed, epoch) exactly as data.EpochSampler draws it, and so do the crops
    and flips: an epoch is the same whatever the process count, and a resumed run repeats it.
    Photos that failed to decode are reported once per epoch, in its first batch."""

    def __init__(self, image_set: ImageSet, *, subset_dir: Path, batch_size: int, device: torch.device,
                 shuffle: bool, augment_to: tuple[int, int] | None = None, augmentation: Augmentation | None = None,
                 seed: int = 0):
        """augment_to: the input size random resized crops are cut to (training), as `augmentation` draws
        them; None: the stored pixels as they are."""
        self.images = to_device(image_set.images, device, "decoded images")
        super().__init__(len(image_set.labels), batch_size=batch_size, shuffle=shuffle, seed=seed)
        self.row_of = torch.from_numpy(image_set.rows)  # usable photo -> its row in images
        self.labels = torch.from_numpy(image_set.labels).to(device)
        self.photo_sizes = torch.from_numpy(image_set.photo_sizes)
        stored = image_set.images.shape[-2:]
        self.stored_per_photo = torch.tensor([stored[1], stored[0]]) / self.photo_sizes.flip(1).clamp(min=1)
        self.failed = [str(subset_dir / name) for name in image_set.failed]
        self.device, self.augment_to = device, augment_to
        self.augmentation = augmentation or POLICIES["default"]

    def _pixels(self, row_batches: list[torch.Tensor]):
        """Each batch's stored pixels, on the device: indexed there, or read from the memory map one batch
        ahead in a thread (numpy copies without the GIL), so the disk overlaps the training step."""
        if isinstance(self.images, torch.Tensor):
            yield from (self.images[rows] for rows in row_batches)
            return

        def read(rows: torch.Tensor) -> torch.Tensor:
            batch = torch.from_numpy(self.images[rows.numpy()])
            return batch.pin_memory() if self.device.type == "cuda" else batch

        for batch in map_ahead(read, row_batches, threads=1, ahead=1):
            yield batch.to(self.device, non_blocking=True)

    def __iter__(self):
        generator, order = self._epoch()
        if self.augment_to is not None:  # drawn for every photo, so the draw does not depend on the share
            crops = self.augmentation
            boxes = random_crop_boxes(self.photo_sizes, generator, crops.crop_scale, crops.crop_ratio)
            boxes = boxes * self.stored_per_photo.repeat(1, 2)
            flips = (torch.rand(self.size, generator=generator) < 0.5) & crops.flip
        # Indices where the pixels are (the GPU, or the memory map's host), moved once per epoch, not per batch.
        where = self.images.device if isinstance(self.images, torch.Tensor) else torch.device("cpu")
        order = self._mine(order).to(where)
        if self.augment_to is not None:
            boxes, flips = boxes.to(where), flips.to(where)
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        row_of = self.row_of.to(where)
        for number, (rows, images) in enumerate(zip(batches, self._pixels([row_of[rows] for rows in batches]))):
            if self.augment_to is not None:
                images = crop_resize_flip(images, boxes[rows], flips[rows], self.augment_to)
            yield images, self.labels[rows.to(self.labels.device)], self.failed if number == 0 else []


def make_cached_data(data: Path | SplitFolders, prep, *, batch_size: int, workers: int, device: torch.device, seed: int,
                     augment: str = "default", cache_root: Path | None = None,
                     train_size: tuple[int, int] | None = None):
    """data.make_data's DataBundle, served from the decoded-image cache (built now if stale)."""
    split = open_split(data)
    data_dir, augmentation = split.root, policy(augment)
    sets = cache_images(split, prep, augment=augmentation is not None, cache_root=cache_root, device=device,
                        workers=workers)
    train_set, val_set = sets["training"], sets["validation"]
    train_loader = CachedImageLoader(train_set, subset_dir=data_dir / "training", batch_size=batch_size,
                                     device=device, shuffle=True, augmentation=augmentation,
                                     augment_to=(train_size or prep.input_size) if augmentation else None,
                                     seed=seed)
    val_loader = CachedImageLoader(val_set, subset_dir=data_dir / "validation", batch_size=batch_size,
                                   device=device, shuffle=False)
    return DataBundle(classes=split.classes, train_set=train_set, val_set=val_set,
                      train_loader=train_loader, val_loader=val_loader, train_sampler=train_loader)
