"""The stochastic differential equation behind every noise schedule (Song et al. 2021; Luo 2022, "Score-based Generative Models").

A schedule gives the marginals q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I). One linear SDE has exactly
those marginals (Kingma et al. 2021, appendix; Song et al. 2021, eq. 5 with affine drift):

    dx = f(t) x dt + g(t) dw,    f(t) = d log alpha_t / dt,    g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2
                                                                      = -sigma_t^2 d lambda / dt,

with lambda = log(alpha^2 / sigma^2) the log-SNR. So the SDE is derived from the schedule, never written
beside it: DDPM's linear-beta schedule gives the VP SDE dx = -beta/2 x dt + sqrt(beta) dw, the sub-VP
schedule Song et al.'s sub-VP SDE, and NCSN's geometric ladder (alpha = 1) the VE SDE
dx = sqrt(d sigma^2 / dt) dw. Nothing here asks which family a schedule belongs to.

Run backwards in time, the same marginals come from the reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6)

    dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar,

and from the deterministic probability-flow ODE (Song et al. 2021, eq. 13)

    dx / dt = f(t) x - 1/2 g(t)^2 grad log p_t(x).

The score comes from any denoiser by Tweedie's formula (Luo 2022 eq. 133, with alpha_t for sqrt(abar_t)):
E[alpha_t x_0 | x_t] = x_t + sigma_t^2 grad log p_t(x_t), so grad log p_t(x_t) = (alpha_t x0_hat - x_t) / sigma_t^2
= -eps_hat / sigma_t (Luo eq. 151). Every tensor of times is ``(B,)`` and broadcast against ``x`` of any shape
``(B, ...)``: 2-D points and images share every function.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from minisd.diffusion.denoiser import Denoiser, expand_like
from minisd.diffusion.schedules import NoiseSchedule, build_schedule

ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _time_derivative(function: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """d function(t) / dt, elementwise, by autograd (0 where ``function`` does not depend on t)."""
    with torch.enable_grad():
        t = t.detach().requires_grad_(True)
        value = function(t)
        if not value.requires_grad:
            return torch.zeros_like(t)
        (derivative,) = torch.autograd.grad(value.sum(), t, allow_unused=True)
    return torch.zeros_like(t) if derivative is None else derivative.detach()


class SDE:
    """dx = f(t) x dt + g(t) dw with the marginals of ``schedule``; see the module docstring."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The marginal q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I): the schedule's, shape of ``t``."""
        return self.schedule.alpha_sigma(t)

    def drift_coefficient(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) = d log alpha_t / dt: -beta(t) / 2 for VP and sub-VP, 0 for VE."""
        return _time_derivative(lambda s: self.schedule.alpha_sigma(s)[0].log(), t)

    def diffusion_squared(self, t: torch.Tensor) -> torch.Tensor:
        """g(t)^2 = -sigma_t^2 d lambda / dt: beta(t) for VP, d sigma^2 / dt for VE."""
        _, sigma = self.schedule.alpha_sigma(t)
        return -sigma.detach().square() * _time_derivative(self.schedule.log_snr, t)

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward drift f(t) x, ``x``'s shape; ``t`` ``(B,)``."""
        return expand_like(self.drift_coefficient(t).to(x), x) * x

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t), shape of ``t``."""
        return self.diffusion_squared(t).clamp(min=0).sqrt()

    def reverse_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor, *,
                      probability_flow: bool = False) -> torch.Tensor:
        """f(t) x - g(t)^2 score (the reverse SDE), or f(t) x - 1/2 g(t)^2 score (the probability-flow ODE)."""
        weight = 0.5 if probability_flow else 1.0
        return self.drift(x, t) - weight * expand_like(self.diffusion_squared(t).to(x), x) * score

    # -- the prior at t = 1 -------------------------------------------------------------------------------------

    def prior_std(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The prior's standard deviation sqrt(alpha_1^2 + sigma_1^2): see :meth:`NoiseSchedule.prior_std`."""
        return self.schedule.prior_std(like)

    def prior_sample(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """x_1 ~ N(0, prior_std^2 I) of ``shape``, from ``generator``."""
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std(noise) * noise

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, prior_std^2 I) summed over all but the first dimension, ``(B,)``, in nats."""
        std = self.prior_std(x)
        dims = x[0].numel()
        return -0.5 * x.square().flatten(1).sum(1) / std**2 - dims * (torch.log(std) + 0.5 * math.log(2 * math.pi))


def score_from_denoiser(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
    """grad log p_t(x) = (alpha_t x0_hat - x) / sigma_t^2 by Tweedie's formula (Luo 2022 eq. 133); ``t`` ``(B,)``."""
    alpha, sigma = (expand_like(v.to(x), x) for v in denoiser.schedule.alpha_sigma(t))
    return (alpha * denoiser(x, t, cond) - x) / sigma.square()


def probability_flow_drift(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
    """dx / dt of the probability-flow ODE with the denoiser's score (Song et al. 2021, eq. 13), ``x``'s shape."""
    sde = SDE(denoiser.schedule)
    return sde.reverse_drift(x, t, score_from_denoiser(denoiser, x, t, cond), probability_flow=True)


def vp(schedule: str = "linear") -> SDE:
    """The variance-preserving SDE of a VP schedule (``linear``: Song et al.'s beta_min = 0.1, beta_max = 20)."""
    return SDE(build_schedule(schedule))


def sub_vp(base: str = "linear") -> SDE:
    """The sub-VP SDE (Song et al. 2021, eq. 29) on the VP schedule ``base``."""
    return SDE(build_schedule("sub_vp", base=base))


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> SDE:
    """The variance-exploding SDE (NCSN in continuous time, Song et al. 2021, eq. 30)."""
    return SDE(build_schedule("ve", sigma_min=sigma_min, sigma_max=sigma_max))
