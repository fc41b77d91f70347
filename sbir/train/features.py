"""A cache of a frozen backbone's outputs, so heads train on the CPU in minutes (the CPU path).

For a frozen backbone the expensive part of every training step — the backbone's forward pass — gives the
same result every time, so it is run once per image and stored:

    OUT/<part>-<modality>.safetensors   pooled float32 [N, D], tokens float16 [N, P + h*w, C]
    OUT/<part>-<modality>.json          [{"key", "class", "instance"}, ...] one entry per row
    OUT/info.json                        backbone, weights, grid, counts (and stage_inputs)

``linear`` trains on ``pooled``, ``zse`` with ``head_only=True`` on ``tokens``. With ``stage_inputs=n`` (``sake``,
which fine-tunes a CNN's last ``n`` stages) the safetensors also hold ``stage``, float16 ``[N, C, h, w]``, the
input of those stages (what the frozen part below them makes of each image), and ``logits``, float32
``[N, 1000]``, the pretrained network's ImageNet logits (SAKE's teacher), so that only the trained stages run
per training step. Tokens are stored in
float16 (half the memory; the heads compute in float32): 49 x 1280 values per image for EfficientNet-Lite0,
about 125 KB, so this path is meant for small configurations (Sketchy-mini: 3,017 images, 380 MB).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from sbir.data.loader import Normalise, ShardBatches
from sbir.data.shards.reader import PARTS, read_index, shard_paths
from sbir.errors import SbirError
from sbir.models.backbones import Backbone
from sbir.utils.atomic import atomic_dir, check_output
from sbir.utils.device import default_device, torch_threads

MODALITIES = ("sketch", "photo")


def is_feature_cache(folder: Path) -> bool:
    """info.json and the .safetensors of the feature cache (or info.json alone: no cache needed)"""
    return (folder / "info.json").is_file() and not any(folder.glob("*.npy"))


@dataclass
class FeatureSet:
    """The cached backbone outputs of one part and modality; row i is the sample ``keys[i]``."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    keys: list[str]
    classes: list[str]
    instances: list[str]
    stage: torch.Tensor | None = None  # with stage_inputs: the input of the last stages
    logits: torch.Tensor | None = None  # with stage_inputs: the ImageNet logits

    def __len__(self) -> int:
        return len(self.keys)


@torch.inference_mode()
def _forward(backbone: Backbone, images: torch.Tensor, stage_inputs: int | None) -> tuple:
    """(pooled, tokens, stage, logits) of a batch; stage and logits None without ``stage_inputs``."""
    if stage_inputs is None:
        out = backbone.forward_tokens(images)
        return out.pooled, out.tokens, None, None
    stage = backbone.lower(images, stage_inputs)
    out = backbone.tokens_of_map(backbone.top_map(stage, stage_inputs))
    return out.pooled, out.tokens, stage, backbone.classifier(out.pooled)


