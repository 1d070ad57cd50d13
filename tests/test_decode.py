"""tlkit.decode: eval-geometry batches through PIL (inline, in threads, in loader processes) or batched torchvision decode."""

import itertools
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from tlkit.decode import ImageBatches, load_image

from conftest import shared_data, write_image


def _prep(in_chans=3, resize_size=36, size=32, crop_mode="center"):
    return SimpleNamespace(input_size=(size, size), resize_size=resize_size, mean=(0.5,) * in_chans,
                           std=(0.25,) * in_chans, interpolation="bilinear", in_chans=in_chans, crop_mode=crop_mode)


def _collect(batches: ImageBatches) -> dict[int, torch.Tensor]:
    return {i: image for batch in batches for i, image in zip(batch.indices, batch.images)}


@pytest.fixture
def mixed_files(tmp_path):
    paths = [write_image(tmp_path / f"{n}.jpg", size=(60 + n, 48), color=n) for n in range(5)]
    paths.append(write_image(tmp_path / "5.png", size=(40, 40), color=5))
    broken = tmp_path / "6.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    paths.append(broken)
    (tmp_path / "7.jpg").write_bytes(b"")
    paths.append(tmp_path / "7.jpg")
    return paths


@pytest.mark.parametrize("gpu_decode", [False, True])
def test_batches_cover_good_files_and_report_bad_ones(mixed_files, gpu_decode):
    batches = ImageBatches(mixed_files, _prep(), device="cpu", batch_size=3, gpu_decode=gpu_decode)
    images = _collect(batches)
    assert sorted(images) == [0, 1, 2, 3, 4, 5]
    assert sorted(batches.failures) == [6, 7]
    assert "0 bytes" in batches.failures[7]
    assert all(image.shape == (3, 32, 32) for image in images.values())


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_both_decode_paths_agree(mixed_files, crop_mode):
    pil = _collect(ImageBatches(mixed_files[:6], _prep(crop_mode=crop_mode), device="cpu", gpu_decode=False))
    tensor = _collect(ImageBatches(mixed_files[:6], _prep(crop_mode=crop_mode), device="cpu", gpu_decode=True))
    for index in pil:
        # Same JPEG decoder family; resize kernels differ a little between PIL and torch.
        assert (pil[index] - tensor[index]).abs().mean() < 0.05


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
def test_eval_geometry_is_timms_own_for_each_crop_mode(tmp_path, crop_mode):
    """A wide photo, where squash and border differ from a centre crop: tlkit's pixels are those of
    timm's eval transform (create_transform) before its ToTensor and Normalize."""
    from PIL import Image
    from timm.data import create_transform
    from torchvision.transforms.v2 import functional as F

    from tlkit.backbone import Preprocessing

    path = write_image(tmp_path / "wide.png", size=(150, 60), color=3)
    data_config = {"input_size": (3, 48, 48), "crop_pct": 0.9, "crop_mode": crop_mode, "interpolation": "bicubic",
                   "mean": (0.6, 0.5, 0.4), "std": (0.25,) * 3}
    prep = Preprocessing((48, 48), 53, data_config["mean"], data_config["std"], "bicubic", 3, crop_mode)  # 53: 48 / 0.9
    timms = create_transform(**data_config)
    with Image.open(path) as image:
        expected = image.convert("RGB")
    for step in timms.transforms:
        if type(step).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize"):
            expected = step(expected)
    ours = load_image(path, prep)
    assert ours.shape == (3, 48, 48)
    assert (ours.int() - F.pil_to_tensor(expected).int()).abs().max() <= 1
    if crop_mode != "center":
        assert not torch.equal(ours, load_image(path, replace(prep, crop_mode="center")))
    if crop_mode == "border":  # padded above and below with the mean colour, as timm pads
        assert ours[:, 0, 0].tolist() == [153, 128, 102]


def test_normalisation_uses_the_preprocessing(tmp_path):
    path = tmp_path / "white.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (255, 255, 255)).save(path)
    (batch,) = ImageBatches([path], _prep(), device="cpu")
    assert torch.allclose(batch.images, torch.full_like(batch.images, (1 - 0.5) / 0.25))


