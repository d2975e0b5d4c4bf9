"""Diffusion training losses and the variational bound, in discrete and continuous time.

Every loss here is a weighted denoising error. Whatever the network predicts, its squared error
is the x0 error times a factor fixed by (alpha_t, sigma_t), because the conversions between
predictions are affine in x0 (see ``parameterisation.py``):

    ||eps - eps_hat||^2 = SNR(t)       ||x0 - x0_hat||^2
    ||v - v_hat||^2     = (1 + SNR(t)) ||x0 - x0_hat||^2

So a loss is w(lambda) ||x0 - x0_hat||^2 for some weighting w, and "simple", "snr", "min_snr"
and the ELBO itself are just different w (Kingma & Gao 2023 make the same point).
The variational bound's denoising terms are (Luo 2022 eq. 110, and its continuous limit in VDM):

    discrete, T steps:  sum_i 1/2 (SNR(s_i) - SNR(t_i)) ||x0 - x0_hat(x_{t_i}, t_i)||^2,   s_i = t_i - 1/T
    continuous:         -1/2 int_0^1 SNR'(t) ||x0 - x0_hat(x_t, t)||^2 dt
                      =  1/2 int_{lambda_min}^{lambda_max} e^lambda ||x0 - x0_hat(x_lambda)||^2 dlambda

The continuous one is the T -> infinity limit of the discrete one. Its second form shows that it
depends on the schedule only through its end points (VDM, sec. 5); drawing lambda uniformly
estimates it with a bounded integrand, where drawing t uniformly meets the spike of SNR'(t) near
t = 0.
"""

from __future__ import annotations

from typing import Any

import torch

from minisd import batch_rows
from minisd.diffusion.denoiser import NetworkDenoiser, expand_like
from minisd.diffusion.parameterisation import from_x0

WEIGHTINGS = ("simple", "x0", "snr", "v", "min_snr", "vlb")


TIME_SAMPLINGS = ("uniform", "logit_normal")


def sample_times(batch_size: int, device: torch.device, generator: torch.Generator | None = None,
                 distribution: str = "uniform") -> torch.Tensor:
    """t ~ U(0, 1) with low discrepancy: one uniform offset, evenly spaced over the batch (VDM, appendix I).

    Each batch covers [0, 1] evenly, which lowers the variance of the loss at no cost. ``logit_normal``: t =
    sigmoid(n) with n ~ N(0, 1), Stable Diffusion 3's choice for flow matching (Esser et al. 2024, sec. 3.1), which
    spends more of training on the middle times, where the velocity is hardest to predict; drawn as the normal
    quantiles of the same evenly spread uniforms, so it keeps their low discrepancy.
    """
    offset = torch.rand((), generator=generator, device=device)
    positions, total = batch_rows.batch_positions(batch_size, device)  # the whole batch's, under torchrun too
    uniform = (offset + positions / total) % 1.0
    if distribution == "uniform":
        return uniform
    if distribution == "logit_normal":
        return torch.sigmoid(torch.special.ndtri(uniform.clamp(1e-6, 1 - 1e-6)))
    raise ValueError(f"unknown time sampling {distribution!r}; choose one of {TIME_SAMPLINGS}")


