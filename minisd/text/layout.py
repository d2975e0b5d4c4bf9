"""A layout decoder: reads a caption's per-token embeddings the way the UNet will, and draws the picture's layout.

CLIP's objective (:class:`~minisd.models.clip.ContrastiveTextImage`) compares one pooled vector per caption
with one per image, and a bag of words is enough to win it: "a red circle to the left of a blue square"
and "a blue circle to the left of a red square" hold the same words, and a batch of random captions almost
never holds both (Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words").
Trained on it alone, the token "red" in the first caption says nothing about the circle or the left, and a
UNet that cross-attends to these tokens cannot tell which object is which colour.

This decoder makes the text encoder's tokens answer the question the UNet's cross-attention asks: one
learned query per cell of a ``side x side`` grid attends to the tokens (as each pixel of the UNet does) and
predicts the cell's mean colour in the caption's image. Its squared error is added to the contrastive loss
(the ``layout_weight`` of :class:`~minisd.models.clip.ContrastiveTextImage`). It needs nothing but image-caption
pairs, and it is only a training aid: generation reads the tokens and never runs the decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minisd.nn import MultiHeadAttention, mlp


class LayoutDecoder(nn.Module):
    """Token embeddings ``(B, L, dim)`` and mask ``(B, L)`` -> a coarse image ``(B, channels, side, side)``.

    ``depth`` pre-norm blocks of cross-attention (cell queries to tokens) and a feed-forward layer, then a
    linear read-out of each cell's colour.
    """

    def __init__(self, dim: int, side: int, channels: int, depth: int = 2, num_heads: int = 4):
        super().__init__()
        self.side = side
        self.cell_queries = nn.Parameter(torch.randn(side * side, dim) * 0.02)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attentions = nn.ModuleList(MultiHeadAttention(dim, num_heads) for _ in range(depth))
        self.feed_forward_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.feed_forwards = nn.ModuleList(mlp([dim, 4 * dim, dim], activation="silu") for _ in range(depth))
        self.read_out = nn.Linear(dim, channels)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        cells = self.cell_queries.expand(len(tokens), -1, -1)
        for attention_norm, attention, feed_forward_norm, feed_forward in zip(
                self.attention_norms, self.attentions, self.feed_forward_norms, self.feed_forwards):
            cells = cells + attention(attention_norm(cells), tokens, mask)
            cells = cells + feed_forward(feed_forward_norm(cells))
        return self.read_out(cells).transpose(1, 2).unflatten(-1, (self.side, self.side))

    def loss(self, tokens: torch.Tensor, mask: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the decoded layout and ``images`` ``(B, C, H, W)`` averaged down to
        ``side x side`` cells."""
        return F.mse_loss(self(tokens, mask), F.adaptive_avg_pool2d(images, self.side))

