"""The few pieces of torch.distributed that training needs (torchrun sets RANK and WORLD_SIZE): the loop's
DDP, and the text-to-image command's decisions taken once, by rank 0, for every rank."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from minisd.errors import MinisdError

T = TypeVar("T")


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by ``torchrun``; return ``(rank, world_size)``.

    gloo carries CPU tensors, nccl CUDA ones. A plain ``python`` run is rank 0 of 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl's collectives (barrier, broadcast_object_list) use the current GPU
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


def process_device(device: torch.device) -> torch.device:
    """The device of this process: under ``torchrun`` each process takes the GPU of its local rank."""
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", local_rank())
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """Be in the process group for the whole block; yields ``(rank, world_size)``.

    A command made of several training runs (the stages of a text-to-image model) joins once, so that the
    work only rank 0 does between the runs can be fenced and its decisions shared; the loop's own
    :func:`setup` then finds the group joined and leaves it be. The group is left at the end only by the
    call that joined it.
    """
    joined_here = not is_initialized()
    rank_and_size = setup(device)
    try:
        yield rank_and_size
    finally:
        if joined_here:
            teardown()


def on_main_process(work: Callable[[], T]) -> T:
    """Do ``work`` on rank 0 alone and return its result on every rank (just ``work()`` outside a group).

    For what is decided from files, or writes them: rank 0 alone reads and writes the run folder, so every
    rank takes the same branch and none reads a file half written. The other ranks wait until rank 0 is
    done. If ``work`` fails, every rank raises: a :class:`MinisdError` as it is (one message from each
    process, the same), anything else as a ``MinisdError`` naming it on the other ranks; no rank is left
    waiting for one that has stopped.
    """
    if not is_initialized():
        return work()
    outcome: list[Any] = [None]
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome[0] = (True, work())
        except BaseException as error:  # noqa: BLE001 - re-raised below, after the other ranks are told
            failure = error
            outcome[0] = (False, error if isinstance(error, MinisdError)
                          else MinisdError(f"rank 0 stopped with {type(error).__name__}: {error}"))
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def is_initialized() -> bool:
    """Whether this process is in a process group (joined by :func:`setup` or by the caller)."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0, the process that writes files and prints summaries (every process of a plain run)."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over all processes (identity when not distributed)."""
    if not is_initialized():
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return dict(zip(keys, (tensor / dist.get_world_size()).tolist()))


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group, so that torch does not warn at exit about a group never destroyed."""
    if is_initialized():
        dist.destroy_process_group()
