"""Devices and threads: which device a model is on, the default one (CUDA when there is one), parsing
``auto`` / ``cpu`` / ``cuda:N`` into a device with a one-line error, and torch's thread count for a block."""

from __future__ import annotations

import contextlib
import os

import torch

from sbir.errors import SbirError


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters."""
    return next(model.parameters()).device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` (or None/``auto``: CUDA when there is one); :class:`SbirError` for a
    name torch does not know or a CUDA device on a machine without one."""
    if name is None or name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SbirError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SbirError(f"device '{name}': this machine has no CUDA GPU")
    return device


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` intra-op threads (None: leave torch's setting)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by ``torchrun`` (nccl with each process
    on the GPU of its ``LOCAL_RANK``, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index as the GPU this process uses (its ``LOCAL_RANK``'s under torchrun)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
