"""Dropout whose masks follow the examples, not the process: see :mod:`minisd.batch_rows`."""

from __future__ import annotations

import torch
from torch import nn

from minisd import batch_rows


class Dropout(nn.Module):
    """``torch.nn.Dropout`` (Srivastava et al. 2014: zero each unit with probability ``p`` while training, scale
    the rest by 1 / (1 - p)), with masks drawn per example by :func:`minisd.batch_rows.rand`, so that under
    torchrun an example gets the mask one process would give it. Inputs ``(B, ...)``, examples first."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout is a probability below 1, got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = batch_rows.rand(x.shape, device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
