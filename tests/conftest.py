"""Fixtures shared by the test folders: the real data in ../shared/data (skipped with a reason when absent),
tiny shard folders, and offline hubs. Helpers (plain functions and classes) are in ``tests/helpers.py``."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from tests.helpers import shared, write_shards  # noqa: E402 - after the environment it reads


@pytest.fixture(scope="session")
def sketchy_mini() -> Path:
    return shared("sketchy-mini")


@pytest.fixture(scope="session")
def quickdraw_mini() -> Path:
    return shared("quickdraw-mini")


@pytest.fixture(scope="session")
def tuberlin_mini() -> Path:
    return shared("tuberlin-mini")


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """Shards of a generated synthetic dataset at 64 px: 5 classes of 4 photos with 1 sketch each, 'umbrella'
    unseen, a quarter of the seen instances in val. Shared by the whole session: read it, never write to it."""
    from sbir.data.datasets import get_dataset
    from sbir.data.datasets.synthetic import generate
    from sbir.data.shards.build import shard_dataset

    tmp = tmp_path_factory.mktemp("synthetic")
    raw = generate(tmp / "raw", classes_count=5, photos_per_class=4, sketches_per_photo=1, image_size=64,
                   workers=1, progress=False)
    split = tmp / "split.txt"
    split.write_text("umbrella\n")
    out = tmp / "shards"
    shard_dataset(get_dataset("synthetic"), raw, out, str(split), image_size=64, val_fraction=0.25, workers=1,
                  progress=False)
    return out


@pytest.fixture()
def tiny_shards(tmp_path) -> tuple[Path, dict[str, list[str]]]:
    """Test-part shards of random 40 px images: sketches 5, 4, 5 and photos 5, 2 per shard, and their keys."""
    folder = tmp_path / "shards"
    keys = write_shards(folder, {"sketch": [5, 4, 5], "photo": [5, 2]})
    return folder, keys


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def served(synthetic_shards):
    """``http://127.0.0.1:<port>/shards``: the synthetic shards' parent folder served by a local HTTP server."""
    handler = functools.partial(_Quiet, directory=str(synthetic_shards.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{synthetic_shards.name}"
    server.shutdown()
    server.server_close()
