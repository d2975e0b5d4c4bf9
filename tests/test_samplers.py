"""Samplers and time grids, checked on Gaussian data, where the exact denoiser and the exact ODE are known.

For x0 ~ N(mu, Sigma) and x_t = alpha x0 + sigma eps, the posterior mean is linear in x_t:

    E[x0 | x_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^{-1} (x_t - alpha mu),

and in the VE coordinates x_ve = x_t / alpha, sigma_ve = sigma / alpha the probability-flow ODE
dx_ve / dsigma_ve = (x_ve - E[x0 | x_t]) / sigma_ve has the solution (per eigenvector of Sigma, variance v)
x_ve - mu proportional to sqrt(v + sigma_ve^2). So a sampler's every error can be measured exactly:
against N(mu, Sigma) for its samples, and against the exact ODE solution for a deterministic sampler.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from minisd.diffusion.denoiser import expand_like
from minisd.diffusion.samplers import (SAMPLERS, num_evaluations, sample, sample_ddim, sample_ddpm,
                                       sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_euler, sample_euler_ancestral)
from minisd.diffusion.schedules import NoiseSchedule, build_schedule
from minisd.diffusion.spacing import LOG_SNR_START, SPACINGS, T_MIN, start_time, time_steps
from minisd.errors import ConfigError, SamplingError

VP_SCHEDULES = ("linear", "cosine", "learned")  # "learned" at its initialisation
SCHEDULES = (*VP_SCHEDULES, "flow")
DETERMINISTIC = {"ddim": {"eta": 0.0}, "euler": {}, "heun": {}, "dpmpp_2m": {}}
STOCHASTIC = {"ddpm": {}, "ddim": {"eta": 1.0}, "euler_ancestral": {}, "dpmpp_2m_sde": {}}

# The data: three dimensions, correlated, variances from 0.006 to 1.3, so both ends of the noise range matter.
MU = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
_FACTOR = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, -0.2], [0.0, -0.2, 0.2]], dtype=torch.float64)
SIGMA = _FACTOR @ _FACTOR.T

# Monte Carlo checks allow this many standard errors. Seeds are fixed, so a pass is deterministic;
# the margin is what keeps the test honest under any other seed.
STANDARD_ERRORS = 4.0


class GaussianDenoiser:
    """The exact denoiser E[x0 | x_t] of N(mu, Sigma) data, with the denoiser interface; it counts its calls."""

    def __init__(self, mu: torch.Tensor, covariance: torch.Tensor, schedule: NoiseSchedule):
        self.mu, self.schedule = mu, schedule
        self.variances, self.basis = torch.linalg.eigh(covariance)  # Sigma = basis diag(variances) basis^T
        self.times: list[torch.Tensor] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.times.append(t)
        # Evaluate the schedule once per distinct time: the learned one is a 1024-unit network.
        unique_t, index = torch.unique(t, return_inverse=True)
        alpha, sigma = (expand_like(values[index], x_t) for values in self.schedule.alpha_sigma(unique_t))
        gain = alpha * self.variances / (alpha**2 * self.variances + sigma**2)  # per eigenvector of Sigma
        return self.mu + (gain * ((x_t - alpha * self.mu) @ self.basis)) @ self.basis.T

    def marginal(self, t: float, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` exact draws of x_t ~ N(alpha mu, alpha^2 Sigma + sigma^2 I)."""
        alpha, sigma = self.schedule.alpha_sigma(torch.tensor(t, dtype=self.mu.dtype))
        z = torch.randn(n, len(self.mu), generator=generator, dtype=self.mu.dtype)
        return alpha * self.mu + (z * (alpha**2 * self.variances + sigma**2).sqrt()) @ self.basis.T

    def exact_sample(self, x_t: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """What a perfect ODE solver returns on grid ``ts``: the exact flow to the last positive time, then D."""
        ts = ts.to(x_t)
        (alpha_t, alpha_end), (sigma_t, sigma_end) = self.schedule.alpha_sigma(ts[[0, -2]])
        growth = (self.variances + (sigma_end / alpha_end) ** 2) / (self.variances + (sigma_t / alpha_t) ** 2)
        x_ve = self.mu + (growth.sqrt() * ((x_t / alpha_t - self.mu) @ self.basis)) @ self.basis.T
        return self(alpha_end * x_ve, ts[-2].expand(len(x_t)))


def gaussian_denoiser(schedule_name: str, dtype: torch.dtype = torch.float64) -> GaussianDenoiser:
    return GaussianDenoiser(MU.to(dtype), SIGMA.to(dtype), build_schedule(schedule_name).to(dtype))


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_gaussian_moments(samples: torch.Tensor, bias: float) -> None:
    """Sample mean and covariance within STANDARD_ERRORS standard errors of (MU, SIGMA), plus ``bias``.

    The standard error of a covariance entry of n Gaussian draws is sqrt((S_ii S_jj + S_ij^2) / n);
    ``bias`` is what the sampler's discretisation may add at the step count under test.
    """
    n, variances = len(samples), SIGMA.diagonal()
    mean_error, mean_se = (samples.mean(0) - MU).abs(), (variances / n).sqrt()
    cov_error = (samples.T.cov() - SIGMA).abs()
    cov_se = ((variances[:, None] * variances[None, :] + SIGMA**2) / n).sqrt()
    assert torch.all(mean_error <= STANDARD_ERRORS * mean_se + bias), f"mean error {mean_error}"
    assert torch.all(cov_error <= STANDARD_ERRORS * cov_se + bias), f"covariance error\n{cov_error}"


def rms(x: torch.Tensor) -> float:
    return x.square().mean().sqrt().item()


# --------------------------------------------------------------------------------------
# Time grids
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_time_steps_descend_from_t_max_through_t_min_to_zero(schedule_name: str, spacing: str) -> None:
    ts = time_steps(build_schedule(schedule_name), 12, spacing)
    assert ts.shape == (13,)
    assert torch.all(ts[1:] < ts[:-1])
    assert ts[0].item() == 1.0 and ts[-1].item() == 0.0
    assert ts[-2].item() == pytest.approx(T_MIN, rel=1e-3)  # through float32 bisection for "learned"


def test_one_step_grid_is_t_max_then_zero() -> None:
    for spacing in SPACINGS:
        assert time_steps(build_schedule("cosine"), 1, spacing, t_max=0.5).tolist() == [0.5, 0.0]


def test_log_snr_spacing_is_uniform_in_log_snr() -> None:
    schedule = build_schedule("cosine")
    log_snr = schedule.log_snr(time_steps(schedule, 8, "log_snr")[:-1])
    steps = log_snr[1:] - log_snr[:-1]
    assert torch.allclose(steps, steps.mean(), rtol=1e-6)


def test_karras_spacing_follows_eq_5_in_ve_sigma() -> None:
    # sigma_ve = exp(-lambda / 2); Karras et al. (2022) eq. 5 spaces sigma_ve^(1 / rho) uniformly.
    schedule, rho = build_schedule("linear"), 7.0
    sigma_ve = torch.exp(-schedule.log_snr(time_steps(schedule, 8, "karras", rho=rho)[:-1]) / 2)
    steps = sigma_ve[1:] ** (1 / rho) - sigma_ve[:-1] ** (1 / rho)
    assert torch.allclose(steps, steps.mean(), rtol=1e-6)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_sampling_starts_where_log_snr_falls_to_minus_10_or_at_t_1(schedule_name: str) -> None:
    schedule = build_schedule(schedule_name)
    t_start = start_time(schedule)
    if schedule_name == "learned":  # at its initialisation it ends at lambda(1) = -5, above the start
        assert t_start == 1.0
    else:  # linear ends at -10.05, cosine at -20
        grid = time_steps(schedule, 1, t_max=t_start)  # [t_start, 0]
        assert t_start < 1 and schedule.log_snr(grid[:1]).item() == pytest.approx(LOG_SNR_START, abs=1e-6)


def test_a_fixed_schedules_grid_is_computed_once_and_a_learned_ones_follows_its_parameters() -> None:
    from minisd.diffusion import spacing

    cosine = build_schedule("cosine")
    first = time_steps(cosine, 12, "log_snr", t_max=start_time(cosine))
    first[0] = 2.0  # a caller writing into its grid changes no later grid
    again = time_steps(cosine, 12, "log_snr", t_max=start_time(cosine))
    spacing._GRIDS.clear()
    assert torch.equal(again, time_steps(cosine, 12, "log_snr", t_max=start_time(cosine)))
    assert again[0] < 1
    learned = build_schedule("learned")
    before = time_steps(learned, 12, "log_snr")
    with torch.no_grad():
        for parameter in learned.parameters():
            parameter.add_(0.5)
    assert not torch.equal(before, time_steps(learned, 12, "log_snr"))


def test_unknown_spacing_is_refused() -> None:
    with pytest.raises(ValueError, match="spacing"):
        time_steps(build_schedule("linear"), 10, "quadratic")


# --------------------------------------------------------------------------------------
# Samplers reproduce the data distribution
# --------------------------------------------------------------------------------------

# Steps and the discretisation bias allowed at that count (on top of the Monte Carlo error), on the log-SNR grid.
DETERMINISTIC_BUDGET = {"ddim": (200, 0.05), "euler": (200, 0.05), "heun": (50, 0.03), "dpmpp_2m": (50, 0.02)}


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_reproduce_gaussian_mean_and_covariance(sampler: str, schedule_name: str) -> None:
    denoiser = gaussian_denoiser(schedule_name)
    steps, bias = DETERMINISTIC_BUDGET[sampler]
    x = denoiser.marginal(1.0, 20_000, generator(0))
    samples = SAMPLERS[sampler](denoiser, x, time_steps(denoiser.schedule, steps, "log_snr"), **DETERMINISTIC[sampler])
    assert_gaussian_moments(samples, bias)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_error_falls_as_steps_grow_at_each_solvers_order(schedule_name: str) -> None:
    """Against the exact ODE solution from the same noise: Euler is first order, Heun and DPM-Solver++(2M) second.

    On the Karras grid, whose log-SNR steps vary in length, so DPM-Solver++(2M)'s step ratio r is not 1.
    """
    denoiser = gaussian_denoiser(schedule_name)
    x = denoiser.marginal(1.0, 256, generator(0))

    def error(sampler: str, steps: int) -> float:
        ts = time_steps(denoiser.schedule, steps, "karras")
        return rms(SAMPLERS[sampler](denoiser, x, ts, **DETERMINISTIC[sampler]) - denoiser.exact_sample(x, ts))

    for sampler in DETERMINISTIC:
        assert error(sampler, 50) < error(sampler, 5)
    # Doubling the steps halves a first-order error and quarters a second-order one.
    assert 1.6 < error("euler", 50) / error("euler", 100) < 2.5
    assert error("heun", 50) / error("heun", 100) > 3.2
    assert error("dpmpp_2m", 50) / error("dpmpp_2m", 100) > 3.2
    # At an equal budget of about 100 denoiser evaluations: DPM-Solver++(2M) beats Heun beats Euler.
    assert error("dpmpp_2m", 100) < error("heun", 50) < error("euler", 100)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("sampler", STOCHASTIC)
def test_stochastic_samplers_match_gaussian(sampler: str, schedule_name: str) -> None:
    # Ancestral steps plug in only the posterior mean of x0 and lose its posterior variance:
    # their bias falls only as 1 / steps (about 0.04 at 250 uniform steps here).
    denoiser = gaussian_denoiser(schedule_name)
    x = denoiser.marginal(1.0, 10_000, generator(0))
    ts = time_steps(denoiser.schedule, 250, "uniform")
    samples = SAMPLERS[sampler](denoiser, x, ts, generator=generator(1), **STOCHASTIC[sampler])
    assert_gaussian_moments(samples, bias=0.06)


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_second_order_sde_solver_beats_ancestral_sampling_at_20_steps(schedule_name: str) -> None:
    # DPM-Solver++(2M) SDE takes DDPM's step with x0_pred extrapolated in log-SNR: at 20 steps its
    # covariance error is under a third of DDPM's (about a fifth on all three schedules).
    denoiser = gaussian_denoiser(schedule_name)
    x, ts = denoiser.marginal(1.0, 20_000, generator(0)), time_steps(denoiser.schedule, 20, "log_snr")

    def covariance_error(sampler: str) -> float:
        return (SAMPLERS[sampler](denoiser, x, ts, generator=generator(1)).T.cov() - SIGMA).abs().max().item()

    assert covariance_error("dpmpp_2m_sde") < covariance_error("ddpm") / 3


# --------------------------------------------------------------------------------------
# One process, three views: the identities the module docstring states
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_ddim_is_euler_on_the_ode_and_ddpm_at_eta_one(schedule_name: str) -> None:
    denoiser = gaussian_denoiser(schedule_name)
    x, ts = denoiser.marginal(1.0, 64, generator(0)), time_steps(denoiser.schedule, 10, "uniform")
    torch.testing.assert_close(sample_ddim(denoiser, x, ts), sample_euler(denoiser, x, ts))
    torch.testing.assert_close(sample_ddim(denoiser, x, ts, eta=1.0, generator=generator(1)),
                               sample_ddpm(denoiser, x, ts, generator=generator(1)))
    torch.testing.assert_close(sample_ddim(denoiser, x, ts, eta=0.5, generator=generator(1)),
                               sample_euler_ancestral(denoiser, x, ts, eta=0.5, generator=generator(1)))


@pytest.mark.parametrize("schedule_name", VP_SCHEDULES)  # on the straight path the two differ below 1e-5 there
def test_dpmpp_2m_sde_is_the_ode_solver_at_eta_zero_and_takes_ddpms_first_step(schedule_name: str) -> None:
    denoiser = gaussian_denoiser(schedule_name)
    x, ts = denoiser.marginal(1.0, 64, generator(0)), time_steps(denoiser.schedule, 10, "log_snr")
    torch.testing.assert_close(sample_dpmpp_2m_sde(denoiser, x, ts, eta=0.0), sample_dpmpp_2m(denoiser, x, ts))
    # The first step has no previous estimate to extrapolate from: it is the posterior draw of DDPM.
    first_steps = []
    for sampler in (sample_dpmpp_2m_sde, sample_ddpm):
        sampler(denoiser, x, ts, generator=generator(1), callback=lambda info: first_steps.append(info["x"]))
    torch.testing.assert_close(first_steps[0], first_steps[len(ts) - 1])
    assert not torch.allclose(first_steps[1], first_steps[len(ts)])  # and then the extrapolation differs


# --------------------------------------------------------------------------------------
# The ends of the schedule
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [5, 50])
@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_with_every_schedule_stays_finite(sampler: str, schedule_name: str, steps: int) -> None:
    # float32 and from t = 1, where the cosine schedule's alpha is 4.5e-5: the overflow-prone case
    # (sample() starts at lambda = -10 unless told otherwise).
    denoiser = gaussian_denoiser(schedule_name, torch.float32)
    for spacing in SPACINGS:
        samples = sample(denoiser, (32, 3), sampler=sampler, steps=steps, spacing=spacing, t_max=1.0,
                         generator=generator(0))
        assert samples.dtype == torch.float32 and torch.isfinite(samples).all(), (spacing, samples.abs().max())
    assert all(torch.all(t > 0) for t in denoiser.times), "the denoiser was called at t = 0"


