"""Writing samples as pictures: images, tensors in [0, 1], to PNG grids; 2-D points to a scatter plot."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image

from minisd.errors import SamplingError
from minisd.outputs import check_writable, make_parent

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


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


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``(N, C, H, W)`` in [0, 1] -> N PIL images (grey for one channel, RGB for three)."""
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, *, nrow: int | None = None, scale: int = 2,
                    overwrite: bool = False) -> Path:
    """Write ``(B, C, H, W)`` images in [0, 1] as one image grid (PNG, or another format by the suffix),
    each pixel enlarged ``scale`` times. Refuses images that are not finite rather than write them as black."""
    path = check_writable(path, overwrite, suffixes=IMAGE_SUFFIXES, what="image")
    if not torch.isfinite(images).all():
        raise SamplingError(f"the images hold NaN or infinite values; nothing was written to {path}")
    image = to_pil(make_grid(images.detach().float().cpu().clamp(0, 1), nrow)[None])[0]
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(make_parent(path))
    return path


def save_point_scatter(points: torch.Tensor, path: str | os.PathLike, *, title: str = "",
                       overwrite: bool = False) -> Path:
    """Write 2-D ``points`` ``(N, 2)`` as a scatter plot (PNG, or another format by the suffix), on equal axes.
    Refuses points that are not finite rather than leave them out of the picture."""
    import io

    from matplotlib.figure import Figure

    path = check_writable(path, overwrite, suffixes=IMAGE_SUFFIXES, what="image")
    if points.dim() != 2 or points.shape[1] != 2:
        raise SamplingError(f"a scatter plot shows 2-D points, (N, 2); these are {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise SamplingError(f"the points hold NaN or infinite values; nothing was written to {path}")
    points = points.detach().float().cpu()
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    # Smaller, fainter dots as there are more of them, so that dense regions still show their density.
    ax.scatter(points[:, 0], points[:, 1], s=max(0.5, min(6.0, 4000 / len(points))), alpha=0.5, linewidths=0,
               color="C0", rasterized=True)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    Image.open(buffer).convert("RGB").save(make_parent(path))
    return path
