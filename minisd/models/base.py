"""The contract every minisd model keeps, so one training loop and one command line serve them all."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minisd.nn import image_decoder, image_encoder
from minisd.distributions import importance_weighted_log_likelihood


class Model(nn.Module):
    """A trainable model of the learning path.

    Subclasses implement ``loss(batch) -> (scalar, logs)``; generative ones also
    ``sample(n, generator=None)``. ``hparams`` holds the constructor's keyword arguments,
    which is all a checkpoint needs to build the model again (see :func:`minisd.models.build_model`).
    """

    model_type: ClassVar[str]
    shape_setting: ClassVar[str] = "image_shape"  # the hyper-parameter the data's example shape goes to
    can_sample: ClassVar[bool] = False
    has_samplers: ClassVar[bool] = False  # sample() takes sampler, steps, spacing, eta (diffusion models)

    def __init__(self, **hparams: Any):
        super().__init__()
        self.hparams = hparams

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def prepare(self, train_set: Any) -> None:
        """Fit what a new model learns from its data before training starts (a tokenizer, say); by default nothing."""

    def extra_files(self) -> dict[str, bytes]:
        """Files a checkpoint keeps beside the weights (``tokenizer.json``), by name; by default none."""
        return {}

    def load_extra_files(self, files: dict[str, bytes]) -> None:
        """Take back what :meth:`extra_files` gave, read from a checkpoint (names in ``extra_file_names``)."""

    extra_file_names: ClassVar[tuple[str, ...]] = ()

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


class LatentVariableModel(Model):
    """A model p(x) = int p(x, z) dz of images with Bernoulli pixels, scored by importance sampling.

    Subclasses give ``log_importance_weights(images, num_samples) -> (S, B)``, the values
    log p(x, z_s) - log q(z_s | x) for z_s ~ q(z | x), and ``image_shape``; :meth:`nll` follows.
    """

    image_shape: tuple[int, int, int]

    @staticmethod
    def bernoulli_log_likelihood(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x|z) for Bernoulli pixels: minus the binary cross-entropy summed over pixels. ``(..., C, H, W) -> (...)``."""
        images = images.expand_as(logits)
        return -F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(-3).sum(-1)

    def log_importance_weights(self, images: torch.Tensor, num_samples: int) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def nll(self, batch: dict[str, Any], num_samples: int = 1) -> dict[str, torch.Tensor]:
        """Upper bound on -log p(x) per image: ``nats`` ``(B,)`` and ``bits_per_dim`` ``(B,)``.

        ``num_samples=1`` gives -ELBO; more samples give the tighter importance-weighted bound.
        """
        images = batch["image"]
        nats = -importance_weighted_log_likelihood(lambda s: self.log_importance_weights(images, s), num_samples)
        return {"nats": nats, "bits_per_dim": nats / (math.log(2) * math.prod(self.image_shape))}
