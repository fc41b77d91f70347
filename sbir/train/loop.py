"""The training loop shared by every trainable method.

A trainable model is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, parts)`` — the total loss
and a dict of its named terms (floats) — and which has ``embed(inputs, modality)`` for validation.
``batch`` is a dict of tensors made by a :class:`TrainData` (images decoded from shards, or cached
backbone tokens on the CPU path) from the index triplets of :class:`sbir.train.sampling.PairSampler`.

What the loop guarantees:

- deterministic on the CPU: batch ``t`` and the torch RNG at step ``t`` are functions of (seed, rank, t),
  and the loop runs with ``torch.use_deterministic_algorithms(True)`` (restored afterwards): without it,
  ``zse`` with ``relation_pairs=batch`` on 2 threads gave different weights from run to run after 6 steps;
- checkpoints written atomically (``last.pt``: weights, optimiser, step, best score) every
  ``checkpoint_every`` steps, and resuming after a kill gives the same final weights as an uninterrupted
  run; checkpoints load with ``torch.load(weights_only=True)`` — never executing pickled code — and the
  selected model is saved as ``model.safetensors``;
- model selection on the SEEN-class validation split (mAP@all of val sketches against val photos);
  the released ZSE-SBIR code selects on the unseen test classes — deliberately not copied;
- losses and validation metrics reported to callbacks (:class:`sbir.train.callbacks.TrainCallback`, rank 0
  only) against the number of steps trained (the step of ``best_step`` and the checkpoints); a resumed run
  reports from the checkpoint's step on, so a logger can make its curves equal an uninterrupted run's;
- bf16 autocast on CUDA; several processes through ``torchrun`` (DistributedDataParallel; each rank
  samples from its own share of the training data, gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sbir.models.folder import load_trained_state, save_weights
from sbir.retrieval.metrics import evaluate_embeddings
from sbir.train.callbacks import TrainCallback
from sbir.train.checkpoint import resumable_state, save_checkpoint
from sbir.train.inputs import StepBatches, TrainData, chunk_loader, step_loader
from sbir.train.sampling import PairSampler
from sbir.utils.device import default_device, distributed, local_device


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    eval_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0
    fine_grained: bool = False




def shard_for_rank(count: int, rank: int, world: int) -> np.ndarray:
    """The indices of the training samples a rank trains on (every rank a disjoint share)."""
    return np.arange(rank, count, world)


@torch.no_grad()
def embed_all(model: nn.Module, data: TrainData, modality: str, device: torch.device, batch_size: int = 256,
              workers: int = 0) -> torch.Tensor:
    """The embeddings of every sample of one modality, inputs made by ``workers`` processes."""
    model.eval()
    outputs = []
    for inputs in chunk_loader(data, modality, batch_size, workers):
        with _autocast(device):
            outputs.append(model.embed(data.prepare(inputs, device), modality).float().cpu())
    model.train()
    return torch.cat(outputs)


def validate(model: nn.Module, val: TrainData, device: torch.device, workers: int = 0) -> dict:
    """Category-level metrics of val sketches against val photos (seen classes)."""
    sketches = embed_all(model, val, "sketch", device, workers=workers)
    photos = embed_all(model, val, "photo", device, workers=workers)
    return evaluate_embeddings(sketches.numpy(), photos.numpy(), val.labels["sketch"], val.labels["photo"])


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@contextmanager
def deterministic_on_cpu(device: torch.device) -> Iterator[None]:
    """torch's deterministic algorithms while the block runs on the CPU (see the module docstring); the previous
    setting is restored on exit. Not on CUDA, where some kernels have no deterministic version."""
    if device.type != "cpu":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def train(model: nn.Module, data: TrainData, val: TrainData | None, config: TrainConfig, out: Path,
          optimizer_factory: Callable | None = None, device: torch.device | None = None,
          callbacks: Sequence[TrainCallback] = (), workers: int = 0, progress: bool = True) -> dict:
    """Train ``model`` (see the module docstring); return a summary (best step, best val mAP, last loss).

    ``out`` receives ``last.pt`` (resumable) and ``model.safetensors`` (the selected weights). An
    existing ``last.pt`` is resumed from. ``callbacks`` see the start, every step's losses and val mAP, and
    the end (rank 0 only). ``workers``: DataLoader processes making the batches (0: this process); the
    batches, and so the weights, do not depend on it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = distributed()
    device = local_device(device or default_device())
    model.to(device)
    share = shard_for_rank(data.count("sketch"), rank, world)
    photo_share = shard_for_rank(data.count("photo"), rank, world)
    sampler = PairSampler(np.asarray(data.labels["sketch"])[share], np.asarray(data.labels["photo"])[photo_share],
                          _subset(data.instances.get("sketch"), share),
                          _subset(data.instances.get("photo"), photo_share),
                          fine_grained=config.fine_grained, seed=config.seed, rank=rank)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if optimizer_factory is not None:
        optimizer = optimizer_factory(model)
    elif hasattr(model, "parameter_groups"):  # per-group learning rates, relative to config.lr (sake)
        optimizer = torch.optim.AdamW(model.parameter_groups(config.lr), lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    step, best, best_step = 0, -math.inf, -1
    checkpoint = out / "last.pt"
    state, why_not = resumable_state(checkpoint, model, config)
    if why_not:
        print(f"{checkpoint}: {why_not}", file=sys.stderr)
    if state is not None:
        load_trained_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best, best_step = state["step"], state["best"], state["best_step"]
    report = list(callbacks) if rank == 0 else []
    for callback in report:
        callback.on_start(step, resumed=state is not None)
    wrapped = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress or rank != 0,
               file=sys.stderr)
    loss_value = float("nan")
    batches = step_loader(StepBatches(data, sampler, share, photo_share, config.batch_size), step, config.steps,
                          workers)
    with deterministic_on_cpu(device):
        for made in batches:
            torch.manual_seed(config.seed * 1_000_003 + rank * 7919 + step)
            batch = {name: data.prepare(made[name], device) for name in ("sketch", "positive", "negative")}
            batch.update(sketch_label=made["sketch_label"].to(device), negative_label=made["negative_label"].to(device))
            with _autocast(device):
                loss, parts = wrapped(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            metrics = {"train/loss": loss_value, **{f"train/{name}": float(value) for name, value in parts.items()}}
            if val is not None and (step % config.eval_every == 0 or step == config.steps):
                score = validate(model, val, device, workers)["map_all"]
                metrics["val/map_all"] = score
                if score > best:
                    best, best_step = score, step
                    if rank == 0:
                        save_weights(out / "model.safetensors", model)
            for callback in report:  # x: steps trained, as in best_step and the checkpoints
                callback.on_step(step, metrics)
            if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps):
                save_checkpoint(checkpoint, model, optimizer, step, best, best_step, config)
    bar.close()
    if val is None and rank == 0:
        save_weights(out / "model.safetensors", model)
    summary = {"steps": step, "best_val_map_all": best if best > -math.inf else None, "best_step": best_step,
               "last_loss": loss_value, "config": asdict(config)}
    for callback in report:
        callback.on_end(summary)
    if world > 1:
        torch.distributed.barrier()
    return summary


def _subset(values, indices: np.ndarray):
    if values is None:
        return None
    return [values[i] for i in indices]
