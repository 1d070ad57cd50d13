"""Batched image decoding for the inference stages: precompute, predict and evaluate.

Turns a list of files into normalised [N, C, H, W] batches on the model's device, following
a backbone's eval preprocessing (resize as its crop_mode says, centre crop). On CUDA, JPEGs are
decoded by nvjpeg in batches and resized there; other formats, and everything on a CPU, go
through PIL (in threads beside the model on a CPU, in loader processes for a GPU), large JPEGs
decoded at reduced size (PIL draft). A file that fails to decode is recorded in `failures` and
left out; it never stops the run.

The batched decoder is trusted only as far as it is checked:
- JPEGs it would get wrong never reach it: an EXIF orientation other than 1 (torchvision applies it
  on the CPU only) and CMYK/YCCK files go to PIL, as do the files it refuses (said once); a decoder
  that refuses file after file on its own, having decoded none, stops with a message;
- the first files it decodes in a run are decoded by PIL too, at full size, and compared: above
  GUARD_LEVELS, batched decoding is switched off for the run, with one line saying so;
- on CUDA it decodes in a thread on a stream of its own, synchronised before each decode (nvjpeg
  writes its outputs from a stream that waits for nothing queued: pytorch/vision#9606), and each
  batch is handed over with an event the consumer waits for and `record_stream`.
"""

from __future__ import annotations

import contextvars
import io
import itertools
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from tlkit.errors import TlkitError, option
from tlkit.runtime import map_ahead, memory_format, warn
from tlkit.scan import DECODE_ERRORS, EMPTY_FILE, EXIF_ORIENTATION, decode_failure, open_image, open_photo

_JPEG_MAGIC = b"\xff\xd8"
MAX_DECODE_PIXELS = 400_000_000 // 3  # decoded bytes of one batched decode call: about 400 MB of RGB
DECODER_DEAD_AFTER = 8  # single files refused with not one file decoded: the decoder itself does not work here
GUARD_FILES = 4  # files of the first batched decode that PIL decodes too
GUARD_LEVELS = 6.0  # their largest mean difference (of 255) before batched decoding is switched off


@dataclass
class Batch:
    images: torch.Tensor  # float [N, C, H, W], normalised, on the target device
    indices: list[int]  # where these images stand in the input list


def _eval_sizes(prep) -> tuple[int | tuple[int, int], tuple[int, int]]:
    """(what to resize to, what to crop to), as timm's eval transform builds them. An int: the shorter
    side to it (crop_mode center). A (height, width): both sides to it (squash, or no resize_size: a
    straight resize, nothing cut), or the box the image is fitted into keeping its aspect (border)."""
    crop = tuple(prep.input_size)
    if not prep.resize_size:
        return crop, crop
    return (prep.resize_size if prep.crop_mode == "center" else scale_size(prep)), crop


