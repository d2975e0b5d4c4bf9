"""The rows of a training batch that this process holds, and what a loss needs to act as if it held them all.

Under ``torchrun`` every process holds some rows of the global batch (the training loop says which, with
:func:`holding_rows`), and DDP averages the processes' gradients. That gives one process's gradient only if each
example is treated as one process would treat it:

- **random numbers per example.** If a loss drew its noise with ``torch.randn(local_shape)``, the processes would
  give their examples numbers that one process gives to other examples, and two processes would train another
  model than one. The loop seeds every process alike; :func:`randn`, :func:`rand`, :func:`randint`,
  :func:`bernoulli` and :func:`batch_positions` draw what one process would draw for the whole batch, from the
  same stream, and keep this process's rows (a few batch-sized tensors more than its share: little next to a
  network's forward and backward pass).
- **losses that compare examples** (CLIP's contrast of every image with every caption): :func:`gather` gives every
  process all rows of the batch, with gradients flowing back to the process that holds each row.

With one process, or outside :func:`holding_rows` (evaluation, sampling), these are ``torch.randn`` and friends,
and :func:`gather` returns its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.distributed as dist

# (start, stop, total): this process holds rows start..stop-1 of a global batch of total rows.
_HELD_ROWS: ContextVar[tuple[int, int, int] | None] = ContextVar("held_rows", default=None)


@contextmanager
def holding_rows(start: int, stop: int, total: int) -> Iterator[None]:
    """Within this block, draws for a batch of ``stop - start`` rows give rows ``start:stop`` of ``total``."""
    if not 0 <= start < stop <= total:
        raise ValueError(f"rows {start}:{stop} are not inside a batch of {total}")
    token = _HELD_ROWS.set((start, stop, total))
    try:
        yield
    finally:
        _HELD_ROWS.reset(token)


def batch_positions(local_size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """The positions of this process's rows in the global batch ``(local_size,)``, and the global batch size.

    A draw whose batch dimension is not ``local_size`` (an evaluation batch, a single example) is its own batch.
    """
    held = _HELD_ROWS.get()
    if held is None or held[1] - held[0] != local_size:
        return torch.arange(local_size, device=device), local_size
    start, stop, total = held
    return torch.arange(start, stop, device=device), total


def _for_held_rows(draw: Callable[[list[int]], torch.Tensor], shape: Sequence[int], batch_dim: int) -> torch.Tensor:
    shape = list(shape)
    positions, total = batch_positions(shape[batch_dim])
    if total == shape[batch_dim]:
        return draw(shape)
    shape[batch_dim] = total
    return draw(shape).narrow(batch_dim, int(positions[0]), len(positions))


def randn(shape: Sequence[int], *, batch_dim: int = 0, generator: torch.Generator | None = None,
          device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal numbers of ``shape``, whose dimension ``batch_dim`` runs over the batch's examples
    (from ``generator``, else torch's global stream)."""
    return _for_held_rows(lambda full: torch.randn(full, generator=generator, device=device, dtype=dtype),
                          shape, batch_dim)


def rand(shape: Sequence[int], *, batch_dim: int = 0, generator: torch.Generator | None = None,
         device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uniform numbers in [0, 1) of ``shape``, whose dimension ``batch_dim`` runs over the batch's examples."""
    return _for_held_rows(lambda full: torch.rand(full, generator=generator, device=device, dtype=dtype),
                          shape, batch_dim)


def randint(low: int, high: int, shape: Sequence[int], *, generator: torch.Generator | None = None,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Whole numbers uniform in [low, high) of ``shape``, examples along dimension 0."""
    return _for_held_rows(lambda full: torch.randint(low, high, full, generator=generator, device=device), shape, 0)


def bernoulli(probability: float, shape: Sequence[int], *, device: torch.device | str | None = None
              ) -> torch.Tensor:
    """True with ``probability`` (a bool tensor of ``shape``, examples along dimension 0)."""
    return rand(shape, device=device) < probability


class _GatherRows(torch.autograd.Function):
    """All processes' rows, concatenated in rank order; the gradient of this process's rows is the sum of what every
    process's loss sends them (each loss uses every row)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        ctx.start, ctx.stop = dist.get_rank() * len(rows), (dist.get_rank() + 1) * len(rows)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.start:ctx.stop]


def gather(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All rows of the global batch ``(total, ...)`` from this process's ``rows`` ``(local, ...)``, gathered across
    processes in rank order with their gradients, and the position of this process's first row in it."""
    positions, total = batch_positions(len(rows))
    if total == len(rows) or not (dist.is_available() and dist.is_initialized()):
        return rows, 0
    return _GatherRows.apply(rows), int(positions[0])
