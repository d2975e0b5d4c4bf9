"""The variational bound of a diffusion model on 8-bit images, in nats and bits per dimension.

-log p(x) <= prior + reconstruction + diffusion  (Luo 2022 eq. 58, the three terms of the VDM ELBO):

    prior           KL(q(x_1 | x) || N(0, I)): how far the last latent is from pure noise
    reconstruction  -E log p(x | z_0) under a *discrete* decoder over the 256 pixel levels
    diffusion       the denoising matching terms (``losses.diffusion_term``), discrete or continuous time

Images are 8-bit: x = k / 127.5 - 1 for k in {0, ..., 255}. The decoder p(x | z_0) puts on
level k the probability of a Gaussian N(z_0 / alpha_0, sigma_0^2 / alpha_0^2) renormalised
over the 256 levels (as in VDM), so the bound is a bound on the discrete likelihood and its bits
per dimension compare with published 8-bit numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from minisd.diffusion.denoiser import expand_like
from minisd.diffusion.losses import diffusion_term
from minisd.distributions import kl_normal

PIXEL_LEVELS = 256


def prior_term(schedule: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_1 | x0) || p(x_1)) summed over dimensions, ``(B,)``: q(x_1 | x0) = N(alpha_1 x0, sigma_1^2 I) and the
    prior p(x_1) = N(0, (alpha_1^2 + sigma_1^2) I), which is N(0, I) for a VP schedule (see ``prior_std``)."""
    one = torch.ones(len(x0), device=x0.device)
    alpha, sigma = (expand_like(v, x0) for v in schedule.alpha_sigma(one))
    mean, log_var = alpha * x0, (2 * sigma.log()).expand_as(x0)
    prior_log_var = (2 * schedule.prior_std(x0).log()).expand_as(x0)
    return kl_normal(mean, log_var, torch.zeros_like(x0), prior_log_var).flatten(1).sum(1)


def reconstruction_term(schedule: torch.nn.Module, x0: torch.Tensor,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """-log p(x | z_0) for z_0 ~ q(z_0 | x), under the discretised decoder, summed over dimensions ``(B,)``."""
    zero = torch.zeros(len(x0), device=x0.device)
    alpha, sigma = (expand_like(v, x0) for v in schedule.alpha_sigma(zero))
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    z0_scaled = x0 + (sigma / alpha) * eps  # z_0 / alpha_0
    levels = torch.linspace(-1, 1, PIXEL_LEVELS, device=x0.device, dtype=x0.dtype)
    logits = -0.5 * ((z0_scaled.unsqueeze(-1) - levels) / (sigma / alpha).unsqueeze(-1)).square()
    index = ((x0 + 1) * (PIXEL_LEVELS - 1) / 2).round().long().clamp(0, PIXEL_LEVELS - 1)
    log_prob = logits.log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return -log_prob.flatten(1).sum(1)


def variational_bound(denoiser, x0: torch.Tensor, *, num_steps: int | None = None, cond: Any = None,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """One-sample estimate of -ELBO per image, with its three terms, each ``(B,)`` in nats.

    ``x0``: ``(B, C, H, W)`` on the 8-bit grid in [-1, 1]. ``num_steps=None`` is continuous time,
    ``num_steps=T`` the bound of the T-step discrete-time model. Adds ``bits_per_dim``.
    """
    terms = {"prior": prior_term(denoiser.schedule, x0),
             "reconstruction": reconstruction_term(denoiser.schedule, x0, generator),
             "diffusion": diffusion_term(denoiser, x0, num_steps=num_steps, cond=cond, generator=generator)}
    terms["nats"] = terms["prior"] + terms["reconstruction"] + terms["diffusion"]
    terms["bits_per_dim"] = terms["nats"] / (x0[0].numel() * math.log(2))
    return terms
