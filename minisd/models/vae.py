"""Chapter "Autoencoder and VAE", part 2: the variational autoencoder (Luo 2022, sec. "Variational Autoencoders").

The encoder outputs a Gaussian q(z|x) = N(mean, diag(exp(log_var))) instead of a point; the
decoder is a Bernoulli likelihood p(x|z) over pixels; the prior is p(z) = N(0, I). Training
maximises the evidence lower bound (Luo 2022 eq. 19)

    ELBO(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)),

whose first term, for Bernoulli pixels, is minus the binary cross-entropy summed over pixels.
With ``latent_dim=2, hidden=[256]`` this is the classic MNIST VAE of the learning path
(784 -> 256 relu -> 2-d mean and log-variance; 2 -> 256 relu -> 784 sigmoid). That path's Keras
code averages the KL over the latent dimensions instead of summing it: ``kl_reduction="mean"``
trains on its objective, for comparison (docs/02-autoencoder-vae.md, section 2.6).
"""

from __future__ import annotations

from typing import Any

import torch

from minisd.models.base import EncoderDecoderModel, LatentVariableModel
from minisd.distributions import gaussian_log_density, kl_normal, sample_normal


class VAE(EncoderDecoderModel, LatentVariableModel):
    """Gaussian encoder, Bernoulli decoder, standard normal prior; MLP or convolutional networks."""

    model_type = "vae"
    can_sample = True
    outputs_per_latent = 2  # a mean and a log-variance per latent: one head of 2 * latent_dim outputs
    kl_reductions = ("sum", "mean")

    def __init__(self, kl_reduction: str = "sum", **network: Any):
        """The networks of :class:`EncoderDecoderModel` (``network``: its arguments); ``kl_reduction`` picks
        the training objective (see :meth:`loss`): ``"sum"``, the ELBO, or ``"mean"``, the Keras example's
        re-weighted loss."""
        if kl_reduction not in self.kl_reductions:
            raise ValueError(f"kl_reduction must be one of {list(self.kl_reductions)}, not {kl_reduction!r}")
        super().__init__(**network)
        self.hparams["kl_reduction"] = kl_reduction  # recorded with the network's, so a checkpoint keeps its objective
        self.kl_reduction = kl_reduction

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` in [0, 1] -> mean and log-variance of q(z|x), each ``(B, latent_dim)``."""
        mean, log_var = self.encoder(images).chunk(2, dim=1)
        return mean, log_var

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``(..., latent_dim)`` -> Bernoulli logits of p(x|z), ``(..., C, H, W)``."""
        flat = latents.reshape(-1, self.latent_dim)
        return self.decoder(flat).reshape(*latents.shape[:-1], *self.image_shape)

    def elbo(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Single-sample ELBO per image (Luo 2022 eq. 19), with its two terms. Each is ``(B,)``, in nats."""
        mean, log_var = self.encode(images)
        # The reparameterisation trick (Luo 2022, sec. "Variational Autoencoders"):
        # z = mean + exp(log_var / 2) * eps, so gradients reach the encoder through mean and log_var.
        latents = sample_normal(mean, log_var, num_samples=1)[0]
        reconstruction = self.bernoulli_log_likelihood(images, self.decode(latents))
        prior_kl = kl_normal(mean, log_var, torch.zeros_like(mean), torch.zeros_like(log_var)).sum(-1)
        return reconstruction - prior_kl, reconstruction, prior_kl

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training objective, averaged over the batch, and the logs of the true ELBO and its terms.

        ``kl_reduction="sum"``: -ELBO = -E_q[log p(x|z)] + KL(q(z|x) || p(z)) (Luo 2022 eq. 19), where the
        KL of the diagonal Gaussian q is the sum of the KLs of its independent latent dimensions.

        ``kl_reduction="mean"``: -E_q[log p(x|z)] + KL / latent_dim, the loss of the Keras VAE example,
        whose ``reduce_mean(..., axis=-1)`` averages the KL over the latent dimensions. That is a
        beta-VAE with beta = 1 / latent_dim (1/2 for the 2-d path VAE), not the ELBO: with beta < 1 it
        is the ELBO plus (1 - beta) KL, which can exceed log p(x), so it bounds nothing. A nat of KL costs
        less, so the encoder spends more: on MNIST the 2-d VAE's KL grows by 1.3 nats, its codes spread
        beyond the prior, and its ELBO falls (docs/02-autoencoder-vae.md, section 2.6).

        The logged ``elbo``, ``reconstruction`` (-E_q[log p(x|z)]) and ``kl`` are the unweighted terms
        under either objective, as are :meth:`log_importance_weights` and ``nll``, so that models
        trained on the two objectives are scored on one scale.
        """
        elbo, reconstruction, prior_kl = self.elbo(batch["image"])
        kl_term = prior_kl if self.kl_reduction == "sum" else prior_kl / self.latent_dim
        loss = -(reconstruction - kl_term).mean()
        return loss, {"loss": loss.item(), "elbo": elbo.mean().item(),
                      "reconstruction": -reconstruction.mean().item(), "kl": prior_kl.mean().item()}

    def log_importance_weights(self, images: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log w_s = log p(x, z_s) - log q(z_s|x) for z_s ~ q(z|x): ``(B, C, H, W) -> (S, B)``.

        Their log-mean-exp over s is the importance-weighted bound of Burda et al. (2015), which
        tightens towards log p(x) as S grows; S = 1 is the ELBO.
        """
        mean, log_var = self.encode(images)
        latents = sample_normal(mean, log_var, num_samples)
        log_prior = gaussian_log_density(latents, torch.zeros_like(mean), torch.zeros_like(log_var)).sum(-1)
        log_posterior = gaussian_log_density(latents, mean, log_var).sum(-1)
        return self.bernoulli_log_likelihood(images, self.decode(latents)) + log_prior - log_posterior

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ N(0, I) and return the decoder's pixel means ``(n, C, H, W)`` in [0, 1]."""
        latents = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return torch.sigmoid(self.decode(latents))
