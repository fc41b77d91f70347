"""Reading ``params.yaml`` for the stages (the library itself never reads it)."""

from __future__ import annotations

from pathlib import Path

import yaml

RAW = Path("data/raw")
SHARDS = Path("data/shards")


def load(path: str = "params.yaml") -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)
