"""Chapter 1 -- probability, from Bayes' rule to the ELBO, as small runnable examples.

Every function here is a worked example from ``docs/01-probability.md``. The reference
text is Calvin Luo, "Understanding Diffusion Models: A Unified Perspective" (2022,
arXiv 2208.11970); comments cite it as ``Luo (2022) eq. N``.

The chapter has eight parts, in the order they appear below:

1. Random variables: a probability mass function sums to one, a density integrates to one
   (and may exceed one).
2. Joint, marginal and conditional distributions of two correlated heights, in closed form
   and by counting samples.
3. Bayes' rule, computed exactly and estimated by counting a simulated population.
4. A coin whose fairness is a hidden random variable: the Beta posterior and the evidence
   in closed form, checked against Bayes' rule on a grid.
5. Monte Carlo expectations, whose error shrinks like ``1 / sqrt(N)``.
6. The KL divergence between Gaussians: closed form against a Monte Carlo estimate.
7. The ELBO of a linear-Gaussian latent model, where ``log p(x)`` and ``p(z | x)`` are
   known exactly, so ``log p(x) - ELBO = KL(q(z|x) || p(z|x))`` can be checked to
   machine precision.
8. Two gradient estimators for ``d/dtheta E_{z ~ q_theta}[f(z)]``: the
   reparameterisation trick (what a VAE uses) and the score function (REINFORCE).

Conventions: every random function takes an explicit ``torch.Generator`` so results are
reproducible; everything defaults to float64 because the tests compare closed forms to
about 1e-10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

# The Gaussian helpers every model uses live in minisd.distributions; the chapter imports
# them for its examples and re-exports them, so ``minisd.probability.kl_normal`` still works.
from minisd.distributions import (  # noqa: F401  (re-exported for the chapter)
    LOG_TWO_PI,
    gaussian_log_density,
    importance_weighted_log_likelihood,
    kl_normal,
    sample_normal,
)

DTYPE = torch.float64


# --------------------------------------------------------------------------------------
# Monte Carlo estimates carry their own error bar
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MonteCarloEstimate:
    """A sample mean together with its standard error ``std / sqrt(N)``.

    ``value`` and ``standard_error`` have the shape of one sample (the sample axis is
    averaged away), so an elementwise estimate keeps one error bar per element.
    """

    value: Tensor
    standard_error: Tensor
    num_samples: int

    @classmethod
    def from_samples(cls, samples: Tensor, dim: int = 0) -> MonteCarloEstimate:
        """Average ``samples`` over ``dim``: value = mean, standard_error = std / sqrt(N)."""
        num_samples = samples.shape[dim]
        if num_samples < 2:
            raise ValueError(f"need at least 2 samples for a standard error, got {num_samples}")
        return cls(
            value=samples.mean(dim),
            standard_error=samples.std(dim) / math.sqrt(num_samples),
            num_samples=num_samples,
        )


# --------------------------------------------------------------------------------------
# 1. Random variables: probability mass and probability density
# --------------------------------------------------------------------------------------


def binomial_pmf(num_trials: int, success_probability: float) -> Tensor:
    """``P(K = k) = C(n, k) p^k (1 - p)^(n - k)`` for ``k = 0 .. n``; shape ``(n + 1,)``.

    A probability *mass* function: ``K`` takes countably many values, each value has a
    probability in ``[0, 1]``, and the probabilities sum to one.
    """
    counts = torch.arange(num_trials + 1, dtype=DTYPE)
    log_choose = (
        math.lgamma(num_trials + 1) - torch.lgamma(counts + 1) - torch.lgamma(num_trials - counts + 1)
    )
    return (
        log_choose
        + counts * math.log(success_probability)
        + (num_trials - counts) * math.log1p(-success_probability)
    ).exp()


def uniform_density(x: Tensor, low: float, high: float) -> Tensor:
    """The density of ``Uniform(low, high)``: ``1 / (high - low)`` on ``[low, high]``, else 0.

    On a short interval the density is *larger than one* -- ``Uniform(0, 0.5)`` has density 2
    -- because a density is probability per unit length, not a probability.
    """
    inside = (x >= low) & (x <= high)
    return torch.where(inside, 1.0 / (high - low), 0.0).to(DTYPE)


def normal_density(x: Tensor, mean: float, std: float) -> Tensor:
    """``N(x; mean, std^2) = exp(-(x - mean)^2 / (2 std^2)) / (std sqrt(2 pi))``, elementwise.

    Its peak ``1 / (std sqrt(2 pi))`` exceeds one for ``std < 0.399``.
    """
    logvar = torch.tensor(2.0 * math.log(std), dtype=DTYPE)
    return gaussian_log_density(x, torch.tensor(mean, dtype=DTYPE), logvar).exp()


def integrate_density(density: Callable[[Tensor], Tensor], low: float, high: float,
                      num_points: int = 100_001) -> Tensor:
    """``integral_low^high density(x) dx`` by the trapezoidal rule on ``num_points`` points (a scalar).

    Every density integrates to one over its support: ``P(X in [a, b]) = integral_a^b p(x) dx``,
    and ``X`` lands somewhere.
    """
    x = torch.linspace(low, high, num_points, dtype=DTYPE)
    return torch.trapezoid(density(x), x)


# --------------------------------------------------------------------------------------
# 2. Joint, marginal and conditional distributions: heights of a parent and a child
# --------------------------------------------------------------------------------------

# Heights in cm of a father and his adult son: illustrative values, with the parent-child
# correlation of about 0.5 that Galton measured.
HEIGHT_MEAN_CM = 176.0
HEIGHT_STD_CM = 7.0
HEIGHT_CORRELATION = 0.5


def heights_distribution() -> Gaussian:
    """The joint ``p(parent, child)``: a bivariate Gaussian, mean ``(2,)``, covariance ``(2, 2)``."""
    variance = HEIGHT_STD_CM**2
    covariance = torch.tensor(
        [[variance, HEIGHT_CORRELATION * variance], [HEIGHT_CORRELATION * variance, variance]], dtype=DTYPE
    )
    return Gaussian(mean=torch.full((2,), HEIGHT_MEAN_CM, dtype=DTYPE), covariance=covariance)


def gaussian_marginal(joint: Gaussian, index: int) -> tuple[float, float]:
    """``(mean, std)`` of the marginal ``p(x_index) = integral p(x_1, x_2) dx_other`` of a 2-d Gaussian.

    The sum rule done in closed form: a Gaussian's marginal keeps its own entries of the
    mean and the covariance.
    """
    return joint.mean[index].item(), joint.covariance[index, index].sqrt().item()


def gaussian_conditional(joint: Gaussian, given_first: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` of ``p(x_2 | x_1 = given_first) = p(x_1, x_2) / p(x_1)`` for a 2-d Gaussian.

    ``mean = mu_2 + S_21 / S_11 (x_1 - mu_1)``, ``var = S_22 - S_21^2 / S_11``: knowing ``x_1``
    moves the mean (by the regression slope ``S_21 / S_11``) and shrinks the variance.
    ``given_first`` has any shape; the mean has that shape, the std is a scalar tensor.
    """
    mean, covariance = joint.mean, joint.covariance
    slope = covariance[1, 0] / covariance[0, 0]
    conditional_mean = mean[1] + slope * (torch.as_tensor(given_first, dtype=DTYPE) - mean[0])
    conditional_variance = covariance[1, 1] - covariance[1, 0] ** 2 / covariance[0, 0]
    return conditional_mean, conditional_variance.sqrt()


