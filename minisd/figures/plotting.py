"""What every chapter's figures share. matplotlib's ``Figure`` is used directly, without pyplot:
no global backend is switched, so figures draw headless and a notebook's backend is left alone."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from minisd.images import make_grid
from minisd.outputs import make_parent


def show_image_grid(ax: Axes, images: torch.Tensor, nrow: int) -> None:
    """Draw ``(B, C, H, W)`` images in [0, 1] on ``ax`` as one grid, ``nrow`` per row, without ticks."""
    grid = make_grid(images.detach().cpu().clamp(0, 1), nrow)
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder is made now), cropped to its content."""
    fig.savefig(make_parent(path), dpi=dpi, bbox_inches="tight")
    return path
