"""Reading ``params.yaml`` for the stages (the library itself never reads it)."""

from __future__ import annotations

from pathlib import Path

import yaml

from sbir.training import build_model as build_model_of

RAW = Path("data/raw")
SHARDS = Path("data/shards")
FEATURES = Path("data/features")
MODEL = Path("data/model")
EMBEDDINGS = Path("data/embeddings")


def load(path: str = "params.yaml") -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def build_model(params: dict, index: dict):
    """The model ``params['model']`` describes, for the dataset of the shard ``index``, its random parts
    initialised from ``train.seed`` (so that training starts from the same weights in every run)."""
    return build_model_of(params["model"], index, seed=int(params["train"]["seed"]))
