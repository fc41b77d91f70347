"""Training inputs: what :func:`sbir.train.loop.train` feeds the model, from the feature cache (the CPU path) or
from shard images, made in DataLoader worker processes.

A :class:`TrainData` holds, per modality, the labels (indices into the dataset's ``classes``) and instance ids
of a part, and a picklable ``fetch(modality, indices)`` that returns those samples' inputs: rows of the
cached features, or the images decoded and resized (uint8 ``[b, S, S, 3]``; ``prepare`` normalises them on
the training device). Nothing is held per image but where it lies: :class:`ShardImages` indexes each
sample's image member (shard file, byte offset, size) and reads it when asked, so memory is bounded by the
batches, not by the dataset, and each DDP rank reads only the samples of its share.

:class:`StepBatches` is batch ``t`` of training for any ``t`` — the class-balanced triplet indices of
:class:`sbir.train.sampling.PairSampler` at ``(seed, rank, t)`` and their inputs — so a DataLoader over
steps ``start..steps`` gives the same batches whatever its number of workers, and a resumed run continues
with exactly the batches an uninterrupted one would have seen.

Remote shards (:mod:`sbir.data.shards.location`) are fetched once, whole, into a local cache folder (a tar
read over a stream has no random access), each checked against the sha256 the index records.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from sbir.data.images import ImageConfig, load_image
from sbir.data.loader import Normalise
from sbir.data.shards.location import ShardLocation, shard_location
from sbir.data.shards.reader import read_index
from sbir.errors import SbirError
from sbir.train.features import cached_inputs, class_indices, input_rows, load_features
from sbir.train.sampling import PairSampler
from sbir.utils.atomic import atomic_file
from sbir.utils.hashing import file_digest

MODALITIES = ("sketch", "photo")


class TrainData:
    """Training or validation inputs of one part: ``fetch(modality, indices) -> Tensor`` (picklable, so that
    worker processes can call it), per-modality ``labels`` and ``instances``, and ``prepare(inputs, device)``,
    applied in the training process to what ``fetch`` returned (by default: moved to the device)."""

    def __init__(self, fetch: Callable[[str, np.ndarray], torch.Tensor], labels: dict, instances: dict,
                 prepare: Callable[[torch.Tensor, torch.device], torch.Tensor] | None = None):
        self.fetch, self.labels, self.instances = fetch, labels, instances
        self.prepare = prepare or to_device

    def count(self, modality: str) -> int:
        return len(self.labels[modality])


def to_device(inputs: torch.Tensor | dict, device: torch.device) -> torch.Tensor | dict:
    """Inputs (a tensor, or a dict of tensors: ``sake``'s cached inputs) moved to ``device``."""
    if isinstance(inputs, dict):
        return {name: value.to(device) for name, value in inputs.items()}
    return inputs.to(device)


# ------------------------------------------------------------------------------------------ cached features
class CachedInputs:
    """``fetch`` of the feature cache: rows of in-memory tensors (or dicts of them), as float32."""

    def __init__(self, inputs: dict[str, torch.Tensor | dict[str, torch.Tensor]]):
        self.inputs = inputs

    def __call__(self, modality: str, indices: np.ndarray) -> torch.Tensor | dict:
        return input_rows(self.inputs[modality], torch.as_tensor(indices, dtype=torch.long))


def cached_train_data(feature_folder: Path, part: str, classes: list[str], kind: str) -> TrainData:
    """``kind``: ``"pooled"`` (``linear``), ``"tokens"`` (``zse`` head-only) or ``"stage"`` (``sake``: the input of
    the trained stages and the teacher's logits) from the feature cache."""
    inputs, labels, instances = {}, {}, {}
    for modality in MODALITIES:
        features = load_features(feature_folder, part, modality)
        inputs[modality] = cached_inputs(features, kind)
        labels[modality] = class_indices(features.classes, classes)
        instances[modality] = features.instances
    return TrainData(CachedInputs(inputs), labels, instances)


# ------------------------------------------------------------------------------------------------ shard images
class ShardImages:
    """Random access to the images of a list of local shards: ``(shard, offset, size)`` of each sample's image
    member, found by reading the tar headers once; images are read (one ``pread`` each) and decoded on demand.
    Open files are per process and not pickled, so worker processes open their own."""

    def __init__(self, shards: list[Path], image_config: ImageConfig):
        self.shards, self.config = [str(path) for path in shards], image_config
        self.where: list[tuple[int, int, int]] = []
        self.classes: list[str] = []
        self.instances: list[str] = []
        for number, path in enumerate(shards):
            self._scan(number, path)
        self._files: dict[int, int] = {}  # open file descriptors of this process (``_pid``)
        self._pid = os.getpid()

    def _scan(self, number: int, path: Path) -> None:
        image = meta = None
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    key, _, extension = member.name.partition(".")
                    if extension in ("jpg", "png"):
                        image = (key, member.offset_data, member.size)
                    elif extension == "json":
                        meta = (key, json.loads(tar.extractfile(member).read()))
                    if image and meta and image[0] == meta[0]:
                        self.where.append((number, image[1], image[2]))
                        self.classes.append(meta[1]["class"])
                        self.instances.append(meta[1]["instance"])
                        image = meta = None
        except (tarfile.TarError, OSError, ValueError, KeyError) as error:
            raise SbirError(f"{path}: unreadable shard: {error}") from None

    def __len__(self) -> int:
        return len(self.where)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_pid": None}

    def read(self, index: int) -> bytes:
        """The image bytes of sample ``index``: one ``pread`` (no shared file position, so processes forked
        after a file was opened here read correctly too)."""
        number, offset, size = self.where[index]
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        descriptor = self._files.get(number)
        if descriptor is None:
            descriptor = self._files[number] = os.open(self.shards[number], os.O_RDONLY)
        return os.pread(descriptor, size, offset)

    def fetch(self, indices: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``[b, S, S, 3]``: the images, decoded and resized to the model's input size, written into
        ``out`` when given (else a new :func:`image_batch`)."""
        size, interpolation = self.config.size, self.config.interpolation
        batch = image_batch(len(indices), size) if out is None else out
        array = batch.numpy()
        for row, index in enumerate(indices):
            array[row] = load_image(self.read(int(index)), size, interpolation)
        return batch


def image_batch(count: int, size: int) -> torch.Tensor:
    """An empty uint8 ``[count, size, size, 3]`` batch; in a DataLoader worker it is made in shared memory, so
    that handing it to the training process copies nothing."""
    batch = torch.empty((count, size, size, 3), dtype=torch.uint8)
    return batch.share_memory_() if get_worker_info() is not None else batch


class ImageInputs:
    """``fetch`` of shard images (:class:`ShardImages` per modality)."""

    def __init__(self, images: dict[str, ShardImages]):
        self.images = images

    def __call__(self, modality: str, indices: np.ndarray) -> torch.Tensor:
        return self.images[modality].fetch(indices)

    def triplet(self, sketches: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> list[torch.Tensor]:
        """The three image batches of a step, views of one buffer (one shared-memory block per step)."""
        size = self.images["sketch"].config.size
        buffer = image_batch(len(sketches) + len(positives) + len(negatives), size)
        views = buffer.split([len(sketches), len(positives), len(negatives)])
        for modality, indices, view in zip(("sketch", "photo", "photo"), (sketches, positives, negatives), views):
            self.images[modality].fetch(indices, out=view)
        return list(views)


class Normalised:
    """``prepare`` of shard images: uint8 images normalised on the training device."""

    def __init__(self, config: ImageConfig):
        self.config = config

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        return Normalise(self.config, device)(images.to(device)).contiguous()


def image_train_data(shards: Path | str | ShardLocation, part: str, classes: list[str], image_config: ImageConfig,
                     cache_dir: Path | None = None) -> TrainData:
    """The images of one part of the shards at ``shards`` (a folder, URL or ``pipe:`` location), read on
    demand; remote shards are first fetched into ``cache_dir`` (:func:`local_shards`)."""
    images, labels, instances = {}, {}, {}
    for modality in MODALITIES:
        found = ShardImages(local_shards(shards, part, modality, cache_dir), image_config)
        images[modality], labels[modality], instances[modality] = found, class_indices(found.classes, classes), \
            found.instances
    return TrainData(ImageInputs(images), labels, instances, prepare=Normalised(image_config))


def default_cache_dir(location: ShardLocation) -> Path:
    """``$SBIR_CACHE`` (or ``~/.cache/sbir``) ``/shards/<hash of the location>``."""
    root = Path(os.environ.get("SBIR_CACHE") or Path.home() / ".cache" / "sbir")
    return root / "shards" / hashlib.sha256(str(location).encode()).hexdigest()[:16]


def local_shards(shards: Path | str | ShardLocation, part: str, modality: str,
                 cache_dir: Path | None = None) -> list[Path]:
    """Local files of the shards of one part and modality: the shards themselves for a local folder; for a
    remote location, copies fetched whole into ``cache_dir`` (default :func:`default_cache_dir`), each
    checked against the index's sha256 and written atomically, and kept for the next run."""
    location = shard_location(shards)
    index = read_index(location, require=("shards",))
    names = [rel for rel in index["shards"] if rel.startswith(f"{part}/{modality}-")]
    if location.is_local:
        return [location.folder / rel for rel in names]
    from webdataset import gopen

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(location)
    paths = []
    for rel in names:
        path, expected = cache / rel, index["shards"][rel]["sha256"]
        if not (path.is_file() and file_digest(path) == expected):
            with atomic_file(path) as tmp:
                try:
                    with gopen(location.url(rel), "rb") as stream, open(tmp, "wb") as out:
                        for block in iter(lambda: stream.read(1 << 20), b""):  # noqa: B023 (used at once)
                            out.write(block)
                except Exception as error:  # curl's or the pipe's exit status
                    raise SbirError(f"{location.url(rel)}: cannot read: {error}") from None
                if file_digest(tmp) != expected:
                    raise SbirError(f"{location.url(rel)}: sha256 differs from {location.url('index.json')}")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------- batches by step
class StepBatches(Dataset):
    """Item ``t``: the training batch of step ``t`` — ``sketch``, ``positive``, ``negative`` (what ``fetch``
    returns) and ``sketch_label``, ``negative_label`` — for the share of the data one rank trains on
    (``share``/``photo_share``: its sketch and photo indices). Made wherever it is asked for: a DataLoader's
    worker process, or this one."""

    def __init__(self, data: TrainData, sampler: PairSampler, share: np.ndarray, photo_share: np.ndarray,
                 batch_size: int):
        self.data, self.sampler, self.batch_size = data, sampler, batch_size
        self.share, self.photo_share = share, photo_share
        self.sketch_labels = np.asarray(data.labels["sketch"])
        self.photo_labels = np.asarray(data.labels["photo"])

    def __getitem__(self, step: int) -> dict:
        sketches, positives, negatives = self.sampler.batch(step, self.batch_size)
        sketches, positives, negatives = self.share[sketches], self.photo_share[positives], \
            self.photo_share[negatives]
        fetch = self.data.fetch
        if hasattr(fetch, "triplet"):
            sketch, positive, negative = fetch.triplet(sketches, positives, negatives)
        else:
            sketch, positive, negative = fetch("sketch", sketches), fetch("photo", positives), fetch("photo", negatives)
        return {"sketch": sketch, "positive": positive, "negative": negative,
                "sketch_label": torch.as_tensor(self.sketch_labels[sketches]),
                "negative_label": torch.as_tensor(self.photo_labels[negatives])}


def step_loader(batches: StepBatches, start: int, steps: int, workers: int = 0) -> DataLoader:
    """Batches of steps ``start .. steps - 1`` in order, made by ``workers`` processes (0: this one)."""
    return DataLoader(batches, batch_size=None, sampler=range(start, steps), num_workers=workers,
                      prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0))


class Chunks(Dataset):
    """Item ``i``: the inputs of samples ``i * size .. (i + 1) * size - 1`` of one modality (validation)."""

    def __init__(self, data: TrainData, modality: str, size: int):
        self.data, self.modality, self.size = data, modality, size

    def __len__(self) -> int:
        return -(-self.data.count(self.modality) // self.size)

    def __getitem__(self, number: int) -> torch.Tensor:
        end = min((number + 1) * self.size, self.data.count(self.modality))
        return self.data.fetch(self.modality, np.arange(number * self.size, end))


def chunk_loader(data: TrainData, modality: str, size: int, workers: int = 0) -> DataLoader:
    return DataLoader(Chunks(data, modality, size), batch_size=None, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))


def training_batches(shards: Path | str | ShardLocation, image_config: ImageConfig, batch_size: int, steps: int,
                     part: str = "train", seed: int = 0, fine_grained: bool = False, workers: int = 2,
                     start: int = 0, cache_dir: Path | None = None) -> DataLoader:
    """Class-balanced training triplets of a part of ``shards``, as :func:`sbir.train.loop.train` gets them:
    a DataLoader of ``steps - start`` batches, each ``{"sketch", "positive", "negative"}`` uint8
    ``[batch_size, S, S, 3]`` images (``S = image_config.size``; normalise them with
    :class:`sbir.data.loader.Normalise`) and ``sketch_label`` / ``negative_label`` class indices. A positive
    is a photo of the sketch's class (``fine_grained``: its own photo), a negative one of another class;
    batch ``t`` depends only on ``(seed, t)``, not on ``workers``."""
    classes = read_index(shards, require=("classes",))["classes"]
    data = image_train_data(shards, part, classes, image_config, cache_dir)
    sampler = PairSampler(data.labels["sketch"], data.labels["photo"], data.instances["sketch"],
                          data.instances["photo"], fine_grained=fine_grained, seed=seed)
    everything = (np.arange(data.count("sketch")), np.arange(data.count("photo")))
    return step_loader(StepBatches(data, sampler, *everything, batch_size), start, steps, workers)
