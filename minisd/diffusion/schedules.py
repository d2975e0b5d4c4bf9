"""Noise schedules as functions of continuous time t in [0, 1]: the marginals x_t = alpha_t x_0 + sigma_t eps.

A schedule is the pair (alpha_t, sigma_t), and :meth:`NoiseSchedule.alpha_sigma` is the one place that
gives it. Its log signal-to-noise ratio lambda(t) = log(alpha_t^2 / sigma_t^2) (Luo 2022 eqs. 109-114,
Kingma et al. 2021) is what samplers, grids and bounds step in. Four families:

- variance preserving (VP), alpha_t^2 + sigma_t^2 = 1 (Luo 2022 eq. 69 in continuous time): lambda alone
  fixes both, alpha_t^2 = sigmoid(lambda(t)), sigma_t^2 = sigmoid(-lambda(t)). DDPM's linear-beta, the cosine
  and VDM's learned schedule.
- sub-VP (Song et al. 2021, eq. 29): a VP schedule's alpha with sigma_t = 1 - alpha_t^2, less noise at every t.
- variance exploding (VE, NCSN: Song & Ermon 2019): alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t,
  the geometric ladder of noise levels.
- flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023): alpha_t = 1 - t, sigma_t = t, the straight
  path from data to noise.

The SDE whose marginals these are follows from (alpha_t, sigma_t) alone: see :mod:`minisd.diffusion.sde`.

lambda decreases from lambda(0) = LOG_SNR_MAX (almost clean) to lambda(1) = LOG_SNR_MIN (almost
pure noise). A schedule of T discrete steps is the special case t_i = i / T.

The closed-form schedules run to lambda = +inf at their clean end and the cosine one to -inf at
its noisy end, where a solver would divide by alpha = 0. Clamping lambda there would make it jump
at t = 0 (from +inf to whatever lambda(1/T) is), and the variational bound would inherit the jump.
Instead, time is remapped onto the stretch of the closed form between the two end points, so
lambda is finite and continuous on [0, 1] (as VDM's schedules are): at LOG_SNR_MIN = -20 the
signal alpha_1^2 is 2e-9; at LOG_SNR_MAX = 13.3 (VDM's gamma_0) the noise sigma_0 / alpha_0 =
exp(-13.3 / 2) = 1.3e-3 is a sixth of the gap between two 8-bit pixel levels on the [-1, 1] grid, 2/255 = 7.8e-3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_SNR_MIN = -20.0
LOG_SNR_MAX = 13.3


def solve_decreasing(function, target: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """The t in [0, 1] with function(t) = target, elementwise, by bisection; ``function`` must decrease."""
    low, high = torch.zeros_like(target), torch.ones_like(target)
    with torch.no_grad():
        for _ in range(iterations):
            middle = (low + high) / 2
            above = function(middle) > target  # not far enough along yet: the answer lies later
            low, high = torch.where(above, middle, low), torch.where(above, high, middle)
    return (low + high) / 2


class NoiseSchedule(nn.Module):
    """A schedule; by default variance preserving, given by :meth:`raw_log_snr`, decreasing in t.

    Other families override :meth:`alpha_sigma` and :meth:`raw_log_snr` together.
    """

    name: str = "schedule"

    def raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha_t^2 / sigma_t^2), same shape as ``t``."""
        return self.raw_log_snr(t)

    def log_snr_range(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda(1), lambda(0)): the noisy and the clean end, on ``like``'s device and dtype."""
        ends = self.log_snr(torch.tensor([1.0, 0.0], device=like.device, dtype=like.dtype))
        return ends[0], ends[1]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_t = sqrt(sigmoid(lambda)), sigma_t = sqrt(sigmoid(-lambda)); each the shape of ``t``."""
        log_snr = self.log_snr(t)
        return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()

    def time_at_log_snr(self, log_snr: torch.Tensor, iterations: int = 60) -> torch.Tensor:
        """The t with lambda(t) = ``log_snr``, by bisection (lambda is monotone); for spacings uniform in log-SNR."""
        return solve_decreasing(self.log_snr, log_snr, iterations)

    def prior_std(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """The standard deviation of the prior p(x_1) = N(0, (alpha_1^2 + sigma_1^2) I).

        That is the marginal variance at t = 1 of data with unit variance: exactly 1 for a VP schedule (the
        standard normal of DDPM), sqrt(1 + sigma_max^2) for VE (about NCSN's N(0, sigma_max^2 I)).
        """
        one = torch.ones(1, dtype=torch.float64) if like is None else torch.ones(1, device=like.device, dtype=like.dtype)
        alpha, sigma = self.alpha_sigma(one)
        return (alpha.square() + sigma.square()).sqrt()[0]


class ClosedFormSchedule(NoiseSchedule):
    """A schedule given by a formula ``base_log_snr`` on [0, 1], restricted to [LOG_SNR_MIN, LOG_SNR_MAX].

    t in [0, 1] is mapped linearly onto [t_clean, t_noisy], the times at which the formula
    reaches LOG_SNR_MAX and LOG_SNR_MIN (or 0 and 1 where it stays inside the range).
    """

    def __init__(self) -> None:
        super().__init__()
        ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
        inside = self.base_log_snr(ends)
        target = torch.tensor([LOG_SNR_MAX, LOG_SNR_MIN], dtype=torch.float64)
        crossing = solve_decreasing(self.base_log_snr, target, iterations=80)
        self.t_clean = crossing[0].item() if inside[0] > LOG_SNR_MAX else 0.0
        self.t_noisy = crossing[1].item() if inside[1] < LOG_SNR_MIN else 1.0

    def base_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return self.base_log_snr(self.t_clean + (self.t_noisy - self.t_clean) * t)


def _log_snr_from_log_alpha_bar(log_alpha_bar: torch.Tensor) -> torch.Tensor:
    # lambda = log(abar / (1 - abar)), with 1 - abar = -expm1(log abar) accurate near abar = 1.
    return log_alpha_bar - torch.log(-torch.expm1(log_alpha_bar))


class LinearBetaSchedule(ClosedFormSchedule):
    """DDPM's schedule (Ho et al. 2020): beta rises linearly from ``beta_start`` to ``beta_end`` over ``num_steps``.

    In continuous time beta(s) = T (beta_0 + s (beta_1 - beta_0)) and
    log abar(t) = -T (beta_0 t + (beta_1 - beta_0) t^2 / 2), the limit of prod_i (1 - beta_i).
    """

    name = "linear"

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000):
        self.beta_start, self.beta_end, self.num_steps = beta_start, beta_end, num_steps
        super().__init__()

    def base_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        log_alpha_bar = -self.num_steps * (self.beta_start * t + (self.beta_end - self.beta_start) * t.square() / 2)
        return _log_snr_from_log_alpha_bar(log_alpha_bar.clamp(max=-1e-12))


class CosineSchedule(ClosedFormSchedule):
    """Nichol & Dhariwal (2021): abar(t) = cos^2(pi/2 (t + s) / (1 + s)) / cos^2(pi/2 s / (1 + s)).

    At t = 1 the signal vanishes (lambda = -inf); the remapping of :class:`ClosedFormSchedule`
    ends it at LOG_SNR_MIN instead.
    """

    name = "cosine"

    def __init__(self, offset: float = 0.008):
        self.offset = offset
        super().__init__()

    def base_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        # lambda = log(abar / (1 - abar)) with abar = cos^2(a) / cos^2(a_0). Writing
        # cos^2(a_0) - cos^2(a) = sin(a + a_0) sin(a - a_0) avoids the cancellation in 1 - abar
        # near t = 0, where float32 would otherwise lose the high end of the schedule.
        start = self.offset / (1 + self.offset) * math.pi / 2
        advance = t / (1 + self.offset) * math.pi / 2  # a - a_0, exact even for tiny t
        angle = start + advance
        return (2 * torch.log(torch.cos(angle).clamp(min=1e-20)) - torch.log(torch.sin(angle + start))
                - torch.log(torch.sin(advance)))


class _PositiveLinear(nn.Linear):
    """A linear layer with non-negative weights (softplus of the free ones): keeps the network monotone."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(inputs, F.softplus(self.weight), self.bias)


class LearnedSchedule(NoiseSchedule):
    """The learned monotone schedule of Variational Diffusion Models (Kingma et al. 2021, appendix H).

    gamma(t) = -lambda(t) = gamma_0 + (gamma_1 - gamma_0) * (g(t) - g(0)) / (g(1) - g(0)), where g is an
    increasing network (positive weights, monotone activations) and the end points gamma_0, gamma_1
    are learned too. Trained to minimise the variance of the VDM loss, it only moves the
    weighting of the bound, never the bound itself (VDM, sec. 5).
    """

    name = "learned"

    def __init__(self, log_snr_max: float = LOG_SNR_MAX, log_snr_min: float = -5.0, hidden: int = 1024):
        super().__init__()
        self.gamma_0 = nn.Parameter(torch.tensor(-log_snr_max))
        self.gamma_1 = nn.Parameter(torch.tensor(-log_snr_min))
        self.first = _PositiveLinear(1, 1)
        self.hidden = _PositiveLinear(1, hidden)
        self.out = _PositiveLinear(hidden, 1)

    def _increasing(self, t: torch.Tensor) -> torch.Tensor:
        """g(t): a linear part plus a bounded sigmoid part, every weight positive, so g only increases."""
        linear = self.first(t.reshape(-1, 1).to(self.first.weight.dtype))
        nonlinear = self.out(torch.sigmoid(self.hidden(linear)) - 0.5) / self.out.in_features
        return (linear + nonlinear).reshape(t.shape).to(t.dtype)

    def raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        ends = self._increasing(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        fraction = (self._increasing(t) - ends[0]) / (ends[1] - ends[0])
        return -(self.gamma_0 + (self.gamma_1 - self.gamma_0) * fraction)


class VarianceExplodingSchedule(NoiseSchedule):
    """NCSN's geometric ladder in continuous time (Song & Ermon 2019; the VE SDE of Song et al. 2021, eq. 30).

    alpha_t = 1 and sigma_t = sigma_min (sigma_max / sigma_min)^t, so lambda(t) = -2 log sigma_t falls linearly
    in t. Song & Ermon (2020, technique 1) take sigma_max as large as the largest distance between two
    training examples, so that the noisiest level can carry any point to any other; sigma_min small enough
    that the cleanest level is the data to the eye.
    """

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"a VE schedule needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def _log_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)

    def raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return -2 * self._log_sigma(t)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones_like(t), self._log_sigma(t).exp()


class SubVPSchedule(NoiseSchedule):
    """The sub-VP schedule of Song et al. (2021, eq. 29): a VP schedule's alpha_t with sigma_t = 1 - alpha_t^2.

    Its SDE has the VP drift and a smaller diffusion, beta(t) (1 - exp(-2 int_0^t beta)); its variance stays
    below the VP one (sigma_vp^2 = 1 - alpha^2 >= (1 - alpha^2)^2), which Song et al. found gives better
    likelihoods. ``base`` names the VP schedule (DDPM's linear beta, as in that paper, by default).
    """

    name = "sub_vp"

    def __init__(self, base: str = "linear"):
        super().__init__()
        if base not in ("linear", "cosine"):
            raise ValueError(f"a sub-VP schedule is built on the linear or the cosine schedule, got {base!r}")
        self.base = SCHEDULES[base]()

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base_log_snr = self.base.log_snr(t)
        return torch.sigmoid(base_log_snr).sqrt(), torch.sigmoid(-base_log_snr)  # sigma = 1 - alpha^2 = sigma_vp^2

    def raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        base_log_snr = self.base.log_snr(t)
        return F.logsigmoid(base_log_snr) - 2 * F.logsigmoid(-base_log_snr)


class FlowMatchingSchedule(ClosedFormSchedule):
    """The straight path of flow matching (Lipman et al. 2023) and rectified flow (Liu et al. 2023):

        x_t = (1 - t) x_0 + t eps,      alpha_t = 1 - t,  sigma_t = t,

    the schedule Stable Diffusion 3 and FLUX train on (Esser et al. 2024). Not variance preserving: alpha + sigma = 1,
    so the signal fades linearly while the noise grows linearly, and lambda(t) = 2 log((1 - t) / t). It is one more
    (alpha_t, sigma_t), so the probability-flow ODE, its samplers, guidance and the likelihoods of chapters 4-5 hold
    for it unchanged (docs/08-flow-matching.md derives why). As the closed-form VP schedules, time is remapped onto
    the stretch where lambda runs from LOG_SNR_MAX to LOG_SNR_MIN (t from 0.0013 to 0.99995): no sampler divides by
    alpha = 0 at t = 1.
    """

    name = "flow"

    def base_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return 2 * (torch.log1p(-t) - torch.log(t))

    def path_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time on the straight path, t_clean + (t_noisy - t_clean) t, where alpha = 1 - it and sigma = it."""
        return self.t_clean + (self.t_noisy - self.t_clean) * t

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.path_time(t)
        return 1 - path, path


SCHEDULES: dict[str, type[NoiseSchedule]] = {s.name: s for s in (
    LinearBetaSchedule, CosineSchedule, LearnedSchedule, VarianceExplodingSchedule, SubVPSchedule,
    FlowMatchingSchedule)}


def build_schedule(name: str, **kwargs) -> NoiseSchedule:
    """A schedule by name: ``linear``, ``cosine``, ``learned`` (VP), ``sub_vp``, ``ve`` or ``flow``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)
