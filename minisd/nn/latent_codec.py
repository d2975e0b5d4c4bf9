"""The convolutional encoder and decoder of a latent autoencoder: image <-> small feature map.

The layout of Stable Diffusion's autoencoder (Rombach et al. 2022, after Esser et al. 2021's VQGAN),
without the self-attention of its middle block: at 7x7 or 8x8 the middle block's two 3x3 convolutions
already see most of the map, and the reconstructions are sharp without it (minisd/models/latent_autoencoder.py):

    encoder: input conv, then per level (finest first) residual blocks and a stride-2 downsample
             (not after the last level), a middle residual block, GroupNorm -> SiLU -> output conv
    decoder: input conv, a middle residual block, then per level (coarsest first) residual blocks
             and a nearest-neighbour upsample (not after the finest level), GroupNorm -> SiLU -> output conv

``channel_mults=(1, 2, 2)`` gives three levels and two halvings: 28 -> 14 -> 7 and 32 -> 16 -> 8. The
output is a feature map, not a vector: each latent "pixel" describes a 4x4 patch, which is what lets a
diffusion UNet work on the latents as on a (smaller) image.

Stable Diffusion's own autoencoder is the same layout configured (:mod:`minisd.models.stable_diffusion` reads its
config): four levels (factor 8), 32 groups with eps 1e-6, ``middle_attention`` (the middle is residual block,
self-attention, residual block), one more residual block per level in the decoder (``decoder_res_blocks``), a
downsample padded on the right and bottom only (``asymmetric_downsample``), and a 1x1 convolution after the encoder
and before the decoder (``quant_convs``: VQGAN's "quantisation" convolutions, kept when the KL version dropped
the codebook).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from minisd.errors import ConfigError
from minisd.nn.attention import ImageSelfAttention, zero_init
from minisd.nn.conv2d import Conv2d
from minisd.nn.unet import downsample, upsample


class ResBlock(nn.Module):
    """``skip(x) + branch(x)``: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    branch = GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3 (zero-initialised, so the
    block starts as ``skip``). The UNet's :class:`~minisd.nn.unet.ResidualBlock` without its time
    embedding: an autoencoder has no noise level to condition on.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 8, norm_eps: float = 1e-5):
        super().__init__()
        self.branch = nn.Sequential(
            nn.GroupNorm(groups, in_channels, eps=norm_eps), nn.SiLU(),
            Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels, eps=norm_eps), nn.SiLU(),
            zero_init(Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if in_channels == out_channels else Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.branch(x)


def downsampling_factor(channel_mults: Sequence[int]) -> int:
    """How much the encoder shrinks each side: ``2 ** (levels - 1)`` (4 for three levels)."""
    return 2 ** (len(channel_mults) - 1)


def check_codec_shape(image_shape: Sequence[int], base_channels: int, channel_mults: Sequence[int],
                      num_res_blocks: int, groups: int = 8) -> None:
    """Raise :class:`ConfigError` unless the encoder and decoder can be built for ``image_shape`` ``(C, H, W)``."""
    if len(image_shape) != 3 or any(side < 1 for side in image_shape):
        raise ConfigError(f"image_shape must be [channels, height, width], got {list(image_shape)}")
    if not channel_mults or num_res_blocks < 1 or base_channels < 1 or min(channel_mults) < 1:
        raise ConfigError("the autoencoder needs at least one level (channel_mults), one residual block per "
                          f"level and positive widths, got channel_mults={list(channel_mults)}, "
                          f"num_res_blocks={num_res_blocks}, base_channels={base_channels}")
    if any(base_channels * mult % groups for mult in (1, *channel_mults)):
        raise ConfigError(f"every level's channel count (base_channels * mult) must be divisible by the "
                          f"{groups} GroupNorm groups, got base_channels={base_channels}, "
                          f"channel_mults={list(channel_mults)}")
    factor = downsampling_factor(channel_mults)
    if image_shape[1] % factor or image_shape[2] % factor:
        raise ConfigError(f"image size {image_shape[1]}x{image_shape[2]} is not divisible by the downsampling "
                          f"factor {factor} of {len(channel_mults)} levels; use fewer channel_mults or pad the images")


def downsample_bottom_right(channels: int) -> nn.Module:
    """Stride-2 3x3 convolution over the map padded by one row and column on the bottom and right only: Stable
    Diffusion's autoencoder (``downsample`` pads all four sides; the two differ only at the borders)."""
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(channels, channels, 3, stride=2, padding=0))


def middle_blocks(channels: int, groups: int, norm_eps: float, attention: bool) -> list[nn.Module]:
    """A residual block, then (with ``attention``) self-attention and a second residual block."""
    blocks: list[nn.Module] = [ResBlock(channels, channels, groups, norm_eps)]
    if attention:
        blocks += [ImageSelfAttention(channels, groups, norm_eps), ResBlock(channels, channels, groups, norm_eps)]
    return blocks


class LatentEncoder(nn.Module):
    """Image ``(B, in_channels, H, W)`` -> ``(B, out_channels, H/f, W/f)``, ``f = 2 ** (len(channel_mults) - 1)``.

    The keyword-only settings configure Stable Diffusion's encoder (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, groups: int = 8, *,
                 norm_eps: float = 1e-5, middle_attention: bool = False, asymmetric_downsample: bool = False,
                 quant_convs: bool = False):
        super().__init__()
        layers: list[nn.Module] = [Conv2d(in_channels, base_channels, 3, padding=1)]
        channels = base_channels
        halve = downsample_bottom_right if asymmetric_downsample else downsample
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(channels, base_channels * mult, groups, norm_eps))
                channels = base_channels * mult
            if level < len(channel_mults) - 1:
                layers.append(halve(channels))
        layers += [*middle_blocks(channels, groups, norm_eps, middle_attention),
                   nn.GroupNorm(groups, channels, eps=norm_eps), nn.SiLU(),
                   Conv2d(channels, out_channels, 3, padding=1)]
        if quant_convs:
            layers.append(Conv2d(out_channels, out_channels, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class LatentDecoder(nn.Module):
    """``(B, in_channels, h, w)`` -> ``(B, out_channels, h * f, w * f)``: the mirror image of :class:`LatentEncoder`,
    with ``decoder_res_blocks`` residual blocks per level (default ``num_res_blocks``)."""

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, groups: int = 8, *,
                 norm_eps: float = 1e-5, middle_attention: bool = False, decoder_res_blocks: int | None = None,
                 quant_convs: bool = False):
        super().__init__()
        channels = base_channels * channel_mults[-1]
        layers: list[nn.Module] = [Conv2d(in_channels, in_channels, 1)] if quant_convs else []
        layers += [Conv2d(in_channels, channels, 3, padding=1),
                   *middle_blocks(channels, groups, norm_eps, middle_attention)]
        for level in reversed(range(len(channel_mults))):
            for _ in range(num_res_blocks if decoder_res_blocks is None else decoder_res_blocks):
                layers.append(ResBlock(channels, base_channels * channel_mults[level], groups, norm_eps))
                channels = base_channels * channel_mults[level]
            if level > 0:
                layers.append(upsample(channels))
        layers += [nn.GroupNorm(groups, channels, eps=norm_eps), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.layers(latents)
