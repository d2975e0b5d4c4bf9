#!/usr/bin/env bash
# Chapter "Guidance": classifier-free against classifier guidance on class-conditional MNIST (benchmarks/guidance.py).
# Trains the class-conditional diffusion model (label dropout 0.1) and the noise-aware classifier, then scores both
# guidances at scales 0, 1, 2, 4, 8 with the shipped evaluation classifier. STEPS and SAMPLES shorten it for 2 cores:
#
#   MINISD_DATA=/path/to/data bash benchmarks/guidance.sh                            # the presets' budgets
#   MINISD_DATA=/path/to/data STEPS=1500 SAMPLES=50 bash benchmarks/guidance.sh      # ~30 minutes on 2 cores
set -euo pipefail
OUT=${OUT:-runs}
MINISD=${MINISD:-minisd}
SAMPLES=${SAMPLES:-100}
STEPS_SET=()
NOISY_SET=()
if [ -n "${STEPS:-}" ]; then  # shortened: the diffusion model to STEPS, the noise-aware classifier to 1000 steps
  STEPS_SET=(--set "train.steps=$STEPS" --set train.eval_every=0 --set "train.checkpoint_every=$STEPS")
  NOISY_SET=(--set train.steps=1000 --set train.eval_every=0)
fi

[ -d "$OUT/diffusion_mnist_cond/checkpoint" ] || \
  $MINISD train --config diffusion_mnist_cond --out "$OUT/diffusion_mnist_cond" --no-progress "${STEPS_SET[@]}"
[ -d "$OUT/noisy_classifier_mnist/checkpoint" ] || \
  $MINISD train --config noisy_classifier_mnist --out "$OUT/noisy_classifier_mnist" --no-progress "${NOISY_SET[@]}"
"${PYTHON:-python3}" benchmarks/guidance.py --diffusion "$OUT/diffusion_mnist_cond" \
  --noisy-classifier "$OUT/noisy_classifier_mnist" --classifier "${CLASSIFIER:-classifier_mnist}" \
  --samples-per-digit "$SAMPLES" --out docs/figures/guidance --overwrite
