"""The UNet: the network inside minisd's image diffusion models, ``(x_t, t, cond) -> prediction``.

The layout of Ronneberger et al. (2015) as adapted to diffusion by Ho et al. (2020) and
Dhariwal & Nichol (2021), with the cross-attention of Rombach et al. (2022):

    input conv
    per level, finest first:   residual blocks (+ attention), then a stride-2 downsample
    middle:                    residual block + attention, residual block   (coarsest resolution)
    per level, coarsest first: residual blocks (+ attention) fed the matching skip, then an upsample
    GroupNorm -> SiLU -> output conv

Every level but the last halves the resolution: ``channel_mults=(1, 2, 2)`` works at 28, 14, 7
for MNIST and 32, 16, 8 for 32x32 images. An odd side is rounded up (a 7x7 latent goes 7, 4, 2) and the
extra row and column are cropped on the way back up. Each down-path block's output is kept and concatenated
to the input of one up-path block, so fine detail skips the bottleneck.

Conditioning: the time embedding (plus a learned class embedding, when ``num_classes`` is set)
sets a per-channel scale and shift inside every residual block; a text context enters through
cross-attention in the attention blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minisd.nn.attention import SpatialAttention, zero_init
from minisd.nn.conv2d import Conv2d
from minisd.nn.dropout import Dropout
from minisd.nn.embeddings import TimeEmbedding
from minisd.nn.threads import small_operators_on_one_thread

Conditioning = torch.Tensor | Mapping[str, torch.Tensor | None] | None
CONDITION_KEYS = ("label", "context", "context_mask")
TIME_CONDITIONINGS = ("scale_shift", "add")


class ResidualBlock(nn.Module):
    """``skip(x) + branch(x, emb)``: ``x: (B, in_channels, H, W)``, ``emb: (B, embedding_dim)`` -> ``(B, out_channels, H, W)``.

    branch = GroupNorm -> SiLU -> conv3x3 -> GroupNorm, scaled and shifted by the embedding
    -> SiLU -> dropout -> conv3x3 (zero-initialised, so the block starts as ``skip``).

    ``time_conditioning="add"`` is DDPM's and Stable Diffusion's older form: the embedding is projected to one
    shift per channel and added *before* the second GroupNorm (``embedding_to_scale_shift`` then gives the shift
    alone).
    """

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float = 0.0,
                 groups: int = 8, time_conditioning: str = "scale_shift"):
        super().__init__()
        if time_conditioning not in TIME_CONDITIONINGS:
            raise ValueError(f"time_conditioning must be one of {TIME_CONDITIONINGS}, got {time_conditioning!r}")
        self.scale_shift = time_conditioning == "scale_shift"
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, in_channels), nn.SiLU(),
                                       Conv2d(in_channels, out_channels, 3, padding=1))
        # FiLM ("scale-shift norm", Dhariwal & Nichol 2021): the embedding rescales each channel
        # after normalisation rather than only adding to it, so the noise level can set how strongly
        # a feature is used; they found it better than adding. 1 + scale: a zero scale changes nothing.
        shifts = 2 * out_channels if self.scale_shift else out_channels
        self.embedding_to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(embedding_dim, shifts))
        self.out_norm = nn.GroupNorm(groups, out_channels)
        self.out_layers = nn.Sequential(nn.SiLU(), Dropout(dropout),
                                        zero_init(Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if in_channels == out_channels else Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        hidden = self.in_layers(x)
        if self.scale_shift:
            scale, shift = self.embedding_to_scale_shift(emb)[:, :, None, None].chunk(2, dim=1)
            hidden = self.out_norm(hidden) * (1 + scale) + shift
        else:
            hidden = self.out_norm(hidden + self.embedding_to_scale_shift(emb)[:, :, None, None])
        return self.skip(x) + self.out_layers(hidden)


class UNetBlock(nn.Module):
    """The unit the UNet repeats: a :class:`ResidualBlock`, then :class:`SpatialAttention` if ``attention``."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, *, attention: bool,
                 num_heads: int, context_dim: int | None, dropout: float, groups: int,
                 time_conditioning: str = "scale_shift", transformer: bool = False):
        super().__init__()
        self.residual = ResidualBlock(in_channels, out_channels, embedding_dim, dropout, groups, time_conditioning)
        self.attention = SpatialAttention(out_channels, num_heads, context_dim, transformer=transformer,
                                          groups=groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.residual(x, emb)
        return hidden if self.attention is None else self.attention(hidden, context, context_mask)


def downsample(channels: int) -> nn.Module:
    return Conv2d(channels, channels, 3, stride=2, padding=1)


def upsample(channels: int) -> nn.Module:
    # Nearest-neighbour then a conv, rather than a transposed conv, whose overlapping strides
    # leave checkerboard artefacts (Odena et al. 2016).
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), Conv2d(channels, channels, 3, padding=1))


