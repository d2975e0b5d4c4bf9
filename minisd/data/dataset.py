"""Image datasets as in-memory tensors: ``load_dataset`` builds them, ``binarize`` samples binary images."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from minisd.data.digits import DIGITS_PIXEL_MAX, load_digits_split
from minisd.data.idx import IDX_PIXEL_MAX, load_idx_split
from minisd.errors import DataError

DATASETS = ("mnist", "fashion-mnist", "digits")
SPLITS = ("train", "test")

_DIGIT_CLASSES = [str(digit) for digit in range(10)]
CLASS_NAMES: dict[str, list[str]] = {
    "mnist": _DIGIT_CLASSES,
    "digits": _DIGIT_CLASSES,
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
}


class ImageDataset(Dataset):
    """A labelled image dataset held entirely in memory.

    Attributes:
        images:  float32 tensor (N, C, H, W) with values in [0, 1], contiguous.
        labels:  int64 tensor (N,), indices into ``classes``.
        classes: class names, ``classes[label]`` names an image's class.
        name, split: where the data came from, e.g. "mnist", "test".

    ``ds[i]`` is ``{"image": (C, H, W) float32, "label": int64 scalar tensor}``, so a
    torch DataLoader batches it into ``{"image": (B, C, H, W), "label": (B,)}``.
    For speed, training code can also slice ``ds.images`` and ``ds.labels`` directly.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], name: str, split: str
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.float32:
            raise ValueError(f"images must be float32 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1] or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 ({len(images)},), got {labels.dtype} {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.contiguous()
        self.classes = list(classes)
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.labels[index]}

    def batch(self, indices: torch.Tensor) -> dict[str, Any]:
        """The batch of examples ``indices``: ``{"image": (B, C, H, W), "label": (B,)}``.

        What the training loop and the evaluations read; a dataset with more per example (captions,
        cached latents) returns more keys, and they reach the model's ``loss`` and ``condition`` untouched.
        """
        return {"image": self.images[indices], "label": self.labels[indices]}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape (C, H, W) of one image."""
        channels, height, width = self.images.shape[1:]
        return channels, height, width

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one example, what every dataset names (:class:`~minisd.data.toys.PointDataset`: ``(D,)``)."""
        return self.image_shape

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, "
            f"images={tuple(self.images.shape)}, classes={len(self.classes)})"
        )


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> ImageDataset:
    """Load one split of a dataset as float32 images (N, 1, H, W) in [0, 1] and int64 labels (N,).

    ``name`` is one of DATASETS: "mnist" and "fashion-mnist" (28x28, pixel / 255, 60000 train
    and 10000 test images) are read from IDX files under resolve_data_dir(data_dir), downloaded
    there first if missing and ``download`` is true; "digits" (8x8, value / 16, 1500 train and
    297 test images) is built into scikit-learn and needs no files.
    Every call returns fresh tensors, so changing them in place cannot affect a later call.
    Raises DataError, with a message saying how to fix it, for an unknown name or split and for
    a missing, truncated, corrupt or undownloadable file.
    """
    _check_choice("dataset", name, DATASETS)
    _check_choice("split", split, SPLITS)
    if name == "digits":
        pixels, labels = load_digits_split(split)
        pixel_max = DIGITS_PIXEL_MAX
    else:
        pixels, labels = load_idx_split(name, split, data_dir=data_dir, download=download)
        pixel_max = IDX_PIXEL_MAX

    images = torch.from_numpy(pixels.astype(np.float32)).div_(pixel_max).unsqueeze(1)
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=CLASS_NAMES[name],
        name=name,
        split=split,
    )


def binarize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarisation: each pixel becomes 1 with probability equal to its intensity, else 0.

    ``images`` holds intensities in [0, 1], any shape (typically (B, C, H, W)); the result is a
    float32 tensor of 0s and 1s with the same shape. Sampling afresh every epoch (rather than
    thresholding once) gives binary data whose average is the grey-level image.
    Pass a seeded ``generator`` for reproducible samples.
    """
    probabilities = images.float()
    if probabilities.numel() and (probabilities.min() < 0 or probabilities.max() > 1):
        raise ValueError("binarize needs intensities in [0, 1]")
    return torch.bernoulli(probabilities, generator=generator)


def binarized_once(dataset: ImageDataset, seed: int = 0) -> ImageDataset:
    """``dataset`` with its images binarised a single time, with a fixed seed.

    Evaluation sets are binarised once (not per pass), so that every evaluation of every
    model in minisd scores the very same binary images and the numbers compare.
    """
    images = binarize(dataset.images, torch.Generator().manual_seed(seed))
    return ImageDataset(images, dataset.labels, dataset.classes, dataset.name, dataset.split)
