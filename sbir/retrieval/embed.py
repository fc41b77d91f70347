"""Run a model over sharded images: one embedding per sketch and photo, in shard order.

Data path: an iterable dataset hands each DataLoader worker its own shards (shard ``i`` goes to worker
``i mod workers``), so every shard is read exactly once, start to end, with no resampling. A worker
decodes each image, makes it RGB (a grey sketch is replicated to 3 channels) and resizes it to the
model's input size (bicubic; the shards are already square, so nothing is cropped); it yields batches of
consecutive samples of ONE shard as uint8 ``[b, H, W, 3]`` (a quarter of the bytes of float32 across the
process boundary). The main process normalises them on the model's device, where the HWC layout is
already channels-last, and runs the model under ``torch.inference_mode()`` (bf16 autocast on CUDA).
Resizing is most of a worker's work (PIL bicubic, about 3 ms for a 256 -> 224 RGB image against under
1 ms to decode it): shards stored at the model's input size skip it.

Batches never straddle shards, so the batches — and therefore the embeddings, bit for bit — are the
same whatever the number of workers; results are put back in shard order at the end.

Several processes (``torchrun --nproc_per_node=N``): rank ``r`` embeds shards ``r, r + N, ...`` only, the
pieces are gathered to every rank and put in the same shard order, so the output equals one process's; rank
0 writes it. Shards are read from wherever they are (a folder, a URL, a ``pipe:`` command).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sbir.data.loader import Normalise, ShardBatches
from sbir.data.shards.location import shard_location
from sbir.data.shards.reader import read_index
from sbir.errors import SbirError
from sbir.models.base import RetrievalModel
from sbir.retrieval.embeddings import MODALITIES, Embeddings, is_embeddings_folder, write_embeddings
from sbir.utils.atomic import check_output
from sbir.utils.device import distributed, local_device, resolve_device, torch_threads


def encode_shards(model: RetrievalModel, shards: list[tuple[str, Path | str]], encode: Callable | None = None,
                  batch_size: int = 64, workers: int = 2, device: torch.device | str | None = None,
                  threads: int | None = None, total: int | None = None, progress: bool = True,
                  desc: str = "embed") -> dict[str, tuple[np.ndarray | None, list, list, list]]:
    """``encode(model, images, modality)`` (default: ``model.embed``) of every sample of ``shards``
    (``(modality, path)`` pairs), per modality, in shard order: ``(array or None if no sample, keys,
    classes, instances)``. Each batch's output goes to the CPU in the dtype ``encode`` returns (a numpy one:
    the default returns float32; float16 halves the memory of token maps).

    ``workers`` DataLoader worker processes decode (0: decode in this process; each worker uses one
    thread); ``threads`` sets the model's torch threads; ``total`` (samples, for the progress bar) is
    optional. Under ``torchrun`` each rank encodes its own shards (module docstring) and every rank gets
    the whole result.
    """
    encode = encode or (lambda m, images, modality: m.embed(images, modality).float())
    rank, world = distributed()
    device = local_device(resolve_device(device))
    model = model.to(device, memory_format=torch.channels_last).eval()
    normalise = Normalise(model.image_config, device)
    numbers = list(range(rank, len(shards), world))
    loader = DataLoader(ShardBatches([shards[n] for n in numbers], model.image_config, batch_size, numbers),
                        batch_size=None, num_workers=workers, pin_memory=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    parts: dict[str, list[tuple]] = {m: [] for m in MODALITIES}  # (shard, start, vectors, keys, classes, instances)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr)
    with torch_threads(threads), torch.inference_mode(), autocast, bar:
        for batch in loader:
            images = normalise(batch["images"].to(device, non_blocking=True))
            vectors = encode(model, images, batch["modality"]).cpu().numpy()
            parts[batch["modality"]].append((batch["shard"], batch["start"], vectors, batch["keys"], batch["classes"],
                                             batch["instances"]))
            bar.update(len(vectors) * world)
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, parts)
        parts = {m: [piece for rank_parts in gathered for piece in rank_parts[m]] for m in MODALITIES}
    result = {}
    for modality, pieces in parts.items():
        pieces.sort(key=lambda piece: piece[:2])
        vectors = np.concatenate([p[2] for p in pieces]) if pieces else None
        result[modality] = (vectors, *([item for piece in pieces for item in piece[column]] for column in (3, 4, 5)))
    return result


def embed_shards(model: RetrievalModel, shards: list[tuple[str, Path]], batch_size: int = 64, workers: int = 2,
                 device: torch.device | str | None = None, threads: int | None = None, total: int | None = None,
                 progress: bool = True) -> dict[str, Embeddings]:
    """Embeddings of every sample of ``shards`` (``(modality, path)`` pairs), per modality, in shard order
    (:func:`encode_shards` with ``model.embed``)."""
    encoded = encode_shards(model, shards, batch_size=batch_size, workers=workers, device=device, threads=threads,
                            total=total, progress=progress)
    return {modality: Embeddings(vectors if vectors is not None else np.zeros((0, model.embed_dim), np.float32),
                                 keys, classes, instances)
            for modality, (vectors, keys, classes, instances) in encoded.items()}


def _part_shards(shard_folder: Path | str, part: str,
                 modalities: tuple[str, ...] = MODALITIES) -> tuple[list[tuple[str, Path | str]], int]:
    """The ``(modality, shard path or URL)`` pairs of one part and their number of samples."""
    location = shard_location(shard_folder)
    index = read_index(location, require=("shards",))
    names = [(modality, rel) for modality in modalities for rel in index["shards"]
             if rel.startswith(f"{part}/{modality}-")]
    if not names:
        what = part if tuple(modalities) == MODALITIES else f"{part} {' or '.join(modalities)}"
        raise SbirError(f"{shard_folder}: no {what} shards")
    shards = [(modality, location.folder / rel if location.is_local else location.url(rel)) for modality, rel in names]
    return shards, sum(index["shards"][rel]["samples"] for _, rel in names)


def pair_features_split(model: RetrievalModel, shard_folder: Path, part: str = "test",
                        modalities: tuple[str, ...] = MODALITIES, batch_size: int = 64, workers: int = 2,
                        device: torch.device | str | None = None, threads: int | None = None,
                        progress: bool = True) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``model.pair_features`` (what a relation network scores, e.g. ``zse``'s ``[1 + h·w, C]`` tokens) of
    every image of one part, per modality, in the order of :func:`embed_split`: ``(float16 array, keys)``.

    Kept in float16 (the feature cache's precision): a ViT-B/16 image is 197 x 768 values, 0.3 MB.
    """
    shards, total = _part_shards(shard_folder, part, modalities)
    encoded = encode_shards(model, shards, lambda m, images, modality: m.pair_features(images, modality).half(),
                            batch_size=batch_size, workers=workers, device=device, threads=threads, total=total,
                            progress=progress, desc="pair features")
    encoded = {modality: encoded[modality] for modality in modalities}
    for modality, (features, *_) in encoded.items():
        if features is None:
            raise SbirError(f"{shard_folder}: no {modality} samples in the {part} part (a relation mode scores "
                            f"sketch x photo pairs)")
    return {modality: (features, keys) for modality, (features, keys, _, _) in encoded.items()}


