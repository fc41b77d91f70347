"""``sbir train`` and :func:`sbir.train.run.train_model`: the same inputs and seed give the same weights
whatever torch's global random state was (two zse runs of the quality table once differed from step 0
because the heads were initialised from it), the feature cache is made when missing and refused when it
belongs to another backbone, and bad options give one line and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from sbir.cli.main import main
from sbir.data.shards.reader import read_index
from sbir.errors import SbirError
from sbir.models import create_model
from sbir.models.folder import read_description
from sbir.train.loop import TrainConfig
from sbir.train.run import train_model
from tests.helpers import LITE0_ZSE_ARGS, LITE0_ZSE_OPTIONS, assert_same_tensors


def test_create_model_seed_fixes_the_initial_weights_and_leaves_the_global_state():
    def weights(seed):
        model = create_model("zse", "tf_efficientnet_lite0", random_init=True, head_only=True, seed=seed,
                             **LITE0_ZSE_OPTIONS)
        return {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = weights(0)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(456)
    second, other = weights(0), weights(1)
    assert_same_tensors(first, second)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def _train(shards, out, features, *extra):
    return CliRunner().invoke(main, ["train", "--shards", str(shards), "--out", str(out), "--features", str(features),
                                     "--method", "zse", "--head-only", "--weights", "package", *LITE0_ZSE_ARGS,
                                     "--steps", "6", "--batch-size", "4", "--eval-every", "3",
                                     "--checkpoint-every", "3", "--log-dir", str(out.parent / f"{out.name}-log"),
                                     *extra])


def test_sbir_train_twice_gives_the_same_weights(synthetic_shards, tmp_path):
    features = tmp_path / "features"
    torch.manual_seed(1)
    first = _train(synthetic_shards, tmp_path / "a", features)
    assert first.exit_code == 0, first.output
    assert (features / "info.json").is_file()  # computed on the first run
    torch.manual_seed(2)
    second = _train(synthetic_shards, tmp_path / "b", features)
    assert second.exit_code == 0, second.output
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert_same_tensors(a, b)
    info = read_description(tmp_path / "a")
    assert info["method"] == "zse" and info["trained"] is True and info["options"]["width"] == 16
    assert info["summary"]["steps"] == 6
    logged = json.loads((tmp_path / "a-log" / "metrics.json").read_text())
    assert "loss" in logged["train"] and "map_all" in logged["val"]
    other = _train(synthetic_shards, tmp_path / "c", features, "--seed", "1")
    assert other.exit_code == 0, other.output
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # the trained folder is usable by the other commands
    embedded = CliRunner().invoke(main, ["embed", "--shards", str(synthetic_shards), "--out", str(tmp_path / "emb"),
                                         "--model", str(tmp_path / "a"), "--workers", "0"])
    assert embedded.exit_code == 0, embedded.output


def test_sbir_train_with_batch_relation_pairs_and_distillation(synthetic_shards, tmp_path):
    """The training loop hands the class labels to the loss (relation_pairs=batch needs them) and logs the
    distillation terms; two runs give the same weights; the options reach model.json, so the trained folder
    rebuilds the same model."""
    out = tmp_path / "distilled"
    options = ("--option", "relation_pairs=batch", "--option", "distill_weight=1.0", "--option",
               "distill_temperature=0.2", "--option", "mutual_weight=0.5")
    for folder in (out, tmp_path / "again"):
        result = _train(synthetic_shards, folder, tmp_path / "features", *options)
        assert result.exit_code == 0, result.output
    a, b = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert_same_tensors(a, b)  # deterministic with these options too
    info = read_description(out)
    assert info["options"]["relation_pairs"] == "batch" and info["options"]["distill_weight"] == 1.0
    logged = json.loads((tmp_path / "distilled-log" / "metrics.json").read_text())
    assert logged["train"]["distill"] > 0 and logged["train"]["mutual"] > 0 and logged["train"]["relation"] > 0
    from sbir.models.folder import load_model

    model = load_model(out, device="cpu")
    assert model.relation_pairs == "batch" and model.distill_weight == 1.0 and model.distill_temperature == 0.2
    assert model.mutual_weight == 0.5


def test_feature_cache_of_another_backbone_is_refused(synthetic_shards, tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    (features / "info.json").write_text(json.dumps({"backbone": "vit_base_patch16_224", "weights": None}))
    model_params = {"method": "linear", "backbone": "tf_efficientnet_lite0", "weights": "package", "head_only": True}
    with pytest.raises(SbirError, match="feature cache of vit_base_patch16_224"):
        train_model(model_params, TrainConfig(steps=1), synthetic_shards, tmp_path / "m", features=features)


@pytest.mark.parametrize("args, message", [
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "zse", "--option", "colour=3"], "bad options"),
])
def test_bad_options_give_one_line(synthetic_shards, tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", "--shards", str(synthetic_shards), "--out", str(tmp_path / "m"),
                                       "--features", str(tmp_path / "f"), "--log-dir", str(tmp_path / "log"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_shards_give_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "no shard index" in result.output


def test_several_processes_do_not_race_to_make_the_feature_cache(synthetic_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = _train(synthetic_shards, tmp_path / "m", tmp_path / "features")
    assert result.exit_code == 2 and "without torchrun" in result.output
    assert not (tmp_path / "features").exists()


def _train_sake(shards, out, features, *extra, mode="--head-only", steps="4"):
    return CliRunner().invoke(main, ["train", "--shards", str(shards), "--out", str(out), "--features", str(features),
                                     "--method", "sake", mode, "--weights", "package", "--option", "out_dim=16",
                                     "--steps", steps, "--batch-size", "2", "--eval-every", "2",
                                     "--checkpoint-every", "2", "--log-dir", str(out.parent / f"{out.name}-log"),
                                     "--workers", "0", *extra])


def test_sake_trains_on_the_cache_deterministically_with_a_class_map(synthetic_shards, tmp_path):
    """sake's CPU path: the cache (with the trained stages' input) is made, two runs give the same weights, the
    class map's ImageNet classes reach model.json, the saved weights hold the trained stages and heads but nothing
    of the teacher or the frozen part, and the loaded model embeds images as the cache path does (one stage
    trained: the cheapest; the default's cache is checked in the next test)."""
    from sbir.models.folder import load_model
    from sbir.train.features import load_features

    seen = read_index(synthetic_shards)["seen_classes"]
    class_map = tmp_path / "map.txt"
    class_map.write_text(f"{seen[0]}\tn02690373\n")
    runs = [_train_sake(synthetic_shards, tmp_path / name, tmp_path / "features", "--option",
                        f"imagenet_map={class_map}", "--option", "stages=1") for name in ("a", "b")]
    assert all(run.exit_code == 0 for run in runs), [run.output for run in runs]
    assert json.loads((tmp_path / "features" / "info.json").read_text())["stage_inputs"] == 1
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert_same_tensors(a, b)
    assert "embedding.weight" in a and "backbone.model.blocks.6.0.conv_pw.weight" in a
    assert not any(k.startswith("teacher.") or k.startswith("backbone.model.blocks.5.") and "weight" in k
                   and "bn" not in k for k in a)
    info = read_description(tmp_path / "a")
    assert info["options"]["imagenet_classes"] == {seen[0]: [404]} and "imagenet_map" not in info["options"]
    logged = json.loads((tmp_path / "a-log" / "metrics.json").read_text())
    assert logged["train"]["distillation"] > 0 and logged["train"]["classification"] > 0
    model = load_model(tmp_path / "a", device="cpu")
    cached = load_features(tmp_path / "features", "test", "photo")
    from_cache = model.embed({"stage": cached.stage[:2].float(), "logits": cached.logits[:2]}, "photo")
    from tests.helpers import shard_images

    with torch.no_grad():
        from_images = model.embed(shard_images(synthetic_shards, "photo", model.image_config)[:2], "photo")
    assert torch.allclose(from_cache, from_images, atol=2e-2)


def test_sake_refuses_a_cache_of_other_stages_and_a_bad_class_map(synthetic_shards, tmp_path):
    from sbir.models.sake import DEFAULT_STAGES

    first = _train_sake(synthetic_shards, tmp_path / "a", tmp_path / "features", steps="2")
    assert first.exit_code == 0, first.output
    assert json.loads((tmp_path / "features" / "info.json").read_text())["stage_inputs"] == DEFAULT_STAGES == 2
    other = _train_sake(synthetic_shards, tmp_path / "b", tmp_path / "features", "--option", "stages=1")
    assert other.exit_code == 2 and "the last 2 stages, but 'sake' trains the last 1" in other.output
    class_map = tmp_path / "map.txt"
    class_map.write_text("kangaroo\tn02690373\n")
    bad = _train_sake(synthetic_shards, tmp_path / "c", tmp_path / "features", "--option", f"imagenet_map={class_map}")
    assert bad.exit_code == 2 and "map.txt: classes not in the dataset: kangaroo" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_sake_trains_the_whole_model_on_images(synthetic_shards, tmp_path):
    """--full: the teacher runs on the images; the result loads and embeds."""
    from sbir.models.folder import load_model

    result = _train_sake(synthetic_shards, tmp_path / "full", tmp_path / "unused", mode="--full", steps="2")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "unused").exists()
    info = read_description(tmp_path / "full")
    assert info["head_only"] is False and info["options"]["imagenet_classes"] == {}  # synthetic photos: no synsets
    model = load_model(tmp_path / "full", device="cpu")
    with torch.no_grad():
        assert model.embed(torch.zeros(1, 3, 224, 224), "sketch").shape == (1, 16)
