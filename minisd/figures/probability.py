"""Figures and numbers for chapter 1 (``docs/01-probability.md``).

``probability_numbers(seed)`` computes every number the chapter quotes and
``make_probability_figures(out_dir, seed)`` draws its eight figures. Both run the same
experiment functions below, with the same sizes and seeds, so the text, the figures and
what a reader reproduces always agree.

Reproduce with ``minisd figures probability --out DIR`` or
``python -c "from minisd.figures.probability import probability_numbers; print(probability_numbers())"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from minisd import probability as prob
from minisd.outputs import check_writable, make_parent

# Experiment sizes: large enough for clean pictures, small enough for a 2-core CPU.
# Section 1.1: a mass function and two densities, one of them taller than 1.
BINOMIAL_TRIALS, BINOMIAL_PROBABILITY = 10, 0.3
NARROW_NORMAL_STD = 0.1
UNIFORM_LOW, UNIFORM_HIGH = 0.0, 0.5

# Section 1.2: heights of 200,000 simulated father-son pairs.
NUM_HEIGHT_PAIRS = 200_000
TALL_CM = 185.0  # the event "taller than 185 cm"
GIVEN_PARENT_CM, PARENT_WINDOW_CM = 190.0, 1.0  # condition on a parent within 1 cm of 190 cm

# Section 1.4: a coin of fairness 0.7, flipped 100 times, with a uniform prior on the fairness.
COIN_FAIRNESS, COIN_NUM_FLIPS = 0.7, 100
COIN_SHOWN_FLIPS = (0, 1, 5, 20, 100)

NUM_PEOPLE = 200_000

MONTE_CARLO_SAMPLE_SIZES = tuple(2**k for k in range(2, 13))  # 4 .. 4096
MONTE_CARLO_TRIALS = 400

KL_MEAN_SHIFTS = tuple(0.25 * k for k in range(13))  # 0 .. 3
KL_Q_STD, KL_P_STD = 0.5, 1.0
KL_NUM_SAMPLES = 4000
KL_REPORTED_SHIFT = 1.0

LATENT_DIM, DATA_DIM, NOISE_STD, COLUMN_OVERLAP = 2, 5, 0.5, 0.8
ELBO_SHIFTS = tuple(-2.5 + 0.05 * k for k in range(101))  # q's mean offset, in posterior stds
ELBO_REPORTED_SHIFT = 1.0
ELBO_NUM_SAMPLES = 1000

GRADIENT_MEAN, GRADIENT_LOG_STD, GRADIENT_TARGET = 1.0, 0.0, 3.0
GRADIENT_NUM_SAMPLES = 100_000
GRADIENT_SAMPLE_SIZES = tuple(4**k for k in range(6))  # 1 .. 1024
GRADIENT_TRIALS = 200

FIGURE_DPI = 120
REPARAMETERISATION_COLOUR, SCORE_FUNCTION_COLOUR = "tab:blue", "tab:orange"


def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent random stream per experiment, so changing one leaves the others' numbers alone."""
    return torch.Generator().manual_seed(1000 * seed + stream)


def _nearest_index(grid: Sequence[float], value: float) -> int:
    """Index of the grid point closest to ``value`` (grids built by arithmetic are not exact)."""
    return min(range(len(grid)), key=lambda index: abs(grid[index] - value))


# --------------------------------------------------------------------------------------
# The eight experiments (shared by the numbers and the figures)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DensityResult:
    """A mass function (sums to 1) and two densities that exceed 1 yet integrate to 1."""

    binomial: Tensor  # (n + 1,) P(K = k)
    normal_peak: float  # N(0; 0, 0.1^2)
    normal_integral: float
    uniform_height: float  # the density of Uniform(0, 0.5)
    uniform_integral: float


def density_experiment() -> DensityResult:
    """Sum a binomial pmf; integrate N(0, 0.1^2) over +-10 std and Uniform(0, 0.5) over its support."""
    normal = partial(prob.normal_density, mean=0.0, std=NARROW_NORMAL_STD)
    uniform = partial(prob.uniform_density, low=UNIFORM_LOW, high=UNIFORM_HIGH)
    return DensityResult(
        binomial=prob.binomial_pmf(BINOMIAL_TRIALS, BINOMIAL_PROBABILITY),
        normal_peak=normal(torch.zeros((), dtype=prob.DTYPE)).item(),
        normal_integral=prob.integrate_density(normal, -10 * NARROW_NORMAL_STD, 10 * NARROW_NORMAL_STD).item(),
        uniform_height=uniform(torch.tensor(0.25, dtype=prob.DTYPE)).item(),
        uniform_integral=prob.integrate_density(uniform, UNIFORM_LOW, UNIFORM_HIGH).item(),
    )


@dataclass(frozen=True)
class HeightsResult:
    """Sampled (parent, child) heights; marginal, conditional and joint probabilities, counted and exact."""

    joint: prob.Gaussian
    heights: Tensor  # (N, 2) parent, child in cm
    marginal_counted: prob.MonteCarloEstimate  # P(child > 185)
    marginal_exact: float
    conditional_counted: prob.MonteCarloEstimate  # P(child > 185 | parent ~= 190)
    conditional_exact: float
    both_counted: prob.MonteCarloEstimate  # P(parent > 185, child > 185)
    both_exact: float
    both_if_independent: float  # P(parent > 185) P(child > 185)


