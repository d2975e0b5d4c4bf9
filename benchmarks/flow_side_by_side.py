"""Flow matching against the variance-preserving schedules: the same network, data and training, sampled at 1-50 NFE.

For each class-conditional MNIST run given (benchmarks/flow_side_by_side.sh trains them: VP cosine with eps or v
prediction, flow matching with logit-normal or uniform times), and each sampler and budget of denoiser evaluations
(NFE), it draws 100 images of every digit (1000, the same seeds in every cell), conditional at guidance 1 (the
plain conditional model), and scores them with the shipped evaluation classifier: FID-MNIST against the first 1000
test images (the chapter 4 convention) and the accuracy of the requested digit (prompt adherence). Each run's
probability-flow ODE bits/dim on the first 100 test images comes beside them (chapter 5; dequantised, Hutchinson).
Cells are kept in RUN/side_by_side/*.json and skipped when the script runs again.

    python benchmarks/flow_side_by_side.py runs/bench/diffusion_mnist_cond runs/bench/vp_v_mnist_cond \\
        runs/bench/flow_mnist_cond runs/bench/flow_uniform_mnist_cond
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from minisd.data import load_dataset
from minisd.diffusion.samplers import num_evaluations
from minisd.eval.fid import feature_statistics, frechet_distance
from minisd.pipelines import load

BUDGETS = (1, 2, 4, 8, 20, 50)
SAMPLERS = ("euler", "heun", "dpmpp_2m")


def steps_within(sampler: str, budget: int) -> int:
    """The most steps of ``sampler`` that spend at most ``budget`` evaluations (Heun: 2N - 1)."""
    steps = 1
    while num_evaluations(sampler, steps + 1) <= budget:
        steps += 1
    return steps


def cell(model, classifier, test_statistics, sampler: str, steps: int, per_digit: int, batch: int) -> dict:
    labels = torch.arange(10).repeat_interleave(per_digit)
    images, start = [], time.perf_counter()
    for first in range(0, len(labels), batch):
        generator = torch.Generator().manual_seed(first)  # the same seeds in every cell
        images.append(model.sample(len(labels[first:first + batch]), generator=generator, sampler=sampler,
                                   steps=steps, cond={"label": labels[first:first + batch]}))
    images = torch.cat(images)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = torch.cat([classifier.predict(images[i:i + 500]) for i in range(0, len(images), 500)])
    return {"sampler": sampler, "steps": steps, "nfe": num_evaluations(sampler, steps),
            "fid": frechet_distance(*feature_statistics(classifier, images), *test_statistics),
            "accuracy": (predicted == labels).double().mean().item(), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--classifier", default="classifier_mnist")
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--likelihood-images", type=int, default=100, help="0: no ODE bits/dim")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/flow/fid_against_nfe.png"))
    args = parser.parse_args()
    classifier = load(args.classifier)
    test = load_dataset("mnist", "test")
    test_statistics = feature_statistics(classifier, test.images[:10 * args.per_digit])
    table = {}
    for run in args.runs:
        model = load(run)
        out = run / "side_by_side"
        out.mkdir(exist_ok=True)
        for budget in BUDGETS:
            for sampler in SAMPLERS:
                steps = steps_within(sampler, budget)
                path = out / f"{sampler}_{steps}.json"
                if not path.is_file():
                    path.write_text(json.dumps(cell(model, classifier, test_statistics, sampler, steps,
                                                    args.per_digit, args.batch_size)) + "\n")
                table[run.name, sampler, budget] = json.loads(path.read_text())
                print(run.name, table[run.name, sampler, budget], flush=True)
        path = out / "ode_bits_per_dim.json"
        if args.likelihood_images and not path.is_file():
            batch = test.batch(torch.arange(args.likelihood_images))
            result = model.ode_nll(batch, generator=torch.Generator().manual_seed(0))
            path.write_text(json.dumps({"bits_per_dim": result["bits_per_dim"].mean().item(),
                                        "images": args.likelihood_images, "nfe": int(result["nfe"])}) + "\n")
        if path.is_file():
            table[run.name, "ode"] = json.loads(path.read_text())
    print(f"\nFID-MNIST (accuracy of the requested digit), {10 * args.per_digit} conditional samples, against the NFE "
          f"budget [evaluations spent, where fewer]\n")
    print("| run | sampler | " + " | ".join(f"NFE {budget}" for budget in BUDGETS) + " | ODE bits/dim |")
    print("|---|---|" + "---|" * (len(BUDGETS) + 1))
    for run in args.runs:
        for sampler in SAMPLERS:
            cells = [table[run.name, sampler, budget] for budget in BUDGETS]
            ode = table.get((run.name, "ode"), {}).get("bits_per_dim")
            print(f"| {run.name} | {sampler} | " + " | ".join(
                f"{c['fid']:.1f} ({100 * c['accuracy']:.1f}%)" + (f" [{c['nfe']}]" if c["nfe"] != budget else "")
                for c, budget in zip(cells, BUDGETS)) + f" | {'' if ode is None or sampler != 'euler' else f'{ode:.3f}'} |")


    figure(table, args.runs, args.figure)


def figure(table: dict, runs: list[Path], path: Path) -> None:
    """FID-MNIST against NFE, one panel per sampler, one line per run (log-log)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, 3.4))
    for ax, sampler in zip(fig.subplots(1, len(SAMPLERS), sharey=True), SAMPLERS):
        for run in runs:
            cells = [table[run.name, sampler, budget] for budget in BUDGETS]
            ax.plot([c["nfe"] for c in cells], [c["fid"] for c in cells], marker="o", label=run.name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("denoiser evaluations (NFE)")
        ax.set_title(sampler, fontsize=9)
    fig.axes[0].set_ylabel("FID-MNIST (1000 samples)")
    fig.axes[-1].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
