"""A small transformer that turns token ids into one vector per token: what the UNet cross-attends to."""

from __future__ import annotations

import torch
from torch import nn

from minisd.nn import MultiHeadAttention, mlp, zero_init
from minisd.nn.dropout import Dropout


class TransformerBlock(nn.Module):
    """``x + Attention(LayerNorm(x))``, then ``+ FeedForward(LayerNorm(.))``: the pre-norm transformer block.

    Pre-norm (as in GPT-2 and CLIP's text tower) keeps a clean identity path from input to
    output, so a stack trains without warm-up tricks. Both branches end in a zero-initialised
    layer (see :func:`minisd.nn.zero_init`): the untrained block is the identity.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0, *,
                 activation: str = "silu", causal: bool = False, bias: bool = False, norm_eps: float = 1e-5,
                 mlp_dim: int | None = None):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attention = MultiHeadAttention(dim, num_heads, bias=bias, causal=causal)
        self.feed_forward_norm = nn.LayerNorm(dim, eps=norm_eps)
        # SiLU by default, near-identical to the usual GELU; CLIP's text towers use (quick) GELU.
        self.feed_forward = mlp([dim, mlp_dim or mlp_ratio * dim, dim], activation=activation)
        zero_init(self.feed_forward[-1])
        self.dropout = Dropout(dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``tokens: (B, L, dim)``, ``mask: (B, L)`` bool (True = real), or None (causal) -> ``(B, L, dim)``."""
        # The mask hides padding as *keys*: no real token reads from padding. Padding positions
        # still compute queries (they read the real tokens, [BOS] at least, so no row is all -inf).
        tokens = tokens + self.dropout(self.attention(self.attention_norm(tokens), context_mask=mask))
        return tokens + self.dropout(self.feed_forward(self.feed_forward_norm(tokens)))


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` -> token embeddings ``(B, L, dim)``: embeddings, ``depth`` blocks, a final LayerNorm.

    Every token sees every other real token (no causal mask: the text is read whole, as in BERT,
    not generated). Outputs at padding positions are well defined but meaningless, and changing
    the padding never changes the outputs at real positions.

    CLIP's text transformer (Radford et al. 2021), which Stable Diffusion reads its prompts with, is this encoder
    configured: ``causal=True`` (token i sees tokens 0..i: CLIP trained it like a language model's, and padding
    then cannot reach the real tokens, so it takes no mask), ``activation`` quick_gelu (SD 1.x, OpenAI's CLIP) or
    gelu (SD 2.x, OpenCLIP), ``bias=True`` on queries, keys and values, and its own ``mlp_dim``.
    """

    def __init__(self, vocab_size: int, max_length: int, dim: int = 64, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: int = 4, dropout: float = 0.0, *, causal: bool = False, activation: str = "silu",
                 bias: bool = False, norm_eps: float = 1e-5, mlp_dim: int | None = None):
        super().__init__()
        self.max_length, self.causal = max_length, causal
        self.token_embedding = nn.Embedding(vocab_size, dim)
        # Learned positions (as in CLIP): with a fixed maximum length there is nothing to extrapolate to.
        self.position_embedding = nn.Parameter(torch.empty(max_length, dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio, dropout, activation=activation,
                                                     causal=causal, bias=bias, norm_eps=norm_eps, mlp_dim=mlp_dim)
                                    for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``ids: (B, L)`` int64 with ``L <= max_length``, ``mask: (B, L)`` bool (True = real; None for a causal
        encoder) -> ``(B, L, dim)``."""
        if ids.shape[1] > self.max_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the encoder's max_length = {self.max_length}")
        tokens = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            tokens = block(tokens, mask)
        return self.final_norm(tokens)

    @staticmethod
    def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean of the real tokens' embeddings: ``(B, L, dim)``, ``(B, L)`` -> ``(B, dim)``.

        A masked mean rather than the ``[BOS]`` token's output: the contrastive loss then reaches
        every token's embedding directly, and those per-token embeddings, not the pooled vector,
        are what the text-to-image UNet cross-attends to. Pooling [BOS] would shape the other
        tokens only through what [BOS] reads from them.
        """
        weights = mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
