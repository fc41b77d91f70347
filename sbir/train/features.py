"""A cache of a frozen backbone's outputs, so heads train on the CPU in minutes (the CPU path).

For a frozen backbone the expensive part of every training step — the backbone's forward pass — gives the
same result every time, so it is run once per image and stored:

    OUT/<part>-<modality>.safetensors   pooled float32 [N, D], tokens float16 [N, P + h*w, C]
    OUT/<part>-<modality>.json          [{"key", "class", "instance"}, ...] one entry per row
    OUT/info.json                        backbone, weights, grid, counts

``linear`` trains on ``pooled``, ``zse`` with ``head_only=True`` on ``tokens``. Tokens are stored in
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

    def __len__(self) -> int:
        return len(self.keys)


@torch.inference_mode()
def compute_features(backbone: Backbone, shards: list[Path], modality: str, batch_size: int = 64, workers: int = 1,
                     device: torch.device | None = None, progress: bool = True) -> FeatureSet:
    """Backbone outputs of every sample of ``shards`` (one modality), in shard order."""
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
                out = backbone.forward_tokens(images)
            pieces.append((batch["shard"], batch["start"], out.pooled.float().cpu(), out.tokens.half().cpu(),
                           batch["keys"], batch["classes"], batch["instances"]))
            bar.update(len(batch["keys"]))
    if not pieces:
        raise SbirError(f"no {modality} samples in {', '.join(map(str, shards)) or 'no shards'}")
    pieces.sort(key=lambda piece: piece[:2])
    return FeatureSet(torch.cat([p[2] for p in pieces]), torch.cat([p[3] for p in pieces]),
                      *([v for p in pieces for v in p[column]] for column in (4, 5, 6)))


def cache_features(backbone: Backbone, shard_folder: Path, out: Path, parts: tuple[str, ...] = PARTS,
                   batch_size: int = 64, workers: int = 1, threads: int | None = None,
                   device: torch.device | None = None, info: dict | None = None, progress: bool = True) -> dict:
    """Write the cache (module docstring) of every part and modality with samples; return ``info.json``."""
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
                    features = compute_features(backbone, shards, modality, batch_size, workers, device, progress)
                    save_file({"pooled": features.pooled.contiguous(), "tokens": features.tokens.contiguous()},
                              str(tmp / f"{part}-{modality}.safetensors"))
                    meta = [{"key": k, "class": c, "instance": i}
                            for k, c, i in zip(features.keys, features.classes, features.instances)]
                    (tmp / f"{part}-{modality}.json").write_text(json.dumps(meta, indent=0) + "\n")
                    counts[f"{part}-{modality}"] = len(features)
                    grid = grid or list(backbone.forward_tokens(
                        torch.zeros(1, 3, backbone.image_config.size, backbone.image_config.size,
                                    device=next(backbone.parameters()).device)).grid)
        info = {**(info or {}), "backbone": backbone.name, "grid": grid, "counts": counts}
        (tmp / "info.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return info


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
                      [m["instance"] for m in meta])


def class_indices(classes: list[str], all_classes: list[str]) -> np.ndarray:
    position = {name: i for i, name in enumerate(all_classes)}
    return np.asarray([position[c] for c in classes], dtype=np.int64)
