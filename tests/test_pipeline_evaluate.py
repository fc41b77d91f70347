"""The evaluate stage's relation modes on the whole ``zse`` model (``model.head_only: false``): pair
features computed from the test images, scores equal to the model's own on those images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_embed import write_shards
from test_zse import SMALL, tiny_vit

from sbir.embed import embed_split, load_image, pair_features_split
from sbir.errors import SbirError
from sbir.metrics import evaluate_scores
from sbir.models.zse import ZSESBIR
from sbir.shards import iter_tar_samples

ROOT = Path(__file__).resolve().parents[1]


def full_zse() -> ZSESBIR:
    model = ZSESBIR(tiny_vit(), **{**SMALL, "dropout": 0.0})  # 112 px: 7x7 patches
    torch.manual_seed(1)
    for parameter in model.parameters():  # away from the initialisation, so that every part matters
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def images_of(folder: Path, modality: str, model: ZSESBIR) -> torch.Tensor:
    """The test images of ``modality`` in shard order, normalised as the model expects."""
    extension = "jpg" if modality == "photo" else "png"
    samples = [s for p in sorted((folder / "test").glob(f"{modality}-*.tar")) for s in iter_tar_samples(p)]
    config = model.image_config
    pixels = torch.stack([torch.from_numpy(load_image(s[extension], config.size).copy()) for s in samples])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (config.mean, config.std))
    return (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std


def test_pair_features_split_equals_the_model_on_the_images(tmp_path):
    folder = tmp_path / "shards"
    keys = write_shards(folder, {"sketch": [3, 2], "photo": [4]})
    model = full_zse()
    features = pair_features_split(model, folder, batch_size=2, workers=0, device="cpu", progress=False)
    for modality in ("sketch", "photo"):
        values, found = features[modality]
        assert found == keys[modality] and values.dtype == np.float16
        with torch.inference_mode():
            expected = model.pair_features(images_of(folder, modality, model), modality)
        np.testing.assert_allclose(values.astype(np.float32), expected.numpy(), rtol=1e-2, atol=2e-3)
    write_shards(tmp_path / "sketches", {"sketch": [2]})
    with pytest.raises(SbirError, match="no photo samples in the test part"):
        pair_features_split(model, tmp_path / "sketches", workers=0, device="cpu", progress=False)


@pytest.mark.parametrize("mode", ["relation", "rerank"])
def test_evaluate_stage_scores_the_full_model_from_the_images(tmp_path, monkeypatch, mode):
    if str(ROOT) not in sys.path:
        monkeypatch.syspath_prepend(str(ROOT))
    from pipeline import evaluate as stage

    shards = tmp_path / "data" / "shards"
    write_shards(shards, {"sketch": [4, 3], "photo": [5, 4]})
    model = full_zse()
    embed_split(model, shards, tmp_path / "data" / "embeddings", workers=0, device="cpu", progress=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(method="zse", head_only=False)
    params["embed"].update(workers=0, device="cpu", batch_size=3)
    params["evaluate"].update(grid_queries=2, grid_top=3)
    params["retrieval"].update(mode=mode, top_k=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(stage, "trained_model", lambda params, index: model)
    monkeypatch.chdir(tmp_path)
    stage.main()
    retrieval = json.loads((tmp_path / "metrics" / "retrieval.json").read_text())
    assert retrieval["relation_pairs_scored"] == (7 * 9 if mode == "relation" else 7 * 3)
    with torch.inference_mode():
        sketches, photos = (model.pair_features(images_of(shards, m, model), m) for m in ("sketch", "photo"))
        expected = model.retrieval_scores(sketches, photos, mode=mode, top_k=3)(0, 7).numpy()
    sketch_classes = [f"class{i % 3}" for i in range(7)]
    photo_classes = [f"class{i % 3}" for i in range(9)]
    wanted = evaluate_scores(expected, sketch_classes, photo_classes)
    written = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert written["map_all"] == pytest.approx(wanted["map_all"], abs=1e-3)
    # embeddings of another part than the shards' are refused in one line
    (tmp_path / "data" / "embeddings" / "photo.json").write_text(json.dumps(
        [dict(m, key="other") for m in json.loads((tmp_path / "data" / "embeddings" / "photo.json").read_text())]))
    with pytest.raises(SystemExit):
        stage.main()
