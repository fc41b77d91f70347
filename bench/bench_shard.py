"""Sharding throughput vs. the decode limit, measured in one run.

Shards ``../shared/data/sketchy-mini`` (split sketchy21, all cores) and, in the same run, times a bare
decode loop (read the file, ``PIL.Image.open(...).load()``) over the same files in one process; the
limit is that rate times the cores sharding used. Target: sharding at >= 70% of the limit.

    python bench/bench_shard.py [--raw DIR] [--workers N] [--image-size 256]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from sbir.datasets import get_dataset
from sbir.sharding import shard_dataset

DEFAULT_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sketchy-mini"


def decode_rate(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as handle:
            Image.open(io.BytesIO(handle.read())).load()
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs for both measurements")
    args = parser.parse_args()
    if not args.raw.is_dir():
        sys.exit(f"error: {args.raw}: benchmark data is absent")
    dataset = get_dataset("sketchy")
    paths = sorted(Path(item.path) for item in dataset.scan(args.raw).items)
    decode_rate(paths[:200])  # warm the page cache
    limit = max(decode_rate(paths) for _ in range(args.repeat)) * args.workers
    shard_rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.repeat):
            start = time.perf_counter()
            index = shard_dataset(dataset, args.raw, Path(tmp) / f"out{run}", "sketchy21",
                                  image_size=args.image_size, workers=args.workers, progress=False)
            samples = sum(sum(m.values()) for m in index["totals"].values())
            shard_rates.append(samples / (time.perf_counter() - start))
    rate = max(shard_rates)
    print(f"files: {len(paths)}  workers: {args.workers}")
    print(f"bare decode loop: {limit / args.workers:8.1f} img/s per core -> limit {limit:8.1f} img/s")
    print(f"sharding:         {rate:8.1f} img/s (best of {args.repeat}, whole run incl. scan and hashing)")
    print(f"ratio: {rate / limit:.2f} of the decode limit (target >= 0.70)")


if __name__ == "__main__":
    main()
