"""How well an autoencoder gives its images back: mean squared error, PSNR, and FID of the reconstructions.

Error per pixel says how far each reconstruction is from its own image; FID-MNIST / FID-Fashion
(:mod:`minisd.eval.fid`) between the images and their reconstructions says whether the
reconstructions, as a set, still look like the data to our classifier (blur raises it even where
the squared error is small). A latent diffusion model's samples can be no better than its
autoencoder's reconstructions, so this FID is the floor under theirs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from minisd.eval.fid import fid

if TYPE_CHECKING:  # only for the type hints: minisd.models itself imports minisd.eval
    from minisd.models.classifier import Classifier
    from minisd.models.latent_autoencoder import LatentAutoencoder


@torch.no_grad()
def reconstruct_in_batches(autoencoder: LatentAutoencoder, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """``autoencoder.reconstruct`` over ``images`` ``(N, C, H, W)`` in chunks, in eval mode (restored after);
    a CPU tensor ``(N, C, H, W)``. Any module with ``reconstruct(images) -> images`` in [0, 1] will do."""
    was_training = autoencoder.training
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    reconstructions = torch.cat([autoencoder.reconstruct(images[start:start + batch_size].to(device)).cpu()
                                 for start in range(0, len(images), batch_size)])
    autoencoder.train(was_training)
    return reconstructions


def reconstruction_report(autoencoder: LatentAutoencoder, images: torch.Tensor, classifier: Classifier | None = None,
                          batch_size: int = 500) -> dict[str, float]:
    """Reconstruction quality over ``images`` ``(N, C, H, W)`` in [0, 1].

    Returns ``mse``, the mean squared error per pixel on [0, 1]; ``psnr`` in dB, 10 log10(1 / mse),
    the peak signal-to-noise ratio of that mean error (peak 1); ``num_images``; and, when a
    ``classifier`` is given, ``fid``: FID-MNIST / FID-Fashion between the images and their
    reconstructions (needs N >= 2, and N well above the 128 features for a stable value).
    """
    reconstructions = reconstruct_in_batches(autoencoder, images, batch_size)
    mse = (reconstructions - images.cpu()).double().square().mean().item()
    report = {"num_images": len(images), "mse": mse, "psnr": 10 * math.log10(1 / mse) if mse > 0 else math.inf}
    if classifier is not None:
        report["fid"] = fid(classifier, images, reconstructions, batch_size)
    return report
