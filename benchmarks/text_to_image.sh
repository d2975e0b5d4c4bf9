#!/usr/bin/env bash
# Chapter "Stable Diffusion": train a shipped text-to-image model (all three parts, one command), score its prompt
# adherence and FID with the evaluation classifier, draw the chapter's figures, and copy it to checkpoints/.
# Every number comes from the commands a user runs. See benchmarks/README.md, "Text-to-image".
#
#   MINISD_DATA=/path/to/data bash benchmarks/text_to_image.sh mnist     # ~17 minutes of training on 2 cores
#   bash benchmarks/text_to_image.sh shapes                              # built-in data, ~40 minutes
set -euo pipefail
DATASET=${1:-mnist}
OUT=${OUT:-runs}
MINISD=${MINISD:-minisd}
RUN=$OUT/t2i_$DATASET
if [ "$DATASET" = mnist ]; then CLASSIFIER_PRESET=classifier_mnist; else CLASSIFIER_PRESET=attributes_shapes; fi
CLASSIFIER=${CLASSIFIER:-$OUT/$CLASSIFIER_PRESET}

if [ ! -f "$RUN/model/model_index.json" ]; then
  if [ -f "$RUN/text2image.json" ]; then RESUME=--resume; else RESUME=; fi
  $MINISD train --config "text2image_$DATASET" --out "$RUN" $RESUME --no-progress
fi
[ -d "$CLASSIFIER/checkpoint" ] || $MINISD train --config "$CLASSIFIER_PRESET" --out "$CLASSIFIER" --no-progress
$MINISD eval "$RUN" --classifier "$CLASSIFIER" --json "$RUN/adherence.json" --overwrite --no-progress
$MINISD figures text-to-image "$RUN" --out "docs/figures/stable_diffusion/$DATASET" --overwrite
rm -rf "checkpoints/$DATASET.new" && cp -r "$RUN/model" "checkpoints/$DATASET.new"
rm -rf "checkpoints/$DATASET" && mv "checkpoints/$DATASET.new" "checkpoints/$DATASET"
du -sh "checkpoints/$DATASET"/*