def test_grayscale_model_gets_one_channel(mixed_files):
    images = _collect(ImageBatches(mixed_files[:3], _prep(in_chans=1), device="cpu", gpu_decode=True))
    assert all(image.shape == (1, 32, 32) for image in images.values())


def test_large_photo_decodes_to_the_model_geometry():
    photo = shared_data("dogs-vs-cats-2k") / "train" / "cat.0.jpg"
    image = load_image(photo, _prep(resize_size=256, size=224))
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8


def test_decode_threads_give_the_same_batches_in_order(mixed_files):
    inline = ImageBatches(mixed_files * 3, _prep(), device="cpu", batch_size=4)
    threaded = ImageBatches(mixed_files * 3, _prep(), device="cpu", batch_size=4, workers=2)
    expected, got = list(inline), list(threaded)
    assert [batch.indices for batch in got] == [batch.indices for batch in expected]
    assert all(torch.equal(a.images, b.images) for a, b in zip(got, expected))
    assert threaded.failures == inline.failures and sorted(threaded.failures) == [6, 7, 14, 15, 22, 23]


def test_decode_threads_stop_with_their_consumer(mixed_files):
    from tlkit.decode import _in_threads, _PilDataset

    decoded = []

    def load(path):
        decoded.append(path)
        return load_image(path, _prep())

    samples = _in_threads(_PilDataset(mixed_files[:5] * 40, range(200), load), workers=2, ahead=4)
    assert [index for index, _, _ in itertools.islice(samples, 3)] == [0, 1, 2]
    samples.close()  # the pool is shut down with what was not started cancelled, not decoded
    assert len(decoded) <= 3 + 4 + 2


