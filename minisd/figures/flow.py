"""Chapter "Flow matching and few-step generation": the paths of the probability-flow ODE, curved and straight, and
a few-step model's pictures at 1, 2 and 4 evaluations beside its teacher's.

The trajectory figure needs no trained model: for a Gaussian mixture the denoiser is exact at every noise level
(Tweedie's formula on the noised mixture, :meth:`~minisd.data.toys.GaussianMixture.noised`), so the trajectories
drawn are the ODE's own, not a network's approximation of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from minisd.data.toys import GaussianMixture
from minisd.diffusion.samplers import sample_heun
from minisd.diffusion.schedules import NoiseSchedule, build_schedule
from minisd.diffusion.spacing import time_steps
from minisd.figures.plotting import save_figure
from minisd.outputs import check_writable


class MixtureDenoiser:
    """The exact x0_hat = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t of a Gaussian mixture (Luo (2022) eq. 133)."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        self.mixture, self.schedule = mixture, schedule

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        alpha, sigma = (value[0].item() for value in self.schedule.alpha_sigma(t[:1].double()))
        return (x_t + sigma**2 * self.mixture.noised(alpha, sigma).score(x_t)) / alpha


def two_blobs() -> GaussianMixture:
    """Two narrow modes, left and right: the data of the figure (and of the chapter's curvature argument)."""
    return GaussianMixture(torch.tensor([[-1.5, 0.5], [1.5, -0.5]]), torch.tensor([0.15, 0.15]),
                           torch.tensor([0.5, 0.5]))


def trajectories(schedule_name: str, noise: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """The ODE's paths ``(steps + 1, n, 2)`` from ``noise`` at t = 1 to the data, with the exact denoiser."""
    schedule = build_schedule(schedule_name).double()
    denoiser = MixtureDenoiser(two_blobs(), schedule)
    ts = time_steps(schedule, steps, "log_snr", t_max=1.0)
    _, sigma = schedule.alpha_sigma(ts[:1])
    states = [sigma * noise]
    sample_heun(denoiser, states[0], ts, callback=lambda info: states.append(info["x"]))
    return torch.stack(states)


def flow_trajectories_figure(path: Path, *, seed: int = 0, count: int = 40) -> Path:
    """The same ``count`` noise points carried to two-blob data by the probability-flow ODE of the cosine VP schedule
    and of the straight path of flow matching: the first bends every path, the second bends only where a path must
    choose its blob."""
    noise = torch.randn(count, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fig = Figure(figsize=(8.4, 4.2))
    for ax, (name, title) in zip(fig.subplots(1, 2), (("cosine", "variance preserving (cosine)"),
                                                       ("flow", "flow matching (straight path)"))):
        paths = trajectories(name, noise)
        for i in range(count):
            ax.plot(paths[:, i, 0], paths[:, i, 1], lw=0.7, color="tab:blue", alpha=0.6)
        ax.scatter(paths[0, :, 0], paths[0, :, 1], s=6, color="gray", label="noise, t = 1")
        ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=8, color="tab:red", label="data, t = 0")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
    fig.axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("probability-flow ODE paths, exact denoiser of two Gaussian blobs (Heun, 200 steps)", fontsize=9)
    return save_figure(fig, path)


DIGIT_PROMPTS = [f"a handwritten digit {k}" for k in range(10)]


def few_step_samples_figure(path: Path, model: Any, teacher: Any | None = None, *, steps: tuple[int, ...] = (1, 2, 4),
                            seed: int = 0) -> Path:
    """One picture of each "a handwritten digit k" (columns) drawn by the few-step ``model`` (a text-to-image
    pipeline) at its defaults but for the number of ``steps`` (rows), each column from the same noise in every row;
    a last row by ``teacher`` at its own defaults, from the same noise, when given."""
    rows = [(f"{n} step{'s' if n > 1 else ''}, {n} evaluation{'s' if n > 1 else ''}",
             model(DIGIT_PROMPTS, num_inference_steps=n, generator=torch.Generator().manual_seed(seed),
                   output_type="pt").images) for n in steps]
    if teacher is not None:
        settings = teacher.model
        evaluations = settings.sample_steps * (2 if settings.guidance_scale != 1 else 1)
        rows.append((f"teacher: {settings.sample_steps} steps at guidance {settings.guidance_scale:g}, "
                     f"{evaluations} evaluations",
                     teacher(DIGIT_PROMPTS, generator=torch.Generator().manual_seed(seed), output_type="pt").images))
    fig = Figure(figsize=(7.5, 0.95 * len(rows) + 0.3))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (label, images) in zip(axes, rows):
        strip = torch.cat(list(images.clamp(0, 1)[:, 0]), dim=1)  # the ten pictures side by side
        ax.imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=8, loc="left")
        ax.set_axis_off()
    fig.suptitle("\"a handwritten digit 0\" ... \"9\": the same noise in every row", fontsize=9)
    return save_figure(fig, path)


def make_flow_figures(out: Path, *, seed: int = 0, overwrite: bool = False, model: Any | None = None,
                      teacher: Any | None = None) -> dict[str, Path]:
    """The chapter's figures, written into ``out``: the trajectories, and with a few-step text-to-image ``model``
    its samples at 1, 2 and 4 steps (beside ``teacher``'s, when given)."""
    paths = {"trajectories": Path(out) / "trajectories.png"}
    if model is not None:
        paths["few_step_samples"] = Path(out) / "few_step_samples.png"
    for path in paths.values():  # before the work
        check_writable(path, overwrite, suffixes=(".png",), what="figure")
    written = {"trajectories": flow_trajectories_figure(paths["trajectories"], seed=seed)}
    if model is not None:
        written["few_step_samples"] = few_step_samples_figure(paths["few_step_samples"], model, teacher, seed=seed)
    return written
