"""Discrete time, as the published models were trained: T noise levels, and the timestep grids diffusers samples on.

DDPM (Ho et al. 2020) and Stable Diffusion train on T = 1000 steps k = 0..T-1, step k having the signal
alpha_bar_k = prod_{i <= k} (1 - beta_i) (Luo (2022) eqs. 61-70 with alpha_t^2 = alpha_bar). minisd's time is
continuous, so step k is read at

    t = (k + 1) / T,        t = 0 (k = -1): clean data, alpha = 1, sigma = 0,

and :class:`DiscreteSchedule` is one more schedule (alpha_t, sigma_t): every sampler of chapter 4 runs on a
discrete-time model unchanged. Between steps it interpolates sigma_ve = sigma / alpha linearly in k, as diffusers'
Euler and DPM-Solver schedulers do (for grids whose steps are not whole numbers); the network is shown
``1000 t - 1``, the step index it trained on (:class:`~minisd.nn.embeddings.TimeEmbedding`).

Which steps a sampler visits is a choice the published models' configs make ("timestep_spacing"; Lin et al. 2024,
"Common diffusion noise schedules and sample steps are flawed", Table 2), and diffusers' schedulers read it
differently from one another. :func:`discrete_time_steps` reproduces each one (``CONVENTIONS``), so that a model
samples here as it does there:

    leading    every T // N-th step from 0, plus ``steps_offset``     (Stable Diffusion 1.x, 2.x)
    trailing   every T / N-th step counted back from T - 1            (starts at pure noise: SD-Turbo, SD 2.1-v)
    linspace   N steps evenly from T - 1 down to 0
"""

from __future__ import annotations

import math

import numpy as np
import torch

from minisd.diffusion.schedules import NoiseSchedule
from minisd.errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DISCRETE_SPACINGS = ("leading", "trailing", "linspace")

# Which of diffusers' schedulers a minisd sampler corresponds to, and so whose conventions its grid follows.
CONVENTIONS = {"ddim": "ddim", "ddpm": "ddim", "dpmpp_2m": "dpm", "dpmpp_2m_sde": "dpm"}  # the others: "euler"
# The spacing each scheduler class uses when the folder's config names none (the published SD 1.x configs).
DEFAULT_SPACING = {"ddim": "leading", "euler": "linspace", "dpm": "linspace"}


def training_betas(beta_schedule: str, beta_start: float, beta_end: float, num_steps: int) -> torch.Tensor:
    """beta_0..beta_{T-1}, float32, computed as diffusers computes them (so alpha_bar agrees to the bit):

    linear          evenly from beta_start to beta_end (Ho et al. 2020)
    scaled_linear   evenly in sqrt(beta), squared (Stable Diffusion; "linear" of the LDM code)
    squaredcos_cap_v2   the cosine schedule of Nichol & Dhariwal (2021), each beta capped at 0.999
    """
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                             for i in range(num_steps)], dtype=torch.float32)
    raise ConfigError(f"unknown beta schedule {beta_schedule!r}; choose one of {BETA_SCHEDULES}")


