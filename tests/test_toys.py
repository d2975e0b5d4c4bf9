"""Tests for the 2-D toys (minisd.data.toys) and the two-sample distances (minisd.eval.two_sample)."""

from __future__ import annotations

import math

import pytest
import torch

from minisd.data import TOY_MIXTURE, TOYS, GaussianMixture, PointDataset, load_toy, sample_toy
from minisd.errors import ConfigError, DataError
from minisd.eval.two_sample import energy_distance, mmd


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_mean_and_covariance(mixture: GaussianMixture) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean sum_k w_k mu_k and covariance sum_k w_k (s_k^2 I + mu_k mu_k^T) - mean mean^T."""
    weights, means = mixture.weights, mixture.means
    mean = weights @ means
    second_moment = torch.einsum("k,ki,kj->ij", weights, means, means)
    second_moment += (weights * mixture.stds.square()).sum() * torch.eye(mixture.dim, dtype=torch.float64)
    return mean, second_moment - torch.outer(mean, mean)


# --- the toys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOYS)
def test_every_toy_gives_float32_points_of_order_one(name):
    points = sample_toy(name, 4000, seeded(0))
    assert points.shape == (4000, 2) and points.dtype == torch.float32
    assert torch.isfinite(points).all()
    std = points.std(0)
    assert ((std > 0.5) & (std < 1.5)).all(), f"{name}: per-coordinate std {std.tolist()}"
    assert points.mean(0).abs().max() < 0.5


@pytest.mark.parametrize("name", TOYS)
def test_every_toy_is_determined_by_its_generator(name):
    assert torch.equal(sample_toy(name, 100, seeded(3)), sample_toy(name, 100, seeded(3)))
    assert not torch.equal(sample_toy(name, 100, seeded(3)), sample_toy(name, 100, seeded(4)))


def test_checkerboard_points_lie_on_black_squares_only():
    points = sample_toy("checkerboard", 2000, seeded(0))
    assert points.min() >= -2 and points.max() <= 2
    square_colour = (torch.floor(points[:, 0]) + torch.floor(points[:, 1])) % 2
    assert (square_colour == 0).all()


def test_eight_gaussians_sit_on_a_circle_of_radius_two():
    radius = sample_toy("8gaussians", 4000, seeded(0)).norm(dim=1)
    assert abs(radius.mean().item() - 2.0) < 0.02
    assert radius.std().item() < 0.2


# --- Gaussian mixtures ----------------------------------------------------------------------------


def test_mixture_density_integrates_to_one_over_the_plane():
    # Midpoint rule on [-5, 5]^2, which holds all but ~1e-10 of TOY_MIXTURE's mass.
    cells, half_width = 400, 5.0
    step = 2 * half_width / cells
    centres = -half_width + step * (torch.arange(cells, dtype=torch.float64) + 0.5)
    grid = torch.cartesian_prod(centres, centres)
    for mixture in (TOY_MIXTURE, TOY_MIXTURE.noised(0.7, 0.4)):
        mass = mixture.log_prob(grid).exp().sum().item() * step**2
        assert abs(mass - 1.0) < 1e-6


def test_one_component_log_prob_is_the_gaussian_formula():
    mean, std = torch.tensor([[0.5, -1.0, 2.0]]), 0.7
    mixture = GaussianMixture(mean, torch.tensor([std]), torch.tensor([3.0]))  # weights are normalised
    x = torch.randn(50, 3, generator=seeded(0), dtype=torch.float64)
    dimension = 3
    expected = -((x - mean.double()) ** 2).sum(1) / (2 * std**2) - dimension / 2 * math.log(2 * math.pi * std**2)
    torch.testing.assert_close(mixture.log_prob(x), expected)


def test_mixture_score_is_the_gradient_of_its_log_prob():
    for mixture in (TOY_MIXTURE, TOY_MIXTURE.noised(0.5, 0.8)):
        x = (2 * torch.randn(200, 2, generator=seeded(1), dtype=torch.float64)).requires_grad_()
        (autograd_score,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
        torch.testing.assert_close(mixture.score(x.detach()), autograd_score)


def test_mixture_keeps_the_dtype_of_its_input():
    x = torch.zeros(4, 2)
    assert TOY_MIXTURE.log_prob(x).dtype == torch.float32 and TOY_MIXTURE.log_prob(x).shape == (4,)
    assert TOY_MIXTURE.score(x).dtype == torch.float32 and TOY_MIXTURE.score(x).shape == (4, 2)
    assert TOY_MIXTURE.sample(5, seeded(0)).dtype == torch.float32


def test_noised_with_alpha_one_and_sigma_zero_is_the_same_law():
    same = TOY_MIXTURE.noised(1.0, 0.0)
    torch.testing.assert_close(same.means, TOY_MIXTURE.means)
    torch.testing.assert_close(same.stds, TOY_MIXTURE.stds)
    torch.testing.assert_close(same.weights, TOY_MIXTURE.weights)
    x = torch.randn(20, 2, generator=seeded(0))
    torch.testing.assert_close(same.log_prob(x), TOY_MIXTURE.log_prob(x))


def test_noised_mixture_has_the_moments_of_alpha_x0_plus_sigma_eps():
    alpha, sigma, n = 0.8, 0.6, 200_000
    generator = seeded(0)
    x0 = TOY_MIXTURE.sample(n, generator).double()
    x_t = alpha * x0 + sigma * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    mean, covariance = exact_mean_and_covariance(TOY_MIXTURE.noised(alpha, sigma))
    # Monte Carlo standard errors are about 0.003 here.
    torch.testing.assert_close(x_t.mean(0), mean, atol=0.015, rtol=0)
    torch.testing.assert_close(torch.cov(x_t.T), covariance, atol=0.015, rtol=0)


def test_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, 0.0]), torch.ones(2))
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3), torch.ones(2))


# --- datasets -------------------------------------------------------------------------------------


def test_point_dataset_batches_are_dicts_with_key_x():
    points = torch.arange(20, dtype=torch.float32).reshape(10, 2)
    dataset = PointDataset(points, name="demo", split="train")
    assert len(dataset) == 10 and dataset.example_shape == (2,)
    batch = dataset.batch(torch.tensor([3, 1]))
    assert set(batch) == {"x"}
    torch.testing.assert_close(batch["x"], points[[3, 1]])
    assert torch.equal(dataset[4]["x"], points[4])
    assert "demo" in repr(dataset) and "(10, 2)" in repr(dataset)
    with pytest.raises(ValueError):
        PointDataset(points.double(), name="demo", split="train")


def test_load_toy_splits_are_fixed_and_different():
    train, test = load_toy("moons"), load_toy("moons", "test")
    assert (len(train), len(test)) == (20000, 5000)
    assert (train.name, train.split, test.split) == ("moons", "train", "test")
    assert torch.equal(train.points, load_toy("moons").points)
    assert not torch.equal(train.points[:5000], test.points)
    assert len(load_toy("gmm", "test", num_points=123)) == 123


def test_unknown_toy_split_or_count_is_refused_with_the_choices():
    with pytest.raises(DataError, match="swiss_roll, moons, 8gaussians, checkerboard, gmm"):
        load_toy("spiral")
    with pytest.raises(DataError, match="train, test"):
        load_toy("moons", "validation")
    with pytest.raises(DataError, match="unknown toy"):
        sample_toy("spiral", 10)
    with pytest.raises(ConfigError):
        load_toy("moons", num_points=0)


# --- two-sample distances -------------------------------------------------------------------------


def test_distances_match_their_formulas_written_out():
    # 1100 rows: more than one block of rows, so the blocking is checked too.
    x = torch.randn(1100, 2, generator=seeded(0), dtype=torch.float64)
    y = torch.randn(300, 2, generator=seeded(1), dtype=torch.float64) + 0.3
    n, m = len(x), len(y)
    d_xy, d_xx, d_yy = torch.cdist(x, y), torch.cdist(x, x), torch.cdist(y, y)
    energy = 2 * d_xy.mean() - d_xx.sum() / (n * (n - 1)) - d_yy.sum() / (m * (m - 1))
    assert energy_distance(x, y) == pytest.approx(energy.item(), rel=1e-9)

    bandwidths = (0.3, 1.5)

    def kernel(distances):
        return sum(torch.exp(-distances**2 / (2 * b**2)) for b in bandwidths)

    off_diagonal_x, off_diagonal_y = ~torch.eye(n, dtype=torch.bool), ~torch.eye(m, dtype=torch.bool)
    squared_mmd = kernel(d_xx)[off_diagonal_x].mean() + kernel(d_yy)[off_diagonal_y].mean() - 2 * kernel(d_xy).mean()
    assert mmd(x, y, bandwidths) == pytest.approx(squared_mmd.item(), rel=1e-9)


# Two independent samples of one law: both U-statistics scatter around 0, within about 0.01 at 1000
# points (seen: at most 0.011 over 5 seeds and all toys; 0.003 with these seeds). A shift by 0.5 or
# the next toy gives at least 0.09 with these seeds.
SAME_LAW_BELOW = 0.02
DIFFERENT_LAW_ABOVE = 0.05


@pytest.mark.parametrize("name", TOYS)
def test_distances_tell_same_toy_from_shifted_or_other_toy(name):
    generator = seeded(0)
    x, y = sample_toy(name, 1000, generator), sample_toy(name, 1000, generator)
    other = sample_toy(TOYS[(TOYS.index(name) + 1) % len(TOYS)], 1000, generator)
    shifted = y + torch.tensor([0.5, 0.0])
    for distance in (energy_distance, mmd):
        assert abs(distance(x, y)) < SAME_LAW_BELOW
        assert distance(x, shifted) > DIFFERENT_LAW_ABOVE
        assert distance(x, other) > DIFFERENT_LAW_ABOVE


def test_distances_refuse_mismatched_point_clouds():
    with pytest.raises(ValueError):
        energy_distance(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        mmd(torch.zeros(1, 2), torch.zeros(5, 2))
