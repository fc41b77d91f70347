"""The evaluate stage (``python -m pipeline.evaluate``) in relation modes on the whole ``zse`` model
(``model.head_only: false``): pair features computed from the test images, scores equal to the model's own on
those images."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from sbir.retrieval.embed import embed_split
from sbir.retrieval.metrics import evaluate_scores
from tests.helpers import ROOT, full_zse, shard_images, write_shards


@pytest.mark.parametrize("mode", ["relation", "rerank"])
def test_evaluate_stage_scores_the_full_model_from_the_images(tmp_path, monkeypatch, mode):
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
        # stored in float16, as the stage keeps them (a random-init model's scores are near ties)
        sketches, photos = (model.pair_features(shard_images(shards, m, model.image_config), m).half()
                            for m in ("sketch", "photo"))
        expected = model.retrieval_scores(sketches, photos, mode=mode, top_k=3)(0, 7).numpy()
    sketch_classes = [f"class{i % 3}" for i in range(7)]
    photo_classes = [f"class{i % 3}" for i in range(9)]
    wanted = evaluate_scores(expected, sketch_classes, photo_classes)
    written = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert written["map_all"] == pytest.approx(wanted["map_all"], abs=1e-6)
    # embeddings of another part than the shards' are refused in one line
    (tmp_path / "data" / "embeddings" / "photo.json").write_text(json.dumps(
        [dict(m, key="other") for m in json.loads((tmp_path / "data" / "embeddings" / "photo.json").read_text())]))
    with pytest.raises(SystemExit):
        stage.main()


