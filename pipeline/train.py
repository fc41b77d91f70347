"""Stage ``train``: ``data/model/`` (``model.safetensors``: the weights selected on the seen-class val
split; ``last.pt``: the resumable checkpoint; ``model.json``: what was trained) and DVCLive logs.

``frozen`` trains nothing and writes only ``model.json``. Methods on the feature cache (``model.head_only``)
train their heads on ``data/features``; the others train on images decoded from the shards
(:func:`sbir.train.run.train_model`, also behind ``sbir train``).
Several processes: ``torchrun --nproc_per_node=N -m pipeline.train``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.model import model_spec
from pipeline.params import FEATURES, MODEL, SHARDS, load
from sbir.cli import user_errors
from sbir.train.loop import TrainConfig
from sbir.train.run import train_model
from sbir_dvc.live import DVCLiveLogger


@user_errors
def main() -> None:
    params = load()
    train_params = params["train"]
    config = TrainConfig(**{k: train_params[k] for k in TrainConfig.__dataclass_fields__})
    logger = DVCLiveLogger(Path("dvclive"), inputs=[SHARDS, FEATURES, MODEL])
    info = train_model(model_spec(params), config, SHARDS, MODEL, features=FEATURES, callbacks=[logger],
                       workers=train_params["workers"], progress=sys.stderr.isatty())
    if not info["trained"]:
        logger.nothing_trained()
        print(f"{info['method']}: nothing to train")
        return
    summary = info["summary"]
    print(f"trained {config.steps} steps; best val mAP@all {summary['best_val_map_all']} at step "
          f"{summary['best_step']}")


if __name__ == "__main__":
    main()
