"""Reading ``params.yaml`` for the stages (the library itself never reads it)."""

from __future__ import annotations

from pathlib import Path

import yaml

RAW = Path("data/raw")
SHARDS = Path("data/shards")


def load(path: str = "params.yaml") -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)

FEATURES = Path("data/features")
MODEL = Path("data/model")
EMBEDDINGS = Path("data/embeddings")
#: methods that train heads on the feature cache when ``model.head_only`` is set, and the input they take
CACHED_INPUT = {"linear": "pooled", "zse": "tokens"}


def uses_feature_cache(model_params: dict) -> bool:
    return bool(model_params.get("head_only")) and model_params["method"] in CACHED_INPUT


def build_model(params: dict, index: dict):
    """The model ``params['model']`` describes, for the dataset of the shard ``index``."""
    from sbir.checkpoint import model_options
    from sbir.models import create_model

    model_params = params["model"]
    return create_model(model_params["method"], model_params["backbone"], weights=model_params["weights"] or None,
                        **model_options(model_params, index))
