"""Model input from images: shards decoded in batches by DataLoader workers (:class:`ShardBatches`), the
normalisation every model applies (:class:`Normalise`), and one :func:`model_input` for images in memory."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from sbir.data.images import ImageConfig, load_image
from sbir.data.shards.reader import image_of, iter_tar_samples
from sbir.errors import SbirError


class ShardBatches(IterableDataset):
    """Batches of decoded images from ``(modality, shard)`` pairs, each shard read once by one worker.

    Yields dicts: ``images`` uint8 ``[b, H, W, 3]``, ``modality``, ``shard`` (``numbers[i]`` of the i-th pair:
    its position in the caller's whole list, by default i),
    ``start`` (position of the first sample in the shard), and per sample ``keys``, ``classes``,
    ``instances``.
    """

    def __init__(self, shards: list[tuple[str, Path | str]], image_config: ImageConfig, batch_size: int,
                 numbers: list[int] | None = None):
        if batch_size < 1:
            raise SbirError(f"batch size must be at least 1, got {batch_size}")
        self.shards, self.image_config, self.batch_size = shards, image_config, batch_size
        self.numbers = numbers if numbers is not None else list(range(len(shards)))  # reported as ``shard``

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for number in range(worker_id, len(self.shards), workers):
            yield from self._shard_batches(number)

    def _shard_batches(self, number: int) -> Iterator[dict]:
        modality, path = self.shards[number]
        config = self.image_config
        batch: dict = self._empty_batch(modality, self.numbers[number], 0)
        images: list[np.ndarray] = []
        position = 0
        for sample in iter_tar_samples(path):
            meta = json.loads(sample["json"])
            if meta["modality"] != modality:
                raise SbirError(f"{path}: sample {sample['__key__']} is a {meta['modality']}, not a {modality}")
            images.append(load_image(image_of(sample)[1], config.size, config.interpolation))
            batch["keys"].append(sample["__key__"])
            batch["classes"].append(meta["class"])
            batch["instances"].append(meta["instance"])
            position += 1
            if len(images) == self.batch_size:
                yield {**batch, "images": torch.from_numpy(np.stack(images))}
                batch, images = self._empty_batch(modality, self.numbers[number], position), []
        if images:
            yield {**batch, "images": torch.from_numpy(np.stack(images))}

    @staticmethod
    def _empty_batch(modality: str, shard: int, start: int) -> dict:
        return {"modality": modality, "shard": shard, "start": start, "keys": [], "classes": [], "instances": []}


class Normalise:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` (channels-last memory), ``(x / 255 - mean) / std``."""

    def __init__(self, config: ImageConfig, device: torch.device):
        std = torch.tensor(config.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean = torch.tensor(config.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # permute of NHWC gives an NCHW-shaped view with channels-last strides; elementwise ops keep them
        return images.permute(0, 3, 1, 2).float().mul_(self.scale).add_(self.shift)


# ----------------------------------------------------------------------------------------------- model input
def model_input(images: Sequence[Image.Image | np.ndarray], config: ImageConfig,
                device: torch.device | None = None) -> torch.Tensor:
    """Normalised ``[B, 3, S, S]`` model input of images already at the model's input size ``S``
    (``config.size``): PIL images (converted to RGB) or uint8 ``[S, S, 3]`` arrays. ValueError for an
    image of another size."""
    arrays = [image if isinstance(image, np.ndarray) else np.asarray(image.convert("RGB"), dtype=np.uint8)
              for image in images]
    for array in arrays:
        if array.shape[:2] != (config.size, config.size):
            raise ValueError(f"image of {array.shape[1]}x{array.shape[0]}: the model takes {config.size}x{config.size}")
    device = device or torch.device("cpu")
    return Normalise(config, device)(torch.from_numpy(np.stack(arrays)).to(device))
