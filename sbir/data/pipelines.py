"""The shards as WebDataset pipelines, for people who train their own models on them.

:func:`sample_pipeline` returns a :class:`webdataset.WebDataset` over one part and modality of a sharded
dataset, wherever it is (a folder, a URL, a ``pipe:`` command: :mod:`sbir.data.shards.location`), that
yields one dict per sample::

    {"image": uint8 tensor [3, S, S], "class_id": int, "class": str, "instance": str, "key": str, "meta": dict}

Images are decoded as the project's own models see them (RGB, a grey sketch replicated to 3 channels,
bicubic resize to ``image_size``; None keeps the stored size). Shards are split across DDP ranks
(``webdataset.split_by_node``) and DataLoader workers (``split_by_worker``), each read once, in order unless
``shuffle`` > 0 (a seeded sample buffer of that size). Training triplets come from
:func:`sbir.train.inputs.training_batches`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from sbir.data.images import load_image
from sbir.data.shards.location import ShardLocation
from sbir.data.shards.reader import decode_image, image_of, read_index, shard_paths


class _ToSample:
    """The map of :func:`sample_pipeline`: raw WebDataset sample -> the documented dict (picklable)."""

    def __init__(self, image_size: int | None, class_ids: dict[str, int]):
        self.image_size, self.class_ids = image_size, class_ids

    def __call__(self, raw: dict) -> dict:
        meta = json.loads(raw["json"])
        data = image_of(raw)[1]
        if self.image_size:
            array = load_image(data, self.image_size)
        else:
            array = np.asarray(decode_image(data).convert("RGB"), dtype=np.uint8)
        return {"image": torch.from_numpy(np.require(array, requirements="W")).permute(2, 0, 1).contiguous(),
                "class_id": self.class_ids.get(meta["class"], int(raw["cls"])), "class": meta["class"],
                "instance": meta["instance"], "key": raw["__key__"], "meta": meta}


def sample_pipeline(shards: Path | str | ShardLocation, part: str, modality: str, image_size: int | None = 224,
                    shuffle: int = 0, seed: int = 0):
    """A WebDataset pipeline of the ``part`` (``train``/``val``/``test``) ``modality`` (``sketch``/``photo``)
    samples of ``shards`` (module docstring); ``class_id`` indexes the index's ``classes``. Iterate it
    directly or wrap it in a ``torch.utils.data.DataLoader(pipeline, batch_size=..., num_workers=...)``."""
    import webdataset as wds

    classes = read_index(shards).get("classes", [])
    urls = [str(url) for url in shard_paths(shards, part, modality)]
    pipeline = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                              workersplitter=wds.split_by_worker, empty_check=False)
    if shuffle:
        pipeline = pipeline.shuffle(shuffle, rng=random.Random(seed))
    return pipeline.map(_ToSample(image_size, {name: i for i, name in enumerate(classes)}))
