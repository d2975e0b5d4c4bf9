"""Consistency distillation (Song et al. 2023, "Consistency Models"; in latent space with guidance folded in, as
Luo et al. 2023 do for Stable Diffusion in "Latent Consistency Models").

The probability-flow ODE of chapter 5 carries each noisy x_t along one trajectory to one clean x_0. A denoiser
D(x_t, t) = E[x_0 | x_t] is the *average* end of all trajectories through the noise level t; a consistency model
f(x_t, t) is trained to be the end of *this* trajectory, the same value at every point of it:

    f(x_t, t) = f(x_s, s)  for x_t, x_s on one ODE trajectory,     f(x_0, 0) = x_0   (the boundary condition).

Then one evaluation at the start, f(x_T, T), is a picture. Consistency distillation gets the neighbouring
point of a trajectory from a teacher: from x_{t_n} = alpha x_0 + sigma eps (the data, noised), one step of the
teacher's ODE solver to the next time of a grid gives x_hat_{t_{n+1}}, and the student is pulled to agree with
itself there (Song et al. 2023, Definition 1):

    L_CD = E_{n, x_0, eps} || f_theta(x_{t_n}, t_n) - sg(f_theta(x_hat_{t_{n+1}}, t_{n+1})) ||^2.

Here f_theta is the student's denoiser (its x0 estimate: any parameterisation of ``parameterisation.py`` is a
consistency function's), sg stops the gradient (the target network is the student itself, theta^- = theta, as
Song & Dhariwal 2024 recommend), and the grid ends at t = 0, where f is the identity: the last interval's target
is the teacher's step to t = 0, its own denoised estimate. That anchor is the boundary condition; every other
interval passes it one step further up the trajectory. The teacher is any denoiser, a guided one included: then
the student learns the guided ODE's ends and draws at guidance 1.
"""

from __future__ import annotations

from typing import Any

import torch

from minisd import batch_rows
from minisd.diffusion.denoiser import Denoiser, expand_like
from minisd.diffusion.parameterisation import eps_from_x0
from minisd.diffusion.sampling_steps import grid_alphas_sigmas
from minisd.diffusion.spacing import start_time, time_steps


def consistency_grid(denoiser: Denoiser, steps: int) -> torch.Tensor:
    """The teacher's ODE grid ``(steps + 1,)``: uniform in log-SNR from where sampling starts down to 0, the grid
    chapter 4's samplers use by default (:func:`minisd.diffusion.spacing.time_steps`)."""
    return time_steps(denoiser.schedule, steps, "log_snr", t_max=start_time(denoiser.schedule))


def consistency_distillation_loss(student: Denoiser, teacher: Denoiser, x0: torch.Tensor, ts: torch.Tensor, *,
                                  cond: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """L_CD per example ``(B,)`` (the module docstring) for data ``x0`` ``(B, ...)`` on the grid ``ts`` (descending,
    ending at 0; :func:`consistency_grid`). ``student`` and ``teacher`` are denoisers of one noise schedule, each
    called with ``cond``; the teacher's step is DDIM's (Song et al. 2021, eq. 12 with eta = 0: Euler on the
    probability-flow ODE), without gradient."""
    ts, alphas, sigmas = grid_alphas_sigmas(student, ts, x0)
    n = batch_rows.randint(0, len(ts) - 1, (len(x0),), generator=generator, device=x0.device)
    t, s = ts[n], ts[n + 1]
    alpha_t, sigma_t, alpha_s, sigma_s = (expand_like(v[i], x0) for v, i in ((alphas, n), (sigmas, n),
                                                                                (alphas, n + 1), (sigmas, n + 1)))
    eps = batch_rows.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = alpha_t * x0 + sigma_t * eps
    with torch.no_grad():
        teacher_x0 = teacher(x_t, t, cond)
        x_s = alpha_s * teacher_x0 + sigma_s * eps_from_x0(teacher_x0, x_t, alpha_t, sigma_t)
        # At s = 0 the student would be the identity (f(x_0, 0) = x_0): the target is the step's end itself.
        target = torch.where(expand_like(s == 0, x0), x_s, student(x_s, s, cond))
    return (student(x_t, t, cond) - target).square().flatten(1).mean(1)