def compute_features(backbone: Backbone, shards: list[Path], modality: str, batch_size: int = 64, workers: int = 1,
                     device: torch.device | None = None, progress: bool = True,
                     stage_inputs: int | None = None) -> FeatureSet:
    """Backbone outputs of every sample of ``shards`` (one modality), in shard order (``stage_inputs``: see
    the module docstring)."""
    device = device or default_device()
    backbone = backbone.to(device).eval()
    normalise = Normalise(backbone.image_config, device)
    loader = DataLoader(ShardBatches([(modality, p) for p in shards], backbone.image_config, batch_size),
                        batch_size=None, num_workers=workers)
    pieces = []
    with tqdm(desc=f"features {modality}", unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch in loader:
            images = normalise(batch["images"].to(device))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                pooled, tokens, stage, logits = _forward(backbone, images, stage_inputs)
            pieces.append((batch["shard"], batch["start"], pooled.float().cpu(), tokens.half().cpu(),
                           batch["keys"], batch["classes"], batch["instances"],
                           None if stage is None else stage.half().cpu(),
                           None if logits is None else logits.float().cpu()))
            bar.update(len(batch["keys"]))
    if not pieces:
        raise SbirError(f"no {modality} samples in {', '.join(map(str, shards)) or 'no shards'}")
    pieces.sort(key=lambda piece: piece[:2])
    extra = [None if stage_inputs is None else torch.cat([p[column] for p in pieces]) for column in (7, 8)]
    return FeatureSet(torch.cat([p[2] for p in pieces]), torch.cat([p[3] for p in pieces]),
                      *([v for p in pieces for v in p[column]] for column in (4, 5, 6)), *extra)


def cache_features(backbone: Backbone, shard_folder: Path, out: Path, parts: tuple[str, ...] = PARTS,
                   batch_size: int = 64, workers: int = 1, threads: int | None = None,
                   device: torch.device | None = None, info: dict | None = None, progress: bool = True,
                   stage_inputs: int | None = None) -> dict:
    """Write the cache (module docstring) of every part and modality with samples; return ``info.json``.
    ``stage_inputs``: also the input of the backbone's last ``stage_inputs`` stages and its ImageNet logits."""
    out = check_output(out, is_feature_cache, [shard_folder])
    read_index(shard_folder)
    counts, grid = {}, None
    with atomic_dir(out, is_feature_cache, [shard_folder]) as tmp:
        with torch_threads(threads):
            for part in parts:
                for modality in MODALITIES:
                    shards = shard_paths(shard_folder, part, modality)
                    if not shards:
                        continue
                    features = compute_features(backbone, shards, modality, batch_size, workers, device, progress,
                                                stage_inputs)
                    tensors = {"pooled": features.pooled, "tokens": features.tokens}
                    if stage_inputs is not None:
                        tensors.update(stage=features.stage, logits=features.logits)
                    save_file({name: value.contiguous() for name, value in tensors.items()},
                              str(tmp / f"{part}-{modality}.safetensors"))
                    meta = [{"key": k, "class": c, "instance": i}
                            for k, c, i in zip(features.keys, features.classes, features.instances)]
                    (tmp / f"{part}-{modality}.json").write_text(json.dumps(meta, indent=0) + "\n")
                    counts[f"{part}-{modality}"] = len(features)
                    grid = grid or list(backbone.forward_tokens(
                        torch.zeros(1, 3, backbone.image_config.size, backbone.image_config.size,
                                    device=next(backbone.parameters()).device)).grid)
        info = {**(info or {}), "backbone": backbone.name, "grid": grid, "counts": counts}
        if stage_inputs is not None:
            info["stage_inputs"] = stage_inputs
        (tmp / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


def feature_cache_options(spec: dict) -> dict:
    """What :func:`cache_features` must store for ``spec`` beyond the pooled features and
    tokens: ``stage_inputs`` for ``sake`` (the input of its trained stages), else nothing."""
    if spec["method"] != "sake":
        return {}
    from sbir.models.sake import DEFAULT_STAGES

    return {"stage_inputs": int((spec.get("options") or {}).get("stages", DEFAULT_STAGES))}


def write_no_cache(out: Path, info: dict, reason: str) -> dict:
    """A cache folder that holds only ``info.json`` saying why there is no cache (``skipped``): what the
    pipeline's ``features`` stage writes when nothing reads the cache, instead of the backbone's tokens of
    every image (a ViT-B/16 on Sketchy: 197 x 768 values x ~130,000 images, about 39 GB)."""
    info = {**info, "skipped": reason, "counts": {}}
    with atomic_dir(Path(out), is_feature_cache) as tmp:
        (tmp / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


def load_features(folder: Path, part: str, modality: str) -> FeatureSet:
    folder = Path(folder)
    tensors_path, meta_path = folder / f"{part}-{modality}.safetensors", folder / f"{part}-{modality}.json"
    if not tensors_path.is_file() or not meta_path.is_file():
        raise SbirError(f"{folder}: no cached {part} {modality} features (run the 'features' stage)")
    tensors = load_file(str(tensors_path))
    meta = json.loads(meta_path.read_text())
    if len(tensors["pooled"]) != len(meta):
        raise SbirError(f"{tensors_path}: {len(tensors['pooled'])} rows for {len(meta)} entries of {meta_path.name}")
    return FeatureSet(tensors["pooled"], tensors["tokens"], [m["key"] for m in meta], [m["class"] for m in meta],
                      [m["instance"] for m in meta], tensors.get("stage"), tensors.get("logits"))


#: what each kind of cached input is made of (the tensors of a :class:`FeatureSet`)
CACHED_KINDS = {"pooled": ("pooled",), "tokens": ("tokens",), "stage": ("stage", "logits")}


def cached_inputs(features: FeatureSet, kind: str) -> torch.Tensor | dict[str, torch.Tensor]:
    """The model inputs of ``kind`` in a feature set: a tensor (``pooled``, ``tokens``) or, for ``stage`` (``sake``),
    ``{"stage", "logits"}``; rows are samples."""
    names = CACHED_KINDS[kind]
    missing = [name for name in names if getattr(features, name) is None]
    if missing:
        raise SbirError(f"the feature cache has no {', '.join(missing)} (made without stage_inputs)")
    return getattr(features, names[0]) if len(names) == 1 else {name: getattr(features, name) for name in names}


def input_rows(inputs: torch.Tensor | dict, rows) -> torch.Tensor | dict:
    """Rows ``rows`` (a slice or an index tensor) of cached inputs, as float32."""
    if isinstance(inputs, dict):
        return {name: value[rows].float() for name, value in inputs.items()}
    return inputs[rows].float()


def input_count(inputs: torch.Tensor | dict) -> int:
    return len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)


def class_indices(classes: list[str], all_classes: list[str]) -> np.ndarray:
    position = {name: i for i, name in enumerate(all_classes)}
    return np.asarray([position[c] for c in classes], dtype=np.int64)
