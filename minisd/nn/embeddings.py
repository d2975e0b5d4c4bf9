"""Diffusion time as a vector a network can use: sinusoidal features of t, then a small MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

from minisd.nn.mlp import mlp

# The network sees 1000 t, as if t were the integer step of a 1000-step DDPM (Ho et al. 2020).
# With frequencies from 1 down to 1/10000 (below), the fastest feature turns by one radian
# between neighbouring steps t and t + 1/1000, so even close noise levels get distinct features,
# while the slowest changes monotonically over all of [0, 1]. Feeding t itself would leave every
# feature but a handful nearly constant. We embed t rather than the log-SNR so that the network
# does not depend on the schedule; a model that prefers log-SNR can pass a rescaled one as t.
TIME_SCALE = 1000.0
MAX_PERIOD = 10_000.0


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Transformer position features of a continuous value (Vaswani et al. 2017, sec. 3.5).

    ``values``: ``(B,)`` -> ``(B, dim)``: ``[cos(v w_0), ..., cos(v w_{k-1}), sin(v w_0), ..., sin(v w_{k-1})]``
    with ``k = dim / 2`` frequencies ``w_i = max_period ** (-i / k)``, geometric from 1 to ``1 / max_period``.
    """
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal features come in cos/sin pairs, so dim must be even, got {dim}")
    half = dim // 2
    exponents = torch.arange(half, device=values.device, dtype=torch.float32) / half
    frequencies = torch.exp(-math.log(max_period) * exponents)
    angles = values.float()[:, None] * frequencies
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimeEmbedding(nn.Module):
    """Times ``t: (B,)`` in [0, 1] -> ``(B, embedding_dim)``: sinusoidal features of ``time_scale t + time_shift``
    (1000 t by default), then Linear-SiLU-Linear.

    The fixed features make t easy to read at every scale; the learned MLP turns them into
    whatever the residual blocks need (in the UNet: a per-channel scale and shift). A discrete-time model trained
    on the step index k = 0..T-1 (Stable Diffusion: T = 1000) is read at t = (k + 1) / T, so it is built with
    ``time_scale = T`` and ``time_shift = -1``; the affine map is taken in float64, so an integer step reaches the
    features exactly as the integer it was trained on.
    """

    def __init__(self, feature_dim: int, embedding_dim: int, time_scale: float = TIME_SCALE, time_shift: float = 0.0):
        super().__init__()
        self.feature_dim, self.time_scale, self.time_shift = feature_dim, time_scale, time_shift
        self.mlp = mlp([feature_dim, embedding_dim, embedding_dim], activation="silu")

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.time_shift == 0:  # minisd's own models: unchanged to the bit
            return self.mlp(sinusoidal_embedding(self.time_scale * t, self.feature_dim))
        steps = (self.time_scale * t.double() + self.time_shift).to(t.dtype)
        return self.mlp(sinusoidal_embedding(steps, self.feature_dim))
