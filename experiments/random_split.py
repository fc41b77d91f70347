"""A seeded random zero-shot split of Sketchy: ``python experiments/random_split.py SKETCHY_DIR SEED [COUNT]`` prints
COUNT (default 25) class names drawn uniformly without replacement from the dataset's sorted classes with
``random.Random(SEED)``, one per line, sorted: a split file for ``data.split``. The seeds of docs/results.md (1, 2, 3)
were fixed in experiments/sake.sh before any of its results existed."""

from __future__ import annotations

import random
import sys
from pathlib import Path

from sbir.data.datasets import get_dataset


def main(root: Path, seed: int, count: int = 25) -> None:
    classes = sorted({item.class_name for item in get_dataset("sketchy").scan(root).items})
    print("\n".join(sorted(random.Random(seed).sample(classes, count))))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 25)
