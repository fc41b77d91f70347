"""Sharding throughput vs. the decode limit, measured in one run.

Shards the sketchy-mini subset (``--raw``; split sketchy21, all cores) and, in the same run, times a bare
decode loop (read the file, ``PIL.Image.open(...).load()``) over the same files in one process; the
limit is that rate times the cores sharding used. Target: sharding at >= 70% of the limit.

The two are measured in alternation, a decode pass right before each sharding run, and the ratio is the
median over the pairs: on a shared 2-core machine the speed of a core drifts by +-15% within a minute,
so two rates measured minutes apart (or a best-of-N of each) compare different machines.

    python bench/bench_shard.py [--raw DIR] [--workers N] [--image-size 256]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from sbir.data.datasets import get_dataset
from sbir.data.shards.build import shard_dataset

DEFAULT_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sketchy-mini"


def decode_rate(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as handle:
            Image.open(io.BytesIO(handle.read())).load()
    return len(paths) / (time.perf_counter() - start)


def shard_rate(dataset, raw: Path, out: Path, workers: int, image_size: int) -> float:
    start = time.perf_counter()
    index = shard_dataset(dataset, raw, out, "sketchy21", image_size=image_size, workers=workers, progress=False)
    samples = sum(sum(m.values()) for m in index["totals"].values())
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=7, help="number of (decode loop, sharding) pairs")
    args = parser.parse_args()
    if not args.raw.is_dir():
        sys.exit(f"error: {args.raw}: benchmark data is absent")
    dataset = get_dataset("sketchy")
    paths = sorted(Path(item.path) for item in dataset.scan(args.raw).items)
    decode_rate(paths[:200])  # warm the page cache
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            limit = decode_rate(paths) * args.workers
            rate = shard_rate(dataset, args.raw, Path(tmp) / f"out{run}", args.workers, args.image_size)
            pairs.append((limit, rate))
            print(f"pair {run + 1}: limit {limit:7.1f} img/s  sharding {rate:7.1f} img/s  ratio {rate / limit:.2f}")
    ratios = sorted(rate / limit for limit, rate in pairs)
    print(f"files: {len(paths)}  workers: {args.workers}")
    print(f"bare decode loop: {statistics.median(limit for limit, _ in pairs) / args.workers:8.1f} img/s per core "
          f"(median) -> limit {statistics.median(limit for limit, _ in pairs):8.1f} img/s")
    print(f"sharding:         {statistics.median(rate for _, rate in pairs):8.1f} img/s (median, whole run incl. "
          "scan, hashing and the index)")
    print(f"ratio: {statistics.median(ratios):.2f} of the decode limit, median of {len(ratios)} adjacent pairs "
          f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; target >= 0.70)")


if __name__ == "__main__":
    main()
