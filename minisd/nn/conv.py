"""Small convolutional encoder and decoder for 28x28 and 8x8 images.

Each of ``depth`` stages halves (encoder) or doubles (decoder) the resolution, so the
image side must be divisible by ``2 ** depth`` (28 -> 14 -> 7 with depth 2; 8 -> 4 -> 2).
"""

from __future__ import annotations

import torch
from torch import nn

from minisd.nn.mlp import ACTIVATIONS


def conv_stage(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions that keep the size, then a 2x2 max-pool that halves it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
    )


def _bottom_side(side: int, depth: int) -> int:
    if side % (2**depth) != 0:
        raise ValueError(f"image side {side} is not divisible by 2**depth = {2**depth}; lower the depth")
    return side // (2**depth)


class ConvEncoder(nn.Module):
    """Image ``(B, C, H, W)`` -> feature vector ``(B, out_features)`` through stride-2 convolutions."""

    def __init__(self, image_shape: tuple[int, int, int], width: int, depth: int, out_features: int,
                 activation: str = "relu"):
        super().__init__()
        channels, side, _ = image_shape
        layers: list[nn.Module] = []
        for stage in range(depth):
            layers += [nn.Conv2d(channels if stage == 0 else width * 2 ** (stage - 1), width * 2**stage,
                                 kernel_size=4, stride=2, padding=1), ACTIVATIONS[activation]()]
        bottom = _bottom_side(side, depth)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(width * 2 ** (depth - 1) * bottom * bottom, out_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class ConvDecoder(nn.Module):
    """Vector ``(B, in_features)`` -> image logits ``(B, C, H, W)``: the mirror image of :class:`ConvEncoder`."""

    def __init__(self, in_features: int, image_shape: tuple[int, int, int], width: int, depth: int,
                 activation: str = "relu"):
        super().__init__()
        channels, side, _ = image_shape
        self.bottom = _bottom_side(side, depth)
        self.bottom_channels = width * 2 ** (depth - 1)
        self.head = nn.Sequential(nn.Linear(in_features, self.bottom_channels * self.bottom**2),
                                  ACTIVATIONS[activation]())
        layers: list[nn.Module] = []
        for stage in reversed(range(depth)):
            n_out = channels if stage == 0 else width * 2 ** (stage - 1)
            layers.append(nn.ConvTranspose2d(width * 2**stage, n_out, kernel_size=4, stride=2, padding=1))
            if stage > 0:
                layers.append(ACTIVATIONS[activation]())
        self.features = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden = self.head(latents).view(-1, self.bottom_channels, self.bottom, self.bottom)
        return self.features(hidden)
