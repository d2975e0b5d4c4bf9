#!/usr/bin/env bash
# Chapter "Score-based generative models" on MNIST: the diffusion chapter's model seen as a score model, and NCSN.
#
#   1. the diffusion chapter's eps-model (runs/bench/diffusion_mnist, trained by benchmarks/diffusion.sh): its
#      probability-flow ODE likelihood (dequantised, Hutchinson) against its variational bound, on the same first
#      $N test images;
#   2. FID-MNIST of the score chapter's samplers (pc, euler_maruyama, the ODE with rk4) against the diffusion
#      chapter's (ddpm, dpmpp_2m_sde) at equal numbers of denoiser evaluations, same model (benchmarks/diffusion_samplers.py);
#   3. NCSN (minisd/configs/ncsn_mnist.toml): training time, then FID-MNIST of annealed Langevin dynamics.
# Every number comes from a minisd command and lands in a JSON file under the runs. See benchmarks/README.md.
#
#   MINISD_DATA=/path/to/data bash benchmarks/score.sh
set -euo pipefail
OUT=${OUT:-runs/bench}
MINISD=${MINISD:-minisd}
N=${N:-100}                  # test images for the ODE likelihood (each takes ~a hundred UNet passes with gradients)
NFE=${NFE:-20 50}
RUN=$OUT/diffusion_mnist
NCSN=$OUT/ncsn_mnist
CLASSIFIER=${CLASSIFIER:-classifier_mnist}  # the shipped evaluation classifier (checkpoints/), or a run

[ -f "$RUN/result.json" ] || $MINISD train --config diffusion_mnist --out "$RUN" --no-progress
[ -f "$NCSN/result.json" ] || $MINISD train --config ncsn_mnist --out "$NCSN" --no-progress

# 1. the same model, the same images: the ODE's bound and the variational bound
[ -f "$RUN/eval_ode_$N.json" ] || $MINISD eval "$RUN" --likelihood ode --limit "$N" --batch-size 20 \
    --json "$RUN/eval_ode_$N.json" --no-progress
[ -f "$RUN/eval_bound_$N.json" ] || $MINISD eval "$RUN" --limit "$N" --json "$RUN/eval_bound_$N.json" --no-progress

# 2. FID at equal NFE (the 250-step reference is replaced by ddpm at the largest budget, a cell of the table)
# shellcheck disable=SC2086  # NFE is a list of budgets
"${PYTHON:-python3}" benchmarks/diffusion_samplers.py "$RUN" "$CLASSIFIER" --minisd "$MINISD" --nfe $NFE \
    --samplers ddpm dpmpp_2m_sde pc euler_maruyama ode --reference-steps "${NFE##* }"

# 3. NCSN: annealed Langevin on its ladder of 100 levels (99 steps) with LEVEL_STEPS Langevin steps per level
for LEVEL_STEPS in ${LEVEL_STEPS:-2}; do
  [ -f "$NCSN/fid_langevin_$LEVEL_STEPS.json" ] || $MINISD eval "$NCSN" --skip-likelihood --fid-classifier "$CLASSIFIER" \
      --sampler annealed_langevin --steps-per-level "$LEVEL_STEPS" --json "$NCSN/fid_langevin_$LEVEL_STEPS.json" --no-progress
done
# ... and the same network with chapter 4's sampler, to tell the network from the sampler
[ -f "$NCSN/fid_dpmpp_2m_sde_20.json" ] || $MINISD eval "$NCSN" --skip-likelihood --fid-classifier "$CLASSIFIER" \
    --sampler dpmpp_2m_sde --steps 20 --json "$NCSN/fid_dpmpp_2m_sde_20.json" --no-progress
