"""Reflow's training pairs: a teacher's own couplings of noise and picture (Liu et al. 2023, "rectified flow").

Flow matching learns from independent pairs (x0, eps): a noise point can end at any picture, so the learned paths
cross and bend (chapter 8.1), and a sampler needs many steps to follow them. Reflow draws the pairs from a trained
model instead: eps, and the picture its deterministic sampler carries eps to, with the prompt and the guidance the
pictures should have. A student trained to go straight from eps to that picture (the ``noise`` of
:func:`minisd.diffusion.losses.denoising_loss`, on the straight path) follows paths that no longer cross, so one to
four Euler steps land where the teacher's twenty did, guidance included (it is folded into the targets).
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from minisd.diffusion.guidance import ClassifierFreeGuidance
from minisd.diffusion.samplers import sample
from minisd.train.config import DETERMINISTIC_SAMPLERS



@torch.no_grad()
def teacher_pairs(teacher: Any, captions: list[str], *, guidance_scale: float, sampler: str = "dpmpp_2m",
                  steps: int = 20, batch_size: int = 250, seed: int = 0,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """For each caption, standard normal noise ``(N, *latent)`` and the latents ``(N, *latent)`` the text-to-image
    ``teacher`` (a :class:`~minisd.models.latent_diffusion.LatentDiffusion`) draws from it at ``guidance_scale``,
    with a deterministic ``sampler``: the couplings reflow trains on. Batch i's noise comes from seed ``seed + i``,
    so any batch can be made again alone (a crashed generation resumes where it stopped)."""
    if sampler not in DETERMINISTIC_SAMPLERS:
        raise ValueError(f"reflow pairs need a deterministic sampler, one of {DETERMINISTIC_SAMPLERS}; got {sampler!r}")
    teacher.eval()
    shape = teacher.autoencoder.latent_shape
    noises, latents = [], []
    starts = range(0, len(captions), batch_size)
    for index, start in enumerate(tqdm(starts, desc="teacher pairs", unit="batch", disable=not progress)):
        batch = captions[start:start + batch_size]
        noise = torch.randn((len(batch), *shape), generator=torch.Generator().manual_seed(seed + index))
        denoiser = ClassifierFreeGuidance(teacher.denoiser, guidance_scale,
                                          teacher.encode_prompts([""] * len(batch), allow_empty=True))
        latents.append(sample(denoiser, (len(batch), *shape), sampler=sampler, steps=steps,
                              cond=teacher.encode_prompts(batch), noise=noise.to(teacher.device),
                              device=teacher.device).cpu())
        noises.append(noise)
    return torch.cat(noises), torch.cat(latents)
