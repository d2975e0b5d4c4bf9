"""Multi-head attention, and the block that lets every pixel of a feature map attend to the
other pixels (self-attention) and to a sequence of text vectors (cross-attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def zero_init(layer: nn.Module) -> nn.Module:
    """Set every parameter of ``layer`` to zero, and return it.

    Used on the last layer of each residual branch ``x + branch(x)`` (and on a UNet's output
    layer): at initialisation every branch then adds nothing, so a deep network starts as the
    identity along its skip paths, activations do not grow with depth, and the first updates
    are well scaled (Goyal et al. 2017's zero-gamma trick; DDPM and ADM do the same). The
    gradient reaching the zeroed layer is not zero, so it starts learning on the first step.
    """
    for parameter in layer.parameters():
        nn.init.zeros_(parameter)
    return layer


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V with ``num_heads`` heads (Vaswani et al. 2017).

    Queries come from ``x: (B, N, dim)``; keys and values from ``context: (B, L, context_dim)``
    (cross-attention) or, when no context is given, from ``x`` itself (self-attention).
    Returns ``(B, N, dim)``. The output projection starts at zero (see :func:`zero_init`).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"{dim} channels cannot be split into {num_heads} heads; "
                             "choose num_heads dividing every level's channel count")
        self.num_heads = num_heads
        self.recorded: list[torch.Tensor] | None = None  # attention weights, while a recorder listens
        self.to_query = nn.Linear(dim, dim, bias=False)
        # Keys and values in one matrix multiply: one pass over the (possibly long) source.
        self.to_key_value = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        self.to_out = zero_init(nn.Linear(dim, dim))

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        # (B, N, heads * d) -> (B, heads, N, d): views only; scaled_dot_product_attention takes strides.
        return tokens.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context_mask: (B, L)`` bool, True where a context token is real (False: padding, ignored)."""
        source = x if context is None else context
        key, value = self.to_key_value(source).chunk(2, dim=-1)
        # A (B, 1, 1, L) mask broadcasts over heads and queries.
        mask = None if context_mask is None else context_mask[:, None, None, :]
        query, key, value = self._split_heads(self.to_query(x)), self._split_heads(key), self._split_heads(value)
        if self.recorded is None:
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        else:  # the same softmax(Q K^T / sqrt(d)) V, written out to keep the weights
            scores = query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1) if mask is not None else scores.softmax(-1)
            self.recorded.append(weights.mean(1))  # (B, N, L), averaged over heads
            attended = weights @ value
        return self.to_out(attended.transpose(1, 2).flatten(2))


class SpatialAttention(nn.Module):
    """Attention over the H*W pixels of ``x: (B, C, H, W)``, returned in the same shape.

    ``x + SelfAttention(LayerNorm(x))``, then, when built with ``context_dim``, ``+ CrossAttention(
    LayerNorm(.), context)``: the pre-norm residual form of a transformer block (as in Stable
    Diffusion's transformer blocks, without their feed-forward layer: the UNet's convolutions follow).
    Called without a context, the cross-attention is skipped, which is how an unconditional
    ("null text") pass for classifier-free guidance adds nothing from the text.
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        self.self_norm = nn.LayerNorm(channels)
        self.self_attention = MultiHeadAttention(channels, num_heads)
        self.cross_norm = nn.LayerNorm(channels) if context_dim else None
        self.cross_attention = MultiHeadAttention(channels, num_heads, context_dim) if context_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context: (B, L, context_dim)``, ``context_mask: (B, L)`` bool (True = attend), both optional."""
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, H*W, C), a view: one token per pixel
        tokens = tokens + self.self_attention(self.self_norm(tokens))
        if self.cross_attention is not None and context is not None:
            tokens = tokens + self.cross_attention(self.cross_norm(tokens), context, context_mask)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class CrossAttentionRecorder:
    """Keeps the cross-attention weights of every :class:`SpatialAttention` of ``network``, step by step.

    After each sampling step call :meth:`end_step`; :meth:`maps` then gives, for every step, how much each
    pixel of the latent grid attends to each text token, averaged over heads and layers (layers of coarser
    resolution are upsampled to the finest): where in the image each word acts (Hertz et al. 2022).
    """

    def __init__(self, network: nn.Module):
        self.layers = [m.cross_attention for m in network.modules()
                       if isinstance(m, SpatialAttention) and m.cross_attention is not None]
        for layer in self.layers:
            layer.recorded = []
        self.steps: list[list[torch.Tensor]] = []

    def end_step(self) -> None:
        """Close a sampling step: keep the weights recorded since the last call (the last call of each layer)."""
        self.steps.append([layer.recorded[-1] for layer in self.layers if layer.recorded])
        for layer in self.layers:
            layer.recorded.clear()

    def maps(self, n: int, size: tuple[int, int]) -> torch.Tensor:
        """``(steps, n, L, H, W)``: the first ``n`` examples of each batch (the conditional branch, which
        classifier-free guidance puts first), per token, on a grid of ``size``."""
        per_step = []
        for records in self.steps:
            grids = []
            for weights in records:  # (B, N, L) with N = h * w pixels
                side = int(round(weights.shape[1] ** 0.5))
                grid = weights[:n].transpose(1, 2).reshape(n, -1, side, weights.shape[1] // side)
                grids.append(F.interpolate(grid, size=size, mode="bilinear", align_corners=False))
            per_step.append(torch.stack(grids).mean(0))
        return torch.stack(per_step).cpu()

    def close(self) -> None:
        """Stop recording (attention goes back to the fused kernel)."""
        for layer in self.layers:
            layer.recorded = None


def record_cross_attention(network: nn.Module) -> CrossAttentionRecorder:
    """Start recording the cross-attention weights of ``network`` (see :class:`CrossAttentionRecorder`)."""
    return CrossAttentionRecorder(network)