def heights_experiment(seed: int) -> HeightsResult:
    """``NUM_HEIGHT_PAIRS`` father-son pairs: count a marginal, a conditional and a joint probability."""
    joint = prob.heights_distribution()
    heights = joint.sample(NUM_HEIGHT_PAIRS, _generator(seed, 9))
    parent, child = heights[:, 0], heights[:, 1]
    near_given = (parent - GIVEN_PARENT_CM).abs() < PARENT_WINDOW_CM
    marginal_exact = prob.normal_probability_above(TALL_CM, *prob.gaussian_marginal(joint, 1)).item()
    parent_tall_exact = prob.normal_probability_above(TALL_CM, *prob.gaussian_marginal(joint, 0)).item()
    conditional = prob.gaussian_conditional(joint, torch.tensor(GIVEN_PARENT_CM, dtype=prob.DTYPE))
    return HeightsResult(
        joint=joint,
        heights=heights,
        marginal_counted=prob.probability_by_counting(child > TALL_CM),
        marginal_exact=marginal_exact,
        conditional_counted=prob.conditional_probability_by_counting(child > TALL_CM, near_given),
        conditional_exact=prob.normal_probability_above(TALL_CM, *conditional).item(),
        both_counted=prob.probability_by_counting((parent > TALL_CM) & (child > TALL_CM)),
        both_exact=prob.probability_both_above(joint, TALL_CM),
        both_if_independent=parent_tall_exact * marginal_exact,
    )


@dataclass(frozen=True)
class CoinResult:
    """Flips of a coin of hidden fairness; posteriors and evidence in closed form and on a grid."""

    flips: Tensor  # (COIN_NUM_FLIPS,) bool, True = heads
    closed_form_log_evidence: Tensor  # (COIN_NUM_FLIPS + 1,) log p(first n flips), n = 0 .. N
    grid_log_evidence: Tensor  # (COIN_NUM_FLIPS + 1,)
    grid_posteriors: dict[int, prob.GridPosterior]  # after n flips, for n in COIN_SHOWN_FLIPS


def _heads_and_tails(flips: Tensor) -> tuple[int, int]:
    """``(number of heads, number of tails)`` among boolean ``flips``."""
    heads = int(flips.sum())
    return heads, len(flips) - heads


def coin_experiment(seed: int) -> CoinResult:
    """Flip a coin of fairness ``COIN_FAIRNESS`` ``COIN_NUM_FLIPS`` times; infer the fairness after each flip."""
    flips = prob.sample_coin_flips(COIN_FAIRNESS, COIN_NUM_FLIPS, _generator(seed, 10))
    counts = [_heads_and_tails(flips[:n]) for n in range(COIN_NUM_FLIPS + 1)]
    return CoinResult(
        flips=flips,
        closed_form_log_evidence=torch.tensor([prob.coin_log_evidence(*c) for c in counts], dtype=prob.DTYPE),
        grid_log_evidence=torch.tensor(
            [prob.coin_posterior_on_grid(*c).log_evidence for c in counts], dtype=prob.DTYPE
        ),
        grid_posteriors={n: prob.coin_posterior_on_grid(*counts[n]) for n in COIN_SHOWN_FLIPS},
    )


@dataclass(frozen=True)
class BayesResult:
    """Exact posterior, the simulated population, and the posterior estimated by counting it."""

    exact_posterior: Tensor  # (2,) P(male | cb), P(female | cb)
    population: prob.Population
    counted: prob.MonteCarloEstimate


def bayes_experiment(seed: int) -> BayesResult:
    """Bayes' rule on the colour-blindness example, exactly and by counting ``NUM_PEOPLE`` people."""
    population = prob.simulate_population(NUM_PEOPLE, _generator(seed, 1))
    return BayesResult(
        exact_posterior=prob.colour_blindness_posterior(),
        population=population,
        counted=prob.posterior_by_counting(population),
    )


@dataclass(frozen=True)
class MonteCarloResult:
    """RMS error of the Monte Carlo estimate of E[X^2] at each sample size, and the fitted slope."""

    sample_sizes: Tensor  # (K,)
    rms_errors: Tensor  # (K,) measured
    theory_rms_errors: Tensor  # (K,) sqrt(Var[X^2] / N) = sqrt(2 / N)
    slope: float  # of log rms_errors against log sample_sizes


def monte_carlo_experiment(seed: int) -> MonteCarloResult:
    """RMS error of the Monte Carlo estimate of ``E[X^2] = 1``, ``X ~ N(0, 1)``, against N."""
    rms_errors = prob.monte_carlo_rms_errors(
        torch.square,
        prob.sample_standard_normal,
        true_value=1.0,
        sample_sizes=MONTE_CARLO_SAMPLE_SIZES,
        num_trials=MONTE_CARLO_TRIALS,
        generator=_generator(seed, 2),
    )
    sample_sizes = torch.tensor(MONTE_CARLO_SAMPLE_SIZES, dtype=prob.DTYPE)
    return MonteCarloResult(
        sample_sizes=sample_sizes,
        rms_errors=rms_errors,
        theory_rms_errors=(2.0 / sample_sizes).sqrt(),  # Var[X^2] = E[X^4] - E[X^2]^2 = 3 - 1
        slope=prob.log_log_slope(sample_sizes, rms_errors),
    )


@dataclass(frozen=True)
class KlResult:
    """KL in both directions at each mean shift: closed form and Monte Carlo (elementwise over shifts)."""

    mean_shifts: Tensor  # (K,)
    forward_closed: Tensor  # (K,) KL(q || p)
    reverse_closed: Tensor  # (K,) KL(p || q)
    forward_monte_carlo: prob.MonteCarloEstimate
    reverse_monte_carlo: prob.MonteCarloEstimate


