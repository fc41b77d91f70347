"""Fixtures shared by the test folders: the real data in ../shared/data (skipped with a reason when absent),
tiny shard folders, a tiny trained-looking model and a folder of photos, and offline hubs. Helpers (plain
functions and classes) are in ``tests/helpers.py``."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from tests.helpers import LITE0_ZSE, photo, shared, write_shards  # noqa: E402 - after the environment it reads


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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """A tiny trained-looking zse model (``LITE0_ZSE``: head-only, width 16, random-init EfficientNet-Lite0 whose
    weights come from torch's generator seeded 0, heads perturbed) and its model folder. Loading the folder gives
    the same backbone only after ``torch.manual_seed(0)``."""
    import torch

    from sbir.models import create_model
    from sbir.models.folder import description, save_weights, write_description

    folder = tmp_path_factory.mktemp("model")
    info = description(LITE0_ZSE, None, random_init=True, trained=True)
    torch.manual_seed(0)
    model = create_model(info["method"], info["backbone"], random_init=True, **info["options"])
    with torch.no_grad():  # moved off their seeded init (so a load that ignored the file would show); small
        for parameter in model.parameters():  # enough that the relation network's sigmoid does not saturate
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    save_weights(folder / "model.safetensors", model)
    write_description(folder, info)
    return SimpleNamespace(model=model.eval(), folder=folder)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """Five photos in two class folders and one at the top, plus a truncated JPEG and a hidden file."""
    root = tmp_path_factory.mktemp("photos")
    for number, name in enumerate(["cat/a.jpg", "cat/b.png", "dog/c.jpg", "dog/d.jpg", "top.jpg"]):
        (root / name).parent.mkdir(exist_ok=True)
        photo(number).save(root / name)
    data = (root / "dog/c.jpg").read_bytes()
    (root / "dog/broken.jpg").write_bytes(data[: len(data) // 3])
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


@pytest.fixture(scope="session")
def folder_gallery(tiny, photo_folder, tmp_path_factory) -> Path:
    """:func:`photo_folder` indexed with :func:`tiny`'s model (exact FAISS index): 5 photos. Read it, never write."""
    from sbir.retrieval.search import index_folder

    out = tmp_path_factory.mktemp("folder-gallery") / "gallery"
    index_folder(tiny.model, photo_folder, out)
    return out
