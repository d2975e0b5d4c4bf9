"""Tests for chapter 1: every claim in docs/01-probability.md is checked here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from minisd import probability as prob
from minisd.figures.probability import make_probability_figures, probability_numbers

# Monte Carlo checks allow this many standard errors. Seeds are fixed, so a pass is
# deterministic; the margin is what keeps the test honest under any other seed.
STANDARD_ERRORS = 4.0


def generator(seed: int = 0) -> torch.Generator:
    """A fresh generator, so every test draws its own reproducible stream."""
    return torch.Generator().manual_seed(seed)


def assert_within_standard_errors(estimate: prob.MonteCarloEstimate, truth: torch.Tensor | float) -> None:
    """Every element of ``estimate`` lies within ``STANDARD_ERRORS`` standard errors of ``truth``."""
    error = (estimate.value - torch.as_tensor(truth, dtype=prob.DTYPE)).abs()
    assert torch.all(error <= STANDARD_ERRORS * estimate.standard_error), (
        f"estimate {estimate.value} is more than {STANDARD_ERRORS} standard errors "
        f"({estimate.standard_error}) from {truth}"
    )


# --------------------------------------------------------------------------------------
# Random variables: mass and density
# --------------------------------------------------------------------------------------


def test_binomial_pmf_sums_to_one_and_matches_a_hand_computed_value() -> None:
    pmf = prob.binomial_pmf(10, 0.3)
    assert pmf.shape == (11,)
    assert pmf.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert pmf[3].item() == pytest.approx(math.comb(10, 3) * 0.3**3 * 0.7**7, rel=1e-12)


@pytest.mark.parametrize(
    ("density", "low", "high", "peak"),
    [
        (lambda x: prob.normal_density(x, 0.0, 0.1), -1.0, 1.0, 1.0 / (0.1 * math.sqrt(2.0 * math.pi))),
        (lambda x: prob.uniform_density(x, 0.0, 0.5), 0.0, 0.5, 2.0),
    ],
)
def test_a_density_can_exceed_one_yet_integrates_to_one(density, low, high, peak) -> None:
    x = torch.linspace(low, high, 1001, dtype=prob.DTYPE)
    assert density(x).max().item() == pytest.approx(peak, rel=1e-9)
    assert peak > 1.0
    assert prob.integrate_density(density, low, high).item() == pytest.approx(1.0, abs=1e-9)


def test_uniform_density_is_zero_outside_its_support() -> None:
    x = torch.tensor([-0.1, 0.6], dtype=prob.DTYPE)
    torch.testing.assert_close(prob.uniform_density(x, 0.0, 0.5), torch.zeros(2, dtype=prob.DTYPE))


# --------------------------------------------------------------------------------------
# Joint, marginal and conditional: heights
# --------------------------------------------------------------------------------------


def test_heights_marginal_and_conditional_match_the_regression_formulas() -> None:
    joint = prob.heights_distribution()
    assert prob.gaussian_marginal(joint, 1) == pytest.approx((176.0, 7.0))
    mean, std = prob.gaussian_conditional(joint, torch.tensor(190.0, dtype=prob.DTYPE))
    assert mean.item() == pytest.approx(176.0 + 0.5 * (190.0 - 176.0))  # regression slope = correlation
    assert std.item() == pytest.approx(7.0 * math.sqrt(1.0 - 0.5**2))  # knowing the parent narrows it


def test_counting_sampled_heights_recovers_marginal_conditional_and_joint_probabilities() -> None:
    joint = prob.heights_distribution()
    parent, child = joint.sample(200_000, generator(11)).unbind(-1)
    marginal = prob.probability_by_counting(child > 185.0)
    assert_within_standard_errors(marginal, prob.normal_probability_above(185.0, 176.0, 7.0))
    near_190 = (parent - 190.0).abs() < 0.5
    conditional = prob.conditional_probability_by_counting(child > 185.0, near_190)
    assert conditional.num_samples == int(near_190.sum())
    exact_conditional = prob.normal_probability_above(185.0, *prob.gaussian_conditional(joint, 190.0))
    assert_within_standard_errors(conditional, exact_conditional)
    both = prob.probability_by_counting((parent > 185.0) & (child > 185.0))
    assert_within_standard_errors(both, prob.probability_both_above(joint, 185.0))


def test_correlated_heights_are_dependent_and_uncorrelated_gaussians_independent() -> None:
    correlated = prob.heights_distribution()
    tall = prob.normal_probability_above(185.0, 176.0, 7.0).item()
    # P(A, B) != P(A) P(B): a tall parent makes a tall child about three times likelier.
    assert prob.probability_both_above(correlated, 185.0) > 3.0 * tall**2
    independent = prob.Gaussian(correlated.mean, torch.diag(correlated.covariance.diagonal()))
    assert prob.probability_both_above(independent, 185.0) == pytest.approx(tall**2, rel=1e-6)


# --------------------------------------------------------------------------------------
# A coin with a hidden fairness
# --------------------------------------------------------------------------------------


def test_coin_posterior_adds_heads_and_tails_to_the_prior_counts() -> None:
    assert prob.coin_posterior(7, 3) == (8.0, 4.0)
    assert prob.coin_posterior(7, 3, prior_a=2.0, prior_b=5.0) == (9.0, 8.0)


def test_beta_density_integrates_to_one() -> None:
    integral = prob.integrate_density(lambda theta: prob.beta_density(theta, 3.0, 5.0), 0.0, 1.0)
    assert integral.item() == pytest.approx(1.0, abs=1e-8)


def test_coin_evidence_of_short_sequences_matches_hand_computation() -> None:
    # Uniform prior: p(H) = integral theta = 1/2, p(HH) = integral theta^2 = 1/3, p(HT) = 1/6.
    assert math.exp(prob.coin_log_evidence(1, 0)) == pytest.approx(1 / 2, rel=1e-12)
    assert math.exp(prob.coin_log_evidence(2, 0)) == pytest.approx(1 / 3, rel=1e-12)
    assert math.exp(prob.coin_log_evidence(1, 1)) == pytest.approx(1 / 6, rel=1e-12)


@pytest.mark.parametrize(("heads", "tails", "prior_a", "prior_b"), [(7, 3, 1.0, 1.0), (69, 31, 1.0, 1.0),
                                                                    (4, 12, 2.0, 5.0), (0, 0, 2.0, 5.0)])
def test_grid_bayes_rule_matches_the_conjugate_beta_posterior_and_evidence(heads, tails, prior_a, prior_b) -> None:
    grid = prob.coin_posterior_on_grid(heads, tails, prior_a=prior_a, prior_b=prior_b)
    closed_form = prob.beta_density(grid.fairness, *prob.coin_posterior(heads, tails, prior_a, prior_b))
    torch.testing.assert_close(grid.density, closed_form, rtol=1e-4, atol=1e-4)
    assert grid.log_evidence == pytest.approx(prob.coin_log_evidence(heads, tails, prior_a, prior_b), abs=1e-4)


def test_coin_posterior_concentrates_on_the_true_fairness() -> None:
    flips = prob.sample_coin_flips(0.7, 2000, generator(12))
    heads = int(flips.sum())
    posterior_a, posterior_b = prob.coin_posterior(heads, len(flips) - heads)
    mean = posterior_a / (posterior_a + posterior_b)
    std = math.sqrt(mean * (1 - mean) / (posterior_a + posterior_b + 1))  # the Beta's standard deviation
    assert std < 0.011
    assert abs(mean - 0.7) < 4 * std


# --------------------------------------------------------------------------------------
# 1. Bayes' rule
# --------------------------------------------------------------------------------------


def test_bayes_colour_blindness_posterior_is_82_35_percent() -> None:
    posterior = prob.colour_blindness_posterior()
    assert posterior[0].item() == pytest.approx(0.028 / 0.034, abs=1e-12)
    assert posterior[0].item() == pytest.approx(0.8235, abs=1e-4)
    assert posterior.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_bayes_evidence_is_the_probability_of_being_colour_blind() -> None:
    evidence = prob.bayes_evidence(*prob.colour_blindness_prior_and_likelihood())
    assert evidence.item() == pytest.approx(0.4 * 0.07 + 0.6 * 0.01, abs=1e-12)


def test_bayes_posterior_works_for_any_number_of_hypotheses() -> None:
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=prob.DTYPE)
    likelihood = torch.tensor([0.1, 0.5, 0.9], dtype=prob.DTYPE)
    # joint = (0.05, 0.15, 0.18), evidence = 0.38
    expected = torch.tensor([0.05, 0.15, 0.18], dtype=prob.DTYPE) / 0.38
    torch.testing.assert_close(prob.bayes_posterior(prior, likelihood), expected)


def test_bayes_posterior_with_uninformative_evidence_equals_the_prior() -> None:
    prior = torch.tensor([0.1, 0.2, 0.7], dtype=prob.DTYPE)
    likelihood = torch.full((3,), 0.25, dtype=prob.DTYPE)
    torch.testing.assert_close(prob.bayes_posterior(prior, likelihood), prior)


@pytest.mark.parametrize(
    ("prior", "likelihood"),
    [
        ([0.5, 0.6], [0.1, 0.1]),  # prior does not sum to one
        ([0.5, 0.5], [0.1, 0.1, 0.1]),  # one likelihood per hypothesis
    ],
)
def test_bayes_posterior_rejects_malformed_inputs(prior: list[float], likelihood: list[float]) -> None:
    with pytest.raises(ValueError):
        prob.bayes_posterior(
            torch.tensor(prior, dtype=prob.DTYPE), torch.tensor(likelihood, dtype=prob.DTYPE)
        )


def test_counting_a_simulated_population_recovers_the_posterior() -> None:
    population = prob.simulate_population(200_000, generator(1))
    counted = prob.posterior_by_counting(population)
    assert counted.num_samples == int(population.is_colour_blind.sum())
    # About 3.4% of 200,000 people are colour-blind, so the binomial error is about 0.005.
    assert 0.003 < counted.standard_error.item() < 0.007
    assert_within_standard_errors(counted, prob.colour_blindness_posterior()[0])


def test_running_counting_estimate_ends_at_the_full_count() -> None:
    population = prob.simulate_population(10_000, generator(2))
    num_colour_blind_seen, running = prob.running_posterior_by_counting(population)
    assert num_colour_blind_seen[-1].item() == prob.posterior_by_counting(population).num_samples
    assert running[-1].item() == pytest.approx(prob.posterior_by_counting(population).value.item(), abs=1e-12)


# --------------------------------------------------------------------------------------
# 2. Monte Carlo
# --------------------------------------------------------------------------------------


def test_monte_carlo_estimate_of_second_moment_is_within_standard_errors() -> None:
    estimate = prob.monte_carlo_expectation(torch.square, prob.sample_standard_normal, 10_000, generator(3))
    # Var[X^2] = 2, so the standard error of a 10,000-sample mean is sqrt(2 / 10,000) ~ 0.014.
    assert estimate.standard_error.item() == pytest.approx(math.sqrt(2 / 10_000), rel=0.1)
    assert_within_standard_errors(estimate, 1.0)


def test_monte_carlo_error_shrinks_like_inverse_sqrt_n() -> None:
    sample_sizes = [2**k for k in range(2, 12)]
    rms_errors = prob.monte_carlo_rms_errors(
        torch.square, prob.sample_standard_normal, 1.0, sample_sizes, num_trials=300, generator=generator(4)
    )
    slope = prob.log_log_slope(torch.tensor(sample_sizes, dtype=prob.DTYPE), rms_errors)
    assert slope == pytest.approx(-0.5, abs=0.1)
    theory = torch.tensor([math.sqrt(2 / n) for n in sample_sizes], dtype=prob.DTYPE)
    torch.testing.assert_close(rms_errors, theory, rtol=0.25, atol=0.0)


def test_log_log_slope_recovers_a_power_law() -> None:
    x = torch.tensor([1.0, 10.0, 100.0, 1000.0], dtype=prob.DTYPE)
    assert prob.log_log_slope(x, 3.0 * x**-1.5) == pytest.approx(-1.5, abs=1e-12)


# --------------------------------------------------------------------------------------
# 3. KL divergence
# --------------------------------------------------------------------------------------

# Five (q, p) pairs of univariate Gaussians, one per element.
MEAN_Q = torch.tensor([0.0, 1.0, -2.0, 0.5, 3.0], dtype=prob.DTYPE)
LOGVAR_Q = torch.tensor([0.0, -1.0, 0.5, 1.0, -0.3], dtype=prob.DTYPE)
MEAN_P = torch.tensor([0.0, 0.0, 1.0, 0.5, 2.0], dtype=prob.DTYPE)
LOGVAR_P = torch.tensor([0.7, 0.0, 0.0, -0.5, 0.4], dtype=prob.DTYPE)


def test_kl_normal_matches_monte_carlo_estimate() -> None:
    closed_form = prob.kl_normal(MEAN_Q, LOGVAR_Q, MEAN_P, LOGVAR_P)
    estimate = prob.kl_normal_monte_carlo(MEAN_Q, LOGVAR_Q, MEAN_P, LOGVAR_P, 20_000, generator(5))
    assert estimate.value.shape == closed_form.shape == MEAN_Q.shape
    assert_within_standard_errors(estimate, closed_form)


def test_kl_normal_matches_a_hand_computed_value() -> None:
    # KL(N(1, 0.25) || N(0, 1)) = 1/2 (0 - log 0.25 + 0.25 + 1 - 1) = 1/2 (log 4 + 0.25)
    kl = prob.kl_normal(torch.tensor(1.0), torch.tensor(math.log(0.25)), torch.tensor(0.0), torch.tensor(0.0))
    assert kl.item() == pytest.approx(0.5 * (math.log(4.0) + 0.25), abs=1e-6)


def test_kl_of_a_distribution_with_itself_is_zero() -> None:
    torch.testing.assert_close(prob.kl_normal(MEAN_Q, LOGVAR_Q, MEAN_Q, LOGVAR_Q), torch.zeros_like(MEAN_Q))


def test_kl_is_nonnegative_and_asymmetric() -> None:
    forward = prob.kl_normal(MEAN_Q, LOGVAR_Q, MEAN_P, LOGVAR_P)
    reverse = prob.kl_normal(MEAN_P, LOGVAR_P, MEAN_Q, LOGVAR_Q)
    assert torch.all(forward >= 0) and torch.all(reverse >= 0)
    # Pairs that differ in variance give different KLs in the two directions.
    different_variance = LOGVAR_Q != LOGVAR_P
    assert torch.all((forward - reverse).abs()[different_variance] > 0.05)


def test_multivariate_kl_with_diagonal_covariances_equals_summed_univariate_kl() -> None:
    q = prob.Gaussian(MEAN_Q, torch.diag(LOGVAR_Q.exp()))
    p = prob.Gaussian(MEAN_P, torch.diag(LOGVAR_P.exp()))
    summed = prob.kl_normal(MEAN_Q, LOGVAR_Q, MEAN_P, LOGVAR_P).sum()
    torch.testing.assert_close(prob.kl_multivariate_normal(q, p), summed)


def test_multivariate_log_density_with_diagonal_covariance_equals_summed_univariate() -> None:
    points = torch.randn((7, 5), generator=generator(6), dtype=prob.DTYPE)
    gaussian = prob.Gaussian(MEAN_Q, torch.diag(LOGVAR_Q.exp()))
    summed = prob.gaussian_log_density(points, MEAN_Q, LOGVAR_Q).sum(-1)
    torch.testing.assert_close(gaussian.log_density(points), summed)


def test_full_covariance_samples_have_the_requested_mean_and_covariance() -> None:
    covariance = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=prob.DTYPE)
    gaussian = prob.Gaussian(torch.tensor([1.0, -1.0], dtype=prob.DTYPE), covariance)
    samples = gaussian.sample(50_000, generator(7))
    torch.testing.assert_close(samples.mean(0), gaussian.mean, atol=0.03, rtol=0.0)
    torch.testing.assert_close(samples.T.cov(), covariance, atol=0.05, rtol=0.0)


# --------------------------------------------------------------------------------------
# 4. The ELBO on a linear-Gaussian model
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> prob.LinearGaussianModel:
    return prob.make_linear_gaussian_model(3, 6, 0.7, generator(8), column_overlap=0.6)


@pytest.fixture(scope="module")
def observation(model: prob.LinearGaussianModel) -> torch.Tensor:
    return prob.sample_observations(model, 1, generator(9))[0]


def random_gaussian(dim: int, seed: int) -> prob.Gaussian:
    """A Gaussian with random mean and random full (positive-definite) covariance."""
    rng = generator(seed)
    factor = torch.randn((dim, dim), generator=rng, dtype=prob.DTYPE)
    covariance = factor @ factor.T / dim + 0.1 * torch.eye(dim, dtype=prob.DTYPE)
    return prob.Gaussian(torch.randn(dim, generator=rng, dtype=prob.DTYPE), covariance)


def test_log_evidence_equals_marginalising_the_joint_over_the_prior(model, observation) -> None:
    # p(x) = E_{z ~ p(z)}[p(x | z)] (Luo (2022) eq. 1), estimated with 200,000 prior samples.
    z = torch.randn((200_000, model.latent_dim), generator=generator(10), dtype=prob.DTYPE)
    log_likelihoods = prob.log_likelihood(model, observation, z)
    monte_carlo_log_evidence = torch.logsumexp(log_likelihoods, 0) - math.log(len(z))
    exact = prob.log_evidence(model, observation).item()
    assert monte_carlo_log_evidence.item() == pytest.approx(exact, abs=0.05)


def test_true_posterior_satisfies_bayes_rule(model, observation) -> None:
    # log p(z | x) = log p(x, z) - log p(x) at every z (Luo (2022) eq. 2).
    posterior = prob.true_posterior(model, observation)
    z = torch.randn((10, model.latent_dim), generator=generator(11), dtype=prob.DTYPE)
    bayes = prob.log_joint(model, observation, z) - prob.log_evidence(model, observation)
    torch.testing.assert_close(posterior.log_density(z), bayes, atol=1e-10, rtol=0.0)


@pytest.mark.parametrize("seed", [12, 13, 14])
def test_elbo_gap_equals_posterior_kl(model, observation, seed: int) -> None:
    q = random_gaussian(model.latent_dim, seed)
    gap = prob.elbo_gap(model, observation, q)
    kl = prob.kl_multivariate_normal(q, prob.true_posterior(model, observation))
    assert gap.item() > 0.1  # a random q is far from the posterior: the identity is not 0 = 0
    assert gap.item() == pytest.approx(kl.item(), abs=1e-5)


def test_batched_elbo_and_kl_match_one_q_at_a_time(model, observation) -> None:
    qs = [random_gaussian(model.latent_dim, seed) for seed in (30, 31, 32)]
    batch = prob.Gaussian(torch.stack([q.mean for q in qs]), torch.stack([q.covariance for q in qs]))
    posterior = prob.true_posterior(model, observation)
    torch.testing.assert_close(
        prob.elbo(model, observation, batch), torch.stack([prob.elbo(model, observation, q) for q in qs])
    )
    torch.testing.assert_close(
        prob.kl_multivariate_normal(batch, posterior),
        torch.stack([prob.kl_multivariate_normal(q, posterior) for q in qs]),
    )


def test_elbo_is_tight_at_true_posterior(model, observation) -> None:
    posterior = prob.true_posterior(model, observation)
    assert prob.elbo(model, observation, posterior).item() == pytest.approx(
        prob.log_evidence(model, observation).item(), abs=1e-9
    )


def test_elbo_is_below_log_evidence_for_any_other_q(model, observation) -> None:
    log_evidence = prob.log_evidence(model, observation).item()
    for seed in range(15, 20):
        assert prob.elbo(model, observation, random_gaussian(model.latent_dim, seed)).item() < log_evidence


def test_elbo_closed_form_matches_monte_carlo(model, observation) -> None:
    q = random_gaussian(model.latent_dim, 20)
    estimate = prob.elbo_monte_carlo(model, observation, q, 20_000, generator(21))
    assert_within_standard_errors(estimate, prob.elbo(model, observation, q))


def test_elbo_integrand_is_constant_at_true_posterior(model, observation) -> None:
    # log p(x, z) - log p(z | x) = log p(x) for every z, so every sample is exact.
    posterior = prob.true_posterior(model, observation)
    estimate = prob.elbo_monte_carlo(model, observation, posterior, 100, generator(22))
    assert estimate.standard_error.item() < 1e-10
    assert estimate.value.item() == pytest.approx(prob.log_evidence(model, observation).item(), abs=1e-10)


def test_best_diagonal_q_leaves_a_gap_and_is_a_local_optimum(model, observation) -> None:
    mean_field = prob.mean_field_posterior(model, observation)
    gap = prob.elbo_gap(model, observation, mean_field).item()
    assert gap > 0.01  # overlapping columns correlate the posterior, which a diagonal q cannot express
    for index in range(model.latent_dim):
        for scale in (0.9, 1.1):
            variances = mean_field.covariance.diagonal().clone()
            variances[index] *= scale
            perturbed = prob.Gaussian(mean_field.mean, torch.diag(variances))
            assert prob.elbo_gap(model, observation, perturbed).item() > gap


# --------------------------------------------------------------------------------------
# 5. Gradient estimators
# --------------------------------------------------------------------------------------

MEAN, LOG_STD = 1.0, 0.0


@pytest.fixture(scope="module")
def gradient_samples() -> dict[str, torch.Tensor]:
    return {
        "reparameterisation": prob.reparameterisation_gradient_samples(
            prob.quadratic_objective, MEAN, LOG_STD, 50_000, generator(23)
        ),
        "score_function": prob.score_function_gradient_samples(
            prob.quadratic_objective, MEAN, LOG_STD, 50_000, generator(24)
        ),
    }


def test_quadratic_objective_gradient_matches_autograd_of_the_closed_form_expectation() -> None:
    mean = torch.tensor(MEAN, dtype=prob.DTYPE, requires_grad=True)
    log_std = torch.tensor(LOG_STD, dtype=prob.DTYPE, requires_grad=True)
    expectation = (mean - 3.0) ** 2 + (2 * log_std).exp()  # E[(z - 3)^2] = (mean - 3)^2 + std^2
    gradient = torch.stack(torch.autograd.grad(expectation, (mean, log_std)))
    torch.testing.assert_close(gradient, prob.quadratic_objective_expectation_gradient(MEAN, LOG_STD))


@pytest.mark.parametrize("estimator", ["reparameterisation", "score_function"])
def test_gradient_estimators_are_unbiased(gradient_samples, estimator: str) -> None:
    estimate = prob.MonteCarloEstimate.from_samples(gradient_samples[estimator])
    assert estimate.value.shape == (2,)
    assert_within_standard_errors(estimate, prob.quadratic_objective_expectation_gradient(MEAN, LOG_STD))


def test_reparameterisation_has_lower_variance_than_score_function(gradient_samples) -> None:
    # Exact per-sample variances at mean 1, std 1: reparameterisation (4, 24), score function (87, 346).
    variance_ratio = gradient_samples["score_function"].var(0) / gradient_samples["reparameterisation"].var(0)
    assert torch.all(variance_ratio > 5.0), f"variance ratios {variance_ratio}"


def test_reparameterisation_variance_matches_theory(gradient_samples) -> None:
    # d/d mean = 2 (z - 3) = 2 (eps - 2): variance 4.  d/d log_std = 2 (eps - 2) eps: variance 8 + 16 = 24.
    torch.testing.assert_close(
        gradient_samples["reparameterisation"].var(0),
        torch.tensor([4.0, 24.0], dtype=prob.DTYPE),
        rtol=0.05,
        atol=0.0,
    )


# --------------------------------------------------------------------------------------
# The chapter's numbers and figures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbers() -> dict[str, float | int]:
    return probability_numbers(seed=0)


def test_chapter_numbers_are_reproducible_from_the_seed(numbers) -> None:
    assert probability_numbers(seed=0) == numbers
    assert probability_numbers(seed=1)["bayes_counted_posterior"] != numbers["bayes_counted_posterior"]


def test_chapter_numbers_agree_with_the_claims_in_the_text(numbers) -> None:
    assert numbers["bayes_posterior_male_given_colour_blind"] == pytest.approx(0.8235, abs=1e-4)
    exact = numbers["bayes_posterior_male_given_colour_blind"]
    counting_error = abs(numbers["bayes_counted_posterior"] - exact)
    assert counting_error < STANDARD_ERRORS * numbers["bayes_counted_standard_error"]
    assert numbers["monte_carlo_log_log_slope"] == pytest.approx(-0.5, abs=0.1)
    assert numbers["kl_reverse_closed_form"] > numbers["kl_forward_closed_form"]
    assert numbers["elbo_at_true_posterior"] == pytest.approx(numbers["elbo_log_evidence"], abs=1e-9)
    assert numbers["elbo_gap_at_shifted_q"] == pytest.approx(
        numbers["kl_shifted_q_to_true_posterior"], abs=1e-9
    )
    assert numbers["elbo_gap_minus_kl_max_abs"] < 1e-9
    assert numbers["elbo_gap_at_mean_field_optimum"] > 0.01
    assert numbers["gradient_variance_ratio_d_mean"] > 5.0
    assert numbers["gradient_variance_ratio_d_log_std"] > 5.0
    assert numbers["narrow_normal_peak_density"] > 1.0
    assert numbers["narrow_normal_integral"] == pytest.approx(1.0, abs=1e-9)
    assert numbers["uniform_density_height"] == 2.0
    assert numbers["uniform_density_integral"] == pytest.approx(1.0, abs=1e-9)
    for name in ("marginal", "conditional", "both_tall"):
        counting_error = abs(numbers[f"heights_{name}_counted"] - numbers[f"heights_{name}_exact"])
        assert counting_error < STANDARD_ERRORS * numbers[f"heights_{name}_counted_standard_error"]
    assert numbers["heights_both_tall_exact"] > 3.0 * numbers["heights_both_tall_if_independent"]
    assert numbers["coin_grid_posterior_mean"] == pytest.approx(numbers["coin_posterior_mean"], abs=1e-9)
    assert numbers["coin_grid_density_max_abs_error"] < 1e-6
    assert numbers["coin_log_evidence_max_abs_error"] < 1e-5
    assert numbers["coin_log_evidence"] > numbers["coin_log_likelihood_if_fair"]


def test_make_probability_figures_writes_eight_pngs(tmp_path: Path) -> None:
    paths = make_probability_figures(tmp_path, seed=0)
    assert set(paths) == {
        "mass_and_density", "heights", "bayes", "coin", "monte_carlo_error", "kl_gaussians", "elbo_gap",
        "gradient_estimators",
    }
    for name, path in paths.items():
        assert path == tmp_path / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
