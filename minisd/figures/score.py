"""Figures of the chapter "Score-based generative models": score fields, sampler paths, exact density, samples.

Luo (2022), section "Score-based Generative Models"; Song & Ermon (2019); Song et al. (2021). A score model of a
2-D toy (:class:`minisd.models.score.ScoreModel`) is small enough to show everything the chapter speaks of:

- ``score_field``: the learned score s(x, t) = grad log p_t(x) (by Tweedie's formula from the denoiser,
  :func:`minisd.diffusion.sde.score_from_denoiser`) as arrows at four noise levels, beside the exact score of the
  noised mixture for the ``gmm`` toy (:meth:`minisd.data.toys.GaussianMixture.noised`);
- ``trajectories``: the same starting noise carried to data by annealed Langevin dynamics, predictor-corrector
  and the probability-flow ODE;
- ``density``: the model's exact density exp(log p(x)) by the ODE's change of variables, beside the true one;
- ``samples``: samples against held-out data, with the energy distance between them.

Without a model, :func:`make_score_figures` first trains one on the ``gmm`` toy (the ``score_toy`` preset, about
15 s on one CPU core), so ``minisd figures score`` alone draws the whole chapter.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from minisd.data.toys import TOY_MIXTURE, GaussianMixture, load_toy
from minisd.diffusion.probability_flow import sample_probability_flow
from minisd.diffusion.score_samplers import sample_annealed_langevin, sample_pc
from minisd.diffusion.sde import score_from_denoiser
from minisd.diffusion.spacing import start_time, time_steps
from minisd.eval.two_sample import energy_distance
from minisd.figures.plotting import save_figure
from minisd.outputs import check_writable

FIGURE_NAMES = ("score_field", "trajectories", "density", "samples")

# Noise levels of the score field, as sigma_t / alpha_t (the VE-equivalent noise, so that every schedule is asked
# the same question): from below the narrowest gmm component's std (0.15), where the score sees every mode, to
# far above the data's spread, where p_t is one broad Gaussian and the score points at its centre.
FIELD_NOISE_LEVELS = (0.05, 0.2, 0.8, 3.0)
FIELD_GRID = 19  # arrows per side
TRAJECTORY_COUNT = 6
LANGEVIN_STEPS_PER_LEVEL = 5  # the samplers' defaults, named so the titles can say them
CORRECTOR_STEPS = 1
LIKELIHOOD_TOLERANCE = 1e-4  # rtol = atol of the density grid's ODE: the picture needs no more
LIKELIHOOD_BATCH = 4096  # a 50 x 50 grid in one solve: faster than several
HELD_OUT_NLL_POINTS = 500
BACKGROUND_PIXELS = 80  # the exact noised density behind the arrows
BACKGROUND_POINTS = 2000  # held-out points whose noised law is drawn behind them for toys without an exact density


# -- helpers ----------------------------------------------------------------------------------------------------


def plot_box(points: torch.Tensor, margin: float = 0.15) -> tuple[float, float, float, float]:
    """A square (x_low, x_high, y_low, y_high) around the bulk of ``points`` (N, 2): 0.2% to 99.8% quantiles,
    padded by ``margin`` of their span, so one stray point does not shrink the picture."""
    low = torch.quantile(points, 0.002, dim=0)
    high = torch.quantile(points, 0.998, dim=0)
    centre, half = (low + high) / 2, (high - low).max().item() / 2 * (1 + 2 * margin)
    return (centre[0].item() - half, centre[0].item() + half, centre[1].item() - half, centre[1].item() + half)


def grid_points(box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """``size`` x ``size`` points ``(size * size, 2)`` over ``box``, row by row from the bottom: the layout
    ``imshow(origin="lower")`` expects of values at them after ``view(size, size)``."""
    xs = torch.linspace(box[0], box[1], size)
    ys = torch.linspace(box[2], box[3], size)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)


def _time_at_noise(schedule, noise: float) -> tuple[torch.Tensor, float, float]:
    """The time t ``(1,)`` at which sigma_t / alpha_t = ``noise`` (log-SNR = -2 log noise), and alpha_t, sigma_t."""
    log_snr = torch.tensor([-2 * math.log(noise)], dtype=torch.float64)
    with torch.no_grad():
        t = schedule.time_at_log_snr(log_snr).float()
        alpha, sigma = schedule.alpha_sigma(t)
    return t, alpha.item(), sigma.item()


def _style(ax: Axes, box: tuple[float, float, float, float]) -> None:
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def _scatter_data(ax: Axes, points: torch.Tensor, **style) -> None:
    ax.scatter(points[:, 0], points[:, 1], s=style.pop("s", 2), c=style.pop("c", "0.6"), linewidths=0,
               rasterized=True, **style)


def _pixel_edges(box: tuple[float, float, float, float], size: int) -> tuple[float, float, float, float]:
    """The outer edges of the ``size`` x ``size`` pixels centred on :func:`grid_points` over ``box``."""
    half_x, half_y = (box[1] - box[0]) / (size - 1) / 2, (box[3] - box[2]) / (size - 1) / 2
    return (box[0] - half_x, box[1] + half_x, box[2] - half_y, box[3] + half_y)


def _density_image(ax: Axes, density: torch.Tensor, box, vmax: float | None = None, cmap: str = "viridis"):
    """``density`` ``(size, size)`` at :func:`grid_points` over ``box`` (rows bottom to top) as an image."""
    return ax.imshow(density.numpy(), origin="lower", extent=_pixel_edges(box, len(density)), cmap=cmap, vmin=0,
                     vmax=vmax, interpolation="bilinear", aspect="equal")


def _histogram(points: torch.Tensor, box, size: int) -> torch.Tensor:
    """A normalised 2-D histogram ``(size, size)`` of ``points`` (N, 2), one bin per pixel of :func:`_pixel_edges`."""
    histogram = torch.histogramdd(points, bins=[size, size], range=list(_pixel_edges(box, size)), density=True).hist
    return histogram.T  # histogramdd indexes [x, y]; images want [row = y, column = x]


# -- figure 1: the score field ----------------------------------------------------------------------------------


@torch.no_grad()
def score_field_figure(model, toy: str, path: Path, *, box, seed: int = 0,
                       noise_levels: tuple[float, ...] = FIELD_NOISE_LEVELS, arrows: int = FIELD_GRID) -> Path:
    """The learned score s(x, t) (top row) and, for the gmm toy, the exact score grad log p_t of the noised mixture
    (bottom row) at each noise level, as arrows over the noised data density p_t.

    |score| grows like (distance to the data) / sigma_t^2, so arrows at one scale would be thousands of times longer
    at sigma = 0.05 than at 3: each noise level (column) gets its own factor, shared by the model and the truth and
    written in the column's title. The model's panels give its relative error
    sqrt(E ||s_theta - grad log p_t||^2 / E ||grad log p_t||^2) over x_t ~ p_t, where the sampler meets it.
    """
    denoiser = model.denoiser
    exact = toy == "gmm"
    held_out = load_toy(toy, "test").points
    points = grid_points(box, arrows)
    pixels = grid_points(box, BACKGROUND_PIXELS)
    cell = (box[1] - box[0]) / (arrows - 1)
    generator = torch.Generator().manual_seed(seed)
    rows = 2 if exact else 1
    fig = Figure(figsize=(3.1 * len(noise_levels), 3.3 * rows + 0.8))
    axes = fig.subplots(rows, len(noise_levels), squeeze=False)
    for column, noise in enumerate(noise_levels):
        t, alpha, sigma = _time_at_noise(denoiser.schedule, noise)
        level = f"sigma_t = {sigma:.2g}" + ("" if abs(alpha - 1) < 1e-3 else f", alpha_t = {alpha:.2g}")
        fields = [score_from_denoiser(denoiser, points, t.expand(len(points))).float()]
        if exact:
            noised = TOY_MIXTURE.noised(alpha, sigma)
            background = noised.log_prob(pixels).exp().view(BACKGROUND_PIXELS, BACKGROUND_PIXELS)
            fields.append(noised.score(points))
            x_t = noised.sample(2000, generator)
            learned, true = score_from_denoiser(denoiser, x_t, t.expand(len(x_t))), noised.score(x_t)
            error = ((learned - true).square().sum() / true.square().sum()).sqrt().item()
            titles = [f"model, {level}\nrel. error on p_t: {error:.2f}", f"exact mixture, {level}"]
        else:
            # p_t of the held-out points themselves: the data law's p_t is this, blurred by their sampling.
            empirical = GaussianMixture(alpha * held_out[:BACKGROUND_POINTS], torch.full((BACKGROUND_POINTS,), sigma),
                                        torch.ones(BACKGROUND_POINTS))
            background = empirical.log_prob(pixels).exp().view(BACKGROUND_PIXELS, BACKGROUND_PIXELS)
            titles = [f"model, {level}"]
        # This column's scale: the 90th percentile of its arrows spans 1.2 grid cells.
        factor = 1.2 * cell / torch.quantile(torch.cat([f.norm(dim=1) for f in fields]), 0.9).item()
        titles[0] = f"arrows: score x {factor:.2g}\n" + titles[0]
        for row, (score, title) in enumerate(zip(fields, titles)):
            ax = axes[row, column]
            # The darkest blue at 2/3 of the colour map, so that black arrows stay visible on it.
            _density_image(ax, background, box, vmax=1.5 * background.max().item(), cmap="Blues")
            ax.quiver(points[:, 0], points[:, 1], factor * score[:, 0], factor * score[:, 1], angles="xy",
                      scale_units="xy", scale=1, width=0.006, color="black" if row == 0 else "darkred")
            ax.set_title(title, fontsize=9)
            _style(ax, box)
    if exact:
        axes[0, 0].set_ylabel("learned s_theta(x, t)", fontsize=9)
        axes[1, 0].set_ylabel("true grad log p_t(x)", fontsize=9)
    fig.suptitle(f"Score field of the {toy} toy over the noised density p_t (blue), from little noise to much.\n"
                 f"|score| ~ distance / sigma_t^2, so each noise level scales its arrows by its own factor "
                 f"(in its title)" + ("; model and truth share it" if exact else ""), fontsize=10)
    return save_figure(fig, path)


# -- figure 2: trajectories -------------------------------------------------------------------------------------


def sampling_grid(model, steps: int) -> torch.Tensor:
    """The times ``(N + 1,)`` the model samples on, as :meth:`DiffusionModel.sample` chooses them: its ladder of
    ``noise_levels`` (NCSN) if it was trained on one, else ``steps`` steps uniform in log-SNR."""
    schedule = model.denoiser.schedule
    if model.noise_levels is not None:
        return time_steps(schedule, model.noise_levels - 1, "uniform", t_max=1.0, t_min=1 / (model.noise_levels - 1))
    return time_steps(schedule, steps, "log_snr", t_max=start_time(schedule))


@torch.no_grad()
def record_trajectories(model, *, steps: int = 100, count: int = TRAJECTORY_COUNT,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """The paths ``(steps + 1, count, 2)`` of annealed Langevin, predictor-corrector and the probability-flow ODE,
    each from the same starting noise x_T ~ N(0, sigma_T^2 I) (``seed``), recorded by the samplers' callbacks: the
    state after each step (Langevin: after each noise level's Langevin steps; ODE: the solution at each time)."""
    denoiser = model.denoiser
    ts = sampling_grid(model, steps)
    _, sigma = denoiser.schedule.alpha_sigma(ts[:1])
    start = sigma.float() * torch.randn((count, *model.example_shape), generator=torch.Generator().manual_seed(seed))
    samplers = {
        "annealed_langevin": functools.partial(sample_annealed_langevin, steps_per_level=LANGEVIN_STEPS_PER_LEVEL),
        "pc": functools.partial(sample_pc, corrector_steps=CORRECTOR_STEPS),
        "probability_flow": sample_probability_flow,
    }
    paths = {}
    for name, sampler in samplers.items():
        states = [start]
        sampler(denoiser, start, ts, generator=torch.Generator().manual_seed(seed + 1),
                callback=lambda info: states.append(info["x"].detach().clone()))
        paths[name] = torch.stack(states)
    return paths


TRAJECTORY_TITLES = {
    "annealed_langevin": f"annealed Langevin (NCSN)\n{{levels}} noise levels x {LANGEVIN_STEPS_PER_LEVEL} "
                         f"Langevin steps",
    "pc": f"predictor-corrector (reverse SDE)\n{{levels}} steps, {CORRECTOR_STEPS} Langevin corrector each",
    "probability_flow": "probability-flow ODE (dopri5)\ndeterministic, same starts",
}


def trajectories_figure(model, toy: str, path: Path, *, box, steps: int = 100, seed: int = 0,
                        count: int = TRAJECTORY_COUNT) -> Path:
    """``count`` paths from noise to data of each sampler, from the same starting points, over held-out data."""
    paths = record_trajectories(model, steps=steps, count=count, seed=seed)
    held_out = load_toy(toy, "test").points[:2000]
    centre, half = ((box[0] + box[1]) / 2, (box[2] + box[3]) / 2), (box[1] - box[0]) / 2 * 1.6
    wide = (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)
    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, len(paths))
    colours = [f"C{i}" for i in range(count)]
    with torch.no_grad():
        alphas, sigmas = model.denoiser.schedule.alpha_sigma(sampling_grid(model, steps))
    # Steps at much noise jump across the frame: each step is drawn as opaque as the noise at its end is small
    # against the data's spread: solid once sigma_t / alpha_t is below 0.7 std(data), a tenth as opaque at 7 std.
    noise = torch.cat([(sigmas / alphas)[1:-1], torch.zeros(1)])  # the last step returns the clean estimate
    opacity = (0.7 * held_out.std() / noise).clamp(0.06, 1).tolist()
    for ax, (name, path_xy) in zip(axes, paths.items()):
        _scatter_data(ax, held_out, s=2, c="0.75")
        for i in range(count):
            segments = torch.stack([path_xy[:-1, i], path_xy[1:, i]], 1).numpy()
            ax.add_collection(LineCollection(segments, colors=[to_rgba(colours[i], o) for o in opacity],
                                             linewidths=[0.4 + 0.8 * o for o in opacity]))
            ax.scatter(path_xy[-1, i, 0], path_xy[-1, i, 1], s=28, color=colours[i], edgecolors="black",
                       linewidths=0.8, zorder=3)
        ax.set_title(TRAJECTORY_TITLES[name].format(levels=len(path_xy) - 1), fontsize=9)
        _style(ax, wide)
    fig.suptitle(f"{count} samples from noise to data, the same starts for each sampler (dots: where each ends; "
                 f"grey: held-out {toy} data).\nEach starts at x_T ~ N(0, {sigmas[0].item():.3g}^2 I), mostly "
                 f"outside the frame; each step is drawn the more opaque the less noise is left", fontsize=10)
    return save_figure(fig, path)


