"""Inpainting as a denoiser wrapper: the model fills the masked region, the known region is held fixed.

A denoiser's estimate x0_hat is replaced, outside the mask, by the known data x0_known:

    x0_inpaint = mask * x0_hat + (1 - mask) * x0_known.

Every sampler moves x_t towards its x0 estimate (DDIM's and DPM-Solver's updates are affine in it, and the last
step to t = 0 returns it), so the known region of every state follows the known data's own noising path, and the
result there *is* the known data; the masked region is sampled by the model conditioned, through the UNet's
receptive field, on what surrounds it. This is the "replacement" method of Song et al. (2021, appendix I) and
of SD's inpainting without a dedicated inpainting UNet, written on x0 instead of on x_t, which keeps it a
denoiser: samplers, guidance and inpainting stack without knowing of each other.
"""

from __future__ import annotations

from typing import Any

import torch

from minisd.diffusion.denoiser import Denoiser


class InpaintingDenoiser:
    """``denoiser`` whose estimate is ``known`` wherever ``mask`` is 0.

    ``known``: the data to keep, ``(B, ...)`` or ``(1, ...)``, in the modelled space (pixels in [-1, 1], or
    latents); ``mask``: 1 where the model repaints, 0 where ``known`` is kept, broadcastable to ``known``.
    """

    def __init__(self, denoiser: Denoiser, known: torch.Tensor, mask: torch.Tensor):
        self.denoiser, self.known, self.mask = denoiser, known, mask.to(known)
        self.schedule = denoiser.schedule

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        x0_pred = self.denoiser(x_t, t, cond)
        return self.mask * x0_pred + (1 - self.mask) * self.known.to(x0_pred)
