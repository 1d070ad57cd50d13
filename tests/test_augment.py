"""Every augmentation in one place: the policies, and the CPU, device and in-memory ways of applying
them, which must agree (same draws as torchvision, same pixels for the same box)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from tlkit.augment import (
    POLICIES, crop_flip_photo, crop_resize_flip, cut_photo, policy, random_crop_boxes, shift_flip, view_seed,
)

CROPS = (POLICIES["default"].crop_scale, POLICIES["default"].crop_ratio)


def test_boxes_follow_random_resized_crop():
    """Same areas, aspect ratios and positions as torchvision's own draw, photo by photo."""
    height, width, count = 375, 500, 4000
    ours = random_crop_boxes(torch.tensor([[height, width]] * count), torch.Generator().manual_seed(0), *CROPS)
    assert (ours[:, :2] >= 0).all() and (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()
    crop_w, crop_h = ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    torch.manual_seed(0)
    theirs = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, height, width), [0.08, 1.0],
                                                        [3 / 4, 4 / 3]) for _ in range(count)], dtype=torch.float32)
    their_h, their_w = theirs[:, 2], theirs[:, 3]
    area, their_area = crop_w * crop_h / (height * width), their_w * their_h / (height * width)
    pairs = [(area.mean(), their_area.mean()), (area.std(), their_area.std()),
             ((crop_w / crop_h).log().mean(), (their_w / their_h).log().mean()),
             ((ours[:, 0] / width).mean(), (theirs[:, 1] / width).mean())]
    for mine, reference in pairs:
        assert float(mine) == pytest.approx(float(reference), abs=0.02)


def test_a_photo_no_crop_fits_gets_the_centre_crop():
    boxes = random_crop_boxes(torch.tensor([[10, 1000]]), torch.Generator().manual_seed(0), *CROPS)
    # 10 x 1000: no area of 8%..100% fits at aspect 3/4..4/3; torchvision cuts 10 x 13 from the centre.
    assert boxes.tolist() == [[493.0, 0.0, 506.0, 10.0]]


def test_crop_resize_flip_cuts_the_boxes():
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    image[..., :4] = 200  # left half bright
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    assert torch.allclose(crop_resize_flip(image, whole, torch.tensor([False]), (8, 8)), image.float())
    assert torch.allclose(crop_resize_flip(image, whole, torch.tensor([True]), (8, 8)), image.flip(-1).float())
    # Bilinear samples reach half a pixel past a box edge: a box inside the bright half stays bright.
    left = crop_resize_flip(image, torch.tensor([[0.0, 0.0, 3.0, 8.0]]), torch.tensor([False]), (5, 5))
    assert left.shape == (1, 3, 5, 5) and torch.allclose(left, torch.full_like(left, 200.0))


def _smooth_photo(height: int = 60, width: int = 90) -> Image.Image:
    """Gradients in every channel: resampling differences stay small, a wrong box or flip does not."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) * 255 / (width + height)], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize("flip", [False, True])
def test_the_cpu_and_device_crops_cut_the_same_pixels(flip):
    """The same box, cut from a photo by PIL on the CPU and by roi_align on the device, gives the same image."""
    photo, box, size = _smooth_photo(), (12, 8, 72, 53), (20, 24)
    on_cpu = F.pil_to_tensor(cut_photo(photo, box, flip, size, "bilinear")).float()
    on_device = crop_resize_flip(F.pil_to_tensor(photo)[None], torch.tensor([box], dtype=torch.float32),
                                 torch.tensor([flip]), size)[0]
    assert (on_cpu - on_device).abs().mean() < 2.0 and (on_cpu - on_device).abs().max() < 12


def test_a_photo_crop_repeats_from_its_seed_and_leaves_the_global_generator():
    photo = _smooth_photo()
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = F.pil_to_tensor(crop_flip_photo(photo, POLICIES["default"], (16, 16), "bilinear", seed=7))
    again = F.pil_to_tensor(crop_flip_photo(photo, POLICIES["default"], (16, 16), "bilinear", seed=7))
    other = F.pil_to_tensor(crop_flip_photo(photo, POLICIES["default"], (16, 16), "bilinear", seed=8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), before)


def test_shift_moves_by_at_most_its_share_and_light_never_mirrors():
    image = torch.arange(28 * 28, dtype=torch.float32).view(1, 28, 28)
    for seed in range(20):
        shifted = shift_flip(image, seed, POLICIES["light"])
        nonzero = shifted[shifted > 0]
        assert shifted.shape == image.shape and len(nonzero) >= (28 - 4) ** 2
        assert torch.equal(shift_flip(image, seed, POLICIES["light"]), shifted)
    mirrored = [shift_flip(image, seed, POLICIES["default"]) for seed in range(20)]
    assert any(m[0, 14, 2] > m[0, 14, 25] for m in mirrored)  # some mirrored (the values grow to the right)
    assert all(m[0, 14, 2] < m[0, 14, 25] for m in (shift_flip(image, s, POLICIES["light"]) for s in range(20)))


def test_policies_by_name_and_view_seeds():
    assert policy("none") is None and policy("light").flip is False
    with pytest.raises(ValueError, match="not one of"):
        policy("strong")
    assert view_seed(0, "a/cat.1.jpg") == view_seed(0, "b/cat.1.jpg") != view_seed(1, "a/cat.1.jpg")
