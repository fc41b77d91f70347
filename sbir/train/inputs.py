"""Training inputs for :func:`sbir.train.train`: from the feature cache (CPU path) or from shard images.

Both give a :class:`sbir.train.TrainData`: labels are indices into the dataset's ``classes`` (the shard
index), instance ids come from the shard metadata (fine-grained pairs), and ``fetch(modality, indices)``
returns model inputs — cached pooled features or tokens, or normalised images decoded on demand from the
encoded bytes of the part's shards, kept in memory (a part is read once, start to end).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sbir.data.images import ImageConfig, load_image
from sbir.data.loader import Normalise
from sbir.data.shards.reader import image_of, iter_tar_samples, shard_paths
from sbir.train.features import class_indices, load_features
from sbir.train.loop import TrainData

MODALITIES = ("sketch", "photo")


def cached_train_data(feature_folder: Path, part: str, classes: list[str], kind: str) -> TrainData:
    """``kind``: ``"pooled"`` (``linear``) or ``"tokens"`` (``zse`` head-only) from the feature cache."""
    inputs, labels, instances = {}, {}, {}
    for modality in MODALITIES:
        features = load_features(feature_folder, part, modality)
        inputs[modality] = features.pooled if kind == "pooled" else features.tokens
        labels[modality] = class_indices(features.classes, classes)
        instances[modality] = features.instances

    def fetch(modality: str, indices: np.ndarray) -> torch.Tensor:
        return inputs[modality][torch.as_tensor(indices, dtype=torch.long)].float()

    return TrainData(fetch, labels, instances)


def image_train_data(shard_folder: Path, part: str, classes: list[str], image_config: ImageConfig) -> TrainData:
    """Images of one part, held encoded in memory and decoded (resized, normalised) when fetched."""
    encoded, labels, instances = {}, {}, {}
    for modality in MODALITIES:
        images, names, ids = [], [], []
        for path in shard_paths(shard_folder, part, modality):
            for sample in iter_tar_samples(path):
                meta = json.loads(sample["json"])
                images.append(image_of(sample)[1])
                names.append(meta["class"])
                ids.append(meta["instance"])
        encoded[modality], labels[modality], instances[modality] = images, class_indices(names, classes), ids
    normalise = Normalise(image_config, torch.device("cpu"))

    def fetch(modality: str, indices: np.ndarray) -> torch.Tensor:
        arrays = [load_image(encoded[modality][i], image_config.size, image_config.interpolation) for i in indices]
        return normalise(torch.from_numpy(np.stack(arrays))).contiguous()

    return TrainData(fetch, labels, instances)
