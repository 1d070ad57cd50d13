"""tlkit.decode: eval-geometry batches through PIL workers or batched torchvision decode."""

from types import SimpleNamespace

import pytest
import torch

from tlkit.decode import ImageBatches, load_image

from conftest import shared_data, write_image


def _prep(in_chans=3, resize_size=36, size=32):
    return SimpleNamespace(input_size=(size, size), resize_size=resize_size, mean=(0.5,) * in_chans,
                           std=(0.25,) * in_chans, interpolation="bilinear", in_chans=in_chans)


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


def test_both_decode_paths_agree(mixed_files):
    pil = _collect(ImageBatches(mixed_files[:6], _prep(), device="cpu", gpu_decode=False))
    tensor = _collect(ImageBatches(mixed_files[:6], _prep(), device="cpu", gpu_decode=True))
    for index in pil:
        # Same JPEG decoder family; resize kernels differ a little between PIL and torch.
        assert (pil[index] - tensor[index]).abs().mean() < 0.05


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


def test_worker_processes_give_the_same_batches(mixed_files):
    inline = _collect(ImageBatches(mixed_files, _prep(), device="cpu", batch_size=4))
    workers = _collect(ImageBatches(mixed_files, _prep(), device="cpu", batch_size=4, workers=2))
    assert sorted(inline) == sorted(workers)
    assert all(torch.equal(inline[i], workers[i]) for i in inline)


@pytest.mark.gpu
def test_cuda_decode_matches_cpu(mixed_files):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = _collect(ImageBatches(mixed_files, _prep(), device="cpu", gpu_decode=False))
    cuda_batches = ImageBatches(mixed_files, _prep(), device="cuda")
    cuda = _collect(cuda_batches)
    assert sorted(cuda) == sorted(cpu) and sorted(cuda_batches.failures) == [6, 7]
    for index in cpu:
        assert (cpu[index] - cuda[index].cpu()).abs().mean() < 0.05
