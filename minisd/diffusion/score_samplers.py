"""Samplers of the score's view: the reverse SDE by predictor-corrector, and annealed Langevin dynamics.

Luo (2022), section "Score-based Generative Models": a denoiser is a score, grad log p_t(x) = (alpha_t x0_pred - x) /
sigma_t^2 by Tweedie's formula (:func:`minisd.diffusion.sde.score_from_denoiser`), and a score is enough to sample,
two ways:

- Langevin dynamics, x <- x + a score + sqrt(2 a) z, a Markov chain whose stationary law tends to p_t as the step
  a -> 0. Run at each level of a descending ladder of noise, it is NCSN's annealed Langevin dynamics
  (Song & Ermon 2019, Alg. 1).
- the reverse-time SDE dx = [f(t) x - g(t)^2 score] dt + g(t) dw_bar (Song et al. 2021, eq. 6), with f and g derived
  from the schedule (:class:`minisd.diffusion.sde.SDE`), solved by a numerical step, the *predictor*; Langevin
  steps at the same time, the *corrector*, pull the state back towards p_t where the predictor's error moved it
  (Song et al. 2021, section 4.2 and Algorithms 2-5).

The signature, grid, seeding and callback are those of :mod:`minisd.diffusion.samplers`::

    sample_xxx(denoiser, x, ts, *, cond=None, generator=None, callback=None, **algorithm_args) -> x0

Step i goes from t = ts[i] to s = ts[i + 1]; the step to s = 0 returns the denoised estimate x0_pred = D(x, t),
the "noise removal" NCSNv2 and score_sde end with, so the score is never asked for at sigma = 0.
``callback(dict(step=i, t=s, x=x_s, x0_pred=x0_pred))`` runs after each step, with the estimate of the step's last
score. Noise is drawn from ``torch.randn(..., generator=generator)``, only where a step adds noise. Nothing here
asks which family (VP, sub-VP, VE) the schedule belongs to, nor the shape of ``x`` beyond its batch: ``(B, ...)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from minisd.diffusion.denoiser import Denoiser
from minisd.diffusion.parameterisation import to_x0
from minisd.diffusion.sampling_steps import Callback, denoise, forward_transition, grid_alphas_sigmas
from minisd.diffusion.sde import SDE, score_from_denoiser
from minisd.errors import ConfigError

PREDICTORS = ("reverse_diffusion", "euler_maruyama")

# Annealed Langevin's default step_size in units of the smallest level's variance sigma_L^2: NCSN's MNIST
# step_lr of 2e-5 at its sigma_L = 0.01 (see sample_annealed_langevin).
DEFAULT_STEP_RATIO = 0.2


def check_score_sampler_args(sampler: str, *, predictor: str | None = None, corrector_steps: int | None = None,
                             snr: float | None = None, steps_per_level: int | None = None,
                             step_size: float | None = None) -> None:
    """Refuse an argument of ``sampler`` out of its range (those that are not None), before any work."""
    def is_count(value: Any, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    def is_positive(value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0)

    if predictor is not None and predictor not in PREDICTORS:
        raise ConfigError(f"{sampler} has no predictor {predictor!r}; choose one of {', '.join(PREDICTORS)}")
    if corrector_steps is not None and not is_count(corrector_steps, 0):
        raise ConfigError(f"{sampler} needs a whole number corrector_steps >= 0, got corrector_steps = "
                          f"{corrector_steps!r}")
    if snr is not None and not is_positive(snr):
        raise ConfigError(f"{sampler} needs a finite snr > 0, got snr = {snr!r}")
    if steps_per_level is not None and not is_count(steps_per_level, 1):
        raise ConfigError(f"{sampler} needs a whole number steps_per_level >= 1, got steps_per_level = "
                          f"{steps_per_level!r}")
    if step_size is not None and not is_positive(step_size):
        raise ConfigError(f"{sampler} needs a finite step_size > 0, got step_size = {step_size!r}")


def _score(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
    """grad log p_t(x) at the grid's scalar time t, broadcast to the batch: one denoiser call."""
    return score_from_denoiser(denoiser, x, t.expand(x.shape[0]), cond)


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _langevin_step(x: torch.Tensor, score: torch.Tensor, step: torch.Tensor,
                   generator: torch.Generator | None) -> torch.Tensor:
    """One step of the unadjusted Langevin algorithm: x + step * score + sqrt(2 step) z."""
    return x + step * score + (2 * step).sqrt() * _randn(x, generator)


