# Sourced by the experiment scripts, in their fresh clone of this repository: the training settings
# (settings.sh) and run(), one `dvc exp run` whose figures are kept under results/.
#
#   common=(-S key=value ...)   # the caller's settings shared by all its runs
#   run NAME PARAM=VALUE...     # skipped unless NAME matches $ONLY (a regex), when ONLY is set
#
# run() writes results/NAME.json (metrics/eval.json), NAME-retrieval.json (pairs scored, wall time),
# NAME-train.json (the train stage's last logged metrics) and, for a trained model, NAME-val.tsv (its
# seen-class val mAP@all curve, the figure the checkpoint is chosen by).
source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"
run() {
  local name=$1 args=() kv
  shift
  [[ -n ${ONLY:-} && ! $name =~ $ONLY ]] && return 0
  for kv in "$@"; do args+=(-S "$kv"); done
  echo "== $name: $*"
  # dvc exp run leaves its -S values in params.yaml: every run starts from the committed one, so no setting of
  # one run carries into the next
  git checkout -q params.yaml
  dvc exp run -q "${common[@]}" "${args[@]}"
  cp metrics/eval.json "results/$name.json"
  cp metrics/retrieval.json "results/$name-retrieval.json"
  cp dvclive/metrics.json "results/$name-train.json"
  if [[ -f dvclive/plots/metrics/val/map_all.tsv ]]; then
    cp dvclive/plots/metrics/val/map_all.tsv "results/$name-val.tsv"
  fi
}
