"""An image classifier: the measuring instrument of the evaluation chapter.

It is not a generative model. Trained on the real data, it turns any image into class
probabilities and a feature vector, from which ``minisd.eval`` computes FID-MNIST /
FID-Fashion (``minisd.eval.fid``) and the class balance of generated samples
(``minisd.eval.class_histogram``).

The network is the classic small MNIST CNN: two stages of two 3x3 convolutions and a 2x2
max-pool (28 -> 14 -> 7, or 8 -> 4 -> 2 on the built-in digits), a fully connected layer
whose activations are the features, dropout, and a linear layer to the class logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minisd.models.base import Model
from minisd.nn.conv import conv_stage
from minisd.nn.dropout import Dropout


class Classifier(Model):
    """CNN ``(B, C, H, W)`` in [0, 1] -> ``num_classes`` logits, trained with cross-entropy.

    The default, conv16-conv16-pool-conv32-conv32-pool-fc128-dropout-fc10, is the classic Keras
    MNIST CNN at half the width (``channels=[32, 64]``): about 3x faster to train on 2 CPU cores
    (3,700 against 1,150 images/s), with features of the same length (``hidden=128``).
    There is no batch-norm on purpose: the training loop's EMA averages the weights but copies
    buffers from the last step, so running statistics would not match the averaged weights; and
    without it an image's features never depend on the other images in its batch.
    """

    model_type = "classifier"

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 channels: list[int] = (16, 32), hidden: int = 128, dropout: float = 0.5):
        super().__init__(image_shape=list(image_shape), num_classes=num_classes, channels=list(channels),
                         hidden=hidden, dropout=dropout)
        in_channels, side, _ = image_shape
        if side % 2 ** len(channels):
            raise ValueError(f"image side {side} is not divisible by 2**{len(channels)}; use fewer stages")
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        widths = [in_channels, *channels]
        bottom_side = side // 2 ** len(channels)
        self.convolutions = nn.Sequential(*(conv_stage(n_in, n_out) for n_in, n_out in zip(widths, widths[1:])),
                                          nn.Flatten())
        self.penultimate = nn.Sequential(nn.Linear(channels[-1] * bottom_side**2, hidden), nn.ReLU())
        # Dropout sits after the features, so features() is the same in train and eval mode.
        self.head = nn.Sequential(Dropout(dropout), nn.Linear(hidden, num_classes))

    @property
    def num_features(self) -> int:
        """F, the length of the vectors that :meth:`features` returns."""
        return self.hparams["hidden"]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] -> penultimate activations ``(B, F)``: what FID compares."""
        # Centring the pixels on 0 lets the first layer's ReLUs start half open whatever the image.
        return self.penultimate(self.convolutions(2 * images - 1))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] -> unnormalised class log-probabilities ``(B, num_classes)``."""
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] -> the most probable class of each image, ``(B,)`` int64.

        Call ``.eval()`` first (:func:`minisd.load` returns models in eval mode): in train mode
        dropout makes the answer random.
        """
        return self.logits(images).argmax(dim=1)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        # Accuracy per batch: the training loop's evaluation averages it over the test set.
        accuracy = (logits.argmax(dim=1) == batch["label"]).float().mean()
        return loss, {"loss": loss.item(), "accuracy": accuracy.item()}
