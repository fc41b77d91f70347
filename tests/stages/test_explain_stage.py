"""The explain stage (``python -m pipeline.explain``) in a tiny project."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

from sbir.explain.correspondence import PATCH_COSINE
from sbir.models.folder import description, write_description
from tests.helpers import ROOT, shards_with_random_embeddings


def test_explain_stage(tmp_path, monkeypatch):
    """``python -m pipeline.explain`` in a tiny project: frozen random-init EfficientNet-Lite0, 2 queries x 1."""
    from pipeline import explain as stage

    shards_with_random_embeddings(tmp_path, "frozen")
    (tmp_path / "data" / "model").mkdir()
    write_description(tmp_path / "data" / "model", description(
        {"method": "frozen", "backbone": "tf_efficientnet_lite0"}, None, random_init=True))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["explain"] = {"queries": 2, "seed": 0, "top": 1, "lines": 5, "device": "cpu"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    stage.main()
    out = tmp_path / "explain"
    index = json.loads((out / "index.json").read_text())
    assert index["correspondence"] == PATCH_COSINE and index["method"] == "frozen" and index["grid"] == [7, 7]
    assert len(index["queries"]) == 2 and all(len(q["retrieved"]) == 1 for q in index["queries"])
    assert sorted(p.name for p in out.iterdir()) == sorted(index["files"] + ["index.json"])
    assert index["files"]
    for name in index["files"]:
        with Image.open(out / name) as picture:
            assert picture.width >= 600 and picture.height > 250 and np.asarray(picture.convert("L")).std() > 20