def embed_split(model: RetrievalModel, shard_folder: Path, out: Path, part: str = "test", batch_size: int = 64,
                workers: int = 2, device: torch.device | str | None = None, threads: int | None = None,
                progress: bool = True, info: dict | None = None, inputs: Sequence[Path] = ()) -> dict:
    """Embed the sketches and photos of one part (``test`` by default) of a sharded dataset into ``out``
    (see ``sbir.retrieval.embeddings`` for the layout); return the ``info.json`` written (``info`` merged in).
    ``inputs``: what else the caller read (the model folder); ``out`` may be none of them, nor hold one."""
    index = read_index(shard_folder)
    inputs = [shard_folder, *inputs]
    check_output(out, is_embeddings_folder, inputs)  # before the work, not after it
    shards, total = _part_shards(shard_folder, part)
    embeddings = embed_shards(model, shards, batch_size=batch_size, workers=workers, device=device,
                              threads=threads, total=total, progress=progress)
    if not any(len(embeddings[modality]) for modality in MODALITIES):
        raise SbirError(f"{shard_folder}: no samples in the {part} part")
    # one modality may be absent (TU-Berlin without its Extended photos: sketches only, for a cross-dataset
    # gallery of another dataset's photos); it is written as an empty [0, D] array
    info = {**(info or {}), "method": model.method, "backbone": model.backbone.name, "embed_dim": model.embed_dim,
            "dataset": index.get("dataset"), "split": index.get("split"), "part": part,
            "counts": {m: len(e) for m, e in embeddings.items()}}
    if distributed()[0] == 0:
        write_embeddings(out, embeddings, info, inputs)
    return info
