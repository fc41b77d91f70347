"""The whole-model training input path (``sbir.train.inputs``): throughput of its DataLoader workers against the
bare decode + resize loop, and peak memory at 1x and 10x the dataset.

1. Throughput. The training input path (``StepBatches`` in a DataLoader of ``--workers W`` processes, as
   :func:`sbir.train.loop.train` runs it) makes ``--steps`` triplet batches (3 x ``--batch-size`` images
   each, class-balanced: a third sketches, two thirds photos, read on demand from the shards) and the main
   process only receives them. The bare loop decodes and resizes (``load_image``: decode, RGB, bicubic
   resize to ``--image-size``) exactly the images of those batches, their bytes read beforehand, in one
   process: ``r`` images/s on one core. Ratio = its images/s / (W x r): how close W workers come to W cores
   of pure decoding (target >= 0.8). Also printed: W bare loops run at once in W processes (each on its
   share of the images), the rate W busy cores really reach, and the path's ratio to that. Worker start-up
   is timed apart (the first batch).
2. Memory. A subprocess trains a tiny random-init model (one conv: the data path, not the model, is measured)
   for ``--memory-steps`` steps through :func:`sbir.train.loop.train` with 2 workers, on the shards and on a
   10x copy (the shard files linked ten times under new names, the index listing all of them); peak RSS of
   the training process and of its largest worker. Ratio 10x / 1x: target <= 1.2 (flat in dataset size).
   For comparison, the RSS the previous path would have needed: every encoded image held in memory.

Shards: ``--shards DIR``; by default the real Sketchy subset (``$SBIR_SHARED_DATA/sketchy-mini``, sharded
here at 256 px as the pipeline does) or, without it, the embedded synthetic dataset.

    python bench/bench_train_input.py [--shards DIR] [--workers 2] [--rounds 7] [--steps 12] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sbir.data.images import ImageConfig, load_image
from sbir.data.shards.reader import image_of, iter_tar_samples, read_index, shard_paths

ROOT = Path(__file__).resolve().parents[1]


def make_shards(tmp: Path) -> Path:
    from sbir.data.datasets import get_dataset
    from sbir.data.shards.build import shard_dataset

    shared = Path(os.environ.get("SBIR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "sketchy-mini"
    if shared.is_dir():
        shard_dataset(get_dataset("sketchy"), shared, tmp / "shards", "sketchy21", workers=2, progress=False)
    else:
        from sbir.data.datasets.synthetic import generate

        raw = generate(tmp / "raw", progress=False)
        shard_dataset(get_dataset("synthetic"), raw, tmp / "shards", "synthetic", workers=2, progress=False)
    return tmp / "shards"


def throughput(shards: Path, workers: int, steps: int, batch_size: int, size: int, rounds: int) -> dict:
    """Median over ``rounds`` of (path rate / (workers x bare rate)), each round timing the bare loop, then the
    path, on the images of its own block of ``steps`` batches (the speed of a core here drifts by +-15 %
    within a minute: pairs measured close together, and their median, are what can be compared)."""
    from sbir.train.inputs import StepBatches, image_train_data, step_loader
    from sbir.train.sampling import PairSampler

    config = ImageConfig(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    data = image_train_data(shards, "train", read_index(shards)["classes"], config)
    sampler = PairSampler(data.labels["sketch"], data.labels["photo"], seed=0)
    everything = (np.arange(data.count("sketch")), np.arange(data.count("photo")))
    batches = StepBatches(data, sampler, *everything, batch_size)
    images = data.fetch.images
    bare, together, path, first = [], [], [], []
    for number in range(rounds):
        begin = 1 + number * (steps + 1)
        encoded = []  # the bare loop: decode + resize of exactly the images of this round's batches
        for step in range(begin + 1, begin + 1 + steps):
            sketches, positives, negatives = sampler.batch(step, batch_size)
            encoded += [images["sketch"].read(int(i)) for i in sketches]
            encoded += [images["photo"].read(int(i)) for i in (*positives, *negatives)]
        bare.append(_decode_rate((encoded, size)))
        with multiprocessing.get_context("fork").Pool(workers) as pool:  # W bare loops at once, a share each
            together.append(sum(pool.map(_decode_rate, [(encoded[w::workers], size) for w in range(workers)])))
        start = time.perf_counter()
        loader = iter(step_loader(batches, begin, begin + 1 + steps, workers))
        next(loader)  # the workers' start-up
        first.append(time.perf_counter() - start)
        start = time.perf_counter()
        made = sum(1 for _ in loader)
        path.append(made * 3 * batch_size / (time.perf_counter() - start))
    ratios = sorted(p / (workers * b) for p, b in zip(path, bare))
    concurrent = sorted(p / t for p, t in zip(path, together))
    return {"images": data.count("sketch") + data.count("photo"), "bare_per_core": float(np.median(bare)),
            "bare_together": float(np.median(together)), "concurrent_ratio": concurrent[len(concurrent) // 2],
            "workers": workers, "path": float(np.median(path)), "ratio": ratios[len(ratios) // 2],
            "ratios": ratios, "per_worker_core": float(np.median(path)) / workers,
            "first_batch_s": float(np.median(first))}


def _decode_rate(job: tuple[list[bytes], int]) -> float:
    """Images/s of the bare loop over ``job`` = (encoded images, side)."""
    encoded, size = job
    start = time.perf_counter()
    for data in encoded:
        load_image(data, size)
    return len(encoded) / (time.perf_counter() - start)


def linked_copy(shards: Path, out: Path, times: int) -> Path:
    """``shards`` listed ``times`` times under new names (hard links, no extra disk), the index to match."""
    index = read_index(shards)
    listed = {}
    for copy in range(times):
        for rel, entry in index["shards"].items():
            part, name = rel.split("/")
            modality, number = name[:-4].split("-")
            new = f"{part}/{modality}-{copy * 1000 + int(number):06d}.tar"
            (out / part).mkdir(parents=True, exist_ok=True)
            os.link(shards / rel, out / new)
            listed[new] = entry
    counts = {p: {m: {c: n * times for c, n in per.items()} for m, per in mods.items()}
              for p, mods in index["counts"].items()}
    totals = {p: {m: n * times for m, n in mods.items()} for p, mods in index["totals"].items()}
    (out / "index.json").write_text(json.dumps({**index, "shards": listed, "counts": counts, "totals": totals}))
    return out


CHILD = """
import json, resource, sys, torch
from torch import nn
from sbir.data.images import ImageConfig
from sbir.data.shards.reader import read_index
from sbir.models.backbones import Backbone, TokenFeatures
from sbir.models.linear import LinearProjection
from sbir.train.inputs import image_train_data
from sbir.train.loop import TrainConfig, train

