"""tlkit.decode: eval-geometry batches through PIL (inline, in threads, in loader processes) or batched torchvision decode."""

import itertools
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from tlkit.decode import ImageBatches, load_image

from conftest import device_under_test, real_photos, shared_data, write_image, write_large_image


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
    from tlkit.decode import _PilDataset
    from tlkit.runtime import map_ahead

    decoded = []

    def load(path):
        decoded.append(path)
        return load_image(path, _prep())

    samples = map_ahead(_PilDataset(mixed_files[:5] * 40, range(200), load).__getitem__, range(200), threads=2, ahead=4)
    assert [index for index, _, _ in itertools.islice(samples, 3)] == [0, 1, 2]
    samples.close()  # the pool is shut down with what was not started cancelled, not decoded
    assert len(decoded) <= 3 + 4 + 2


def test_work_ahead_in_threads_keeps_order_and_raises_its_error():
    from tlkit.runtime import map_ahead

    assert list(map_ahead(lambda n: n * n, range(20), threads=3, ahead=2)) == [n * n for n in range(20)]
    assert list(map_ahead(lambda n: n, [], threads=1, ahead=1)) == []
    with pytest.raises(ZeroDivisionError):
        list(map_ahead(lambda n: 1 / (n - 5), range(10), threads=2, ahead=3))


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
    calls = _refusing(monkeypatch, lambda index: index in (1, 3))
    batches = ImageBatches(mixed_files, _prep(), device="cpu", batch_size=8, gpu_decode=True)
    images = _collect(batches)
    assert sorted(images) == [0, 1, 2, 3, 4, 5] and sorted(batches.failures) == [6, 7]
    assert batches.decoded_by_batch == 3  # 0, 2, 4: everything but the refused files
    assert [1] in calls and [3] in calls  # each refused file ended up alone before going to PIL
    assert not any(6 in call for call in calls)  # a header PIL cannot read goes to PIL straight away
    assert batches.refusals == 2  # files refused on their own
    err = capsys.readouterr().err
    assert err.count("refused") == 1 and "stub decoder" in err  # said once, with the decoder's own words


def test_a_decoder_that_refuses_everything_stops_with_a_message(mixed_files, monkeypatch):
    from tlkit.errors import TlkitError

    _refusing(monkeypatch, lambda index: True)
    with pytest.raises(TlkitError, match="refused every file.*--device cpu"):
        _collect(ImageBatches(mixed_files * 2, _prep(), device="cpu", batch_size=16, gpu_decode=True))


def test_a_refused_first_file_does_not_condemn_the_decoder(tmp_path, monkeypatch):
    """The halving walks the left halves first: 16 -> 8 -> 4 -> 2 -> 1 refusals of lists that hold the one
    damaged file say nothing of the decoder; only files refused on their own count."""
    paths = [write_image(tmp_path / f"{n:03d}.jpg", size=(40, 30), color=n) for n in range(16)]
    _refusing(monkeypatch, lambda index: index == 0)
    batches = ImageBatches(paths, _prep(), device="cpu", batch_size=16, gpu_decode=True)
    assert sorted(_collect(batches)) == list(range(16))
    assert batches.decoded_by_batch == 15 and batches.refusals == 1


def test_a_guard_that_fails_in_the_middle_of_a_halving_sends_the_rest_to_pil(tmp_path, monkeypatch):
    """A refused list is halved; when the guard switches the decoder off on the left half, the right half is
    not decoded by it unchecked: everything goes to PIL."""
    paths = [write_image(tmp_path / f"{n}.jpg", size=(60, 48), color=n) for n in range(8)]
    calls = _refusing(monkeypatch, lambda index: index == 7)  # the whole list is refused once
    real = ImageBatches._decode_jpegs
    monkeypatch.setattr(ImageBatches, "_decode_jpegs", lambda self, jpegs: real(self, jpegs).flip(2))
    batches = ImageBatches(paths, _prep(), device="cpu", batch_size=8, gpu_decode=True)
    got = _collect(batches)
    expected = _collect(ImageBatches(paths, _prep(), device="cpu", gpu_decode=False))
    assert batches.decoded_by_batch == 0 and all(torch.equal(got[i], expected[i]) for i in expected)
    assert len(calls) == 2  # the whole list, then its left half (which failed the guard): nothing more


def test_a_file_pil_cannot_decode_does_not_stop_the_guard(tmp_path, monkeypatch):
    """The guard compares with PIL; a file the batched decoder took but PIL refuses is left out of the
    comparison, and the run goes on."""
    from tlkit import decode

    paths = [write_image(tmp_path / f"{n}.jpg", size=(60, 48), color=n) for n in range(4)]
    real_load = decode.load_image

    def pil_refuses_the_first(path, prep, full_size=False):
        if path == paths[0] and full_size:
            raise OSError("image file is truncated")
        return real_load(path, prep, full_size=full_size)

    monkeypatch.setattr(decode, "load_image", pil_refuses_the_first)
    batches = ImageBatches(paths, _prep(), device="cpu", batch_size=4, gpu_decode=True)
    assert sorted(_collect(batches)) == [0, 1, 2, 3] and batches.decoded_by_batch == 4
    assert batches.guard_levels is not None and batches.guard_levels < 1


