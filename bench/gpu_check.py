"""The GPU check: the full data path feeding the whole models on one GPU, in one table (``bench/gpu_check.sh``).

Rows:

- ``embed vit_base_patch16_224 bf16``: images/s of :func:`sbir.retrieval.embed.embed_split` over shards
  (DataLoader workers decode and resize, the GPU runs ViT-B/16 in bf16), weights random-init (speed does
  not depend on them). Target >= 3,000 images/s on one H100-class GPU.
- ``train zse`` / ``train clip_prompt``: ms per training step of :func:`sbir.train.loop.train` on the real
  input path (:mod:`sbir.train.inputs`, ``--workers`` processes), and the fraction of the step time the
  training process waited for its next batch. Target < 10 %.
- ``pipeline``: the embedded default run end to end on the GPU: ``dvc exp run -S embed.device=cuda -S
  explain.device=cuda`` where DVC is installed, else the stages' entry points in order; wall time and the
  unseen-class mAP@all.

The shards are the embedded synthetic dataset (generated here), listed ``--copies`` times over (hard links)
so that a measurement lasts long enough. ``--device cpu --quick`` is a smoke test for machines without a GPU.

    python bench/gpu_check.py [--workers 12] [--batch-size 256] [--train-batch 64] [--steps 40]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train_input import linked_copy  # bench/ is on sys.path when this file runs

from sbir.data.shards.reader import read_index
from sbir.models import create_model
from sbir.retrieval.embed import embed_split
from sbir.train import loop
from sbir.train.inputs import image_train_data
from sbir.train.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def make_shards(tmp: Path, copies: int, image_size: int, max_per_class: int | None = None) -> Path:
    from sbir.data.datasets import get_dataset
    from sbir.data.datasets.synthetic import generate
    from sbir.data.shards.build import shard_dataset

    raw = generate(tmp / "raw", progress=False)
    shard_dataset(get_dataset("synthetic"), raw, tmp / "shards", "synthetic", image_size=image_size,
                  max_per_class=max_per_class, progress=False)
    return linked_copy(tmp / "shards", tmp / "copies", copies) if copies > 1 else tmp / "shards"


def embed_rate(shards: Path, out: Path, device: str, workers: int, batch_size: int) -> tuple[float, int]:
    model = create_model("frozen", "vit_base_patch16_224", random_init=True, seed=0)
    start = time.perf_counter()
    info = embed_split(model, shards, out, part="train", batch_size=batch_size, workers=workers, device=device,
                       progress=False)
    seconds = time.perf_counter() - start
    count = sum(info["counts"].values())
    return count / seconds, count


class TimedLoader:
    """Wraps the training loop's DataLoader: seconds spent waiting for each next batch."""

    def __init__(self, loader):
        self.loader, self.waited = loader, []

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.waited.append(time.perf_counter() - start)
            yield batch


def train_rate(method: str, shards: Path, out: Path, device: str, workers: int, batch_size: int,
               steps: int) -> tuple[float, float]:
    index = read_index(shards)
    if method == "zse":
        model = create_model("zse", "vit_base_patch16_224", random_init=True, seed=0)
    else:
        model = create_model("clip_prompt", "ViT-B-32", random_init=True, seed=0, class_names=index["classes"],
                             seen_classes=index["seen_classes"])
    data = image_train_data(shards, "train", index["classes"], model.image_config)
    timed: list[TimedLoader] = []
    original = loop.step_loader

    def step_loader(*args, **kwargs):
        timed.append(TimedLoader(original(*args, **kwargs)))
        return timed[-1]

    loop.step_loader = step_loader
    try:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        train(model, data, None, TrainConfig(steps=steps, batch_size=batch_size, checkpoint_every=steps), out,
              device=torch.device(device), workers=workers, progress=False)
        seconds = time.perf_counter() - start
    finally:
        loop.step_loader = original
    waited = timed[0].waited[5:]  # after the workers' start-up
    return 1000 * seconds / steps, sum(waited) / max(seconds * len(waited) / steps, 1e-9)


def pipeline_run(device: str) -> tuple[float, float | None, str]:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "repo"
        shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns("data", "explain", ".venv", "__pycache__"))
        env = {**os.environ, "PYTHONPATH": str(clone)}
        start = time.perf_counter()
        if shutil.which("dvc"):
            how = "dvc exp run"
            subprocess.run(["dvc", "exp", "run", "-S", f"embed.device={device}", "-S", f"explain.device={device}"],
                           cwd=clone, env=env, check=True, capture_output=True)
        else:
            how = "python -m pipeline.<stage> (no dvc here)"
            params = (clone / "params.yaml").read_text()
            params = params.replace("  device: auto", f"  device: {device}")
            (clone / "params.yaml").write_text(params)
            for stage in ("download", "shard", "features", "train", "embed", "evaluate", "explain"):
                subprocess.run([sys.executable, "-m", f"pipeline.{stage}"], cwd=clone, env=env, check=True,
                               capture_output=True)
        seconds = time.perf_counter() - start
        metrics = json.loads((clone / "metrics" / "eval.json").read_text())
        return seconds, metrics.get("map_all"), how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test on the CPU")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.train_batch, args.steps, args.copies = 8, 2, 7, 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = make_shards(tmp, args.copies, 224, max_per_class=2 if args.quick else None)
        rate, count = embed_rate(shards, tmp / "emb", args.device, args.workers, args.batch_size)
        rows.append(("embed vit_base_patch16_224 bf16", f"{rate:,.0f} images/s ({count:,} images)", ">= 3,000"))
        for method in ("zse", "clip_prompt"):
            ms, wait = train_rate(method, shards, tmp / f"model-{method}", args.device, args.workers,
                                  args.train_batch, args.steps)
            rows.append((f"train {method} (batch {args.train_batch})", f"{ms:,.0f} ms/step, {wait:.1%} waiting",
                         "< 10 % waiting"))
    if args.quick:
        pass
    elif importlib.util.find_spec("dvclive") is None:
        rows.append(("pipeline", "not run: dvclive (and dvc) are not installed here", "runs"))
    else:
        seconds, score, how = pipeline_run(args.device)
        rows.append((f"pipeline on {args.device}: {how}", f"{seconds:.0f} s, unseen mAP@all {score}", "runs"))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\nGPU check on {name}, {os.cpu_count()} cores, {args.workers} workers, torch {torch.__version__}")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'measured':<40}  target")
    for what, measured, target in rows:
        print(f"{what:<{width}}  {measured:<40}  {target}")


if __name__ == "__main__":
    main()
