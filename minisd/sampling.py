"""Drawing many samples from any generative model: in batches, with a progress bar.

``minisd sample`` (:func:`sample_picture`) and the FID of ``minisd eval`` both draw through :func:`draw_samples`,
so a long sampling run always shows how far it has come, and the same seed gives the same images in both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from minisd.diffusion.samplers import check_sampler_args
from minisd.errors import MinisdError
from minisd.images import IMAGE_SUFFIXES, save_image_grid, save_point_scatter
from minisd.models import Model
from minisd.models.files import run_folder
from minisd.outputs import MAX_GRID_IMAGES, MAX_SCATTER_POINTS, SAMPLE_IMAGES, SAMPLE_POINTS, check_writable
from minisd.pipelines import load
from minisd.sampler_options import given_flags

BATCH_SIZE = 250  # images per call of model.sample: bounded memory for any n
POINT_BATCH = 5000  # points per sampling call and per ODE likelihood solve: a solve costs about the same for 1 or 5000


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


def sample_picture(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, *, n: int | None = None,
                   seed: int = 0, sampler_args: dict[str, Any] | None = None, ema: bool = True,
                   device: str | torch.device = "cpu", overwrite: bool = False, progress: bool = True) -> Path:
    """``minisd sample``: ``n`` samples of the model at ``checkpoint`` (a grid of images, or a scatter plot of a
    score model's 2-D points) written to ``out``; returns its path. By default ``out`` is ``RUN/samples/seed<seed>.png``
    beside a run, and ``outputs/<name>/samples/seed<seed>.png`` for a shipped model named by name (never inside the
    shipped folder). Everything is checked (the count, the path, the model, the sampler's arguments) first."""
    if n is not None and n > max(MAX_GRID_IMAGES, MAX_SCATTER_POINTS):
        raise MinisdError(f"--n {n} is more than one picture should hold (at most {MAX_GRID_IMAGES} images, or "
                          f"{MAX_SCATTER_POINTS} points); FID draws many samples without a picture: "
                          f"minisd eval RUN --fid-classifier ...")
    if out is None:
        beside = run_folder(checkpoint) if Path(checkpoint).exists() else Path("outputs") / str(checkpoint)
        out = beside / "samples" / f"seed{seed}.png"
    out = Path(out)
    check_writable(out, overwrite, suffixes=IMAGE_SUFFIXES, what="image")  # before the work, not after
    model = load(checkpoint, ema=ema, device=device)
    if not hasattr(model, "can_sample"):  # a text-to-image pipeline
        raise MinisdError(f"{checkpoint} is a text-to-image model: give it a prompt, "
                          f"minisd generate \"...\" --model {checkpoint}")
    if not model.can_sample:
        raise MinisdError(f"a {model.model_type} is not a generative model: it cannot sample (train a vae)")
    points = model.model_type == "score"
    n = n or (SAMPLE_POINTS if points else SAMPLE_IMAGES)
    if not points and n > MAX_GRID_IMAGES:
        raise MinisdError(f"--n {n} is more images than one grid should hold (at most {MAX_GRID_IMAGES}); "
                          f"FID draws many samples without a picture: minisd eval RUN --fid-classifier ...")
    sampler_args = checked_sampler_args(model, sampler_args or {})
    generator = torch.Generator(model.device).manual_seed(seed)
    if not points:
        images = draw_samples(model, n, generator=generator, progress=progress, **sampler_args)
        return save_image_grid(images, out, overwrite=overwrite)
    # In the batches of minisd eval: the same seed gives the same points.
    samples = draw_samples(model, n, generator=generator, batch_size=POINT_BATCH, progress=progress, **sampler_args)
    own_args = "".join(f", {k} = {v}" for k, v in sampler_args.items() if k not in ("sampler", "steps"))
    how = (f"{sampler_args.get('sampler', model.sampler)} in {sampler_args.get('steps', model.sample_steps)} "
           f"steps{own_args}, seed {seed}")
    return save_point_scatter(samples, out, title=f"{n} samples of {checkpoint}\n({how})", overwrite=overwrite)
