"""Every training augmentation: the policies `--augment` names, and each way they are applied.

`default` suits photos (random resized crops as torchvision draws them, and mirroring);
`light` suits data that a mirror or a tight crop changes (digits, characters, text): milder
crops, a small shift for in-memory images, no mirror; `none` trains on the eval view.
Three ways apply a policy, side by side here and tested to agree: one photo on the CPU
(crop_flip_photo, for the image loaders), a batch of stored photos on the device
(random_crop_boxes + crop_resize_flip, for the decoded-image cache), and a shift of an
in-memory image (shift_flip, for `tlkit train`'s datasets). Every draw comes from a seed, so
an epoch repeats whatever the worker count. The loaders hold no augmentation numbers of their own.
"""

from __future__ import annotations

import math
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as F

NAMES = ("default", "light", "none")


@dataclass(frozen=True)
class Augmentation:
    crop_scale: tuple[float, float]  # a random resized crop's area, as a fraction of the photo's
    crop_ratio: tuple[float, float]  # its aspect ratio (width / height)
    flip: bool  # mirror half the images left to right
    shift: float  # in-memory images (tlkit train): a random shift of up to this fraction of the side


POLICIES = {
    "default": Augmentation(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip=True, shift=1 / 14),
    # A 2 px shift of MNIST's 28; crops that keep most of a digit and barely change its slant.
    "light": Augmentation(crop_scale=(0.6, 1.0), crop_ratio=(5 / 6, 6 / 5), flip=False, shift=1 / 14),
}


def policy(name: str) -> Augmentation | None:
    """The augmentation called `name`; None for `none` (training images get the eval view)."""
    if name not in NAMES:
        raise ValueError(f"augmentation {name!r} is not one of {', '.join(NAMES)}")
    return POLICIES.get(name)


# ---------------------------------------------------------------- one photo, on the CPU


_GLOBAL_GENERATOR = threading.Lock()  # torchvision's RandomResizedCrop.get_params draws from it alone


def crop_flip_photo(image: Image.Image, augmentation: Augmentation, size: tuple[int, int], interpolation: str,
                    seed: int | None) -> Image.Image:
    """A random resized crop of the photo at `size` (torchvision's draw), mirrored half the time; drawn
    from `seed` (None: the global generator) without moving the global generator. Decode threads draw their
    views at once (tlkit/decode.py), hence the lock: the global generator is the process's one."""
    with _GLOBAL_GENERATOR, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        top, left, height, width = RandomResizedCrop.get_params(image, list(augmentation.crop_scale),
                                                                list(augmentation.crop_ratio))
        mirror = torch.rand(1).item() < 0.5  # drawn either way: the same crops with or without flips
    return cut_photo(image, (left, top, left + width, top + height), mirror and augmentation.flip, size, interpolation)


def cut_photo(image: Image.Image, box: tuple[int, int, int, int], flip: bool, size: tuple[int, int],
              interpolation: str) -> Image.Image:
    """Cut box (x0, y0, x1, y1) out of the photo, resize it to size (antialiased), mirror it if flip."""
    left, top, right, bottom = box
    image = F.resized_crop(image, top, left, bottom - top, right - left, list(size),
                           interpolation=InterpolationMode(interpolation), antialias=True)
    return F.horizontal_flip(image) if flip else image


def view_seed(view: int, path: Path) -> int:
    """The seed of one augmented view of one file (precomputed views): a recompute draws the same crops."""
    return zlib.crc32(f"{view}/{Path(path).name}".encode())


# ---------------------------------------------------------------- a batch of stored photos, on the device


def random_crop_boxes(photo_sizes: torch.Tensor, generator: torch.Generator, scale: tuple[float, float],
                      ratio: tuple[float, float], attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop.get_params for every photo at once: float [N, 4] boxes (x0, y0, x1, y1) in photo pixels.

    torchvision draws one photo at a time (a Python loop per image would cost the GPU its feed);
    this draws the same distribution in tensors: up to `attempts` (area, aspect) tries, the first
    that fits, else a centre crop at the nearest allowed aspect ratio."""
    count = len(photo_sizes)
    height, width = photo_sizes[:, :1].double(), photo_sizes[:, 1:].double()
    area = height * width * torch.empty(count, attempts, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(count, attempts, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    crop_w, crop_h = (area * log_ratio.exp()).sqrt().round(), (area / log_ratio.exp()).sqrt().round()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.double().argmax(dim=1, keepdim=True)  # the first attempt that fits
    crop_w, crop_h = crop_w.gather(1, first), crop_h.gather(1, first)
    where = torch.rand(count, 2, dtype=torch.float64, generator=generator)
    x0 = (where[:, :1] * (width - crop_w + 1)).floor()
    y0 = (where[:, 1:] * (height - crop_h + 1)).floor()
    # None fits: the whole photo, cut to the nearest allowed aspect ratio, centred.
    aspect = width / height
    centre_w = torch.where(aspect > ratio[1], (height * ratio[1]).round(), width)
    centre_h = torch.where(aspect < ratio[0], (width / ratio[0]).round(), height)
    fallback = ~fits.any(dim=1, keepdim=True)
    crop_w, crop_h = torch.where(fallback, centre_w, crop_w), torch.where(fallback, centre_h, crop_h)
    x0 = torch.where(fallback, ((width - centre_w) / 2).floor(), x0)
    y0 = torch.where(fallback, ((height - centre_h) / 2).floor(), y0)
    return torch.cat([x0, y0, x0 + crop_w, y0 + crop_h], dim=1).float()


def crop_resize_flip(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                     out_size: tuple[int, int]) -> torch.Tensor:
    """Cut boxes[i] (x0, y0, x1, y1 in images' pixels) out of images[i], resize to out_size, mirror where flips.

    One roi_align call for the batch (bilinear, several samples per output pixel when shrinking);
    returns float [N, C, *out_size] in 0..255, on images' device. The device twin of cut_photo."""
    rois = torch.cat([torch.arange(len(images), device=images.device, dtype=torch.float32)[:, None],
                      boxes.to(images.device, torch.float32)], dim=1)
    crops = roi_align(images.float(), rois, output_size=tuple(out_size), sampling_ratio=-1, aligned=True)
    flips = flips.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flips, crops.flip(-1), crops)


# ---------------------------------------------------------------- an in-memory image


def shift_flip(image: torch.Tensor, seed: int, augmentation: Augmentation) -> torch.Tensor:
    """A random shift of up to augmentation.shift of the side (zeros fill in), and a mirror when the
    policy flips; drawn from the sample's seed."""
    generator = torch.Generator().manual_seed(seed)
    height, width = image.shape[1:]
    most = max(1, round(min(height, width) * augmentation.shift))
    dx, dy = torch.randint(0, 2 * most + 1, (2,), generator=generator).tolist()
    image = F.pad(image, [most] * 4)[:, dy:dy + height, dx:dx + width]
    mirror = torch.rand(1, generator=generator).item() < 0.5
    return image.flip(-1) if augmentation.flip and mirror else image
