"""Likelihood of a test set under any model with ``nll``: the ELBO, the importance-weighted bound, a diffusion bound."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from minisd.data import ImageDataset


@torch.no_grad()
def evaluate_likelihood(model: torch.nn.Module, data: ImageDataset | torch.Tensor, *, num_samples: int = 1,
                        batch_size: int = 100, seed: int = 0, progress: bool = False,
                        **nll_args) -> dict[str, float]:
    """Mean upper bound on -log p(x) over ``data``, in nats per image and bits per dimension.

    ``data``: a dataset, whose batches (``dataset.batch``) carry its labels and captions to a conditional
    model, so it is scored on -log p(x | condition); or bare images ``(N, C, H, W)``.

    ``num_samples=1`` is minus the ELBO; ``num_samples=K`` is minus the IWAE bound with K samples (for
    a diffusion model, the mean of K one-sample estimates of its bound).
    The model must provide ``nll(batch, num_samples, **nll_args)`` (see
    :meth:`minisd.models.base.LatentVariableModel.nll`); any other per-image quantity it returns (a
    diffusion bound's terms) is averaged too, under its own name.
    """
    torch.manual_seed(seed)
    model.eval()
    sums: dict[str, float] = {}
    size = len(data)
    starts = range(0, size, batch_size)
    for start in tqdm(starts, desc=f"log-likelihood (K={num_samples})", disable=not progress, leave=False):
        indices = torch.arange(start, min(start + batch_size, size))
        batch = data.batch(indices) if isinstance(data, ImageDataset) else {"image": data[indices]}
        batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for key, values in model.nll(batch, num_samples=num_samples, **nll_args).items():
            sums[key] = sums.get(key, 0.0) + values.sum().item()
    means = {"nll_nats" if key == "nats" else key: total / size for key, total in sums.items()}
    return {**means, "num_samples": num_samples, "num_images": size}