class Tiny(Backbone):
    name = "tiny"
    num_prefix_tokens = 0
    def __init__(self):
        super().__init__()
        self.image_config = ImageConfig(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.embed_dim = self.token_dim = 8
        self.conv = nn.Conv2d(3, 8, 32, 32)
    def forward_tokens(self, images):
        grid = self.conv(images)
        tokens = grid.flatten(2).transpose(1, 2)
        return TokenFeatures(tokens.mean(1), tokens, tuple(grid.shape[-2:]))

shards, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.manual_seed(0)
model = LinearProjection(Tiny())
classes = read_index(shards)["classes"]
data = image_train_data(shards, "train", classes, model.image_config)
train(model, data, None, TrainConfig(steps=steps, batch_size=16, checkpoint_every=steps), out, workers=2,
      progress=False)
print(json.dumps({"main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def peak_memory(shards: Path, out: Path, steps: int) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(shards), str(out), str(steps)], capture_output=True,
                            text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def held_in_memory_mb(shards: Path) -> float:
    """What the previous path held per rank: every encoded train image."""
    return sum(len(image_of(sample)[1]) for modality in ("sketch", "photo")
               for path in shard_paths(shards, "train", modality) for sample in iter_tar_samples(path)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="batches timed per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32, help="triplets per batch (the pipeline's default)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--memory-steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = args.shards or make_shards(tmp)
        speed = throughput(shards, args.workers, args.steps, args.batch_size, args.image_size, args.rounds)
        print(f"shards {shards}: {speed['images']} train images; {os.cpu_count()} cores")
        print(f"bare decode + resize to {args.image_size}: {speed['bare_per_core']:.0f} images/s on one core")
        print(f"input path, {speed['workers']} workers: {speed['path']:.0f} images/s "
              f"({speed['per_worker_core']:.0f} per worker core; first batch after {speed['first_batch_s']:.2f} s)")
        print(f"{speed['workers']} bare loops at once: {speed['bare_together']:.0f} images/s; ratio path / that: "
              f"{speed['concurrent_ratio']:.2f} (both cores busy run slower than one alone)")
        print(f"ratio path / ({speed['workers']} x bare), median of {len(speed['ratios'])} rounds: "
              f"{speed['ratio']:.2f}  (target >= 0.8; rounds {', '.join(f'{r:.2f}' for r in speed['ratios'])})")
        tenfold = linked_copy(shards, tmp / "tenfold", 10)
        one = peak_memory(shards, tmp / "m1", args.memory_steps)
        ten = peak_memory(tenfold, tmp / "m10", args.memory_steps)
        before = held_in_memory_mb(shards)
        print(f"peak RSS, training process: 1x {one['main_mb']:.0f} MB, 10x {ten['main_mb']:.0f} MB, "
              f"ratio {ten['main_mb'] / one['main_mb']:.2f}  (target <= 1.2)")
        print(f"peak RSS, largest worker: 1x {one['worker_mb']:.0f} MB, 10x {ten['worker_mb']:.0f} MB, "
              f"ratio {ten['worker_mb'] / one['worker_mb']:.2f}")
        print(f"the previous path held every encoded train image per rank: {before:.0f} MB at 1x, "
              f"{10 * before:.0f} MB at 10x")
        need = 1500 / speed["per_worker_core"]
        print(f"worker cores to feed one GPU at 1,500 images/s: {need:.1f}")
    print(f"max RSS of this benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
