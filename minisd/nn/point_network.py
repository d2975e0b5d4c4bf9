"""The network of a score model on points in R^D (the 2-D toys): an MLP that reads x_t and the time t."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from minisd.nn.embeddings import TimeEmbedding


class PointDenoisingMLP(nn.Module):
    """``network(x_t, t) -> (B, D)``: whatever the model predicts (eps, x0, v or the score) for points ``(B, D)``.

    Each hidden layer adds a projection of the time embedding before its SiLU, so every layer knows the
    noise level; the UNet's residual blocks do the same per channel. Unconditional: ``cond`` must be None.
    """

    def __init__(self, dim: int, hidden: list[int] = (128, 128, 128), embedding_dim: int = 64):
        super().__init__()
        widths = [dim, *hidden]
        self.time = TimeEmbedding(embedding_dim, embedding_dim)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.time_projections = nn.ModuleList(nn.Linear(embedding_dim, width) for width in hidden)
        self.out = nn.Linear(widths[-1], dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if cond is not None:
            raise ValueError("a point score model is unconditional: cond must be None")
        embedding = self.time(t)
        hidden = x
        for layer, projection in zip(self.layers, self.time_projections):
            hidden = F.silu(layer(hidden) + projection(embedding))
        return self.out(hidden)
