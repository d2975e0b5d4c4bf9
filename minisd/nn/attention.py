"""Multi-head attention, and the block that lets every pixel of a feature map attend to the
other pixels (self-attention) and to a sequence of text vectors (cross-attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minisd.nn.mlp import GEGLU


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
    Returns ``(B, N, dim)``. The output projection starts at zero (see :func:`zero_init`). ``causal``: query i
    reads only keys 0..i, as a text transformer trained to predict the next token does (CLIP's text tower).
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None, *, bias: bool = False,
                 causal: bool = False):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"{dim} channels cannot be split into {num_heads} heads; "
                             "choose num_heads dividing every level's channel count")
        self.num_heads, self.causal = num_heads, causal
        self.recorded: list[torch.Tensor] | None = None  # attention weights, while a recorder listens
        # bias: CLIP's text transformer and Stable Diffusion's autoencoder give queries, keys and values a bias;
        # the UNet's attention does not (a bias on keys shifts every score of a query equally: softmax ignores it).
        self.to_query = nn.Linear(dim, dim, bias=bias)
        # Keys and values in one matrix multiply: one pass over the (possibly long) source.
        self.to_key_value = nn.Linear(context_dim or dim, 2 * dim, bias=bias)
        self.to_out = zero_init(nn.Linear(dim, dim))
        self._context_cache: tuple | None = None  # (context, its version, the weights' versions, keys and values)

    def _context_keys_values(self, context: torch.Tensor) -> torch.Tensor:
        """The context's keys and values, ``(B, L, 2 * dim)``. A sampler calls the network on the same prompt
        embeddings at every step: without gradients, they are computed on the first step and reused while the
        context tensor and the weights are unchanged (the same object, and neither written in place since)."""
        if torch.is_grad_enabled():
            return self.to_key_value(context)
        stamp = (context, context._version, tuple(p._version for p in self.to_key_value.parameters()))
        cached = self._context_cache
        if cached is None or cached[0] is not context or cached[1:3] != stamp[1:]:
            self._context_cache = (*stamp, self.to_key_value(context))
        return self._context_cache[3]

    def _split_heads(self, tokens: torch.Tensor) -> torch.Tensor:
        # (B, N, heads * d) -> (B, heads, N, d): views only; scaled_dot_product_attention takes strides.
        return tokens.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context_mask: (B, L)`` bool, True where a context token is real (False: padding, ignored)."""
        key, value = (self.to_key_value(x) if context is None else self._context_keys_values(context)).chunk(2, dim=-1)
        # A (B, 1, 1, L) mask broadcasts over heads and queries.
        mask = None if context_mask is None else context_mask[:, None, None, :]
        query, key, value = self._split_heads(self.to_query(x)), self._split_heads(key), self._split_heads(value)
        if self.causal and mask is not None:
            raise ValueError("a causal attention takes no context mask: its queries already skip the later tokens")
        if self.recorded is None:
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=self.causal)
        else:  # the same softmax(Q K^T / sqrt(d)) V, written out to keep the weights
            scores = query @ key.transpose(-2, -1) / query.shape[-1] ** 0.5
            weights = scores.masked_fill(~mask, float("-inf")).softmax(-1) if mask is not None else scores.softmax(-1)
            self.recorded.append(weights.mean(1))  # (B, N, L), averaged over heads
            attended = weights @ value
        return self.to_out(attended.transpose(1, 2).flatten(2))


class SpatialAttention(nn.Module):
    """Attention over the H*W pixels of ``x: (B, C, H, W)``, returned in the same shape.

    ``x + SelfAttention(LayerNorm(x))``, then, when built with ``context_dim``, ``+ CrossAttention(
    LayerNorm(.), context)``: the pre-norm residual form of a transformer block, on one token per pixel.
    Called without a context, the cross-attention is skipped, which is how an unconditional
    ("null text") pass for classifier-free guidance adds nothing from the text.

    ``transformer=True`` makes it Stable Diffusion's spatial transformer (Rombach et al. 2022, their
    ``SpatialTransformer``): the tokens come from a GroupNorm and a linear projection of the pixels (SD 1.x
    stores it as a 1x1 convolution, the same map), the block adds a feed-forward layer (GEGLU, 4x wider) after
    the attentions, and a projection back adds the whole to ``x``. Without it, minisd's own UNets keep the
    lighter block: their convolutions follow, and at MNIST's sizes the feed-forward layer did not pay its cost.
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int | None = None, *, transformer: bool = False,
                 groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        self.transformer = transformer
        if transformer:
            self.in_norm = nn.GroupNorm(groups, channels, eps=norm_eps)
            self.proj_in = nn.Linear(channels, channels)
        self.self_norm = nn.LayerNorm(channels)
        self.self_attention = MultiHeadAttention(channels, num_heads)
        self.cross_norm = nn.LayerNorm(channels) if context_dim else None
        self.cross_attention = MultiHeadAttention(channels, num_heads, context_dim) if context_dim else None
        if transformer:
            self.feed_forward_norm = nn.LayerNorm(channels)
            self.feed_forward = nn.Sequential(GEGLU(channels, 4 * channels), nn.Linear(4 * channels, channels))
            self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``context: (B, L, context_dim)``, ``context_mask: (B, L)`` bool (True = attend), both optional."""
        batch, channels, height, width = x.shape
        pixels = self.in_norm(x) if self.transformer else x
        tokens = pixels.flatten(2).transpose(1, 2)  # (B, H*W, C), a view: one token per pixel
        if self.transformer:
            tokens = self.proj_in(tokens)
        tokens = tokens + self.self_attention(self.self_norm(tokens))
        if self.cross_attention is not None and context is not None:
            tokens = tokens + self.cross_attention(self.cross_norm(tokens), context, context_mask)
        if self.transformer:
            tokens = self.proj_out(tokens + self.feed_forward(self.feed_forward_norm(tokens)))
        out = tokens.transpose(1, 2).reshape(batch, channels, height, width)
        return x + out if self.transformer else out


class ImageSelfAttention(nn.Module):
    """``x + Attention(GroupNorm(x))`` over the pixels of ``x: (B, C, H, W)``, one head as wide as the channels.

    The attention in the middle of Stable Diffusion's autoencoder (after VQGAN, Esser et al. 2021): at the coarsest
    map (64x64 for a 512x512 image) it lets every position see the whole image, which its convolutions cannot.
    """

    def __init__(self, channels: int, groups: int = 32, norm_eps: float = 1e-6):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=norm_eps)
        self.attention = MultiHeadAttention(channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.attention(self.norm(x).flatten(2).transpose(1, 2))
        return x + tokens.transpose(1, 2).reshape(batch, channels, height, width)


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
            for weights in records:  # (B, N, L) with N = h * w pixels, h / w as the finest grid's
                rows = max(1, int(round((weights.shape[1] * size[0] / size[1]) ** 0.5)))
                grid = weights[:n].transpose(1, 2).reshape(n, -1, rows, weights.shape[1] // rows)
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
