"""Acceptance tests of the score chapter on the 2-D toys: a trained model's samples and likelihood.

Each toy trains with the ``score_toy`` preset (VE schedule, eps-prediction = denoising score matching, 3000
steps of 256) through the one training loop, then samples 2000 points with the predictor-corrector sampler.

Threshold on samples: the energy distance to 2000 held-out points must be below a quarter of that of the
moment-matched Gaussian (the best a model that knows only the mean and covariance could do). So a pass
means the model learned the toy's shape: spirals, moons, separate modes, squares. Measured when this test
was written (energy distance of model / of the Gaussian fit): swiss_roll 0.0019 / 0.0189, moons -0.0002 /
0.0200, 8gaussians 0.0104 / 0.0795, checkerboard 0.0017 / 0.0156, gmm 0.0025 / 0.0498; two samples of the
data itself score -0.0009 to -0.0006 (the U-statistic is unbiased, so it can fall below 0).

Threshold on likelihood: on the "gmm" toy the true density is known, so the model's exact ODE negative
log-likelihood of held-out points must be within 0.1 nats per dimension of the truth, and far better than the
Gaussian fit's (measured on these 300 points when this test was written: model 1.988, truth 1.899, Gaussian
fit 2.884 nats per point).
"""

from __future__ import annotations

import pytest
import torch

import minisd
from minisd.configs import preset_path
from minisd.data.toys import TOY_MIXTURE, TOYS, load_toy
from minisd.eval.two_sample import energy_distance
from minisd.train.config import load_run_config
from minisd.train.run import train_from_config

pytestmark = pytest.mark.slow
NUM_POINTS = 2000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every toy's model, trained once with the preset's settings."""
    assert preset_path("score_toy").is_file()
    folder = tmp_path_factory.mktemp("toys")
    models = {}
    for toy in TOYS:
        config = load_run_config("score_toy")
        config["data"]["dataset"] = toy
        train_from_config(config, folder / toy, progress=False)
        models[toy] = minisd.load(folder / toy)
    return models


def _gaussian_fit(points: torch.Tensor) -> torch.distributions.MultivariateNormal:
    return torch.distributions.MultivariateNormal(points.mean(0), torch.cov(points.T))


@pytest.mark.parametrize("toy", TOYS)
def test_pc_samples_come_closer_to_held_out_data_than_a_gaussian_fit(trained, toy):
    held_out = load_toy(toy, "test").points[:NUM_POINTS]
    samples = trained[toy].sample(NUM_POINTS, generator=torch.Generator().manual_seed(0), sampler="pc", steps=100)
    gaussian = _gaussian_fit(held_out).sample((NUM_POINTS,))
    model_distance, gaussian_distance = energy_distance(samples, held_out), energy_distance(gaussian, held_out)
    assert model_distance < gaussian_distance / 4, (model_distance, gaussian_distance)


def test_gmm_exact_likelihood_is_close_to_the_true_density(trained):
    model = trained["gmm"]
    held_out = load_toy("gmm", "test").points[:300]
    model_nll = model.nll({"x": held_out}, rtol=1e-4, atol=1e-4)["nats"].mean().item()
    # The model's t = 0 marginal is the data blurred by sigma_min = 0.01: compare with that exact density.
    alpha, sigma = model.schedule.alpha_sigma(torch.zeros(1, dtype=torch.float64))
    true_nll = -TOY_MIXTURE.noised(alpha.item(), sigma.item()).log_prob(held_out.double()).mean().item()
    gaussian_nll = -_gaussian_fit(held_out.double()).log_prob(held_out.double()).mean().item()
    assert abs(model_nll - true_nll) / 2 < 0.1, (model_nll, true_nll)
    assert model_nll < gaussian_nll - 0.3, (model_nll, gaussian_nll)
