#!/usr/bin/env bash
# Chapter "Variational diffusion models": train the MNIST diffusion model (cosine schedule, eps-prediction,
# L_simple; ~52 minutes on 2 cores), bound its test likelihood in bits/dim in continuous and discrete time,
# score FID-MNIST for every sampler at 5, 10, 20 and 50 denoiser evaluations against a 250-step ancestral
# reference (~60 minutes at ~4.5 s per denoiser evaluation for 1000 images), and draw the chapter's figures. Every number comes from the commands a user runs;
# the results land in $OUT/diffusion_mnist/{result.json,eval*.json,samplers/*.json}. See benchmarks/README.md.
#
#   MINISD_DATA=/path/to/data bash benchmarks/diffusion_mnist.sh
set -euo pipefail
OUT=${OUT:-runs/bench}
MINISD=${MINISD:-minisd}
RUN=$OUT/diffusion_mnist
CLASSIFIER=${CLASSIFIER:-runs/classifier_mnist}

[ -f "$RUN/result.json" ] || $MINISD train --config diffusion_mnist --out "$RUN" --no-progress
[ -d "$CLASSIFIER/checkpoint" ] || $MINISD train --config classifier_mnist --out "$CLASSIFIER" --no-progress
$MINISD eval "$RUN" --json "$RUN/eval.json" --overwrite --no-progress                   # continuous time
$MINISD eval "$RUN" --bound-steps 1000 --json "$RUN/eval_T1000.json" --overwrite --no-progress
"${PYTHON:-python3}" benchmarks/diffusion_samplers.py "$RUN" "$CLASSIFIER" --minisd "$MINISD" --nfe 20 5 10 50
$MINISD figures diffusion "$RUN" --out docs/figures/diffusion --overwrite