class DiscreteSchedule(NoiseSchedule):
    """The schedule of a model trained on ``len(betas)`` discrete steps, read at t = (k + 1) / T.

    ``steps_offset``, ``set_alpha_to_one``, ``timestep_spacing`` and ``clip_sample`` are the scheduler settings of
    a published model (see :func:`discrete_time_steps` and :func:`clip_range`); they shape sampling, not the
    schedule. None: the folder does not set it, and each sampler takes the default of the diffusers scheduler it
    corresponds to.
    """

    name = "discrete"

    def __init__(self, betas: torch.Tensor, *, steps_offset: int = 0, set_alpha_to_one: bool | None = None,
                 timestep_spacing: str | None = None, clip_sample: bool | None = None, clip_sample_range: float = 1.0):
        super().__init__()
        alpha_bar = torch.cumprod(1 - betas.float(), dim=0)  # float32, as the models were trained and diffusers samples
        sigmas_ve = ((1 - alpha_bar) / alpha_bar).sqrt().double()
        # Below step 0 (t < 1 / T) no sampler evaluates the model; extended geometrically to k = -1 so that the
        # log-SNR stays finite and decreasing on all of [0, 1].
        below_first = sigmas_ve[:1] ** 2 / sigmas_ve[1:2]
        self.register_buffer("sigmas_ve", torch.cat([below_first, sigmas_ve]), persistent=False)
        self.num_train_steps = len(betas)
        self.steps_offset, self.set_alpha_to_one, self.timestep_spacing = steps_offset, set_alpha_to_one, timestep_spacing
        self.clip_sample, self.clip_sample_range = clip_sample, clip_sample_range

    def time_of_step(self, steps: torch.Tensor) -> torch.Tensor:
        """Step indices k (float64; whole or not) -> times t = (k + 1) / T."""
        return (steps + 1) / self.num_train_steps

    def _sigma_ve(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_ve at ``t``, linear in k between training steps, in float64."""
        position = (t.double() * self.num_train_steps).clamp(0, self.num_train_steps)  # = k + 1
        left = position.floor().clamp(max=self.num_train_steps - 1)
        table = self.sigmas_ve.to(position.device)
        low, high = table[left.long()], table[left.long() + 1]
        return low + (position - left) * (high - low)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma_ve = self._sigma_ve(t)
        alpha = (1 + sigma_ve**2).rsqrt()
        return alpha.to(t.dtype), (sigma_ve * alpha).to(t.dtype)

    def raw_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return (-2 * self._sigma_ve(t).log()).to(t.dtype)


def convention(sampler: str) -> str:
    """Whose grid ``sampler`` follows on a discrete schedule: diffusers' ``ddim``, ``dpm`` or ``euler`` scheduler."""
    return CONVENTIONS.get(sampler, "euler")


def clip_range(schedule: DiscreteSchedule, sampler: str) -> float | None:
    """The bound to clip x0_hat to while sampling, or None. DDIM and DDPM clip by default (Ho et al. 2020 clipped
    pixels to [-1, 1]); published latent models set ``clip_sample`` false, as latents are not bounded."""
    clip = schedule.clip_sample if schedule.clip_sample is not None else convention(sampler) == "ddim"
    return schedule.clip_sample_range if clip and convention(sampler) == "ddim" else None


def default_spacing(schedule: DiscreteSchedule, sampler: str) -> str:
    """The folder's ``timestep_spacing``, or where it names none, the default of the scheduler ``sampler`` maps to."""
    return schedule.timestep_spacing or DEFAULT_SPACING[convention(sampler)]


def discrete_steps(spacing: str, num_train_steps: int, num_steps: int, steps_offset: int, kind: str) -> np.ndarray:
    """The step indices k, descending, that diffusers' ``kind`` scheduler (ddim, euler or dpm) visits: float64.

    The three agree on ``trailing``; DPM-Solver's ``leading`` and ``linspace`` divide [0, T) into N + 1 parts and
    drop the last, and Euler's ``linspace`` keeps fractional steps where the others round.
    """
    if spacing not in DISCRETE_SPACINGS:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {DISCRETE_SPACINGS}")
    T, N = num_train_steps, num_steps
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / N)) - 1
    parts = N + 1 if kind == "dpm" else N
    if spacing == "leading":
        steps = (np.arange(0, parts) * (T // parts)).round()[::-1] + steps_offset
    else:
        steps = np.linspace(0, T - 1, parts)[::-1]
        steps = steps if kind == "euler" else steps.round()
    return np.array(steps[:N] if kind == "dpm" else steps, dtype=np.float64)  # a copy: torch takes no negative strides


def discrete_time_steps(schedule: DiscreteSchedule, num_steps: int, spacing: str,
                        sampler: str) -> tuple[torch.Tensor, bool]:
    """The grid ``(num_steps + 1,)`` of times for ``sampler`` on a discrete schedule, and whether sampling starts
    from unit-variance noise (else from N(0, sigma^2), minisd's default). Both follow diffusers' scheduler for it:

    - the times t = (k + 1) / T of :func:`discrete_steps`, then the end: t = 0 (clean data), except for DDIM with
      ``set_alpha_to_one`` false (the published SD configs), whose last step lands on step 0 (t = 1 / T, alpha_bar_0
      = 0.99915 for SD), as its code's "final alpha" does;
    - the start: DDIM and DPM-Solver scale unit noise by 1 (the marginal std of unit-variance data); Euler by
      sigma_max in its variance-exploding coordinates, which is minisd's N(0, sigma^2) for ``linspace`` and
      ``trailing``, and sqrt(sigma_max^2 + 1), unit variance again, for ``leading``.
    """
    kind = convention(sampler)
    steps = discrete_steps(spacing, schedule.num_train_steps, num_steps, schedule.steps_offset, kind)
    if steps.min() < 0 or steps.max() > schedule.num_train_steps - 1:
        raise ConfigError(f"{spacing} spacing with steps_offset {schedule.steps_offset} gives steps outside 0.."
                          f"{schedule.num_train_steps - 1} for {num_steps} steps; use fewer steps")
    ends_on_first_step = kind == "ddim" and schedule.set_alpha_to_one is False  # DDIMScheduler's default: True
    end = schedule.time_of_step(torch.tensor([0.0 if ends_on_first_step else -1.0], dtype=torch.float64))
    times = torch.cat([schedule.time_of_step(torch.from_numpy(steps)), end])
    unit_variance_start = kind != "euler" or spacing == "leading"
    return times, unit_variance_start
