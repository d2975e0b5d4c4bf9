"""The few pieces of torch.distributed the training loop needs (torchrun sets RANK and WORLD_SIZE)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by ``torchrun``; return ``(rank, world_size)``.

    gloo carries CPU tensors, nccl CUDA ones. A plain ``python`` run is rank 0 of 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size


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
