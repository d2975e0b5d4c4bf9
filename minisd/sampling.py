"""Drawing many samples from any generative model: in batches, with a progress bar.

``minisd sample`` and the FID of ``minisd eval`` both draw through :func:`draw_samples`, so a long
sampling run always shows how far it has come, and the same seed gives the same images in both.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from minisd.diffusion.samplers import check_sampler_args
from minisd.errors import MinisdError
from minisd.models import Model
from minisd.sampler_options import given_flags

BATCH_SIZE = 250  # images per call of model.sample: bounded memory for any n


def draw_samples(model: Model, n: int, *, generator: torch.Generator | None = None, batch_size: int = BATCH_SIZE,
                 progress: bool = True, **sampler_args: Any) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` in [0, 1], on the CPU, drawn ``batch_size`` at a time from one ``generator``.

    ``sampler_args`` (``sampler``, ``steps``, ``spacing``, the sampler's own arguments, and a per-step
    ``callback``) go to a diffusion model's sampler; its progress bar counts sampler steps over all batches, any
    other model's counts images.
    """
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    if model.has_samplers:
        sampler = sampler_args.get("sampler") or model.sampler
        steps = sampler_args.get("steps") or model.sample_steps
        bar = tqdm(total=len(sizes) * steps, unit="step", disable=not progress, leave=False, dynamic_ncols=True,
                   desc=f"sampling {n} images ({sampler}, {steps} steps)")
        callback = sampler_args.get("callback")

        def advance(info: dict[str, Any]) -> None:
            bar.update(1)
            if callback is not None:
                callback(info)

        sampler_args = {**sampler_args, "callback": advance}
    else:
        bar = tqdm(total=n, unit="image", disable=not progress, leave=False, dynamic_ncols=True,
                   desc=f"sampling {n} images")
    batches = []
    with bar:
        for size in sizes:
            batches.append(model.sample(size, generator=generator, **sampler_args).cpu())
            if not model.has_samplers:
                bar.update(size)
    return torch.cat(batches)


def checked_sampler_args(model: Model, sampler_args: dict[str, Any]) -> dict[str, Any]:
    """``sampler_args`` (``sampler``, ``steps``, ``spacing`` and the sampler's own, as given), checked against the
    model before any work: a model without samplers takes none, and a diffusion model's sampler (its own, unless
    ``sampler``) must accept its own arguments."""
    if sampler_args and not model.has_samplers:
        raise MinisdError(f"a {model.model_type} samples in one step: {', '.join(given_flags(sampler_args))} "
                          f"are for diffusion models")
    if model.has_samplers:
        own_args = {k: v for k, v in sampler_args.items() if k not in ("sampler", "steps", "spacing")}
        check_sampler_args(sampler_args.get("sampler", model.sampler), **own_args)
    return sampler_args