def kl_experiment(seed: int) -> KlResult:
    """KL between ``q = N(shift, 0.5^2)`` and ``p = N(0, 1)`` in both directions, two ways."""
    shifts = torch.tensor(KL_MEAN_SHIFTS, dtype=prob.DTYPE)
    q = (shifts, torch.full_like(shifts, 2.0 * math.log(KL_Q_STD)))  # (mean, logvar)
    p = (torch.zeros_like(shifts), torch.full_like(shifts, 2.0 * math.log(KL_P_STD)))
    generator = _generator(seed, 3)
    # kl_normal is elementwise, so one call handles every shift at once.
    return KlResult(
        mean_shifts=shifts,
        forward_closed=prob.kl_normal(*q, *p),
        reverse_closed=prob.kl_normal(*p, *q),
        forward_monte_carlo=prob.kl_normal_monte_carlo(*q, *p, KL_NUM_SAMPLES, generator),
        reverse_monte_carlo=prob.kl_normal_monte_carlo(*p, *q, KL_NUM_SAMPLES, generator),
    )


@dataclass(frozen=True)
class ElboResult:
    """The model, one observation, and ELBO / KL(q || p(z|x)) for two families of q at each shift."""

    model: prob.LinearGaussianModel
    x: Tensor  # (D,) the observation
    posterior: prob.Gaussian
    mean_field: prob.Gaussian
    shifts: Tensor  # (K,) q's mean offset along z_1, in posterior standard deviations
    log_evidence: float
    full_covariance_elbos: Tensor  # (K,) q = N(shifted mean, true posterior covariance)
    full_covariance_kls: Tensor  # (K,) KL(q || p(z|x)) for the same q
    mean_field_elbos: Tensor  # (K,) q = N(shifted mean, mean-field covariance)
    mean_field_kls: Tensor  # (K,)


def shifted_gaussians(gaussian: prob.Gaussian, shifts: Tensor, reference: prob.Gaussian) -> prob.Gaussian:
    """A batch of copies of ``gaussian``, mean moved ``shifts`` (``(K,)``) stds of ``reference`` along ``z_1``.

    Returns a batched ``Gaussian`` with mean ``(K, d)`` and the shared ``(d, d)`` covariance.
    """
    offsets = torch.zeros((len(shifts), gaussian.dim), dtype=gaussian.mean.dtype)
    offsets[:, 0] = shifts * reference.covariance[0, 0].sqrt()
    return prob.Gaussian(mean=gaussian.mean + offsets, covariance=gaussian.covariance)


def elbo_experiment(seed: int) -> ElboResult:
    """ELBO and gap of a linear-Gaussian model as ``q``'s mean slides away from the posterior mean."""
    generator = _generator(seed, 4)
    model = prob.make_linear_gaussian_model(LATENT_DIM, DATA_DIM, NOISE_STD, generator, COLUMN_OVERLAP)
    x = prob.sample_observations(model, 1, generator)[0]
    posterior, mean_field = prob.true_posterior(model, x), prob.mean_field_posterior(model, x)

    shifts = torch.tensor(ELBO_SHIFTS, dtype=prob.DTYPE)

    def elbos_and_kls(family: prob.Gaussian) -> tuple[Tensor, Tensor]:
        """ELBO and KL(q || posterior), shape ``(K,)``, for ``family`` moved to every shift."""
        # One batched Gaussian for all shifts: a few large calls instead of hundreds of tiny ones.
        qs = shifted_gaussians(family, shifts, posterior)
        return prob.elbo(model, x, qs), prob.kl_multivariate_normal(qs, posterior)

    full_covariance_elbos, full_covariance_kls = elbos_and_kls(posterior)
    mean_field_elbos, mean_field_kls = elbos_and_kls(mean_field)
    return ElboResult(
        model=model,
        x=x,
        posterior=posterior,
        mean_field=mean_field,
        shifts=shifts,
        log_evidence=prob.log_evidence(model, x).item(),
        full_covariance_elbos=full_covariance_elbos,
        full_covariance_kls=full_covariance_kls,
        mean_field_elbos=mean_field_elbos,
        mean_field_kls=mean_field_kls,
    )


@dataclass(frozen=True)
class GradientResult:
    """The exact gradient and single-sample estimates from both estimators."""

    true_gradient: Tensor  # (2,) d/d mean, d/d log_std
    reparameterisation: Tensor  # (N, 2) single-sample estimates
    score_function: Tensor  # (N, 2)


def _objective(z: Tensor) -> Tensor:
    """The chapter's ``f(z) = (z - 3)^2``."""
    return prob.quadratic_objective(z, GRADIENT_TARGET)


def gradient_experiment(seed: int) -> GradientResult:
    """``GRADIENT_NUM_SAMPLES`` single-sample gradient estimates from each estimator."""
    generator = _generator(seed, 5)
    arguments = (_objective, GRADIENT_MEAN, GRADIENT_LOG_STD, GRADIENT_NUM_SAMPLES, generator)
    return GradientResult(
        true_gradient=prob.quadratic_objective_expectation_gradient(
            GRADIENT_MEAN, GRADIENT_LOG_STD, GRADIENT_TARGET
        ),
        reparameterisation=prob.reparameterisation_gradient_samples(*arguments),
        score_function=prob.score_function_gradient_samples(*arguments),
    )


def gradient_rms_errors(
    estimator: Callable[..., Tensor], true_value: float, generator: torch.Generator
) -> Tensor:
    """RMS error of the N-sample averaged d/d-mean estimate, for each N in ``GRADIENT_SAMPLE_SIZES``."""

    def sampler(shape: Sequence[int], sampler_generator: torch.Generator) -> Tensor:
        """``shape`` single-sample d/d-mean estimates from ``estimator``."""
        single_sample_estimates = estimator(
            _objective, GRADIENT_MEAN, GRADIENT_LOG_STD, math.prod(shape), sampler_generator
        )
        return single_sample_estimates[:, 0].reshape(tuple(shape))

    # An averaged gradient estimate is a Monte Carlo estimate like any other.
    return prob.monte_carlo_rms_errors(
        lambda estimates: estimates, sampler, true_value, GRADIENT_SAMPLE_SIZES, GRADIENT_TRIALS, generator
    )


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------


