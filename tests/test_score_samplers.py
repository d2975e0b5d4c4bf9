"""Predictor-corrector, Euler-Maruyama and annealed Langevin samplers, checked on 2-D Gaussian data.

For x0 ~ N(mu, diag(std^2)) and any schedule, x_t = alpha_t x0 + sigma_t eps, the exact denoiser (hence the exact
score, by Tweedie) is known in closed form: :class:`test_samplers.GaussianDenoiser`. So a sampler's samples can be
compared with N(mu, diag(std^2)) itself, on a variance-preserving (cosine), a sub-VP and a variance-exploding schedule.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from test_samplers import GaussianDenoiser, generator

from minisd.diffusion.samplers import SAMPLERS, check_sampler_args, num_evaluations, sample
from minisd.diffusion.schedules import build_schedule
from minisd.diffusion.score_samplers import sample_annealed_langevin, sample_euler_maruyama, sample_pc
from minisd.diffusion.spacing import start_time, time_steps
from minisd.errors import ConfigError

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
STD = torch.tensor([0.8, 0.2], dtype=torch.float64)
COVARIANCE = torch.diag(STD**2)
SCHEDULES = {"cosine": {}, "sub_vp": {}, "ve": {"sigma_min": 0.01, "sigma_max": 20.0}}
SCORE_SAMPLERS = {"pc": {"corrector_steps": 1, "snr": 0.16}, "euler_maruyama": {},
                  "annealed_langevin": {"steps_per_level": 2}}

# Monte Carlo checks allow this many standard errors, plus the sampler's discretisation bias at its step count.
STANDARD_ERRORS = 4.0
SAMPLES = 4000


def gaussian_denoiser(schedule_name: str) -> GaussianDenoiser:
    return GaussianDenoiser(MU, COVARIANCE, build_schedule(schedule_name, **SCHEDULES[schedule_name]).double())


def exact_start(denoiser: GaussianDenoiser, steps: int, n: int = SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of ``sample()`` (log-SNR, from where lambda = -10 or t = 1) and exact draws of x at its first time."""
    t_max = start_time(denoiser.schedule)
    return denoiser.marginal(t_max, n, generator(0)), time_steps(denoiser.schedule, steps, "log_snr", t_max=t_max)


def assert_gaussian_moments(samples: torch.Tensor, bias: float) -> None:
    """Mean and covariance within STANDARD_ERRORS standard errors of (MU, COVARIANCE), plus ``bias``.

    With n = 4000 draws the standard error of the mean is std / 63 (0.013 for the wide coordinate) and that of
    a covariance entry sqrt((S_ii S_jj + S_ij^2) / n): 0.014 for the variance 0.64, 0.0025 for the covariance.
    """
    n = len(samples)
    mean_error, mean_se = (samples.mean(0) - MU).abs(), STD / math.sqrt(n)
    variances = STD**2
    cov_error = (samples.T.cov() - COVARIANCE).abs()
    cov_se = ((variances[:, None] * variances[None, :] + COVARIANCE**2) / n).sqrt()
    assert torch.all(mean_error <= STANDARD_ERRORS * mean_se + bias), f"mean error {mean_error}"
    assert torch.all(cov_error <= STANDARD_ERRORS * cov_se + bias), f"covariance error\n{cov_error}"


# --------------------------------------------------------------------------------------
# The samplers reproduce the data distribution on VP, sub-VP and VE
# --------------------------------------------------------------------------------------

# The biases allowed are about 1.5 times those measured with 100,000 samples (50,000 for annealed Langevin;
# Monte Carlo error 0.003-0.004): the largest covariance errors were 0.013 (pc), 0.018 (euler_maruyama) and
# 0.022 (annealed_langevin), all on sub-VP's wide coordinate; every mean error was below 0.007.


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_pc_reproduces_gaussian_mean_and_covariance(schedule_name: str) -> None:
    denoiser = gaussian_denoiser(schedule_name)
    x, ts = exact_start(denoiser, 200)
    assert_gaussian_moments(sample_pc(denoiser, x, ts, generator=generator(1)), bias=0.02)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_euler_maruyama_reproduces_gaussian_mean_and_covariance(schedule_name: str) -> None:
    denoiser = gaussian_denoiser(schedule_name)
    x, ts = exact_start(denoiser, 200)
    assert_gaussian_moments(sample_euler_maruyama(denoiser, x, ts, generator=generator(1)), bias=0.03)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_annealed_langevin_reproduces_gaussian_mean_and_covariance(schedule_name: str) -> None:
    # 50 levels of 10 steps, each step the smallest level's variance (r = 1): in 2-D the data's own directions
    # must mix where sigma is near its scale, which the default r = 0.2 for images does too slowly (see the docstring).
    denoiser = gaussian_denoiser(schedule_name)
    x, ts = exact_start(denoiser, 50)
    _, sigma_last = denoiser.schedule.alpha_sigma(ts[-2])
    samples = sample_annealed_langevin(denoiser, x, ts, generator=generator(1), steps_per_level=10,
                                       step_size=sigma_last.item() ** 2)
    assert_gaussian_moments(samples, bias=0.03)


