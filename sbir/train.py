"""The training loop shared by every trainable method.

A trainable model is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, parts)`` — the total loss
and a dict of its named terms (floats) — and which has ``embed(inputs, modality)`` for validation.
``batch`` is a dict of tensors made by a :class:`TrainData` (images decoded from shards, or cached
backbone tokens on the CPU path) from the index triplets of :class:`sbir.sampling.PairSampler`.

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
- losses and validation metrics logged with DVCLive (``dvc plots show`` draws the curves), against the
  number of steps trained (the step of ``best_step`` and the checkpoints); a resumed run first drops the
  rows its killed predecessor logged after the checkpoint, so its curves equal an uninterrupted run's;
- bf16 autocast on CUDA; several processes through ``torchrun`` (DistributedDataParallel; each rank
  samples from its own share of the training data, gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from sbir.atomic import atomic_write_text
from sbir.embed import default_device
from sbir.metrics import evaluate_embeddings
from sbir.sampling import PairSampler


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


class TrainData:
    """Training and validation inputs as indexable tensors (or a loader turning indices into tensors).

    ``fetch(modality, indices) -> Tensor`` returns the model inputs of those samples; labels and instance
    ids are per modality. The CPU path builds it from the token cache, the GPU path from decoded shards.
    """

    def __init__(self, fetch: Callable[[str, np.ndarray], torch.Tensor], labels: dict, instances: dict):
        self.fetch, self.labels, self.instances = fetch, labels, instances

    def count(self, modality: str) -> int:
        return len(self.labels[modality])


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by ``torchrun``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def shard_for_rank(count: int, rank: int, world: int) -> np.ndarray:
    """The indices of the training samples a rank trains on (every rank a disjoint share)."""
    return np.arange(rank, count, world)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and every buffer outside a frozen backbone.

    Frozen backbone weights are rebuilt from their own source when the model is made, so checkpoints
    stay small (a CLIP prompt checkpoint is ~50k values, not the 150M of CLIP).
    """
    parameters = dict(model.named_parameters())
    trainable = {name for name, p in parameters.items() if p.requires_grad}
    frozen_backbone = not any(name.startswith("backbone.") for name in trainable)
    return {name: value for name, value in model.state_dict().items()
            if name in trainable or (name not in parameters
                                     and not (frozen_backbone and name.startswith("backbone.")))}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load :func:`trained_state` into a freshly made model; every saved tensor must find its place."""
    expected = trained_state(model).keys()
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint holds tensors the model does not have: {result.unexpected_keys[:5]}")
    missing_trainable = [k for k in result.missing_keys if k in expected]
    if missing_trainable:
        raise ValueError(f"checkpoint lacks trained tensors of the model: {missing_trainable[:5]}")
    return model


def save_checkpoint(path: Path, model: nn.Module, optimizer, step: int, best: float, best_step: int,
                    config: TrainConfig) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": trained_state(model), "optimizer": optimizer.state_dict(), "step": step,
                "best": best, "best_step": best_step, "run": _run_signature(model, config)}, tmp)
    os.replace(tmp, path)


def _run_signature(model: nn.Module, config: TrainConfig) -> str:
    """What a checkpoint must match to be resumed: the model's structure and the training settings
    other than the number of steps (so a finished run can also be extended)."""
    settings = {k: v for k, v in asdict(config).items() if k != "steps"}
    shapes = [(name, list(t.shape)) for name, t in trained_state(model).items()]
    return repr((type(model).__name__, sorted(settings.items()), shapes))


def resumable_state(checkpoint: Path, model: nn.Module, config: TrainConfig) -> tuple[dict | None, str | None]:
    """The state to resume a run from ``checkpoint``, or None and why not: a checkpoint of another model or
    other settings, or of a run that already reached ``config.steps`` (re-running a finished run — e.g. DVC
    re-running the stage after a code change, ``last.pt`` being persistent — trains afresh instead of
    keeping the old weights). A finished run asked for more steps is extended."""
    if not checkpoint.is_file():
        return None, None
    state = load_checkpoint(checkpoint)
    if state.get("run") != _run_signature(model, config):
        return None, "from a different model or settings, not resumed; starting afresh"
    if state["step"] >= config.steps:
        return None, f"a finished run ({state['step']} steps), not resumed; starting afresh"
    return state, None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents; ``weights_only=True`` refuses anything but tensors and plain data."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_weights(path: Path, model: nn.Module) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in trained_state(model).items()}
    save_file(state, str(tmp))
    os.replace(tmp, path)


def load_weights(path: Path, model: nn.Module) -> nn.Module:
    from safetensors.torch import load_file

    return load_trained_state(model, load_file(str(path)))


@torch.no_grad()
def embed_all(model: nn.Module, data: TrainData, modality: str, device: torch.device,
              batch_size: int = 256) -> torch.Tensor:
    model.eval()
    outputs = []
    for start in range(0, data.count(modality), batch_size):
        indices = np.arange(start, min(start + batch_size, data.count(modality)))
        with _autocast(device):
            outputs.append(model.embed(data.fetch(modality, indices).to(device), modality).float().cpu())
    model.train()
    return torch.cat(outputs)


def validate(model: nn.Module, val: TrainData, device: torch.device) -> dict:
    """Category-level metrics of val sketches against val photos (seen classes)."""
    sketches = embed_all(model, val, "sketch", device)
    photos = embed_all(model, val, "photo", device)
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
          log_dir: Path | None = None, progress: bool = True) -> dict:
    """Train ``model`` (see the module docstring); return a summary (best step, best val mAP, last loss).

    ``out`` receives ``last.pt`` (resumable) and ``model.safetensors`` (the selected weights). An
    existing ``last.pt`` is resumed from. ``log_dir``: DVCLive folder for the losses and val metrics
    (written by rank 0; continued when the run resumes), or None.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = distributed()
    device = device or default_device()
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
    live = None
    if log_dir is not None and rank == 0:
        from dvclive import Live

        if state is not None:
            _forget_logged_after(Path(log_dir), step)
        live = Live(str(log_dir), resume=state is not None, save_dvc_exp=False, dvcyaml=None)
    wrapped = model
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    model.train()
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not progress or rank != 0,
               file=sys.stderr)
    loss_value = float("nan")
    with deterministic_on_cpu(device):
        while step < config.steps:
            torch.manual_seed(config.seed * 1_000_003 + rank * 7919 + step)
            sketches, positives, negatives = sampler.batch(step, config.batch_size)
            batch = {
                "sketch": data.fetch("sketch", share[sketches]).to(device),
                "positive": data.fetch("photo", photo_share[positives]).to(device),
                "negative": data.fetch("photo", photo_share[negatives]).to(device),
                "sketch_label": torch.as_tensor(np.asarray(data.labels["sketch"])[share[sketches]], device=device),
                "negative_label": torch.as_tensor(np.asarray(data.labels["photo"])[photo_share[negatives]],
                                                  device=device),
            }
            with _autocast(device):
                loss, parts = wrapped(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if live is not None:
                live.step = step  # the x axis of the curves: steps trained, as in best_step and checkpoints
                live.log_metric("train/loss", loss_value)
                for name, value in parts.items():
                    live.log_metric(f"train/{name}", float(value))
            if val is not None and (step % config.eval_every == 0 or step == config.steps):
                score = validate(model, val, device)["map_all"]
                if live is not None:
                    live.log_metric("val/map_all", score)
                if score > best:
                    best, best_step = score, step
                    if rank == 0:
                        save_weights(out / "model.safetensors", model)
            if live is not None:
                live.next_step()
            if rank == 0 and (step % config.checkpoint_every == 0 or step == config.steps):
                save_checkpoint(checkpoint, model, optimizer, step, best, best_step, config)
    bar.close()
    if live is not None:
        live.end()
    if val is None and rank == 0:
        save_weights(out / "model.safetensors", model)
    if world > 1:
        torch.distributed.barrier()
    return {"steps": step, "best_val_map_all": best if best > -math.inf else None, "best_step": best_step,
            "last_loss": loss_value, "config": asdict(config)}


def _forget_logged_after(log_dir: Path, step: int) -> None:
    """Drop the rows of DVCLive's metric histories (``plots/metrics/**.tsv``) logged after ``step``.

    A run killed between two checkpoints has logged steps that its resumed run trains (and logs) again;
    without this, each such step would have two rows and the curves would double back. Each file is
    rewritten atomically.
    """
    for history in sorted((log_dir / "plots" / "metrics").rglob("*.tsv")):
        lines = history.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        column = header.rstrip("\n").split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[column]) <= step]
        if len(kept) != len(rows):
            atomic_write_text(history, header + "".join(kept))


def _subset(values, indices: np.ndarray):
    if values is None:
        return None
    return [values[i] for i in indices]
