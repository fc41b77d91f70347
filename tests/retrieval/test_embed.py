"""Embedding shards (sbir.retrieval.embed): the embeddings are the model's on the images, the output folder,
errors, a sketch-only part, and the pair features of relation models. (Reading the shards is tested in
tests/data/test_loader.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sbir.errors import SbirError
from sbir.models import create_model
from sbir.retrieval.embed import embed_split, pair_features_split
from sbir.retrieval.embeddings import read_embeddings, read_info, write_embeddings
from tests.helpers import TinyBackbone, full_zse, shard_images, write_shards


def test_embeddings_match_the_model_on_the_images(tiny_shards, tmp_path):
    folder, keys = tiny_shards
    backbone = TinyBackbone()
    model = create_model("frozen", backbone)
    embed_split(model, folder, tmp_path / "emb", batch_size=4, workers=0, device="cpu", progress=False)
    photos = read_embeddings(tmp_path / "emb", "photo")
    images = shard_images(folder, "photo", backbone.image_config)
    with torch.inference_mode():
        expected = model.embed(images, "photo").numpy()
    np.testing.assert_allclose(photos.vectors, expected, rtol=1e-5, atol=1e-6)
    assert photos.classes == [f"class{i % 3}" for i in range(7)]
    assert photos.instances[:2] == ["class0/0", "class1/1"]


def test_output_folder(tiny_shards, tmp_path):
    folder, _ = tiny_shards
    out = tmp_path / "emb"
    out.mkdir()
    (out / "stale.npy").write_bytes(b"old")  # an earlier embeddings folder: replaced whole
    (out / "info.json").write_text("{}")
    info = embed_split(create_model("frozen", TinyBackbone()), folder, out, workers=0, device="cpu",
                       progress=False, info={"weights": "none"})
    assert sorted(p.name for p in out.iterdir()) == ["info.json", "photo.json", "photo.npy", "sketch.json",
                                                     "sketch.npy"]
    assert read_info(out) == info
    assert info["method"] == "frozen" and info["backbone"] == "tiny" and info["weights"] == "none"
    assert info["part"] == "test" and info["dataset"] == "tiny" and info["embed_dim"] == 8
    assert not list(tmp_path.glob(".emb*"))  # no temporary folder left behind
    meta = json.loads((out / "sketch.json").read_text())
    assert set(meta[0]) == {"key", "class", "instance"}


def test_errors(tiny_shards, tmp_path):
    folder, _ = tiny_shards
    model = create_model("frozen", TinyBackbone())
    with pytest.raises(SbirError, match="no val shards"):
        embed_split(model, folder, tmp_path / "emb", part="val", workers=0, progress=False)
    with pytest.raises(SbirError, match="no shard index"):
        embed_split(model, tmp_path, tmp_path / "emb", workers=0, progress=False)
    with pytest.raises(SbirError, match="batch size"):
        embed_split(model, folder, tmp_path / "emb", batch_size=0, workers=0, progress=False)
    with pytest.raises(SbirError, match="no photo embeddings"):
        read_embeddings(tmp_path, "photo")


def test_write_embeddings_roundtrip(tmp_path):
    from sbir.retrieval.embeddings import Embeddings

    vectors = np.arange(6, dtype=np.float64).reshape(3, 2)
    emb = Embeddings(vectors, ["a", "b", "c"], ["x", "x", "y"], ["x/1", "x/2", "y/3"])
    write_embeddings(tmp_path / "e", {"sketch": emb}, {"note": 1})
    back = read_embeddings(tmp_path / "e", "sketch")
    assert back.vectors.dtype == np.float32 and np.array_equal(back.vectors, vectors)
    assert (back.keys, back.classes, back.instances) == (emb.keys, emb.classes, emb.instances)


def test_sketch_only_part_gives_an_empty_photo_array(tmp_path):
    """TU-Berlin without its Extended photos has sketches only: they embed (a cross-dataset query set), the
    photos are an empty [0, D] array, and evaluating that folder alone is refused."""
    from sbir.retrieval.embeddings import read_embeddings
    from sbir.retrieval.evaluate import evaluate

    write_shards(tmp_path / "shards", {"sketch": [3]}, paired=False)
    info = embed_split(create_model("frozen", TinyBackbone()), tmp_path / "shards", tmp_path / "emb", workers=0,
                       device="cpu", progress=False)
    assert info["counts"] == {"sketch": 3, "photo": 0}
    sketches, photos = read_embeddings(tmp_path / "emb", "sketch"), read_embeddings(tmp_path / "emb", "photo")
    assert sketches.vectors.shape[0] == 3 and photos.vectors.shape == (0, sketches.vectors.shape[1])
    with pytest.raises(SbirError, match="nothing to evaluate: 3 sketches, 0 photos"):
        evaluate(sketches, photos)


def test_pair_features_split_equals_the_model_on_the_images(tmp_path):
    folder = tmp_path / "shards"
    keys = write_shards(folder, {"sketch": [3, 2], "photo": [4]})
    model = full_zse()
    features = pair_features_split(model, folder, batch_size=2, workers=0, device="cpu", progress=False)
    for modality in ("sketch", "photo"):
        values, found = features[modality]
        assert found == keys[modality] and values.dtype == np.float16
        with torch.inference_mode():
            expected = model.pair_features(shard_images(folder, modality, model.image_config), modality)
        np.testing.assert_allclose(values.astype(np.float32), expected.numpy(), rtol=1e-2, atol=2e-3)
    write_shards(tmp_path / "sketches", {"sketch": [2]})
    with pytest.raises(SbirError, match="no photo samples in the test part"):
        pair_features_split(model, tmp_path / "sketches", workers=0, device="cpu", progress=False)
