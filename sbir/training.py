"""Train one model into a model folder: what the ``train`` stage and ``sbir train`` both run.

``model_params`` is the ``model`` group of ``params.yaml`` (``method``, ``backbone``, ``weights``,
``head_only``, ``options: {method: {...}}``). The folder gets ``model.json`` (:mod:`sbir.checkpoint`),
``model.safetensors`` (the weights selected on the seen-class val split) and ``last.pt`` (resumable);
``frozen`` trains nothing and gets only ``model.json``. Methods in :data:`CACHED_INPUT` with ``head_only``
train their heads on a feature cache (:mod:`sbir.features`); the others train on images decoded from the
shards. The model's random parts are initialised from the training seed, so two runs with the same
inputs and seed give the same weights on the CPU.
"""

from __future__ import annotations

from pathlib import Path

from sbir.atomic import check_output
from sbir.checkpoint import description, model_options, write_description
from sbir.errors import SbirError
from sbir.shards import read_index
from sbir.train import TrainConfig, train

#: methods that train heads on the feature cache when ``head_only`` is set, and the input they take
CACHED_INPUT = {"linear": "pooled", "zse": "tokens"}


def uses_feature_cache(model_params: dict) -> bool:
    return bool(model_params.get("head_only")) and model_params["method"] in CACHED_INPUT


def build_model(model_params: dict, index: dict, seed: int = 0):
    """The model ``model_params`` describes, for the dataset of the shard ``index``, its random parts
    initialised from ``seed``."""
    from sbir.models import create_model

    return create_model(model_params["method"], model_params["backbone"], weights=model_params.get("weights") or None,
                        seed=seed, **model_options(model_params, index))


def check_feature_cache(features: Path, model_params: dict) -> None:
    """Refuse a feature cache made by another backbone (or other backbone weights)."""
    import json

    info_path = Path(features) / "info.json"
    if not info_path.is_file():
        raise SbirError(f"{features}: no feature cache (info.json missing; run the 'features' stage)")
    info = json.loads(info_path.read_text())
    if info.get("skipped"):
        raise SbirError(f"{features}: no feature cache ({info['skipped']}); the heads-only path needs one "
                        f"(model.head_only: true)")
    wanted = (model_params["backbone"], model_params.get("weights") or None)
    found = (info.get("backbone"), info.get("weights") or None)
    if found != wanted:
        raise SbirError(f"{features}: feature cache of {found[0]} (weights {found[1]}), but the model is "
                        f"{wanted[0]} (weights {wanted[1]})")


def _log_nothing_trained(log_dir: Path) -> None:
    """DVCLive outputs for a method that trains nothing (one point: 0 steps trained), so that the
    metrics and plots a pipeline declares exist."""
    from dvclive import Live

    with Live(str(log_dir), save_dvc_exp=False, dvcyaml=None) as live:
        live.log_metric("steps_trained", 0)


def is_model_folder(folder: Path) -> bool:
    """model.json, model.safetensors or last.pt of 'sbir train'"""
    return any((folder / name).is_file() for name in ("model.json", "model.safetensors", "last.pt"))


def is_training_log(folder: Path) -> bool:
    """metrics.json or plots/ of DVCLive's training log"""
    return (folder / "metrics.json").is_file() or (folder / "plots").is_dir()


def train_model(model_params: dict, config: TrainConfig, shards: Path, out: Path, features: Path | None = None,
                log_dir: Path | None = None, device: str | None = None, progress: bool = False) -> dict:
    """Train the model of ``model_params`` on the shards (or the feature cache ``features``) into ``out``;
    return what ``out/model.json`` holds. ``log_dir``: DVCLive folder for losses and val metrics (rank 0).
    ``device``: ``cpu``, ``cuda``, ``cuda:N``; None picks CUDA when there is one.

    Resumes from ``out/last.pt`` when it is there (a run that was killed).
    """
    from sbir.embed import resolve_device
    from sbir.train_data import cached_train_data, image_train_data

    out = check_output(out, is_model_folder, [shards, features, log_dir])
    if log_dir is not None:
        check_output(log_dir, is_training_log, [shards, features, out])
    device = resolve_device(device)
    index = read_index(shards)
    cached = uses_feature_cache(model_params)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SbirError(f"{out}: cannot write here: {error.strerror}") from None
    info = description(model_params, index, head_only=cached, trained=False)
    if model_params["method"] == "frozen":
        for stale in ("model.safetensors", "last.pt"):
            (out / stale).unlink(missing_ok=True)
        write_description(out, info)
        if log_dir is not None:
            _log_nothing_trained(log_dir)
        return info
    if cached:
        if features is None:
            raise SbirError(f"'{model_params['method']}' with head_only trains on a feature cache: give its folder")
        check_feature_cache(features, model_params)
    model = build_model(model_params, index, seed=config.seed)
    classes = index["classes"]
    has_val = bool(index["totals"]["val"]["sketch"])
    if cached:
        kind = CACHED_INPUT[model_params["method"]]
        data = cached_train_data(features, "train", classes, kind)
        val = cached_train_data(features, "val", classes, kind) if has_val else None
    else:
        data = image_train_data(shards, "train", classes, model.image_config)
        val = image_train_data(shards, "val", classes, model.image_config) if has_val else None
    factory = (lambda m: m.make_optimizer()) if hasattr(model, "make_optimizer") else None
    summary = train(model, data, val, config, out, optimizer_factory=factory, log_dir=log_dir, progress=progress,
                    device=device)
    info = {**info, "trained": True, "summary": summary}
    write_description(out, info)
    return info