def normal_probability_above(threshold: float, mean: Tensor | float, std: Tensor | float) -> Tensor:
    """``P(X > threshold)`` for ``X ~ N(mean, std^2)``: one minus the normal CDF, elementwise."""
    standardised = (threshold - torch.as_tensor(mean, dtype=DTYPE)) / torch.as_tensor(std, dtype=DTYPE)
    return 1.0 - torch.special.ndtr(standardised)


def probability_by_counting(event: Tensor) -> MonteCarloEstimate:
    """``P(A)`` as the fraction of samples where the boolean ``event`` ``(N,)`` holds."""
    return MonteCarloEstimate.from_samples(event.to(DTYPE))


def conditional_probability_by_counting(event: Tensor, condition: Tensor) -> MonteCarloEstimate:
    """``P(A | B)`` as the fraction of the samples where ``condition`` holds in which ``event`` holds.

    Conditioning by counting: keep only the samples where ``B`` holds, then average the
    indicator of ``A`` over them. ``event`` and ``condition`` are boolean ``(N,)``; the
    standard error is the binomial ``sqrt(p (1 - p) / #B)``.
    """
    return probability_by_counting(event[condition])


def probability_both_above(joint: Gaussian, threshold: float, num_points: int = 20_001) -> float:
    """``P(x_1 > t, x_2 > t) = integral_t^inf p(x_1) P(x_2 > t | x_1) dx_1`` for a 2-d Gaussian.

    The product rule ``p(x_1, x_2) = p(x_1) p(x_2 | x_1)``, with the integral over ``x_1``
    done numerically (to 10 standard deviations above the mean).
    """
    mean_1, std_1 = gaussian_marginal(joint, 0)

    def integrand(x_1: Tensor) -> Tensor:
        """``p(x_1) P(x_2 > t | x_1)`` on a grid of ``x_1``."""
        return normal_density(x_1, mean_1, std_1) * normal_probability_above(
            threshold, *gaussian_conditional(joint, x_1)
        )

    return integrate_density(integrand, threshold, mean_1 + 10.0 * std_1, num_points).item()


# --------------------------------------------------------------------------------------
# 3. Bayes' rule
# --------------------------------------------------------------------------------------

# The colour-blindness example: hypotheses are (male, female), evidence is "colour-blind".
P_MALE = 0.4
P_COLOUR_BLIND_GIVEN_MALE = 0.07
P_COLOUR_BLIND_GIVEN_FEMALE = 0.01


