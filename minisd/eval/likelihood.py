"""Likelihood estimates for latent-variable models: the ELBO and the importance-weighted bound."""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm


def importance_weighted_log_likelihood(log_weights: Callable[[int], torch.Tensor], num_samples: int,
                                       chunk_size: int = 64) -> torch.Tensor:
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


@torch.no_grad()
def evaluate_likelihood(model: torch.nn.Module, images: torch.Tensor, *, num_samples: int = 1,
                        batch_size: int = 100, seed: int = 0, progress: bool = False,
                        **nll_args) -> dict[str, float]:
    """Mean upper bound on -log p(x) over ``images`` ``(N, C, H, W)``, in nats per image and bits per dimension.

    ``num_samples=1`` is minus the ELBO; ``num_samples=K`` is minus the IWAE bound with K samples (for
    a diffusion model, the mean of K one-sample estimates of its bound).
    The model must provide ``nll(batch, num_samples, **nll_args)`` (see
    :meth:`minisd.models.base.LatentVariableModel.nll`); any other per-image quantity it returns (a
    diffusion bound's terms) is averaged too, under its own name.
    """
    torch.manual_seed(seed)
    model.eval()
    sums: dict[str, float] = {}
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=f"log-likelihood (K={num_samples})", disable=not progress, leave=False):
        batch = {"image": images[start:start + batch_size].to(model.device)}
        for key, values in model.nll(batch, num_samples=num_samples, **nll_args).items():
            sums[key] = sums.get(key, 0.0) + values.sum().item()
    means = {"nll_nats" if key == "nats" else key: total / len(images) for key, total in sums.items()}
    return {**means, "num_samples": num_samples, "num_images": len(images)}