class UNet(nn.Module):
    """Image ``x: (B, in_channels, H, W)`` and times ``t: (B,)`` in [0, 1] -> ``(B, out_channels, H, W)``.

    Level ``i`` has ``base_channels * channel_mults[i]`` channels at resolution ``H / 2**i``, and
    ``num_res_blocks`` residual blocks on the way down (one more on the way up, for the skip of
    the downsample). ``attention_levels`` lists the levels (0 = full resolution) whose blocks are
    followed by attention; by default only the coarsest, which also gives the middle block its
    attention; ``()`` builds a UNet without attention.

    ``num_classes``: adds a class embedding with ``num_classes + 1`` rows; the last, index
    ``num_classes`` (= :attr:`null_label`), is the "no class" token that classifier-free guidance
    trains with and samples against. ``context_dim``: adds cross-attention to a context of that width.

    Stable Diffusion's UNet is this one configured (``minisd.models.stable_diffusion`` reads its config):
    ``num_heads`` one per level (the middle takes the coarsest's), ``middle_attention=True`` (its coarsest level
    has no attention but its middle does), ``time_conditioning="add"``, ``transformer=True`` (spatial
    transformers, see :class:`SpatialAttention`), 32 groups, and ``time_scale=1000, time_shift=-1`` (it was
    trained on step indices 0..999, see :class:`~minisd.nn.embeddings.TimeEmbedding`), ``upsample_to_skip=True``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] | None = None, num_heads: int | Sequence[int] = 4,
                 dropout: float = 0.0, num_classes: int | None = None, context_dim: int | None = None,
                 groups: int = 8, middle_attention: bool | None = None, time_conditioning: str = "scale_shift",
                 transformer: bool = False, time_scale: float = 1000.0, time_shift: float = 0.0,
                 upsample_to_skip: bool = False):
        super().__init__()
        num_levels = len(channel_mults)
        coarsest = num_levels - 1
        attention_levels = (coarsest,) if attention_levels is None else tuple(attention_levels)
        heads = [num_heads] * num_levels if isinstance(num_heads, int) else list(num_heads)
        if len(heads) != num_levels:
            raise ValueError(f"num_heads gives {len(heads)} head counts for {num_levels} levels: give one, or one per level")
        middle_attention = coarsest in attention_levels if middle_attention is None else middle_attention
        if num_levels == 0 or num_res_blocks < 1:
            raise ValueError("a UNet needs at least one level and one residual block per level")
        if any(level not in range(num_levels) for level in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must lie in 0..{coarsest} (one per channel mult)")
        if any(base_channels * mult % groups for mult in (1, *channel_mults)):
            raise ValueError(f"every level's channel count (base_channels * mult) must be divisible by groups={groups}")
        if context_dim is not None and not (attention_levels or middle_attention):
            raise ValueError("cross-attention to a context needs attention blocks: give attention_levels")
        self.in_channels, self.out_channels = in_channels, out_channels or in_channels
        self.num_levels, self.num_classes, self.context_dim = num_levels, num_classes, context_dim
        self.null_label = num_classes  # the "no class" index; None when there are no classes
        self.upsample_to_skip = upsample_to_skip

        embedding_dim = 4 * base_channels
        self.time_embedding = TimeEmbedding(base_channels, embedding_dim, time_scale, time_shift)
        self.class_embedding = None if num_classes is None else nn.Embedding(num_classes + 1, embedding_dim)

        def block(in_ch: int, out_ch: int, attention: bool, level: int) -> UNetBlock:
            return UNetBlock(in_ch, out_ch, embedding_dim, attention=attention, num_heads=heads[level],
                             context_dim=context_dim, dropout=dropout, groups=groups,
                             time_conditioning=time_conditioning, transformer=transformer)

        self.input_conv = Conv2d(in_channels, base_channels, 3, padding=1)
        channels, skip_channels = base_channels, [base_channels]
        self.down_levels, self.downsamples = nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(channels, base_channels * mult, level in attention_levels, level))
                channels = base_channels * mult
                skip_channels.append(channels)
            self.down_levels.append(blocks)
            if level < coarsest:
                self.downsamples.append(downsample(channels))
                skip_channels.append(channels)

        self.middle = nn.ModuleList([block(channels, channels, middle_attention, coarsest),
                                     block(channels, channels, False, coarsest)])

        self.up_levels, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(num_levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(block(channels + skip_channels.pop(), base_channels * channel_mults[level],
                                    level in attention_levels, level))
                channels = base_channels * channel_mults[level]
            self.up_levels.append(blocks)
            if level > 0:
                self.upsamples.append(upsample(channels))

        # Zero output conv: a fresh UNet predicts exactly 0 - the mean of eps, and a fair first
        # guess of x0 or v - so training starts at the trivial loss instead of above it.
        self.output = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(),
                                    zero_init(Conv2d(channels, self.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning = None) -> torch.Tensor:
        """``cond``: None (no conditioning; all-null labels), class labels ``(B,)`` int64, or a dict with
        optional ``"label"``, ``"context": (B, L, context_dim)`` and ``"context_mask": (B, L)`` bool."""
        with small_operators_on_one_thread(x.numel() // self.in_channels * self.input_conv.out_channels, x.device):
            return self._forward(x, t, cond)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        labels, context, context_mask = self._split_conditioning(cond)
        emb = self.time_embedding(t.expand(x.shape[0]))
        if self.class_embedding is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
            emb = emb + self.class_embedding(labels)

        hidden = self.input_conv(x)
        skips = [hidden]
        for level, blocks in enumerate(self.down_levels):
            for block in blocks:
                hidden = block(hidden, emb, context, context_mask)
                skips.append(hidden)
            if level < len(self.downsamples):
                hidden = self.downsamples[level](hidden)
                skips.append(hidden)
        for block in self.middle:
            hidden = block(hidden, emb, context, context_mask)
        for level, blocks in enumerate(self.up_levels):
            for block in blocks:
                hidden = block(torch.cat([hidden, skips.pop()], dim=1), emb, context, context_mask)
            if level < len(self.upsamples):
                # An odd side was rounded up on the way down (7 -> 4); doubling overshoots (4 -> 8) by the
                # one row and column that the skip it meets next has not: crop them. (Stable Diffusion instead
                # resizes straight to the skip's size before its convolution: ``upsample_to_skip``.)
                height, width = skips[-1].shape[-2:]
                if self.upsample_to_skip:
                    _, conv = self.upsamples[level]
                    hidden = conv(F.interpolate(hidden, size=(height, width), mode="nearest"))
                else:
                    hidden = self.upsamples[level](hidden)[..., :height, :width]
        return self.output(hidden)

    def _split_conditioning(self, cond: Conditioning) -> tuple[torch.Tensor | None, ...]:
        if cond is None or isinstance(cond, torch.Tensor):
            labels, context, context_mask = cond, None, None
        elif isinstance(cond, Mapping):
            unknown = set(cond) - set(CONDITION_KEYS)
            if unknown:
                raise ValueError(f"unknown conditioning keys {sorted(unknown)}; expected some of {CONDITION_KEYS}")
            labels, context, context_mask = (cond.get(key) for key in CONDITION_KEYS)
        else:
            raise TypeError(f"cond must be None, a label tensor or a dict, not {type(cond).__name__}")
        if labels is not None and self.class_embedding is None:
            raise ValueError("class labels given, but this UNet was built without num_classes")
        if context is not None and self.context_dim is None:
            raise ValueError("a context given, but this UNet was built without context_dim")
        return labels, context, context_mask
