"""Samplers: from noise at t_0 = ``ts[0]`` to data at ``ts[-1] = 0``, through the denoiser interface only.

Every sampler is a plain function in the manner of k-diffusion's ``sampling.py``::

    sample_xxx(denoiser, x, ts, *, cond=None, generator=None, callback=None, **algorithm_args) -> x0

``x`` is the starting noise ``(B, ...)`` at time ``ts[0]`` (N(0, sigma_{t_0}^2 I); sigma is about 1 at t = 1),
``ts`` the time grid ``(N + 1,)`` of :func:`minisd.diffusion.spacing.time_steps`, descending to exactly 0.
Step i goes from t = ts[i] to s = ts[i + 1]; the step to s = 0 returns the denoised estimate, so the
denoiser is never called at t = 0. ``callback(dict(step=i, t=s, x=x_s, x0_pred=x0_pred))`` runs after each
step: ``x`` is the new state at time s, ``x0_pred`` the estimate (made at t) that moved it there.
Noise comes from ``torch.randn(..., generator=generator)`` only, so a seed fixes the samples.

Two views of one reverse process run through this file (VP: x_t = alpha_t x_0 + sigma_t eps):

- the Gaussian posterior q(x_s | x_t, x_0) with x_0 replaced by the denoiser's x0_pred (DDPM, DDIM);
- the probability-flow ODE in variance-exploding coordinates x_ve = x_t / alpha_t, sigma_ve = sigma_t / alpha_t,
  where it reads dx_ve / dsigma_ve = eps_pred (Karras et al. 2022, eq. 4 and Table 1 with s(t) = alpha_t),
  solved by Euler, Heun or, in log-SNR, by the exponential integrator DPM-Solver++.

They meet: DDIM with eta = 0 is Euler on the ODE, DDIM with eta = 1 is DDPM, and Euler ancestral is
DDIM with the same eta. The tests check these identities, so the code of each can be read as its paper wrote it.

The samplers of the score's view, predictor-corrector, Euler-Maruyama on the reverse SDE and annealed Langevin
dynamics, live in :mod:`minisd.diffusion.score_samplers` and are registered here with the others; so is ``ode``, the
probability-flow ODE solved in t by ``torchdiffeq`` (:mod:`minisd.diffusion.probability_flow`).

Denoiser evaluations (NFE) per step: 1 for every sampler except Heun, which
needs 2 (but 1 on its last step to t = 0), and those whose count follows their arguments: predictor-corrector
(1 + corrector_steps) and annealed Langevin (steps_per_level, and 1 for its final denoising). The ode sampler
with a fixed-step ``method`` spends its stages per step (rk4: 4); with the adaptive dopri5 (its default) it spends
what its tolerances ask, known only after the solve (its last callback's ``nfe``). See :func:`num_evaluations`.

The ends of a schedule. At t = 1 the cosine schedule's alpha is 4.5e-5 (its log-SNR ends at -20),
sigma_ve is 22000, and the first step jumps from there to wherever the grid goes next. The updates are
written to stay finite and accurate there: DDPM and DDIM divide only by alpha_s >= alpha_t; the VE
samplers divide by alpha_t, but x_ve + (sigma_ve_s - sigma_ve_t) eps_pred is x0_pred + sigma_ve_s eps_pred
with a rounding error of float epsilon times sigma_ve_t (the tests run them in float32); DPM-Solver++
weighs x0_pred by alpha_s (1 - exp(-h)) <= 1, never x_t by alpha_s / alpha_t, and its first step is
first order. At the clean end the grid's final t = 0 means alpha = 1, sigma = 0: every last step
returns x0_pred.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch

from minisd.diffusion.denoiser import Denoiser
from minisd.diffusion.parameterisation import eps_from_x0
from minisd.diffusion.probability_flow import FIXED_STEP_STAGES, fixed_step_evaluations, sample_probability_flow
from minisd.diffusion.sampling_steps import Callback, add_noise, denoise, forward_transition, grid_alphas_sigmas
from minisd.diffusion.score_samplers import (check_score_sampler_args, sample_annealed_langevin,
                                             sample_euler_maruyama, sample_pc)
from minisd.diffusion.discrete import DISCRETE_SPACINGS, DiscreteSchedule, discrete_time_steps
from minisd.diffusion.spacing import SPACINGS, start_time, time_steps
from minisd.errors import ConfigError, SamplingError

# --------------------------------------------------------------------------------------
# Shared steps (the grid, the denoiser call and the noise draw are in sampling_steps.py)
# --------------------------------------------------------------------------------------


def _ve_euler_step(x: torch.Tensor, slope: torch.Tensor, alpha_t: torch.Tensor, sigma_ve_t: torch.Tensor,
                   alpha_s: torch.Tensor, sigma_ve_s: torch.Tensor) -> torch.Tensor:
    """An Euler step of dx_ve / dsigma_ve = ``slope`` from sigma_ve_t to sigma_ve_s, in and out of VP coordinates.

    The VP -> VE change of variables of Karras et al. (2022, eq. 4): x_ve = x_t / alpha_t and
    sigma_ve = sigma_t / alpha_t turn every VP schedule into x_ve = x_0 + sigma_ve eps. Then
    dx_ve / dsigma_ve = (x_ve - x0_pred) / sigma_ve = eps_pred, and the step lands at x_s = alpha_s x_ve.
    """
    return alpha_s * (x / alpha_t + (sigma_ve_s - sigma_ve_t) * slope)


def _posterior_std(alpha_t: torch.Tensor, sigma_t: torch.Tensor, alpha_s: torch.Tensor,
                   sigma_s: torch.Tensor) -> torch.Tensor:
    """The standard deviation of q(x_s | x_t, x_0), s < t: sigma_s sigma_{t|s} / sigma_t (Luo (2022) eq. 85).

    In alpha/sigma form the forward step s -> t is x_t = alpha_{t|s} x_s + sigma_{t|s} eps with
    alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2; 0 when s = 0.
    """
    _, sigma_ts_squared = forward_transition(alpha_t, sigma_t, alpha_s, sigma_s)
    return sigma_s * sigma_ts_squared.sqrt() / sigma_t


# The largest noise scale eta of each sampler that takes one: DDIM's eta = 1 is already the ancestral variance.
ETA_MAX = {"ddim": 1.0, "dpmpp_2m": math.inf, "dpmpp_2m_sde": math.inf, "euler_ancestral": math.inf}


def _check_eta(sampler: str, eta: float) -> None:
    """The noise scale eta lies in [0, ETA_MAX[sampler]]: a negative eta is a negative variance (NaN)."""
    high = ETA_MAX[sampler]
    if not (isinstance(eta, (int, float)) and 0 <= eta <= high and math.isfinite(eta)):
        bound = "0 <= eta" if high == math.inf else f"0 <= eta <= {high:g}"
        raise ConfigError(f"{sampler} needs a finite {bound}, got eta = {eta}")


# --------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Ancestral sampling of DDPM (Ho et al. 2020, Alg. 2), on any time grid. 1 NFE per step.

    Each step draws x_s from the Gaussian posterior q(x_s | x_t, x_0 = x0_pred) (Luo (2022) eqs. 84-85,
    in alpha/sigma form so that any pair of times s < t is one step):

        mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0_pred,
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2,

    with alpha_{t|s} = alpha_t / alpha_s, sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2: Ho et al.'s
    variance choice beta-tilde, not beta. At s = 0 the mean is x0_pred and the variance 0. Plugging in only
    the posterior mean of x0 loses its posterior variance, so the error falls only as 1 / steps.
    """
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    for i in range(len(ts) - 1):
        alpha_t, sigma_t, alpha_s, sigma_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        x0_pred = denoise(denoiser, x, ts[i], cond)
        alpha_ts, sigma_ts_squared = forward_transition(alpha_t, sigma_t, alpha_s, sigma_s)
        mean = (alpha_ts * sigma_s**2 * x + alpha_s * sigma_ts_squared * x0_pred) / sigma_t**2
        x = add_noise(mean, _posterior_std(alpha_t, sigma_t, alpha_s, sigma_s), generator)
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                eta: float = 0.0, clip_x0: float | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12), deterministic for ``eta = 0``. 1 NFE per step.

        x_s = alpha_s x0_pred + sqrt(sigma_s^2 - c^2) eps_pred + c z,   c = eta * std q(x_s | x_t, x_0)

    keeps the marginal noise level sigma_s for any eta in [0, 1] (Song et al. eq. 16 for c); eta = 1 is the
    ancestral variance, and then DDIM is DDPM. With eta = 0 it is Euler on the probability-flow ODE.

    ``clip_x0``: x0_pred is clipped to [-clip_x0, clip_x0] where it enters the step, eps_pred is not (diffusers'
    DDIMScheduler with ``clip_sample``, the default of a folder that does not switch it off).
    """
    _check_eta("ddim", eta)
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    for i in range(len(ts) - 1):
        alpha_t, sigma_t, alpha_s, sigma_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        x0_pred = denoise(denoiser, x, ts[i], cond)
        eps_pred = eps_from_x0(x0_pred, x, alpha_t, sigma_t)
        if clip_x0 is not None:
            x0_pred = x0_pred.clamp(-clip_x0, clip_x0)
        noise_std = eta * _posterior_std(alpha_t, sigma_t, alpha_s, sigma_s)
        x = alpha_s * x0_pred + (sigma_s**2 - noise_std**2).clamp(min=0).sqrt() * eps_pred
        x = add_noise(x, noise_std, generator)
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without its second-order step).

    1 NFE per step. In VE coordinates dx_ve / dsigma_ve = eps_pred, so a step is
    x_ve <- x_ve + (sigma_ve_s - sigma_ve_t) eps_pred. ``generator`` is unused: the ODE is deterministic.
    """
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    sigmas_ve = sigmas / alphas
    for i in range(len(ts) - 1):
        x0_pred = denoise(denoiser, x, ts[i], cond)
        eps_pred = eps_from_x0(x0_pred, x, alphas[i], sigmas[i])
        x = _ve_euler_step(x, eps_pred, alphas[i], sigmas_ve[i], alphas[i + 1], sigmas_ve[i + 1])
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1).

    An Euler step to s, then the step again with the average of the slopes at t and at the Euler
    point (the trapezoidal rule). 2 NFE per step, except the last step to t = 0, which is Euler
    (the slope at sigma = 0 is undefined): 2N - 1 for N steps.

    The trapezoid assumes eps_pred linear in sigma_ve across a step, and its correction is the change
    of x0_pred times (sigma_ve_t / sigma_ve_s - 1) / 2. On the cosine schedule's uniform grid the first
    step goes from sigma_ve = 22000 to 31 (50 steps) or 12 (20 steps), and that factor of 350-900 wrecks
    the samples, finite as they stay. Give Heun a grid whose steps are moderate in log sigma:
    ``log_snr`` or ``karras``.
    """
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    sigmas_ve = sigmas / alphas
    for i in range(len(ts) - 1):
        interval = (alphas[i], sigmas_ve[i], alphas[i + 1], sigmas_ve[i + 1])
        x0_pred = denoise(denoiser, x, ts[i], cond)
        eps_pred = eps_from_x0(x0_pred, x, alphas[i], sigmas[i])
        x_euler = _ve_euler_step(x, eps_pred, *interval)
        if ts[i + 1] > 0:
            x0_next = denoise(denoiser, x_euler, ts[i + 1], cond)
            eps_next = eps_from_x0(x0_next, x_euler, alphas[i + 1], sigmas[i + 1])
            x = _ve_euler_step(x, (eps_pred + eps_next) / 2, *interval)
        else:
            x = x_euler
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    eta: float = 0.0) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): a multistep exponential integrator. 1 NFE per step.

    DPM-Solver's lambda is log(alpha / sigma), half our log-SNR; a step has h = lambda_s - lambda_t > 0.
    The linear part of the ODE is integrated exactly and x0_pred extrapolated linearly in lambda from
    the last two estimates (ratio r = h_prev / h):

        D   = (1 + 1 / (2r)) x0_pred - 1 / (2r) x0_prev
        x_s = (sigma_s / sigma_t) x_t - alpha_s (exp(-h) - 1) D

    Every weight is bounded (sigma_s / sigma_t <= 1, -expm1(-h) < 1), so the huge first step of the cosine
    schedule, from lambda = -10, stays finite where the noise-prediction form (alpha_s / alpha_t) x_t
    would not. The first step has no x0_prev, so it is first order, which is DDIM; the last (h = inf,
    to t = 0) returns x0_pred.

    ``eta`` > 0 solves the reverse SDE instead, with the same extrapolated D (SDE-DPM-Solver++(2M) of the
    same paper; k-diffusion's ``sample_dpmpp_2m_sde``, midpoint form):

        x_s = (sigma_s / sigma_t) exp(-eta h) x_t - alpha_s (exp(-(1 + eta) h) - 1) D
              + sigma_s sqrt(1 - exp(-2 eta h)) z

    At eta = 1 its first-order step is DDPM's posterior draw (the noise std is the posterior std, Luo (2022)
    eq. 85); the fresh noise at every step corrects errors the ODE would carry to the end.
    """
    _check_eta("dpmpp_2m", eta)
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    lambdas = alphas.log() - sigmas.log()  # +inf at t = 0
    x0_prev, h_prev = None, None
    for i in range(len(ts) - 1):
        x0_pred = denoise(denoiser, x, ts[i], cond)
        h = lambdas[i + 1] - lambdas[i]
        if ts[i + 1] == 0:
            x = x0_pred
        else:
            if x0_prev is None:
                x0_blend = x0_pred
            else:
                r = h_prev / h
                x0_blend = (1 + 1 / (2 * r)) * x0_pred - 1 / (2 * r) * x0_prev
            x = (sigmas[i + 1] / sigmas[i] * torch.exp(-eta * h) * x
                 - alphas[i + 1] * torch.expm1(-(1 + eta) * h) * x0_blend)
            x = add_noise(x, sigmas[i + 1] * (-torch.expm1(-2 * eta * h)).sqrt(), generator)
        x0_prev, h_prev = x0_pred, h
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x


