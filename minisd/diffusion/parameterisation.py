"""What a diffusion network predicts, and the conversions between the choices, all in one place.

Given x_t = alpha_t x_0 + sigma_t eps (any schedule: variance preserving, sub-VP or exploding), a network
can predict any one of four equivalent quantities; Luo (2022) calls the first three "three
equivalent interpretations" of the same model:

    x0     the clean image                      (Luo 2022 eq. 99)
    eps    the noise that was added             (Luo 2022 eqs. 115-130)
    score  grad_x log p(x_t) = -eps / sigma_t   (Tweedie's formula, Luo 2022 eqs. 131-151)
    v      alpha_t eps - sigma_t x0             (Salimans & Ho 2022, the "velocity")
    flow   eps - x0                             (flow matching's target, Lipman et al. 2023: on the straight path
                                                 x_t = (1 - t) x0 + t eps it is dx_t / dt)

Each function takes ``alpha`` and ``sigma`` broadcastable to ``x_t``.
"""

from __future__ import annotations

import torch

PREDICTIONS = ("x0", "eps", "v", "score", "flow")


def _check(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {PREDICTIONS}")


def to_x0(prediction: torch.Tensor, kind: str, x_t: torch.Tensor, alpha: torch.Tensor,
          sigma: torch.Tensor) -> torch.Tensor:
    """The x0 that a prediction of ``kind`` implies at (x_t, alpha, sigma)."""
    _check(kind)
    if kind == "x0":
        return prediction
    if kind == "v":
        # x_t = alpha x0 + sigma eps and v = alpha eps - sigma x0 give alpha x_t - sigma v = (alpha^2 + sigma^2) x0.
        return (alpha * x_t - sigma * prediction) / (alpha.square() + sigma.square())
    if kind == "flow":
        # x_t = alpha x0 + sigma (u + x0) with u = eps - x0: x_t - sigma u = (alpha + sigma) x0.
        return (x_t - sigma * prediction) / (alpha + sigma)
    eps = prediction if kind == "eps" else -sigma * prediction
    return (x_t - sigma * eps) / alpha


def from_x0(x0: torch.Tensor, kind: str, x_t: torch.Tensor, alpha: torch.Tensor,
            sigma: torch.Tensor) -> torch.Tensor:
    """The prediction of ``kind`` equivalent to ``x0`` at (x_t, alpha, sigma): the inverse of :func:`to_x0`."""
    _check(kind)
    if kind == "x0":
        return x0
    eps = (x_t - alpha * x0) / sigma
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / sigma
    if kind == "flow":
        return eps - x0
    return alpha * eps - sigma * x0


def eps_from_x0(x0: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - alpha x0) / sigma: the noise a denoised estimate implies (what samplers step with)."""
    return (x_t - alpha * x0) / sigma