def _density_numbers(result: DensityResult) -> dict[str, float]:
    """Section 1.1's numbers."""
    return {
        "binomial_pmf_sum": result.binomial.sum().item(),
        "binomial_pmf_max": result.binomial.max().item(),
        "narrow_normal_peak_density": result.normal_peak,
        "narrow_normal_integral": result.normal_integral,
        "uniform_density_height": result.uniform_height,
        "uniform_density_integral": result.uniform_integral,
    }


def _heights_numbers(result: HeightsResult) -> dict[str, float | int]:
    """Section 1.2's numbers."""
    return {
        "heights_num_pairs": NUM_HEIGHT_PAIRS,
        "heights_marginal_exact": result.marginal_exact,
        "heights_marginal_counted": result.marginal_counted.value.item(),
        "heights_marginal_counted_standard_error": result.marginal_counted.standard_error.item(),
        "heights_num_near_given_parent": result.conditional_counted.num_samples,
        "heights_conditional_exact": result.conditional_exact,
        "heights_conditional_counted": result.conditional_counted.value.item(),
        "heights_conditional_counted_standard_error": result.conditional_counted.standard_error.item(),
        "heights_both_tall_exact": result.both_exact,
        "heights_both_tall_counted": result.both_counted.value.item(),
        "heights_both_tall_counted_standard_error": result.both_counted.standard_error.item(),
        "heights_both_tall_if_independent": result.both_if_independent,
    }


def _coin_numbers(result: CoinResult) -> dict[str, float | int]:
    """Section 1.4's numbers, after all ``COIN_NUM_FLIPS`` flips."""
    heads, tails = _heads_and_tails(result.flips)
    posterior_a, posterior_b = prob.coin_posterior(heads, tails)
    grid = result.grid_posteriors[COIN_NUM_FLIPS]
    cell_width = 1.0 / len(grid.fairness)
    closed_form_density = prob.beta_density(grid.fairness, posterior_a, posterior_b)
    return {
        "coin_num_flips": COIN_NUM_FLIPS,
        "coin_num_heads": heads,
        "coin_posterior_a": posterior_a,
        "coin_posterior_b": posterior_b,
        "coin_posterior_mean": posterior_a / (posterior_a + posterior_b),
        "coin_grid_posterior_mean": (grid.fairness * grid.density).sum().item() * cell_width,
        "coin_grid_density_max_abs_error": (grid.density - closed_form_density).abs().max().item(),
        "coin_log_evidence": result.closed_form_log_evidence[-1].item(),
        "coin_grid_log_evidence": result.grid_log_evidence[-1].item(),
        "coin_log_evidence_max_abs_error": (result.grid_log_evidence - result.closed_form_log_evidence)
        .abs().max().item(),
        "coin_log_likelihood_if_fair": COIN_NUM_FLIPS * math.log(0.5),
    }


def _bayes_numbers(result: BayesResult) -> dict[str, float | int]:
    """Section 1.3's numbers."""
    return {
        "bayes_posterior_male_given_colour_blind": result.exact_posterior[0].item(),
        "bayes_num_people": NUM_PEOPLE,
        "bayes_num_colour_blind": result.counted.num_samples,
        "bayes_counted_posterior": result.counted.value.item(),
        "bayes_counted_standard_error": result.counted.standard_error.item(),
    }


def _monte_carlo_numbers(result: MonteCarloResult) -> dict[str, float]:
    """Section 1.5's numbers."""
    numbers = {"monte_carlo_log_log_slope": result.slope}
    for num_samples in (16, 4096):
        index = MONTE_CARLO_SAMPLE_SIZES.index(num_samples)
        numbers[f"monte_carlo_rms_error_n{num_samples}"] = result.rms_errors[index].item()
        numbers[f"monte_carlo_theory_rms_error_n{num_samples}"] = result.theory_rms_errors[index].item()
    return numbers


def _kl_numbers(result: KlResult) -> dict[str, float]:
    """Section 1.6's numbers, at a mean shift of ``KL_REPORTED_SHIFT``."""
    index = _nearest_index(KL_MEAN_SHIFTS, KL_REPORTED_SHIFT)
    numbers = {}
    for direction, closed, monte_carlo in (
        ("forward", result.forward_closed, result.forward_monte_carlo),
        ("reverse", result.reverse_closed, result.reverse_monte_carlo),
    ):
        numbers[f"kl_{direction}_closed_form"] = closed[index].item()
        numbers[f"kl_{direction}_monte_carlo"] = monte_carlo.value[index].item()
        numbers[f"kl_{direction}_monte_carlo_standard_error"] = monte_carlo.standard_error[index].item()
    return numbers


