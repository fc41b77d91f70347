"""Evaluation of embeddings: the eval.json keys, fine-grained Acc only with instance pairs, the cosine and
pairwise score paths, the plot files and the retrieval grid, the ``sbir`` commands (``sbir evaluate --mode``
relation and rerank with a model folder too), and the frozen EfficientNet-Lite0 baseline on real Sketchy data
(above chance, identical across runs)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sbir.cli.main import main as sbir_cli
from sbir.errors import SbirError
from sbir.models import create_model
from sbir.retrieval.embed import embed_split
from sbir.retrieval.embeddings import Embeddings, read_embeddings
from sbir.retrieval.evaluate import (
    CATEGORY_METRICS,
    FINE_GRAINED_METRICS,
    cosine_scores,
    evaluate,
    has_instance_pairs,
    model_scores,
    pairwise_scores,
    pick_queries,
    run_evaluation,
    top_k,
)
from sbir.retrieval.metrics import evaluate_embeddings, evaluate_scores
from tests.helpers import LITE0_ZSE_OPTIONS, TinyBackbone, assert_same_tensors, shard_images, write_shards

CATEGORY_KEYS = ["map_all", "map_all_voc", "map_200", "map_200_voc", "prec_100", "prec_200"]


def random_embeddings(n: int, classes: int, seed: int, modality: str, paired: bool, dim: int = 6) -> Embeddings:
    rng = np.random.default_rng(seed)
    labels = [f"c{i % classes}" for i in range(n)]
    centres = np.random.default_rng(99).normal(size=(classes, dim))
    vectors = (centres[[i % classes for i in range(n)]] + rng.normal(scale=1.5, size=(n, dim))).astype(np.float32)
    instances = [f"{label}/{i}" if paired else f"{label}/{modality}:{i}" for i, label in enumerate(labels)]
    return Embeddings(vectors, [f"{modality}_{i}" for i in range(n)], labels, instances)


def test_metric_keys():
    assert list(CATEGORY_METRICS) == CATEGORY_KEYS
    assert list(FINE_GRAINED_METRICS) == ["acc_1", "acc_5", "acc_10"]


@pytest.mark.parametrize("paired", [True, False])
def test_evaluate_keys_and_fine_grained_only_with_pairs(paired):
    sketches = random_embeddings(30, 3, 1, "sketch", paired)
    photos = random_embeddings(12, 3, 2, "photo", paired)
    assert has_instance_pairs(sketches, photos) == paired
    result = evaluate(sketches, photos, block_size=7, pr_levels=11)
    expected = CATEGORY_KEYS + (["acc_1", "acc_5", "acc_10"] if paired else [])
    assert list(result.metrics) == expected
    reference = evaluate_embeddings(sketches.vectors, photos.vectors, sketches.classes, photos.classes,
                                    sketches.instances if paired else None, photos.instances if paired else None)
    for key in expected:
        assert result.metrics[key] == pytest.approx(reference[key], abs=1e-12)
    assert result.counts["n_queries"] == 30 and result.counts["n_gallery"] == 12
    assert sorted(result.per_class_ap) == ["c0", "c1", "c2"]
    assert len(result.pr_curve["recall"]) == 11 and result.pr_curve["recall"][-1] == 1.0


def test_pairwise_scores_path_equals_cosine_path():
    """The block interface of relation-style models, exercised with the frozen model's (cosine) score_pairs."""
    sketches = random_embeddings(25, 4, 3, "sketch", True)
    photos = random_embeddings(16, 4, 4, "photo", True)
    model = create_model("frozen", TinyBackbone())
    pairwise = pairwise_scores(model.score_pairs, torch.from_numpy(sketches.vectors),
                               torch.from_numpy(photos.vectors), gallery_block=5)
    cosine = cosine_scores(sketches.vectors, photos.vectors)
    np.testing.assert_allclose(pairwise(3, 11), cosine(3, 11), rtol=1e-6, atol=1e-6)
    by_pairs = evaluate(sketches, photos, pairwise, block_size=4)
    by_cosine = evaluate(sketches, photos, cosine, block_size=4)
    for key, value in by_cosine.metrics.items():
        assert by_pairs.metrics[key] == pytest.approx(value, abs=1e-6)


def test_pick_queries_and_top_k():
    classes = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    chosen = pick_queries(classes, 3, seed=0)
    assert chosen == pick_queries(classes, 3, seed=0)
    assert sorted(classes[i] for i in chosen) == ["a", "b", "c"]
    assert len(set(pick_queries(classes, 8, seed=1))) == 8
    assert len(pick_queries(classes, 20, seed=1)) == 10
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 0.0, 0.2, 0.3]], dtype=np.float32)
    ranked = top_k(lambda start, stop: scores[start:stop], [1, 0], 3)
    assert ranked.tolist() == [[0, 3, 2], [1, 3, 2]]


