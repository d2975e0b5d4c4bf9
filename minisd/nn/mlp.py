"""Multi-layer perceptrons, their activations, and the gated feed-forward layer of Stable Diffusion's transformers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that OpenAI's CLIP was trained with (Hendrycks &
    Gimpel 2016, sec. 2), so Stable Diffusion 1.x's text encoder needs it exactly, not the exact GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "silu": nn.SiLU, "gelu": nn.GELU,
               "quick_gelu": QuickGELU}


class GEGLU(nn.Module):
    """``(..., dim) -> (..., inner_dim)``: a linear layer to twice the width, one half gating the other through GELU
    (Shazeer 2020, "GLU variants improve transformer"): the first layer of the feed-forward block in Stable
    Diffusion's transformer blocks."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


def mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with ``activation`` between them.

    No activation follows the last layer: callers decide what the output means
    (logits, a mean, a log-variance).
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)
