"""A noise-aware classifier p(y | x_t, t): what classifier guidance differentiates (Dhariwal & Nichol 2021).

Classifier guidance adds gamma grad_{x_t} log p(y | x_t) to the diffusion model's score at every sampling
step, from almost pure noise to clean images (see :class:`minisd.diffusion.guidance.ClassifierGuidance`). A
classifier trained on clean images has never seen an x_t and its gradient there means nothing, so this one
is trained on the noisy images themselves: x_t = alpha_t x0 + sigma_t eps, with t ~ U(0, 1) under the
diffusion model's own schedule, and told t.

The network is the encoder half of minisd's UNet: the same time embedding and residual blocks (the time
sets a per-channel scale and shift in every block), stride-2 downsampling between levels, then group norm,
global average pooling and a linear layer to the class logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minisd import batch_rows
from minisd.diffusion import build_schedule, expand_like
from minisd.diffusion.losses import sample_times
from minisd.models.base import Model
from minisd.models.diffusion import to_model_range
from minisd.nn.conv2d import Conv2d
from minisd.nn.embeddings import TimeEmbedding
from minisd.nn.unet import ResidualBlock


class NoisyClassifier(Model):
    """Time-conditioned CNN: ``x_t: (B, C, H, W)`` in the diffusion model's range, ``t: (B,)`` -> ``num_classes`` logits.

    ``schedule`` must be the diffusion model's (it fixes which x_t belongs to which t). Only fixed schedules:
    a learned one would be trained here by the cross-entropy, away from the diffusion model's.

    The logged ``accuracy`` averages over t ~ U(0, 1), the noisiest half included, where no classifier can
    beat chance by much: expect it far below a clean-image classifier's 99%.
    """

    model_type = "noisy_classifier"

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 schedule: str = "cosine", base_channels: int = 32, channel_mults: list[int] = (1, 2, 2),
                 num_res_blocks: int = 1, dropout: float = 0.0, groups: int = 8):
        super().__init__(image_shape=list(image_shape), num_classes=num_classes, schedule=schedule,
                         base_channels=base_channels, channel_mults=list(channel_mults),
                         num_res_blocks=num_res_blocks, dropout=dropout, groups=groups)
        if schedule == "learned":
            raise ValueError("a noisy classifier needs a fixed schedule (linear or cosine), the diffusion model's")
        in_channels, height, width = image_shape
        factor = 2 ** (len(channel_mults) - 1)
        if not channel_mults or height % factor or width % factor:
            raise ValueError(f"image size {height}x{width} is not divisible by 2**(levels - 1) = {factor}; "
                             f"use fewer channel_mults")
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        self.schedule = build_schedule(schedule)
        embedding_dim = 4 * base_channels  # as in the UNet
        self.time_embedding = TimeEmbedding(base_channels, embedding_dim)
        self.input_conv = Conv2d(in_channels, base_channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        channels = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.blocks.append(ResidualBlock(channels, base_channels * mult, embedding_dim, dropout, groups))
                channels = base_channels * mult
            if level < len(channel_mults) - 1:
                self.blocks.append(Conv2d(channels, channels, 3, stride=2, padding=1))  # the UNet's downsample
        self.head = nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, num_classes))

    def logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p(y | x_t, t): ``x_t: (B, C, H, W)``, ``t: (B,)`` -> ``(B, num_classes)``.

        What classifier guidance differentiates with respect to x_t.
        """
        emb = self.time_embedding(t.expand(x_t.shape[0]))
        hidden = self.input_conv(x_t)
        for block in self.blocks:
            hidden = block(hidden, emb) if isinstance(block, ResidualBlock) else block(hidden)
        return self.head(hidden)

    def noisy_images(self, images: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` ``(B, C, H, W)`` in [0, 1] -> (x_t, t): noised as the diffusion model noises them,
        x_t = alpha_t x0 + sigma_t eps (Luo (2022) eq. 69) with x0 in [-1, 1] and t ~ U(0, 1)."""
        x0 = to_model_range(images)
        t = sample_times(len(x0), x0.device, generator)
        alpha, sigma = (expand_like(value, x0) for value in self.schedule.alpha_sigma(t))
        noise = batch_rows.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return alpha * x0 + sigma * noise, t

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        x_t, t = self.noisy_images(batch["image"])
        logits = self.logits(x_t, t)
        loss = F.cross_entropy(logits, batch["label"])
        accuracy = (logits.argmax(dim=1) == batch["label"]).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}
