"""Embedding shards: each shard read exactly once, the same embeddings and order with or without worker
processes, shard order kept, image loading and normalisation, the output folder."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import sbir.data.loader
from sbir.data.images import ImageConfig, load_image
from sbir.data.loader import Normalise
from sbir.data.shards.reader import INDEX_NAME, iter_tar_samples
from sbir.data.shards.writer import TarShardWriter, sample_bytes, sample_metadata
from sbir.errors import SbirError
from sbir.models import create_model
from sbir.models.backbones import Backbone, TokenFeatures
from sbir.retrieval.embed import embed_split
from sbir.retrieval.embeddings import read_embeddings, read_info, write_embeddings

SIZE = 32


class TinyBackbone(Backbone):
    """A seeded 2-layer conv net on 32x32 inputs: fast, and sensitive to every pixel and channel."""

    image_config = ImageConfig(SIZE, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    embed_dim = token_dim = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1))
        self.name = "tiny"

    def forward_tokens(self, images: torch.Tensor) -> TokenFeatures:
        feature_map = self.net(images)
        tokens = feature_map.flatten(2).transpose(1, 2)
        return TokenFeatures(tokens.mean(dim=1), tokens, tuple(feature_map.shape[-2:]))


def encoded(modality: str, seed: int, size: int = 40) -> tuple[bytes, str]:
    """A random photo (RGB JPEG) or sketch (grey PNG) of ``size`` x ``size``."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    if modality == "photo":
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG")
        return buffer.getvalue(), "jpg"
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue(), "png"


def write_shards(folder: Path, per_shard: dict[str, list[int]], paired: bool = True) -> dict[str, list[str]]:
    """Test-part shards, ``per_shard[modality][i]`` samples in shard i (classes cycle over 3), and their
    index; returns the sample keys per modality in shard order. Sketch j pairs with photo j if ``paired``."""
    keys: dict[str, list[str]] = {}
    shards = {}
    for modality, counts in per_shard.items():
        keys[modality] = []
        number = 0
        for shard, count in enumerate(counts):
            writer = TarShardWriter(folder / "test" / f"{modality}-{shard:06d}.tar")
            for _ in range(count):
                key, class_name = f"{modality}_{number:04d}", f"class{number % 3}"
                instance = f"{class_name}/{number}" if paired else f"{class_name}/{modality}:{number}"
                data, extension = encoded(modality, seed=number + (1000 if modality == "photo" else 0))
                meta = sample_metadata(class_name, modality, f"{key}.{extension}", instance)
                writer.write(sample_bytes(key, data, extension, number % 3, meta))
                keys[modality].append(key)
                number += 1
            shards[writer.path.relative_to(folder).as_posix()] = {"samples": count, "sha256": writer.close()}
    index = {"dataset": "tiny", "split": "tiny", "shards": dict(sorted(shards.items()))}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    return keys


@pytest.fixture()
def tiny_shards(tmp_path) -> tuple[Path, dict[str, list[str]]]:
    folder = tmp_path / "shards"
    keys = write_shards(folder, {"sketch": [5, 4, 5], "photo": [5, 2]})
    return folder, keys


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


def test_embeddings_match_the_model_on_the_images(tiny_shards, tmp_path):
    folder, keys = tiny_shards
    backbone = TinyBackbone()
    model = create_model("frozen", backbone)
    embed_split(model, folder, tmp_path / "emb", batch_size=4, workers=0, device="cpu", progress=False)
    photos = read_embeddings(tmp_path / "emb", "photo")
    samples = [s for p in sorted((folder / "test").glob("photo-*.tar")) for s in iter_tar_samples(p)]
    images = torch.stack([torch.from_numpy(load_image(s["jpg"], SIZE).copy()) for s in samples]).permute(0, 3, 1, 2)
    images = images.float()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (backbone.image_config.mean, backbone.image_config.std))
    with torch.inference_mode():
        expected = model.embed((images / 255 - mean) / std, "photo").numpy()
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


def test_load_image_makes_grey_rgb_and_resizes():
    data, _ = encoded("sketch", seed=1, size=40)
    array = load_image(data, 24)
    assert array.shape == (24, 24, 3) and array.dtype == np.uint8
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
    photo, _ = encoded("photo", seed=2, size=32)
    same = load_image(photo, 32)
    assert np.array_equal(same, np.asarray(Image.open(io.BytesIO(photo)).convert("RGB")))


def test_normalise_is_channels_last_and_exact():
    config = ImageConfig(4, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    out = Normalise(config, torch.device("cpu"))(images)
    assert out.shape == (2, 3, 4, 4) and out.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(config.mean).view(1, 3, 1, 1), torch.tensor(config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (images.permute(0, 3, 1, 2).float() / 255 - mean) / std)


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
