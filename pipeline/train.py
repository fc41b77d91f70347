"""Stage ``train``: ``data/model/`` (``model.safetensors``: the weights selected on the seen-class val
split; ``last.pt``: the resumable checkpoint; ``model.json``: what was trained) and DVCLive logs.

``frozen`` trains nothing and writes only ``model.json``. Methods on the feature cache (``model.head_only``)
train their heads on ``data/features``; the others train on images decoded from the shards.
Several processes: ``torchrun --nproc_per_node=N -m pipeline.train``.
"""

from __future__ import annotations

import os
import sys

from pipeline.params import CACHED_INPUT, FEATURES, MODEL, SHARDS, build_model, load, uses_feature_cache
from sbir.checkpoint import description, write_description
from sbir.cli import user_errors
from sbir.shards import read_index
from sbir.train import TrainConfig, train
from sbir.train_data import cached_train_data, image_train_data


def _frozen_log() -> None:
    """The stage's DVCLive outputs for a method that trains nothing (one point: 0 steps trained), so that
    ``dvc repro`` finds the metrics and plots it declares."""
    from dvclive import Live

    with Live("dvclive", save_dvc_exp=False, dvcyaml=None) as live:
        live.log_metric("steps_trained", 0)


@user_errors
def main() -> None:
    params = load()
    model_params, train_params = params["model"], params["train"]
    index = read_index(SHARDS)
    MODEL.mkdir(parents=True, exist_ok=True)
    info = description(model_params, index, head_only=uses_feature_cache(model_params), trained=False)
    if model_params["method"] == "frozen":
        for stale in ("model.safetensors", "last.pt"):
            (MODEL / stale).unlink(missing_ok=True)
        write_description(MODEL, info)
        _frozen_log()
        print("frozen: nothing to train")
        return
    model = build_model(params, index)
    classes = index["classes"]
    if uses_feature_cache(model_params):
        kind = CACHED_INPUT[model_params["method"]]
        data = cached_train_data(FEATURES, "train", classes, kind)
        val = cached_train_data(FEATURES, "val", classes, kind) if index["totals"]["val"]["sketch"] else None
    else:
        data = image_train_data(SHARDS, "train", classes, model.image_config)
        val = (image_train_data(SHARDS, "val", classes, model.image_config)
               if index["totals"]["val"]["sketch"] else None)
    config = TrainConfig(**{k: train_params[k] for k in TrainConfig.__dataclass_fields__})
    factory = (lambda m: m.make_optimizer()) if hasattr(model, "make_optimizer") else None
    live = None
    if int(os.environ.get("RANK", "0")) == 0:
        from dvclive import Live

        live = Live("dvclive", resume=(MODEL / "last.pt").is_file(), save_dvc_exp=False, dvcyaml=None)
    summary = train(model, data, val, config, MODEL, optimizer_factory=factory, live=live,
                    progress=sys.stderr.isatty())
    if live is not None:
        live.end()
    write_description(MODEL, {**info, "trained": True, "summary": summary})
    print(f"trained {config.steps} steps; best val mAP@all {summary['best_val_map_all']} at step "
          f"{summary['best_step']}")


if __name__ == "__main__":
    main()