def scale_size(prep) -> tuple[int, int]:
    """(height, width) that crop_modes squash and border scale to: timm scales each side of the input by
    1 / crop_pct, and resize_size is the shorter side's. (Exact for a square input or crop_pct 1, which
    covers every timm config with these modes.)"""
    return tuple(side * prep.resize_size // min(prep.input_size) for side in prep.input_size)


def _fit_inside(image_size: list[int], box: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the image scaled so that its longer side (relative to the box) meets the box:
    timm's ResizeKeepRatio(longest=1), rounded as it rounds."""
    ratio = max(image / side for image, side in zip(image_size, box))
    return tuple(round(image / ratio) for image in image_size)


def _pad_to(image, crop: tuple[int, int], mean: tuple[float, ...]):
    """Pad a side shorter than the crop evenly (odd pixel after), with the mean colour as timm does;
    torchvision's center_crop would pad with black."""
    height, width = F.get_size(image)
    extra_h, extra_w = max(crop[0] - height, 0), max(crop[1] - width, 0)
    if not extra_h and not extra_w:
        return image
    fill = [round(255 * value) for value in mean]
    padding = [extra_w // 2, extra_h // 2, (extra_w + 1) // 2, (extra_h + 1) // 2]  # left, top, right, bottom
    return F.pad(image, padding, fill=fill if len(fill) > 1 else fill[0])


def resize_crop(image, prep):
    """The eval geometry on a PIL image or a uint8 tensor, on whatever device it sits: every file the inference
    stages decode, and the PIL images and uint8 tensors given to tlkit.api's Classifier, go through it."""
    resize, crop = _eval_sizes(prep)
    border = bool(prep.resize_size) and prep.crop_mode == "border"
    if border:
        resize = _fit_inside(F.get_size(image), resize)
    interpolation = InterpolationMode(prep.interpolation)
    image = F.resize(image, list(resize) if isinstance(resize, tuple) else [resize], interpolation=interpolation,
                     antialias=True)
    return F.center_crop(_pad_to(image, crop, prep.mean) if border else image, list(crop))


def draft_side(prep) -> int:
    """The side a JPEG may be decoded down to (PIL draft) and still be resized, not blown up, to the eval geometry."""
    resize, _ = _eval_sizes(prep)
    return max(resize) if isinstance(resize, tuple) else resize


def load_image(path: Path, prep, full_size: bool = False) -> torch.Tensor:
    """One file -> uint8 [C, H, W] in the model's geometry and channel count, via PIL. full_size: no
    reduced-size JPEG decode (the geometry of the batched decoder, which decodes every pixel)."""
    image = open_photo(path, "RGB" if prep.in_chans == 3 else "L", draft_side=None if full_size else draft_side(prep))
    return F.pil_to_tensor(resize_crop(image, prep))


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path], indices: Sequence[int], load):
        self.paths, self.indices, self.load = paths, list(indices), load

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        index = self.indices[item]
        try:
            if self.paths[index].stat().st_size == 0:
                return index, None, EMPTY_FILE
            return index, self.load(self.paths[index]), None
        except DECODE_ERRORS as error:
            return index, None, decode_failure(error)


def _collate(samples):
    """Keep what decoded, as one uint8 [N, C, H, W] batch laid out channels_last; pass the failures on beside it.
    PIL's pixels are [H, W, C] (pil_to_tensor gives a [C, H, W] view of them): stacking them as they are is a
    straight copy, where a contiguous [N, C, H, W] would transpose every image, and the trunk wants channels_last."""
    good = [(index, image) for index, image, _ in samples if image is not None]
    failed = [(index, why) for index, image, why in samples if image is None]
    images = torch.stack([image.permute(1, 2, 0) for _, image in good]).permute(0, 3, 1, 2) if good else None
    return [index for index, _ in good], images, failed


class Normalizer:
    """uint8 batches -> float, normalised with the backbone's mean/std, on the device, in the layout
    the model computes in (runtime.memory_format)."""

    def __init__(self, prep, device: torch.device):
        mean = torch.tensor(prep.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(prep.std, device=device).view(1, -1, 1, 1)
        self.scale, self.shift, self.device = 1 / (255 * std), mean / std, device
        self.layout = memory_format(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # The uint8s cross to the device as they are (a quarter of the bytes, straight from pinned memory):
        # a dtype or layout change folded into that copy would be made on the CPU first, into unpinned memory.
        # The layout is then settled on the uint8s (PIL's batches come channels_last already), the float is
        # one fresh copy and the rest happens in place: half the time of float, multiply, subtract, then
        # re-layout (docs/benchmarks.md: Again, after issue 15's session).
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.layout)
        return images.to(torch.float32, copy=True).mul_(self.scale).sub_(self.shift)


def pixel_batches(images: dict[int, torch.Tensor], prep, device: torch.device, batch_size: int) -> Iterator[Batch]:
    """Images already in memory, by index, as Batches of at most batch_size: uint8 pixels at the model's geometry
    (resize_crop) normalised as decoded files are, float ones (normalised already) moved to the device as they are."""
    normalise, layout, indices = Normalizer(prep, device), memory_format(device), list(images)
    for start in range(0, len(indices), batch_size):
        chosen = indices[start:start + batch_size]
        stacked = torch.stack([images[index] for index in chosen])
        yield Batch(normalise(stacked) if stacked.dtype == torch.uint8 else
                    stacked.to(device, torch.float32).contiguous(memory_format=layout), chosen)


class ImageBatches:
    """Iterate normalised batches of `paths`; `failures` maps a failed index to its reason."""

    def __init__(self, paths: Sequence[Path], prep, *, device: torch.device, batch_size: int = 256,
                 workers: int = 0, gpu_decode: bool | None = None, load=None, normalise: bool = True):
        """workers: PIL's decoders beside the model, threads on a CPU and loader processes for a GPU (0: inline).
        `load(path) -> uint8 [C, H, W]` replaces the eval geometry (augmented views; called from several
        threads at once on a CPU); PIL path only. normalise False: the batches stay uint8 (what the
        decoded-image cache stores); normalised, they are float in the layout of runtime.memory_format."""
        self.paths, self.prep, self.device = [Path(p) for p in paths], prep, torch.device(device)
        self.batch_size, self.workers = batch_size, workers
        self.load = load or partial(load_image, prep=prep)
        self.gpu_decode = (self.device.type == "cuda" if gpu_decode is None else gpu_decode) and load is None
        self.failures: dict[int, str] = {}
        self.decoded_by_batch, self.refusals = 0, 0  # files the batched decoder took; single files it refused
        self.guard_levels: float | None = None  # the first batched decode's largest mean difference to PIL
        self._said_refusal, self._refusal = False, ""
        self._streams = stream_order(self.device) if self.gpu_decode else None
        self._normalise = (Normalizer(prep, self.device) if normalise
                           else (lambda images: images.to(self.device)))

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Batch]:
        self.failures.clear()
        if self.gpu_decode:
            yield from self._tensor_batches()
        else:
            yield from self._pil_batches(range(len(self.paths)))

    def _pil_batches(self, indices: Sequence[int]) -> Iterator[Batch]:
        dataset = _PilDataset(self.paths, indices, self.load)
        if self.device.type == "cpu" and self.workers > 0:
            # On a CPU the decode shares the cores with the model, and threads of this process do it best: PIL
            # lets go of the GIL while it decodes and resizes, and there is no worker process to start nor batch
            # to hand across (docs/benchmarks.md: Again, after issue 14's second session).
            samples = map_ahead(dataset.__getitem__, range(len(dataset)), threads=self.workers,
                                ahead=2 * self.batch_size)
            batches = (_collate(list(itertools.islice(samples, self.batch_size)))
                       for _ in range(0, len(dataset), self.batch_size))
        else:
            batches = torch.utils.data.DataLoader(
                dataset, batch_size=self.batch_size, num_workers=self.workers, collate_fn=_collate,
                pin_memory=self.device.type == "cuda", persistent_workers=False,
                # Its own generator: drawing worker seeds must not move the global RNG (dropout, init).
                generator=torch.Generator().manual_seed(0),
            )
        for batch_indices, images, failed in batches:
            self.failures.update(failed)
            if batch_indices:
                yield Batch(self._normalise(images), batch_indices)

    def _tensor_batches(self) -> Iterator[Batch]:
        """Read bytes in threads two chunks ahead; decode JPEG batches with torchvision.io in a thread of
        their own one batch ahead, so that decoding and resizing chunk i+1 overlap the model on chunk i."""
        def decoded() -> Iterator[tuple[Batch, object]]:
            self._streams.enter_decode_thread()
            for batch in self._decoded_batches():
                yield batch, self._streams.batch_done()

        for batch, done in _ahead(decoded(), depth=1):
            self._streams.receive(batch.images, done)
            yield batch

    def _decoded_batches(self) -> Iterator[Batch]:
        chunks = [list(range(i, min(i + self.batch_size, len(self.paths))))
                  for i in range(0, len(self.paths), self.batch_size)]
        read_chunk = lambda chunk: [(i, _read(self.paths[i])) for i in chunk]  # noqa: E731
        for_pil: list[int] = []  # other files, and those the batched decoder refused: one PIL pass at the end
        # Two chunks in flight: the next is read while this one decodes; memory stays bounded.
        for chunk_bytes in map_ahead(read_chunk, chunks, threads=2, ahead=2):
            yield from self._decode_chunk(chunk_bytes, for_pil)
        if for_pil:
            yield from self._pil_batches(sorted(for_pil))

    def _decode_chunk(self, chunk_bytes: list[tuple[int, bytes | str]], for_pil: list[int]) -> Iterator[Batch]:
        self.failures.update({i: data for i, data in chunk_bytes if isinstance(data, str)})
        readable = [(i, data, batchable_pixels(data)) for i, data in chunk_bytes if isinstance(data, bytes)]
        for_pil += [i for i, _, pixels in readable if not pixels]
        for group in _pixel_groups([item for item in readable if item[2]], MAX_DECODE_PIXELS):
            for decoded_group, images in self._decode_or_halve(group, for_pil):
                yield Batch(self._normalise(images), [i for i, _ in decoded_group])
        self._check_alive()

    def _decode_or_halve(self, jpegs: list[tuple[int, bytes]], for_pil: list[int]):
        """(files, images) for what the batched decoder takes. torchvision raises one error for the whole
        list (a damaged file, or the decoder out of memory), so a refused list is split in halves until
        the files it refuses stand alone; those go to PIL, as everything does once the guard switched the
        batched decoder off (in the middle of a halving too)."""
        if not self.gpu_decode:
            for_pil += [i for i, _ in jpegs]
            return []
        try:
            images = self._decode_jpegs(jpegs)
        except RuntimeError as error:
            self._streams.after_refusal()
            self._refused(error, jpegs)
            if len(jpegs) == 1:
                for_pil.append(jpegs[0][0])
                return []
            middle = len(jpegs) // 2
            return self._decode_or_halve(jpegs[:middle], for_pil) + self._decode_or_halve(jpegs[middle:], for_pil)
        if self.guard_levels is None and not self._guard(jpegs, images):
            for_pil += [i for i, _ in jpegs]
            return []
        self.decoded_by_batch += len(jpegs)
        return [(jpegs, images)]

    def _refused(self, error: RuntimeError, jpegs: list[tuple[int, bytes]]) -> None:
        """Say once that the batched decoder refused files; count the files it refused on their own (a list
        it refuses may hold just one bad file: that says nothing of the others)."""
        self._refusal = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not self._said_refusal:
            warn(f"the batched JPEG decoder ({self.device.type}) refused {len(jpegs)} file(s): {self._refusal}. "
                 "Those batches are retried in halves, and the files it refuses are decoded by PIL (slower, "
                 "same pixels).")
            self._said_refusal = True
        self.refusals += len(jpegs) == 1

    def _check_alive(self) -> None:
        """Stop when, after a whole chunk, the batched decoder has refused file after file on its own and taken
        none: the decoder itself does not work here. (Judged per chunk, not mid-halving: a chunk whose first
        files are all damaged still reaches its good ones first.)"""
        if self.gpu_decode and self.decoded_by_batch == 0 and self.refusals >= DECODER_DEAD_AFTER:
            raise TlkitError(f"the batched JPEG decoder on {self.device} has refused every file it was given "
                             f"({self.refusals} files, each on its own; torchvision says: {self._refusal}). Run on "
                             f"the CPU ({option('device', 'cpu')}), or check the CUDA and torchvision installation "
                             "(nvjpeg).")

    def _guard(self, jpegs: list[tuple[int, bytes]], images: torch.Tensor) -> bool:
        """Whether the first files the batched decoder gave agree with PIL's full-size decode of them; when
        they do not, it is switched off for the run, said once. (Corruption, a wrong colour conversion or
        a turned photo is tens of levels; two decoders and two resize kernels differ by one or two.)"""
        compared, expected = [], []
        for position, (index, _) in enumerate(jpegs[:GUARD_FILES]):
            try:
                expected.append(load_image(self.paths[index], self.prep, full_size=True))
                compared.append(position)
            except DECODE_ERRORS:
                continue  # PIL refuses what nvjpeg took (a truncated file): no reference for it
        if not expected:
            return True  # nothing to compare yet: the next batch is checked
        got = images[compared].cpu()
        self.guard_levels = (got.float() - torch.stack(expected).float()).abs().mean(dim=(1, 2, 3)).max().item()
        if self.guard_levels <= GUARD_LEVELS:
            return True
        self.gpu_decode = False
        warn(f"the batched JPEG decoder ({self.device.type}) gave pixels unlike PIL's for the same files (a mean "
             f"difference of {self.guard_levels:.1f} levels of 255, over {GUARD_LEVELS:g}): every photo of this run "
             "is decoded by PIL instead (slower, right). Check the CUDA and torchvision installation (nvjpeg).")
        return False

    def _decode_jpegs(self, jpegs: list[tuple[int, bytes]]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        mode = ImageReadMode.RGB if self.prep.in_chans == 3 else ImageReadMode.GRAY
        data = [torch.frombuffer(bytearray(raw), dtype=torch.uint8) for _, raw in jpegs]
        self._streams.before_batched_decode()
        with warnings.catch_warnings():
            # torchvision 0.29 marks its image I/O as moving to TorchCodec; it still works.
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(data, mode=mode, device=self.device)
        return torch.stack([resize_crop(image, self.prep) for image in images])


def stream_order(device: torch.device):
    """How the decode thread's CUDA work is ordered against the consumer's: _CudaStreams on CUDA; nothing
    to order elsewhere."""
    return _CudaStreams(device) if device.type == "cuda" else _NoStreams()


class _NoStreams:
    def enter_decode_thread(self) -> None: ...
    def before_batched_decode(self) -> None: ...
    def after_refusal(self) -> None: ...
    def batch_done(self) -> None: ...
    def receive(self, images: torch.Tensor, done) -> None: ...


class _CudaStreams:
    """The decode thread works on a stream of its own; the consumer (the model) on its current stream.

    Memory the caching allocator gives nvjpeg must be idle: torchvision allocates the outputs on the current
    stream and decodes on a pool stream that waits for nothing, so a block freed on the decode stream while
    its kernels (the previous batch's resize) are still queued could be written under them. The decode stream
    is therefore synchronised before each batched decode (torchcodec's fix, meta-pytorch/torchcodec#1634).
    A finished batch carries an event; the consumer's stream waits for it, and `record_stream` keeps the
    allocator from handing the batch's memory back to the decode stream while the consumer still reads it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def enter_decode_thread(self) -> None:
        torch.cuda.set_stream(self.stream)  # current for this thread only; the thread ends with the run

    def before_batched_decode(self) -> None:
        self.stream.synchronize()

    def after_refusal(self) -> None:
        # torchvision skips its closing sync when it throws: what it queued may still write into freed blocks
        torch.cuda.synchronize(self.device)

    def batch_done(self) -> torch.cuda.Event:
        done = torch.cuda.Event()
        done.record(self.stream)
        return done

    def receive(self, images: torch.Tensor, done: torch.cuda.Event) -> None:
        consumer = torch.cuda.current_stream(self.device)
        consumer.wait_event(done)
        images.record_stream(consumer)


def _ahead(items: Iterator, depth: int) -> Iterator:
    """The items of `items`, produced in a thread up to `depth` ahead of the consumer. An exception
    there is raised here; a consumer that stops early stops the thread. (CUDA work queued by the thread
    goes to the same default stream as the consumer's, so the order on the GPU is kept.)"""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(entry) -> bool:
        """Put entry in the queue unless the consumer stopped first (then never block on a full queue)."""
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((done, None))
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, who raises it)
            offer((done, error))

    # In the consumer's context: its reporter (a quiet call stays quiet) and its naming of options.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name="tlkit-decode",
                              daemon=True)
    thread.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def batchable_pixels(data: bytes) -> int:
    """Pixels of a JPEG the batched decoder may be given, from its header (PIL reads the header only);
    0 for any other file: not a JPEG, a header PIL cannot read or an image over the pixel limit (PIL then
    says why), an EXIF orientation other than 1 (torchvision applies it on the CPU only: nvjpeg's photo
    would come out turned) or CMYK/YCCK (which nvjpeg may decode to wrong colours instead of refusing)."""
    if data[:2] != _JPEG_MAGIC:
        return 0
    try:
        with open_image(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return 0
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                return 0
            return image.width * image.height
    except DECODE_ERRORS:
        return 0


def _pixel_groups(jpegs: list[tuple[int, bytes, int]], max_pixels: int) -> list[list[tuple[int, bytes]]]:
    """(index, data, pixels) -> consecutive groups of (index, data) of at most max_pixels decoded pixels
    each (a file larger than that alone): 256 twelve-megapixel photos would otherwise need about 9 GB at once."""
    groups, current, total = [], [], 0
    for index, data, pixels in jpegs:
        if current and total + pixels > max_pixels:
            groups.append(current)
            current, total = [], 0
        current.append((index, data))
        total += pixels
    return groups + ([current] if current else [])


def _read(path: Path) -> bytes | str:
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"cannot be read ({error})"
    return data if data else EMPTY_FILE
