"""The training input path: batches made in DataLoader workers from images read on demand (nothing held per
image), the same batches and weights whatever the number of workers, a killed run resumed to the same
weights, and shards over HTTP training exactly as the local folder."""

from __future__ import annotations

import pytest
import torch

from sbir.data.images import ImageConfig
from sbir.data.shards.reader import read_index
from sbir.models import create_model
from sbir.train.inputs import ShardImages, chunk_loader, image_train_data, local_shards, training_batches
from sbir.train.loop import TrainConfig, train
from tests.helpers import TinyCNN, assert_same_tensors

CONFIG = ImageConfig(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_shard_images_hold_where_images_are_not_the_images(synthetic_shards):
    index = read_index(synthetic_shards)
    images = ShardImages(local_shards(synthetic_shards, "train", "photo"), CONFIG)
    assert len(images) == index["totals"]["train"]["photo"] > 0
    assert not any(isinstance(value, bytes | bytearray) for value in vars(images).values())
    assert all(len(entry) == 3 for entry in images.where)  # (shard, offset, size) per sample, nothing else
    batch = images.fetch([0, len(images) - 1])
    assert batch.shape == (2, 32, 32, 3) and batch.dtype == torch.uint8


@pytest.fixture(scope="module")
def sketchy_shards(sketchy_mini, tmp_path_factory):
    """Real shards: sketchy-mini at 256 px (1,500 train images), to have the workers read at the same time."""
    from sbir.data.datasets import get_dataset
    from sbir.data.shards.build import shard_dataset

    out = tmp_path_factory.mktemp("sketchy") / "shards"
    shard_dataset(get_dataset("sketchy"), sketchy_mini, out, "sketchy21", workers=2, progress=False)
    return out


def test_workers_forked_after_this_process_read_images_read_them_right(sketchy_shards):
    """Files this process opened are inherited by forked workers: reading must not share a file position (with
    a seek and a read, two workers reading at once got each other's bytes: 'cannot identify image file')."""
    data = image_train_data(sketchy_shards, "train", read_index(sketchy_shards)["classes"], CONFIG)
    data.fetch("photo", [0, 1])  # opens the shard here, before the workers fork
    alone = list(chunk_loader(data, "photo", 4, workers=0))
    forked = list(chunk_loader(data, "photo", 4, workers=2))
    assert len(alone) == len(forked) >= 100
    for a, b in zip(alone, forked):
        assert torch.equal(a, b)


def test_training_batches_do_not_depend_on_the_workers(synthetic_shards):
    made = {}
    for workers in (0, 2):
        made[workers] = list(training_batches(synthetic_shards, CONFIG, batch_size=4, steps=5, workers=workers))
    assert len(made[0]) == len(made[2]) == 5
    for a, b in zip(made[0], made[2]):
        assert sorted(a) == sorted(b) == ["negative", "negative_label", "positive", "sketch", "sketch_label"]
        assert_same_tensors(a, b)
    assert made[0][0]["sketch"].shape == (4, 32, 32, 3)
    # a positive shares the sketch's class, a negative does not
    resumed = list(training_batches(synthetic_shards, CONFIG, batch_size=4, steps=5, workers=2, start=3))
    assert len(resumed) == 2
    for a, b in zip(made[0][3:], resumed):
        assert_same_tensors(a, b)


def _model():
    return create_model("linear", TinyCNN(size=32, dim=8), seed=0)


def _train(shards, out, workers, steps=6, **kw):
    model = _model()
    index = read_index(shards)
    data = image_train_data(shards, "train", index["classes"], model.image_config, **kw)
    val = image_train_data(shards, "val", index["classes"], model.image_config, **kw)
    train(model, data, val, TrainConfig(steps=steps, batch_size=4, eval_every=3, checkpoint_every=3), out,
          workers=workers, progress=False)
    return model


def test_weights_do_not_depend_on_the_workers(synthetic_shards, tmp_path):
    a = _train(synthetic_shards, tmp_path / "a", workers=0)
    b = _train(synthetic_shards, tmp_path / "b", workers=2)
    assert_same_tensors(a.state_dict(), b.state_dict())
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_a_killed_run_with_workers_resumes_to_the_same_weights(synthetic_shards, tmp_path):
    straight = _train(synthetic_shards, tmp_path / "a", workers=2)

    class Killed(Exception):
        pass

    model = _model()
    forward, calls = model.forward, {"n": 0}

    def dying(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at step 3
            raise Killed
        return forward(batch)

    model.forward = dying
    index = read_index(synthetic_shards)
    data = image_train_data(synthetic_shards, "train", index["classes"], model.image_config)
    with pytest.raises(Killed):
        train(model, data, None, TrainConfig(steps=6, batch_size=4, eval_every=3, checkpoint_every=3),
              tmp_path / "b", workers=2, progress=False)
    resumed = _train(synthetic_shards, tmp_path / "b", workers=2)
    assert_same_tensors(straight.state_dict(), resumed.state_dict())


def test_shards_over_http_train_the_same_weights(synthetic_shards, served, tmp_path, monkeypatch):
    monkeypatch.setenv("SBIR_CACHE", str(tmp_path / "cache"))
    local = _train(synthetic_shards, tmp_path / "local", workers=0, steps=3)
    remote = _train(served, tmp_path / "remote", workers=0, steps=3)
    assert_same_tensors(local.state_dict(), remote.state_dict())
    cached = sorted(p.relative_to(tmp_path / "cache").parts[2:] for p in (tmp_path / "cache").rglob("*.tar"))
    assert [tuple(c) for c in cached] == [("train", "photo-000000.tar"), ("train", "sketch-000000.tar"),
                                           ("val", "photo-000000.tar"), ("val", "sketch-000000.tar")]
