"""Devices and threads: which device a model is on, the default one (CUDA when there is one), parsing
``auto`` / ``cpu`` / ``cuda:N`` into a device with a one-line error, and torch's thread count for a block."""

from __future__ import annotations

import contextlib

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