def _check_hypotheses(prior: Tensor, likelihood: Tensor) -> None:
    """Raise ``ValueError`` unless ``prior`` and ``likelihood`` match, are 1-D, and ``prior`` sums to 1."""
    if prior.shape != likelihood.shape or prior.dim() != 1:
        raise ValueError(
            f"prior and likelihood must be 1-D with one entry per hypothesis, "
            f"got shapes {tuple(prior.shape)} and {tuple(likelihood.shape)}"
        )
    if not torch.isclose(prior.sum(), prior.new_tensor(1.0)):
        raise ValueError(f"prior must sum to 1, got {prior.sum().item():.6g}")


def bayes_evidence(prior: Tensor, likelihood: Tensor) -> Tensor:
    """The evidence ``P(e) = sum_h P(e | h) P(h)`` (a scalar tensor).

    The discrete form of the marginal ``p(x) = integral p(x, z) dz`` (Luo (2022) eq. 1):
    the probability of the observation with the hypothesis summed out.

    Args:
        prior: ``(H,)`` probabilities ``P(h)`` summing to one.
        likelihood: ``(H,)`` probabilities ``P(e | h)`` of the observed evidence under
            each hypothesis (these need not sum to one).
    """
    _check_hypotheses(prior, likelihood)
    return (likelihood * prior).sum()


def bayes_posterior(prior: Tensor, likelihood: Tensor) -> Tensor:
    """Posterior over discrete hypotheses by Bayes' rule.

    ``P(h | e) = P(e | h) P(h) / P(e)``, with ``P(e)`` from :func:`bayes_evidence`.
    This is Luo (2022) eq. 2, ``p(x) = p(x, z) / p(z | x)``, solved for the posterior.

    Args:
        prior: ``(H,)`` probabilities ``P(h)`` summing to one.
        likelihood: ``(H,)`` probabilities ``P(e | h)``.

    Returns:
        ``(H,)`` posterior probabilities ``P(h | e)``, summing to one.
    """
    evidence = bayes_evidence(prior, likelihood)  # validates the inputs too
    joint = likelihood * prior  # P(e, h) for each hypothesis h
    return joint / evidence


def colour_blindness_prior_and_likelihood() -> tuple[Tensor, Tensor]:
    """``(P(sex), P(colour-blind | sex))`` for sex in (male, female); each of shape ``(2,)``."""
    prior = torch.tensor([P_MALE, 1.0 - P_MALE], dtype=DTYPE)
    likelihood = torch.tensor([P_COLOUR_BLIND_GIVEN_MALE, P_COLOUR_BLIND_GIVEN_FEMALE], dtype=DTYPE)
    return prior, likelihood


def colour_blindness_posterior() -> Tensor:
    """``(P(male | colour-blind), P(female | colour-blind))`` by Bayes' rule; shape ``(2,)``.

    ``P(male | cb) = 0.4 * 0.07 / (0.4 * 0.07 + 0.6 * 0.01) = 0.028 / 0.034``.
    """
    return bayes_posterior(*colour_blindness_prior_and_likelihood())


@dataclass(frozen=True)
class Population:
    """A simulated population: one boolean entry per person, both of shape ``(N,)``."""

    is_male: Tensor
    is_colour_blind: Tensor


def simulate_population(num_people: int, generator: torch.Generator) -> Population:
    """Draw ``num_people`` people from the generative story the example describes.

    Sex first, ``male ~ Bernoulli(0.4)``; then ``colour_blind | sex ~ Bernoulli(0.07)`` for
    men and ``Bernoulli(0.01)`` for women. Sampling the prior and then the likelihood is
    ancestral sampling of ``p(h, e) = p(e | h) p(h)``.
    """
    prior, likelihood = colour_blindness_prior_and_likelihood()
    is_male = torch.rand(num_people, generator=generator, dtype=DTYPE) < prior[0]
    sex_index = (~is_male).long()  # 0 = male, 1 = female, the order of the prior
    is_colour_blind = torch.rand(num_people, generator=generator, dtype=DTYPE) < likelihood[sex_index]
    return Population(is_male=is_male, is_colour_blind=is_colour_blind)


def posterior_by_counting(population: Population) -> MonteCarloEstimate:
    """Estimate ``P(male | colour-blind)`` as the fraction of colour-blind people who are men.

    Conditioning by counting: keep only the people where the evidence holds, then average
    the indicator ``[male]`` over them. That average is a Monte Carlo estimate, so its
    standard error is the binomial ``sqrt(p (1 - p) / #colour-blind)``.
    """
    return conditional_probability_by_counting(population.is_male, population.is_colour_blind)


def running_posterior_by_counting(population: Population) -> tuple[Tensor, Tensor]:
    """The counting estimate after each of the first ``n`` people, for ``n = 1 .. N``.

    Returns ``(num_colour_blind_seen, estimate)``, both ``(N,)``; ``estimate`` is NaN until
    the first colour-blind person appears (0 / 0).
    """
    num_colour_blind_seen = population.is_colour_blind.cumsum(0)
    num_colour_blind_men_seen = (population.is_colour_blind & population.is_male).cumsum(0)
    estimate = num_colour_blind_men_seen.to(DTYPE) / num_colour_blind_seen.to(DTYPE)
    return num_colour_blind_seen, estimate