def test_dpmpp_2m_takes_the_cosine_schedules_first_step_from_t_1_in_stride() -> None:
    # Five uniform steps: the first jumps from lambda = -20 to -1.8. The exponential integrator's weights
    # stay below 1, so even this coarse grid lands close to the exact ODE solution.
    denoiser = gaussian_denoiser("cosine", torch.float32)
    x, ts = denoiser.marginal(1.0, 256, generator(0)), time_steps(denoiser.schedule, 5, "uniform")
    assert rms(SAMPLERS["dpmpp_2m"](denoiser, x, ts) - denoiser.exact_sample(x, ts)) < 0.25


def test_heun_needs_a_grid_with_moderate_steps_in_log_sigma() -> None:
    # As its docstring says: the cosine schedule's uniform grid makes Heun's first step span sigma_ve
    # 22000 -> 12, and the trapezoid's correction blows up; the same 20 steps uniform in log-SNR are fine.
    denoiser = gaussian_denoiser("cosine")
    x = denoiser.marginal(1.0, 256, generator(0))

    def error(spacing: str) -> float:
        ts = time_steps(denoiser.schedule, 20, spacing)
        return rms(SAMPLERS["heun"](denoiser, x, ts) - denoiser.exact_sample(x, ts))

    assert error("uniform") > 1.0
    assert error("log_snr") < 0.1


