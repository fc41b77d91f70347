"""Shards read from where users keep them: a folder, file://, http:// (a server on 127.0.0.1) and pipe:, with
the index fetched from the same place; and the public WebDataset pipeline over them."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sbir.data.pipelines import sample_pipeline
from sbir.data.shards.location import ShardLocation
from sbir.data.shards.reader import iter_tar_samples, read_index, shard_paths
from sbir.errors import SbirError


def locations(folder, url) -> dict[str, str]:
    return {"http": url, "file": folder.as_uri(), "pipe": f"pipe:cat {folder}/{{}}"}


@pytest.mark.parametrize("kind", ["http", "file", "pipe"])
def test_index_and_samples_equal_the_local_ones(kind, synthetic_shards, served):
    where = locations(synthetic_shards, served)[kind]
    assert read_index(where) == read_index(synthetic_shards)
    compared = 0
    for part in ("train", "val", "test"):
        for modality in ("sketch", "photo"):
            remote, local = shard_paths(where, part, modality), shard_paths(synthetic_shards, part, modality)
            assert len(remote) == len(local) >= 1
            for url, path in zip(remote, local):
                assert list(iter_tar_samples(url)) == list(iter_tar_samples(path))
                compared += 1
    assert compared == 6


def test_bad_locations_are_one_line(served, tmp_path):
    with pytest.raises(SbirError, match=r"/nowhere/index.json: cannot read"):
        read_index(served.rsplit("/", 1)[0] + "/nowhere")
    with pytest.raises(SbirError, match="needs {}"):
        ShardLocation("pipe:cat /data/shards")
    with pytest.raises(SbirError, match="no shard index"):
        read_index(tmp_path.as_uri())


@pytest.mark.parametrize("workers", [0, 2])
def test_sample_pipeline_yields_every_sample_once_with_its_class(workers, synthetic_shards, served):
    index = read_index(synthetic_shards)
    for where in (synthetic_shards, served):
        pipeline = sample_pipeline(where, "train", "photo", image_size=32)
        loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=workers)
        samples = list(loader)
        assert len(samples) == index["totals"]["train"]["photo"] > 0
        assert len({s["key"] for s in samples}) == len(samples)
        assert Counter(s["class"] for s in samples) == Counter(index["counts"]["train"]["photo"])
        for sample in samples[:3]:
            assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8
            assert index["classes"][sample["class_id"]] == sample["class"] == sample["meta"]["class"]
