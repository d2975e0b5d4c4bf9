"""Chapter "Latent diffusion", part 1: the autoencoder that Stable Diffusion's diffusion model works inside.

Rombach et al. (2022) train the diffusion model not on pixels but on the latents of an autoencoder
that shrinks each side by a factor f, here 4: a 1x28x28 digit becomes a 4x7x7 latent (196 numbers
for 784 pixels), a 3x32x32 image a 4x8x8 one. The latent keeps the image's layout, so the same
UNet denoises it, at f^2 = 16 times fewer positions per layer.

The encoder is a VAE's (Luo (2022), sec. "Variational Autoencoders"): it outputs a diagonal Gaussian
q(z|x) = N(mean(x), diag(exp(logvar(x)))) over the latent feature map (eq. 20), and training
penalises its KL divergence from the prior p(z) = N(0, I) (eq. 21). Unlike the chapter-2 VAE, the
KL carries a small weight (``kl_weight``), not 1: the goal is a faithful reconstruction through
a latent with a tame, smooth distribution, not a likelihood. The weight only keeps the latents
from drifting to huge values and makes the decoder robust to small perturbations of z, which is
what the diffusion model's samples will be.

The diffusion schedule assumes data of about unit variance, which an encoder's latents need not
have; ``latent_scale`` (Rombach et al. 2022, sec. 4.3.2 and appendix G: 0.18215 for Stable
Diffusion, whose KL weight is tiny) rescales them. It is fitted to the data after training
(:meth:`LatentAutoencoder.fit_latent_scale`) and saved with the weights, so ``encode`` gives
unit-variance latents and ``decode`` undoes the scaling. Here the KL term already holds the latents
near unit variance: the fitted scale came out 1.07 on MNIST and 1.10 on the shapes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm import tqdm

from minisd.errors import ConfigError, DataError
from minisd.models.base import Model
from minisd.nn.latent_codec import LatentDecoder, LatentEncoder, check_codec_shape, downsampling_factor
from minisd.distributions import kl_normal, sample_normal


OWN_LAYOUT = dict(groups=8, norm_eps=1e-5, middle_attention=False, decoder_res_blocks=None,
                  asymmetric_downsample=False, quant_convs=False)


# Images per encoder call when a whole dataset is encoded. Small on purpose: at 500 a layer's activations (50 MB)
# are fresh memory pages from the OS on every call, and zeroing them took more time than the convolutions. At 50,
# MNIST's 61,000 training images encoded in 21.6 s instead of 37.4 s on 2 cores (benchmarks/README.md, "Time to
# quality").
ENCODE_BATCH = 50


class LatentAutoencoder(Model):
    """KL-regularised convolutional autoencoder: images ``(B, C, H, W)`` in [0, 1] <-> latents ``(B, 4, H/4, W/4)``.

    Hyper-parameters:
        image_shape:     ``(C, H, W)``; H and W divisible by the downsampling factor ``2 ** (len(channel_mults) - 1)``.
        latent_channels: channels of the latent feature map (4, as in Stable Diffusion).
        base_channels, channel_mults, num_res_blocks: the width and depth of the networks
            (:mod:`minisd.nn.latent_codec`); ``(1, 2, 2)`` is three levels, two halvings, factor 4.
        kl_weight:       weight of KL(q(z|x) || N(0, I)) against the reconstruction term (see :meth:`loss`).
        reconstruction:  ``"mse"`` or ``"l1"``, the pixel loss (see :meth:`loss`).

    Why ``reconstruction="mse"`` and ``kl_weight=1e-3`` (measured with ``benchmarks/latent_autoencoder.py``:
    MNIST, 600 steps of 128 trained on a GPU, scored on the 10,000 test images; FID-MNIST is between
    the test images and their reconstructions):

    ======  =========  ==========  =========  =========  ==============================
    loss    kl_weight  MSE/pixel   FID-MNIST  KL/elem.   posterior std (unit latents)
    ======  =========  ==========  =========  =========  ==============================
    l1      1e-4       0.00191     0.63       4.3        0.025
    mse     1e-4       0.00093     0.14       4.7        0.017
    mse     1e-3       0.00088     0.13       3.0        0.071
    mse     1e-2       0.00097     0.11       1.4        0.43
    ======  =========  ==========  =========  =========  ==============================

    Stable Diffusion sums an L1 error (with a perceptual and an adversarial loss beside it) because
    squared error alone blurs natural images. Here the pixel loss is alone, and L1 lost on both measures
    at this budget (its gradient has the same size for a small error as for a large one, which
    likely slows the last refinements of stroke edges); on the shapes images, mostly black, it reached
    only 19.7 dB PSNR where MSE reached 37.5 dB. MSE reconstructions are visibly sharp at 0.0009 per pixel.
    The KL weight trades how much noise the decoder learns to tolerate around each code against
    fidelity: 1e-3 costs nothing in error (1e-4 and 1e-5 are no better) and makes the posterior four
    times wider than 1e-4 does, so the decoder is smoother around the codes (decoding latents moved
    by N(0, 0.3^2) adds 0.0027 error per pixel, against 0.0036 at 1e-4), which is what a diffusion
    model's imperfect samples will need. At 1e-2 the KL (1.4 nats per element) starts to take
    information out of the latent.
    """

    model_type = "latent_autoencoder"
    reconstruction_losses = ("mse", "l1")

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_channels: int = 4,
                 base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 kl_weight: float = 1e-3, reconstruction: str = "mse", groups: int = 8, norm_eps: float = 1e-5,
                 middle_attention: bool = False, decoder_res_blocks: int | None = None,
                 asymmetric_downsample: bool = False, quant_convs: bool = False):
        check_codec_shape(image_shape, base_channels, channel_mults, num_res_blocks, groups)
        if latent_channels < 1:
            raise ConfigError(f"latent_channels must be at least 1, got {latent_channels}")
        if not kl_weight >= 0:
            raise ConfigError(f"kl_weight must be 0 or more, got {kl_weight}")
        if reconstruction not in self.reconstruction_losses:
            raise ConfigError(f"reconstruction must be one of {list(self.reconstruction_losses)}, "
                              f"not {reconstruction!r}")
        # Stable Diffusion's layout (minisd.nn.latent_codec); recorded only where it differs from minisd's own, so
        # that the configs of minisd's autoencoders stay as they were.
        layout = dict(groups=groups, norm_eps=norm_eps, middle_attention=middle_attention,
                      decoder_res_blocks=decoder_res_blocks, asymmetric_downsample=asymmetric_downsample,
                      quant_convs=quant_convs)
        layout = {key: value for key, value in layout.items() if value != OWN_LAYOUT[key]}
        super().__init__(image_shape=list(image_shape), latent_channels=latent_channels,
                         base_channels=base_channels, channel_mults=list(channel_mults),
                         num_res_blocks=num_res_blocks, kl_weight=kl_weight, reconstruction=reconstruction, **layout)
        self.image_shape = tuple(image_shape)
        self.latent_channels, self.kl_weight, self.reconstruction = latent_channels, kl_weight, reconstruction
        networks = dict(base_channels=base_channels, channel_mults=channel_mults, num_res_blocks=num_res_blocks,
                        groups=groups, norm_eps=norm_eps, middle_attention=middle_attention, quant_convs=quant_convs)
        # One head of 2 * latent_channels maps: a mean and a log-variance per latent element.
        self.encoder = LatentEncoder(self.image_shape[0], 2 * latent_channels, **networks,
                                     asymmetric_downsample=asymmetric_downsample)
        self.decoder = LatentDecoder(latent_channels, self.image_shape[0], **networks,
                                     decoder_res_blocks=decoder_res_blocks)
        # Persistent, so that it is saved in model.safetensors with the weights (and copied, not
        # averaged, by the EMA): a checkpoint's latents keep the scale the diffusion model trained on.
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self._factor = downsampling_factor(channel_mults)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(latent_channels, H / f, W / f)``: ``(4, 7, 7)`` for MNIST, ``(4, 8, 8)`` for 32x32 images."""
        _, height, width = self.image_shape
        return (self.latent_channels, height // self._factor, width // self._factor)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x) (Luo (2022) eq. 20), unscaled, each ``(B, *latent_shape)``.

        ``images``: ``(B, C, H, W)`` in [0, 1], modelled in [-1, 1] (zero-centred inputs suit the
        zero-centred initialisation of the convolutions).
        """
        mean, logvar = self.encoder(images * 2 - 1).chunk(2, dim=1)
        # As Stable Diffusion's DiagonalGaussianDistribution: a wild early logvar would make exp()
        # overflow in the KL and stop the run; trained encoders stay far inside these bounds.
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: torch.Tensor, *, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] -> latents ``(B, *latent_shape)``, times ``latent_scale``.

        The posterior mean by default (deterministic: the latent diffusion model trains on these);
        ``sample=True`` draws z ~ q(z|x) instead, with ``generator`` or torch's global RNG.
        """
        mean, logvar = self.posterior(images)
        latents = sample_normal(mean, logvar, 1, generator)[0] if sample else mean
        return latents * self.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, *latent_shape)``, scaled as :meth:`encode` gives them -> images ``(B, C, H, W)`` in [0, 1]."""
        return self._to_unit_range(self.decoder(latents / self.latent_scale))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] -> decode(encode(images)), through the posterior mean."""
        return self.decode(self.encode(images))

    @staticmethod
    def _to_unit_range(decoded: torch.Tensor) -> torch.Tensor:
        # The decoder is linear at its output and trained on the raw values (see loss()); the
        # clamp only applies where images leave the model. A tanh would bound the output too, but
        # MNIST's background is exactly 0, -1 in model space, which tanh reaches only at -infinity:
        # most pixels would push their pre-activations down for ever under a vanishing gradient.
        return ((decoded + 1) / 2).clamp(0.0, 1.0)

    @torch.no_grad()
    def fit_latent_scale(self, images: torch.Tensor, batch_size: int = ENCODE_BATCH) -> float:
        """Set ``latent_scale`` to 1 / std of the unscaled posterior means over ``images``, and return it.

        Rombach et al. (2022), sec. 4.3.2 / appendix G: rescale the latents to unit variance (one number
        over all elements), the variance the diffusion schedule's prior N(0, I) and its signal-to-noise
        ratios assume. ``images``: ``(N, C, H, W)`` in [0, 1]; a few thousand are plenty.
        """
        unscaled = encode_dataset(self, images, batch_size) / self.latent_scale.item()
        std = unscaled.double().std().item()
        if not (math.isfinite(std) and std > 0):
            raise DataError(f"the latents of these {len(images)} images have standard deviation {std}, "
                            f"so no scale gives them unit variance; fit the scale on varied, finite training images")
        self.latent_scale.fill_(1.0 / std)
        return self.latent_scale.item()

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """reconstruction + kl_weight * KL(q(z|x) || N(0, I)), averaged over the batch.

        The two terms of the VAE objective (Luo (2022) eq. 19), reweighted: with z drawn from q(z|x)
        by the reparameterisation trick (sec. "Variational Autoencoders"),

        - reconstruction: the pixel error of decoder(z) in model space [-1, 1], summed over pixels.
          ``"mse"`` is -log p(x|z) of a Gaussian likelihood up to constants, ``"l1"`` that of a Laplace
          one; summed as Stable Diffusion's autoencoder sums its L1, so that ``kl_weight`` is on the
          scale of its 1e-6 (a squared error in [-1, 1] is smaller than an absolute one, so the
          same weight bites harder here).
        - KL of the diagonal Gaussian q(z|x) (eq. 20) from the prior p(z) = N(0, I) (eq. 21), in
          closed form, summed over latent elements (:func:`minisd.distributions.kl_normal`).

        Logs ``loss``, ``reconstruction`` and ``kl`` (nats) per image, and ``mse``: the mean squared error
        per pixel on [0, 1] of the (clamped) reconstruction from the sampled z.
        """
        images = batch["image"]
        targets = images * 2 - 1
        mean, logvar = self.posterior(images)
        decoded = self.decoder(sample_normal(mean, logvar, 1)[0])
        errors = decoded - targets
        pixel_losses = errors.abs() if self.reconstruction == "l1" else errors.square()
        reconstruction = pixel_losses.flatten(1).sum(1)
        kl = kl_normal(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar)).flatten(1).sum(1)
        loss = (reconstruction + self.kl_weight * kl).mean()
        mse = (self._to_unit_range(decoded) - images).square().mean()
        return loss, {"loss": loss.item(), "reconstruction": reconstruction.mean().item(),
                      "kl": kl.mean().item(), "mse": mse.item()}


@torch.no_grad()
def encode_dataset(autoencoder: LatentAutoencoder, images: torch.Tensor, batch_size: int = ENCODE_BATCH,
                   progress: bool = False) -> torch.Tensor:
    """Scaled posterior means of ``images`` ``(N, C, H, W)`` in [0, 1], as a CPU tensor ``(N, *latent_shape)``.

    Encodes once, in chunks of ``batch_size`` and in eval mode (the mode the autoencoder was in is
    restored after): the cache the latent diffusion model trains on, so that no training step pays
    for the encoder.
    """
    was_training = autoencoder.training
    autoencoder.eval()
    device = autoencoder.latent_scale.device
    chunks = range(0, len(images), batch_size)
    latents = [autoencoder.encode(images[start:start + batch_size].to(device)).cpu()
               for start in tqdm(chunks, desc="encoding", unit="batch", disable=not progress)]
    autoencoder.train(was_training)
    return torch.cat(latents) if latents else torch.empty(0, *autoencoder.latent_shape)
