#!/usr/bin/env bash
# Cross-dataset zero-shot SBIR: train on sketchy-mini's seen classes, then query with tuberlin-mini sketches
# against sketchy-mini photos of the classes both datasets have (held out of training: they are the unseen
# classes of the split, so the setting is zero-shot AND cross-dataset).
#
#   bash experiments/cross_dataset.sh [SKETCHY_MINI_DIR] [TUBERLIN_MINI_DIR] [WORK_DIR]
#   METHODS='sake' bash experiments/cross_dataset.sh     # only these methods (default: frozen linear zse sake)
#
# Writes WORK_DIR/results/{sketchy,cross}-<method>.json; about 15 min on 2 cores.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SKETCHY=$(cd "${1:-$REPO/../shared/data/sketchy-mini}" && pwd)
TUBERLIN=$(cd "${2:-$REPO/../shared/data/tuberlin-mini}" && pwd)
WORK=${3:-/tmp/sbir-cross}
rm -rf "$WORK" && git clone -q "$REPO" "$WORK" && cd "$WORK" && mkdir -p results
source "$REPO/experiments/settings.sh"

# the classes both datasets have, by their normalised names
python - "$SKETCHY" "$TUBERLIN" > results/shared-classes.txt <<'PY'
import sys
from pathlib import Path
from sbir.data.datasets import get_dataset
from sbir.data.splits import normalise_class_name
def classes(name, root):
    return {item.class_name for item in get_dataset(name).scan(Path(root)).items}
sketchy, tuberlin = classes("sketchy", sys.argv[1]), classes("tuberlin", sys.argv[2])
names = {normalise_class_name(c): c for c in sketchy}
print("\n".join(sorted(names[k] for k in {normalise_class_name(c) for c in tuberlin} if k in names)))
PY
echo "shared classes: $(paste -sd' ' results/shared-classes.txt)"
split=$WORK/results/shared-classes.txt
sbir-prep shard --dataset tuberlin --raw "$TUBERLIN" --split "$split" --out data/tuberlin-shards --image-size 224
for method in ${METHODS:-frozen linear zse sake}; do
  case $method in linear) extra=("${LINEAR[@]}") ;; zse) extra=("${ZSE[@]}") ;; sake) extra=("${SAKE[@]}") ;; *) extra=() ;; esac
  args=(-S data.dataset=sketchy -S "data.source=$SKETCHY" -S "data.split=$split" -S shard.image_size=224 -S retrieval.mode=token -S model.method=$method)
  for kv in "${extra[@]}"; do args+=(-S "$kv"); done
  git checkout -q params.yaml  # as run() in common.sh: no -S value of the previous method carries over
  dvc exp run -q "${args[@]}"
  cp metrics/eval.json "results/sketchy-$method.json"  # Sketchy sketches -> Sketchy photos (same dataset)
  sbir embed --model data/model --shards data/shards --out data/emb-sketchy --workers 0
  sbir embed --model data/model --shards data/tuberlin-shards --out data/emb-tuberlin --workers 0
  sbir evaluate --embeddings data/emb-tuberlin --shards data/tuberlin-shards --photo-embeddings data/emb-sketchy \
    --photo-shards data/shards --metrics "results/cross-$method.json" --plots "results/plots-$method" \
    --grid-queries 6 --grid-top 8
done
python "$REPO/experiments/table.py" results | tee results/table.md