def prediction_error_factor(kind: str, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """||pred - target||^2 / ||x0 - x0_hat||^2 for a network predicting ``kind`` at (alpha_t, sigma_t).

    At a fixed x_t, eps moves by -alpha / sigma times x0 (so the factor is SNR), the score by alpha / sigma^2
    (SNR / sigma^2), v = alpha eps - sigma x0 by -(alpha^2 + sigma^2) / sigma ((1 + SNR) on a VP schedule) and
    flow matching's u = eps - x0 by -(alpha + sigma) / sigma ((1 + 1 / sqrt(SNR))^2 on the straight path: the x0
    error of its plain MSE is weighted 1 / t^2 there).
    """
    snr = (alpha / sigma).square()
    return {"x0": torch.ones_like(snr), "eps": snr, "v": (alpha.square() + sigma.square()).square() / sigma.square(),
            "score": snr / sigma.square(), "flow": ((alpha + sigma) / sigma).square()}[kind]


def x0_error_weight(weighting: str, log_snr: torch.Tensor, min_snr_gamma: float = 5.0) -> torch.Tensor:
    """w(lambda) on ||x0 - x0_hat||^2 for each named weighting (``vlb`` needs lambda'(t): see :func:`vlb_weight`)."""
    snr = log_snr.exp()
    if weighting == "x0":
        return torch.ones_like(snr)
    if weighting == "snr":
        return snr
    if weighting == "v":
        return 1 + snr
    if weighting == "min_snr":
        return snr.clamp(max=min_snr_gamma)  # Hang et al. 2023: don't let nearly clean steps dominate
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")


def vlb_weight(schedule: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
    """-1/2 SNR'(t) = -1/2 SNR(t) lambda'(t) >= 0: the continuous-time ELBO's weight (VDM eq. 17).

    lambda'(t) is taken by autograd, so the same code serves fixed and learned schedules, and a
    learned schedule receives gradients through it.
    """
    with torch.enable_grad():
        t = t.detach().requires_grad_(True)
        log_snr = schedule.log_snr(t)
        (d_log_snr,) = torch.autograd.grad(log_snr.sum(), t, create_graph=True)
    return -0.5 * log_snr.exp() * d_log_snr


def noise_ladder_times(times: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Times in [0, 1) snapped onto a ladder of ``num_levels`` levels t_i = i / (num_levels - 1), each equally likely.

    NCSN (Song & Ermon 2019) trains on L noise levels sigma_1 > ... > sigma_L, a geometric sequence; on the
    VE schedule sigma_t = sigma_min (sigma_max / sigma_min)^t the times i / (L - 1) are exactly those levels.
    """
    return (times * num_levels).floor().clamp(max=num_levels - 1) / (num_levels - 1)


def denoising_loss(denoiser: NetworkDenoiser, x0: torch.Tensor, *, weighting: str = "simple", cond: Any = None,
                   min_snr_gamma: float = 5.0, generator: torch.Generator | None = None,
                   noise_levels: int | None = None, time_sampling: str = "uniform",
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss per example ``(B,)``, for images ``x0`` ``(B, ...)`` in the model's range.

    ``simple`` is the mean squared error of whatever the network predicts (L_simple of Ho et al.
    2020 when it predicts eps); ``x0``, ``snr`` (= eps-MSE), ``v`` (= v-MSE) and ``min_snr`` weight
    the x0 error; ``vlb`` is the continuous-time ELBO's diffusion term in nats (summed over dimensions).

    Denoising score matching (Vincent 2011; Luo 2022, "Score-based Generative Models") is this loss seen from the
    score: with eps-prediction the score is -eps / sigma_t, so ``simple`` is sigma_t^2 ||s_theta - grad log q(x_t | x0)||^2,
    NCSN's weighting lambda(sigma) = sigma^2 (Song & Ermon 2019, eq. 6). ``noise_levels=L`` draws t from a ladder of
    L levels (:func:`noise_ladder_times`) instead of all of [0, 1]. ``time_sampling``: how t is drawn
    (:func:`sample_times`). Flow matching (Lipman et al. 2023) is ``simple`` with the ``flow`` prediction on the
    ``flow`` schedule: ||u_theta(x_t, t) - (eps - x0)||^2. ``noise``: the eps paired with each x0 instead of a fresh
    draw; with pairs (eps, teacher(eps)) from a model's own ODE this is reflow (Liu et al. 2023), which straightens
    the paths: a model trained on its own couplings needs fewer steps.
    """
    t = sample_times(len(x0), x0.device, generator, time_sampling)
    if noise_levels is not None:
        t = noise_ladder_times(t, noise_levels)
    eps = batch_rows.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) if noise is None else noise
    log_snr = denoiser.schedule.log_snr(t)
    alpha, sigma = (expand_like(v, x0) for v in denoiser.schedule.alpha_sigma(t))
    x_t = alpha * x0 + sigma * eps
    prediction = denoiser.network(x_t, t, cond)
    kind = denoiser.prediction
    squared_error = (prediction - from_x0(x0, kind, x_t, alpha, sigma)).square().flatten(1)
    if weighting == "simple":
        return squared_error.mean(1)
    # Rewrite the network's own error as an x0 error, then weight it.
    factor = prediction_error_factor(kind, *denoiser.schedule.alpha_sigma(t))
    x0_error = squared_error / expand_like(factor, squared_error)
    if weighting == "vlb":
        return vlb_weight(denoiser.schedule, t) * x0_error.sum(1)
    return x0_error_weight(weighting, log_snr, min_snr_gamma) * x0_error.mean(1)


def diffusion_term(denoiser, x0: torch.Tensor, *, num_steps: int | None = None, cond: Any = None,
                   generator: torch.Generator | None = None, step: int | None = None) -> torch.Tensor:
    """One-sample estimate of the bound's diffusion (denoising matching) term, nats per example ``(B,)``.

    ``num_steps=None``: continuous time, 1/2 (lambda_max - lambda_min) e^lambda ||x0 - x0_hat||^2 with
    lambda ~ U(lambda_min, lambda_max) and t = lambda^-1(lambda).
    ``num_steps=T``: discrete time, T * 1/2 (SNR(s) - SNR(t)) ||x0 - x0_hat||^2 with t = i / T,
    s = (i - 1) / T and i uniform in {1, ..., T} (Luo 2022 eqs. 100 and 110: one term drawn at random).
    ``step=i`` fixes i instead, and then the result is T times term i, exactly in its weight.
    """
    batch = len(x0)
    if num_steps is None:
        log_snr_min, log_snr_max = denoiser.schedule.log_snr_range(x0)
        log_snr = log_snr_min + (log_snr_max - log_snr_min) * sample_times(batch, x0.device, generator).to(x0.dtype)
        t = denoiser.schedule.time_at_log_snr(log_snr.detach())
        weight = 0.5 * (log_snr_max - log_snr_min) * log_snr.exp()
    else:
        step = (batch_rows.randint(1, num_steps + 1, (batch,), generator=generator, device=x0.device) if step is None
                else torch.full((batch,), step, device=x0.device))
        t, s = step.to(x0.dtype) / num_steps, (step - 1).to(x0.dtype) / num_steps
        schedule = denoiser.schedule
        weight = num_steps * 0.5 * (schedule.log_snr(s).exp() - schedule.log_snr(t).exp())
    eps = batch_rows.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = (expand_like(v, x0) for v in denoiser.schedule.alpha_sigma(t))
    x0_pred = denoiser(alpha * x0 + sigma * eps, t, cond)
    return weight * (x0 - x0_pred).square().flatten(1).sum(1)
