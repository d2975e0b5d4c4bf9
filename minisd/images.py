"""Writing images: tensors in [0, 1] to PNG grids."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minisd.errors import MinisdError


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless ``overwrite``; create the parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise MinisdError(f"{path} already exists; pass --overwrite to replace it or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile ``(B, C, H, W)`` images into one ``(C, H', W')`` image, ``nrow`` per row (default: a square)."""
    count, channels, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    grid = torch.ones(channels, rows * (height + padding) + padding, nrow * (width + padding) + padding)
    for i, image in enumerate(images):
        top, left = padding + (i // nrow) * (height + padding), padding + (i % nrow) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, *, nrow: int | None = None, scale: int = 2,
                    overwrite: bool = False) -> Path:
    """Write ``(B, C, H, W)`` images in [0, 1] as one PNG grid, each pixel enlarged ``scale`` times."""
    path = check_writable(path, overwrite)
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow)
    array = (grid.numpy() * 255).round().astype(np.uint8)
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    image = Image.fromarray(array)
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return path
