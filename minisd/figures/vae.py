"""Figures of the chapter "Autoencoder and VAE": reconstructions, the latent space, the latent manifold, samples."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minisd.data import ImageDataset
from minisd.figures.plotting import save_figure, show_image_grid
from minisd.models import Autoencoder, Model
from minisd.models.base import EncoderDecoderModel
from minisd.outputs import check_writable
from minisd.train.loop import read_metrics


def _codes(model: Model, images: torch.Tensor) -> torch.Tensor:
    """Where each image lands in latent space: the autoencoder's code, or the mean of the VAE's q(z|x)."""
    encoded = model.encode(images)
    return encoded if isinstance(model, Autoencoder) else encoded[0]


def _reconstruct(model: Model, images: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model.decode(_codes(model, images)))


def reconstructions_figure(model: Model, images: torch.Tensor, path: Path, count: int = 16) -> Path:
    """Test images (top) and their reconstructions through the latent bottleneck (bottom)."""
    fig = Figure(figsize=(count * 0.6, 1.6))
    axes = fig.subplots(2, 1)
    show_image_grid(axes[0], images[:count], count)
    show_image_grid(axes[1], _reconstruct(model, images[:count]), count)
    axes[0].set_ylabel("data", rotation=0, ha="right", va="center")
    axes[1].set_ylabel("reconstruction", rotation=0, ha="right", va="center")
    fig.suptitle(f"{model.model_type}: reconstructions through a {model.latent_dim}-d latent")
    return save_figure(fig, path)


def latent_space_figure(model: Model, dataset: ImageDataset, path: Path, count: int = 5000) -> Path:
    """The test set's latent codes, coloured by class (first two principal axes if the latent has more than 2)."""
    codes = _codes(model, dataset.images[:count].to(model.device)).cpu()
    title = f"{model.model_type}: latent codes of {len(codes)} test images"
    if codes.shape[1] > 2:
        centred = codes - codes.mean(0)
        codes = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
        title += " (first two principal axes)"
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.subplots()
    points = ax.scatter(codes[:, 0], codes[:, 1], c=dataset.labels[:count], cmap="tab10", s=3, alpha=0.7,
                        vmin=-0.5, vmax=len(dataset.classes) - 0.5)
    colorbar = fig.colorbar(points, ax=ax, ticks=range(len(dataset.classes)))
    colorbar.ax.set_yticklabels(dataset.classes)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title)
    return save_figure(fig, path)


def empty_fraction(codes: torch.Tensor, bins: int = 30) -> float:
    """The fraction of a ``bins x bins`` grid over the codes' central 98% box that holds no code.

    ``codes``: ``(N, 2)``. A measure of the gaps in a latent plane: decoding a point of an empty
    cell asks the decoder about a code it never saw in training.
    """
    low, high = torch.quantile(codes, 0.01, dim=0), torch.quantile(codes, 0.99, dim=0)
    inside = ((codes >= low) & (codes <= high)).all(1)
    cells = ((codes[inside] - low) / (high - low) * bins).long().clamp(max=bins - 1)
    occupied = torch.unique(cells[:, 0] * bins + cells[:, 1]).numel()
    return 1.0 - occupied / bins**2


def latent_planes_figure(models: dict[str, Model], dataset: ImageDataset, path: Path, count: int = 5000) -> Path:
    """The same test images' 2-d codes under each model, side by side: ``{panel title: model}``.

    The plain autoencoder's codes form islands with empty plane between them; the VAE's KL term
    pulls them into one ball around the origin, where the N(0, I) prior puts its samples.
    """
    fig = Figure(figsize=(6 * len(models) + 1, 5.5))
    axes = fig.subplots(1, len(models))
    labels = dataset.labels[:count]
    for ax, (title, model) in zip(axes, models.items()):
        if model.latent_dim != 2:
            raise ValueError(f"{title}: the latent plane needs a 2-d latent, not {model.latent_dim}-d")
        codes = _codes(model, dataset.images[:count].to(model.device)).cpu()
        points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7,
                            vmin=-0.5, vmax=len(dataset.classes) - 0.5)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("z[0]")
        ax.set_ylabel("z[1]")
        ax.set_title(f"{title}\n{empty_fraction(codes):.0%} of the codes' central box is empty")
    colorbar = fig.colorbar(points, ax=list(axes), ticks=range(len(dataset.classes)))
    colorbar.ax.set_yticklabels(dataset.classes)
    fig.suptitle(f"latent codes of the same {len(labels)} test images", y=1.04)
    return save_figure(fig, path)


@torch.no_grad()
def decoded_plane(model: Model, z0_values: torch.Tensor, z1_values: torch.Tensor) -> torch.Tensor:
    """The images a 2-d latent model decodes (its Bernoulli means) on the grid ``z0_values`` x ``z1_values``:
    ``(len(z1) * len(z0), C, H, W)`` in [0, 1], row by row, z[0] growing to the right and z[1] upwards (the first
    row is the largest z[1]), as the scatter plot of the codes draws them."""
    z0, z1 = torch.meshgrid(z0_values, z1_values.flip(0), indexing="xy")
    latents = torch.stack([z0.flatten(), z1.flatten()], dim=1).to(model.device)
    return torch.sigmoid(model.decode(latents))