def _corrector_step_size(sigma_t: torch.Tensor, alpha_ts: torch.Tensor, snr: float) -> torch.Tensor:
    """The Langevin step of the corrector at time t, for the grid step t -> s (Song et al. 2021, Alg. 4/5).

    Song et al. choose the step so that its drift is ``snr`` times the noise it adds,
    ||step * score|| = snr ||sqrt(2 step) z||:

        step = 2 a (snr ||z|| / ||score||)^2,

    with a = alpha_{t|s}^2 as in score_sde's ``LangevinCorrector`` (1 - beta_i for VP, 1 for VE). Here both norms
    take their values for pure noise, ||z||^2 = d and ||score||^2 = ||z / sigma_t||^2 = d / sigma_t^2 (d the size of
    one example), so that

        step = 2 a (snr sigma_t)^2.

    Why not the norms themselves. score_sde takes their means over the batch: a sample then depends on the others
    drawn with it. Taken per example (Alg. 4 as printed, for one sample), the step depends on x, and a Langevin
    chain whose step varies with x does not leave p_t invariant: close to a mode, where ||score|| -> 0, the step
    explodes. On the tests' two-dimensional Gaussian, per-example norms made the covariance 20 to 50 times too
    large, and with 8 independent copies per example (16 dimensions) still 47% too large; this step is within the
    Monte Carlo error. In image dimensions the norms concentrate and the rules nearly agree; since
    E||score||^2 = E||eps_pred||^2 / sigma_t^2 <= d / sigma_t^2, this step is the smaller one.
    """
    return 2 * alpha_ts**2 * (snr * sigma_t) ** 2


def _predict(predictor: str, x: torch.Tensor, score: torch.Tensor, dt: torch.Tensor, alpha_ts: torch.Tensor,
             sigma_ts: torch.Tensor, drift_coefficient: torch.Tensor, diffusion_squared: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """One step t -> s = t - dt > 0 of the reverse SDE with the score at (x, t): see :func:`sample_pc`."""
    z = _randn(x, generator)
    if predictor == "reverse_diffusion":
        return (2 - alpha_ts) * x + sigma_ts**2 * score + sigma_ts * z
    reverse_drift = drift_coefficient * x - diffusion_squared * score
    return x - reverse_drift * dt + (diffusion_squared.clamp(min=0) * dt).sqrt() * z


@torch.no_grad()
def sample_pc(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
              generator: torch.Generator | None = None, callback: Callback | None = None,
              predictor: str = "reverse_diffusion", corrector_steps: int = 1, snr: float = 0.16) -> torch.Tensor:
    """Predictor-corrector sampling of the reverse SDE (Song et al. 2021, Algorithms 2-5 and appendix G).

    At each grid time t > 0, ``corrector_steps`` Langevin steps at t, x <- x + step * score + sqrt(2 step) z with
    step = 2 alpha_{t|s}^2 (snr sigma_t)^2 (see :func:`_corrector_step_size`), then one predictor step to the next
    time s: score_sde's order, corrector first. 1 + ``corrector_steps`` NFE per step; the last step, to s = 0,
    returns x0_pred after its corrector steps.

    The predictors, with the forward transition of the grid step x_t = alpha_{t|s} x_s + sigma_{t|s} z,
    alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2:

    ``reverse_diffusion``, that transition run backwards (Song et al. 2021, eqs. 46-47, their
    ``ReverseDiffusionPredictor``)::

        x_s = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score + sigma_{t|s} z

    For VE (alpha_{t|s} = 1) this is Song et al.'s x + (sigma_t^2 - sigma_s^2) score + sqrt(sigma_t^2 - sigma_s^2) z;
    for VP (alpha_{t|s}^2 = 1 - beta, sigma_{t|s}^2 = beta) their (2 - sqrt(1 - beta)) x + beta score + sqrt(beta) z,
    in which 2 - sqrt(1 - beta) is 1 / sqrt(1 - beta) to first order in beta.

    ``euler_maruyama``, the reverse SDE's drift and diffusion frozen at t:
    x_s = x_t - [f(t) x_t - g(t)^2 score] (t - s) + g(t) sqrt(t - s) z.

    ``snr`` = 0.16 is Song et al.'s value for the VE SDE on CIFAR-10: each corrector step's drift is a sixth of
    its noise. ``corrector_steps`` = 0 is the predictor alone.
    """
    check_score_sampler_args("pc", predictor=predictor, corrector_steps=corrector_steps, snr=snr)
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    sde = SDE(denoiser.schedule)
    drift_coefficients, diffusions_squared = sde.drift_coefficient(ts[:-1]), sde.diffusion_squared(ts[:-1])
    for i in range(len(ts) - 1):
        alpha_ts, sigma_ts_squared = forward_transition(alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1])
        sigma_ts = sigma_ts_squared.sqrt()
        for _ in range(corrector_steps):
            x = _langevin_step(x, _score(denoiser, x, ts[i], cond), _corrector_step_size(sigmas[i], alpha_ts, snr),
                               generator)
        if ts[i + 1] == 0:
            x = x0_pred = denoise(denoiser, x, ts[i], cond)
        else:
            score = _score(denoiser, x, ts[i], cond)
            x0_pred = to_x0(score, "score", x, alphas[i], sigmas[i])  # Tweedie's estimate, for the callback
            x = _predict(predictor, x, score, ts[i] - ts[i + 1], alpha_ts, sigma_ts, drift_coefficients[i],
                         diffusions_squared[i], generator)
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x


