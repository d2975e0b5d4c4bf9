"""Schedules, parameterisations, losses and the variational bound: checked against closed forms."""

import math

import pytest
import torch

from minisd.diffusion import PREDICTIONS, build_schedule, from_x0, to_x0
from minisd.diffusion.denoiser import expand_like
from minisd.diffusion.likelihood import prior_term, reconstruction_term
from minisd.diffusion.losses import (denoising_loss, diffusion_term, prediction_error_factor, vlb_weight)
from minisd.diffusion.schedules import LOG_SNR_MAX, LOG_SNR_MIN

SCHEDULE_NAMES = ["linear", "cosine", "learned"]


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_schedules_are_variance_preserving_and_decreasing(name):
    schedule = build_schedule(name).double()
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    log_snr = schedule.log_snr(t)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.all(log_snr[1:] <= log_snr[:-1]) and log_snr[0] > log_snr[-1] + 10
    torch.testing.assert_close(alpha.square() + sigma.square(), torch.ones_like(t))
    torch.testing.assert_close(schedule.time_at_log_snr(log_snr[50:151]), t[50:151], atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_form_schedules_end_exactly_at_the_log_snr_range(dtype):
    for name, noisy_end in (("cosine", LOG_SNR_MIN), ("linear", -10.05)):
        log_snr = build_schedule(name).log_snr(torch.tensor([0.0, 1.0], dtype=dtype))
        torch.testing.assert_close(log_snr, torch.tensor([LOG_SNR_MAX, noisy_end], dtype=dtype), atol=2e-3, rtol=0)
    alpha, _ = build_schedule("cosine").alpha_sigma(torch.tensor([1.0]))
    assert alpha.item() ** 2 == pytest.approx(2.06e-9, rel=1e-2)  # the tiny signal a sampler starts from


@pytest.mark.parametrize("schedule", ["cosine", "sub_vp", "ve", "flow"])
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_parameterisation_conversions_round_trip_exactly(kind, schedule):
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 16, 3, generator=generator, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64).reshape(-1, 1)
    alpha, sigma = build_schedule(schedule).alpha_sigma(t)
    x_t = alpha * x0 + sigma * eps
    prediction = from_x0(x0, kind, x_t, alpha, sigma)
    torch.testing.assert_close(to_x0(prediction, kind, x_t, alpha, sigma), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(from_x0(to_x0(prediction, kind, x_t, alpha, sigma), kind, x_t, alpha, sigma),
                               prediction, rtol=1e-9, atol=1e-9)
    if kind == "eps":
        torch.testing.assert_close(prediction, eps)


@pytest.mark.parametrize("family", ["vp", "ve"])
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_prediction_error_is_x0_error_times_its_factor(kind, family):
    generator = torch.Generator().manual_seed(1)
    x0, x0_hat, x_t = torch.randn(3, 8, 5, generator=generator, dtype=torch.float64)
    log_snr = torch.linspace(-6, 6, 8, dtype=torch.float64)
    if family == "vp":
        alpha, sigma = torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()
    else:
        alpha, sigma = torch.ones_like(log_snr), (-log_snr / 2).exp()
    error = (from_x0(x0, kind, x_t, alpha[:, None], sigma[:, None])
             - from_x0(x0_hat, kind, x_t, alpha[:, None], sigma[:, None])).square().sum(1)
    torch.testing.assert_close(error, prediction_error_factor(kind, alpha, sigma) * (x0 - x0_hat).square().sum(1))
    if family == "vp" and kind in ("v", "score"):  # the VP forms: 1 + SNR and SNR (1 + SNR)
        snr = log_snr.exp()
        torch.testing.assert_close(prediction_error_factor(kind, alpha, sigma), 1 + snr if kind == "v" else snr * (1 + snr))


class LinearNetwork(torch.nn.Module):
    """A stand-in network: out = a * x_t + b * t, enough to make every loss non-trivial."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.tensor(0.7)), torch.nn.Parameter(torch.tensor(-0.3))

    def forward(self, x_t, t, cond=None):
        return self.a * x_t + self.b * expand_like(t, x_t)


def test_simple_eps_loss_equals_snr_weighted_x0_loss():
    from minisd.diffusion import NetworkDenoiser

    denoiser = NetworkDenoiser(LinearNetwork(), build_schedule("cosine"), prediction="eps")
    x0 = torch.rand(16, 1, 4, 4) * 2 - 1
    simple = denoising_loss(denoiser, x0, weighting="simple", generator=torch.Generator().manual_seed(3))
    snr = denoising_loss(denoiser, x0, weighting="snr", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(simple, snr, rtol=1e-4, atol=1e-5)


def test_learned_schedule_gets_gradient_through_the_vlb_weight():
    schedule = build_schedule("learned")
    weight = vlb_weight(schedule, torch.rand(32))
    assert torch.all(weight >= 0)
    weight.sum().backward()
    assert all(p.grad is not None for p in schedule.parameters() if p is not schedule.gamma_0)


class GaussianDenoiser:
    """The exact denoiser E[x0 | x_t] for 1-D data x0 ~ N(0, variance): alpha variance / (alpha^2 variance + sigma^2) x_t."""

    def __init__(self, schedule, variance):
        self.schedule, self.variance = schedule, variance

    def __call__(self, x_t, t, cond=None):
        alpha, sigma = (expand_like(v, x_t) for v in self.schedule.alpha_sigma(t))
        return alpha * self.variance / (alpha.square() * self.variance + sigma.square()) * x_t


def expected_diffusion_term(schedule, variance, x0_value, num_steps):
    """The discrete-time diffusion term of ``GaussianDenoiser`` for one data point, exactly (sum over all T terms)."""
    def squared_error(t):
        alpha, sigma = schedule.alpha_sigma(t)
        gain = alpha * variance / (alpha.square() * variance + sigma.square())
        return x0_value**2 * (1 - gain * alpha).square() + (gain * sigma).square()
    t = torch.arange(1, num_steps + 1, dtype=torch.float64) / num_steps
    s = t - 1 / num_steps
    snr_drop = schedule.log_snr(s).exp() - schedule.log_snr(t).exp()
    return (0.5 * snr_drop * squared_error(t)).sum().item()


def test_discrete_time_bound_approaches_continuous_time_bound_as_steps_grow():
    schedule = build_schedule("cosine").double()
    denoiser = GaussianDenoiser(schedule, variance=0.25)
    x0 = torch.full((400_000, 1), 0.4, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)

    def monte_carlo(num_steps):
        values = diffusion_term(denoiser, x0, num_steps=num_steps, generator=generator)
        return values.mean().item(), values.std().item() / math.sqrt(len(values))

    exact = {T: expected_diffusion_term(schedule, 0.25, 0.4, T) for T in (10, 100, 1000, 100_000)}
    for T in (10, 100, 1000):  # the code's one-term estimator is unbiased for the T-step bound
        mean, standard_error = monte_carlo(T)
        assert abs(mean - exact[T]) < 4 * standard_error + 1e-6 * exact[T]
    continuous, standard_error = monte_carlo(None)
    gaps = [exact[T] - continuous for T in (10, 100, 1000, 100_000)]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3] > -4 * standard_error  # fewer steps, looser bound
    assert gaps[3] < 0.02 * continuous


def test_reconstruction_and_prior_cost_little_on_8bit_images():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (256, 1, 8, 8), generator=generator) / 127.5 - 1
    for name in ("linear", "cosine"):
        schedule = build_schedule(name)
        # sigma_0 / alpha_0 = 1.3e-3 is a third of the half-gap between levels (3.9e-3): only a
        # pixel whose noise exceeds 3 standard deviations decodes to a neighbouring level.
        per_pixel = reconstruction_term(schedule, x0, generator).mean() / 64
        assert 1e-4 < per_pixel < 0.03
        assert prior_term(schedule, x0).max() / 64 < 1e-3
