"""A trained model on disk, self-describing: ``MODEL_DIR/model.json`` + ``MODEL_DIR/model.safetensors``.

``model.json`` (written by the ``train`` stage, :func:`write_description`) says how to rebuild the model::

    {"method": "zse", "backbone": "tf_efficientnet_lite0", "weights": "package", "head_only": true,
     "options": {"width": 256, "head_only": true}, "trained": true, ...}

``options`` are the keyword arguments of :func:`sbir.models.create_model` (for ``clip_prompt`` they include
the class names its text classifier was built with). ``model.safetensors`` holds only the trained tensors
(:func:`sbir.models.folder.save_weights`); the backbone's own weights come from ``weights`` as at training time.
``frozen`` has no weight file. ``"random_init": true`` (tests) builds the backbone without weights.
Nothing here unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from sbir.errors import SbirError
from sbir.utils.atomic import atomic_file, atomic_write_text

DESCRIPTION = "model.json"
WEIGHTS = "model.safetensors"


def model_options(spec: dict, index: dict | None = None) -> dict:
    """``create_model`` options of a model spec (``{"method", "backbone", "weights", "head_only", "options"}``,
    ``options`` the method's own; ``index``: the shard index, for the class names ``clip_prompt`` needs)."""
    method = spec["method"]
    options = dict(spec.get("options") or {})
    if method == "zse" and spec.get("head_only"):
        options["head_only"] = True
    if method == "sake":  # a file read by training into imagenet_classes (sbir.train.run), not a model option
        options.pop("imagenet_map", None)
    if method in ("clip_prompt", "sake") and index is not None:
        options.update(class_names=list(index["classes"]), seen_classes=list(index["seen_classes"]))
    return options


def description(spec: dict, index: dict | None = None, **extra) -> dict:
    """What ``model.json`` holds for a model spec (:func:`model_options`)."""
    return {"method": spec["method"], "backbone": spec["backbone"], "weights": spec.get("weights") or None,
            "head_only": bool(spec.get("head_only")), "options": model_options(spec, index), **extra}


def write_description(folder: Path, info: dict) -> None:
    atomic_write_text(Path(folder) / DESCRIPTION, json.dumps(info, indent=1) + "\n")


def read_description(folder: Path) -> dict:
    path = Path(folder) / DESCRIPTION
    if not path.is_file():
        raise SbirError(f"{folder}: no {DESCRIPTION} (is it the output of the train stage?)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SbirError(f"{path}: not valid JSON ({error})") from None
    missing = [k for k in ("method", "backbone") if k not in info]
    if missing:
        raise SbirError(f"{path}: missing {', '.join(missing)}")
    return info


def model_identity(path: Path) -> dict:
    """What identifies a trained model in the outputs made with it: method, backbone, backbone weights and
    the sha256 of its trained weights (None for ``frozen``)."""
    from sbir.utils.hashing import file_digest

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    info = read_description(folder)
    weights = folder / WEIGHTS
    digest = file_digest(weights) if weights.is_file() else None
    return {"method": info["method"], "backbone": info["backbone"], "weights": info.get("weights"),
            "model_sha256": digest}


def load_model(path: Path, device: str | None = None):
    """The trained model of ``path`` (a model folder, or its ``model.safetensors``) in eval mode, moved to
    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; None leaves it on the CPU).

    Raises :class:`SbirError` with the file and the problem when the folder is not a trained model. The
    model is built from the training seed before its weights are loaded, so that what the folder does not
    store (a random-init frozen backbone, in tests) is the same at every load.
    """
    from sbir.models import create_model
    from sbir.models.folder import load_weights
    from sbir.utils.device import resolve_device

    path = Path(path)
    if not path.exists():
        raise SbirError(f"{path}: no such model folder")
    folder = path if path.is_dir() else path.parent
    info = read_description(folder)
    seed = int(((info.get("summary") or {}).get("config") or {}).get("seed") or 0)
    model = create_model(info["method"], info["backbone"], weights=info.get("weights"),
                         random_init=bool(info.get("random_init")), seed=seed, **(info.get("options") or {}))
    weights = folder / WEIGHTS
    if info["method"] != "frozen":
        if not weights.is_file():
            raise SbirError(f"{folder}: no {WEIGHTS} for the trained '{info['method']}' model")
        try:
            load_weights(weights, model)
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            raise SbirError(f"{weights}: does not fit the '{info['method']}' model of {DESCRIPTION}: "
                            f"{str(error).splitlines()[0]}") from None
    model.eval()
    return model.to(resolve_device(device)) if device else model


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and every buffer outside a frozen backbone.

    Frozen backbone weights are rebuilt from their own source when the model is made, so checkpoints
    stay small (a CLIP prompt checkpoint is ~50k values, not the 150M of CLIP).
    """
    parameters = dict(model.named_parameters())
    trainable = {name for name, p in parameters.items() if p.requires_grad}
    frozen_backbone = not any(name.startswith("backbone.") for name in trainable)
    return {name: value for name, value in model.state_dict().items()
            if name in trainable or (name not in parameters
                                     and not (frozen_backbone and name.startswith("backbone.")))}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load :func:`trained_state` into a freshly made model; every saved tensor must find its place."""
    expected = trained_state(model).keys()
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint holds tensors the model does not have: {result.unexpected_keys[:5]}")
    missing_trainable = [k for k in result.missing_keys if k in expected]
    if missing_trainable:
        raise ValueError(f"checkpoint lacks trained tensors of the model: {missing_trainable[:5]}")
    return model


def save_weights(path: Path, model: nn.Module) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in trained_state(model).items()}
    with atomic_file(Path(path)) as tmp:
        save_file(state, str(tmp))


def load_weights(path: Path, model: nn.Module) -> nn.Module:
    from safetensors.torch import load_file

    return load_trained_state(model, load_file(str(path)))


def build_model(spec: dict, index: dict, seed: int = 0):
    """The model ``spec`` describes, for the dataset of the shard ``index``, its random parts
    initialised from ``seed``."""
    from sbir.models import create_model

    return create_model(spec["method"], spec["backbone"], weights=spec.get("weights") or None,
                        seed=seed, **model_options(spec, index))


def is_model_folder(folder: Path) -> bool:
    """model.json, model.safetensors or last.pt of 'sbir train'"""
    return any((folder / name).is_file() for name in ("model.json", "model.safetensors", "last.pt"))