def _elbo_numbers(result: ElboResult, seed: int) -> dict[str, float]:
    """Section 1.7's numbers; ``seed`` drives the one Monte Carlo ELBO."""
    at_posterior = _nearest_index(ELBO_SHIFTS, 0.0)
    shifted = _nearest_index(ELBO_SHIFTS, ELBO_REPORTED_SHIFT)
    full_covariance_qs = shifted_gaussians(result.posterior, result.shifts, result.posterior)
    shifted_q = prob.Gaussian(full_covariance_qs.mean[shifted], result.posterior.covariance)
    shifted_q_monte_carlo = prob.elbo_monte_carlo(
        result.model, result.x, shifted_q, ELBO_NUM_SAMPLES, _generator(seed, 6)
    )
    all_gaps = result.log_evidence - torch.cat([result.full_covariance_elbos, result.mean_field_elbos])
    all_kls = torch.cat([result.full_covariance_kls, result.mean_field_kls])
    covariance = result.posterior.covariance
    return {
        "elbo_log_evidence": result.log_evidence,
        "elbo_at_true_posterior": result.full_covariance_elbos[at_posterior].item(),
        "elbo_at_shifted_q": result.full_covariance_elbos[shifted].item(),
        "elbo_at_shifted_q_monte_carlo": shifted_q_monte_carlo.value.item(),
        "elbo_at_shifted_q_monte_carlo_standard_error": shifted_q_monte_carlo.standard_error.item(),
        "elbo_gap_at_shifted_q": result.log_evidence - result.full_covariance_elbos[shifted].item(),
        "kl_shifted_q_to_true_posterior": result.full_covariance_kls[shifted].item(),
        "elbo_gap_minus_kl_max_abs": (all_gaps - all_kls).abs().max().item(),
        "elbo_gap_at_mean_field_optimum": result.log_evidence - result.mean_field_elbos[at_posterior].item(),
        "elbo_posterior_correlation": (covariance[0, 1] / covariance.diagonal().prod().sqrt()).item(),
    }


def _gradient_numbers(result: GradientResult) -> dict[str, float | int]:
    """Section 1.8's numbers: per-estimator means and per-sample variances."""
    numbers: dict[str, float | int] = {"gradient_num_samples": GRADIENT_NUM_SAMPLES}
    variances = {}
    for estimator, samples in (
        ("reparameterisation", result.reparameterisation),
        ("score_function", result.score_function),
    ):
        variances[estimator] = samples.var(0)
        for index, parameter in enumerate(("d_mean", "d_log_std")):
            numbers[f"gradient_true_{parameter}"] = result.true_gradient[index].item()
            numbers[f"gradient_{estimator}_mean_{parameter}"] = samples[:, index].mean().item()
            numbers[f"gradient_{estimator}_variance_{parameter}"] = variances[estimator][index].item()
    ratios = variances["score_function"] / variances["reparameterisation"]
    numbers["gradient_variance_ratio_d_mean"] = ratios[0].item()
    numbers["gradient_variance_ratio_d_log_std"] = ratios[1].item()
    return numbers


def probability_numbers(seed: int = 0) -> dict[str, float | int]:
    """Every number quoted in ``docs/01-probability.md``, computed from scratch (about a second)."""
    return {
        **_density_numbers(density_experiment()),
        **_heights_numbers(heights_experiment(seed)),
        **_bayes_numbers(bayes_experiment(seed)),
        **_coin_numbers(coin_experiment(seed)),
        **_monte_carlo_numbers(monte_carlo_experiment(seed)),
        **_kl_numbers(kl_experiment(seed)),
        **_elbo_numbers(elbo_experiment(seed), seed),
        **_gradient_numbers(gradient_experiment(seed)),
    }


# --------------------------------------------------------------------------------------
# Figures (matplotlib.figure.Figure draws without pyplot: no global backend state, so
# this works headless and leaves a notebook's backend alone)
# --------------------------------------------------------------------------------------


def _save(figure: Figure, path: Path) -> Path:
    """Lay out and write ``figure`` as a PNG at ``path``."""
    figure.tight_layout()
    figure.savefig(make_parent(path), dpi=FIGURE_DPI)
    return path


def plot_mass_and_density(result: DensityResult, path: Path) -> Path:
    """A pmf whose bars sum to 1, and two densities taller than 1 whose areas are 1."""
    figure = Figure(figsize=(13, 4.0))
    mass, normal, uniform = figure.subplots(1, 3)

    mass.bar(range(BINOMIAL_TRIALS + 1), result.binomial.tolist(), color="tab:gray")
    mass.set_xlabel("k heads")
    mass.set_ylabel("P(K = k)")
    mass.set_ylim(0, 1.05)
    mass.set_title(
        f"mass: Binomial({BINOMIAL_TRIALS}, {BINOMIAL_PROBABILITY})\n"
        f"every bar ≤ 1, the bars sum to {result.binomial.sum().item():.3f}"
    )

    x = torch.linspace(-0.5, 0.5, 1001, dtype=prob.DTYPE)
    density = prob.normal_density(x, 0.0, NARROW_NORMAL_STD)
    normal.plot(x, density, color="tab:blue")
    normal.fill_between(x, density, color="tab:blue", alpha=0.2)
    normal.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    normal.set_xlabel("x")
    normal.set_ylabel("p(x)")
    normal.set_title(
        f"density: N(0, {NARROW_NORMAL_STD}²), peak {result.normal_peak:.2f}\n"
        f"area {result.normal_integral:.6f}"
    )

    x = torch.linspace(-0.25, 0.75, 1001, dtype=prob.DTYPE)
    density = prob.uniform_density(x, UNIFORM_LOW, UNIFORM_HIGH)
    uniform.plot(x, density, color="tab:green")
    uniform.fill_between(x, density, color="tab:green", alpha=0.2)
    uniform.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    uniform.set_xlabel("x")
    uniform.set_ylabel("p(x)")
    uniform.set_ylim(0, 2.4)
    uniform.set_title(
        f"density: Uniform({UNIFORM_LOW:g}, {UNIFORM_HIGH:g}), height {result.uniform_height:g}\n"
        f"area {result.uniform_integral:.6f}"
    )
    return _save(figure, path)


