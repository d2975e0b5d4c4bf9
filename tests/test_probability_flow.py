"""The probability-flow ODE, checked on Gaussian data, where the flow and every density are known in closed form.

For x0 ~ N(mu, Sigma) and x_t = alpha_t x0 + sigma_t eps the denoiser is linear in x_t, and the probability-flow
ODE moves each eigen-coordinate of Sigma (variance v) in the VE coordinates x_ve = x_t / alpha_t,
sigma_ve = sigma_t / alpha_t as x_ve - mu proportional to sqrt(v + sigma_ve^2) (see tests/test_samplers.py). So the
flow from t_min to t_max is an affine map, and the model's log-density at t_min is exactly

    log p_prior(flow(x)) + log |det d flow / dx|,

which is what the ODE likelihood computes, up to the solver's error. The model density differs from the true
marginal N(alpha mu, alpha^2 Sigma + sigma^2 I) only by the prior's mismatch with the marginal at t_max.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from minisd.diffusion.probability_flow import (dequantise, fixed_step_evaluations, ode_bits_per_dim,
                                               ode_log_likelihood, sample_probability_flow, solve_probability_flow)
from minisd.diffusion.schedules import NoiseSchedule, build_schedule
from minisd.diffusion.sde import SDE
from minisd.diffusion.spacing import time_steps

# The VE prior N(0, (1 + sigma_max^2) I) is the marginal at t = 1 only for zero-mean, unit-variance data: a mean mu
# costs about mu . z / sigma_max nats at a point z standard deviations out (0.05 for mu = 1, z = 1, sigma_max = 20).
# A small mean keeps that prior mismatch below the 1e-2 nats per dimension of the comparison with the marginal.
MEAN = torch.tensor([0.1, -0.05], dtype=torch.float64)
COVARIANCE = torch.tensor([[0.36, 0.05], [0.05, 0.04]], dtype=torch.float64)

STANDARD_ERRORS = 4.0  # Monte Carlo checks allow this many; seeds are fixed, so a pass is deterministic


def schedule(name: str) -> NoiseSchedule:
    if name == "ve":
        return build_schedule("ve", sigma_min=0.01, sigma_max=20.0)
    return build_schedule(name)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class GaussianDenoiser:
    """The exact denoiser E[x0 | x_t] of N(mean, covariance) data of any shape, and the exact flow; counts its calls."""

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor, schedule: NoiseSchedule):
        self.mean, self.schedule, self.calls = mean, schedule, 0  # mean: the shape of one example
        self.variances, self.basis = torch.linalg.eigh(covariance)  # Sigma = basis diag(variances) basis^T

    def _alpha_sigma(self, t: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=like.dtype).reshape(-1)
        return tuple(v.to(like).reshape(-1, 1) for v in self.schedule.alpha_sigma(t))

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.calls += 1
        alpha, sigma = self._alpha_sigma(t, x_t)
        mean = self.mean.flatten()
        gain = alpha * self.variances / (alpha**2 * self.variances + sigma**2)
        return (mean + (gain * ((x_t.flatten(1) - alpha * mean) @ self.basis)) @ self.basis.T).view_as(x_t)

    def marginal_log_prob(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """log N(x; alpha mean, alpha^2 Sigma + sigma^2 I), ``(B,)``."""
        alpha, sigma = self._alpha_sigma(t, x)
        variances = alpha**2 * self.variances + sigma**2
        coordinates = (x.flatten(1) - alpha * self.mean.flatten()) @ self.basis
        return (-0.5 * coordinates**2 / variances - 0.5 * torch.log(2 * math.pi * variances)).sum(1)

    def flow(self, x: torch.Tensor, t_from: float, t_to: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact probability-flow map from ``t_from`` to ``t_to`` and its log |det Jacobian|."""
        (alpha_from, sigma_from), (alpha_to, sigma_to) = self._alpha_sigma(t_from, x), self._alpha_sigma(t_to, x)
        sigma_ve_from, sigma_ve_to = sigma_from / alpha_from, sigma_to / alpha_to
        growth = ((self.variances + sigma_ve_to**2) / (self.variances + sigma_ve_from**2)).sqrt()
        mean = self.mean.flatten()
        x_ve = mean + (growth * ((x.flatten(1) / alpha_from - mean) @ self.basis)) @ self.basis.T
        log_det = torch.log(alpha_to / alpha_from * growth).sum()
        return (alpha_to * x_ve).view_as(x), log_det

    def model_log_prob(self, x: torch.Tensor, t_min: float = 0.0, t_max: float = 1.0) -> torch.Tensor:
        """The exact log-density at t_min of the model: the prior at t_max carried back by the exact flow."""
        end, log_det = self.flow(x, t_min, t_max)
        return SDE(self.schedule).prior_log_prob(end) + log_det

    def sample(self, n: int, t: float, seed: int = 0) -> torch.Tensor:
        """``n`` exact draws of x_t, shaped like ``mean``."""
        alpha, sigma = self._alpha_sigma(t, self.mean)
        z = torch.randn(n, len(self.variances), generator=generator(seed), dtype=self.mean.dtype)
        flat = alpha * self.mean.flatten() + (z * (alpha**2 * self.variances + sigma**2).sqrt()) @ self.basis.T
        return flat.view(n, *self.mean.shape)


