"""Time grids for samplers: which times t_0 > t_1 > ... > t_N = 0 a sampler visits.

A grid of ``num_steps`` steps has ``num_steps + 1`` times: ``num_steps`` positive ones from ``t_max``
down to ``t_min``, then exactly 0.0, which samplers read as "return the denoised estimate" (the
last step goes to clean data, where sigma = 0). How the positive times are spread matters as much
as how many there are: a step's error grows with the change of log-SNR across it, and a grid uniform
in t gives the cosine schedule's first step the jump from lambda = -20 (t = 1) to -1.8 (t = 0.75, 5 steps).

    uniform   uniform in t (DDPM / DDIM)
    log_snr   uniform in lambda = log(alpha^2 / sigma^2), the variable DPM-Solver steps in (Lu et al. 2022)
    karras    Karras et al. (2022) eq. 5 in the variance-exploding sigma = sigma_t / alpha_t = exp(-lambda / 2):
              sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
              dense at low noise, where errors are visible in the image
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from minisd.diffusion.schedules import NoiseSchedule
from minisd.errors import ConfigError

SPACINGS = ("uniform", "log_snr", "karras")

# Where sampling starts: the time at which the log-SNR has fallen to -10, or t = 1 for a schedule that
# never goes so low. There alpha = 0.0067, the signal a 1000-step linear-beta DDPM ends at. Drawing
# x_t ~ N(0, sigma_t^2 I) in place of its true marginal costs a KL of at most alpha^2 E||x_0||^2 / (2 sigma_t^2)
# (KL is convex in the mixture): 0.016 nats for an MNIST image in [-1, 1]. The cosine schedule goes on
# to lambda = -20, and a grid from there spends steps on images that are noise to within 1e-4: the
# first 4 of 10 steps uniform in log-SNR fall below -7.
LOG_SNR_START = -10.0

# The least noisy time a grid stops at before its final jump to 0: one step of a 1000-step DDPM,
# the smallest time its network ever saw. There lambda is about 9 (linear), 10 (cosine) and 13
# (learned at init): sigma / alpha is 0.01 or less, so the final denoising step has little left to do.
T_MIN = 1e-3


# The grids of fixed schedules (no parameters, no buffers: a formula), by the arguments that made them. A sampler
# asks for the same grid at every call, and the start time and the grid uniform in log-SNR take
# 2,700 small tensor operations (bisections of the log-SNR): 6-7 ms, 3% of a 4-image call of checkpoints/mnist.
_GRIDS: weakref.WeakKeyDictionary[NoiseSchedule, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def _memoised(schedule: NoiseSchedule, key: tuple, compute: Callable[[], Any]) -> Any:
    if any(True for _ in schedule.parameters()) or any(True for _ in schedule.buffers()):
        return compute()  # learned or loaded: it may change
    grids = _GRIDS.setdefault(schedule, {})
    if key not in grids:
        grids[key] = compute()
    return grids[key]


def _factory(schedule: NoiseSchedule) -> dict:
    """Tensor options for times: float64, or a learned schedule's parameters' dtype and device (its only ones)."""
    parameter = next(schedule.parameters(), None)
    return {"dtype": torch.float64} if parameter is None else {"dtype": parameter.dtype, "device": parameter.device}


def start_time(schedule: NoiseSchedule, log_snr: float = LOG_SNR_START) -> float:
    """The time a sampler starts from: where lambda(t) falls to ``log_snr``, or 1.0 if lambda(1) >= ``log_snr``."""
    return _memoised(schedule, ("start", log_snr), lambda: _start_time(schedule, log_snr))


def _start_time(schedule: NoiseSchedule, log_snr: float) -> float:
    factory = _factory(schedule)
    with torch.no_grad():
        if schedule.log_snr(torch.ones(1, **factory)).item() >= log_snr:
            return 1.0
        return schedule.time_at_log_snr(torch.tensor([log_snr], **factory)).item()


def time_steps(schedule: NoiseSchedule, num_steps: int, spacing: str = "uniform", t_max: float = 1.0,
               t_min: float | None = None, rho: float = 7.0) -> torch.Tensor:
    """The times ``(num_steps + 1,)``, descending from ``t_max`` through ``t_min`` (default ``T_MIN``) to 0.0.

    ``rho`` is the Karras et al. (2022) exponent (7 in the paper); only ``karras`` uses it. The grid is
    computed in float64, or in the dtype of a learned schedule's parameters, on their device.
    """
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown spacing {spacing!r}; choose one of {SPACINGS}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"the number of steps must be a whole number, at least 1, got {num_steps!r}")
    t_min = T_MIN if t_min is None else t_min
    if not 0 < t_min <= t_max <= 1:
        raise ConfigError(f"need 0 < t_min <= t_max <= 1, got t_min={t_min}, t_max={t_max}")
    key = ("grid", num_steps, spacing, float(t_max), float(t_min), float(rho))
    return _memoised(schedule, key, lambda: _time_steps(schedule, num_steps, spacing, t_max, t_min, rho)).clone()


def _time_steps(schedule: NoiseSchedule, num_steps: int, spacing: str, t_max: float, t_min: float,
                rho: float) -> torch.Tensor:
    factory = _factory(schedule)
    ramp = torch.linspace(0, 1, num_steps, **factory)  # [0] for one step: just t_max
    ends = torch.tensor([t_max, t_min], **factory)
    if spacing == "uniform":
        times = ends[0] + ramp * (ends[1] - ends[0])
    else:
        with torch.no_grad():
            log_snr_max_noise, log_snr_min_noise = schedule.log_snr(ends)
            if spacing == "log_snr":
                log_snr = log_snr_max_noise + ramp * (log_snr_min_noise - log_snr_max_noise)
            else:
                # lambda = -2 log sigma_ve, so sigma_ve = exp(-lambda / 2).
                root_max = torch.exp(-log_snr_max_noise / (2 * rho))  # sigma_max^(1 / rho)
                root_min = torch.exp(-log_snr_min_noise / (2 * rho))
                log_snr = -2 * rho * torch.log(root_max + ramp * (root_min - root_max))
            times = schedule.time_at_log_snr(log_snr)
        # The bisection inverse is only accurate to its tolerance, and near t = 1 the cosine log-SNR is
        # steep: start at t_max itself, the time the sampler's initial noise is drawn for.
        times[0] = ends[0]
    if not (times[1:] < times[:-1]).all():  # t_max = t_min, or more steps than the dtype tells apart
        raise ConfigError(f"a grid of {num_steps} steps from t_max = {t_max} to t_min = {t_min} has steps of zero "
                          f"length; give t_max > t_min, or fewer steps")
    return torch.cat([times, times.new_zeros(1)])