def sample_dpmpp_2m_sde(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        eta: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2M) on the reverse SDE: :func:`sample_dpmpp_2m` with ``eta = 1``. 1 NFE per step."""
    return sample_dpmpp_2m(denoiser, x, ts, cond=cond, generator=generator, callback=callback, eta=eta)


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                           generator: torch.Generator | None = None, callback: Callback | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """Euler ancestral, as in k-diffusion's ``sample_euler_ancestral``. 1 NFE per step.

    Split the VE step to sigma_ve_s into a deterministic Euler step down to
    sigma_down = sqrt(sigma_ve_s^2 - sigma_up^2) and fresh noise of std sigma_up, where sigma_up is
    ``eta`` times the posterior std (capped at sigma_ve_s). The total noise level at s is right for any
    eta; eta = 0 is Euler, and for eta <= 1 it equals DDIM with the same eta.
    """
    _check_eta("euler_ancestral", eta)
    ts, alphas, sigmas = grid_alphas_sigmas(denoiser, ts, x)
    sigmas_ve = sigmas / alphas
    for i in range(len(ts) - 1):
        x0_pred = denoise(denoiser, x, ts[i], cond)
        eps_pred = eps_from_x0(x0_pred, x, alphas[i], sigmas[i])
        # In VE coordinates the posterior std is the VP one over alpha_s.
        posterior_std_ve = _posterior_std(alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]) / alphas[i + 1]
        sigma_up = torch.minimum(sigmas_ve[i + 1], eta * posterior_std_ve)
        sigma_down = (sigmas_ve[i + 1] ** 2 - sigma_up**2).sqrt()
        x = _ve_euler_step(x, eps_pred, alphas[i], sigmas_ve[i], alphas[i + 1], sigma_down)
        x = add_noise(x, alphas[i + 1] * sigma_up, generator)
        if callback is not None:
            callback({"step": i, "t": ts[i + 1], "x": x, "x0_pred": x0_pred})
    return x


# The probability-flow ODE's solvers: adaptive dopri5 (Song et al.'s RK45), or a fixed-step method on the grid.
ODE_METHODS = ("dopri5", *FIXED_STEP_STAGES)


def _check_ode_args(*, method: str | None = None, rtol: float | None = None, atol: float | None = None) -> None:
    """The ode sampler's solver is one of ODE_METHODS, its tolerances finite and positive (those not None)."""
    if method is not None and method not in ODE_METHODS:
        raise ConfigError(f"the ode sampler has no method {method!r}; choose one of {', '.join(ODE_METHODS)}")
    for name, tolerance in (("rtol", rtol), ("atol", atol)):
        if tolerance is not None and not (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
                                          and math.isfinite(tolerance) and tolerance > 0):
            raise ConfigError(f"the ode sampler needs a finite {name} > 0, got {name} = {tolerance!r}")


