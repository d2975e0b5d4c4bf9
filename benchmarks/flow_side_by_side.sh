#!/usr/bin/env bash
# Chapter "Flow matching and few-step generation": the same class-conditional MNIST network, data and training
# budget (1500 steps of 64, seed 0, ~15 minutes each on 2 cores) as the straight path of flow matching and as the
# variance-preserving cosine schedule with eps or v prediction. The VP eps run is the guidance benchmark's
# (benchmarks/guidance.sh trains it with these settings); runs that exist are kept.
#   STEPS=1500 bash benchmarks/flow_side_by_side.sh
set -euo pipefail
STEPS=${STEPS:-1500}
OUT=${OUT:-runs/bench}
train() {  # name, then --set overrides of the preset
  local name=$1 preset=$2; shift 2
  if [ -d "$OUT/$name/checkpoint" ]; then echo "kept $OUT/$name"; return; fi
  minisd train --config "$preset" --out "$OUT/$name" --set train.steps="$STEPS" --set train.eval_every=0 \
    --set train.checkpoint_every=500 "$@"
}
train diffusion_mnist_cond diffusion_mnist_cond
train flow_mnist_cond flow_mnist_cond
train vp_v_mnist_cond diffusion_mnist_cond --set model.prediction=v
train flow_uniform_mnist_cond flow_mnist_cond --set model.time_sampling=uniform
