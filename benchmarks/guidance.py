"""Classifier-free against classifier guidance on class-conditional MNIST: the fidelity-diversity trade-off.

For each method and guidance scale, ``--samples-per-digit`` images of every digit are drawn (the same seeds
for every cell, so cells differ by their guidance only, and scale 0 is the same unconditional samples for
both methods). Each cell is scored by the evaluation classifier: the accuracy of the requested digit
(fidelity to the condition) and FID-MNIST against as many test images (quality and diversity together).

- classifier-free: the conditional diffusion model guided by its own unconditional branch (null labels);
- classifier: the same model's unconditional branch guided by the noise-aware classifier's gradient.

Prints a markdown table and writes, under ``--out`` (default docs/figures/guidance/), ``tradeoff.png``
(accuracy and FID against the scale, and FID against accuracy), ``samples_cfg.png`` and
``samples_classifier.png`` (one row per scale: the first samples of each digit) and ``results.json``.

    minisd train --config diffusion_mnist_cond --out runs/diffusion_mnist_cond
    minisd train --config noisy_classifier_mnist --out runs/noisy_classifier_mnist
    python benchmarks/guidance.py --diffusion runs/diffusion_mnist_cond \\
        --noisy-classifier runs/noisy_classifier_mnist
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

import minisd
from minisd.data import load_dataset
from minisd.diffusion.denoiser import ClippedDenoiser
from minisd.diffusion.guidance import ClassifierFreeGuidance, ClassifierGuidance
from minisd.diffusion.samplers import SAMPLERS
from minisd.diffusion.samplers import sample as run_sampler
from minisd.errors import ConfigError, MinisdError
from minisd.eval import fid
from minisd.figures.plotting import save_figure, show_image_grid
from minisd.outputs import check_can_create, check_writable, make_parent
from minisd.runtime import resolve_device
from minisd.models.files import read_checkpoint_config
from minisd.pipelines import resolve_model

METHODS = {"cfg": "classifier-free", "classifier": "classifier"}
GRID_PER_DIGIT = 2  # samples of each digit shown per scale in the sample grids


def check_runs(args: argparse.Namespace) -> str:
    """Refuse runs that cannot be compared before any sampling; return their dataset."""
    datasets = {name: read_checkpoint_config(resolve_model(path).folder).get("data", {}).get("dataset")
                for name, path in (("--diffusion", args.diffusion), ("--noisy-classifier", args.noisy_classifier),
                                   ("--classifier", args.classifier))}
    if len(set(datasets.values())) > 1:
        raise ConfigError(f"the three runs must share one dataset, got {datasets}")
    return datasets["--diffusion"]


def check_models(diffusion, noisy_classifier) -> None:
    if getattr(diffusion, "num_classes", None) is None:
        raise ConfigError("--diffusion must be a class-conditional diffusion model (preset diffusion_mnist_cond)")
    if diffusion.hparams.get("p_uncond", 0) == 0:
        raise ConfigError("--diffusion was trained without conditioning dropout (p_uncond = 0), so its null label, "
                          "the unconditional branch of both guidances, is untrained: train diffusion_mnist_cond")
    if noisy_classifier.hparams["schedule"] != diffusion.hparams["schedule"]:
        raise ConfigError(f"the noisy classifier was trained on the {noisy_classifier.hparams['schedule']} schedule, "
                          f"the diffusion model on {diffusion.hparams['schedule']}: train it with "
                          f"--set model.schedule={diffusion.hparams['schedule']}")


@torch.no_grad()
def guided_samples(diffusion, noisy_classifier, method: str, scale: float, labels: torch.Tensor,
                   args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in [0, 1], on the CPU, of the digits ``labels`` ``(N,)`` under one guidance.

    Batch i always draws from seed ``args.seed + i``: every method and scale sees the same noise.
    """
    batches, starts = [], range(0, len(labels), args.batch_size)
    bar = tqdm(total=len(starts) * args.steps, unit="step", leave=False, dynamic_ncols=True,
               desc=f"{METHODS[method]} guidance, scale {scale:g}")
    with bar:
        for index, start in enumerate(starts):
            wanted = labels[start:start + args.batch_size].to(device)
            null = diffusion.null_condition(len(wanted))
            if method == "cfg":
                guided, cond = ClassifierFreeGuidance(diffusion.denoiser, scale, uncond=null), {"label": wanted}
            else:
                guided, cond = ClassifierGuidance(diffusion.denoiser, noisy_classifier.logits, scale, wanted), null
            x0 = run_sampler(ClippedDenoiser(guided), (len(wanted), *diffusion.image_shape), sampler=args.sampler,
                             steps=args.steps, generator=torch.Generator(device).manual_seed(args.seed + index),
                             cond=cond, device=device, callback=lambda _: bar.update(1))
            batches.append(((x0 + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(batches)


def markdown_table(results: list[dict], scales: list[float], fid_name: str) -> str:
    lines = ["| scale | " + " | ".join(f"{METHODS[m]}: accuracy | {METHODS[m]}: {fid_name}" for m in METHODS) + " |",
             "|---|" + "---|---|" * len(METHODS)]
    for scale in scales:
        cells = {r["method"]: r for r in results if r["scale"] == scale}
        lines.append(f"| {scale:g} | " + " | ".join(f"{100 * cells[m]['accuracy']:.1f}% | {cells[m]['fid']:.2f}"
                                                     for m in METHODS) + " |")
    return "\n".join(lines)


def tradeoff_figure(results: list[dict], fid_name: str, path: Path) -> Path:
    """Accuracy and FID against the guidance scale, and FID against accuracy, for both methods."""
    fig = Figure(figsize=(13, 3.8))
    accuracy_ax, fid_ax, tradeoff_ax = fig.subplots(1, 3)
    for method, name in METHODS.items():
        cells = sorted((r for r in results if r["method"] == method), key=lambda r: r["scale"])
        scales = [r["scale"] for r in cells]
        accuracies, fids = [100 * r["accuracy"] for r in cells], [r["fid"] for r in cells]
        accuracy_ax.plot(scales, accuracies, "o-", label=name)
        fid_ax.plot(scales, fids, "o-", label=name)
        tradeoff_ax.plot(accuracies, fids, "o-", label=name)
        for scale, accuracy, value in zip(scales, accuracies, fids):
            tradeoff_ax.annotate(f"{scale:g}", (accuracy, value), textcoords="offset points", xytext=(4, 4),
                                 fontsize=8)
    accuracy_ax.set(title="accuracy of the requested digit", xlabel="guidance scale", ylabel="%")
    fid_ax.set(title=f"{fid_name} (lower is better)", xlabel="guidance scale")
    tradeoff_ax.set(title="trade-off (labels: scale)", xlabel="accuracy (%)", ylabel=fid_name)
    for ax in (accuracy_ax, fid_ax, tradeoff_ax):
        ax.grid(alpha=0.3)
    accuracy_ax.legend()
    return save_figure(fig, path)


def samples_figure(rows: dict[float, torch.Tensor], num_classes: int, title: str, path: Path) -> Path:
    """One row per scale: the first ``GRID_PER_DIGIT`` samples of each digit (``rows[scale]`` is digit-major)."""
    samples_per_digit = len(next(iter(rows.values()))) // num_classes
    shown = min(GRID_PER_DIGIT, samples_per_digit)
    fig = Figure(figsize=(num_classes * shown * 0.45, len(rows) * 0.55 + 0.5))
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, (scale, images) in zip(axes, rows.items()):
        per_digit = images.reshape(num_classes, samples_per_digit, *images.shape[1:])[:, :shown]
        show_image_grid(ax, per_digit.flatten(0, 1), num_classes * shown)
        ax.set_ylabel(f"scale {scale:g}", rotation=0, ha="right", va="center")
    axes[0].set_title(title)
    return save_figure(fig, path)


def main() -> None:
    try:
        run(parse_args())
    except MinisdError as err:  # one line, as the minisd command prints it
        sys.exit(f"guidance.py: error: {err}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--diffusion", type=Path, required=True,
                        help="a class-conditional diffusion run trained with p_uncond > 0 (diffusion_mnist_cond)")
    parser.add_argument("--noisy-classifier", type=Path, required=True, help="a noisy_classifier run of that schedule")
    parser.add_argument("--classifier", default="classifier_mnist",
                        help="the evaluation classifier of the same dataset, a run or shipped name (default: the "
                             "shipped classifier_mnist, behind every FID-MNIST of the docs)")
    parser.add_argument("--samples-per-digit", type=int, default=100)
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpmpp_2m_sde", choices=sorted(SAMPLERS))
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampler call (CFG doubles it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--data-dir", help="where the dataset is (default: $MINISD_DATA or ~/.cache/minisd/data)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures/guidance"))
    parser.add_argument("--overwrite", action="store_true", help="replace the figures and results already in --out")
    return parser.parse_args()


def run(args: argparse.Namespace) -> None:
    """Every cell, then the table, the figures and results.json."""

    device = resolve_device(args.device)
    dataset = check_runs(args)
    outputs = {name: args.out / name for name in ("tradeoff.png", "samples_cfg.png", "samples_classifier.png",
                                                   "results.json")}
    check_can_create(args.out, "output folder")
    for path in outputs.values():
        check_writable(path, args.overwrite)
    diffusion = minisd.load(args.diffusion, device=device)
    noisy_classifier = minisd.load(args.noisy_classifier, device=device)
    classifier = minisd.load(args.classifier, device=device)
    check_models(diffusion, noisy_classifier)

    num_classes = diffusion.num_classes
    labels = torch.arange(num_classes).repeat_interleave(args.samples_per_digit)
    test_images = load_dataset(dataset, "test", data_dir=args.data_dir).images[:len(labels)]
    fid_name = {"mnist": "FID-MNIST", "fashion-mnist": "FID-Fashion"}.get(dataset, f"FID-{dataset}")

    results, grids = [], {method: {} for method in METHODS}
    for method in METHODS:
        for scale in args.scales:
            start = time.perf_counter()
            images = guided_samples(diffusion, noisy_classifier, method, scale, labels, args, device)
            seconds = time.perf_counter() - start
            accuracy = (classifier.predict(images.to(device)).cpu() == labels).double().mean().item()
            cell = {"method": method, "scale": scale, "accuracy": accuracy,
                    "fid": fid(classifier, images, test_images), "sampling_seconds": seconds}
            print(f"{METHODS[method]} guidance, scale {scale:g}: accuracy {100 * accuracy:.1f}%, "
                  f"{fid_name} {cell['fid']:.2f} ({seconds:.0f} s)", flush=True)
            results.append(cell)
            grids[method][scale] = images

    print(f"\n{len(labels)} samples ({args.samples_per_digit} per digit), {args.sampler}, {args.steps} steps, "
          f"against {len(test_images)} test images\n")
    print(markdown_table(results, args.scales, fid_name))
    tradeoff_figure(results, fid_name, outputs["tradeoff.png"])
    for method, name in METHODS.items():
        samples_figure(grids[method], num_classes, f"{name} guidance", outputs[f"samples_{method}.png"])
    make_parent(outputs["results.json"]).write_text(json.dumps(
        {"diffusion": str(args.diffusion), "noisy_classifier": str(args.noisy_classifier),
         "classifier": str(args.classifier), "dataset": dataset, "sampler": args.sampler, "steps": args.steps,
         "samples_per_digit": args.samples_per_digit, "seed": args.seed, "device": str(device),
         "fid_name": fid_name, "results": results}, indent=2) + "\n")
    print(f"\nwrote {', '.join(str(path) for path in outputs.values())}")


if __name__ == "__main__":
    sys.exit(main())
