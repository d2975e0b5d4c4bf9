"""FID against denoiser evaluations (NFE) for every sampler of a trained diffusion model.

Every cell is one user command, ``minisd eval RUN --skip-likelihood --fid-classifier CLASSIFIER
--sampler S --steps N --json ...``: 1000 samples (seed 0) against the first 1000 test images. Finished cells
are kept in OUT/<sampler>_<steps>.json (ode_rk4_<steps>.json with the sampler's arguments) and skipped when the
script runs again, so an interrupted sweep resumes where it stopped. Afterwards it prints the markdown table of
benchmarks/README.md.

Samplers run at their default arguments, except those of :data:`SAMPLER_ARGS`: the ode sampler's default, the
adaptive dopri5, spends what its tolerances ask rather than a budget, so it is benchmarked with rk4 on the grid.

    python benchmarks/diffusion_samplers.py runs/bench/diffusion_mnist classifier_mnist

Steps are chosen so that no sampler spends more than the NFE budget, by
:func:`~minisd.diffusion.samplers.num_evaluations` with the sampler's arguments: Heun spends 2N - 1 evaluations in
N steps, so its budget of 5 buys 3 steps (5 NFE) and its budget of 10 buys 5 steps (9 NFE); annealed Langevin
spends 5N + 1, so a budget of 5 buys no step at all, and that cell is left out. The reference is DDPM's ancestral
sampler with 250 steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from minisd.diffusion.samplers import SAMPLERS, num_evaluations
from minisd.sampler_options import flags_of

# The arguments each sampler is benchmarked with (the others': their defaults). See the module docstring.
SAMPLER_ARGS = {"ode": {"method": "rk4"}}


def steps_within(sampler: str, budget: int, **sampler_args) -> int:
    """The most steps ``sampler`` with ``sampler_args`` can take with at most ``budget`` denoiser evaluations;
    0 when a single step costs more."""
    steps = 0
    while num_evaluations(sampler, steps + 1, **sampler_args) <= budget:
        steps += 1
    return steps


def evaluate(run: Path, classifier: str, sampler: str, steps: int, out: Path, args) -> dict:
    """One cell: run ``minisd eval`` unless its JSON is already there, and return the JSON."""
    sampler_args = SAMPLER_ARGS.get(sampler, {})
    path = out / "_".join([sampler, *map(str, sampler_args.values()), f"{steps}.json"])
    if not path.is_file():
        command = [args.minisd, "eval", str(run), "--skip-likelihood", "--fid-classifier", str(classifier),
                   "--fid-samples", str(args.samples), "--sampler", sampler, "--steps", str(steps),
                   *flags_of(sampler_args), "--json", str(path), "--overwrite"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a trained diffusion run")
    parser.add_argument("classifier", help="the classifier of the same dataset, a run or shipped name "
                                           "(classifier_mnist: the one behind every FID-MNIST of the docs)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--reference-steps", type=int, default=250, help="steps of the ddpm reference")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="folder for the cells' JSON (default: RUN/samplers)")
    parser.add_argument("--minisd", default="minisd", help="the minisd command")
    args = parser.parse_args()
    out = args.out or args.run / "samplers"
    out.mkdir(parents=True, exist_ok=True)

    reference = evaluate(args.run, args.classifier, "ddpm", args.reference_steps, out, args)
    fid_name = next(key for key in reference if key.startswith("FID-"))
    # Cells run in the order the budgets are given (say --nfe 20 5 10 50 to know the 20-NFE answer first);
    # the table lists them in increasing order.
    cells = {}
    for budget in args.nfe:
        for sampler in args.samplers:
            steps = steps_within(sampler, budget, **SAMPLER_ARGS.get(sampler, {}))
            if steps > 0:
                cells[sampler, budget] = evaluate(args.run, args.classifier, sampler, steps, out, args)
    budgets = sorted(args.nfe)

    print(f"\n{fid_name}, {args.samples} samples, against the NFE budget (in brackets where a sampler spends less)\n")
    print("| sampler | " + " | ".join(f"NFE {budget}" for budget in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for sampler in args.samplers:
        row = [cells.get((sampler, budget)) for budget in budgets]
        name = " ".join([sampler, *map(str, SAMPLER_ARGS.get(sampler, {}).values())])
        print(f"| {name} | " + " | ".join(
            "-" if cell is None else f"{cell[fid_name]:.2f}" + (f" ({cell['sampler_evaluations']})"
                                                               if cell["sampler_evaluations"] != budget else "")
            for cell, budget in zip(row, budgets)) + " |")
    reference_fid = reference[fid_name]
    print(f"| ddpm, {args.reference_steps} steps (reference) | {reference_fid:.2f} |")
    seconds = reference["sampling_seconds"] / reference["sampler_evaluations"]
    print(f"\nsampling cost: {seconds:.2f} s per denoiser evaluation for {args.samples} images")
    budget = 20 if 20 in budgets else budgets[len(budgets) // 2]
    best_sampler, best = min(((sampler, cells[sampler, budget][fid_name]) for sampler in args.samplers
                              if (sampler, budget) in cells), key=lambda pair: pair[1])
    print(f"best at NFE {budget}: {best_sampler}, {fid_name} {best:.2f} = "
          f"{100 * (best / reference_fid - 1):+.1f}% against the {args.reference_steps}-step ancestral reference "
          f"{reference_fid:.2f}")


if __name__ == "__main__":
    sys.exit(main())