# -- figure 3: the model's exact density ------------------------------------------------------------------------


def model_log_density(model, points: torch.Tensor, *, tolerance: float = LIKELIHOOD_TOLERANCE,
                      batch_size: int = LIKELIHOOD_BATCH) -> torch.Tensor:
    """log p(x) ``(N,)`` of the model at ``points`` ``(N, 2)``: the probability-flow ODE with the exact divergence
    (:meth:`ScoreModel.nll`), ``batch_size`` points per solve, at rtol = atol = ``tolerance``."""
    chunks = [model.nll({"x": chunk}, rtol=tolerance, atol=tolerance)["nats"] for chunk in points.split(batch_size)]
    return -torch.cat(chunks).cpu()


def density_figure(model, toy: str, path: Path, *, box, grid_size: int = 50) -> Path:
    """exp(log p_theta(x)) on a ``grid_size`` x ``grid_size`` grid beside the true density (gmm) or a histogram of
    held-out data, on one colour scale, with the held-out negative log-likelihood of each in the title."""
    points = grid_points(box, grid_size)
    model_density = model_log_density(model, points).exp().view(grid_size, grid_size)
    held_out = load_toy(toy, "test").points
    nll_points = held_out[:HELD_OUT_NLL_POINTS]
    model_nll = -model_log_density(model, nll_points).mean().item()
    if toy == "gmm":
        reference = TOY_MIXTURE.log_prob(points).exp().view(grid_size, grid_size)
        reference_title = "true density p(x) of the mixture"
        true_nll = -TOY_MIXTURE.log_prob(nll_points).mean().item()
        nll_text = f"held-out NLL: model {model_nll:.3f}, true {true_nll:.3f} nats per point"
    else:
        reference = _histogram(held_out, box, grid_size)
        reference_title = f"histogram of {len(held_out)} held-out points"
        nll_text = f"held-out NLL: model {model_nll:.3f} nats per point"
    vmax = max(model_density.max().item(), reference.max().item())
    fig = Figure(figsize=(9.4, 4.4))
    axes = fig.subplots(1, 2)
    for ax, density, title in ((axes[0], model_density, "model exp(log p_theta(x))\nby the probability-flow ODE"),
                               (axes[1], reference, reference_title)):
        image = _density_image(ax, density, box, vmax=vmax)
        ax.set_title(title, fontsize=9)
        _style(ax, box)
    fig.colorbar(image, ax=axes, shrink=0.8, label="density")
    fig.suptitle(f"Exact likelihood of the {toy} toy: log p(x) = log p_T(x_T) + integral of div(drift) dt "
                 f"({grid_size}x{grid_size} grid, exact divergence, rtol {LIKELIHOOD_TOLERANCE:g})\n{nll_text}",
                 fontsize=10)
    return save_figure(fig, path)