def sample_ode(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
               generator: torch.Generator | None = None, callback: Callback | None = None, method: str = "dopri5",
               rtol: float = 1e-5, atol: float = 1e-5) -> torch.Tensor:
    """The probability-flow ODE (Song et al. 2021, sec. 4.3) solved by ``torchdiffeq``: see
    :func:`minisd.diffusion.probability_flow.sample_probability_flow`. ``method`` dopri5 (adaptive, to ``rtol`` and
    ``atol``) or a fixed-step rk4, midpoint or euler on the grid ``ts``; the last callback carries ``nfe``.

    torchdiffeq's adaptive solver asserts that its state and step stay finite: a model that gives NaN makes it fail
    before any callback sees a state, and that failure is a :class:`~minisd.errors.SamplingError` here like the
    non-finite steps of every other sampler.
    """
    _check_ode_args(method=method, rtol=rtol, atol=atol)
    try:
        return sample_probability_flow(denoiser, x, ts, cond=cond, callback=callback, rtol=rtol, atol=atol,
                                       method=method)
    except AssertionError as error:  # 'non-finite values in state `y`: tensor(...)', 'underflow in dt 0.0', ...
        reason = str(error).split(":")[0]
        raise SamplingError(f"the ode sampler ({method}) gave up ({reason}): the model gave NaN or infinite values, "
                            f"or the ODE was too stiff for rtol = {rtol:g}, atol = {atol:g}; no image was made. Try "
                            f"another sampler or a fixed-step method") from None


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "euler_ancestral": sample_euler_ancestral,
    "pc": sample_pc,
    "euler_maruyama": sample_euler_maruyama,
    "annealed_langevin": sample_annealed_langevin,
    "ode": sample_ode,
}

