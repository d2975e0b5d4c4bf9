"""The probability-flow ODE as a sampler and as an exact likelihood (Song et al. 2021, sec. 4.3 and appendix D).

Every schedule's marginals p_t are also those of the deterministic ODE (Song et al. 2021, eq. 13; see
:mod:`minisd.diffusion.sde`)

    dx / dt = f(t) x - 1/2 g(t)^2 grad log p_t(x),

with the score from the denoiser by Tweedie's formula. Solved from noise down to t = 0 it is a sampler;
solved upwards it encodes data into the prior, one to one. Because it is a flow, the instantaneous change of
variables (Chen et al. 2018, "Neural ODEs", theorem 1) tracks the density along a trajectory:

    d log p_t(x_t) / dt = -div_x (dx / dt)    so    log p_0(x_0) = log p_1(x_1) + int_0^1 div_x (dx / dt) dt,

which makes the model's log-likelihood exact up to the ODE solver's error. The divergence is the trace of a
D x D Jacobian: exact (D vector-Jacobian products) for small D, or Hutchinson's unbiased estimate
E[z^T (d drift / dx) z] for images (FFJORD, Grathwohl et al. 2019).

The ODE is solved in t, as Song et al. do, by ``torchdiffeq.odeint``; ``dopri5`` with rtol = atol = 1e-5 (their
RK45) by default. Why t and not the log-SNR lambda, in which the VP ODE reads dx / dlambda = (alpha x0_pred -
alpha^2 x) / 2 for every schedule? In lambda the solver must also cross the long, uneventful stretches at both
ends (lambda from -20 to -10 on the cosine schedule), and it would need the inverse t(lambda), by bisection, at
every evaluation. On 2-D Gaussian data like the tests' dopri5 in lambda spent about twice the evaluations for a larger
error (cosine, 1e-5: 98 against 44, log-density error 2e-4 against 6e-6 nats per dimension), and rk4 on a grid
uniform in lambda was no more accurate stepping in lambda than in t. A fixed-step method (``rk4``, ``midpoint``,
``euler``) steps exactly on the sampler's grid, which :func:`minisd.diffusion.spacing.time_steps` already spreads.

Denoiser evaluations (NFE): each evaluation of dx / dt calls the denoiser once. ``rk4`` spends 4 per step
(torchdiffeq's 3/8 rule), ``midpoint`` 2, ``euler`` 1, so N grid steps of rk4 cost 4 (N - 1) + 1: the last step,
to t = 0, is the denoised estimate, as in every sampler (:func:`fixed_step_evaluations`). ``dopri5`` spends 6 per
attempted step (7 stages, the last reused) plus 2 to choose its first step, as many as the tolerance asks;
:func:`solve_probability_flow` returns the count, and the sampler passes it to its last callback as ``nfe``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torchdiffeq import odeint

from minisd.diffusion.denoiser import Denoiser
from minisd.diffusion.likelihood import PIXEL_LEVELS
from minisd.diffusion.sampling_steps import Callback
from minisd.diffusion.sde import SDE, probability_flow_drift


# torchdiffeq's adaptive methods: they take ``step_t``, the times at which a step must end.
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

# Evaluations of dx / dt per step of torchdiffeq's fixed-step methods ("rk4" is the 3/8 rule).
FIXED_STEP_STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}


class _CountingDenoiser:
    """The denoiser, counting its calls (the NFE) and keeping its latest estimate x0_pred."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser, self.schedule = denoiser, denoiser.schedule
        self.calls, self.x0_pred = 0, None

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.calls += 1
        self.x0_pred = self.denoiser(x_t, t, cond)
        return self.x0_pred


