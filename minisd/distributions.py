"""Diagonal Gaussians and the importance-weighted bound: the helpers every model imports.

The VAE, the hierarchical VAE, the latent autoencoder and the diffusion likelihood all need
the same four things -- a Gaussian log density, a reparameterised sample, the closed-form
KL between two Gaussians, and the IWAE estimate of ``log p(x)``. They live here, once.
Chapter 1 (``minisd/probability.py``) derives and checks them as worked examples.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from minisd import batch_rows

LOG_TWO_PI = math.log(2.0 * math.pi)


def gaussian_log_density(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise ``log N(x; mean, exp(logvar))`` = ``-1/2 [log 2pi + logvar + (x - mean)^2 / exp(logvar)]``.

    All arguments broadcast together. A diagonal multivariate Gaussian's log density is
    the sum of this over the last dimension.
    """
    return -0.5 * (LOG_TWO_PI + logvar + (x - mean).square() / logvar.exp())


def sample_normal(
    mean: Tensor, logvar: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Reparameterised samples ``z = mean + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``.

    This is the reparameterisation trick (Luo (2022), sec. "Variational Autoencoders"; unnumbered
    there, applied to the Gaussian q of eqs. 20-21): the randomness lives in
    ``eps`` alone, so ``z`` is a differentiable function of ``mean`` and ``logvar``.
    Returns shape ``(num_samples, *broadcast(mean, logvar).shape)``.
    """
    shape = (num_samples, *torch.broadcast_shapes(mean.shape, logvar.shape))
    # The examples run along dimension 1: under torchrun each process draws its own examples' noise.
    noise = batch_rows.randn(shape, batch_dim=1, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + (0.5 * logvar).exp() * noise


def kl_normal(mean_q: Tensor, logvar_q: Tensor, mean_p: Tensor, logvar_p: Tensor) -> Tensor:
    """Elementwise ``KL(N(mean_q, var_q) || N(mean_p, var_p))`` in closed form.

    ``KL = 1/2 [log(var_p / var_q) + (var_q + (mean_q - mean_p)^2) / var_p - 1]``

    Arguments broadcast together; sum the result over the last dimension for a diagonal
    Gaussian. With ``mean_p = 0, logvar_p = 0`` this is the VAE's prior term in
    Luo (2022) eq. 19.
    """
    return 0.5 * (
        logvar_p - logvar_q + (logvar_q.exp() + (mean_q - mean_p).square()) / logvar_p.exp() - 1.0
    )


def importance_weighted_log_likelihood(log_weights: Callable[[int], Tensor], num_samples: int,
                                       chunk_size: int = 64) -> Tensor:
    """log (1/K) sum_k w_k, the IWAE bound of Burda et al. (2015), per example: ``(B,)``.

    ``log_weights(s)`` draws ``s`` fresh importance samples and returns their log-weights
    ``(s, B)``. Samples are drawn in chunks and combined with a running logsumexp, so K = 5000
    needs no more memory than one chunk. (Chunks of 64 samples x 100 images keep the decoder's
    temporaries in cache: twice as fast on a CPU as chunks of 256.)
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    total = None
    remaining = num_samples
    while remaining > 0:
        chunk = log_weights(min(chunk_size, remaining)).logsumexp(0)
        total = chunk if total is None else torch.logaddexp(total, chunk)
        remaining -= min(chunk_size, remaining)
    return total - math.log(num_samples)
