"""torch.distributed under ``torchrun``: process group, device, rank-0-first, gathering."""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "is_main_process", "select_device"]


def select_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:<local_rank>`` when CUDA is available, else CPU; else ``device``.

    ``"cuda"`` without an index is this process's GPU too, ``cuda:<local_rank>`` (each
    ``torchrun`` process its own; one process: ``cuda:0``)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a torch device ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        # torch.cuda.set_device and DDP's device_ids need an index; "cuda" means the GPU of
        # this process's local rank, as "auto" does
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


@dataclass
class DistEnv:
    """Rank, world size and device of this process (world size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a dataset cache), then the others."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.to(self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def close(self) -> None:
        """Done with this environment. A group that :func:`init_distributed` created is kept
        until the process exits (and destroyed then), so a later :func:`init_distributed` in the
        same process (a second ``fit`` or ``run_benchmark``) reuses it: under torchrun the
        default group cannot be created a second time (the new group's rendezvous could read
        the first group's addresses from torchrun's store, and crashed or hung)."""
        self.owns_group = False


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    """The launcher variable ``name`` as an int (unset or empty: ``default``); a value that is
    not an integer is named, with the variable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer (set by a launcher such as "
            "torchrun; unset it for a single process)"
        ) from None


def is_main_process() -> bool:
    """Whether this process is rank 0 as :func:`init_distributed` sees it: the rank of an
    initialised group, else ``RANK`` when a launcher set ``WORLD_SIZE`` > 1, else True (one
    process; a ``RANK`` left in the environment without ``WORLD_SIZE`` does not make it a
    second rank, as it does not for the trainer, which writes the results then)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    if _env_int("WORLD_SIZE", 1) <= 1:
        return True
    return _env_int("RANK", 0) == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Backend: nccl when the device is CUDA, else gloo. Without torchrun this is a no-op returning
    a world of size 1. An already-initialised group is reused and never destroyed here, also
    one set up without torchrun's variables (``torch.multiprocessing.spawn`` with an explicit
    rank and world size; the local rank is then ``LOCAL_RANK``, else the rank). A group created
    here lives until the process exits, so later calls (a second ``fit``) reuse it.
    """
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        local_rank = _env_int("LOCAL_RANK", rank)
        dev = select_device(device, local_rank)
        return DistEnv(rank, dist.get_world_size(), local_rank, dev, False)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = select_device(device, local_rank)
    if world <= 1:
        return DistEnv(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    atexit.register(_destroy_group)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, True)
