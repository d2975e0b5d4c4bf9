"""The one interface every diffusion-family network is used through: D(x_t, t, cond) -> x0_hat.

Samplers, guidance and likelihoods see only this, whatever the network predicts. A denoiser also
carries its noise schedule, so a sampler can turn times into (alpha_t, sigma_t).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from minisd.diffusion.parameterisation import to_x0
from minisd.diffusion.schedules import NoiseSchedule


class Denoiser(Protocol):
    """Anything a sampler can use: ``denoiser(x_t, t, cond) -> x0_hat`` plus ``denoiser.schedule``.

    ``x_t``: ``(B, ...)``; ``t``: ``(B,)`` times in [0, 1]; ``cond``: whatever the network is
    conditioned on (class labels ``(B,)``, text embeddings), or None.
    """

    schedule: NoiseSchedule

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor: ...


def expand_like(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` so per-example scalars broadcast against ``x``."""
    return values.reshape(-1, *([1] * (x.dim() - 1)))


class NetworkDenoiser(nn.Module):
    """Wrap ``network(x_t, t, cond) -> prediction`` of kind ``prediction`` (x0 / eps / v / score) as a denoiser."""

    def __init__(self, network: nn.Module, schedule: NoiseSchedule, prediction: str = "eps"):
        super().__init__()
        self.network, self.schedule, self.prediction = network, schedule, prediction

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        alpha, sigma = (expand_like(v, x_t) for v in self.schedule.alpha_sigma(t))
        return to_x0(self.network(x_t, t, cond), self.prediction, x_t, alpha, sigma)


class ClippedDenoiser:
    """A denoiser whose x0_hat is clipped to the data's range [``low``, ``high``], for sampling.

    Ho et al. (2020) clip the predicted x0 to [-1, 1] at every sampling step, and so should any model
    of bounded data: at the noisy end an eps-predicting network's x0_hat = (x_t - sigma_t eps_hat) / alpha_t
    multiplies its error by 1 / alpha_t (150 where sampling starts, at lambda = -10; 22000 at the cosine
    schedule's t = 1), and a sampler that trusts that estimate carries it into the image. Clipping keeps the estimate in the set the data
    can lie in; it never changes the estimate of a denoiser that already stays there.
    """

    def __init__(self, denoiser: Denoiser, low: float = -1.0, high: float = 1.0):
        self.denoiser, self.low, self.high = denoiser, low, high
        self.schedule = denoiser.schedule

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.denoiser(x_t, t, cond).clamp(self.low, self.high)
