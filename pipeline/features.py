"""Stage ``features``: ``data/features/``, the frozen backbone's pooled features and tokens of every part
(the CPU path: heads train on this cache instead of running the backbone at every step). With
``model.head_only: false`` nothing reads the cache: only ``info.json`` is written, saying so."""

from __future__ import annotations

import sys

from pipeline.model import model_spec
from pipeline.params import FEATURES, SHARDS, load
from sbir.cli import user_errors
from sbir.models import create_backbone
from sbir.train.features import cache_features, feature_cache_options, write_no_cache


@user_errors
def main() -> None:
    params = load()
    model, features = params["model"], params["features"]
    if not model["head_only"]:
        write_no_cache(FEATURES, {"backbone": model["backbone"], "weights": model["weights"]},
                       "model.head_only is false: the model runs its backbone on the images")
        print(f"model.head_only is false: no feature cache -> {FEATURES}")
        return
    backbone = create_backbone(model["backbone"], weights=model["weights"] or None)
    info = cache_features(backbone, SHARDS, FEATURES, batch_size=features["batch_size"],
                          workers=features["workers"], threads=features["threads"] or None,
                          info={"weights": model["weights"]}, progress=sys.stderr.isatty(),
                          **feature_cache_options(model_spec(params)))
    print(f"cached {info['counts']} ({info['backbone']}, grid {info['grid']}) -> {FEATURES}")


if __name__ == "__main__":
    main()
