"""The captioned datasets by name: ``load_captioned("mnist" | "fashion-mnist" | "shapes" | FOLDER, split)``.

It sits above the three sources (``captioned.py`` for MNIST-family attributes and captions, ``shapes.py``,
``image_folder.py``), which each build a :class:`CaptionedDataset` and know nothing of each other.

    train_set = load_captioned("mnist", "train")
    torch.manual_seed(step)                                   # the training loop does this at every step
    batch = train_set.batch(torch.arange(4))                  # {"image", "label", "caption": list of 4 str}
    train_set.captions(torch.arange(4), templates="heldout")  # sentences kept out of training, for evaluation
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from minisd.data.attributes import clothing_attribute_bins, digit_attribute_bins
from minisd.data.captioned import CaptionedDataset
from minisd.data.captions import CLOTHING_GRAMMAR, DIGIT_GRAMMAR
from minisd.data.dataset import load_dataset
from minisd.data.image_folder import load_image_folder
from minisd.data.shapes import make_shapes
from minisd.errors import ConfigError, DataError

CAPTIONED_DATASETS = ("mnist", "fashion-mnist", "shapes")
SHAPES_SPLIT_SIZES = {"train": 50_000, "test": 5_000}


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square ``images`` (N, C, H, W) resized to (N, C, size, size), anti-aliased, kept in [0, 1]."""
    if images.shape[-1] == size:
        return images
    resized = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)
    return resized.clamp_(0, 1)


def load_captioned(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    num_images: int | None = None,
    seed: int = 0,
    size: int | None = None,
    channels: int | None = None,
) -> CaptionedDataset:
    """A captioned dataset: "mnist", "fashion-mnist", "shapes", or the path of a folder of images with captions.

    - "mnist" / "fashion-mnist": the IDX split (see load_dataset; ``data_dir`` as there), each image's
      attributes measured once (minisd.data.attributes: thickness, slant, width / brightness, size bins).
    - "shapes": made on the fly, 50,000 train or 5,000 test images unless ``num_images``; the train split
      uses seed ``2 * seed`` and the test split ``2 * seed + 1``, so they never share a seed.
    - a folder: load_image_folder (``metadata.jsonl`` or a ``.txt`` beside each image); the same
      images whatever ``split``, since a folder has no split of its own; at its own size and colour unless
      ``size`` (or ``channels``: 1 grey, 3 RGB) says otherwise.

    ``num_images`` keeps the first that many images; ``size`` resizes to size x size (MNIST-family
    images are measured at 28x28 first). An unknown name is a DataError.
    """
    if num_images is not None and num_images < 1:
        raise ConfigError(f"num_images must be at least 1, got {num_images}")
    if name == "shapes":
        if split not in SHAPES_SPLIT_SIZES:
            raise DataError(f"unknown split {split!r}; choose one of: {', '.join(SHAPES_SPLIT_SIZES)}")
        dataset = make_shapes(num_images or SHAPES_SPLIT_SIZES[split], 2 * seed + (split == "test"), size=size or 32)
        dataset.split = split
        return dataset
    if name in ("mnist", "fashion-mnist"):
        plain = load_dataset(name, split, data_dir=data_dir)
        # Copies, so that keeping a few images does not keep the whole split's memory alive.
        images, labels = plain.images[:num_images].clone(), plain.labels[:num_images].clone()
        measure, grammar = ((digit_attribute_bins, DIGIT_GRAMMAR) if name == "mnist"
                            else (clothing_attribute_bins, CLOTHING_GRAMMAR))
        return CaptionedDataset(_resized(images, size or images.shape[-1]), labels, plain.classes, name, split,
                                attributes=measure(images, labels), grammar=grammar)
    if Path(name).expanduser().is_dir() or os.sep in name or name.startswith((".", "~")):
        dataset = load_image_folder(Path(name).expanduser(), size=size, channels=channels)
        return dataset if num_images is None else dataset.subset(torch.arange(min(num_images, len(dataset))))
    raise DataError(f"unknown captioned dataset {name!r}; choose one of: {', '.join(CAPTIONED_DATASETS)}, "
                    "or give the path of a folder of images with captions")
