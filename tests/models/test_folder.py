"""A trained model folder rebuilds the model it was trained as (sbir.models.folder)."""

from __future__ import annotations

import pytest
import torch

from sbir.errors import SbirError
from sbir.models import create_model
from sbir.models.folder import description, load_model, read_description, save_weights, trained_state, write_description
from tests.helpers import LITE0_ZSE, assert_same_tensors


def trained_folder(tmp_path, model_params=LITE0_ZSE):
    info = description(model_params, None, random_init=True, trained=True)
    model = create_model(info["method"], info["backbone"], random_init=True, **info["options"])
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    save_weights(tmp_path / "model.safetensors", model)
    write_description(tmp_path, info)
    return model


def test_load_model_gives_back_the_trained_tensors(tmp_path):
    model = trained_folder(tmp_path)
    assert read_description(tmp_path)["options"] == {"width": 16, "heads": 2, "ffn_dim": 8, "anchor_dim": 4,
                                                       "head_only": True}
    for path in (tmp_path, tmp_path / "model.safetensors"):
        loaded = load_model(path)
        assert not loaded.training and loaded.dim == 16
        assert_same_tensors(trained_state(model), trained_state(loaded))


def test_bad_model_folders_are_one_line_errors(tmp_path):
    with pytest.raises(SbirError, match="no such model folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(SbirError, match="no model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(SbirError, match="not valid JSON"):
        load_model(tmp_path)
    write_description(tmp_path, description(LITE0_ZSE, None, random_init=True))
    with pytest.raises(SbirError, match="no model.safetensors"):
        load_model(tmp_path)
    linear = create_model("linear", "tf_efficientnet_lite0", random_init=True, head="mlp", out_dim=4)
    save_weights(tmp_path / "model.safetensors", linear)
    with pytest.raises(SbirError, match="does not fit the 'zse' model"):
        load_model(tmp_path)


def test_frozen_needs_no_weights(tmp_path):
    write_description(tmp_path, description({"method": "frozen", "backbone": "tf_efficientnet_lite0"}, None,
                                             random_init=True))
    assert load_model(tmp_path).method == "frozen"
