"""The datasets, one module each (``sketchy``, ``tuberlin``, ``quickdraw``, ``synthetic``), registered by name:
``get_dataset("sketchy")``, ``dataset_names()``."""

from __future__ import annotations

# Importing the modules registers them.
from sbir.data.datasets import quickdraw, sketchy, synthetic, tuberlin  # noqa: E402,F401,I001
from sbir.data.datasets.base import MODALITIES, Dataset, RawItem, Scan, Source
from sbir.data.datasets.registry import dataset_names, get_dataset, register

__all__ = ["MODALITIES", "Dataset", "RawItem", "Scan", "Source", "dataset_names", "get_dataset", "register"]