# The samplers of the chapter "Score-based generative models" (the others are chapter 4's).
SCORE_SAMPLERS = ("pc", "euler_maruyama", "annealed_langevin", "ode")

# The arguments of the score samplers, checked by minisd.diffusion.score_samplers.check_score_sampler_args.
SCORE_SAMPLER_ARGS = ("predictor", "corrector_steps", "snr", "steps_per_level", "step_size")


# The most steps a sampling may take: DDPM trained on 1000 discrete times, and no sampler here gains from more; a
# larger count is a typo that would run for hours.
MAX_STEPS = 1000


def check_steps(steps: Any) -> int:
    """The number of sampling steps: a whole number from 1 to :data:`MAX_STEPS` (the one place this is checked)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"the number of steps must be a whole number from 1 to {MAX_STEPS}, got {steps!r}")
    return steps


def check_strength(strength: Any) -> float:
    """Image-to-image's strength, the share of the grid run from the noised init image: in (0, 1] (the one place
    this is checked)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ConfigError(f"the strength must be a number above 0 and at most 1 (0 would keep the init image "
                          f"unchanged; 1 redraws all), got {strength!r}")
    return float(strength)


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")


def check_sampler_args(sampler: str, *, steps: Any = None, strength: Any = None, **sampler_args: Any) -> None:
    """Refuse an unknown sampler, an argument it does not take (``eta`` for ddpm, say) or one out of its range
    (eta; snr, corrector_steps, predictor, steps_per_level, step_size; method, rtol, atol), and, when given, a bad
    number of ``steps`` (:func:`check_steps`) or ``strength`` (:func:`check_strength`), before any work. (The samplers
    check their own arguments too, for callers that use them directly.)"""
    _check_sampler(sampler)
    if steps is not None:
        check_steps(steps)
    if strength is not None:
        check_strength(strength)
    accepted = set(inspect.signature(SAMPLERS[sampler]).parameters) - {"denoiser", "x", "ts", "cond", "generator",
                                                                      "callback"}
    unknown = set(sampler_args) - accepted
    if unknown:
        takers = sorted(name for name, function in SAMPLERS.items()
                        if set(unknown) <= set(inspect.signature(function).parameters))
        raise ConfigError(f"the {sampler} sampler takes no {', '.join(sorted(unknown))}"
                          + (f" (only {', '.join(takers)} do)" if takers else ""))
    if "eta" in sampler_args:
        _check_eta(sampler, sampler_args["eta"])
    check_score_sampler_args(sampler, **{k: v for k, v in sampler_args.items() if k in SCORE_SAMPLER_ARGS})
    if sampler == "ode":
        _check_ode_args(**sampler_args)  # its only arguments: the others were refused above


