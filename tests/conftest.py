"""Shared fixtures: the real data in ../shared/data (skipped with a reason when absent), offline hubs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SHARED_DATA = Path(os.environ.get("SBIR_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared(name: str) -> Path:
    """Path of a folder of ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is absent (set SBIR_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def sketchy_mini() -> Path:
    return shared("sketchy-mini")


@pytest.fixture(scope="session")
def quickdraw_mini() -> Path:
    return shared("quickdraw-mini")


@pytest.fixture(scope="session")
def tuberlin_mini() -> Path:
    return shared("tuberlin-mini")