@pytest.mark.gpu
def test_cuda_decode_matches_cpu(mixed_files, tmp_path):
    """nvjpeg really decodes (decoded_by_batch counts what it took), real photos and a grayscale JPEG
    agree with PIL within a mean 0.05 after normalisation (std 0.25: 3 levels of 255; the CPU tensor path's
    bound too), and the broken file is refused."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    grey = write_image(tmp_path / "grey.jpg", size=(70, 50), color=9, mode="L")
    photos = sorted((shared_data("dogs-vs-cats-2k") / "train").glob("*.jpg"))[:20]
    files = [*mixed_files, grey, *photos]
    cpu = _collect(ImageBatches(files, _prep(), device="cpu", gpu_decode=False))
    cuda_batches = ImageBatches(files, _prep(), device="cuda")
    cuda = _collect(cuda_batches)
    assert sorted(cuda) == sorted(cpu) and sorted(cuda_batches.failures) == [6, 7]
    assert cuda_batches.decoded_by_batch == 5 + 1 + len(photos)  # every JPEG but the broken one, by nvjpeg
    for index in cpu:
        assert (cpu[index] - cuda[index].cpu()).abs().mean() < 0.05


def _refusing(monkeypatch, refuse):
    """The batched decoder refuses (one RuntimeError for the whole list, as torchvision does) any list
    holding an index that refuse(index) picks; the lists it was given are recorded."""
    real = ImageBatches._decode_jpegs
    calls = []

    def decode(self, jpegs):
        calls.append([i for i, _ in jpegs])
        if any(refuse(i) for i, _ in jpegs):
            raise RuntimeError("stub decoder: this list holds a file it cannot decode")
        return real(self, jpegs)

    monkeypatch.setattr(ImageBatches, "_decode_jpegs", decode)
    return calls


def test_a_refused_batch_is_halved_and_only_the_refused_file_goes_to_pil(mixed_files, monkeypatch, capsys):
    calls = _refusing(monkeypatch, lambda index: index in (3, 6))
    batches = ImageBatches(mixed_files, _prep(), device="cpu", batch_size=8, gpu_decode=True)
    images = _collect(batches)
    assert sorted(images) == [0, 1, 2, 3, 4, 5] and sorted(batches.failures) == [6, 7]
    assert batches.decoded_by_batch == 4  # 0, 1, 2, 4: everything but the refused files
    assert [3] in calls and [6] in calls  # each refused file ended up alone before going to PIL
    err = capsys.readouterr().err
    assert err.count("refused") == 1 and "stub decoder" in err  # said once, with the decoder's own words


def test_a_decoder_that_refuses_everything_stops_with_a_message(mixed_files, monkeypatch):
    from tlkit.errors import TlkitError

    _refusing(monkeypatch, lambda index: True)
    with pytest.raises(TlkitError, match="refused every file.*--device cpu"):
        _collect(ImageBatches(mixed_files, _prep(), device="cpu", batch_size=8, gpu_decode=True))


def test_decode_batches_are_capped_by_pixels(mixed_files):
    from tlkit.decode import _pixel_groups

    jpegs = [(i, path.read_bytes()) for i, path in enumerate(mixed_files[:5])]  # 60x48 .. 64x48 px
    groups = _pixel_groups(jpegs, max_pixels=2 * 62 * 48)
    assert [[i for i, _ in group] for group in groups] == [[0, 1], [2], [3], [4]]
    assert _pixel_groups(jpegs, max_pixels=10) == [[item] for item in jpegs]  # one file alone may exceed it


def test_benchmark_photos_are_copied_where_hard_links_fail(tmp_path, monkeypatch):
    import importlib.util
    import os
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).parents[1] / "scripts" / "_bench_common.py")
    bench_common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_common)
    source = tmp_path / "src"
    for n in range(2):
        write_image(source / f"cat.{n}.jpg", color=n)
        write_image(source / f"dog.{n}.jpg", color=n + 2)

    def cross_device(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    paths = bench_common.link_photos(source, tmp_path / "linked", copies=2, limit=None)
    assert len(paths) == 8 and all(path.read_bytes() == (source / path.name.split("-", 1)[1]).read_bytes()
                                   for path in paths)


def test_decoding_ahead_in_a_thread_keeps_order_raises_and_stops_early():
    from tlkit.decode import _ahead

    assert list(_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(_ahead(failing(), depth=1))
    produced = []

    def endless():
        for n in range(10_000):
            produced.append(n)
            yield n

    consumer = _ahead(endless(), depth=1)
    assert [next(consumer) for _ in range(3)] == [0, 1, 2]
    consumer.close()  # the thread stops rather than decoding the rest
    assert len(produced) < 10


def _upright_and_sideways(folder, suffix):
    """A photo saved upright, and the same photo stored turned 90 degrees with EXIF orientation 6
    ("turn clockwise to view"), as a phone saves a portrait shot."""
    import numpy as np
    from PIL import Image

    rows, cols = np.mgrid[0:48, 0:72]
    pixels = np.stack([rows * 5, cols * 3, (rows + cols) * 2], axis=-1).astype(np.uint8)  # no symmetry
    upright = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = folder / f"upright{suffix}", folder / f"sideways{suffix}"
    upright.save(paths[0], quality=95)
    upright.transpose(Image.Transpose.ROTATE_90).save(paths[1], exif=exif, quality=95)
    return paths


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_photos_are_read_upright_in_every_path(tmp_path, suffix):
    from tlkit.augment import POLICIES
    from tlkit.data import TrainLoad
    from tlkit.scan import check_image

    upright, sideways = _upright_and_sideways(tmp_path, suffix)
    prep = _prep(resize_size=36, size=32)
    close = (lambda a, b: torch.equal(a, b)) if suffix == ".png" else (
        lambda a, b: (a.float() - b.float()).abs().mean() < 3)  # JPEG blocks fall elsewhere on a turned photo
    assert close(load_image(sideways, prep), load_image(upright, prep))
    crops = TrainLoad(prep, POLICIES["default"])
    assert close(crops(sideways, seed=4), crops(upright, seed=4))
    info = check_image(sideways, full=True)
    assert (info.width, info.height) == (72, 48)
    if suffix == ".jpg":  # torchvision's batched decoder (nvjpeg's path; here on the CPU)
        batched = _collect(ImageBatches([upright, sideways], prep, device="cpu", gpu_decode=True))
        assert (batched[0] - batched[1]).abs().mean() < 0.05


def test_sixteen_bit_photos_are_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(path)  # mid-grey at 16 bits
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I")
    image = load_image(path, _prep())
    assert image.dtype == torch.uint8 and image.float().mean().item() == pytest.approx(128, abs=1)
