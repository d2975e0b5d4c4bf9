"""Print the benchmark table of ``benchmarks/vae_likelihood.sh`` from its run folders.

    python benchmarks/vae_likelihood_table.py runs/bench
"""

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    print("| model | training | images/s | test ELBO (nats) | test log p(x), IWAE K=5000 (nats) | NLL bits/dim "
          "| eval time |")
    print("|---|---|---|---|---|---|---|")
    for preset in ("vae2d", "vae50", "hvae"):
        if not (out / preset / "eval.json").is_file():
            continue
        result = json.loads((out / preset / "result.json").read_text())
        evaluation = json.loads((out / preset / "eval.json").read_text())
        records = map(json.loads, (out / preset / "metrics.jsonl").read_text().splitlines())
        speeds = [r["images_per_sec"] for r in records if "images_per_sec" in r]
        iwae = next(v for k, v in evaluation.items() if k.startswith("log_likelihood_iwae"))
        eval_time = f"{evaluation['seconds'] / 60:.1f} min" if "seconds" in evaluation else "not recorded"
        print(f"| {preset} | {result['step']} steps, {result['seconds'] / 60:.1f} min | {sum(speeds) / len(speeds):.0f} "
              f"| {evaluation['elbo_nats']:.2f} | {iwae:.2f} | {evaluation['nll_bits_per_dim']:.4f} | {eval_time} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench"))
