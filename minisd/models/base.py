"""The contract every minisd model keeps, so one training loop and one command line serve them all."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from minisd.nn import image_decoder, image_encoder


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


class EncoderDecoderModel(Model):
    """An image encoder and decoder around a latent vector: what the autoencoder and the VAE share.

    The encoder outputs ``outputs_per_latent * latent_dim`` numbers: a code for the
    autoencoder (1 per latent), a mean and a log-variance for the VAE (2 per latent).
    """

    outputs_per_latent: ClassVar[int] = 1

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_dim: int = 2,
                 arch: str = "mlp", hidden: list[int] = (256,), width: int = 32, depth: int = 2,
                 activation: str = "relu"):
        network = dict(arch=arch, hidden=list(hidden), width=width, depth=depth, activation=activation)
        super().__init__(image_shape=list(image_shape), latent_dim=latent_dim, **network)
        self.image_shape = tuple(image_shape)
        self.latent_dim = latent_dim
        self.encoder = image_encoder(self.image_shape, self.outputs_per_latent * latent_dim, **network)
        self.decoder = image_decoder(latent_dim, self.image_shape, **network)
