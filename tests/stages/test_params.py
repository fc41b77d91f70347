"""``params.yaml`` is validated when a stage reads it (:func:`pipeline.params.load`): a wrong type, a value out of
range, a missing or an unknown key is one ``error: params.yaml: KEY is VALUE; expected ...`` line and exit
status 2, not a TypeError or KeyError traceback from deep inside the stage."""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from pipeline.params import SCHEMA, load, validate
from sbir.errors import SbirError
from tests.helpers import ROOT

STAGES = ["download", "shard", "features", "train", "embed", "evaluate", "explain"]


def committed() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def changed(key: str, value: Any) -> dict:
    """The committed params with ``key`` (``group.name``) set to ``value``."""
    params = copy.deepcopy(committed())
    group, name = key.split(".")
    params[group][name] = value
    return params


def without(key: str) -> dict:
    params = copy.deepcopy(committed())
    group, name = key.split(".")
    del params[group][name]
    return params


def message(params: Any) -> str:
    with pytest.raises(SbirError) as error:
        validate(params)
    text = str(error.value)
    assert "\n" not in text
    return text


def test_committed_params_validate_and_the_schema_covers_them_exactly() -> None:
    params = load(str(ROOT / "params.yaml"))
    assert params == committed()
    keys = {f"{group}.{name}" for group, values in params.items() for name in values}
    assert len(keys) == len(SCHEMA) == 44
    assert keys == set(SCHEMA)


@pytest.mark.parametrize("key, value, expected", [
    ("shard.image_size", "big", "shard.image_size is 'big'; expected an integer, 0 or in [16, 4096]"),
    ("shard.image_size", True, "shard.image_size is true; expected an integer"),
    ("shard.image_size", 256.0, "shard.image_size is 256.0; expected an integer"),
    ("train.steps", "300", "train.steps is '300'; expected an integer >= 1 (training steps); a quoted number is "
                           "text: remove the quotes"),
    ("train.lr", "1e-3", "train.lr is '1e-3'; expected a number > 0 (learning rate); YAML reads 1e-3 as text: "
                         "write 0.001"),
    ("train.fine_grained", "no", "train.fine_grained is 'no'; expected true or false"),
    ("model.head_only", 1, "model.head_only is 1; expected true or false"),
    ("data.source", 3, "data.source is 3; expected a string or null"),
    ("model.options", ["zse"], "model.options is ['zse']; expected a mapping"),
    ("train", 5, "train is 5; expected a mapping of steps, batch_size"),
])
def test_a_wrong_type_names_the_key_and_the_value(key: str, value: Any, expected: str) -> None:
    params = changed(key, value) if "." in key else {**committed(), key: value}
    assert message(params).startswith(f"params.yaml: {expected}")


@pytest.mark.parametrize("key, value, expected", [
    ("shard.image_size", -5, "shard.image_size is -5; expected an integer, 0 or in [16, 4096]"),
    ("shard.image_size", 8, "shard.image_size is 8; expected an integer, 0 or in [16, 4096]"),
    ("shard.val_fraction", 1.5, "shard.val_fraction is 1.5; expected a number in [0, 1)"),
    ("shard.val_fraction", -0.5, "shard.val_fraction is -0.5; expected a number in [0, 1)"),
    ("shard.val_fraction", float("nan"), "shard.val_fraction is nan; expected a number in [0, 1)"),
    ("shard.seed", -1, "shard.seed is -1; expected an integer in [0, 4294967295]"),
    ("train.lr", 0, "train.lr is 0; expected a number > 0"),
    ("train.lr", float("inf"), "train.lr is inf; expected a number > 0"),
    ("features.workers", -1, "features.workers is -1; expected an integer >= 0"),
    ("evaluate.pr_levels", 1, "evaluate.pr_levels is 1; expected an integer >= 2"),
    ("explain.lines", 500, "explain.lines is 500; expected an integer in [1, 200]"),
    ("embed.device", "gpu", "embed.device is 'gpu'; expected auto, cpu, cuda or cuda:N"),
    ("explain.device", "cuda:", "explain.device is 'cuda:'; expected auto, cpu, cuda or cuda:N"),
    ("retrieval.mode", "tokens", "retrieval.mode is 'tokens'; expected one of token, relation, rerank"),
    ("model.method", "lineaer", "model.method is 'lineaer'; expected one of clip_prompt, frozen, linear, sake, zse"),
    ("data.dataset", "Sketchy", "data.dataset is 'Sketchy'; expected one of quickdraw, sketchy, synthetic, tuberlin"),
    ("embed.part", "tests", "embed.part is 'tests'; expected one of test, val, train"),
])
def test_a_value_out_of_range_names_the_key_and_the_value(key: str, value: Any, expected: str) -> None:
    assert message(changed(key, value)).startswith(f"params.yaml: {expected}")


