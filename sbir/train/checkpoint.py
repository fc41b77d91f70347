"""``last.pt``: the resumable checkpoint of a training run (what training changes, the optimiser, the step and
the best val score), written atomically, loaded with ``weights_only=True`` (never unpickling code), and
resumed only by a run with the same model structure and settings (:func:`resumable_state`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sbir.models.folder import trained_state

if TYPE_CHECKING:  # annotations only: the loop imports this module
    from sbir.train.loop import TrainConfig

import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn


def save_checkpoint(path: Path, model: nn.Module, optimizer, step: int, best: float, best_step: int,
                    config: TrainConfig) -> None:
    """``last.pt``: what training changed (weights, optimiser, step, best val score), written atomically."""
    # torch.save names the archive's inner folder after the file: written under its own name in a private
    # temporary folder (not under a pid-stamped temporary name), the bytes are the same in every run
    path = Path(path)
    folder = path.parent / f".{path.name}.tmp-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.save({"model": trained_state(model), "optimizer": optimizer.state_dict(), "step": step,
                    "best": best, "best_step": best_step, "run": _run_signature(model, config)}, folder / path.name)
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