# -- figure 4: samples ------------------------------------------------------------------------------------------


@torch.no_grad()
def samples_figure(model, toy: str, path: Path, *, box, count: int = 2000, steps: int = 100, seed: int = 0) -> Path:
    """``count`` predictor-corrector samples beside ``count`` held-out points, with their energy distance and,
    for scale, that between two halves of the held-out data (what a perfect model would score, up to noise)."""
    samples = model.sample(count, generator=torch.Generator().manual_seed(seed), sampler="pc", steps=steps).cpu()
    held_out = load_toy(toy, "test").points
    data, other_data = held_out[:count], held_out[count:2 * count]
    distance = energy_distance(samples, data)
    floor = energy_distance(data, other_data) if len(other_data) >= 2 else float("nan")
    fig = Figure(figsize=(9, 4.6))
    axes = fig.subplots(1, 2)
    for ax, points, title, colour in ((axes[0], samples, f"{len(samples)} samples (pc, {steps} steps)", "C0"),
                                      (axes[1], data, f"{len(data)} held-out points", "0.3")):
        _scatter_data(ax, points, s=3, c=colour, alpha=0.6)
        ax.set_title(title, fontsize=9)
        _style(ax, box)
    fig.suptitle(f"Samples of the {toy} score model against held-out data\n"
                 f"energy distance {distance:.4f} (two held-out halves: {floor:.4f}; 0 = same distribution)",
                 fontsize=10)
    return save_figure(fig, path)


