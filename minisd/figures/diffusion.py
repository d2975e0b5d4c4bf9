"""Figures of the chapter "Variational diffusion models": noising, schedules, trajectories, sampler grids."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from matplotlib.figure import Figure

from minisd.diffusion import build_schedule
from minisd.diffusion.samplers import SAMPLERS, SCORE_SAMPLERS
from minisd.diffusion.schedules import SCHEDULES
from minisd.figures.plotting import save_figure, show_image_grid
from minisd.outputs import check_writable
from minisd.models.diffusion import to_model_range

NOISE_TIMES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def noising_figure(image: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """One image ``(C, H, W)`` in [0, 1] noised to x_t = alpha_t x0 + sigma_t eps over t, under each schedule."""
    fig = Figure(figsize=(len(NOISE_TIMES) * 0.9, 0.9 * len(SCHEDULES) + 0.4))
    axes = fig.subplots(len(SCHEDULES), 1)
    eps = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    t = torch.tensor(NOISE_TIMES)
    for ax, name in zip(axes, SCHEDULES):
        with torch.no_grad():
            alpha, sigma = build_schedule(name).alpha_sigma(t)
        noised = alpha.view(-1, 1, 1, 1) * to_model_range(image) + sigma.view(-1, 1, 1, 1) * eps
        show_image_grid(ax, (noised + 1) / 2, len(NOISE_TIMES))
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    axes[0].set_title("x_t = alpha_t x_0 + sigma_t eps at t = " + ", ".join(f"{v:g}" for v in NOISE_TIMES))
    return save_figure(fig, path)


def schedules_figure(path: Path) -> Path:
    """alpha_t, sigma_t and log-SNR over t for every schedule (the learned one at its initialisation)."""
    fig = Figure(figsize=(11, 3.4))
    axes = fig.subplots(1, 3)
    t = torch.linspace(0, 1, 401)
    for name in SCHEDULES:
        with torch.no_grad():
            schedule = build_schedule(name)
            alpha, sigma = schedule.alpha_sigma(t)
            log_snr = schedule.log_snr(t)
        for ax, values in zip(axes, (alpha, sigma, log_snr)):
            ax.plot(t, values, label=name)
    for ax, title in zip(axes, ("alpha_t (signal)", "sigma_t (noise)", "log-SNR lambda(t)")):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[2].legend()
    return save_figure(fig, path)


@torch.no_grad()
def trajectory_figure(model, path: Path, *, sampler: str = "dpmpp_2m", steps: int = 10, seed: int = 0,
                      count: int = 4) -> Path:
    """The state x_t (top rows) and the model's x0-prediction (bottom rows) after every sampler step."""
    states, predictions = [], []

    def record(info: dict) -> None:
        states.append(((info["x"] + 1) / 2).cpu())
        predictions.append(((info["x0_pred"] + 1) / 2).cpu())

    model.sample(count, sampler=sampler, steps=steps, callback=record,
                 generator=torch.Generator(model.device).manual_seed(seed))
    fig = Figure(figsize=(steps * 0.9, count * 1.9))
    axes = fig.subplots(2, 1)
    for ax, frames, label in zip(axes, (states, predictions), ("x_t", "x0 prediction")):
        show_image_grid(ax, torch.stack(frames, 1).flatten(0, 1), steps)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    axes[0].set_title(f"{sampler}, {steps} steps: each row one sample, left to right from noise to image")
    return save_figure(fig, path)


@torch.no_grad()
def sampler_grid_figure(model, path: Path, *, steps: tuple[int, ...] = (5, 10, 20, 50), seed: int = 0,
                        count: int = 8) -> Path:
    """Samples from the same seed for every sampler of this chapter (rows) at every step count (columns); the score
    chapter's samplers (``SCORE_SAMPLERS``) have their own figures, :mod:`minisd.figures.score`."""
    samplers = sorted(set(SAMPLERS) - set(SCORE_SAMPLERS))
    fig = Figure(figsize=(len(steps) * count * 0.35, len(samplers) * 0.6 + 0.5))
    axes = fig.subplots(len(samplers), len(steps), squeeze=False)
    for row, sampler in enumerate(samplers):
        for column, num_steps in enumerate(steps):
            images = model.sample(count, sampler=sampler, steps=num_steps,
                                  generator=torch.Generator(model.device).manual_seed(seed))
            show_image_grid(axes[row, column], images, count)
            if column == 0:
                axes[row, column].set_ylabel(sampler, rotation=0, ha="right", va="center")
            if row == 0:
                axes[row, column].set_title(f"{num_steps} steps")
    return save_figure(fig, path)


def make_diffusion_figures(out_dir: str | os.PathLike, *, model=None, image: torch.Tensor | None = None,
                           seed: int = 0, overwrite: bool = False) -> dict[str, Path]:
    """Write the chapter's figures: noising and schedules always; trajectory and sampler grid given a model."""
    out_dir = Path(out_dir)
    names = ["noising", "schedules"] + (["trajectory", "samplers"] if model is not None else [])
    paths = {name: check_writable(out_dir / f"{name}.png", overwrite) for name in names}
    written = {"schedules": schedules_figure(paths["schedules"])}
    if image is not None:
        written["noising"] = noising_figure(image, paths["noising"], seed)
    if model is not None:
        written["trajectory"] = trajectory_figure(model, paths["trajectory"], seed=seed)
        written["samplers"] = sampler_grid_figure(model, paths["samplers"], seed=seed)
    return written
