"""A trained model on disk, self-describing: ``MODEL_DIR/model.json`` + ``MODEL_DIR/model.safetensors``.

``model.json`` (written by the ``train`` stage, :func:`write_description`) says how to rebuild the model::

    {"method": "zse", "backbone": "tf_efficientnet_lite0", "weights": "package", "head_only": true,
     "options": {"width": 256, "head_only": true}, "trained": true, ...}

``options`` are the keyword arguments of :func:`sbir.models.create_model` (for ``clip_prompt`` they include
the class names its text classifier was built with). ``model.safetensors`` holds only the trained tensors
(:func:`sbir.train.save_weights`); the backbone's own weights come from ``weights`` as at training time.
``frozen`` has no weight file. ``"random_init": true`` (tests) builds the backbone without weights.
Nothing here unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from sbir.atomic import atomic_write_text
from sbir.errors import SbirError

DESCRIPTION = "model.json"
WEIGHTS = "model.safetensors"


def model_options(model_params: dict, index: dict | None = None) -> dict:
    """``create_model`` options of the ``model`` group of ``params.yaml`` (``index``: the shard index, for
    the class names that ``clip_prompt`` needs)."""
    method = model_params["method"]
    options = dict((model_params.get("options") or {}).get(method) or {})
    if method == "zse" and model_params.get("head_only"):
        options["head_only"] = True
    if method == "clip_prompt" and index is not None:
        options.update(class_names=list(index["classes"]), seen_classes=list(index["seen_classes"]))
    return options


def description(model_params: dict, index: dict | None = None, **extra) -> dict:
    """What ``model.json`` holds for the ``model`` group of ``params.yaml``."""
    return {"method": model_params["method"], "backbone": model_params["backbone"],
            "weights": model_params.get("weights") or None,
            "head_only": bool(model_params.get("head_only")),
            "options": model_options(model_params, index), **extra}


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
    import hashlib

    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    info = read_description(folder)
    weights = folder / WEIGHTS
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {"method": info["method"], "backbone": info["backbone"], "weights": info.get("weights"),
            "model_sha256": digest}


def load_model(path: Path, device: str | None = None):
    """The trained model of ``path`` (a model folder, or its ``model.safetensors``) in eval mode, moved to
    ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; None leaves it on the CPU).

    Raises :class:`SbirError` with the file and the problem when the folder is not a trained model. The
    model is built from the training seed before its weights are loaded, so that what the folder does not
    store (a random-init frozen backbone, in tests) is the same at every load.
    """
    from sbir.embed import resolve_device
    from sbir.models import create_model
    from sbir.train import load_weights

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