def plot_heights(result: HeightsResult, path: Path, num_shown: int = 5000) -> Path:
    """Left: samples of the joint, the conditioning slice marked. Right: marginal vs conditional of the child."""
    figure = Figure(figsize=(12, 4.8))
    scatter, histograms = figure.subplots(1, 2)
    parent, child = result.heights[:, 0], result.heights[:, 1]
    near_given = (parent - GIVEN_PARENT_CM).abs() < PARENT_WINDOW_CM

    shown = slice(0, num_shown)
    scatter.scatter(parent[shown], child[shown], s=2, color="tab:gray", alpha=0.5,
                    label=f"{num_shown:,} of {NUM_HEIGHT_PAIRS:,} sampled pairs")
    scatter.scatter(parent[near_given][:num_shown], child[near_given][:num_shown], s=2, color="tab:red",
                    label=f"parent within {PARENT_WINDOW_CM:g} cm of {GIVEN_PARENT_CM:g} cm")
    regression_x = torch.linspace(150.0, 205.0, 2, dtype=prob.DTYPE)
    scatter.plot(regression_x, prob.gaussian_conditional(result.joint, regression_x)[0], color="black",
                 label="E[child | parent]  (slope 0.5)")
    scatter.axhline(TALL_CM, color="tab:blue", linestyle="--", linewidth=1, label=f"child > {TALL_CM:g} cm")
    scatter.set_xlabel("parent's height (cm)")
    scatter.set_ylabel("child's height (cm)")
    scatter.set_title(f"joint p(parent, child): correlation {prob.HEIGHT_CORRELATION}")
    scatter.legend(fontsize=8, loc="upper left")

    bins = torch.linspace(145.0, 210.0, 66)
    x = torch.linspace(145.0, 210.0, 400, dtype=prob.DTYPE)
    conditional_mean, conditional_std = prob.gaussian_conditional(
        result.joint, torch.tensor(GIVEN_PARENT_CM, dtype=prob.DTYPE)
    )
    for name, heights, (mean, std), colour, counted, exact in (
        ("marginal p(child)", child, prob.gaussian_marginal(result.joint, 1), "tab:gray",
         result.marginal_counted, result.marginal_exact),
        (f"conditional p(child | parent ≈ {GIVEN_PARENT_CM:g})", child[near_given],
         (conditional_mean.item(), conditional_std.item()), "tab:red",
         result.conditional_counted, result.conditional_exact),
    ):
        histograms.hist(heights, bins=bins.tolist(), density=True, alpha=0.35, color=colour,
                        label=f"{name}: P(> {TALL_CM:g}) counted {counted.value.item():.3f}, exact {exact:.3f}")
        histograms.plot(x, prob.normal_density(x, mean, std), color=colour)
    histograms.axvline(TALL_CM, color="tab:blue", linestyle="--", linewidth=1)
    histograms.set_xlabel("child's height (cm)")
    histograms.set_ylabel("density (1 / cm)")
    histograms.set_title("knowing the parent moves and narrows the child's distribution")
    histograms.legend(fontsize=8, loc="upper left")
    histograms.set_ylim(0, 0.1)
    return _save(figure, path)