def _drift(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
    """dx / dt at the solver's scalar time ``t``, broadcast to the batch."""
    return probability_flow_drift(denoiser, x, t.to(x).expand(x.shape[0]), cond)


def _odeint(dynamics: Callable, state: Any, times: torch.Tensor, rtol: float, atol: float, method: str) -> Any:
    """``torchdiffeq.odeint`` that never evaluates ``dynamics`` outside [min(times), max(times)].

    An adaptive solver steps past its last time and interpolates back, and it probes a trial step to choose its
    first one. A schedule is defined on [0, 1] only: beyond t = 1 the cosine schedule's alpha turns negative
    (clamped, the log-SNR jumps to -92) and below t = 0 its log-SNR is NaN. Stepping past t = 1 made dopri5
    spend 248 evaluations on the cosine schedule's [0, 1] instead of 44, for a log-density 100 times less
    accurate. So every step is made to end exactly at the last time (``step_t``), and the trial step's time is
    clamped into the interval.
    """
    low, high = times.min(), times.max()
    options = {"step_t": times[-1:]} if method in ADAPTIVE_METHODS else None
    return odeint(lambda t, y: dynamics(t.clamp(low, high), y), state, times, rtol=rtol, atol=atol,
                  method=method, options=options)


def solve_probability_flow(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                           rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                           estimates: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
    """Solve the probability-flow ODE from ``x`` at ``ts[0]`` through every time of ``ts``.

    ``ts``: ``(M,)`` positive times, strictly monotone: descending decodes towards data, ascending encodes data
    into noise (the ODE is deterministic and invertible, so one undoes the other up to the solver's error).
    Returns the states at every time, ``(M, *x.shape)`` (the first is ``x``), and the number of denoiser
    evaluations. If ``estimates`` is a list, it receives for each time but the last the x0_pred of the solver's
    first evaluation at or past that time: for a fixed-step method exactly D(x_t, t) at the step's start.
    """
    if len(ts) == 1:
        return x.unsqueeze(0), 0
    counting = _CountingDenoiser(denoiser)
    ts = ts.to(x)
    descending = bool(ts[0] > ts[1])
    pending = [0]  # the next grid time whose estimate we wait for

    def dynamics(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        drift = _drift(counting, x_t, t, cond)
        if estimates is not None:
            while pending[0] < len(ts) - 1 and (t <= ts[pending[0]] if descending else t >= ts[pending[0]]):
                estimates.append(counting.x0_pred)
                pending[0] += 1
        return drift

    trajectory = _odeint(dynamics, x, ts, rtol, atol, method)
    return trajectory, counting.calls


def fixed_step_evaluations(method: str, steps: int) -> int:
    """Denoiser evaluations of :func:`sample_probability_flow` with a fixed-step ``method`` on a grid of ``steps``
    steps: ``steps - 1`` ODE steps down to the smallest positive time, then one for the denoised estimate."""
    if method not in FIXED_STEP_STAGES:
        raise ValueError(f"{method!r} is not a fixed-step method; choose one of {sorted(FIXED_STEP_STAGES)}")
    return FIXED_STEP_STAGES[method] * (steps - 1) + 1


@torch.no_grad()
def sample_probability_flow(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, cond: Any = None,
                            generator: torch.Generator | None = None, callback: Callback | None = None,
                            rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5") -> torch.Tensor:
    """The probability-flow ODE sampler (Song et al. 2021, sec. 4.3): ``torchdiffeq.odeint`` from ts[0] to ts[-2].

    A sampler of :mod:`minisd.diffusion.samplers`' family: the ODE is solved from ``x`` at ``ts[0]`` down to the
    smallest positive time ``ts[-2]``, and the last step to ts[-1] = 0 returns the denoiser's x0_pred there
    (Tweedie's estimate; the ODE's score is undefined at sigma = 0). ``dopri5`` (default) is adaptive, with
    Song et al.'s rtol = atol = 1e-5, and ``ts`` are only the times it reports; a fixed-step ``method``
    (``rk4``, ``midpoint``, ``euler``) steps on ``ts`` exactly, for a comparison at equal NFE (see the module
    docstring for the counts). ``generator`` is unused: the ODE is deterministic.

    ``callback`` runs after the solve, once per grid time, with ``step``, ``t``, ``x`` (the solution there) and
    ``x0_pred`` (the solver's estimate at the step's start; see :func:`solve_probability_flow`); the last step's
    dict also carries ``nfe``, the number of denoiser evaluations of the whole sample.
    """
    ts = ts.to(x)
    estimates: list[torch.Tensor] = []
    trajectory, nfe = solve_probability_flow(denoiser, x, ts[:-1], cond=cond, rtol=rtol, atol=atol, method=method,
                                             estimates=estimates if callback is not None else None)
    x = trajectory[-1]
    x0_pred = denoiser(x, ts[-2].expand(x.shape[0]), cond)
    if callback is not None:
        for i in range(len(ts) - 2):
            callback({"step": i, "t": ts[i + 1], "x": trajectory[i + 1], "x0_pred": estimates[i]})
        callback({"step": len(ts) - 2, "t": ts[-1], "x": x0_pred, "x0_pred": x0_pred, "nfe": nfe + 1})
    return x0_pred


# --------------------------------------------------------------------------------------
# Likelihood
# --------------------------------------------------------------------------------------


def _exact_divergence(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_i d output_i / d x_i per example ``(B,)``: one vector-Jacobian product per dimension.

    The examples of a batch must not interact (no batch statistics), so a one-hot vector at dimension i in every
    example reads off every example's d output_i / d x_i at once.
    """
    divergence = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for i in range(x[0].numel()):
        one_hot = torch.zeros_like(output).flatten(1)
        one_hot[:, i] = 1
        (row,) = torch.autograd.grad(output, x, one_hot.view_as(output), retain_graph=True)
        divergence = divergence + row.flatten(1)[:, i]
    return divergence


def _hutchinson_divergence(output: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """Hutchinson's estimate mean_k z_k^T (d output / dx) z_k per example ``(B,)``; ``probes`` ``(K, *x.shape)``."""
    divergence = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for z in probes:
        (z_jacobian,) = torch.autograd.grad(output, x, z, retain_graph=True)
        divergence = divergence + (z_jacobian * z).flatten(1).sum(1)
    return divergence / len(probes)


def ode_log_likelihood(denoiser: Denoiser, x: torch.Tensor, *, cond: Any = None, divergence: str = "exact",
                       rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", t_min: float = 0.0,
                       t_max: float = 1.0, generator: torch.Generator | None = None,
                       num_probes: int = 1) -> dict[str, Any]:
    """log p_{t_min}(x) of the probability-flow model, by the instantaneous change of variables (Song et al. 2021, D.2).

    The augmented state (x_t, delta_t) follows dx / dt = drift and d delta / dt = div_x drift from t_min up to
    t_max, and log p_{t_min}(x) = log p_prior(x_{t_max}) + delta_{t_max} (Chen et al. 2018, eq. 4 integrated).
    The model density at t_min is that of x_{t_min} = alpha x_0 + sigma eps, the data blurred by the schedule's
    noise there (sigma_0 / alpha_0 = 1.3e-3 on the closed-form VP schedules), not that of the data itself.

    ``divergence``: ``"exact"`` (one vector-Jacobian product per dimension: for 2-D data and tests) or
    ``"hutchinson"``: the average over ``num_probes`` Rademacher probes z (entries +-1) of z^T (d drift / dx) z,
    drawn once from ``generator`` and held fixed along the trajectory (FFJORD), so the solver integrates one
    smooth ODE. Rademacher rather than Gaussian probes: for a symmetric J (a true score's drift has one) the
    estimator's variance is 2 sum_{i != j} J_ij^2 instead of 2 ||J||_F^2 (Hutchinson 1990), never larger, and 0
    when J is diagonal. The estimate of log p is unbiased up to the solver's error, and its spread shrinks as
    1 / sqrt(num_probes).

    ``x``: ``(B, ...)`` of any shape. Runs under ``torch.enable_grad`` even if the caller is in ``no_grad``.
    Returns ``log_prob``, ``prior`` (log p_prior(x_{t_max}), :meth:`SDE.prior_log_prob`) and ``delta`` (the integral
    of the divergence), each ``(B,)`` in nats and detached, and ``nfe``, the number of denoiser evaluations
    (each followed by D vector-Jacobian products, or ``num_probes`` for Hutchinson's estimate).
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if not 0 <= t_min < t_max <= 1:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    counting = _CountingDenoiser(denoiser)
    x = x.detach()
    probes = None
    if divergence == "hutchinson":
        bits = torch.randint(0, 2, (num_probes, *x.shape), generator=generator, device=x.device)
        probes = (2 * bits - 1).to(x.dtype)

    def dynamics(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x_t = state[0].detach().requires_grad_(True)
        drift = _drift(counting, x_t, t, cond)
        if probes is None:
            div = _exact_divergence(drift, x_t)
        else:
            div = _hutchinson_divergence(drift, x_t, probes)
        return drift.detach(), div.detach()  # the solve needs no graph: this keeps it from growing

    times = torch.tensor([t_min, t_max], device=x.device, dtype=x.dtype)
    start = (x, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype))
    with torch.enable_grad():
        x_path, delta_path = _odeint(dynamics, start, times, rtol, atol, method)
    prior = SDE(denoiser.schedule).prior_log_prob(x_path[-1]).detach()
    delta = delta_path[-1]
    return {"log_prob": prior + delta, "prior": prior, "delta": delta, "nfe": counting.calls}


def dequantise(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """8-bit ``images`` k / 255 in [0, 1] to x = (2 (k + u) - 1) / 255 - 1, u ~ U[0, 1)^D from ``generator``.

    Level k's bin is [k - 1/2, k + 1/2) / 127.5 - 1, centred on the grid point k / 127.5 - 1 that the model was
    trained on and that :mod:`minisd.diffusion.likelihood` decodes to. The 256 bins, of width 2 / 255, tile
    [-1 - 1/255, 1 + 1/255), so P(k) = int_bin p(x) dx is a (sub-)probability over the levels.
    """
    levels = (images * (PIXEL_LEVELS - 1)).round()
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (2 * (levels + noise) - 1) / (PIXEL_LEVELS - 1) - 1


def ode_bits_per_dim(denoiser: Denoiser, images: torch.Tensor, *, cond: Any = None,
                     generator: torch.Generator | None = None, **ode_args: Any) -> dict[str, Any]:
    """A bound on -log P(8-bit image) from the ODE likelihood with uniform dequantisation, in nats and bits per dim.

    ``images``: ``(B, ...)`` 8-bit, values k / 255 in [0, 1]. Each level k is spread uniformly over its bin of width
    2 / 255 around x = k / 127.5 - 1 (:func:`dequantise`). Then P(k) = E_u[p(x(k + u))] (2 / 255)^D, and Jensen's
    inequality gives (Theis et al. 2016; Ho et al. 2019, sec. 3.1; Song et al. 2021, app. D.2)

        -log P(k) <= E_u[-log p(x)] - D log(2 / 255) =: nats,

    estimated with one u per image. (Song et al. put the 256 bins of width 2 / 256 at [k, k + 1) / 128 - 1 instead;
    that grid is not the one our model was trained on, whose level k = 255 would lie on its bin's edge.)
    ``ode_args`` go to :func:`ode_log_likelihood` (``divergence``, ``num_probes``, tolerances, ``t_min``, ...);
    ``generator`` draws u and then any Hutchinson probes.

    The variational bound of :func:`minisd.diffusion.likelihood.variational_bound` bounds the same -log P(k): it
    replaces the dequantisation by a discrete decoder and the exact flow density by the ELBO of the stochastic
    model. Both are upper bounds on a negative log-likelihood of 8-bit data, so their bits per dim compare with
    each other and with published 8-bit numbers. With a perfect denoiser the ODE and the SDE share their marginals;
    with a learned one they are two different models of the same score, and neither bound need be the lower.

    Returns ``nats`` and ``bits_per_dim`` = nats / (D ln 2), each ``(B,)``, and ``nfe``.
    """
    x = dequantise(images, generator)
    likelihood = ode_log_likelihood(denoiser, x, cond=cond, generator=generator, **ode_args)
    dims = x[0].numel()
    nats = -(likelihood["log_prob"] + dims * math.log(2 / (PIXEL_LEVELS - 1)))
    return {"nats": nats, "bits_per_dim": nats / (dims * math.log(2)), "nfe": likelihood["nfe"]}