def latent_manifold_figure(model: Model, dataset: ImageDataset, path: Path, side: int = 20) -> Path:
    """Decoded images over a grid of the 2-d latent plane, with axes in the latent coordinates z[0], z[1].

    For the VAE the grid sits at evenly spaced quantiles of the N(0, 1) prior (Kingma &
    Welling 2014, fig. 4), so it covers where the prior puts its mass; for the autoencoder,
    which has no prior, it spans the range of the test codes. The axes are those of
    :func:`latent_space_figure`, so a code of the scatter plot can be found in the grid.
    """
    if isinstance(model, Autoencoder):
        codes = _codes(model, dataset.images[:2000].to(model.device))
        low, high = codes.min(0).values, codes.max(0).values
        axes_values = [torch.linspace(low[i].item(), high[i].item(), side) for i in range(2)]
        grid_name = "over the range of the test codes"
    else:
        quantiles = torch.linspace(0.05, 0.95, side)
        axes_values = [torch.special.ndtri(quantiles)] * 2
        grid_name = "at quantiles 0.05 ... 0.95 of the prior, so the axes are not linear"
    fig = Figure(figsize=(8, 8))
    ax = fig.subplots()
    show_image_grid(ax, decoded_plane(model, *axes_values), side)
    grid_height, grid_width = ax.images[-1].get_array().shape[:2]
    image_height, image_width = model.image_shape[1:]
    # Rows run top to bottom, so z[1] grows upwards as in the scatter plot.
    ax.set_xticks(*_latent_ticks(axes_values[0], _cell_centres(grid_width, side, image_width)))
    ax.set_yticks(*_latent_ticks(axes_values[1], _cell_centres(grid_height, side, image_height)[::-1]))
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(f"{model.model_type}: images decoded over the 2-d latent plane\n(a {side} × {side} grid {grid_name})")
    return save_figure(fig, path)


def _cell_centres(grid_size: int, cells: int, cell_size: int) -> np.ndarray:
    """Pixel coordinates of the centres of ``cells`` images of ``cell_size`` pixels tiled, with equal
    padding around each, along ``grid_size`` pixels of an image grid."""
    padding = (grid_size - cells * cell_size) / (cells + 1)
    return padding + np.arange(cells) * (cell_size + padding) + (cell_size - 1) / 2


def _latent_ticks(values: torch.Tensor, centres: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Ticks at round latent values for cells that decode the increasing ``values`` at pixel ``centres``.

    A cell shows the image of the z at its centre; a tick between two centres is placed by linear
    interpolation between them.
    """
    low, high = values[0].item(), values[-1].item()
    ticks = [t for t in MaxNLocator(nbins=8).tick_values(low, high) if low <= t <= high]
    labels = [f"{round(t, 6) + 0:g}".replace("-", "\N{MINUS SIGN}") for t in ticks]  # + 0 turns -0 into 0
    return np.interp(ticks, values.numpy(), centres), labels  # minus signs as matplotlib's own tick labels have


def samples_figure(model: Model, path: Path, count: int = 64, seed: int = 0) -> Path:
    """Images decoded from z ~ N(0, I): what the VAE generates."""
    samples = model.sample(count, generator=torch.Generator(model.device).manual_seed(seed))
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    show_image_grid(ax, samples, int(math.sqrt(count)))
    ax.set_title(f"{model.model_type}: samples from the prior (seed {seed})")
    return save_figure(fig, path)


def training_curve_figure(metrics_path: Path, path: Path) -> Path:
    """Training loss and evaluation loss over steps, from a run's ``metrics.jsonl``."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    ax.plot(*zip(*train), label="train (batch)", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="test (EMA weights)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per image)")
    ax.set_ylim(top=min(max(v for _, v in train), 2 * train[-1][1]))
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("training curve")
    return save_figure(fig, path)


@torch.no_grad()
def make_vae_figures(model: Model, dataset: ImageDataset, out_dir: str | os.PathLike, *,
                     metrics_path: str | os.PathLike | None = None, seed: int = 0,
                     overwrite: bool = False) -> dict[str, Path]:
    """Write every figure of the chapter for ``model`` (autoencoder, VAE or HVAE) on ``dataset``'s images.

    Returns ``{figure name: path}``. Reconstructions and the latent space need a single latent, the
    manifold a 2-d one; samples need a generative model.
    """
    out_dir = Path(out_dir)
    model.eval()
    single_latent = isinstance(model, EncoderDecoderModel)  # the HVAE has a chain of latents: no 2-d picture
    wanted = ["reconstructions", "latent_space"] if single_latent else []
    if single_latent and model.latent_dim == 2:
        wanted.append("latent_manifold")
    if model.can_sample:
        wanted.append("samples")
    if metrics_path is not None and Path(metrics_path).is_file():
        wanted.append("training_curve")
    paths = {name: check_writable(out_dir / f"{name}.png", overwrite) for name in wanted}
    images = dataset.images[:16].to(model.device)
    makers = {
        "reconstructions": lambda p: reconstructions_figure(model, images, p),
        "latent_space": lambda p: latent_space_figure(model, dataset, p),
        "latent_manifold": lambda p: latent_manifold_figure(model, dataset, p),
        "samples": lambda p: samples_figure(model, p, seed=seed),
        "training_curve": lambda p: training_curve_figure(Path(metrics_path), p),
    }
    return {name: makers[name](path) for name, path in paths.items()}


@torch.no_grad()
def make_latent_planes_figure(autoencoder: Model, vae: Model, dataset: ImageDataset, out_dir: str | os.PathLike, *,
                              overwrite: bool = False) -> dict[str, Path]:
    """Write ``latent_planes.png``: a 2-d autoencoder's latent plane beside a 2-d VAE's, on ``dataset``'s images.

    Returns ``{"latent_planes": path}``.
    """
    path = check_writable(Path(out_dir) / "latent_planes.png", overwrite)
    autoencoder.eval()
    vae.eval()
    models = {"plain autoencoder (reconstruction only)": autoencoder, "VAE (reconstruction + KL to N(0, I))": vae}
    return {"latent_planes": latent_planes_figure(models, dataset, path)}