# --------------------------------------------------------------------------------------
# Seeds, callbacks, evaluations
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_gives_identical_samples(sampler: str) -> None:
    denoiser = gaussian_denoiser("linear")

    def draw(seed: int) -> torch.Tensor:
        return sample(denoiser, (8, 3), sampler=sampler, steps=6, generator=generator(seed), dtype=torch.float64)

    assert torch.equal(draw(0), draw(0))
    assert not torch.allclose(draw(0), draw(1))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_callback_sees_every_step(sampler: str) -> None:
    denoiser, seen = gaussian_denoiser("cosine"), []
    x, ts = denoiser.marginal(1.0, 5, generator(0)), time_steps(denoiser.schedule, 7, "log_snr")
    result = SAMPLERS[sampler](denoiser, x, ts, generator=generator(1), callback=seen.append)
    assert [info["step"] for info in seen] == list(range(7))
    assert [info["t"].item() for info in seen] == ts[1:].tolist()
    assert all(info["x"].shape == info["x0_pred"].shape == (5, 3) for info in seen)
    assert torch.equal(seen[-1]["x"], result)


# The ode sampler's default, the adaptive dopri5, spends what its tolerances ask: no count in advance (below).
@pytest.mark.parametrize("sampler", [name for name in SAMPLERS if name != "ode"])
def test_num_evaluations_counts_the_denoiser_calls(sampler: str) -> None:
    denoiser = gaussian_denoiser("linear")
    SAMPLERS[sampler](denoiser, denoiser.marginal(1.0, 4, generator(0)), time_steps(denoiser.schedule, 9))
    expected = {"heun": 17, "pc": 18, "annealed_langevin": 46}.get(sampler, 9)  # see test_score_samplers.py
    assert len(denoiser.times) == num_evaluations(sampler, 9) == expected