def sample_euler_maruyama(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                          generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """The reverse SDE by Euler-Maruyama, without corrector: :func:`sample_pc` with ``predictor="euler_maruyama"``
    and ``corrector_steps=0``. 1 NFE per step; weakly first order in the step, so it wants many steps."""
    return sample_pc(denoiser, x, ts, cond=cond, generator=generator, callback=callback,
                     predictor="euler_maruyama", corrector_steps=0)


@torch.no_grad()
def sample_annealed_langevin(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                             generator: torch.Generator | None = None, callback: Callback | None = None,
                             steps_per_level: int = 5, step_size: float | None = None) -> torch.Tensor:
    """Annealed Langevin dynamics, NCSN's sampler (Song & Ermon 2019, Alg. 1; Song & Ermon 2020, Alg. 1).

    The noise levels are the grid's, sigma_i = sigma_{t_i} for every t_i > 0, noisiest first. At each level,
    ``steps_per_level`` = T Langevin steps on p_{t_i}:

        a_i = step_size * sigma_i^2 / sigma_L^2,    x <- x + a_i score + sqrt(2 a_i) z,

    sigma_L the smallest positive level; each level's last state starts the next. Then the last step returns
    x0_pred = D(x, t_L), Song & Ermon (2020)'s final denoising, which removes the noise sigma_L that the samples
    would otherwise keep. T NFE per step, plus 1 for the denoising.

    On VP and sub-VP schedules the state passes from level to level in the coordinates x / alpha_t (the callback
    gets it at the next level's scale, x <- (alpha_s / alpha_t) x), where the marginals are x0 + sigma_ve eps with
    sigma_ve = sigma_t / alpha_t and keep their mean: there one level's sample starts the next well, which is what
    annealing needs. (In x itself the mean alpha_t E[x0] would lag behind the levels: on sub-VP, whose alpha still
    grows where sigma_t is already small and Langevin slow, it was off by 0.07 standard deviations after 100 levels
    of 10 steps.) Langevin with
    step a in x is Langevin with step a / alpha_t^2 in x / alpha_t, so this is NCSN on the ladder sigma_ve with
    step_size / alpha_L^2, about step_size. For VE, alpha = 1: NCSN exactly.

    The update is that of NCSNv2 and of both papers' code; the 2019 paper's Alg. 1 writes x + alpha_i / 2 score
    + sqrt(alpha_i) z, whose alpha_i is our 2 a_i. So ``step_size`` is the ``step_lr`` of their configs and the
    epsilon of Song & Ermon (2020). a_i proportional to sigma_i^2 makes every step the same fraction of the width
    of p_{t_i}, r = step_size / sigma_L^2.

    Choosing T and step_size, Song & Ermon (2020, technique 4): for the score of N(0, sigma_i^2 I) and a start of
    variance gamma^2 sigma_i^2 (gamma = sigma_{i-1} / sigma_i, the ladder's ratio), T steps leave the variance

        s_T^2 / sigma_i^2 = (1 - r)^{2T} (gamma^2 - 2 / (2 - r)) + 2 / (2 - r)

    (their eq. 4). Take T as large as the budget allows, then the step_size that brings this closest to 1. The
    chain diverges for r >= 2, and 2 / (2 - r) > 1 is the variance its discretisation adds. NCSNv2's CIFAR-10
    setting, T = 5 and step_size = 6.2e-6 at sigma_L = 0.01 (r = 0.062) with 232 levels (gamma = 1.04), is that
    optimum.

    Defaults: T = 5, and step_size = None, meaning 0.2 sigma_L^2: NCSN's MNIST step_lr, 2e-5 at sigma_L = 0.01,
    for any ladder (a VP schedule ends its grid at sigma_L = 0.007-0.011, sub-VP at 1e-4, VE at sigma_min). r = 0.2
    gives s_T^2 / sigma_i^2 = 1.14 for 50 levels of a VE ladder from 20 to 0.01 (gamma = 1.17; the best there, at
    r = 0.17, is 1.13) and 1.23 for 20 (gamma = 1.49; best 1.20). That is for images, whose many noise-only
    directions need the small r. Data of full rank in a few dimensions (2-D toys) mixes too slowly with it where
    sigma_i is near the data's scale: on the tests' 2-D Gaussian, 50 levels at T = 5 left the variance 20-45% too
    large; step_size = sigma_L^2 (r = 1) took it to 5-10%, and T = 10 to 2-3.5%.
    """
    check_score_sampler_args("annealed_langevin", steps_per_level=steps_per_level, step_size=step_size)
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    sigma_last = sigmas[-2]
    if step_size is None:
        step_size = DEFAULT_STEP_RATIO * sigma_last**2
    for i in range(len(ts) - 1):
        step = step_size * (sigmas[i] / sigma_last) ** 2
        for _ in range(steps_per_level):
            score = _score(denoiser, x, ts[i], cond)
            x0_pred = to_x0(score, "score", x, alphas[i], sigmas[i])  # Tweedie's estimate, for the callback
            x = _langevin_step(x, score, step, generator)
        if ts[i + 1] == 0:
            x = x0_pred = denoise(denoiser, x, ts[i], cond)
        else:
            x = alphas[i + 1] / alphas[i] * x  # the same x / alpha, now at the next level
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x
