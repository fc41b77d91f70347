"""Reading shards into batches (sbir.data.loader): each shard read exactly once, the same samples in shard order
with or without worker processes, and the normalisation on the device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sbir.data.loader
from sbir.data.images import ImageConfig
from sbir.data.loader import Normalise
from sbir.data.shards.reader import INDEX_NAME, iter_tar_samples
from sbir.models import create_model
from sbir.retrieval.embed import embed_split
from sbir.retrieval.embeddings import read_embeddings
from tests.helpers import TinyBackbone


@pytest.fixture()
def read_log(monkeypatch, tmp_path) -> Path:
    """Every shard opened by the embedding code, also from worker processes, one line per read."""
    log = tmp_path / "reads.log"
    original = sbir.data.loader.iter_tar_samples

    def counting(path):
        with open(log, "a") as handle:
            handle.write(f"{path}\n")
        yield from original(path)

    monkeypatch.setattr(sbir.data.loader, "iter_tar_samples", counting)
    return log


def test_tiny_shards_layout(tiny_shards):
    folder, keys = tiny_shards
    index = json.loads((folder / INDEX_NAME).read_text())
    assert [v["samples"] for k, v in index["shards"].items() if "sketch" in k] == [5, 4, 5]
    assert [s["__key__"] for s in iter_tar_samples(folder / "test" / "photo-000001.tar")] == keys["photo"][5:]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_shard_read_exactly_once(tiny_shards, read_log, tmp_path, workers):
    folder, keys = tiny_shards
    model = create_model("frozen", TinyBackbone())
    info = embed_split(model, folder, tmp_path / "emb", batch_size=3, workers=workers, device="cpu", progress=False)
    reads = read_log.read_text().split()
    assert len(reads) == 5
    assert sorted(reads) == sorted(str(p) for p in sorted((folder / "test").glob("*.tar")))
    assert info["counts"] == {"sketch": 14, "photo": 7}


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_workers_give_identical_embeddings_in_shard_order(tiny_shards, tmp_path):
    folder, keys = tiny_shards
    model = create_model("frozen", TinyBackbone())
    for workers in (0, 2, 3):
        embed_split(model, folder, tmp_path / f"w{workers}", batch_size=2, workers=workers, device="cpu",
                    progress=False)
    for modality in ("sketch", "photo"):
        reference = read_embeddings(tmp_path / "w0", modality)
        assert reference.keys == keys[modality]
        assert reference.vectors.dtype == np.float32 and reference.vectors.shape == (len(keys[modality]), 8)
        for workers in (2, 3):
            other = read_embeddings(tmp_path / f"w{workers}", modality)
            assert other.keys == reference.keys and other.classes == reference.classes
            assert other.instances == reference.instances
            assert np.array_equal(other.vectors, reference.vectors)


def test_normalise_is_channels_last_and_exact():
    config = ImageConfig(4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    out = Normalise(config, torch.device("cpu"))(images)
    assert out.shape == (2, 3, 4, 4) and out.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(config.mean).view(1, 3, 1, 1), torch.tensor(config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.permute(0, 3, 1, 2).float() / 255 - mean) / std)
