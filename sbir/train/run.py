"""Train one model into a model folder: what the ``train`` stage and ``sbir train`` both run.

A model is given by its *spec*: ``{"method", "backbone", "weights", "head_only", "options"}`` with
``options`` the method's own keyword options (:func:`sbir.models.folder.description`). The folder gets
``model.json`` (:mod:`sbir.models.folder`), ``model.safetensors`` (the weights selected on the seen-class val
split) and ``last.pt`` (resumable); ``frozen`` trains nothing and gets only ``model.json``. Methods in
:data:`CACHED_INPUT` with ``head_only`` train their heads on a feature cache (:mod:`sbir.train.features`); the
others train on images decoded from the shards. The model's random parts are initialised from the training
seed, so two runs with the same inputs and seed give the same weights on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sbir.data.shards.reader import read_index
from sbir.errors import SbirError
from sbir.models.folder import build_model, description, is_model_folder, write_description
from sbir.train.callbacks import TrainCallback
from sbir.train.features import feature_cache_options
from sbir.train.loop import TrainConfig, train
from sbir.utils.atomic import check_output

#: methods that train on the feature cache when ``head_only`` is set, and the input they take (``sake``: its
#: trained stages' input and the teacher's logits; it fine-tunes those stages, not only heads)
CACHED_INPUT = {"linear": "pooled", "zse": "tokens", "sake": "stage"}


def uses_feature_cache(spec: dict) -> bool:
    return bool(spec.get("head_only")) and spec["method"] in CACHED_INPUT


def semantic_targets(options: dict, classes: list[str], data, class_map: str | None = None) -> dict[str, list[int]]:
    """``sake``'s ``imagenet_classes``: ``options['imagenet_classes']`` when given, else those of the class map
    file ``class_map`` (:func:`sbir.models.imagenet.read_class_map`), else the synset ids of the training
    photos' ids (Sketchy)."""
    from sbir.models.imagenet import classes_from_instances, read_class_map

    if "imagenet_classes" in options:
        return options["imagenet_classes"]
    if class_map:
        mapping = read_class_map(Path(class_map).expanduser())
        unknown = sorted(set(mapping) - set(classes))
        if unknown:
            raise SbirError(f"{class_map}: classes not in the dataset: {', '.join(unknown[:5])}")
        return mapping
    return classes_from_instances(classes, data.labels["photo"], data.instances["photo"])


def check_feature_cache(features: Path, spec: dict) -> None:
    """Refuse a feature cache made by another backbone (or other backbone weights)."""
    import json

    info_path = Path(features) / "info.json"
    if not info_path.is_file():
        raise SbirError(f"{features}: no feature cache (info.json missing; run the 'features' stage)")
    info = json.loads(info_path.read_text())
    if info.get("skipped"):
        raise SbirError(f"{features}: no feature cache ({info['skipped']}); the heads-only path needs one "
                        f"(model.head_only: true)")
    wanted = (spec["backbone"], spec.get("weights") or None)
    found = (info.get("backbone"), info.get("weights") or None)
    if found != wanted:
        raise SbirError(f"{features}: feature cache of {found[0]} (weights {found[1]}), but the model is "
                        f"{wanted[0]} (weights {wanted[1]})")
    stages = feature_cache_options(spec).get("stage_inputs")
    if stages is not None and info.get("stage_inputs") != stages:
        raise SbirError(f"{features}: the cache holds the input of the last {info.get('stage_inputs')} stages, but "
                        f"'sake' trains the last {stages} (make the cache again)")


def train_model(spec: dict, config: TrainConfig, shards: Path, out: Path, features: Path | None = None,
                callbacks: Sequence[TrainCallback] = (), device: str | None = None, workers: int = 0,
                cache_dir: Path | None = None, progress: bool = False) -> dict:
    """Train the model of ``spec`` on the shards (or the feature cache ``features``) into ``out``;
    return what ``out/model.json`` holds (``trained`` false for a method with nothing to train: ``frozen``).
    ``shards``: a folder, URL or ``pipe:`` location (remote shards are fetched once into ``cache_dir``,
    :func:`sbir.train.inputs.local_shards`). ``callbacks`` and ``workers`` (DataLoader processes decoding the
    images): see :func:`sbir.train.loop.train`. ``device``: ``cpu``, ``cuda``, ``cuda:N``; None picks CUDA
    when there is one.

    Resumes from ``out/last.pt`` when it is there (a run that was killed).
    """
    from sbir.train.inputs import cached_train_data, image_train_data
    from sbir.utils.device import resolve_device

    out = check_output(out, is_model_folder, [shards, features])
    device = resolve_device(device)
    index = read_index(shards)
    cached = uses_feature_cache(spec)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SbirError(f"{out}: cannot write here: {error.strerror}") from None
    info = description(spec, index, head_only=cached, trained=False)
    if spec["method"] == "frozen":
        for stale in ("model.safetensors", "last.pt"):
            (out / stale).unlink(missing_ok=True)
        write_description(out, info)
        return info
    if cached:
        if features is None:
            raise SbirError(f"'{spec['method']}' with head_only trains on a feature cache: give its folder")
        check_feature_cache(features, spec)
    model = build_model(spec, index, seed=config.seed)
    classes = index["classes"]
    has_val = bool(index["totals"]["val"]["sketch"])
    if cached:
        kind = CACHED_INPUT[spec["method"]]
        data = cached_train_data(features, "train", classes, kind)
        val = cached_train_data(features, "val", classes, kind) if has_val else None
    else:
        data = image_train_data(shards, "train", classes, model.image_config, cache_dir)
        val = image_train_data(shards, "val", classes, model.image_config, cache_dir) if has_val else None
    if spec["method"] == "sake":  # the semantic adjustment's classes, from the training photos: kept in model.json
        options = spec.get("options") or {}  # imagenet_map: a file for this, not a model option (model_options)
        targets = semantic_targets(options, classes, data, options.get("imagenet_map"))
        spec = {**spec, "options": {**options, "imagenet_classes": targets}}
        model = build_model(spec, index, seed=config.seed)
        info = description(spec, index, head_only=cached, trained=False)
    factory = (lambda m: m.make_optimizer()) if hasattr(model, "make_optimizer") else None
    summary = train(model, data, val, config, out, optimizer_factory=factory, callbacks=callbacks, progress=progress,
                    device=device, workers=workers if not cached else 0)
    info = {**info, "trained": True, "summary": summary}
    write_description(out, info)
    return info

