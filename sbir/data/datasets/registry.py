"""The registry of datasets: :func:`register` for the dataset modules, :func:`get_dataset` and
:func:`dataset_names` for everyone (re-exported by :mod:`sbir.data.datasets`)."""

from __future__ import annotations

from sbir.data.datasets.base import Dataset
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
