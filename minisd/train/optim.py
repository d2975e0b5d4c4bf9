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


def adamw(model: nn.Module, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The training loop's optimizer: AdamW (Loshchilov & Hutter 2019), fused, so that one kernel updates every
    parameter (on a CPU torch's default is a loop of small operations per tensor, a few percent of a step)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


class EMA:
    """theta_ema <- d * theta_ema + (1 - d) * theta after every step.

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))``, so that early in training
    the average is not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # The parameters that train; a frozen one (a text-to-image model's autoencoder and text encoder) keeps its
        # value, which its average then keeps too. Listed once: walking the modules every step costs more than
        # averaging a small model.
        pairs = [(averaged, current) for averaged, current in zip(self.model.parameters(), model.parameters())
                 if current.requires_grad]
        self._averaged, self._current = [a for a, _ in pairs], [c for _, c in pairs]
        self._buffers = list(zip(self.model.buffers(), model.buffers()))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the current weights of the model this EMA was made from, after training step ``step``."""
        decay = min(self.decay, (1 + step) / (10 + step))
        if self._averaged:
            torch._foreach_lerp_(self._averaged, self._current, 1 - decay)  # one call for all, as the optimizer
        for averaged, current in self._buffers:
            averaged.copy_(current)