def test_damaged_files_first_do_not_condemn_the_decoder_before_it_reaches_good_ones(tmp_path, monkeypatch):
    """Ten refused files sort first: the decoder is judged after the whole chunk, by which time it has
    decoded the good ones."""
    paths = [write_image(tmp_path / f"{n:03d}.jpg", size=(40, 30), color=n) for n in range(16)]
    _refusing(monkeypatch, lambda index: index < 10)
    batches = ImageBatches(paths, _prep(), device="cpu", batch_size=16, gpu_decode=True)
    assert sorted(_collect(batches)) == list(range(16))
    assert batches.refusals == 10 and batches.decoded_by_batch == 6


def test_turned_and_cmyk_jpegs_never_reach_the_batched_decoder(tmp_path, monkeypatch):
    """EXIF orientation is applied by torchvision on the CPU only, and nvjpeg may give CMYK wrong colours:
    such files go to PIL, and come out as PIL gives them."""
    upright, sideways = _upright_and_sideways(tmp_path, ".jpg")
    cmyk = write_image(tmp_path / "cmyk.jpg", size=(50, 40), color=3, mode="CMYK")
    paths = [upright, sideways, cmyk]
    calls = _refusing(monkeypatch, lambda index: False)
    batched = _collect(ImageBatches(paths, _prep(), device="cpu", gpu_decode=True))
    assert calls == [[0]]
    pil = _collect(ImageBatches(paths, _prep(), device="cpu", gpu_decode=False))
    assert all(torch.equal(batched[i], pil[i]) for i in (1, 2))


def test_a_decoder_whose_pixels_disagree_with_pil_is_switched_off_for_the_run(tmp_path, monkeypatch, capsys):
    """The guard: silent corruption (here a decoder that returns the photo upside down) is caught on the
    first batch, said once, and every photo is decoded by PIL instead."""
    paths = [write_image(tmp_path / f"{n}.jpg", size=(60, 48), color=n) for n in range(12)]
    real = ImageBatches._decode_jpegs
    monkeypatch.setattr(ImageBatches, "_decode_jpegs", lambda self, jpegs: real(self, jpegs).flip(2))
    batches = ImageBatches(paths, _prep(), device="cpu", batch_size=4, gpu_decode=True)
    got = _collect(batches)
    expected = _collect(ImageBatches(paths, _prep(), device="cpu", gpu_decode=False))
    assert sorted(got) == list(range(12)) and all(torch.equal(got[i], expected[i]) for i in expected)
    assert batches.decoded_by_batch == 0 and not batches.gpu_decode and batches.guard_levels > 6
    err = capsys.readouterr().err
    assert err.count("unlike PIL's") == 1 and "decoded by PIL instead" in err


def test_an_honest_decoder_passes_the_guard(mixed_files):
    batches = ImageBatches(mixed_files, _prep(), device="cpu", batch_size=8, gpu_decode=True)
    _collect(batches)
    assert batches.gpu_decode and batches.decoded_by_batch == 5 and batches.guard_levels < 1


def test_decode_thread_work_is_ordered_against_the_consumer(mixed_files, monkeypatch):
    """The stream protocol, with a recording stand-in for CUDA's streams: the decode thread enters its
    stream, synchronises it before every batched decode, marks each batch done; the consumer waits on
    that mark before it sees the batch."""
    import threading

    import torchvision.io

    from tlkit import decode

    log = []

    class Recorder:
        def enter_decode_thread(self):
            log.append(("enter", threading.current_thread() is threading.main_thread()))

        def before_batched_decode(self):
            log.append("sync")

        def batch_done(self):
            log.append("done")
            return len(log)

        def receive(self, images, done):
            log.append(("receive", done))

    real_decode = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **k: log.append("decode") or real_decode(*a, **k))
    monkeypatch.setattr(decode, "stream_order", lambda device: Recorder())
    seen = 0
    for batch in ImageBatches(mixed_files * 2, _prep(), device="cpu", batch_size=4, gpu_decode=True):
        assert log[-1][0] == "receive" and log[log[-1][1] - 1] == "done"  # waited on this batch's own mark
        seen += len(batch.indices)
    assert seen == 12 and log[0] == ("enter", False)  # in the decode thread, not the consumer's
    decodes = [n for n, entry in enumerate(log) if entry == "decode"]
    assert decodes and all(log[n - 1] == "sync" for n in decodes)


def test_cuda_stream_protocol_calls_torch_cuda_as_documented(monkeypatch):
    """_CudaStreams against stand-ins for torch.cuda's Stream, Event, set_stream and current_stream (the
    names must exist: monkeypatch refuses a missing attribute)."""
    from tlkit.decode import _CudaStreams

    calls = []

    class Stream:
        def __init__(self, device=None):
            calls.append(("Stream", device))

        def synchronize(self):
            calls.append("synchronize")

        def wait_event(self, event):
            calls.append(("wait_event", event))

    class Event:
        def record(self, stream):
            calls.append(("record", stream))

    consumer = Stream()
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: calls.append(("set_stream", stream)))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: consumer)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: calls.append(("record_stream", stream)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("device synchronize", device)))
    calls.clear()
    streams = _CudaStreams(torch.device("cuda", 0))
    streams.enter_decode_thread()
    streams.before_batched_decode()
    streams.after_refusal()
    done = streams.batch_done()
    streams.receive(torch.zeros(1), done)
    assert calls == [("Stream", torch.device("cuda", 0)), ("set_stream", streams.stream), "synchronize",
                     ("device synchronize", torch.device("cuda", 0)), ("record", streams.stream),
                     ("wait_event", done), ("record_stream", consumer)]


