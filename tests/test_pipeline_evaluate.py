"""Relation modes from the images: the evaluate stage on the whole ``zse`` model (``model.head_only:
false``) and ``sbir evaluate --mode`` with a model folder; pair features computed from the test images,
scores equal to the model's own on those images."""

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

from sbir.data.images import load_image
from sbir.data.shards.reader import iter_tar_samples
from sbir.errors import SbirError
from sbir.models.zse import ZSESBIR
from sbir.retrieval.embed import embed_split, pair_features_split
from sbir.retrieval.evaluate import model_scores
from sbir.retrieval.metrics import evaluate_scores

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
        # stored in float16, as the stage keeps them (a random-init model's scores are near ties)
        sketches, photos = (model.pair_features(images_of(shards, m, model), m).half() for m in ("sketch", "photo"))
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


def test_cli_evaluate_relation_modes_with_a_model_folder(tmp_path):
    """``sbir evaluate --mode rerank|relation --model DIR``: a head-only zse model folder (random-init
    EfficientNet-Lite0), the pairs scored from the images equal to the model's own scores; refused without
    --model, with another model, and for a method without a relation network."""
    from click.testing import CliRunner

    from sbir.cli.main import main as sbir_cli
    from sbir.models import create_model
    from sbir.models.folder import description, load_model, save_weights, write_description

    shards, model_dir = tmp_path / "shards", tmp_path / "model"
    write_shards(shards, {"sketch": [3, 2], "photo": [4]})
    model_dir.mkdir()
    options = {"width": 16, "heads": 2, "ffn_dim": 8, "anchor_dim": 4}
    write_description(model_dir, description({"method": "zse", "backbone": "tf_efficientnet_lite0", "head_only": True,
                                              "options": options}, None, random_init=True))
    # seed 0: the seed load_model rebuilds a model folder's random parts with when it records no training
    model = create_model("zse", "tf_efficientnet_lite0", random_init=True, head_only=True, seed=0, **options)
    torch.manual_seed(3)
    for parameter in model.parameters():  # spread the scores: at initialisation they are near ties
        if parameter.requires_grad:
            parameter.data.add_(0.05 * torch.randn_like(parameter))
    save_weights(model_dir / "model.safetensors", model)
    model = load_model(model_dir)
    again = load_model(model_dir)  # the same model at every load, its frozen random backbone included
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    runner = CliRunner()
    embedded = runner.invoke(sbir_cli, ["embed", "--shards", str(shards), "--out", str(tmp_path / "emb"),
                                        "--workers", "0", "--model", str(model_dir)])
    assert embedded.exit_code == 0, embedded.output
    common = ["evaluate", "--embeddings", str(tmp_path / "emb"), "--shards", str(shards), "--grid-queries", "0",
              "--workers", "0", "--device", "cpu"]
    with torch.inference_mode():
        sketches, photos = (model.pair_features(images_of(shards, m, model), m) for m in ("sketch", "photo"))
        by_hand = model.retrieval_scores(sketches, photos, mode="relation")(0, 5).numpy()
    for mode, pairs in (("relation", 5 * 4), ("rerank", 5 * 2)):
        metrics = tmp_path / f"{mode}.json"
        result = runner.invoke(sbir_cli, [*common, "--mode", mode, "--top-k", "2", "--model", str(model_dir),
                                          "--metrics", str(metrics), "--plots", str(tmp_path / mode)])
        assert result.exit_code == 0, result.output
        assert f"mode {mode}: {pairs} relation pairs scored" in result.output
        with torch.inference_mode():
            scores = model_scores(model, mode, 2, tmp_path / "emb", shards, workers=0, device="cpu",
                                  progress=False)(0, 5).numpy()
        if mode == "relation":  # the pairs scored from the images are the model's scores of those images
            np.testing.assert_allclose(scores, by_hand, atol=1e-4)
        else:  # each sketch's 2 shortlisted photos rank first, with their relation scores
            top = np.argsort(-scores, axis=1)[:, :2]
            np.testing.assert_allclose(np.take_along_axis(scores, top, 1), np.take_along_axis(by_hand, top, 1),
                                       atol=1e-4)
        wanted = evaluate_scores(scores, [f"class{i % 3}" for i in range(5)], [f"class{i % 3}" for i in range(4)])
        assert json.loads(metrics.read_text())["map_all"] == pytest.approx(wanted["map_all"], abs=1e-9)
    result = runner.invoke(sbir_cli, [*common, "--mode", "rerank"])
    assert result.exit_code == 2 and "give --model" in result.output
    other = tmp_path / "other"
    other.mkdir()
    write_description(other, description({"method": "zse", "backbone": "tf_efficientnet_lite0", "head_only": True,
                                          "options": options}, None, random_init=True))
    save_weights(other / "model.safetensors", create_model("zse", "tf_efficientnet_lite0", random_init=True,
                                                           head_only=True, seed=4, **options))
    result = runner.invoke(sbir_cli, [*common, "--mode", "relation", "--model", str(other)])
    assert result.exit_code == 2 and "was not made with the model" in result.output
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    write_description(frozen, description({"method": "frozen", "backbone": "tf_efficientnet_lite0"}, None,
                                          random_init=True))
    runner.invoke(sbir_cli, ["embed", "--shards", str(shards), "--out", str(tmp_path / "emb-frozen"), "--workers",
                             "0", "--model", str(frozen)])
    result = runner.invoke(sbir_cli, ["evaluate", "--embeddings", str(tmp_path / "emb-frozen"), "--shards",
                                      str(shards), "--mode", "rerank", "--model", str(frozen), "--workers", "0"])
    assert result.exit_code == 2 and "needs a model with a relation network" in result.output
