"""The pieces every sampler is built from: the grid's (alpha, sigma), one denoiser call, one noise draw, the callback.

:mod:`minisd.diffusion.samplers` (the denoiser's view: DDPM, DDIM, the ODE solvers) and
:mod:`minisd.diffusion.score_samplers` (the score's view: predictor-corrector, Langevin) both use them,
so that every sampler reads its grid, calls its denoiser and draws its noise the same way.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from minisd.diffusion.denoiser import Denoiser

Callback = Callable[[dict[str, Any]], None]


def grid_alphas_sigmas(denoiser: Denoiser, ts: torch.Tensor,
                       x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The grid ``ts`` in the dtype and on the device of ``x``, with its alphas and sigmas ``(N + 1,)``.

    t = 0 means clean data: alpha = 1 and sigma = 0 exactly. (The schedule itself ends at lambda(0) =
    LOG_SNR_MAX, a sigma of 1.3e-3; the final step returns the denoiser's estimate instead of stepping
    to that residual noise.)
    """
    ts = ts.to(x)
    alphas, sigmas = denoiser.schedule.alpha_sigma(ts)
    clean = ts == 0
    return ts, torch.where(clean, 1.0, alphas), torch.where(clean, 0.0, sigmas)


def forward_transition(alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_s: torch.Tensor,
                       sigma_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward step s -> t (s < t) as x_t = alpha_{t|s} x_s + sigma_{t|s} eps: (alpha_{t|s}, sigma_{t|s}^2).

    alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2, clamped at 0 against
    rounding when s is close to t (Luo (2022) eqs. 61-70 between any two times; Kingma et al. 2021, eq. 2).
    """
    alpha_ts = alpha_t / alpha_s
    return alpha_ts, (sigma_t**2 - alpha_ts**2 * sigma_s**2).clamp(min=0)


def denoise(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
    """x0_pred = D(x_t, t, cond) with the grid's scalar t broadcast to the batch ``(B,)``."""
    return denoiser(x, t.expand(x.shape[0]), cond)


def add_noise(x: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """x + std z with z ~ N(0, I) from ``generator``; no draw at all when std is 0 (a deterministic or final step)."""
    if std == 0:
        return x
    return x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