# --------------------------------------------------------------------------------------
# 4. A coin whose fairness is hidden: the first latent-variable model
# --------------------------------------------------------------------------------------

# A uniform prior over the fairness: Beta(1, 1).
COIN_PRIOR_A, COIN_PRIOR_B = 1.0, 1.0


def log_beta_function(a: Tensor | float, b: Tensor | float) -> Tensor:
    """``log B(a, b) = log Gamma(a) + log Gamma(b) - log Gamma(a + b)``, elementwise.

    ``B(a, b) = integral_0^1 theta^(a - 1) (1 - theta)^(b - 1) d theta``, the normaliser of Beta(a, b).
    """
    a, b = torch.as_tensor(a, dtype=DTYPE), torch.as_tensor(b, dtype=DTYPE)
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def beta_density(theta: Tensor, a: float, b: float) -> Tensor:
    """``Beta(theta; a, b) = theta^(a - 1) (1 - theta)^(b - 1) / B(a, b)`` for ``theta`` in ``(0, 1)``."""
    log_unnormalised = (a - 1.0) * theta.log() + (b - 1.0) * torch.log1p(-theta)
    return (log_unnormalised - log_beta_function(a, b)).exp()


def sample_coin_flips(fairness: float, num_flips: int, generator: torch.Generator) -> Tensor:
    """``num_flips`` flips of a coin that lands heads with probability ``fairness``: boolean ``(N,)``."""
    return torch.rand(num_flips, generator=generator, dtype=DTYPE) < fairness


def coin_posterior(num_heads: int, num_tails: int, prior_a: float = COIN_PRIOR_A,
                   prior_b: float = COIN_PRIOR_B) -> tuple[float, float]:
    """The posterior ``p(theta | flips) = Beta(a + heads, b + tails)`` in closed form: ``(a', b')``.

    Prior ``Beta(a, b)`` times likelihood ``theta^heads (1 - theta)^tails`` is again of Beta's
    form (the Beta prior is *conjugate* to the Bernoulli likelihood), so Bayes' rule reduces to
    counting: every head adds one to ``a``, every tail one to ``b``.
    """
    return prior_a + num_heads, prior_b + num_tails


def coin_log_evidence(num_heads: int, num_tails: int, prior_a: float = COIN_PRIOR_A,
                      prior_b: float = COIN_PRIOR_B) -> float:
    """``log p(flips) = log integral p(flips | theta) p(theta) d theta = log B(a + h, b + t) - log B(a, b)``.

    The evidence of Luo (2022) eq. 1 with the fairness as the latent ``z``, in closed form.
    It is the probability of the *sequence* of flips (in its order), not of the number of heads.
    """
    posterior_a, posterior_b = coin_posterior(num_heads, num_tails, prior_a, prior_b)
    return (log_beta_function(posterior_a, posterior_b) - log_beta_function(prior_a, prior_b)).item()


@dataclass(frozen=True)
class GridPosterior:
    """Bayes' rule on a grid of fairness values: each cell is one discrete hypothesis.

    ``fairness``: ``(G,)`` cell centres in ``(0, 1)``; ``density``: ``(G,)`` the posterior density
    there (the posterior mass divided by the cell width); ``log_evidence``: ``log p(flips)``.
    """

    fairness: Tensor
    density: Tensor
    log_evidence: float


def coin_posterior_on_grid(num_heads: int, num_tails: int, num_cells: int = 2000,
                           prior_a: float = COIN_PRIOR_A, prior_b: float = COIN_PRIOR_B) -> GridPosterior:
    """The fairness posterior by brute force: cut ``[0, 1]`` into ``num_cells`` hypotheses and apply Bayes' rule.

    Prior mass ``P(cell) ~= Beta(centre; a, b) / G``, likelihood ``centre^heads (1 - centre)^tails``;
    :func:`bayes_posterior` and :func:`bayes_evidence` do the rest, exactly as for the
    colour-blindness example. No conjugacy needed: this works for any prior.
    """
    cell_width = 1.0 / num_cells
    fairness = (torch.arange(num_cells, dtype=DTYPE) + 0.5) * cell_width
    prior_mass = beta_density(fairness, prior_a, prior_b) * cell_width
    prior_mass = prior_mass / prior_mass.sum()  # the midpoint rule's mass, made to sum to one exactly
    # Rescaled by the likelihood's largest value so that many flips cannot underflow to 0.
    log_likelihood = num_heads * fairness.log() + num_tails * torch.log1p(-fairness)
    scale = log_likelihood.max()
    likelihood = (log_likelihood - scale).exp()
    return GridPosterior(
        fairness=fairness,
        density=bayes_posterior(prior_mass, likelihood) / cell_width,
        log_evidence=(bayes_evidence(prior_mass, likelihood).log() + scale).item(),
    )


# --------------------------------------------------------------------------------------
# 5. Monte Carlo expectations
# --------------------------------------------------------------------------------------