# --------------------------------------------------------------------------------------
# One step, as Song et al. wrote it
# --------------------------------------------------------------------------------------


def first_step(sampler, denoiser: GaussianDenoiser, x: torch.Tensor, ts: torch.Tensor, **args: Any) -> torch.Tensor:
    """The state after the first step t = ts[0] -> s = ts[1]."""
    states = []
    sampler(denoiser, x, ts, generator=generator(1), callback=lambda info: states.append(info["x"]), **args)
    return states[0]


def exact_score(denoiser: GaussianDenoiser, x: torch.Tensor, t: float) -> torch.Tensor:
    alpha, sigma = denoiser.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return (alpha * denoiser(x, torch.full((len(x),), t, dtype=torch.float64)) - x) / sigma**2


def first_noise(like: torch.Tensor) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator(1), dtype=like.dtype)


def test_reverse_diffusion_predictor_takes_songs_ve_step() -> None:
    # Song et al. (2021), eq. 47 for NCSN: x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z.
    denoiser, t, s = gaussian_denoiser("ve"), 0.5, 0.4
    sigma_t, sigma_s = (0.01 * 2000.0**time for time in (t, s))  # sigma_min (sigma_max / sigma_min)^t
    x = torch.tensor([[3.0, -1.0], [0.5, 0.25]], dtype=torch.float64)
    variance_step = sigma_t**2 - sigma_s**2
    song = x + variance_step * exact_score(denoiser, x, t) + math.sqrt(variance_step) * first_noise(x)
    ours = first_step(sample_pc, denoiser, x, torch.tensor([t, s, 0.0]), corrector_steps=0)
    torch.testing.assert_close(ours, song)


def test_reverse_diffusion_predictor_takes_songs_vp_step() -> None:
    # Song et al. (2021), eq. 46 for DDPM: (2 - sqrt(1 - beta)) x + beta score + sqrt(beta) z, where the grid step
    # is one step of a discrete VP chain with 1 - beta = alpha_t^2 / alpha_s^2.
    denoiser, t, s = gaussian_denoiser("cosine"), 0.5, 0.45
    (alpha_t, alpha_s), _ = denoiser.schedule.alpha_sigma(torch.tensor([t, s], dtype=torch.float64))
    beta = 1 - (alpha_t / alpha_s) ** 2
    x = torch.tensor([[0.3, -1.2], [1.5, 0.1]], dtype=torch.float64)
    song = (2 - (1 - beta).sqrt()) * x + beta * exact_score(denoiser, x, t) + beta.sqrt() * first_noise(x)
    ours = first_step(sample_pc, denoiser, x, torch.tensor([t, s, 0.0]), corrector_steps=0)
    torch.testing.assert_close(ours, song)


def test_euler_maruyama_takes_the_ve_sdes_step() -> None:
    # The VE SDE has f = 0 and g^2 = d sigma^2 / dt = 2 sigma_t^2 log(sigma_max / sigma_min).
    denoiser, t, s = gaussian_denoiser("ve"), 0.5, 0.4
    sigma_t = 0.01 * 2000.0**t
    g_squared = 2 * sigma_t**2 * math.log(2000.0)
    x = torch.tensor([[3.0, -1.0], [0.5, 0.25]], dtype=torch.float64)
    expected = x + g_squared * exact_score(denoiser, x, t) * (t - s) + math.sqrt(g_squared * (t - s)) * first_noise(x)
    torch.testing.assert_close(first_step(sample_euler_maruyama, denoiser, x, torch.tensor([t, s, 0.0])), expected)


def test_annealed_langevin_default_step_is_a_fifth_of_the_smallest_levels_variance() -> None:
    denoiser = gaussian_denoiser("sub_vp")
    x, ts = exact_start(denoiser, 6, n=16)
    _, sigma_last = denoiser.schedule.alpha_sigma(ts[-2])
    torch.testing.assert_close(sample_annealed_langevin(denoiser, x, ts, generator=generator(1)),
                               sample_annealed_langevin(denoiser, x, ts, generator=generator(1),
                                                        step_size=0.2 * sigma_last.item() ** 2))


# --------------------------------------------------------------------------------------
# Any shape, seeds, callbacks, evaluations
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SCORE_SAMPLERS)
def test_samples_do_not_depend_on_how_the_batch_is_shaped(sampler: str) -> None:
    # (B * 8, 2) and (B, 8, 2) hold the same numbers in the same order, so the same noise: equal results show that
    # no step mixes examples or reduces over an example's dimensions (as norms per example or per batch would).
    denoiser = gaussian_denoiser("cosine")
    x, ts = exact_start(denoiser, 5, n=32)
    flat = SAMPLERS[sampler](denoiser, x, ts, generator=generator(1), **SCORE_SAMPLERS[sampler])
    grouped = SAMPLERS[sampler](denoiser, x.reshape(4, 8, 2), ts, generator=generator(1), **SCORE_SAMPLERS[sampler])
    torch.testing.assert_close(grouped.reshape(32, 2), flat)


