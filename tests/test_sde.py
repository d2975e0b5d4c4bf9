"""The SDE derived from a schedule, the VE and sub-VP schedules, and the score model of points.

The SDE's f(t) and g(t)^2 are taken from the schedule by autograd; here they are checked against the closed
forms of Song et al. (2021) and against the moment equations every linear SDE obeys, so the derivation
cannot be right for one family and wrong for another.
"""

from __future__ import annotations

import math

import pytest
import torch

import minisd
from minisd.diffusion.likelihood import prior_term
from minisd.diffusion.losses import noise_ladder_times
from minisd.diffusion.schedules import build_schedule
from minisd.diffusion.sde import score_from_denoiser, sub_vp, ve, vp
from minisd.errors import ConfigError
from minisd.models import build_model
from minisd.train.config import validate_run_config
from minisd.train.run import train_from_config

T = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
FAMILIES = {"vp_linear": lambda: vp("linear"), "vp_cosine": lambda: vp("cosine"), "learned": lambda: vp("learned"),
            "sub_vp": lambda: sub_vp("linear"), "ve": lambda: ve(0.01, 20.0)}


def _beta(t: torch.Tensor) -> torch.Tensor:
    """Song et al.'s VP beta(t) = beta_min + t (beta_max - beta_min), through minisd's time remapping."""
    schedule = build_schedule("linear")
    s = schedule.t_clean + (schedule.t_noisy - schedule.t_clean) * t
    return (schedule.t_noisy - schedule.t_clean) * 1000 * (1e-4 + s * (0.02 - 1e-4))


def test_vp_sde_is_song_et_al_beta_form():
    sde, beta = vp("linear"), _beta(T)
    torch.testing.assert_close(sde.drift_coefficient(T), -beta / 2, rtol=1e-6, atol=0)
    torch.testing.assert_close(sde.diffusion_squared(T), beta, rtol=1e-6, atol=0)


def test_sub_vp_sde_is_song_et_al_eq_29():
    """g^2 = beta(t) (1 - exp(-2 int_0^t beta)), where alpha_t^2 = exp(-int_0^t beta) counts from the base
    schedule's own t = 0 (minisd's clock starts a hair later, where the log-SNR is 13.3)."""
    schedule = build_schedule("linear")
    s = schedule.t_clean + (schedule.t_noisy - schedule.t_clean) * T
    integral = 1000 * (1e-4 * s + (0.02 - 1e-4) * s**2 / 2)
    beta, sde = _beta(T), sub_vp("linear")
    torch.testing.assert_close(sde.drift_coefficient(T), -beta / 2, rtol=1e-6, atol=0)
    torch.testing.assert_close(sde.diffusion_squared(T), beta * (1 - torch.exp(-2 * integral)), rtol=1e-6, atol=0)


