#!/usr/bin/env bash
# Chapter "Autoencoder and VAE": train the path's 2-d VAE and the 50-latent VAE of Burda et al. (2015)
# on dynamically binarised MNIST, then estimate test log-likelihoods with K = 5000 importance samples.
# Every number comes from the same commands a user runs. Results land in $OUT/*/result.json (training
# time, images/s) and $OUT/*/eval.json (ELBO, IWAE bound, bits/dim); see benchmarks/README.md.
#
#   MINISD_DATA=/path/to/data bash benchmarks/vae_likelihood.sh        # ~35 minutes on 2 cores
set -euo pipefail
OUT=${OUT:-runs/bench}
MINISD=${MINISD:-minisd}
K=${K:-5000}

for preset in vae2d vae50; do
  $MINISD train --config "$preset" --out "$OUT/$preset" --overwrite --no-progress
  $MINISD eval "$OUT/$preset" --num-samples "$K" --json "$OUT/$preset/eval.json" --overwrite --no-progress
done
$MINISD figures vae "$OUT/vae2d" --out docs/figures/vae2d --overwrite
$MINISD figures vae "$OUT/vae50" --out docs/figures/vae50 --overwrite
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| model | training | images/s | test ELBO (nats) | test log p(x), IWAE K=5000 (nats) | NLL bits/dim |")
print("|---|---|---|---|---|---|")
for preset in ("vae2d", "vae50"):
    result = json.loads((out / preset / "result.json").read_text())
    evaluation = json.loads((out / preset / "eval.json").read_text())
    speeds = [json.loads(l)["images_per_sec"] for l in (out / preset / "metrics.jsonl").read_text().splitlines()
              if '"images_per_sec"' in l]
    iwae = next(v for k, v in evaluation.items() if k.startswith("log_likelihood_iwae"))
    print(f"| {preset} | {result['step']} steps, {result['seconds'] / 60:.1f} min | {sum(speeds) / len(speeds):.0f} "
          f"| {evaluation['elbo_nats']:.2f} | {iwae:.2f} | {evaluation['nll_bits_per_dim']:.4f} |")
PY