def random_covariance(dims: int, seed: int) -> torch.Tensor:
    factor = torch.randn(dims, dims, generator=generator(seed), dtype=torch.float64) / math.sqrt(dims)
    return 0.2 * factor @ factor.T + 0.05 * torch.eye(dims, dtype=torch.float64)


# --------------------------------------------------------------------------------------
# The likelihood
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", ["cosine", "sub_vp", "ve", "flow"])
def test_exact_ode_likelihood_matches_the_gaussian_log_density(schedule_name: str) -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule(schedule_name))
    x = denoiser.sample(16, t=0.0)
    with torch.no_grad():  # the divergence needs autograd: the function turns it back on
        result = ode_log_likelihood(denoiser, x)
    dims = x.shape[1]
    assert result["log_prob"].shape == (16,) and not result["log_prob"].requires_grad
    assert torch.allclose(result["log_prob"], result["prior"] + result["delta"])
    assert result["nfe"] == denoiser.calls
    # The solver's error alone: against the model's exact density (seen: 1e-5 cosine, 2e-5 sub-VP, 1.2e-4 VE).
    solver_error = (result["log_prob"] - denoiser.model_log_prob(x)).abs().max() / dims
    assert solver_error < 5e-4
    # Solver and prior mismatch together, against the data's marginal at t = 0 (seen: 1e-5, 8e-4, 6e-3).
    assert (result["log_prob"] - denoiser.marginal_log_prob(x, 0.0)).abs().max() / dims < 1e-2


def test_tighter_tolerances_shrink_the_likelihood_error() -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("ve"))
    x = denoiser.sample(8, t=0.0)
    errors = [(ode_log_likelihood(denoiser, x, rtol=tol, atol=tol)["log_prob"] - denoiser.model_log_prob(x)).abs().max()
              for tol in (1e-4, 1e-6)]
    assert errors[1] < errors[0] / 10


def test_likelihood_between_intermediate_times_uses_that_stretch_of_the_flow() -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("cosine"))
    x = denoiser.sample(8, t=0.2)
    result = ode_log_likelihood(denoiser, x, t_min=0.2, t_max=0.7)
    end, log_det = denoiser.flow(x, 0.2, 0.7)
    assert torch.allclose(result["delta"], log_det.expand(8), atol=1e-5)
    assert torch.allclose(result["prior"], SDE(denoiser.schedule).prior_log_prob(end), atol=1e-5)


def test_hutchinson_estimate_agrees_with_the_exact_divergence_within_monte_carlo_error() -> None:
    dims, copies = 16, 64
    denoiser = GaussianDenoiser(torch.zeros(dims, dtype=torch.float64), random_covariance(dims, seed=1),
                                schedule("cosine"))
    x = denoiser.sample(1, t=0.0)
    exact = ode_log_likelihood(denoiser, x)["log_prob"]
    assert (exact - denoiser.model_log_prob(x)).abs().item() < 1e-3
    # One point, many copies: each copy draws its own probe, so the copies are independent estimates.
    copied = x.expand(copies, dims)
    one_probe = ode_log_likelihood(denoiser, copied, divergence="hutchinson", generator=generator(2))["log_prob"]
    spread = one_probe.std()
    assert spread > 0.05  # the Jacobian is not diagonal: the probes matter
    assert (one_probe.mean() - exact).abs() < STANDARD_ERRORS * spread / math.sqrt(copies) + 1e-3
    # Averaging K probes divides the spread by about sqrt(K).
    many_probes = ode_log_likelihood(denoiser, copied, divergence="hutchinson", generator=generator(3),
                                     num_probes=16)["log_prob"]
    assert 0.5 / 4 < many_probes.std() / spread < 2 / 4


