"""The 2-D toys of the chapter "Score-based generative models": train, time and evaluate each, print the table.

Every number is one user command: ``minisd train --config score_toy --set data.dataset=TOY --out OUT/score_TOY``
(timed here, wall clock, process start included), then ``minisd eval OUT/score_TOY --json ...`` (exact ODE
negative log-likelihood of the 5000 held-out points, and the energy distance and MMD of 2000 pc samples against
2000 held-out points), and finally ``minisd figures score OUT/score_gmm`` (timed). Finished runs are reused.

    python benchmarks/score_toys.py --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from minisd.data.toys import TOYS


def timed(command: list[str]) -> float:
    """Run ``command``, checking it succeeds; its wall time in seconds."""
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--minisd", default="minisd", help="the minisd command")
    args = parser.parse_args()
    rows = []
    for toy in TOYS:
        run = args.out / f"score_{toy}"
        timing = run / "train_seconds.json"
        if not timing.is_file():
            seconds = timed([args.minisd, "train", "--config", "score_toy", "--set", f"data.dataset={toy}",
                             "--out", str(run), "--overwrite", "--no-progress"])
            timing.write_text(json.dumps({"seconds": seconds}) + "\n")
        evaluation = run / "eval.json"
        if not evaluation.is_file():
            timed([args.minisd, "eval", str(run), "--json", str(evaluation), "--overwrite", "--no-progress"])
        rows.append((toy, json.loads(timing.read_text())["seconds"], json.loads(evaluation.read_text())))
    figures = timed([args.minisd, "figures", "score", str(args.out / "score_gmm"), "--out",
                     str(args.out / "score_gmm" / "figures"), "--overwrite"])

    print("\n| toy | training (3000 steps of 256) | energy distance | MMD^2 | test NLL, nats per point | eval |")
    print("|---|---|---|---|---|---|")
    for toy, seconds, result in rows:
        nll = f"{result['ode_nll_nats']:.3f} ± {result['ode_nll_nats_se']:.3f}"
        if "true_nll_nats" in result:
            nll += f" (true density {result['true_nll_nats']:.3f}; gap {result['nll_gap_nats']:.3f} ± {result['nll_gap_nats_se']:.3f})"
        print(f"| {toy} | {seconds:.1f} s | {result['energy_distance']:.4f} | {result['mmd']:.4f} | {nll} | "
              f"{result['seconds']:.1f} s |")
    print(f"\nminisd figures score runs/bench/score_gmm: {figures:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
