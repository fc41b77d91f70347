"""The frozen-backbone feature cache (CPU path): contents, order, shapes, and reading it back."""

from __future__ import annotations

import json

import pytest
import torch

from sbir.data.shards.reader import iter_tar_samples, read_index, shard_paths
from sbir.errors import SbirError
from sbir.models import create_backbone
from sbir.train.features import cache_features, load_features
from sbir.train.inputs import cached_train_data


def test_cache_matches_the_shards_and_the_backbone(synthetic_shards, tmp_path):
    shards = synthetic_shards
    index = read_index(shards)
    torch.manual_seed(0)
    backbone = create_backbone("tf_efficientnet_lite0", random_init=True).eval()
    info = cache_features(backbone, shards, tmp_path / "features", workers=0, progress=False)
    assert info["grid"] == [7, 7]
    for part in ("train", "test"):
        for modality in ("sketch", "photo"):
            features = load_features(tmp_path / "features", part, modality)
            keys = [s["__key__"] for p in shard_paths(shards, part, modality) for s in iter_tar_samples(p)]
            assert keys and features.keys == keys
            assert len(features) == index["totals"][part][modality] == info["counts"][f"{part}-{modality}"]
            assert features.pooled.shape == (len(keys), 1280) and features.tokens.shape == (len(keys), 49, 1280)
            assert features.tokens.dtype == torch.float16
    # the cached pooled feature is the backbone's own output for that image
    from sbir.data.images import load_image
    from sbir.data.loader import Normalise

    first = next(iter_tar_samples(shard_paths(shards, "test", "photo")[0]))
    config = backbone.image_config
    image = Normalise(config, torch.device("cpu"))(torch.from_numpy(load_image(first["jpg"], config.size)[None].copy()))
    with torch.inference_mode():
        expected = backbone.forward_tokens(image).pooled[0]
    cached = load_features(tmp_path / "features", "test", "photo").pooled[0]
    assert torch.allclose(cached, expected, atol=1e-4)
    data = cached_train_data(tmp_path / "features", "train", index["classes"], "tokens")
    assert data.fetch("sketch", [0, 1]).shape == (2, 49, 1280)
    meta = json.loads((tmp_path / "features" / "train-photo.json").read_text())
    assert [index["classes"][i] for i in data.labels["photo"]] == [m["class"] for m in meta]


def test_sake_cache_holds_the_trained_stages_input_and_the_teacher_logits(synthetic_shards, tmp_path):
    """With stage_inputs (sake) the cache also holds the input of the last stages and the ImageNet logits, and they
    are what the backbone makes of the image; pooled and tokens are the same as without."""
    backbone = create_backbone("tf_efficientnet_lite0", random_init=True).eval()
    info = cache_features(backbone, synthetic_shards, tmp_path / "sake", workers=0, progress=False, parts=("test",),
                          stage_inputs=2)
    plain = cache_features(backbone, synthetic_shards, tmp_path / "plain", workers=0, progress=False, parts=("test",))
    assert info["stage_inputs"] == 2 and "stage_inputs" not in plain
    features = load_features(tmp_path / "sake", "test", "photo")
    without = load_features(tmp_path / "plain", "test", "photo")
    assert without.stage is None and without.logits is None
    assert torch.equal(features.pooled, without.pooled) and torch.equal(features.tokens, without.tokens)
    assert features.stage.shape == (len(features), 112, 14, 14) and features.stage.dtype == torch.float16
    assert features.logits.shape == (len(features), 1000)
    from sbir.data.images import load_image
    from sbir.data.loader import Normalise

    first = next(iter_tar_samples(shard_paths(synthetic_shards, "test", "photo")[0]))
    config = backbone.image_config
    image = Normalise(config, torch.device("cpu"))(torch.from_numpy(load_image(first["jpg"], config.size)[None].copy()))
    with torch.inference_mode():
        assert torch.allclose(features.stage[0].float(), backbone.lower(image, 2)[0], atol=1e-2, rtol=1e-3)
        assert torch.allclose(features.logits[0], backbone.classify(image)[0], atol=1e-4)
    data = cached_train_data(tmp_path / "sake", "test", read_index(synthetic_shards)["classes"], "stage")
    fetched = data.fetch("photo", [1, 0])
    assert set(fetched) == {"stage", "logits"} and torch.equal(fetched["logits"][1], features.logits[0])
    with pytest.raises(SbirError, match="no stage, logits"):
        cached_train_data(tmp_path / "plain", "test", read_index(synthetic_shards)["classes"], "stage")
