"""Embedding throughput through the full data path vs. the model alone, measured in one run.

Shards the sketchy-mini subset (``--raw``; by default the test data beside the repository; split
sketchy21) once, at the model's input size 224 by default (``--image-size 0`` keeps the 256 originals,
which the loader then resizes), then, with the same frozen EfficientNet-Lite0 model in the same process:

- model alone: ``model.embed`` over the test images already decoded, resized and normalised in memory,
  in the batches the pipeline makes (per shard, ``--batch-size``);
- full path: ``sbir.retrieval.embed.embed_split`` (shards -> DataLoader workers decoding -> model -> files written).

Prints images/s of both and their ratio for each (data workers, torch threads) setting; the two are
measured alternately, best of ``--repeat``, so that other load on the machine hits both alike. Target:
the full path at >= 90% of the model alone with the setting the pipeline uses.

    python bench/bench_embed.py [--raw DIR] [--image-size 224] [--batch-size 64] [--settings 1:2,2:2,0:2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sbir.data.datasets import get_dataset
from sbir.data.images import load_image
from sbir.data.loader import Normalise
from sbir.data.shards.build import shard_dataset
from sbir.data.shards.reader import image_of, iter_tar_samples, shard_paths
from sbir.models import create_model
from sbir.retrieval.embed import embed_split
from sbir.utils.device import torch_threads

DEFAULT_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sketchy-mini"


def premade_batches(shards: Path, model, batch_size: int) -> list[tuple[str, torch.Tensor]]:
    """The test images as the model receives them, batched as the pipeline batches them."""
    normalise = Normalise(model.image_config, torch.device("cpu"))
    batches = []
    for modality in ("sketch", "photo"):
        for path in shard_paths(shards, "test", modality):
            arrays = [load_image(image_of(s)[1], model.image_config.size) for s in iter_tar_samples(path)]
            for start in range(0, len(arrays), batch_size):
                batches.append((modality, normalise(torch.from_numpy(np.stack(arrays[start:start + batch_size])))))
    return batches


def model_rate(model, batches: list[tuple[str, torch.Tensor]], threads: int | None) -> float:
    images = sum(len(batch) for _, batch in batches)
    with torch_threads(threads), torch.inference_mode():
        start = time.perf_counter()
        for modality, batch in batches:
            model.embed(batch, modality)
        return images / (time.perf_counter() - start)


def pipeline_rate(model, shards: Path, out: Path, batch_size: int, workers: int, threads: int | None) -> float:
    start = time.perf_counter()
    info = embed_split(model, shards, out, batch_size=batch_size, workers=workers, device="cpu", threads=threads,
                       progress=False)
    return sum(info["counts"].values()) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--image-size", type=int, default=224, help="side of the sharded images (0: as they are)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--settings", default="1:2,2:2,0:2",
                        help="comma-separated WORKERS:THREADS pairs (data worker processes : torch threads)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs for every measurement")
    args = parser.parse_args()
    if not args.raw.is_dir():
        sys.exit(f"error: {args.raw}: benchmark data is absent")
    settings = [tuple(int(v) for v in pair.split(":")) for pair in args.settings.split(",")]
    model = create_model("frozen", "tf_efficientnet_lite0").to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        shard_dataset(get_dataset("sketchy"), args.raw, shards, "sketchy21", image_size=args.image_size or None,
                      progress=False)
        batches = premade_batches(shards, model, args.batch_size)
        images = sum(len(batch) for _, batch in batches)
        model_rate(model, batches[:1], None)  # warm-up: oneDNN primitives for the batch shapes
        print(f"test images: {images} (sketchy-mini, sketchy21) stored at {args.image_size or 'their own size'}, "
              f"model input {model.image_config.size}, batch {args.batch_size}, cores {os.cpu_count()}")
        print(f"{'workers':>7} {'threads':>7} {'model alone':>12} {'full path':>10} {'ratio':>6}")
        for workers, threads in settings:
            alone, full = 0.0, 0.0
            for _ in range(args.repeat):
                alone = max(alone, model_rate(model, batches, threads))
                full = max(full, pipeline_rate(model, shards, Path(tmp) / "emb", args.batch_size, workers, threads))
            print(f"{workers:>7} {threads:>7} {alone:>8.1f} i/s {full:>6.1f} i/s {full / alone:>6.1%}")


if __name__ == "__main__":
    main()
