#!/usr/bin/env bash
# Chapter "Variational diffusion models": train a diffusion model (cosine schedule, eps-prediction, L_simple;
# ~51 minutes on 2 cores), bound its test likelihood in bits/dim in continuous and discrete time, score
# FID for every sampler at the NFE budgets against a 250-step ancestral reference (~60 minutes for the four
# budgets at ~4 s per denoiser evaluation for 1000 images), and draw the chapter's figures. Every number
# comes from the commands a user runs; the results land in $OUT/diffusion_$DATASET/{result.json,eval*.json,
# samplers/*.json}. See benchmarks/README.md.
#
#   MINISD_DATA=/path/to/data bash benchmarks/diffusion.sh mnist
#   MINISD_DATA=/path/to/data NFE="20" bash benchmarks/diffusion.sh fashion   # the 20-NFE column only
set -euo pipefail
DATASET=${1:-mnist}
OUT=${OUT:-runs/bench}
MINISD=${MINISD:-minisd}
NFE=${NFE:-20 5 10 50}
RUN=$OUT/diffusion_$DATASET
# mnist: the shipped evaluation classifier (checkpoints/classifier_mnist); fashion: a run trained here
[ "$DATASET" = mnist ] && CLASSIFIER=${CLASSIFIER:-classifier_mnist} || CLASSIFIER=${CLASSIFIER:-runs/classifier_$DATASET}
FIGURES=docs/figures/diffusion$([ "$DATASET" = mnist ] || echo "_$DATASET")

[ -f "$RUN/result.json" ] || $MINISD train --config "diffusion_$DATASET" --out "$RUN" --no-progress
[ "$CLASSIFIER" = classifier_mnist ] || [ -d "$CLASSIFIER/checkpoint" ] || $MINISD train --config "classifier_$DATASET" --out "$CLASSIFIER" --no-progress
$MINISD eval "$RUN" --json "$RUN/eval.json" --overwrite --no-progress                   # continuous time
$MINISD eval "$RUN" --bound-steps 1000 --json "$RUN/eval_T1000.json" --overwrite --no-progress
# shellcheck disable=SC2086  # NFE is a list of budgets
"${PYTHON:-python3}" benchmarks/diffusion_samplers.py "$RUN" "$CLASSIFIER" --minisd "$MINISD" --nfe $NFE
$MINISD figures diffusion "$RUN" --out "$FIGURES" --overwrite
