"""The report of the VAE family (autoencoder, VAE, HVAE: :class:`~minisd.models.base.LatentVariableModel`): the
ELBO and the importance-weighted bound on test images."""

from __future__ import annotations

from typing import Any

import torch


def report_latent_likelihood(model, images: torch.Tensor, *, split: str, num_samples: int | None,
                             batch_size: int, seed: int, progress: bool) -> dict[str, Any]:
    """ELBO and the importance-weighted bound (``num_samples`` K, default 1000) of a VAE-family model, in nats
    per image, on ``images`` ``(N, C, H, W)``."""
    from minisd.eval import evaluate_likelihood

    results = {}
    elbo = evaluate_likelihood(model, images, num_samples=1, batch_size=batch_size, seed=seed)
    results["elbo_nats"] = -elbo["nll_nats"]
    results["elbo_bits_per_dim"] = -elbo["bits_per_dim"]
    print(f"{split} ELBO: {results['elbo_nats']:.2f} nats per image "
          f"({-results['elbo_bits_per_dim']:.4f} bits/dim as an NLL bound), {len(images)} images")
    k = num_samples or 1000
    if k > 1:
        iwae = evaluate_likelihood(model, images, num_samples=k, batch_size=batch_size, seed=seed, progress=progress)
        results[f"log_likelihood_iwae_k{k}_nats"] = -iwae["nll_nats"]
        results["nll_bits_per_dim"] = iwae["bits_per_dim"]
        print(f"{split} log p(x) >= {-iwae['nll_nats']:.2f} nats per image "
              f"(importance-weighted, K = {k}); NLL {iwae['bits_per_dim']:.4f} bits/dim")
    return results
