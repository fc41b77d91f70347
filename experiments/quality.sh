#!/usr/bin/env bash
# The README's quality table on sketchy-mini, measured with `dvc exp run` in a fresh clone of this repository:
# frozen, linear and zse (token, rerank, relation) on EfficientNet-Lite0 (CPU), split sketchy21.
#
#   bash experiments/quality.sh [SKETCHY_MINI_DIR] [WORK_DIR]
#
# Writes WORK_DIR/results/<run>.json (metrics/eval.json), <run>-retrieval.json (pairs scored, wall time)
# and WORK_DIR/results/table.md. About 40 min on 2 cores (the feature cache is computed once and shared).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=$(cd "${1:-$REPO/../shared/data/sketchy-mini}" && pwd)
WORK=${2:-/tmp/sbir-quality}
rm -rf "$WORK" && git clone -q "$REPO" "$WORK" && cd "$WORK" && mkdir -p results
common=(-S data.dataset=sketchy -S "data.source=$SRC" -S data.split=sketchy21 -S shard.image_size=224 -S retrieval.top_k=10)
run() {  # run NAME PARAM=VALUE...
  local name=$1 args=() kv
  shift
  for kv in "$@"; do args+=(-S "$kv"); done
  echo "== $name: $*"
  dvc exp run -q "${common[@]}" "${args[@]}"
  cp metrics/eval.json "results/$name.json"
  cp metrics/retrieval.json "results/$name-retrieval.json"
}
source "$REPO/experiments/settings.sh"
run frozen model.method=frozen retrieval.mode=token
run linear model.method=linear "${LINEAR[@]}" retrieval.mode=token
run zse-token model.method=zse "${ZSE[@]}" retrieval.mode=token
run zse-rerank model.method=zse "${ZSE[@]}" retrieval.mode=rerank
run zse-relation model.method=zse "${ZSE[@]}" retrieval.mode=relation
python "$REPO/experiments/table.py" results | tee results/table.md