@pytest.mark.parametrize("sampler", SCORE_SAMPLERS)
def test_same_seed_gives_identical_samples_and_another_seed_others(sampler: str) -> None:
    denoiser = gaussian_denoiser("ve")

    def draw(seed: int) -> torch.Tensor:
        return sample(denoiser, (8, 2), sampler=sampler, steps=6, generator=generator(seed), dtype=torch.float64,
                      **SCORE_SAMPLERS[sampler])

    assert torch.equal(draw(0), draw(0))
    assert not torch.allclose(draw(0), draw(1))


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("sampler", SCORE_SAMPLERS)
def test_callback_sees_every_step_once_with_a_finite_state(sampler: str, schedule_name: str) -> None:
    denoiser, seen = gaussian_denoiser(schedule_name), []
    x, ts = exact_start(denoiser, 7, n=5)
    result = SAMPLERS[sampler](denoiser, x, ts, generator=generator(1), callback=seen.append, **SCORE_SAMPLERS[sampler])
    assert [info["step"] for info in seen] == list(range(7))
    assert [info["t"].item() for info in seen] == ts[1:].tolist()
    assert all(info["x"].shape == info["x0_pred"].shape == (5, 2) and torch.isfinite(info["x"]).all() for info in seen)
    assert torch.equal(seen[-1]["x"], result) and torch.equal(result, seen[-1]["x0_pred"])


@pytest.mark.parametrize("sampler, args, per_step", [
    ("pc", {}, 2), ("pc", {"corrector_steps": 0}, 1), ("pc", {"corrector_steps": 3, "predictor": "euler_maruyama"}, 4),
    ("euler_maruyama", {}, 1), ("annealed_langevin", {}, 5), ("annealed_langevin", {"steps_per_level": 2}, 2)])
def test_num_evaluations_counts_the_denoiser_calls(sampler: str, args: dict, per_step: int) -> None:
    denoiser, steps = gaussian_denoiser("sub_vp"), 9
    sample(denoiser, (4, 2), sampler=sampler, steps=steps, generator=generator(0), dtype=torch.float64, **args)
    final_denoising = 1 if sampler == "annealed_langevin" else 0
    assert len(denoiser.times) == num_evaluations(sampler, steps, **args) == per_step * steps + final_denoising
    assert all(torch.all(t > 0) for t in denoiser.times), "the denoiser was called at t = 0"


# --------------------------------------------------------------------------------------
# Bad arguments: a clear error before any work
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler, args, match", [
    ("pc", {"snr": 0.0}, "snr > 0"), ("pc", {"snr": -0.1}, "snr > 0"), ("pc", {"snr": float("nan")}, "snr > 0"),
    ("pc", {"snr": float("inf")}, "snr > 0"), ("pc", {"corrector_steps": -1}, "corrector_steps >= 0"),
    ("pc", {"corrector_steps": 1.5}, "corrector_steps >= 0"), ("pc", {"corrector_steps": True}, "corrector_steps"),
    ("pc", {"predictor": "heun"}, "no predictor 'heun'"),
    ("annealed_langevin", {"steps_per_level": 0}, "steps_per_level >= 1"),
    ("annealed_langevin", {"steps_per_level": 2.5}, "steps_per_level >= 1"),
    ("annealed_langevin", {"step_size": 0.0}, "step_size > 0"), ("annealed_langevin", {"step_size": -1e-5}, "step_size"),
    ("annealed_langevin", {"step_size": float("nan")}, "step_size > 0")])
def test_argument_out_of_range_is_refused(sampler: str, args: dict, match: str) -> None:
    denoiser = gaussian_denoiser("cosine")
    with pytest.raises(ConfigError, match=match):
        sample(denoiser, (2, 2), sampler=sampler, steps=3, dtype=torch.float64, **args)
    with pytest.raises(ConfigError, match=match):  # and called directly, without sample()
        SAMPLERS[sampler](denoiser, torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0.5, 0.1, 0.0]), **args)
    assert not denoiser.times, "the denoiser was called before the arguments were checked"


def test_argument_another_sampler_takes_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"the euler_maruyama sampler takes no snr \(only pc do\)"):
        check_sampler_args("euler_maruyama", snr=0.16)
    with pytest.raises(ConfigError, match=r"the ddpm sampler takes no step_size \(only annealed_langevin do\)"):
        check_sampler_args("ddpm", step_size=1e-5)
    with pytest.raises(ConfigError, match="takes no eta"):
        num_evaluations("pc", 10, eta=1.0)
