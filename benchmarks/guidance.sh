#!/usr/bin/env bash
# Chapter "Guidance": classifier-free against classifier guidance on class-conditional MNIST (benchmarks/guidance.py).
# Trains the class-conditional diffusion model (label dropout 0.1), the noise-aware classifier and the evaluation
# classifier, then scores both guidances at scales 0, 1, 2, 4, 8. STEPS and SAMPLES shorten it for a 2-core CPU:
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
[ -d "$OUT/classifier_mnist/checkpoint" ] || \
  $MINISD train --config classifier_mnist --out "$OUT/classifier_mnist" --no-progress
"${PYTHON:-python3}" benchmarks/guidance.py --diffusion "$OUT/diffusion_mnist_cond" \
  --noisy-classifier "$OUT/noisy_classifier_mnist" --classifier "$OUT/classifier_mnist" \
  --samples-per-digit "$SAMPLES" --out docs/figures/guidance --overwrite
