#!/usr/bin/env bash
# The sake rows of docs/results.md on sketchy-mini, measured with `dvc exp run` in a fresh clone of this repository
# (EfficientNet-Lite0, CPU, the feature-cache path):
#   - split sketchy21, training seeds 0, 1, 2 (mean and spread);
#   - split sketchy25 and three seeded random 25-class splits (experiments/random_split.py, seeds 1, 2, 3, fixed
#     here before any sake result existed), each with frozen and linear beside sake;
#   - ablations on sketchy21 (seed 0): no distillation, no semantic adjustment, no domain gates, one stage trained.
#
#   bash experiments/sake.sh [SKETCHY_MINI_DIR] [WORK_DIR]
#   ONLY='sketchy21' bash experiments/sake.sh     # only the runs whose name matches this regex
#
# Writes WORK_DIR/results/<run>.json and the other files of common.sh's run(), and WORK_DIR/results/table.md.
# About 9 min per sake run (2 stages, 300 steps) on 2 cores.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=$(cd "${1:-$REPO/../shared/data/sketchy-mini}" && pwd)
WORK=${2:-/tmp/sbir-sake}
rm -rf "$WORK" && git clone -q "$REPO" "$WORK" && cd "$WORK" && mkdir -p results splits
common=(-S data.dataset=sketchy -S "data.source=$SRC" -S shard.image_size=224 -S retrieval.mode=token)
source "$REPO/experiments/common.sh"  # settings and run()
for seed in 1 2 3; do
  python "$REPO/experiments/random_split.py" "$SRC" "$seed" 25 > "splits/random25-$seed.txt"
done
for seed in 0 1 2; do
  run "sake-sketchy21-seed$seed" data.split=sketchy21 model.method=sake "${SAKE[@]}" train.seed=$seed
done
for split in sketchy25 random25-1 random25-2 random25-3; do
  where=$split
  [[ $split == random* ]] && where=$WORK/splits/$split.txt
  run "sake-$split" data.split="$where" model.method=sake "${SAKE[@]}"
  run "linear-$split" data.split="$where" model.method=linear "${LINEAR[@]}"
  run "frozen-$split" data.split="$where" model.method=frozen
done
# ablations (seed 0): one setting changed from the default each
run sake-sketchy21-no-distillation data.split=sketchy21 model.method=sake "${SAKE[@]}" model.options.sake.kd_weight=0.0
run sake-sketchy21-no-adjustment data.split=sketchy21 model.method=sake "${SAKE[@]}" model.options.sake.adjust_weight=0.0
run sake-sketchy21-no-domain data.split=sketchy21 model.method=sake "${SAKE[@]}" model.options.sake.domain=false
run sake-sketchy21-stages1 data.split=sketchy21 model.method=sake "${SAKE[@]}" model.options.sake.stages=1
python "$REPO/experiments/table.py" results | tee results/table.md
