"""The stages' model: the ``model`` group of ``params.yaml`` as the library's model spec, built for a dataset."""

from __future__ import annotations

from pipeline.params import MODEL
from sbir.models.folder import build_model as build_model_of
from sbir.models.folder import load_weights


def model_spec(params: dict) -> dict:
    """The library's model spec of ``params['model']``: ``options`` holds only the chosen method's options
    (params.yaml keeps every method's options, ``model.options.<method>``)."""
    model = params["model"]
    return {**model, "options": dict((model.get("options") or {}).get(model["method"]) or {})}


def build_model(params: dict, index: dict):
    """The model ``params['model']`` describes, for the dataset of the shard ``index``, its random parts
    initialised from ``train.seed`` (so that training starts from the same weights in every run)."""
    return build_model_of(model_spec(params), index, seed=int(params["train"]["seed"]))


def trained_model(params: dict, index: dict):
    """The model of ``params`` with its trained weights from ``data/model`` (when the method trains)."""
    model = build_model(params, index)
    weights = MODEL / "model.safetensors"
    if params["model"]["method"] != "frozen" and weights.is_file():
        load_weights(weights, model)
    return model.eval()