def num_evaluations(sampler: str, steps: int, **sampler_args: Any) -> int:
    """How many times ``sampler`` calls the denoiser in ``steps`` steps with ``sampler_args`` (else its defaults).

    Heun's last step is Euler: 2N - 1. pc: (1 + corrector_steps) N. annealed_langevin: steps_per_level N, plus 1
    for its final denoising. ode: stages (N - 1) + 1 for a fixed-step ``method``; the adaptive dopri5's count is
    known only after the solve, so for it this raises :class:`~minisd.errors.ConfigError` (the sampler's last
    callback reports it as ``nfe``).
    """
    check_sampler_args(sampler, **sampler_args)
    defaults = {name: parameter.default for name, parameter in inspect.signature(SAMPLERS[sampler]).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    args = {**defaults, **sampler_args}
    if sampler == "heun":
        return 2 * steps - 1
    if sampler == "pc":
        return (1 + args["corrector_steps"]) * steps
    if sampler == "annealed_langevin":
        return args["steps_per_level"] * steps + 1
    if sampler == "ode":
        if args["method"] not in FIXED_STEP_STAGES:
            raise ConfigError(f"the ode sampler's {args['method']} is adaptive: its denoiser evaluations are known "
                              f"only after the solve (the last callback's nfe); a fixed-step method "
                              f"({', '.join(FIXED_STEP_STAGES)}) spends a number known in advance")
        return fixed_step_evaluations(args["method"], steps)
    return steps  # one evaluation per step


def _stop_if_not_finite(callback: Callback | None, sampler: str, steps: int) -> Callback:
    """Wrap a per-step callback so that sampling stops at the first step whose state is NaN or infinite; the
    callback also learns how many steps this sampling runs (``info["steps"]``: fewer than asked from an image)."""
    def check_then_call(info: dict[str, Any]) -> None:
        if not torch.isfinite(info["x"]).all():
            raise SamplingError(f"{sampler} gave NaN or infinite values at step {info['step'] + 1} of {steps}; no "
                                f"image was made. Try another sampler or spacing, more steps, or a lower eta")
        if callback is not None:
            callback({**info, "steps": steps})
    return check_then_call


def _start(denoiser: Denoiser, ts: torch.Tensor, shape: tuple[int, ...], x_start: torch.Tensor | None,
           generator: torch.Generator | None, device, dtype, noise: torch.Tensor | None = None,
           unit_variance: bool = False) -> torch.Tensor:
    """The state at ``ts[0]``: pure noise N(0, sigma^2 I) (N(0, I) with ``unit_variance``), or ``x_start`` noised
    there, alpha x_start + sigma eps (the forward process q(x_t | x_0), Luo (2022) eq. 70). ``noise``: the standard
    normal draw to use (diffusers' ``latents``), else one from ``generator``."""
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(noise.shape) != tuple(shape):
        raise ConfigError(f"the starting noise has shape {tuple(noise.shape)}; the sampler was asked for {tuple(shape)}")
    else:
        noise = noise.to(device=device, dtype=dtype or torch.get_default_dtype())
    alpha, sigma = denoiser.schedule.alpha_sigma(ts[:1].to(noise))
    if x_start is None:
        return noise if unit_variance else sigma * noise
    if tuple(x_start.shape) != tuple(shape):
        raise ConfigError(f"the start image has shape {tuple(x_start.shape)}; the sampler was asked for {tuple(shape)}")
    return alpha * x_start.to(noise) + sigma * noise


@torch.no_grad()
def sample(denoiser: Denoiser, shape: tuple[int, ...], *, sampler: str = "dpmpp_2m_sde", steps: int = 20,
           spacing: str = "log_snr", t_max: float | None = None, t_min: float | None = None,
           generator: torch.Generator | None = None, cond: Any = None, callback: Callback | None = None,
           device: torch.device | str | None = None,
           dtype: torch.dtype | None = None, x_start: torch.Tensor | None = None, strength: float = 1.0,
           noise: torch.Tensor | None = None, **sampler_args: Any) -> torch.Tensor:
    """``shape[0]`` samples of shape ``shape``: noise N(0, sigma_{t_max}^2 I) from ``generator``, then ``sampler``.

    ``steps`` counts steps, not denoiser evaluations: see :func:`num_evaluations` (Heun spends about
    twice as many). ``sampler_args`` go to the sampler: ``eta`` for ddim, dpmpp_2m(_sde) and euler_ancestral;
    ``predictor``, ``corrector_steps`` and ``snr`` for pc; ``steps_per_level`` and ``step_size`` for annealed_langevin;
    ``method``, ``rtol`` and ``atol`` for ode.
    ``t_max`` is where the grid starts, by default :func:`~minisd.diffusion.spacing.start_time`: where the
    log-SNR has fallen to -10 (t = 1 for a schedule that stops above it); ``t_min`` the least noisy time before
    the final step to 0 (default :data:`~minisd.diffusion.spacing.T_MIN`).

    Image-to-image (SDEdit, Meng et al. 2022): given ``x_start`` (data of shape ``shape``, in the modelled space),
    sampling runs only the last ``floor(strength * steps)`` steps (at least one) of the same grid, from ``x_start``
    noised to the time they start at. ``strength`` 1 starts from (almost) pure noise; a small strength changes
    little. (The convention of diffusers' image-to-image pipelines, so the same numbers mean the same there.)

    ``spacing`` ``leading``, ``trailing`` or ``linspace`` (a :class:`~minisd.diffusion.discrete.DiscreteSchedule`
    only) samples on the grid and from the starting noise a published model's diffusers scheduler would:
    :func:`~minisd.diffusion.discrete.discrete_time_steps`. ``noise``: the standard normal start to use instead of
    a draw (scaled as the grid's start asks), so that a caller can fix it.

    The default grid is uniform in log-SNR, the variable DPM-Solver++ steps in. On the Gaussian data of
    the tests it is the best grid for dpmpp_2m on every schedule and the only one on which Heun does well
    on all three; ``karras``, from the cosine schedule's sigma_max of 22000, spends most of a small
    budget where the image is still pure noise. The default sampler, DPM-Solver++(2M) on the SDE, gave the
    best FID-MNIST at 20 denoiser evaluations in ``benchmarks/README.md``.

    A step whose result is not finite stops sampling with :class:`~minisd.errors.SamplingError`, so a NaN is
    never returned as an image.
    """
    check_sampler_args(sampler, steps=steps, strength=strength, **sampler_args)
    unit_variance = False
    if spacing in DISCRETE_SPACINGS:
        if not isinstance(denoiser.schedule, DiscreteSchedule):
            raise ConfigError(f"the {spacing} spacing picks steps of a discrete-time model; this model's time is "
                              f"continuous: use one of {SPACINGS}")
        ts, unit_variance = discrete_time_steps(denoiser.schedule, steps, spacing, sampler)
    else:
        ts = time_steps(denoiser.schedule, steps, spacing,
                        t_max=start_time(denoiser.schedule) if t_max is None else t_max, t_min=t_min)
    steps = len(ts) - 1
    kept_steps = steps if x_start is None else max(1, math.floor(strength * steps + 1e-9))
    ts = ts[steps - kept_steps:]
    x = _start(denoiser, ts, shape, x_start, generator, device, dtype, noise, unit_variance)
    return SAMPLERS[sampler](denoiser, x, ts, cond=cond, generator=generator,
                             callback=_stop_if_not_finite(callback, sampler, kept_steps), **sampler_args)
