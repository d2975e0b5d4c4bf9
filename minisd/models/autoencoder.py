"""Chapter "Autoencoder and VAE", part 1: the deterministic autoencoder.

An encoder squeezes the image into a few numbers z, a decoder rebuilds the image from them.
Nothing makes the space of z orderly, so decoding a random z gives no digit: that is what
the VAE (``minisd.models.vae``) adds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from minisd.models.base import EncoderDecoderModel


class Autoencoder(EncoderDecoderModel):
    """``x -> z = encoder(x) -> decoder(z) ≈ x``, trained with binary cross-entropy summed over pixels."""

    model_type = "autoencoder"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] -> codes ``(B, latent_dim)``."""
        return self.encoder(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, latent_dim)`` -> pixel logits ``(B, C, H, W)``."""
        return self.decoder(latents)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> their reconstructions, as pixel intensities in [0, 1]."""
        return torch.sigmoid(self.decode(self.encode(images)))

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"]
        logits = self.decode(self.encode(images))
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(1)
        loss = reconstruction.mean()
        return loss, {"loss": loss.item(), "reconstruction": loss.item()}
