"""Every training augmentation, by the name `--augment` gives it: what each does, in one place.

`default` suits photos (random resized crops as torchvision draws them, and mirroring);
`light` suits data that a mirror or a tight crop changes (digits, characters, text): milder
crops, a small shift for in-memory images, no mirror; `none` trains on the eval view.
The loaders (tlkit/data.py, imagecache.py, datasets.py) apply these numbers; none of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

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
