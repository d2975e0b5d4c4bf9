"""The contract every minisd model keeps, so one training loop and one command line serve them all."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Model(nn.Module):
    """A trainable model of the learning path.

    Subclasses implement ``loss(batch) -> (scalar, logs)``; generative ones also
    ``sample(n, generator=None)``. ``hparams`` holds the constructor's keyword arguments,
    which is all a checkpoint needs to build the model again (see :func:`minisd.models.build_model`).
    """

    model_type: ClassVar[str]
    can_sample: ClassVar[bool] = False

    def __init__(self, **hparams: Any):
        super().__init__()
        self.hparams = hparams

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        # The loss is the forward pass so that DistributedDataParallel, which hooks
        # forward(), synchronises gradients for every model without special cases.
        return self.loss(batch)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