# -- the chapter ------------------------------------------------------------------------------------------------


def train_toy_model(run_dir: str | os.PathLike, *, toy: str = "gmm", steps: int | None = None,
                    overrides: tuple[str, ...] = (), progress: bool = False):
    """Train the ``score_toy`` preset on ``toy`` into ``run_dir`` (``steps``: default the preset's; ``overrides``:
    more ``section.key=value`` settings) and load its EMA weights."""
    from minisd.models.files import load
    from minisd.train.config import load_run_config
    from minisd.train.run import train_from_config

    settings = [f"data.dataset={toy}", *(() if steps is None else (f"train.steps={steps}",)), *overrides]
    train_from_config(load_run_config("score_toy", settings), run_dir, progress=progress)
    return load(run_dir)


def make_score_figures(out_dir: str | os.PathLike, *, model=None, toy: str = "gmm", seed: int = 0,
                       overwrite: bool = False, train_steps: int | None = None,
                       train_overrides: tuple[str, ...] = (), grid_size: int = 50, steps: int = 100,
                       num_samples: int = 2000, progress: bool = False) -> dict[str, Path]:
    """Write the chapter's four figures (:data:`FIGURE_NAMES`) of a score model of the 2-D toy ``toy``.

    ``model``: a trained :class:`~minisd.models.score.ScoreModel`; without one, the ``score_toy`` preset is trained
    on ``toy`` first (``train_steps``, default the preset's 3000; ``train_overrides`` are more ``--set`` settings)
    in a temporary folder, with a progress bar if ``progress``. ``grid_size``: the density grid's side; ``steps``:
    sampler steps of the trajectories and samples; ``num_samples``: samples of the last figure. Returns
    {name: path}. Every output path is checked before any work (an existing figure is kept unless ``overwrite``).
    """
    out_dir = Path(out_dir)
    paths = {name: check_writable(out_dir / f"{name}.png", overwrite, suffixes=(".png",), what="figure")
             for name in FIGURE_NAMES}
    if model is None:
        with tempfile.TemporaryDirectory(prefix="minisd-score-") as folder:
            # The folder's name is the progress bar's label.
            model = train_toy_model(Path(folder) / f"score model of {toy}", toy=toy, steps=train_steps,
                                    overrides=train_overrides, progress=progress)
    if tuple(model.example_shape) != (2,):
        raise ValueError(f"the score figures draw models of 2-D points; this model's examples are "
                         f"{tuple(model.example_shape)}")
    box = plot_box(load_toy(toy, "test").points)
    return {
        "score_field": score_field_figure(model, toy, paths["score_field"], box=box, seed=seed),
        "trajectories": trajectories_figure(model, toy, paths["trajectories"], box=box, steps=steps, seed=seed),
        "density": density_figure(model, toy, paths["density"], box=box, grid_size=grid_size),
        "samples": samples_figure(model, toy, paths["samples"], box=box, count=num_samples, steps=steps, seed=seed),
    }