@pytest.mark.parametrize("method, expected", [("euler", 9), ("midpoint", 17), ("rk4", 33)])
def test_num_evaluations_counts_the_ode_samplers_fixed_steps_and_reports_dopri5s_after_the_solve(method: str,
                                                                                                 expected: int) -> None:
    denoiser, seen = gaussian_denoiser("linear"), []
    x, ts = denoiser.marginal(1.0, 4, generator(0)), time_steps(denoiser.schedule, 9)
    SAMPLERS["ode"](denoiser, x, ts, method=method)
    assert len(denoiser.times) == num_evaluations("ode", 9, method=method) == expected
    denoiser.times.clear()
    SAMPLERS["ode"](denoiser, x, ts, callback=seen.append)
    assert seen[-1]["nfe"] == len(denoiser.times) > 9
    with pytest.raises(ConfigError, match="adaptive: its denoiser evaluations are known only after the solve"):
        num_evaluations("ode", 9)


def test_last_step_returns_the_denoised_estimate() -> None:
    denoiser, seen = gaussian_denoiser("linear"), []
    for sampler in SAMPLERS:
        seen.clear()
        result = SAMPLERS[sampler](denoiser, denoiser.marginal(1.0, 4, generator(0)), time_steps(denoiser.schedule, 4),
                                   generator=generator(1), callback=seen.append)
        torch.testing.assert_close(result, seen[-1]["x0_pred"])