def test_rademacher_probes_are_exact_when_the_jacobian_is_diagonal() -> None:
    # Image-shaped data with independent pixels: z^T J z = trace J for z in {-1, 1}^D, whatever the probe.
    shape = (1, 4, 4)
    mean = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64).view(shape)
    covariance = torch.diag(torch.linspace(0.05, 0.5, 16, dtype=torch.float64))
    denoiser = GaussianDenoiser(mean, covariance, schedule("cosine"))
    x = denoiser.sample(3, t=0.0)
    assert x.shape == (3, *shape)
    exact = ode_log_likelihood(denoiser, x)
    estimate = ode_log_likelihood(denoiser, x, divergence="hutchinson", generator=generator(4), num_probes=2)
    assert torch.allclose(estimate["log_prob"], exact["log_prob"], rtol=0, atol=1e-9)
    assert ((exact["log_prob"] - denoiser.model_log_prob(x)).abs() / 16).max() < 5e-4


def test_unknown_divergence_is_refused() -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("cosine"))
    with pytest.raises(ValueError, match="divergence"):
        ode_log_likelihood(denoiser, MEAN.view(1, 2), divergence="trace")


# --------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_name", ["cosine", "ve"])
def test_probability_flow_sampler_reproduces_gaussian_data(schedule_name: str) -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule(schedule_name))
    n = 4000
    x = SDE(denoiser.schedule).prior_sample((n, 2), generator=generator(5), dtype=torch.float64)
    samples = sample_probability_flow(denoiser, x, time_steps(denoiser.schedule, 10, "log_snr"))
    variances = COVARIANCE.diagonal()
    mean_se = (variances / n).sqrt()
    cov_se = ((variances[:, None] * variances[None, :] + COVARIANCE**2) / n).sqrt()
    assert torch.all((samples.mean(0) - MEAN).abs() <= STANDARD_ERRORS * mean_se)
    assert torch.all((samples.T.cov() - COVARIANCE).abs() <= STANDARD_ERRORS * cov_se)


def test_dopri5_sampler_follows_the_exact_flow_at_every_grid_time() -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("cosine"))
    x = SDE(denoiser.schedule).prior_sample((64, 2), generator=generator(6), dtype=torch.float64)
    ts = time_steps(denoiser.schedule, 8, "log_snr")
    seen: list[dict[str, Any]] = []
    result = sample_probability_flow(denoiser, x, ts, callback=seen.append)
    assert [info["step"] for info in seen] == list(range(8))
    assert all(info["t"] == t for info, t in zip(seen, ts[1:]))
    for info in seen[:-1]:
        assert (info["x"] - denoiser.flow(x, ts[0].item(), info["t"].item())[0]).abs().max() < 1e-4
    exact_end = denoiser.flow(x, ts[0].item(), ts[-2].item())[0]
    exact = denoiser(exact_end, ts[-2].expand(64))
    assert (result - exact).abs().max() < 1e-4 and torch.equal(seen[-1]["x"], result)
    # The estimate a step starts from is the denoiser's at the first evaluation (here at ts[0] exactly).
    assert torch.allclose(seen[0]["x0_pred"], denoiser(x, ts[0].expand(64)))
    assert seen[-1]["nfe"] == denoiser.calls - 2  # the two calls just above are not the sampler's


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_step_methods_spend_a_fixed_number_of_evaluations(method: str) -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("cosine"))
    x = SDE(denoiser.schedule).prior_sample((8, 2), generator=generator(7), dtype=torch.float64)
    seen: list[dict[str, Any]] = []
    sample_probability_flow(denoiser, x, time_steps(denoiser.schedule, 10, "log_snr"), method=method,
                            callback=seen.append)
    stages = {"euler": 1, "midpoint": 2, "rk4": 4}[method]
    assert denoiser.calls == seen[-1]["nfe"] == fixed_step_evaluations(method, 10) == stages * 9 + 1
    assert len(seen) == 10


def test_rk4_on_the_grid_converges_at_fourth_order() -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("cosine"))
    x = SDE(denoiser.schedule).prior_sample((64, 2), generator=generator(8), dtype=torch.float64)

    def error(steps: int) -> float:
        ts = time_steps(denoiser.schedule, steps, "log_snr")
        exact = denoiser(denoiser.flow(x, ts[0].item(), ts[-2].item())[0], ts[-2].expand(64))
        return (sample_probability_flow(denoiser, x, ts, method="rk4") - exact).abs().max().item()

    assert error(20) < error(10) / 8  # seen: 7e-3 -> 4e-4