def test_errors():
    sketches = random_embeddings(4, 2, 1, "sketch", True)
    empty = Embeddings(np.zeros((0, 6), np.float32))
    with pytest.raises(SbirError, match="nothing to evaluate"):
        evaluate(sketches, empty)
    photos = random_embeddings(4, 2, 1, "photo", True)
    photos.instances[1] = photos.instances[3]  # the same photo twice in the gallery
    with pytest.raises(SbirError, match="cannot evaluate"):
        evaluate(sketches, photos)
    with pytest.raises(SbirError, match="embedding sizes differ"):
        cosine_scores(np.ones((2, 3)), np.ones((2, 4)))


@pytest.fixture()
def embedded(tmp_path):
    """Tiny shards and their embeddings by the frozen tiny model."""
    shards = tmp_path / "shards"
    write_shards(shards, {"sketch": [6, 6], "photo": [6]})
    embed_split(create_model("frozen", TinyBackbone()), shards, tmp_path / "emb", workers=0, device="cpu",
                progress=False)
    return shards, tmp_path / "emb"


def test_run_evaluation_writes_metrics_plots_and_grid(embedded, tmp_path):
    shards, embeddings = embedded
    metrics, plots = tmp_path / "metrics" / "eval.json", tmp_path / "plots"
    evaluation = run_evaluation(embeddings, shards, metrics, plots, block_size=5, pr_levels=21, grid_queries=4,
                                grid_top=5, seed=0)
    written = json.loads(metrics.read_text())
    assert list(written) == CATEGORY_KEYS + ["acc_1", "acc_5", "acc_10"]
    assert written == evaluation.metrics
    curve = json.loads((plots / "pr_curve.json").read_text())["pr_curve"]
    assert len(curve) == 21 and set(curve[0]) == {"recall", "precision"}
    per_class = json.loads((plots / "per_class_ap.json").read_text())["per_class_ap"]
    assert [row["class"] for row in per_class] == ["class0", "class1", "class2"]
    assert all(0 <= row["ap"] <= 1 for row in per_class)
    with Image.open(plots / "retrieval_grid.png") as grid:
        assert grid.format == "PNG" and grid.width > 600 and grid.height > 400
    assert sorted(p.name for p in plots.iterdir()) == ["per_class_ap.json", "pr_curve.json", "retrieval_grid.png"]


