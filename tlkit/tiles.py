"""The frozen trunk's features of a few parts (tiles) of each photo, for `tlkit audit`'s question whether a
photo's parts show different classes. Each photo is decoded once and its tiles cut from the decoded pixels,
then put in the eval geometry and run through the trunk in batches, as precompute runs whole photos, and
cached as the whole photos' features are (tlkit/cache.py: a changed photo or trunk computes them again). It
judges nothing (tlkit/findings.py does).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from tlkit.backbone import Backbone, for_inference
from tlkit.cache import WHOLE, commit, new_staging, read_manifest, why_stale
from tlkit.decode import draft_side, pixel_batches, resize_crop
from tlkit.features import STALE_REASONS, cache_identity, run_trunk
from tlkit.runtime import Compute, inference_batch_size, info, map_ahead, progress, relpath
from tlkit.scan import DECODE_ERRORS, decode_failure, open_photo

# Pairs of halves of a photo that share no pixel, as (left, top, right, bottom) fractions. A photo shows two
# classes where the two halves of a pair each surely show another and are unlike (tlkit/findings.py:
# several_classes). Side by side only: the top and bottom halves as well flagged twice the ordinary photos and
# found no more of the planted composites, at twice the cost (docs/benchmarks.md, "Several classes in one photo").
HALVES = {"left | right": ((0, 0, 0.5, 1), (0.5, 0, 1, 1))}
TILES = [box for pair in HALVES.values() for box in pair]  # in the order of the features' rows
TILES_FILE = "tiles.npy"  # a tile cache's one array: [N, P, 2, D]


def tile_pixels(path: Path, prep) -> list[torch.Tensor]:
    """uint8 [C, H, W] of each of TILES of the photo at path, each in the model's eval geometry (resize_crop)."""
    # Decoded at twice the side a whole photo needs: a half of it is then still resized down, not blown up.
    image = open_photo(path, "RGB" if prep.in_chans == 3 else "L", draft_side=2 * draft_side(prep))
    width, height = image.size
    boxes = [_box(fractions, width, height) for fractions in TILES]
    return [F.pil_to_tensor(resize_crop(image.crop(box), prep)) for box in boxes]


def _box(fractions: tuple[float, ...], width: int, height: int) -> tuple[int, int, int, int]:
    """A tile's pixel box, at least 1 x 1: the half of a photo 1 pixel wide is that pixel."""
    left, top, right, bottom = fractions
    left, top = min(round(left * width), width - 1), min(round(top * height), height - 1)
    return left, top, max(round(right * width), left + 1), max(round(bottom * height), top + 1)


def tile_features(backbone: Backbone, paths: list[Path], *, compute: Compute, batch_size: int | None = None,
                  workers: int = 1) -> tuple[np.ndarray, dict[int, str]]:
    """([N, P, 2, D] float32 features of the two halves of each of the P = len(HALVES) pairs of each photo,
    {photo index: why it failed to decode}); a failed photo's rows stay zero. workers: decoding threads."""
    prep = backbone.preprocessing
    trunk = for_inference(backbone.trunk, prep, compute.device)
    batch_size = inference_batch_size(compute.device, batch_size)
    features = np.zeros((len(paths), len(TILES), backbone.feature_dim), np.float32)
    rows = features.reshape(-1, backbone.feature_dim)  # a view: row photo * T + tile
    photos_per_batch = max(1, batch_size // len(TILES))
    decoded = map_ahead(lambda index: _decode(paths[index], prep), range(len(paths)), threads=max(1, workers),
                        ahead=2 * photos_per_batch)
    failed: dict[int, str] = {}
    with progress() as bar:
        task = bar.add_task("features of tiles", total=len(paths))
        for start in range(0, len(paths), photos_per_batch):
            tiles = {}
            for index, (pixels, why) in zip(range(start, len(paths)), itertools.islice(decoded, photos_per_batch)):
                if why:
                    failed[index] = why
                tiles.update({index * len(TILES) + tile: image for tile, image in enumerate(pixels)})
            run_trunk(trunk, pixel_batches(tiles, prep, compute.device, batch_size), rows, compute, lambda count: None)
            bar.advance(task, min(photos_per_batch, len(paths) - start))
    return features.reshape(len(paths), len(HALVES), 2, backbone.feature_dim), failed


def _decode(path: Path, prep) -> tuple[list[torch.Tensor], str]:
    """(the tiles' pixels, "") or ([], why the photo failed to decode)."""
    try:
        return tile_pixels(path, prep), ""
    except DECODE_ERRORS as error:
        return [], decode_failure(error)


def cached_tile_features(backbone: Backbone, folder: Path, rows: list, cache_dir: Path, *, compute: Compute,
                         workers: int = 1, dtype: str = "float16") -> tuple[np.ndarray, dict[int, str]]:
    """tile_features of the files of rows (cache.file_rows, relative to folder), from the cache in cache_dir, or
    computed into it: valid for the very trunk, preprocessing, TILES and files (paths, sizes, modification times)."""
    identity = {**cache_identity(backbone, [], {WHOLE: rows}, 0, dtype, compute.arithmetic),
                "tiles": json.loads(json.dumps(HALVES))}
    reason = why_stale(cache_dir, identity, {**STALE_REASONS, "tiles": "other tiles"})
    if reason is None:
        info(f"audit: the features of each photo's {len(TILES)} halves from the cache in {relpath(cache_dir)}")
        return _load_tiles(cache_dir)
    info(f"audit: the trunk over the {len(TILES)} halves of each photo ({reason}) into {relpath(cache_dir)}; "
         f"{compute.words()}")
    features, failed = tile_features(backbone, [folder / row[0] for row in rows], compute=compute, workers=workers)
    staging = new_staging(cache_dir, features.size * np.dtype(dtype).itemsize, "the halves' features")
    np.save(staging / TILES_FILE, features.astype(dtype))
    entry = {"files": [row[0] for row in rows], "labels": [row[1] for row in rows],
             "failed": {rows[index][0]: why for index, why in sorted(failed.items())}}
    summary = {"holds": f"{backbone.name} features of halves", "input_size": list(backbone.preprocessing.input_size),
               "views": 0}
    commit(staging, cache_dir, identity=identity, subsets={WHOLE: entry}, summary=summary)
    return _load_tiles(cache_dir)  # as a later audit reads them: both judge the same numbers


def _load_tiles(cache_dir: Path) -> tuple[np.ndarray, dict[int, str]]:
    """(the cached tile features as float32, {row: why its photo failed to decode}: its rows are zero)."""
    entry = read_manifest(cache_dir)["subsets"][WHOLE]
    failed = {row: entry["failed"][name] for row, name in enumerate(entry["files"]) if name in entry["failed"]}
    return np.load(cache_dir / TILES_FILE).astype(np.float32), failed
