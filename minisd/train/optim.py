"""Learning-rate schedule and the exponential moving average of the weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def learning_rate(step: int, *, lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``.

    Warm-up keeps Adam's first updates small while its variance estimates are still noisy.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class EMA:
    """theta_ema <- d * theta_ema + (1 - d) * theta after every step.

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))``, so that early in training
    the average is not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for averaged, current in zip(self.model.parameters(), model.parameters()):
            averaged.lerp_(current, 1 - decay)
        for averaged, current in zip(self.model.buffers(), model.buffers()):
            averaged.copy_(current)