def test_cli_embed_and_evaluate(tmp_path):
    """The commands end to end, with the real EfficientNet-Lite0 weights on a few tiny images."""
    shards = tmp_path / "shards"
    write_shards(shards, {"sketch": [4], "photo": [3]}, paired=False)
    runner = CliRunner()
    result = runner.invoke(sbir_cli, ["embed", "--shards", str(shards), "--out", str(tmp_path / "emb"),
                                      "--workers", "0", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "4 sketches, 3 photos x 1280" in result.output
    result = runner.invoke(sbir_cli, ["evaluate", "--embeddings", str(tmp_path / "emb"), "--shards", str(shards),
                                      "--metrics", str(tmp_path / "eval.json"), "--plots", str(tmp_path / "plots"),
                                      "--grid-queries", "2", "--grid-top", "3"])
    assert result.exit_code == 0, result.output
    assert list(json.loads((tmp_path / "eval.json").read_text())) == CATEGORY_KEYS  # no pairs: no Acc@K
    assert "map_all" in result.output
    result = runner.invoke(sbir_cli, ["evaluate", "--embeddings", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no sketch embeddings" in result.output
    result = runner.invoke(sbir_cli, ["embed", "--shards", str(shards), "--backbone", "resnet9"])
    assert result.exit_code == 2 and "unknown backbone 'resnet9'" in result.output


@pytest.mark.slow
def test_frozen_effnet_baseline_on_sketchy_mini(sketchy_mini, tmp_path):
    """The real baseline on real data: sketchy21's 21 unseen classes (chance mAP about 1/21), twice."""
    from sbir.data.datasets import get_dataset
    from sbir.data.shards.build import shard_dataset

    shards = tmp_path / "shards"
    shard_dataset(get_dataset("sketchy"), sketchy_mini, shards, "sketchy21", image_size=None, workers=2,
                  progress=False)
    model = create_model("frozen", "tf_efficientnet_lite0")
    runs = []
    for run in range(2):
        embed_split(model, shards, tmp_path / f"emb{run}", batch_size=64, workers=2, progress=False)
        runs.append(run_evaluation(tmp_path / f"emb{run}", shards, tmp_path / f"eval{run}.json",
                                   tmp_path / f"plots{run}", grid_queries=0))
    first, second = (read_embeddings(tmp_path / f"emb{run}", "sketch") for run in range(2))
    assert np.array_equal(first.vectors, second.vectors) and first.keys == second.keys
    assert runs[0].metrics == runs[1].metrics
    metrics = runs[0].metrics
    assert runs[0].counts["n_queries"] == 246 and runs[0].counts["n_gallery"] == 260
    assert metrics["map_all"] > 0.1, metrics  # about 3x chance (measured 0.151)
    assert metrics["map_200"] > 0.1 and metrics["prec_100"] > 1 / 21
    assert metrics["acc_1"] > 0.1  # the sketch's own photo first among ~12 of its class


def test_cross_dataset_gallery_from_another_embeddings_folder(embedded, tmp_path):
    """Sketches of one folder against the photos of another (same model) = evaluating one folder that holds
    both; a gallery embedded by another model is refused."""
    shards, embeddings = embedded
    other = tmp_path / "other"
    shutil.copytree(embeddings, other)
    (other / "sketch.npy").unlink()
    same = run_evaluation(embeddings, shards, tmp_path / "a.json", tmp_path / "pa", grid_queries=2)
    cross = run_evaluation(embeddings, shards, tmp_path / "b.json", tmp_path / "pb", grid_queries=2,
                           photo_embeddings_dir=other, photo_shard_folder=shards)
    assert cross.metrics == same.metrics
    info = json.loads((other / "info.json").read_text())
    (other / "info.json").write_text(json.dumps({**info, "model_sha256": "0" * 64}))
    with pytest.raises(SbirError, match="photos embedded with model_sha256"):
        run_evaluation(embeddings, shards, tmp_path / "c.json", tmp_path / "pc", photo_embeddings_dir=other)


def test_cli_embed_with_a_trained_model_folder(tmp_path):
    from sbir.models.folder import description, write_description

    shards, model_dir = tmp_path / "shards", tmp_path / "model"
    write_shards(shards, {"sketch": [2], "photo": [2]}, paired=False)
    model_dir.mkdir()
    write_description(model_dir, description({"method": "frozen", "backbone": "tf_efficientnet_lite0"}, None,
                                             random_init=True))
    result = CliRunner().invoke(sbir_cli, ["embed", "--shards", str(shards), "--out", str(tmp_path / "emb"),
                                           "--workers", "0", "--model", str(model_dir)])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "emb" / "info.json").read_text())
    assert info["method"] == "frozen" and info["model_sha256"] is None and "2 sketches, 2 photos" in result.output
    result = CliRunner().invoke(sbir_cli, ["embed", "--shards", str(shards), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such model folder" in result.output


def test_run_evaluation_counts_the_pairs_of_the_metrics_only(embedded, tmp_path):
    """A pairwise scorer's ``pairs_scored`` after the metrics = every sketch x photo pair once; the grid's rows,
    scored afterwards, are not counted."""
    shards, embeddings = embedded
    sketches, photos = read_embeddings(embeddings, "sketch"), read_embeddings(embeddings, "photo")
    cosine = cosine_scores(sketches.vectors, photos.vectors)

    class Counting:
        pairs_scored = 0

        def __call__(self, start, stop):
            self.pairs_scored += (stop - start) * len(photos)
            return cosine(start, stop)

    scorer = Counting()
    evaluation = run_evaluation(embeddings, shards, tmp_path / "m.json", tmp_path / "p", block_size=5,
                                grid_queries=3, scores_fn=scorer)
    assert evaluation.pairs_scored == len(sketches) * len(photos) < scorer.pairs_scored
    assert evaluation.seconds > 0


def test_cli_evaluate_relation_modes_with_a_model_folder(tmp_path):
    """``sbir evaluate --mode rerank|relation --model DIR``: a head-only zse model folder (random-init
    EfficientNet-Lite0), the pairs scored from the images equal to the model's own scores; refused without
    --model, with another model, and for a method without a relation network."""
    from sbir.models.folder import description, load_model, save_weights, write_description

    shards, model_dir = tmp_path / "shards", tmp_path / "model"
    write_shards(shards, {"sketch": [3, 2], "photo": [4]})
    model_dir.mkdir()
    options = LITE0_ZSE_OPTIONS
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
    assert_same_tensors(model.state_dict(), again.state_dict())
    runner = CliRunner()
    embedded = runner.invoke(sbir_cli, ["embed", "--shards", str(shards), "--out", str(tmp_path / "emb"),
                                        "--workers", "0", "--model", str(model_dir)])
    assert embedded.exit_code == 0, embedded.output
    common = ["evaluate", "--embeddings", str(tmp_path / "emb"), "--shards", str(shards), "--grid-queries", "0",
              "--workers", "0", "--device", "cpu"]
    with torch.inference_mode():
        sketches, photos = (model.pair_features(shard_images(shards, m, model.image_config), m)
                            for m in ("sketch", "photo"))
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
