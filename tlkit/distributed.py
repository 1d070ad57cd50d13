"""Several processes under torchrun: the process group, who is who, and the few collectives tlkit needs.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous); tlkit never launches
processes itself. Without those variables (or with WORLD_SIZE 1) every helper here is the
identity of a single process, so one-process runs behave exactly as without this module.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from tlkit.errors import TlkitError
from tlkit.runtime import silence

T = TypeVar("T")


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints (also before the group is set up)."""
    return rank() == 0 if active() else int(os.environ.get("RANK", "0")) == 0


def quiet_unless_main() -> None:
    """The other processes print nothing: no chatter, no progress bars, no results."""
    if not is_main():
        silence()


def setup(device: torch.device) -> None:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU); nothing without torchrun, or when joined."""
    if not launched() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the group: nccl's collectives run on the current device
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    atexit.register(dist.destroy_process_group)
    quiet_unless_main()


def wrap_model(model: torch.nn.Module, device: torch.device, *, find_unused_parameters: bool = False):
    """DistributedDataParallel around `model` (gradients averaged over processes); the model itself alone."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def sum_all(values: Sequence[float], device: torch.device) -> list[float]:
    """Each value summed over every process (the same result on all of them)."""
    if not active():
        return [float(value) for value in values]
    totals = torch.tensor([float(value) for value in values], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def barrier() -> None:
    if active():
        dist.barrier()


def all_gather(obj: T) -> list[T]:
    """Every process's `obj`, in rank order, on every process (pickled: keep it small)."""
    if not active():
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_to_main(obj: T) -> list[T] | None:
    """Every process's `obj`, in rank order, on rank 0; None on the others."""
    if not active():
        return [obj]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def on_main(make: Callable[[], T]) -> T:
    """make() on rank 0 only; every process gets its result, or raises the TlkitError it raised."""
    if not active():
        return make()
    result, error = None, None
    if is_main():
        try:
            result = make()
        except TlkitError as raised:
            error = str(raised)
    shared = [(result, error)]
    dist.broadcast_object_list(shared, src=0)
    result, error = shared[0]
    if error is not None:
        raise TlkitError(error)
    return result


def shard(items: Sequence[T]) -> list[T]:
    """This process's share: items rank, rank + world, ...; the shares of all processes are `items`."""
    return list(items[rank()::world_size()])


def unshard_rows(share: np.ndarray, failures: dict[int, str], count: int, *, everywhere: bool,
                 allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.empty,
                 ) -> tuple[np.ndarray, dict[int, str]] | None:
    """The inverse of `shard` for rows every process computed: the `count` rows (the second-to-last axis), each
    process's share back in its places, and every process's {row: why it failed}, sorted.

    everywhere: every process gets the whole; otherwise rank 0 alone, and None the others. allocate(shape, dtype)
    makes the whole array: np.empty, or a memory map that writes it straight to disk."""
    gathered = all_gather((share, failures)) if everywhere else gather_to_main((share, failures))
    if gathered is None:
        return None
    rows = allocate((*share.shape[:-2], count, share.shape[-1]), share.dtype)
    every_failure = {}
    for rank_of_share, (part, failed) in enumerate(gathered):
        rows[..., rank_of_share::len(gathered), :] = part
        every_failure.update(failed)
    return rows, dict(sorted(every_failure.items()))


def shard_order(order: torch.Tensor, *, equal: bool) -> torch.Tensor:
    """This process's positions of a shared order; equal: drop the last len % world so every share is as long
    (training: DistributedDataParallel needs the same number of steps on every process)."""
    world = world_size()
    usable = len(order) - len(order) % world if equal else len(order)
    return order[rank():usable:world]