Sampler = Callable[[Sequence[int], torch.Generator], Tensor]


def sample_standard_normal(shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Samples of ``X ~ N(0, 1)`` with the given shape (float64)."""
    return torch.randn(tuple(shape), generator=generator, dtype=DTYPE)


def monte_carlo_expectation(
    function: Callable[[Tensor], Tensor],
    sampler: Sampler,
    num_samples: int,
    generator: torch.Generator,
) -> MonteCarloEstimate:
    """``E_p[f(X)] ~= (1/N) sum_i f(x_i)`` with ``x_i ~ p`` drawn by ``sampler``.

    The estimate is unbiased, and its standard error is ``std(f(X)) / sqrt(N)``: halving
    the error costs four times the samples. A VAE estimates its ELBO this way while training.
    """
    samples = sampler((num_samples,), generator)
    return MonteCarloEstimate.from_samples(function(samples))


def monte_carlo_rms_errors(
    function: Callable[[Tensor], Tensor],
    sampler: Sampler,
    true_value: float,
    sample_sizes: Sequence[int],
    num_trials: int,
    generator: torch.Generator,
) -> Tensor:
    """Root-mean-square error of the N-sample Monte Carlo estimate, for each N.

    For every ``N`` in ``sample_sizes``, repeat the estimate ``num_trials`` times and return
    ``sqrt(mean_trials (estimate - true_value)^2)``. Theory says this is
    ``std(f(X)) / sqrt(N)``. Returns shape ``(len(sample_sizes),)``.
    """
    rms_errors = []
    for num_samples in sample_sizes:
        samples = sampler((num_trials, num_samples), generator)
        estimates = function(samples).mean(dim=1)  # one estimate per trial
        rms_errors.append((estimates - true_value).square().mean().sqrt())
    return torch.stack(rms_errors)


def log_log_slope(x: Tensor, y: Tensor) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (``y ~ x^slope``).

    For Monte Carlo error against sample size the slope should be -1/2.
    """
    log_x, log_y = x.to(DTYPE).log(), y.to(DTYPE).log()
    centred_x = log_x - log_x.mean()
    return ((centred_x * (log_y - log_y.mean())).sum() / centred_x.square().sum()).item()


# --------------------------------------------------------------------------------------
# 6. Gaussians and the KL divergence
# --------------------------------------------------------------------------------------

# gaussian_log_density, sample_normal and the closed-form kl_normal come from
# minisd.distributions (imported above); here they are checked against sampling.


def kl_normal_monte_carlo(
    mean_q: Tensor,
    logvar_q: Tensor,
    mean_p: Tensor,
    logvar_p: Tensor,
    num_samples: int,
    generator: torch.Generator,
) -> MonteCarloEstimate:
    """Elementwise Monte Carlo estimate of ``KL(q || p) = E_{z ~ q}[log q(z) - log p(z)]``.

    Draws ``num_samples`` reparameterised samples from ``q`` for every element; the result
    has one value and one standard error per element of the broadcast argument shape.
    This is how a KL is estimated when no closed form exists.
    """
    z = sample_normal(mean_q, logvar_q, num_samples, generator)
    log_ratio = gaussian_log_density(z, mean_q, logvar_q) - gaussian_log_density(z, mean_p, logvar_p)
    return MonteCarloEstimate.from_samples(log_ratio)


@dataclass(frozen=True)
class Gaussian:
    """A multivariate Gaussian ``N(mean, covariance)`` with a full covariance matrix.

    ``mean``: ``(d,)``; ``covariance``: ``(d, d)``, symmetric positive definite. Either may
    carry leading batch dimensions, ``(..., d)`` and ``(..., d, d)``, to hold a batch of
    Gaussians: the KL and ELBO functions below broadcast over them.
    """

    mean: Tensor
    covariance: Tensor

    @property
    def dim(self) -> int:
        """The dimension ``d``."""
        return self.mean.shape[-1]

    def log_density(self, z: Tensor) -> Tensor:
        """``log N(z; mean, covariance)`` for ``z`` of shape ``(..., d)``; returns ``(...)``."""
        return multivariate_normal_log_density(z, self.mean, self.covariance)

    def sample(self, num_samples: int, generator: torch.Generator) -> Tensor:
        """Reparameterised samples ``z = mean + L eps`` with ``L L^T = covariance``; ``(num_samples, d)``.

        The full-covariance version of the reparameterisation trick (Luo (2022), sec. "Variational
        Autoencoders"). Needs a single Gaussian, not a batch.
        """
        if self.mean.dim() != 1 or self.covariance.dim() != 2:
            raise ValueError("sample() needs a single Gaussian: mean (d,), covariance (d, d)")
        cholesky = torch.linalg.cholesky(self.covariance)
        noise = torch.randn((num_samples, self.dim), generator=generator, dtype=self.mean.dtype)
        return self.mean + noise @ cholesky.T


def _log_det_from_cholesky(cholesky: Tensor) -> Tensor:
    """``log det(L L^T) = 2 sum_i log L_ii`` for a lower-triangular Cholesky factor ``L``."""
    return 2.0 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def multivariate_normal_log_density(x: Tensor, mean: Tensor, covariance: Tensor) -> Tensor:
    """``log N(x; mean, Sigma) = -1/2 [d log 2pi + log det Sigma + (x - mean)^T Sigma^-1 (x - mean)]``.

    Args:
        x: ``(..., d)`` points.
        mean: ``(d,)`` or broadcastable to ``x``.
        covariance: ``(d, d)`` symmetric positive definite.

    Returns:
        ``(...)`` log densities.
    """
    dim = x.shape[-1]
    cholesky = torch.linalg.cholesky(covariance)
    # Solving L w = (x - mean) gives |w|^2 = (x - mean)^T Sigma^-1 (x - mean) without an inverse.
    offset = (x - mean).unsqueeze(-1)
    whitened = torch.linalg.solve_triangular(cholesky, offset, upper=False).squeeze(-1)
    mahalanobis = whitened.square().sum(-1)
    return -0.5 * (dim * LOG_TWO_PI + _log_det_from_cholesky(cholesky) + mahalanobis)


def kl_multivariate_normal(q: Gaussian, p: Gaussian) -> Tensor:
    """``KL(q || p)`` between full-covariance Gaussians, in closed form.

    ``KL = 1/2 [tr(Sigma_p^-1 Sigma_q) + (mu_p - mu_q)^T Sigma_p^-1 (mu_p - mu_q) - d
    + log det Sigma_p - log det Sigma_q]``

    Returns a scalar for single Gaussians, or the broadcast batch shape ``(...)``.
    """
    cholesky_p = torch.linalg.cholesky(p.covariance)
    cholesky_q = torch.linalg.cholesky(q.covariance)
    # tr(Sigma_p^-1 Sigma_q) = |L_p^-1 L_q|_F^2
    trace_term = torch.linalg.solve_triangular(cholesky_p, cholesky_q, upper=False).square().sum((-2, -1))
    mean_offset = (p.mean - q.mean).unsqueeze(-1)
    mahalanobis = torch.linalg.solve_triangular(cholesky_p, mean_offset, upper=False).square().sum((-2, -1))
    log_det_ratio = _log_det_from_cholesky(cholesky_p) - _log_det_from_cholesky(cholesky_q)
    return 0.5 * (trace_term + mahalanobis - q.dim + log_det_ratio)


# --------------------------------------------------------------------------------------
# 7. The ELBO on a latent-variable model whose evidence is known exactly
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearGaussianModel:
    """``z ~ N(0, I_d)``, ``x | z ~ N(W z + b, s^2 I_D)``: a VAE decoder that is linear.

    Because everything is linear and Gaussian, the integral ``p(x) = integral p(x|z) p(z) dz``
    (Luo (2022) eq. 1) and the posterior ``p(z | x)`` have closed forms, so the ELBO's gap
    can be measured instead of argued about.

    ``weight``: ``(D, d)``; ``bias``: ``(D,)``; ``noise_std``: ``s``.
    """

    weight: Tensor
    bias: Tensor
    noise_std: float

    @property
    def latent_dim(self) -> int:
        """``d``, the dimension of ``z``."""
        return self.weight.shape[1]

    @property
    def data_dim(self) -> int:
        """``D``, the dimension of ``x``."""
        return self.weight.shape[0]


def make_linear_gaussian_model(
    latent_dim: int,
    data_dim: int,
    noise_std: float,
    generator: torch.Generator,
    column_overlap: float = 0.0,
) -> LinearGaussianModel:
    """A model with random ``W`` (``(D, d)``) and standard-normal ``b`` (``(D,)``).

    ``W = sqrt(1 - overlap) G + sqrt(overlap) g 1^T`` with ``G`` and ``g`` standard normal, so
    each entry is standard normal and different columns have correlation ``column_overlap``.
    Overlapping columns let different latents explain the same direction of ``x``
    ("explaining away"), which correlates them in the posterior ``p(z | x)``.
    """
    if not 0.0 <= column_overlap < 1.0:
        raise ValueError(f"column_overlap must be in [0, 1), got {column_overlap}")
    independent_part = torch.randn((data_dim, latent_dim), generator=generator, dtype=DTYPE)
    shared_direction = torch.randn((data_dim, 1), generator=generator, dtype=DTYPE)
    weight = math.sqrt(1.0 - column_overlap) * independent_part + math.sqrt(column_overlap) * shared_direction
    bias = torch.randn(data_dim, generator=generator, dtype=DTYPE)
    return LinearGaussianModel(weight=weight, bias=bias, noise_std=noise_std)


def sample_observations(model: LinearGaussianModel, num_samples: int, generator: torch.Generator) -> Tensor:
    """Ancestral samples ``z ~ p(z)``, then ``x ~ p(x | z)``; returns ``x`` of shape ``(num_samples, D)``."""
    z = torch.randn((num_samples, model.latent_dim), generator=generator, dtype=DTYPE)
    noise = torch.randn((num_samples, model.data_dim), generator=generator, dtype=DTYPE)
    return z @ model.weight.T + model.bias + model.noise_std * noise


def standard_normal_prior(latent_dim: int) -> Gaussian:
    """The prior ``p(z) = N(0, I_d)``."""
    return Gaussian(mean=torch.zeros(latent_dim, dtype=DTYPE), covariance=torch.eye(latent_dim, dtype=DTYPE))


def log_likelihood(model: LinearGaussianModel, x: Tensor, z: Tensor) -> Tensor:
    """``log p(x | z) = sum_j log N(x_j; (W z + b)_j, s^2)``.

    ``x``: ``(D,)``; ``z``: ``(..., d)``; returns ``(...)``.
    """
    decoded_mean = z @ model.weight.T + model.bias
    noise_logvar = torch.tensor(2.0 * math.log(model.noise_std), dtype=DTYPE)
    return gaussian_log_density(x, decoded_mean, noise_logvar).sum(-1)


def log_joint(model: LinearGaussianModel, x: Tensor, z: Tensor) -> Tensor:
    """``log p(x, z) = log p(x | z) + log p(z)``; ``x``: ``(D,)``, ``z``: ``(..., d)`` -> ``(...)``."""
    return log_likelihood(model, x, z) + standard_normal_prior(model.latent_dim).log_density(z)


def evidence_covariance(model: LinearGaussianModel) -> Tensor:
    """Covariance of the marginal ``p(x)``: ``W W^T + s^2 I_D``, shape ``(D, D)``.

    ``x = W z + b + s eps`` is a sum of independent Gaussians, so its covariance is the sum.
    """
    return model.weight @ model.weight.T + model.noise_std**2 * torch.eye(model.data_dim, dtype=DTYPE)


def log_evidence(model: LinearGaussianModel, x: Tensor) -> Tensor:
    """The exact evidence ``log p(x) = log N(x; b, W W^T + s^2 I)``; ``x``: ``(..., D)`` -> ``(...)``.

    This is the integral of Luo (2022) eq. 1 done by hand -- the quantity a real VAE
    can only bound.
    """
    return multivariate_normal_log_density(x, model.bias, evidence_covariance(model))


def posterior_precision(model: LinearGaussianModel) -> Tensor:
    """Inverse covariance of ``p(z | x)``: ``Lambda = I_d + W^T W / s^2``, shape ``(d, d)``.

    Prior precision plus the precision the observation adds; it does not depend on ``x``.
    """
    identity = torch.eye(model.latent_dim, dtype=DTYPE)
    return identity + model.weight.T @ model.weight / model.noise_std**2


def true_posterior(model: LinearGaussianModel, x: Tensor) -> Gaussian:
    """The exact posterior ``p(z | x) = N(Lambda^-1 W^T (x - b) / s^2, Lambda^-1)``; ``x``: ``(D,)``.

    Obtained by completing the square in ``log p(x | z) + log p(z)``: Bayes' rule
    (Luo (2022) eq. 2) for a continuous latent.
    """
    covariance = torch.linalg.inv(posterior_precision(model))
    mean = covariance @ model.weight.T @ (x - model.bias) / model.noise_std**2
    return Gaussian(mean=mean, covariance=covariance)


def mean_field_posterior(model: LinearGaussianModel, x: Tensor) -> Gaussian:
    """The best diagonal Gaussian ``q`` for ``p(z | x)``: ``argmin_q KL(q || p(z | x))``.

    For a Gaussian target with precision ``Lambda`` the minimiser keeps the true mean and
    sets ``var_i = 1 / Lambda_ii``. Unless ``Lambda`` is diagonal this ``q`` still leaves a
    gap -- the price of the diagonal encoder every VAE in this project uses.
    """
    variances = 1.0 / posterior_precision(model).diagonal()
    return Gaussian(mean=true_posterior(model, x).mean, covariance=torch.diag(variances))


def expected_log_likelihood(model: LinearGaussianModel, x: Tensor, q: Gaussian) -> Tensor:
    """The reconstruction term ``E_{z ~ q}[log p(x | z)]`` in closed form.

    ``= -D/2 log(2 pi s^2) - (|x - W m - b|^2 + tr(W S W^T)) / (2 s^2)`` for ``q = N(m, S)``:
    the squared error of the mean decoding plus the spread that ``q``'s uncertainty adds.
    ``x``: ``(D,)``; returns a scalar, or ``(...)`` for a batch of ``q``.
    """
    residual = x - q.mean @ model.weight.T - model.bias
    spread = (model.weight @ q.covariance @ model.weight.T).diagonal(dim1=-2, dim2=-1).sum(-1)
    noise_var = model.noise_std**2
    return -0.5 * model.data_dim * math.log(2.0 * math.pi * noise_var) - (
        residual.square().sum(-1) + spread
    ) / (2.0 * noise_var)


def elbo(model: LinearGaussianModel, x: Tensor, q: Gaussian) -> Tensor:
    """The ELBO in closed form: ``E_q[log p(x | z)] - KL(q(z|x) || p(z))`` (Luo (2022) eq. 19).

    Reconstruction minus prior KL -- the VAE objective. ``x``: ``(D,)``; returns a scalar,
    or ``(...)`` for a batch of ``q``.
    """
    prior = standard_normal_prior(model.latent_dim)
    return expected_log_likelihood(model, x, q) - kl_multivariate_normal(q, prior)


def elbo_monte_carlo(
    model: LinearGaussianModel, x: Tensor, q: Gaussian, num_samples: int, generator: torch.Generator
) -> MonteCarloEstimate:
    """The ELBO estimated by sampling: ``E_{z ~ q}[log p(x, z) - log q(z)]`` (Luo (2022) eq. 3's integrand).

    When ``q`` is the true posterior every sample equals ``log p(x)`` exactly, because
    ``p(x, z) / p(z | x) = p(x)`` (Luo (2022) eq. 2): the estimator has zero variance.
    """
    z = q.sample(num_samples, generator)
    return MonteCarloEstimate.from_samples(log_joint(model, x, z) - q.log_density(z))


def elbo_gap(model: LinearGaussianModel, x: Tensor, q: Gaussian) -> Tensor:
    """``log p(x) - ELBO(q)``, which Luo (2022) eq. 15 says equals ``KL(q(z|x) || p(z|x))``."""
    return log_evidence(model, x) - elbo(model, x, q)


# --------------------------------------------------------------------------------------
# 8. Gradients of an expectation: reparameterisation vs score function
# --------------------------------------------------------------------------------------


def quadratic_objective(z: Tensor, target: float = 3.0) -> Tensor:
    """``f(z) = (z - target)^2``, elementwise: a loss with a known expectation under a Gaussian."""
    return (z - target).square()


def quadratic_objective_expectation_gradient(mean: float, log_std: float, target: float = 3.0) -> Tensor:
    """Exact ``(d/d mean, d/d log_std)`` of ``E_{z ~ N(mean, std^2)}[(z - target)^2]``.

    ``E[(z - target)^2] = (mean - target)^2 + std^2``, so the gradient is
    ``(2 (mean - target), 2 std^2)``. Shape ``(2,)``.
    """
    return torch.tensor([2.0 * (mean - target), 2.0 * math.exp(2.0 * log_std)], dtype=DTYPE)


def _per_sample_parameters(mean: float, log_std: float, num_samples: int) -> tuple[Tensor, Tensor]:
    """One leaf copy of ``(mean, log_std)`` per sample.

    Sample ``i`` depends only on copy ``i``, so the gradient of the *sum* over samples with
    respect to the copies is the stack of per-sample gradients: one autograd call gives all
    ``N`` single-sample estimates, whose spread we want to measure.
    """
    means = torch.full((num_samples,), mean, dtype=DTYPE, requires_grad=True)
    log_stds = torch.full((num_samples,), log_std, dtype=DTYPE, requires_grad=True)
    return means, log_stds


def reparameterisation_gradient_samples(
    function: Callable[[Tensor], Tensor],
    mean: float,
    log_std: float,
    num_samples: int,
    generator: torch.Generator,
) -> Tensor:
    """Single-sample reparameterisation estimates of ``grad_(mean, log_std) E_{z ~ N(mean, std^2)}[f(z)]``.

    Write ``z = mean + std * eps`` (Luo (2022), sec. "Variational Autoencoders") and differentiate
    through the sample: ``grad = f'(z) * dz/dtheta``, i.e. ``(f'(z), f'(z) * std * eps)``. Needs ``f`` to
    be differentiable. Returns ``(num_samples, 2)``; the mean over rows is the estimate.
    """
    means, log_stds = _per_sample_parameters(mean, log_std, num_samples)
    noise = torch.randn(num_samples, generator=generator, dtype=DTYPE)
    z = means + log_stds.exp() * noise  # the sample is a differentiable function of theta
    grad_mean, grad_log_std = torch.autograd.grad(function(z).sum(), (means, log_stds))
    return torch.stack([grad_mean, grad_log_std], dim=-1)


def score_function_gradient_samples(
    function: Callable[[Tensor], Tensor],
    mean: float,
    log_std: float,
    num_samples: int,
    generator: torch.Generator,
) -> Tensor:
    """Single-sample score-function (REINFORCE) estimates of the same gradient.

    ``grad E_q[f(z)] = E_q[f(z) grad log q(z)]``, using ``grad q = q grad log q``. Only
    ``f``'s *values* are needed (it may be a black box), but the estimate ignores how
    ``f`` changes with ``z`` and is much noisier. Returns ``(num_samples, 2)``.
    """
    means, log_stds = _per_sample_parameters(mean, log_std, num_samples)
    noise = torch.randn(num_samples, generator=generator, dtype=DTYPE)
    z = mean + math.exp(log_std) * noise  # a plain sample: no gradient path to theta
    log_q = gaussian_log_density(z, means, 2.0 * log_stds)
    score_mean, score_log_std = torch.autograd.grad(log_q.sum(), (means, log_stds))
    function_values = function(z)
    return torch.stack([function_values * score_mean, function_values * score_log_std], dim=-1)
