"""The discrete-time schedule of the published models, and the timestep grids diffusers samples them on."""

import numpy as np
import pytest
import torch

from minisd.diffusion.discrete import (DISCRETE_SPACINGS, DiscreteSchedule, discrete_steps, discrete_time_steps,
                                       training_betas)
from minisd.diffusion.samplers import sample
from minisd.diffusion.spacing import time_steps
from minisd.errors import ConfigError

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_steps=1000)


def test_step_k_read_at_its_time_has_the_trained_alpha_bar():
    betas = training_betas(**SD_BETAS)
    alpha_bar = torch.cumprod(1 - betas, 0).double()
    schedule = DiscreteSchedule(betas)
    steps = torch.arange(1000, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(schedule.time_of_step(steps))
    assert torch.allclose(alpha**2, alpha_bar, rtol=1e-6) and torch.allclose(alpha**2 + sigma**2, torch.ones(1000).double())
    assert abs(alpha_bar[0].item() - 0.99915) < 1e-5 and abs(alpha_bar[-1].item() - 0.0047) < 1e-4  # SD's ends


def test_log_snr_decreases_over_all_of_the_unit_interval_and_inverts():
    schedule = DiscreteSchedule(training_betas(**SD_BETAS))
    t = torch.linspace(0, 1, 4001, dtype=torch.float64)
    log_snr = schedule.log_snr(t)
    assert torch.isfinite(log_snr).all() and (log_snr[1:] < log_snr[:-1]).all()
    targets = torch.tensor([-5.0, 0.0, 5.0], dtype=torch.float64)
    assert torch.allclose(schedule.log_snr(schedule.time_at_log_snr(targets)), targets, atol=1e-6)


@pytest.mark.parametrize("spacing", DISCRETE_SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 15, 20, 25, 30, 50, 999])
def test_grids_are_the_steps_diffusers_schedulers_visit(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  timestep_spacing=spacing)
    for kind, scheduler in (("ddim", diffusers.DDIMScheduler(**common)),
                            ("euler", diffusers.EulerDiscreteScheduler(**common)),
                            ("dpm", diffusers.DPMSolverMultistepScheduler(**common))):
        scheduler.set_timesteps(steps)
        expected = scheduler.timesteps.double().numpy()
        got = discrete_steps(spacing, 1000, steps, 1, kind)
        assert np.allclose(got, expected, atol=1e-4), (kind, got[:5], expected[:5])


def test_the_grid_ends_where_each_scheduler_ends_and_starts_from_its_noise():
    schedule = DiscreteSchedule(training_betas(**SD_BETAS), steps_offset=1, set_alpha_to_one=False)
    times, unit = discrete_time_steps(schedule, 10, "leading", "ddim")
    assert times[-1].item() == pytest.approx(1 / 1000) and unit  # DDIM lands on step 0, SD's "final alpha"
    times, unit = discrete_time_steps(schedule, 10, "trailing", "euler")
    assert times[0].item() == 1.0 and times[-1].item() == 0.0 and not unit  # Euler: sigma_max times unit noise
    times, unit = discrete_time_steps(schedule, 10, "leading", "euler")
    assert unit  # sqrt(sigma_max^2 + 1) in its coordinates: unit variance in ours


def test_continuous_samplers_and_grids_run_on_a_discrete_schedule_unchanged():
    schedule = DiscreteSchedule(training_betas(**SD_BETAS))

    class Gaussian:  # the exact denoiser of N(0, I) data: x0_hat = alpha x_t (alpha^2 + sigma^2 = 1)
        def __init__(self):
            self.schedule = schedule

        def __call__(self, x, t, cond=None):
            alpha, _ = schedule.alpha_sigma(t)
            return alpha[:, None] * x

    # Second-order solvers at 25 steps; first-order ones, whose error falls as 1 / steps (0.90-0.94 at 25), at 250.
    for sampler, spacing, steps in (("heun", "karras", 25), ("dpmpp_2m", "log_snr", 25), ("ddpm", "uniform", 250),
                                    ("euler", "trailing", 250), ("ddim", "leading", 250)):
        x = sample(Gaussian(), (4000, 2), sampler=sampler, steps=steps, spacing=spacing,
                   generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert abs(x.std().item() - 1) < 0.02, (sampler, spacing)
    assert len(time_steps(schedule, 10, "log_snr")) == 11


def test_a_discrete_spacing_needs_a_discrete_schedule():
    from minisd.diffusion.schedules import build_schedule

    class Denoiser:
        schedule = build_schedule("cosine")

        def __call__(self, x, t, cond=None):
            return x

    with pytest.raises(ConfigError, match="discrete-time"):
        sample(Denoiser(), (2, 2), sampler="euler", steps=4, spacing="trailing")


@pytest.mark.parametrize("spacing", DISCRETE_SPACINGS)
@pytest.mark.parametrize("sampler", ["ddim", "euler", "dpmpp_2m"])
def test_one_step_grids_are_whole_tensors(spacing, sampler):
    schedule = DiscreteSchedule(training_betas(**SD_BETAS), steps_offset=1)
    times, _ = discrete_time_steps(schedule, 1, spacing, sampler)
    assert times.shape == (2,) and torch.isfinite(times).all()
