#!/usr/bin/env bash
# Chapters "Autoencoder and VAE" and "Hierarchical VAE": the path's 2-d VAE, the 50-latent VAE and the
# two-level hierarchical VAE of Burda et al. (2015)
# on dynamically binarised MNIST, then estimate test log-likelihoods with K = 5000 importance samples.
# Every number comes from the same commands a user runs. Results land in $OUT/*/result.json (training
# time, images/s) and $OUT/*/eval.json (ELBO, IWAE bound, bits/dim); see benchmarks/README.md.
#
#   MINISD_DATA=/path/to/data bash benchmarks/vae_likelihood.sh        # ~35 minutes on 2 cores
set -euo pipefail
OUT=${OUT:-runs/bench}
MINISD=${MINISD:-minisd}
K=${K:-5000}
PRESETS=${PRESETS:-vae2d vae50 hvae}

for preset in $PRESETS; do
  $MINISD train --config "$preset" --out "$OUT/$preset" --overwrite --no-progress
  $MINISD eval "$OUT/$preset" --num-samples "$K" --json "$OUT/$preset/eval.json" --overwrite --no-progress
  $MINISD figures vae "$OUT/$preset" --out "docs/figures/$preset" --overwrite
done
"${PYTHON:-python3}" benchmarks/vae_likelihood_table.py "$OUT"