def test_encoding_then_decoding_recovers_the_data() -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("cosine"))
    x = denoiser.sample(32, t=1e-3)
    up = torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64)
    encoded, _ = solve_probability_flow(denoiser, x, up)
    assert (encoded[-1] - denoiser.flow(x, 1e-3, 1.0)[0]).abs().max() < 1e-4  # the latent is a function of x
    decoded, _ = solve_probability_flow(denoiser, encoded[-1], up.flip(0))
    assert (decoded[-1] - x).abs().max() < 1e-4


def test_one_step_grid_returns_the_denoised_estimate() -> None:
    denoiser = GaussianDenoiser(MEAN, COVARIANCE, schedule("cosine"))
    x = torch.randn(4, 2, generator=generator(9), dtype=torch.float64)
    ts = torch.tensor([0.5, 0.0], dtype=torch.float64)
    assert torch.equal(sample_probability_flow(denoiser, x, ts), denoiser(x, ts[:1].expand(4)))


def test_sampler_runs_in_float32() -> None:
    denoiser = GaussianDenoiser(MEAN.float(), COVARIANCE.float(), schedule("cosine"))
    x = torch.randn(16, 2, generator=generator(10))
    result = sample_probability_flow(denoiser, x, time_steps(denoiser.schedule, 6, "log_snr"))
    assert result.dtype == torch.float32 and torch.isfinite(result).all()


# --------------------------------------------------------------------------------------
# Bits per dimension of 8-bit images
# --------------------------------------------------------------------------------------


def test_dequantisation_spreads_each_level_over_its_bin_around_the_training_grid() -> None:
    levels = torch.arange(256, dtype=torch.float64).repeat(40)
    x = dequantise(levels / 255, generator(11))
    offset = (x + 1) * 127.5 - levels  # where in its bin, in units of one level
    assert offset.min() >= -0.5 and offset.max() < 0.5
    assert offset.min() < -0.49 and offset.max() > 0.49  # the whole bin is used


def test_ode_bits_per_dim_bounds_the_exact_discrete_likelihood() -> None:
    # A tiny "image" model, broad against the bins, so the dequantisation bound is almost tight: the exact
    # -log P(k) = -sum log(Phi(high) - Phi(low)) over each pixel's bin checks the Jacobian term D log(2 / 255).
    shape = (1, 2, 2)
    mean = torch.tensor([-0.3, 0.0, 0.2, 0.5], dtype=torch.float64).view(shape)
    variances = torch.tensor([0.04, 0.09, 0.02, 0.06], dtype=torch.float64)
    denoiser = GaussianDenoiser(mean, torch.diag(variances), schedule("cosine"))
    levels = torch.tensor([[100, 128, 150, 190], [90, 140, 160, 180]], dtype=torch.float64)
    copies = 1000  # one draw of u per image: average over copies for E_u
    images = (levels / 255).view(2, *shape).repeat_interleave(copies, 0)
    result = ode_bits_per_dim(denoiser, images, generator=generator(12))
    assert torch.isfinite(result["nats"]).all() and result["nfe"] > 0
    assert torch.allclose(result["bits_per_dim"], result["nats"] / (4 * math.log(2)))

    # The same computation by hand, with the same draws of u.
    x = dequantise(images[:4], generator(12))
    log_prob = ode_log_likelihood(denoiser, x)["log_prob"]
    assert torch.allclose(result["nats"][:4], -(log_prob + 4 * math.log(2 / 255)), rtol=0, atol=1e-4)

    # The model's density at t = 0 is the Gaussian marginal there (the cosine prior's mismatch is 2e-5 nats).
    alpha, sigma = denoiser.schedule.alpha_sigma(torch.zeros(1, dtype=torch.float64))
    normal = torch.distributions.Normal(alpha * mean.flatten(), (alpha**2 * variances + sigma**2).sqrt())
    low, high = (levels - 0.5) / 127.5 - 1, (levels + 0.5) / 127.5 - 1
    exact_nats = -torch.log(normal.cdf(high) - normal.cdf(low)).sum(1)
    # E_u[nats] - exact is Jensen's gap, about (2 / 255)^2 / (24 variance) = 1e-4 per pixel here;
    # a wrong Jacobian, 4 log(256 / 255) = 0.016 nats, would show.
    nats = result["nats"].view(2, copies)
    standard_error = nats.std(1) / math.sqrt(copies)
    assert torch.all((nats.mean(1) - exact_nats).abs() < STANDARD_ERRORS * standard_error + 1e-3)
    assert torch.all(standard_error < 1e-3)
