"""Image encoders and decoders of either architecture, chosen by name from a config."""

from __future__ import annotations

import math

from torch import nn

from minisd.nn.conv import ConvDecoder, ConvEncoder
from minisd.nn.mlp import mlp

ARCHITECTURES = ("mlp", "conv")


def image_encoder(image_shape: tuple[int, int, int], out_features: int, *, arch: str = "mlp",
                  hidden: list[int] = (256,), width: int = 32, depth: int = 2,
                  activation: str = "relu") -> nn.Module:
    """Image ``(B, C, H, W)`` -> ``(B, out_features)``.

    ``arch="mlp"`` flattens the image and uses the ``hidden`` sizes; ``arch="conv"`` uses
    ``depth`` stride-2 convolutions starting at ``width`` channels.
    """
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), mlp([math.prod(image_shape), *hidden, out_features], activation))
    if arch == "conv":
        return ConvEncoder(image_shape, width, depth, out_features, activation)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


def image_decoder(in_features: int, image_shape: tuple[int, int, int], *, arch: str = "mlp",
                  hidden: list[int] = (256,), width: int = 32, depth: int = 2,
                  activation: str = "relu") -> nn.Module:
    """``(B, in_features)`` -> image logits ``(B, C, H, W)``; the mirror image of :func:`image_encoder`."""
    if arch == "mlp":
        return nn.Sequential(mlp([in_features, *reversed(hidden), math.prod(image_shape)], activation),
                             nn.Unflatten(1, tuple(image_shape)))
    if arch == "conv":
        return ConvDecoder(in_features, image_shape, width, depth, activation)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