def plot_coin(result: CoinResult, path: Path) -> Path:
    """Left: the fairness posterior after n flips, closed form and grid. Right: log evidence against n."""
    figure = Figure(figsize=(12, 4.6))
    posteriors, evidence = figure.subplots(1, 2)
    colours = ("tab:gray", "tab:purple", "tab:blue", "tab:green", "tab:orange")
    every = 50  # grid markers on every 50th cell, so the line under them stays visible
    for (num_flips, grid), colour in zip(result.grid_posteriors.items(), colours):
        heads, tails = _heads_and_tails(result.flips[:num_flips])
        posterior_a, posterior_b = prob.coin_posterior(heads, tails)
        posteriors.plot(grid.fairness, prob.beta_density(grid.fairness, posterior_a, posterior_b), color=colour,
                        label=f"{num_flips} flips ({heads} heads): Beta({posterior_a:g}, {posterior_b:g})")
        posteriors.plot(grid.fairness[every // 2::every], grid.density[every // 2::every], "o", color=colour,
                        markersize=4, markerfacecolor="none")
    posteriors.axvline(COIN_FAIRNESS, color="black", linestyle="--", linewidth=1,
                       label=f"true fairness {COIN_FAIRNESS}")
    posteriors.set_xlabel(r"fairness $\theta$ = P(heads)")
    posteriors.set_ylabel(r"posterior density p($\theta$ | flips)")
    posteriors.set_title("posterior over the hidden fairness\nlines: closed form; circles: Bayes' rule on a grid")
    posteriors.legend(fontsize=8, loc="upper left")

    num_flips = torch.arange(COIN_NUM_FLIPS + 1)
    evidence.plot(num_flips, result.closed_form_log_evidence, color="tab:orange",
                  label=r"log p(flips) = log B(1 + h, 1 + t), closed form")
    evidence.plot(num_flips[::5], result.grid_log_evidence[::5], "o", color="tab:orange", markersize=4,
                  markerfacecolor="none", label="log p(flips) by Bayes on a grid")
    evidence.plot(num_flips, num_flips * math.log(0.5), "--", color="tab:gray",
                  label=r"log p(flips | $\theta$ = 0.5), a coin known to be fair")
    evidence.set_xlabel("number of flips n")
    evidence.set_ylabel("nats")
    evidence.set_title("the evidence p(flips): the fairness integrated out\nline: closed form; circles: the grid")
    evidence.legend(fontsize=8)
    evidence.grid(True, alpha=0.3)
    return _save(figure, path)


def plot_bayes(result: BayesResult, path: Path) -> Path:
    """Left: prior vs posterior over sex. Right: the counting estimate converging to the exact posterior."""
    figure = Figure(figsize=(11, 4.2))
    bars, running = figure.subplots(1, 2)

    positions, width = [0, 1], 0.38
    prior = prob.colour_blindness_prior_and_likelihood()[0].tolist()
    series = (
        ("prior  P(sex)", prior, -width / 2, "tab:gray", "{:.0%}"),
        ("posterior  P(sex | colour-blind)", result.exact_posterior.tolist(), width / 2, "tab:red", "{:.2%}"),
    )
    for label, values, offset, colour, number_format in series:
        bars.bar([position + offset for position in positions], values, width, label=label, color=colour)
        for position, value in zip(positions, values):
            bars.text(position + offset, value + 0.02, number_format.format(value), ha="center")
    bars.set_xticks(positions, ["male", "female"])
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("probability")
    bars.set_title("Bayes' rule: seeing colour-blindness shifts belief")
    bars.legend(loc="upper right")

    num_colour_blind_seen, estimate = prob.running_posterior_by_counting(result.population)
    people = torch.arange(1, NUM_PEOPLE + 1)
    shown = torch.unique(torch.logspace(2, math.log10(NUM_PEOPLE), 400).long()) - 1  # log-spaced
    exact = result.exact_posterior[0].item()
    # +-2 standard errors of a proportion measured on the colour-blind people seen so far.
    band = 2.0 * (exact * (1.0 - exact) / num_colour_blind_seen[shown].to(prob.DTYPE)).sqrt()
    running.fill_between(
        people[shown], exact - band, exact + band,
        color="tab:red", alpha=0.15, label="exact ± 2 standard errors",
    )
    running.axhline(exact, color="tab:red", linestyle="--", label=f"exact  {exact:.2%}")
    running.plot(
        people[shown], estimate[shown], color="black", linewidth=1.2, label="count among the colour-blind"
    )
    running.set_xscale("log")
    running.set_ylim(0.5, 1.0)
    running.set_xlabel("people simulated")
    running.set_ylabel("estimated P(male | colour-blind)")
    running.set_title(f"Counting converges: {result.counted.value.item():.2%} from {NUM_PEOPLE:,} people")
    running.legend(loc="lower right")
    return _save(figure, path)


def plot_monte_carlo_error(result: MonteCarloResult, path: Path) -> Path:
    """Log-log RMS error of the Monte Carlo estimate of E[X^2] against N, with the 1/sqrt(N) law."""
    figure = Figure(figsize=(6.5, 4.8))
    axes = figure.subplots()
    axes.loglog(
        result.sample_sizes, result.theory_rms_errors, "--", color="tab:gray",
        label=r"theory $\sqrt{\mathrm{Var}[X^2]/N} = \sqrt{2/N}$",
    )
    axes.loglog(
        result.sample_sizes, result.rms_errors, "o", color="tab:blue",
        label=f"measured over {MONTE_CARLO_TRIALS} trials (slope {result.slope:.3f})",
    )
    axes.set_xlabel("number of samples N")
    axes.set_ylabel("RMS error of the N-sample estimate")
    axes.set_title(
        r"Monte Carlo error shrinks like $1/\sqrt{N}$" + "\n" + r"estimating $E[X^2] = 1$, $X \sim N(0, 1)$"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_kl_gaussians(result: KlResult, path: Path) -> Path:
    """KL(q||p) and KL(p||q) against the mean shift: closed form lines, Monte Carlo points."""
    figure = Figure(figsize=(7, 4.8))
    axes = figure.subplots()
    directions = (
        (r"KL(q $\|$ p)", result.forward_closed, result.forward_monte_carlo, "tab:blue"),
        (r"KL(p $\|$ q)", result.reverse_closed, result.reverse_monte_carlo, "tab:orange"),
    )
    for label, closed, monte_carlo, colour in directions:
        axes.plot(result.mean_shifts, closed, color=colour, label=f"{label} closed form")
        axes.errorbar(
            result.mean_shifts, monte_carlo.value, yerr=2 * monte_carlo.standard_error,
            fmt="o", markersize=4, capsize=3, color=colour,
            label=f"{label} Monte Carlo ± 2 SE ({KL_NUM_SAMPLES} samples)",
        )
    axes.set_xlabel(r"mean shift $\delta$")
    axes.set_ylabel("KL divergence (nats)")
    axes.set_title(
        rf"KL between q = N($\delta$, {KL_Q_STD}$^2$) and p = N(0, {KL_P_STD:g}$^2$): not symmetric"
    )
    axes.grid(True, alpha=0.3)
    axes.legend()
    return _save(figure, path)


def plot_elbo_gap(result: ElboResult, path: Path) -> Path:
    """Left: log p(x) and the ELBO as q's mean moves. Right: the gap against KL(q || p(z|x))."""
    figure = Figure(figsize=(12, 4.6))
    bounds, identity = figure.subplots(1, 2)
    families = (
        ("q with the true posterior covariance", result.full_covariance_elbos, result.full_covariance_kls,
         "tab:blue"),
        ("q with the best diagonal covariance", result.mean_field_elbos, result.mean_field_kls, "tab:green"),
    )
    shift_label = r"shift of q's mean along $z_1$ (posterior standard deviations)"

    bounds.axhline(
        result.log_evidence, color="black", linewidth=2, label=f"log p(x) = {result.log_evidence:.3f} (exact)"
    )
    for label, elbos, _, colour in families:
        bounds.plot(result.shifts, elbos, color=colour, label=f"ELBO, {label}")
    bounds.fill_between(
        result.shifts, result.full_covariance_elbos, result.log_evidence,
        color="tab:blue", alpha=0.12, label="gap = KL(q || p(z|x))",
    )
    bounds.set_xlabel(shift_label)
    bounds.set_ylabel("nats")
    bounds.set_title("The ELBO lies below log p(x); it touches only at q = p(z|x)")
    bounds.set_ylim(result.full_covariance_elbos.min().item() - 0.3, result.log_evidence + 0.6)
    bounds.legend(loc="lower center", fontsize=8.5)
    bounds.grid(True, alpha=0.3)

    every = 5  # markers on every 5th point so the line under them stays visible
    for label, elbos, kls, colour in families:
        identity.plot(
            result.shifts, result.log_evidence - elbos, color=colour, label=f"log p(x) − ELBO, {label}"
        )
        identity.plot(
            result.shifts[::every], kls[::every], "o", markersize=5, markerfacecolor="none", color=colour,
            label=f"KL(q || p(z|x)), {label}",
        )
    identity.set_xlabel(shift_label)
    identity.set_ylabel("nats")
    identity.set_title("log p(x) − ELBO = KL(q || p(z|x))   (Luo 2022, eq. 15)")
    identity.legend(loc="upper center", fontsize=8.5)
    identity.grid(True, alpha=0.3)
    return _save(figure, path)


def plot_gradient_estimators(result: GradientResult, rms_errors: dict[str, Tensor], path: Path) -> Path:
    """Left: histograms of single-sample d/d-mean estimates. Right: error of the N-sample average vs N."""
    figure = Figure(figsize=(12, 4.6))
    histogram, convergence = figure.subplots(1, 2)
    true_d_mean = result.true_gradient[0].item()
    estimators = (
        ("reparameterisation", result.reparameterisation[:, 0], REPARAMETERISATION_COLOUR),
        ("score function", result.score_function[:, 0], SCORE_FUNCTION_COLOUR),
    )

    low, high, num_bins = -40.0, 25.0, 130
    bin_width = (high - low) / num_bins
    for name, estimates, colour in estimators:
        # Weights make the bars a density over *all* samples; mass beyond the axes is simply not drawn.
        histogram.hist(
            estimates, bins=num_bins, range=(low, high),
            weights=torch.full_like(estimates, 1.0 / (len(estimates) * bin_width)), alpha=0.55, color=colour,
            label=f"{name}: mean {estimates.mean().item():.3f}, variance {estimates.var().item():.1f}",
        )
    histogram.axvline(true_d_mean, color="black", linestyle="--", label=f"true gradient {true_d_mean:g}")
    histogram.set_yscale("log")
    histogram.set_ylim(1e-5, 10.0)  # headroom above the peak for the legend
    histogram.set_xlabel(r"single-sample estimate of $\partial/\partial\mu\; E[(z-3)^2]$  (tails cut off)")
    histogram.set_ylabel("density (log scale)")
    histogram.set_title(r"Both unbiased, very different spread  ($z \sim N(1, 1)$)")
    histogram.legend(fontsize=8.5, loc="upper left")

    sample_sizes = torch.tensor(GRADIENT_SAMPLE_SIZES, dtype=prob.DTYPE)
    for name, estimates, colour in estimators:
        convergence.loglog(sample_sizes, rms_errors[name], "o", color=colour, label=f"{name}, measured")
        convergence.loglog(
            sample_sizes, (estimates.var() / sample_sizes).sqrt(), "--", color=colour, alpha=0.7,
            label=rf"{name}, $\sqrt{{\mathrm{{variance}}/N}}$",
        )
    convergence.set_xlabel("samples averaged N")
    convergence.set_ylabel(r"RMS error of the $\partial/\partial\mu$ estimate")
    convergence.set_title(f"Same 1/√N rate, different constant ({GRADIENT_TRIALS} trials per N)")
    convergence.grid(True, which="both", alpha=0.3)
    convergence.legend(fontsize=8.5)
    return _save(figure, path)


FIGURE_NAMES = (
    "mass_and_density", "heights", "bayes", "coin", "monte_carlo_error", "kl_gaussians", "elbo_gap",
    "gradient_estimators",
)


def make_probability_figures(out_dir: Path, seed: int = 0, overwrite: bool = False) -> dict[str, Path]:
    """Write the chapter's eight PNGs into ``out_dir``; returns ``{figure name: path}``.

    Existing files are replaced only with ``overwrite=True`` (checked before any work is done).
    """
    paths = {name: check_writable(Path(out_dir) / f"{name}.png", overwrite) for name in FIGURE_NAMES}
    gradients = gradient_experiment(seed)
    true_d_mean = gradients.true_gradient[0].item()
    rms_errors = {
        name: gradient_rms_errors(estimator, true_d_mean, _generator(seed, stream))
        for name, estimator, stream in (
            ("reparameterisation", prob.reparameterisation_gradient_samples, 7),
            ("score function", prob.score_function_gradient_samples, 8),
        )
    }
    return {
        "mass_and_density": plot_mass_and_density(density_experiment(), paths["mass_and_density"]),
        "heights": plot_heights(heights_experiment(seed), paths["heights"]),
        "coin": plot_coin(coin_experiment(seed), paths["coin"]),
        "bayes": plot_bayes(bayes_experiment(seed), paths["bayes"]),
        "monte_carlo_error": plot_monte_carlo_error(monte_carlo_experiment(seed), paths["monte_carlo_error"]),
        "kl_gaussians": plot_kl_gaussians(kl_experiment(seed), paths["kl_gaussians"]),
        "elbo_gap": plot_elbo_gap(elbo_experiment(seed), paths["elbo_gap"]),
        "gradient_estimators": plot_gradient_estimators(gradients, rms_errors, paths["gradient_estimators"]),
    }