def test_sample_starts_from_noise_at_t_max_and_refuses_unknown_samplers() -> None:
    # One step from t = 1 returns D(x_1): so sample() must have drawn x_1 = sigma_1 z with z from the generator.
    denoiser = gaussian_denoiser("learned")
    _, sigma_1 = denoiser.schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
    x_1 = sigma_1 * torch.randn(4, 3, generator=generator(0), dtype=torch.float64)
    torch.testing.assert_close(sample(denoiser, (4, 3), steps=1, generator=generator(0), dtype=torch.float64),
                               denoiser(x_1, torch.ones(4, dtype=torch.float64)))
    with pytest.raises(ValueError, match="sampler"):
        sample(denoiser, (2, 3), sampler="plms")


def test_sample_starts_at_start_time_by_default_and_at_t_max_if_given() -> None:
    denoiser = gaussian_denoiser("cosine")
    for t_max, expected in ((None, start_time(denoiser.schedule)), (1.0, 1.0), (0.5, 0.5)):
        denoiser.times.clear()
        sample(denoiser, (2, 3), steps=3, t_max=t_max, generator=generator(0), dtype=torch.float64)
        assert denoiser.times[0][0].item() == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------------------
# Bad arguments: a clear error, never a NaN image
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler, eta", [("euler_ancestral", -5.0), ("dpmpp_2m", -0.1), ("dpmpp_2m_sde", float("nan")),
                                          ("ddim", 1.5), ("ddim", float("nan")), ("euler_ancestral", float("inf"))])
def test_eta_outside_a_samplers_range_is_refused(sampler: str, eta: float) -> None:
    with pytest.raises(ConfigError, match="eta"):
        sample(gaussian_denoiser("cosine"), (2, 3), sampler=sampler, steps=3, eta=eta, dtype=torch.float64)
    with pytest.raises(ConfigError, match="eta"):  # and called directly, without sample()
        SAMPLERS[sampler](gaussian_denoiser("cosine"), torch.zeros(2, 3, dtype=torch.float64),
                          torch.tensor([0.5, 0.1, 0.0]), eta=eta)


