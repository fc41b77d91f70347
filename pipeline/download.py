"""Stage ``download``: ``data/raw/<dataset>`` in the dataset's official layout (or a pointer to a local copy)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.params import RAW, load
from sbir.cli import user_errors
from sbir.data.acquisition.acquire import acquire
from sbir.data.datasets import get_dataset


@user_errors
def main() -> None:
    data = load()["data"]
    dataset = get_dataset(data["dataset"])
    acquire(dataset, RAW / dataset.name, source=Path(data["source"]) if data["source"] else None,
            mirror=data["mirror"] or None, synthetic_options={"seed": data["synthetic_seed"]},
            progress=sys.stderr.isatty())


if __name__ == "__main__":
    main()
