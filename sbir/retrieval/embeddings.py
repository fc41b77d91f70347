"""The embeddings folder written by ``sbir embed`` and read by ``sbir evaluate``.

Layout, one pair of files per modality, rows in the same order::

    OUT/sketch.npy   float32 [n_sketches, D]
    OUT/sketch.json  [{"key": ..., "class": ..., "instance": ...}, ...]   # one entry per row
    OUT/photo.npy, OUT/photo.json
    OUT/info.json    what produced them (method, backbone, weights, dataset, split, part, counts)

The folder is written beside ``OUT`` and swapped in whole, so a killed run never leaves a half-written
set that looks finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sbir.errors import SbirError
from sbir.utils.atomic import atomic_dir

MODALITIES = ("sketch", "photo")
INFO_NAME = "info.json"


def is_embeddings_folder(folder: Path) -> bool:
    """info.json and the .npy vectors of 'sbir embed' / 'sbir index'"""
    return (folder / INFO_NAME).is_file() and any(folder.glob("*.npy"))


@dataclass
class Embeddings:
    """The embeddings of one modality: row i is the sample ``keys[i]``."""

    vectors: np.ndarray  # float32 [N, D]
    keys: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def metadata(self) -> list[dict]:
        return [{"key": k, "class": c, "instance": i} for k, c, i in zip(self.keys, self.classes, self.instances)]


def write_embeddings(out: Path, embeddings: dict[str, Embeddings], info: dict, inputs: Sequence[Path] = (),
                     extra: Callable[[Path], None] | None = None) -> None:
    """Write ``{modality: Embeddings}`` and ``info`` to ``out`` (replacing it whole, atomically; only an
    earlier embeddings folder, never ``inputs`` or another folder: :func:`sbir.utils.atomic.check_output`).
    ``extra(folder)`` writes further files into the folder before it appears (e.g. the gallery's FAISS index)."""
    with atomic_dir(Path(out), is_embeddings_folder, inputs) as tmp:
        if extra is not None:
            extra(tmp)
        for modality, emb in embeddings.items():
            np.save(tmp / f"{modality}.npy", np.ascontiguousarray(emb.vectors, dtype=np.float32))
            (tmp / f"{modality}.json").write_text(json.dumps(emb.metadata(), indent=0) + "\n")
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def read_embeddings(folder: Path, modality: str) -> Embeddings:
    folder = Path(folder)
    vectors_path, meta_path = folder / f"{modality}.npy", folder / f"{modality}.json"
    if not vectors_path.is_file() or not meta_path.is_file():
        raise SbirError(f"{folder}: no {modality} embeddings (is it the output of 'sbir embed'?)")
    vectors = np.load(vectors_path)
    meta = json.loads(meta_path.read_text())
    if vectors.ndim != 2 or len(vectors) != len(meta):
        raise SbirError(f"{vectors_path}: {vectors.shape[0]} rows for {len(meta)} entries of {meta_path.name}")
    return Embeddings(vectors, [m["key"] for m in meta], [m["class"] for m in meta], [m["instance"] for m in meta])


def read_info(folder: Path) -> dict:
    path = Path(folder) / INFO_NAME
    return json.loads(path.read_text()) if path.is_file() else {}