def test_ve_sde_has_no_drift_and_geometric_noise():
    sde = ve(0.01, 20.0)
    sigma = 0.01 * 2000.0**T
    torch.testing.assert_close(sde.drift_coefficient(T), torch.zeros_like(T))
    torch.testing.assert_close(sde.diffusion_squared(T), 2 * sigma**2 * math.log(2000.0), rtol=1e-9, atol=0)
    alpha, s = sde.alpha_sigma(T)
    torch.testing.assert_close(alpha, torch.ones_like(T))
    torch.testing.assert_close(s, sigma, rtol=1e-9, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_sde_moments_follow_the_schedule(family):
    """Any linear SDE: d alpha / dt = f alpha and d sigma^2 / dt = 2 f sigma^2 + g^2 (finite differences)."""
    sde = FAMILIES[family]()
    sde.schedule.double()  # the learned schedule's network is float32 otherwise, too coarse for differences
    h = 1e-5
    with torch.no_grad():
        (alpha_hi, sigma_hi), (alpha_lo, sigma_lo) = sde.alpha_sigma(T + h), sde.alpha_sigma(T - h)
        alpha, sigma = sde.alpha_sigma(T)
    f, g2 = sde.drift_coefficient(T), sde.diffusion_squared(T)
    torch.testing.assert_close((alpha_hi - alpha_lo) / (2 * h), f * alpha, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close((sigma_hi**2 - sigma_lo**2) / (2 * h), 2 * f * sigma**2 + g2, rtol=1e-4, atol=1e-8)
    assert (g2 > 0).all()


@pytest.mark.parametrize("family", ["vp_cosine", "sub_vp", "ve"])
def test_log_snr_is_the_schedules_and_inverts(family):
    schedule = FAMILIES[family]().schedule
    alpha, sigma = schedule.alpha_sigma(T)
    torch.testing.assert_close(schedule.log_snr(T), 2 * torch.log(alpha / sigma), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(schedule.time_at_log_snr(schedule.log_snr(T)), T, atol=1e-9, rtol=0)


def test_prior_is_the_marginal_variance_of_unit_data():
    assert vp("cosine").prior_std().item() == pytest.approx(1.0, abs=1e-12)
    assert ve(0.01, 50.0).prior_std().item() == pytest.approx(math.sqrt(1 + 2500), rel=1e-9)
    x = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 40
    expected = torch.distributions.Normal(0.0, ve(0.01, 50.0).prior_std()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(ve(0.01, 50.0).prior_log_prob(x), expected)


def test_prior_term_of_a_ve_schedule_is_small_when_sigma_max_dwarfs_the_data():
    x0 = torch.rand(4, 1, 6, 6, dtype=torch.float64) * 2 - 1
    kl = prior_term(build_schedule("ve", sigma_min=0.01, sigma_max=50.0), x0)
    assert (kl >= 0).all() and (kl < 0.02).all()
    torch.testing.assert_close(prior_term(build_schedule("cosine"), x0), prior_term(build_schedule("cosine"), x0))


def test_forward_sde_simulation_matches_the_marginal():
    """Euler-Maruyama on dx = f x dt + g dw from a point x0 reaches N(alpha_t x0, sigma_t^2) (the derivation, end to end)."""
    for sde in (vp("cosine"), ve(0.01, 5.0), sub_vp("linear")):
        generator = torch.Generator().manual_seed(0)
        x = torch.full((20000, 1), 0.7, dtype=torch.float64)
        grid = torch.linspace(0.0, 0.6, 601, dtype=torch.float64)
        for t, s in zip(grid[:-1], grid[1:]):
            dt = s - t
            x = x + sde.drift(x, t.expand(len(x))) * dt + sde.diffusion(t) * dt.sqrt() * torch.randn(
                x.shape, generator=generator, dtype=x.dtype)
        alpha, sigma = sde.alpha_sigma(grid[-1:])
        standard_error = sigma.item() / math.sqrt(len(x))
        assert abs(x.mean().item() - 0.7 * alpha.item()) < 5 * standard_error + 1e-3
        assert x.std().item() == pytest.approx(sigma.item(), rel=0.03)


def test_score_from_a_denoiser_is_tweedie():
    """For x0 ~ N(m, v), the exact denoiser's score is that of the marginal N(alpha m, alpha^2 v + sigma^2)."""
    schedule, m, v = build_schedule("ve", sigma_min=0.01, sigma_max=10.0), 0.3, 0.5

    class Exact:
        def __init__(self):
            self.schedule = schedule

        def __call__(self, x, t, cond=None):
            alpha, sigma = schedule.alpha_sigma(t)
            return m + alpha * v / (alpha**2 * v + sigma**2) * (x - alpha * m)

    x, t = torch.linspace(-3, 3, 9, dtype=torch.float64), torch.full((9,), 0.4, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(score_from_denoiser(Exact(), x, t), -(x - alpha * m) / (alpha**2 * v + sigma**2))


def test_noise_ladder_times_land_on_the_ladder_evenly():
    t = noise_ladder_times(torch.linspace(0, 0.999999, 1000), 10)
    assert set(torch.round(t * 9).tolist()) == set(range(10))
    assert torch.allclose(t * 9, torch.round(t * 9))
    assert torch.bincount(torch.round(t * 9).long()).tolist() == [100] * 10


def test_schedule_args_and_noise_levels_are_checked():
    with pytest.raises(ConfigError, match="table of finite numbers"):
        validate_run_config({"model": {"type": "score", "schedule_args": 3}, "data": {"dataset": "moons"}})
    with pytest.raises(ConfigError, match="sigma_min < sigma_max"):
        build_model({"type": "score", "schedule": "ve", "schedule_args": {"sigma_min": 1.0, "sigma_max": 0.5}})
    with pytest.raises(ConfigError, match="noise_levels"):
        build_model({"type": "diffusion", "image_shape": [1, 8, 8], "schedule": "ve", "noise_levels": 1})
    with pytest.raises(ConfigError, match="data_shape"):
        build_model({"type": "score", "data_shape": [1, 2, 2]})


def test_ncsn_image_model_trains_on_its_ladder():
    model = build_model({"type": "diffusion", "image_shape": [1, 8, 8], "schedule": "ve", "noise_levels": 10,
                         "schedule_args": {"sigma_min": 0.01, "sigma_max": 10.0}, "base_channels": 8,
                         "channel_mults": [1, 2], "attention_levels": []})
    loss, _ = model.loss({"image": torch.rand(4, 1, 8, 8)})
    assert torch.isfinite(loss)


def test_score_model_trains_on_a_toy_through_the_one_loop(tmp_path):
    config = {"model": {"type": "score", "hidden": [32, 32], "sample_steps": 10},
              "data": {"dataset": "moons", "num_images": 512},
              "train": {"steps": 30, "batch_size": 64, "log_every": 10, "eval_every": 0, "checkpoint_every": 0,
                        "eval_batch_size": 256, "warmup_steps": 5}}
    result = train_from_config(config, tmp_path / "run", progress=False)
    assert math.isfinite(result["eval"]["loss"])
    model = minisd.load(tmp_path / "run")
    assert model.data_shape == (2,)
    points = model.sample(16, generator=torch.Generator().manual_seed(0), sampler="ddpm", steps=10)
    again = model.sample(16, generator=torch.Generator().manual_seed(0), sampler="ddpm", steps=10)
    assert points.shape == (16, 2) and torch.isfinite(points).all()
    torch.testing.assert_close(points, again, rtol=0, atol=0)
