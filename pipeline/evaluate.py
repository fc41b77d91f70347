"""Stage ``evaluate``: ``metrics/eval.json``, ``metrics/retrieval.json``, ``plots/{pr_curve,per_class_ap}.json``,
``plots/retrieval_grid.png``.

``retrieval.mode``: ``token`` (cosine of the embeddings, every method), or for ``zse`` ``relation`` (the
relation network on every sketch x photo pair) and ``rerank`` (relation on the token top-``top_k`` shortlist
only), on the cached tokens (``model.head_only``) or through the whole model from the images.
``metrics/retrieval.json`` records the mode, the relation pairs scored for the metrics and the wall time of
scoring them (the retrieval grid's few rows are not counted in either).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipeline.model import model_spec, trained_model
from pipeline.params import EMBEDDINGS, FEATURES, SHARDS, load
from sbir.cli import user_errors
from sbir.data.shards.reader import read_index
from sbir.errors import SbirError
from sbir.retrieval.evaluate import metrics_table, model_scores, run_evaluation
from sbir.train.features import load_features
from sbir.train.run import uses_feature_cache
from sbir.utils.atomic import atomic_write_text

METRICS = Path("metrics/eval.json")
RETRIEVAL = Path("metrics/retrieval.json")
PLOTS = Path("plots")


def relation_scores(params: dict, mode: str, top_k: int):
    """``zse``'s relation scores of the test part: on the cached tokens (``model.head_only``), or from the
    images through the whole trained model (its pair features computed once per image, like the embeddings:
    ``embed.*`` params)."""
    model_params, embed = model_spec(params), params["embed"]
    if model_params["method"] != "zse":
        raise SbirError(f"retrieval.mode={mode} needs the zse method (got {model_params['method']})")
    model = trained_model(params, read_index(SHARDS))
    if not uses_feature_cache(model_params):
        return model_scores(model, mode, top_k, EMBEDDINGS, SHARDS, batch_size=embed["batch_size"],
                            workers=embed["workers"], device=embed["device"], threads=embed["threads"] or None,
                            progress=sys.stderr.isatty())
    features = {}
    with torch.inference_mode():
        for modality in ("sketch", "photo"):
            tokens = load_features(FEATURES, embed["part"], modality).tokens
            features[modality] = torch.cat([model.pair_features(tokens[i:i + 256].float(), modality)
                                            for i in range(0, len(tokens), 256)])
    return model.retrieval_scores(features["sketch"], features["photo"], mode=mode, top_k=top_k)


@user_errors
def main() -> None:
    params = load()
    evaluate, retrieval = params["evaluate"], params["retrieval"]
    mode = retrieval["mode"]
    scores_fn = None if mode == "token" else relation_scores(params, mode, retrieval["top_k"])
    with torch.inference_mode():
        evaluation = run_evaluation(EMBEDDINGS, SHARDS, METRICS, PLOTS, block_size=evaluate["block_size"],
                                    pr_levels=evaluate["pr_levels"], grid_queries=evaluate["grid_queries"],
                                    grid_top=evaluate["grid_top"], seed=evaluate["seed"], scores_fn=scores_fn)
    pairs, seconds = evaluation.pairs_scored, evaluation.seconds
    atomic_write_text(RETRIEVAL, json.dumps({"mode": mode, "top_k": retrieval["top_k"] if mode == "rerank" else None,
                                     "relation_pairs_scored": pairs, "seconds": round(seconds, 2)},
                                    indent=1) + "\n")
    print(metrics_table(evaluation))
    print(f"mode {mode}: {pairs} relation pairs scored, {seconds:.1f} s")


if __name__ == "__main__":
    main()
