"""Registry of datasets: ``get_dataset("sketchy")``, ``dataset_names()``."""

from __future__ import annotations

from sbir.datasets.base import MODALITIES, Dataset, RawItem, Scan, Source
from sbir.errors import SbirError

_REGISTRY: dict[str, type[Dataset]] = {}


def register(cls: type[Dataset]) -> type[Dataset]:
    """Class decorator: make a dataset available by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def dataset_names() -> list[str]:
    return sorted(_REGISTRY)


def get_dataset(name: str) -> Dataset:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise SbirError(f"unknown dataset '{name}': choose one of {', '.join(dataset_names())}") from None


# Importing the modules registers them.
from sbir.datasets import quickdraw, sketchy, synthetic, tuberlin  # noqa: E402,F401

__all__ = ["MODALITIES", "Dataset", "RawItem", "Scan", "Source", "dataset_names", "get_dataset", "register"]
