"""WebDataset shards: deterministic writing, and reading back.

A shard is a plain tar of samples; each sample is ``<key>.jpg`` or ``<key>.png`` (the image),
``<key>.cls`` (class index, ASCII) and ``<key>.json`` (class name, modality, source path, instance id).
Tar headers carry a fixed mtime, owner and mode, so the same samples in the same order give the same
bytes. A shard is written to ``<name>.tmp`` and renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds

SHARD_MTIME = 0
INDEX_NAME = "index.json"
PARTS = ("train", "val", "test")


def sample_key(*parts: str) -> str:
    """A WebDataset key (no dots, no slashes) built from readable parts."""
    return "_".join(re.sub(r"[^A-Za-z0-9_-]+", "-", part).strip("-") for part in parts)


def sample_metadata(class_name: str, modality: str, source: str, instance_id: str, **extra) -> bytes:
    return json.dumps({"class": class_name, "modality": modality, "source": source,
                       "instance": instance_id, **extra}, sort_keys=True, separators=(",", ":")).encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardSink:
    """Writes samples into ``<folder>/<prefix>-NNNNNN.tar`` shards of at most ``shard_size`` samples."""

    def __init__(self, folder: Path, prefix: str, shard_size: int):
        self.folder, self.prefix, self.shard_size = folder, prefix, shard_size
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shards: list[tuple[Path, int]] = []
        self._writer: wds.TarWriter | None = None
        self._handle = None
        self._count = 0

    def write(self, key: str, image: bytes, extension: str, class_index: int, metadata: bytes) -> None:
        if self._writer is None or self._count == self.shard_size:
            self._close_shard()
            name = f"{self.prefix}-{len(self.shards):06d}.tar"
            self._path = self.folder / name
            self._handle = open(self._path.with_suffix(".tar.tmp"), "wb")
            self._writer = wds.TarWriter(self._handle, user="sbir", group="sbir", mtime=SHARD_MTIME,
                                         encoder=False, format="GNU_FORMAT")
            self._count = 0
        self._writer.write({"__key__": key, extension: image, "cls": str(class_index).encode(),
                            "json": metadata})
        self._count += 1

    def _close_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._handle.close()
        os.replace(self._path.with_suffix(".tar.tmp"), self._path)
        self.shards.append((self._path, self._count))
        self._writer = None

    def close(self) -> list[tuple[Path, int]]:
        self._close_shard()
        return self.shards


def read_index(folder: Path) -> dict:
    from sbir.errors import SbirError

    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise SbirError(f"{path}: no shard index (is {folder} the output of 'sbir-prep shard'?)")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise SbirError(f"{path}: unreadable shard index: {error}") from None


def shard_paths(folder: Path, part: str, modality: str) -> list[Path]:
    """The shards of one part and modality, in order, as listed in the index."""
    index = read_index(folder)
    return [Path(folder) / rel for rel in index["shards"] if rel.startswith(f"{part}/{modality}-")]


def iter_tar_samples(path: Path) -> Iterator[dict]:
    """Samples of one shard as dicts of raw bytes (``__key__`` plus one entry per extension)."""
    sample: dict = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[extension] = tar.extractfile(member).read()
    if sample:
        yield sample


def image_of(sample: dict) -> tuple[str, bytes]:
    for extension in ("jpg", "png"):
        if extension in sample:
            return extension, sample[extension]
    raise KeyError(f"sample {sample.get('__key__')} has no image")


def decode_image(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image
