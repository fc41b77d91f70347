"""Stage ``embed``: ``data/embeddings/{sketch,photo}.{npy,json}`` + ``info.json`` of the test part.

Methods trained on the feature cache (``model.head_only``) embed the cached test features; the others
run the model over the test shards. Trained weights come from ``data/model/model.safetensors``.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from pipeline.model import model_spec, trained_model
from pipeline.params import EMBEDDINGS, FEATURES, MODEL, SHARDS, load
from sbir.cli import user_errors
from sbir.data.shards.reader import read_index
from sbir.models.folder import model_identity
from sbir.retrieval.embed import embed_split
from sbir.retrieval.embeddings import Embeddings, write_embeddings
from sbir.train.features import cached_inputs, input_count, input_rows, load_features
from sbir.train.run import CACHED_INPUT, uses_feature_cache


@torch.inference_mode()
def embed_cached(model, kind: str, part: str, batch_size: int = 256) -> dict[str, Embeddings]:
    result = {}
    for modality in ("sketch", "photo"):
        features = load_features(FEATURES, part, modality)
        inputs = cached_inputs(features, kind)
        vectors = [model.embed(input_rows(inputs, slice(i, i + batch_size)), modality).float().numpy()
                   for i in range(0, input_count(inputs), batch_size)]
        result[modality] = Embeddings(np.concatenate(vectors), features.keys, features.classes, features.instances)
    return result


@user_errors
def main() -> None:
    params = load()
    model_params, embed = model_spec(params), params["embed"]
    index = read_index(SHARDS)
    model = trained_model(params, index)
    info = {"weights": model_params["weights"], "dataset": index["dataset"], "split": index["split"],
            "part": embed["part"], "method": model_params["method"], "backbone": model_params["backbone"],
            "model_sha256": model_identity(MODEL)["model_sha256"] if (MODEL / "model.json").is_file() else None}
    if uses_feature_cache(model_params):
        embeddings = embed_cached(model, CACHED_INPUT[model_params["method"]], embed["part"])
        info.update(embed_dim=int(embeddings["sketch"].vectors.shape[1]), source="feature cache",
                    counts={m: len(e) for m, e in embeddings.items()})
        write_embeddings(EMBEDDINGS, embeddings, info)
    else:
        info = embed_split(model, SHARDS, EMBEDDINGS, part=embed["part"], batch_size=embed["batch_size"],
                           workers=embed["workers"], device=embed["device"],
                           threads=embed["threads"] or None, progress=sys.stderr.isatty(), info=info)
    print(f"{info['counts']['sketch']} sketches, {info['counts']['photo']} photos x {info['embed_dim']} "
          f"({info['method']}, {info['backbone']}) -> {EMBEDDINGS}")


if __name__ == "__main__":
    main()