def test_argument_a_sampler_does_not_take_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="the ddpm sampler takes no eta .only ddim, dpmpp_2m, dpmpp_2m_sde, "
                                          "euler_ancestral do."):
        sample(gaussian_denoiser("cosine"), (2, 3), sampler="ddpm", steps=3, eta=0.5, dtype=torch.float64)


def test_grid_with_a_zero_length_step_is_refused() -> None:
    with pytest.raises(ConfigError, match="zero length"):
        sample(gaussian_denoiser("cosine"), (2, 3), sampler="dpmpp_2m", steps=3, t_max=T_MIN, dtype=torch.float64)
    with pytest.raises(ConfigError, match="whole number"):
        time_steps(build_schedule("cosine"), 2.5)


def test_sampling_stops_at_the_first_non_finite_step() -> None:
    class BrokenAfter:
        """The Gaussian denoiser, until its third call, then NaN."""

        def __init__(self):
            self.inner, self.calls = gaussian_denoiser("cosine"), 0
            self.schedule = self.inner.schedule

        def __call__(self, x_t, t, cond=None):
            self.calls += 1
            return self.inner(x_t, t) * (float("nan") if self.calls >= 3 else 1.0)

    denoiser = BrokenAfter()
    with pytest.raises(SamplingError, match="step 3 of 10"):
        sample(denoiser, (2, 3), sampler="dpmpp_2m", steps=10, dtype=torch.float64)
    assert denoiser.calls == 3, "sampling went on after the first NaN"


@pytest.mark.parametrize("method, match", [("dopri5", "the ode sampler .dopri5. gave up"),
                                           ("rk4", "ode gave NaN or infinite values at step 1 of 5")])
def test_an_ode_solve_into_nan_is_a_sampling_error(method: str, match: str) -> None:
    # torchdiffeq's adaptive solver asserts on a non-finite state before any callback runs; the fixed-step
    # methods run through, and the per-step check catches the first NaN state.
    class Broken:
        schedule = build_schedule("cosine")

        def __call__(self, x_t, t, cond=None):
            return torch.full_like(x_t, float("nan"))

    with pytest.raises(SamplingError, match=match):
        sample(Broken(), (2, 3), sampler="ode", steps=5, method=method, dtype=torch.float64)


@pytest.mark.parametrize("args, match", [({"method": "rk45"}, "no method 'rk45'; choose one of dopri5, euler"),
                                         ({"rtol": 0.0}, "finite rtol > 0"), ({"atol": float("inf")}, "finite atol > 0"),
                                         ({"rtol": "1e-5"}, "finite rtol > 0")])
def test_ode_solver_arguments_out_of_range_are_refused(args: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        sample(gaussian_denoiser("cosine"), (2, 3), sampler="ode", steps=3, dtype=torch.float64, **args)
    with pytest.raises(ConfigError, match=match):  # and called directly, without sample()
        SAMPLERS["ode"](gaussian_denoiser("cosine"), torch.zeros(2, 3, dtype=torch.float64),
                        torch.tensor([0.5, 0.1, 0.0]), **args)


@pytest.mark.parametrize("strength, kept", [(0.3, 3), (0.05, 1), (0.39, 3), (1.0, 10)])
def test_sampling_from_an_image_runs_the_last_steps_of_the_same_grid_from_it(strength, kept):
    # Image-to-image: floor(strength * steps) steps (at least one), the last ones of the full grid, starting from x_start noised
    # to where they start; for data that is always x_start (a point mass) every sampler returns x_start.
    schedule = build_schedule("cosine")
    target = torch.randn(4, 3, dtype=torch.float64)
    times = []

    class PointMass:
        def __init__(self):
            self.schedule = schedule

        def __call__(self, x, t, cond=None):
            times.append(t[0].item())
            return target.expand_as(x)

    grid = time_steps(schedule, 10, "log_snr", t_max=start_time(schedule))
    out = sample(PointMass(), (4, 3), sampler="ddim", steps=10, x_start=target, strength=strength,
                 generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert times == pytest.approx(grid[10 - kept:10].tolist())
    assert torch.allclose(out, target)
    with pytest.raises(ConfigError, match="strength"):
        sample(PointMass(), (4, 3), steps=10, x_start=target, strength=0.0)