@pytest.mark.parametrize("key", ["train.steps", "shard.image_size", "embed.device", "explain.device",
                                 "model.options", "data.mirror"])
def test_a_missing_key_is_named(key: str) -> None:
    text = message(without(key))
    assert text.startswith(f"params.yaml: {key} is missing; expected ")


def test_a_missing_group_is_named() -> None:
    params = committed()
    del params["retrieval"]
    assert message(params) == "params.yaml: retrieval is missing; expected a mapping of mode, top_k"


@pytest.mark.parametrize("params, expected", [
    ({"step": 300}, "params.yaml: train.step is 300, an unknown key (did you mean train.steps?); train takes steps, "),
    ({"learning_rate": 0.1}, "params.yaml: train.learning_rate is 0.1, an unknown key; train takes steps, "),
])
def test_an_unknown_key_is_named(params: dict, expected: str) -> None:
    full = committed()
    full["train"].update(params)
    assert message(full).startswith(expected)


def test_a_typo_is_reported_as_unknown_before_its_key_is_missing() -> None:
    params = committed()
    params["train"]["step"] = params["train"].pop("steps")
    assert "train.step is 300, an unknown key (did you mean train.steps?)" in message(params)


def test_an_unknown_group_is_named() -> None:
    params = {**committed(), "trian": {"steps": 3}}
    assert message(params).startswith("params.yaml: trian is {'steps': 3}, an unknown key (did you mean train?)")


def test_model_options_are_free_per_method() -> None:
    params = committed()
    params["model"]["options"]["zse"]["anything"] = [1, 2]
    params["model"]["options"]["future_method"] = {"depth": 3}
    params["model"]["options"]["linear"] = None
    assert validate(params) is params
    params["model"]["options"]["zse"] = 256
    assert message(params) == ("params.yaml: model.options.zse is 256; expected a mapping of the zse method's "
                               "options (or null)")


@pytest.mark.parametrize("key, value", [
    ("data.source", None), ("data.split", "sketchy21"), ("model.weights", None), ("shard.image_size", 0),
    ("shard.image_size", 16), ("shard.val_fraction", 0), ("train.lr", 1), ("embed.device", "cuda:1"),
    ("explain.device", "cpu"), ("evaluate.grid_queries", 0), ("shard.seed", 2**32 - 1),
])
def test_boundary_values_validate(key: str, value: Any) -> None:
    params = changed(key, value)
    assert validate(params) is params


@pytest.mark.parametrize("text, expected", [
    ("", "params.yaml is null; expected a mapping of the groups data, shard, model"),
    ("- a\n- b\n", "params.yaml is ['a', 'b']; expected a mapping of the groups"),
    ("data: [\n", "params.yaml: not valid YAML at line 2"),
])
def test_load_refuses_what_is_not_a_params_file(tmp_path, text: str, expected: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(SbirError) as error:
        load(str(path))
    assert str(error.value).replace(str(tmp_path) + os.sep, "").startswith(expected)
    with pytest.raises(SbirError, match="no such file"):
        load(str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_validates_its_params(tmp_path, monkeypatch, capsys, stage: str) -> None:
    """Each stage refuses a params.yaml with a typo before doing anything: one line, exit status 2."""
    module = importlib.import_module(f"pipeline.{stage}")
    params = committed()
    params["train"]["step"] = params["train"].pop("steps")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: params.yaml: train.step is 300, an unknown key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_shard_stage_with_a_wrong_type_exits_2_with_one_line(tmp_path) -> None:
    params = committed()
    params["shard"]["image_size"] = "big"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "pipeline.shard"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: shard.image_size is 'big'; expected an integer, 0 or in [16, 4096] (side of the square "
        "images in the shards; 0 keeps each image's size)"]
    assert result.stdout == ""


def test_the_written_out_choices_are_the_registries():
    """params.py lists the methods and backbones itself (reading params.yaml imports no model code); they must
    be exactly what the registries hold."""
    from pipeline.params import BACKBONES, METHODS
    from sbir.models import backbone_names, method_names

    assert list(METHODS) == method_names() and len(METHODS) == 5
    assert list(BACKBONES) == backbone_names() and len(BACKBONES) == 3
