"""The train and features stages (``python -m pipeline.train`` / ``pipeline.features``) in tiny projects."""

from __future__ import annotations

import json

import yaml

from sbir.models.folder import read_description
from tests.helpers import ROOT


def test_frozen_train_stage_writes_what_dvc_yaml_declares(tmp_path, monkeypatch):
    """dvc.yaml declares dvclive/metrics.json and dvclive/plots/metrics for the train stage: a frozen run must
    write them too (dvc repro failed with 'output does not exist'), plus a model.json that rebuilds it."""
    from pipeline import train as stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"]["method"] = "frozen"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shards = tmp_path / "data" / "shards"
    shards.mkdir(parents=True)
    (shards / "index.json").write_text(json.dumps({"classes": ["a"], "seen_classes": ["a"], "unseen_classes": []}))
    (tmp_path / "data" / "model").mkdir()
    (tmp_path / "data" / "model" / "last.pt").write_bytes(b"stale")
    monkeypatch.chdir(tmp_path)
    stage.main()
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    entries = declared["metrics"] + declared["plots"] + declared["outs"]
    assert len(entries) >= 3  # dvclive/metrics.json, dvclive/plots/metrics, data/model
    for entry in entries:
        assert (tmp_path / next(iter(entry))).exists(), entry
    assert json.loads((tmp_path / "dvclive" / "metrics.json").read_text()) == {"steps_trained": 0}
    info = read_description(tmp_path / "data" / "model")
    assert info["method"] == "frozen" and info["trained"] is False
    assert not (tmp_path / "data" / "model" / "last.pt").exists()


def test_train_stage_refuses_options_that_do_not_fit_in_one_line(tmp_path, monkeypatch, capsys):
    """params.yaml's zse width (a projection of the cached tokens) does not apply to the full model: switching
    with -S model.head_only=false alone must say so in one line and exit 2, not end in a traceback."""
    import pytest

    from pipeline import train as stage

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(method="zse", head_only=False)
    assert params["model"]["options"]["zse"]["width"] == 256
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    shards = tmp_path / "data" / "shards"
    shards.mkdir(parents=True)
    (shards / "index.json").write_text(json.dumps({"classes": ["a"], "seen_classes": ["a"], "unseen_classes": []}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        stage.main()
    assert exited.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("error: method 'zse' on tf_efficientnet_lite0: width=256")
    assert "leave width unset" in message


def test_features_stage_makes_no_cache_when_nothing_reads_it(tmp_path, monkeypatch):
    """model.head_only: false (the whole model runs its backbone on the images): the features stage writes only
    an info.json saying so (not 197 x 768 tokens per image for a ViT-B/16), without building the backbone,
    and the heads-only path refuses that folder in one line."""
    import pytest

    from pipeline import features as stage
    from sbir.errors import SbirError
    from sbir.train.run import check_feature_cache

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(method="zse", head_only=False, backbone="vit_base_patch16_224",
                           weights=str(tmp_path / "no-such-weights.safetensors"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data" / "features").mkdir(parents=True)
    (tmp_path / "data" / "features" / "train-sketch.safetensors").write_bytes(b"an earlier cache")
    (tmp_path / "data" / "features" / "info.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    stage.main()  # the weights file does not exist: the backbone is never built
    features = tmp_path / "data" / "features"
    assert [p.name for p in features.iterdir()] == ["info.json"]
    info = json.loads((features / "info.json").read_text())
    assert info["backbone"] == "vit_base_patch16_224" and "head_only is false" in info["skipped"]
    with pytest.raises(SbirError, match="no feature cache \\(model.head_only is false"):
        check_feature_cache(features, {**params["model"], "head_only": True})
