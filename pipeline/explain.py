"""Stage ``explain``: ``explain/`` — token correspondences and sketch-to-photo synthesis of the top photos
retrieved for a fixed, seeded set of test queries (:func:`sbir.explain.retrievals.explain_retrievals`).

The model is rebuilt from ``data/model`` (``model.json`` + weights); queries and rankings come from
``data/embeddings`` (cosine; they must have been made by that model), images from the test part of
``data/shards``. ``explain/`` holds one
``query-NN-<key>.png`` per query, ``overview.png`` and ``index.json``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.params import EMBEDDINGS, MODEL, SHARDS, load
from sbir.cli import user_errors
from sbir.explain.retrievals import explain_retrievals
from sbir.models.folder import load_model, model_identity

OUT = Path("explain")


@user_errors
def main() -> None:
    params = load()["explain"]
    model = load_model(MODEL, device=params.get("device", "auto"))
    index = explain_retrievals(model, EMBEDDINGS, SHARDS, OUT, queries=params["queries"], seed=params["seed"],
                               top=params["top"], lines=params["lines"], identity=model_identity(MODEL))
    correct = sum(r["correct"] for q in index["queries"] for r in q["retrieved"])
    total = sum(len(q["retrieved"]) for q in index["queries"])
    print(f"{len(index['queries'])} queries x top {params['top']} ({index['correspondence']}, "
          f"{correct}/{total} of the query's class) -> {OUT}/")


if __name__ == "__main__":
    main()
