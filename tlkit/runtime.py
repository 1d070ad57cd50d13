"""Process-wide plumbing: the reporter (what tlkit prints, and where), progress bars, seeding, device choice,
and threads that work ahead of their consumer.

Chatter and progress bars go to stderr, results to stdout, both through the current Reporter
(`info`, `warn`, `result`, `progress`); `reporting(quiet=...)` sets it for a block of code.
Nothing here knows about datasets or models.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import ctypes
import errno
import importlib.util
import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tlkit.config import DEFAULT_PRECISION
from tlkit.errors import TlkitError, option

T = TypeVar("T")
R = TypeVar("R")


class Reporter:
    """Where tlkit's words go: chatter (info, warn) and progress bars to stderr, results (tables, what a command
    made) to stdout. quiet: no chatter and no bars; results: whether results are printed (default: unless quiet;
    `tlkit -q` keeps them, a Python call's quiet=True does not). rich renders markup, and finds a notebook itself."""

    def __init__(self, *, quiet: bool = False, results: bool | None = None):
        self.quiet = quiet
        self.chatter = Console(stderr=True, highlight=False, soft_wrap=True, quiet=quiet)
        self.results = Console(highlight=False, soft_wrap=True, quiet=quiet if results is None else not results)

    def info(self, message: str) -> None:
        self.chatter.print(message)

    def warn(self, message: str) -> None:
        self.chatter.print(f"[yellow]warning:[/] {message}")

    def result(self, *renderables) -> None:
        self.results.print(*renderables)

    def progress(self, *extra_columns) -> Progress:
        """A progress bar on stderr, in a terminal or a notebook; where a bar cannot redraw (a log file, or a
        notebook without ipywidgets, which rich's live display needs there), a line every LOG_EVERY_S seconds
        of a task instead (LogLines); nothing when quiet."""
        if self.quiet:
            return Progress(console=self.chatter, disable=True)
        # In a notebook rich draws a live bar into an ipywidgets Output, and without ipywidgets (not a dependency
        # of tlkit's) it only warns at every refresh: plain lines there instead.
        redraws = importlib.util.find_spec("ipywidgets") is not None if self.chatter.is_jupyter else \
            self.chatter.is_terminal
        if not redraws:
            return LogLines(self.chatter)
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
                        TimeElapsedColumn(), TimeRemainingColumn(), console=self.chatter, transient=True)


# The reporter of the code running now: each thread and each `reporting` block sees its own, so that one call's
# quiet=True cannot silence another thread's call, nor outlive its own call (an exception included).
_current: contextvars.ContextVar[Reporter] = contextvars.ContextVar("tlkit_reporter", default=Reporter())


@contextlib.contextmanager
def reporting(*, quiet: bool = False, results: bool | None = None) -> Iterator[Reporter]:
    """A Reporter(quiet, results) for the code in the block (threads started by map_ahead and the decode thread
    included); the one before it comes back at the block's end, however it ends."""
    token = _current.set(Reporter(quiet=quiet, results=results))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def silence() -> None:
    """Nothing printed from here to the end of the current `reporting` block (or thread): for the processes
    under torchrun other than rank 0, and for a script that prints its own tables."""
    _current.set(Reporter(quiet=True))


def reporter() -> Reporter:
    return _current.get()


def is_quiet() -> bool:
    return _current.get().quiet


def info(message: str) -> None:
    _current.get().info(message)


def warn(message: str) -> None:
    _current.get().warn(message)


def result(*renderables) -> None:
    """A result (a table, what was written) on stdout."""
    _current.get().result(*renderables)


def progress(*extra_columns) -> Progress:
    """The current reporter's progress bar (Reporter.progress)."""
    return _current.get().progress(*extra_columns)