def test_the_uint8_batch_crosses_to_the_device_before_any_conversion():
    """Upload first (uint8, a quarter of the bytes, from pinned memory), then layout and dtype on the device:
    recorded on the meta device, which stands for CUDA here."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tlkit.decode import Normalizer

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            source = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if source is not None and isinstance(out, torch.Tensor):
                self.seen.append((source.device.type, out.device.type, out.dtype))
            return out

    normalise = Normalizer(_prep(), torch.device("meta"))
    normalise.layout = torch.channels_last  # as on CUDA
    images = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)  # contiguous: the layout changes too
    with Ops() as ops:
        out = normalise(images)
    first_cpu_op = next(entry for entry in ops.seen if entry[0] == "cpu")
    assert first_cpu_op == ("cpu", "meta", torch.uint8)
    assert sum(entry[0] == "cpu" for entry in ops.seen) == 1  # nothing else is done on the CPU
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
def test_batched_decode_matches_the_cpu_on_real_photos(tmp_path, mixed_files, capsys):
    """On the device (cuda; TLKIT_TEST_DEVICE=cpu rehearses it with torchvision's CPU decoder): the batched
    decoder really decodes (decoded_by_batch counts every JPEG it took), and at a geometry where both
    paths decode every pixel (photos up to 500 px, resize 256: no reduced-size decode) it agrees with
    torchvision's CPU decoder and with PIL within a mean of 0.05 (std 0.25: 3 levels of 255); the broken
    file is refused. Prints its figures for scripts/gpu_checks.sh."""
    device = device_under_test()
    grey = write_image(tmp_path / "grey.jpg", size=(70, 50), color=9, mode="L")
    photos = sorted(real_photos().glob("*.jpg"))[:20]
    files = [*mixed_files, grey, *photos]
    prep = _prep(resize_size=256, size=224)
    pil = _collect(ImageBatches(files, prep, device="cpu", gpu_decode=False))
    cpu = _collect(ImageBatches(files, prep, device="cpu", gpu_decode=True))
    started = time.perf_counter()
    on_device = ImageBatches(files, prep, device=device, batch_size=16, gpu_decode=True)
    got = _collect(on_device)
    seconds = time.perf_counter() - started
    assert sorted(got) == sorted(pil) and sorted(on_device.failures) == [6, 7]
    assert on_device.decoded_by_batch == 5 + 1 + len(photos)  # every JPEG but the broken one, batched
    to_cpu = {index: (cpu[index] - got[index].cpu()).abs().mean().item() for index in cpu}
    to_pil = {index: (pil[index] - got[index].cpu()).abs().mean().item() for index in pil}
    assert max(to_cpu.values()) < 0.05 and max(to_pil.values()) < 0.05
    with capsys.disabled():
        print(f"figure: {device} batched decode of {on_device.decoded_by_batch} JPEGs in {seconds:.2f} s, first-batch "
              f"guard {on_device.guard_levels:.2f} levels; largest mean difference to the CPU decoder "
              f"{max(to_cpu.values()):.4f}, to PIL {max(to_pil.values()):.4f} (bound 0.05)")


def test_decode_batches_are_capped_by_pixels(mixed_files):
    from tlkit.decode import _pixel_groups

    from tlkit.decode import batchable_pixels

    jpegs = [(i, path.read_bytes()) for i, path in enumerate(mixed_files[:5])]  # 60x48 .. 64x48 px
    sized = [(i, data, batchable_pixels(data)) for i, data in jpegs]
    groups = _pixel_groups(sized, max_pixels=2 * 62 * 48)
    assert [[i for i, _ in group] for group in groups] == [[0, 1], [2], [3], [4]]
    assert _pixel_groups(sized, max_pixels=10) == [[item] for item in jpegs]  # one file alone may exceed it


@pytest.mark.parametrize("gpu_decode", [False, True])
def test_an_image_over_the_pixel_limit_is_refused_by_either_decoder(tmp_path, gpu_decode):
    """The batched decoder (here torchvision's, on the CPU) refuses what PIL refuses, for the same reason."""
    files = [write_image(tmp_path / "0.jpg", size=(40, 30)), write_large_image(tmp_path / "1.jpg")]
    batches = ImageBatches(files, _prep(), device="cpu", batch_size=8, gpu_decode=gpu_decode)
    assert list(_collect(batches)) == [0]
    assert batches.failures[1].startswith("is too large to decode safely (over 89,478,485 pixels")


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
def real_photos_are_read_upright_in_every_path(tmp_path, suffix):
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