def size_words(count: float) -> str:
    """A number of bytes as a person reads it: 512 kB, 37 MB, 1.4 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}" if count < 10 * scale else f"{count / scale:.0f} {unit}"
    return f"{count:.0f} bytes"


def out_of_memory(error: BaseException, *, batch_size: int | None = None, gpu_hint: str = "") -> str | None:
    """The one message for memory running out, the GPU's (torch.OutOfMemoryError) or the computer's (the CPU
    allocator's plain RuntimeError), with what to try; None for any other error. batch_size: the batch it ran
    out at, so that the message can name half of it. gpu_hint: one more thing to try when the GPU's ran out."""
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
        whose, last_resort = "GPU memory", f"{gpu_hint}, or {option('device', 'cpu')}"
    elif "can't allocate memory" in str(error):  # the CPU allocator's words
        whose, last_resort = "memory (the computer's, not a GPU's)", ", or close other programs"
    else:
        return None
    at = f" at batch size {batch_size}" if batch_size else ""
    smaller = option("batch_size", max(1, batch_size // 2)) if batch_size else f"a smaller {option('batch_size')}"
    return f"out of {whose}{at}; try {smaller} or a smaller {option('img_size')}{last_resort}."


def machine_fault(error: BaseException) -> str | None:
    """A fault of the machine's rather than of tlkit's code, in one sentence with what to do; None for
    anything else. The stages name their own files; this catches what reaches a command's top unnamed."""
    if (message := out_of_memory(error)) is not None:
        return message
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return f"the disk is full{where}; free some space, or write elsewhere (--out, --runs-dir, --cache-dir)."
    return None


def keep_freed_memory() -> None:
    """Have glibc keep freed memory in the process for the next batch instead of unmapping it.

    By default every block over 32 MB (one ResNet18 activation at batch 32 is 51 MB) is mapped on malloc
    and unmapped on free, so each batch page-faults through all its activations again: this call spares
    precompute most of that system time, at the same peak memory; training's mix of sizes fragments the heap
    more, so its peak grows a little (docs/benchmarks.md: Again, after issue 14's second session).
    Only the command line calls this (a Python caller's process is its own); a no-op off glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    mallopt(m_mmap_max, 0)  # large blocks come from the heap too, where free keeps them...
    mallopt(m_trim_threshold, 2**31 - 1)  # ...and the heap's top is not trimmed after each batch


def bf16_supported(device) -> bool:
    """Whether bf16 autocast is fast on this device: a CUDA GPU with bf16, or a CPU with AVX512-BF16
    or AMX (oneDNN's bf16 kernels; elsewhere a CPU emulates bf16, slower than fp32)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@dataclass(frozen=True)
class Compute:
    """Where and in what arithmetic a command computes, decided once (compute_for) and handed to every stage
    that runs a model: the device, bf16 autocast or fp32, and (from the device) the memory layout."""

    device: object  # a torch.device
    bf16: bool  # autocast to bf16: asked for (the default) and fast on this device
    asked: str = DEFAULT_PRECISION  # the precision asked for, to say why a run computes in fp32

    @property
    def layout(self):
        return memory_format(self.device)

    def autocast(self):
        """The one autocast context of a run: bf16 or a no-op."""
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def arithmetic(self) -> str:
        """What a cache made with it records: "cuda-bf16", "cpu-bf16" or "fp32" (bf16 differs per device)."""
        return f"{self.device.type}-bf16" if self.bf16 else "fp32"

    def words(self) -> str:
        """For a command's first line: the device and its arithmetic, and why not bf16 where it was asked for."""
        if self.bf16 or self.asked == "fp32":
            return f"{self.device.type}, {'bf16' if self.bf16 else 'fp32'}"
        why = "this CPU has no bf16 instructions" if self.device.type == "cpu" else "no bf16 on this GPU"
        return f"{self.device.type}, fp32 ({why})"


def compute_for(device="auto", precision: str = DEFAULT_PRECISION) -> Compute:
    """The Compute of a device (a name for select_device, or a torch.device) and the precision asked for."""
    import torch

    chosen = device if isinstance(device, torch.device) else select_device(device)
    return Compute(chosen, precision == "bf16" and bf16_supported(chosen), precision)


def memory_format(device):
    """The layout of images and convolutions: channels_last (NHWC) on CUDA and on every CPU, whatever the precision:
    oneDNN's convolution kernels are at least as fast on it and mostly faster, in fp32 on a CPU without bf16 too,
    for every backbone tried, trunk and training step alike (docs/benchmarks.md: Again, after issue 14's second
    session); together with bf16 a trunk runs far faster than in fp32 NCHW (docs/benchmarks.md: tlkit against
    the tutorial on the CPU (issue 14))."""
    import torch

    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


CPU_INFERENCE_BATCH, GPU_INFERENCE_BATCH = 32, 256


def inference_batch_size(device, asked: int | None = None) -> int:
    """Images per batch through a frozen network (precompute, predict, evaluate): `asked`, else 256 on a
    GPU and 32 on a CPU. A CPU's trunk runs as fast at 32 as at 256, and the first batch, decoded before
    any compute starts, is ready 8 times sooner, so the whole command ends sooner
    (docs/benchmarks.md: Again, after issue 15's session)."""
    if asked is not None:
        return asked
    return GPU_INFERENCE_BATCH if device.type == "cuda" else CPU_INFERENCE_BATCH


LOG_EVERY_S = 30.0


class LogLines(Progress):
    """Progress for a log file, where a bar cannot redraw: a task that runs for LOG_EVERY_S seconds says how
    far it is, and how long is left, every LOG_EVERY_S seconds, and how long it took at its end."""

    def __init__(self, console: Console):
        super().__init__(console=console, disable=True)  # rich still counts; only the drawing is off
        self._said: dict = {}  # task id -> when its last line was written

    def update(self, task_id, **changes) -> None:
        super().update(task_id, **changes)
        self._say(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id) -> None:
        task, now = self._tasks[task_id], time.monotonic()
        said = self._said.setdefault(task_id, task.start_time or now)
        done = task.total is not None and task.completed >= task.total
        if done and said != math.inf and now - (task.start_time or now) >= LOG_EVERY_S:
            self.console.print(f"{task.description}: {task.completed:,.0f} done in {now - task.start_time:.0f} s")
            self._said[task_id] = math.inf  # said once
        elif not done and now - said >= LOG_EVERY_S:
            left = f", about {task.time_remaining:.0f} s left" if task.time_remaining is not None else ""
            self.console.print(f"{task.description}: {task.completed:,.0f}/{task.total:,.0f} after "
                               f"{now - task.start_time:.0f} s{left}")
            self._said[task_id] = now


def map_ahead(work: Callable[[T], R], items: Iterable[T], *, threads: int, ahead: int) -> Iterator[R]:
    """work(item) for each item, in order, done by `threads` threads at most `ahead` items in front of the
    consumer: the next ones are under way while the consumer holds this one. An exception in work is raised
    here; a consumer that stops early cancels what was not started. The work runs in the caller's context
    (its reporter, its naming of options)."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="tlkit-ahead")
    upcoming = iter(items)

    def start(item):
        return pool.submit(contextvars.copy_context().run, work, item)

    try:
        pending = collections.deque(start(item) for item in itertools.islice(upcoming, ahead))
        while pending:
            finished = pending.popleft().result()
            pending.extend(start(item) for item in itertools.islice(upcoming, 1))
            yield finished
    finally:
        pool.shutdown(cancel_futures=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a CPU run repeats exactly."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_workers(asked: int | None = None) -> int:
    """Loader or decode workers: `asked`, else every core but one for the main process, at least one."""
    if asked is not None:
        return asked
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - 1)


def relpath(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it. The last part is
    kept as it is, not followed: a link is named as itself (runs/latest), not as what it points to."""
    path = Path(path)
    try:
        return str((path.parent.resolve() / path.name).relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def select_device(name: str = "auto"):
    """`auto`: CUDA when PyTorch sees a GPU, else the CPU; `cuda` without a GPU is a user error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TlkitError(f"{option('device', name)} was asked for, but PyTorch sees no CUDA GPU; use "
                         f"{option('device', 'cpu')} or auto.")
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # under torchrun: one GPU per process
    try:
        return torch.device(name)
    except RuntimeError:
        raise TlkitError(f"{option('device', name)} is not a device; use auto, cpu, cuda or cuda:N.") from None
