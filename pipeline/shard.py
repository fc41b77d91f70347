"""Stage ``shard``: ``data/shards/{train,val,test}/{sketch,photo}-NNNNNN.tar`` and ``data/shards/index.json``."""

from __future__ import annotations

import sys

from pipeline.params import RAW, SHARDS, load
from sbir.cli import user_errors
from sbir.data.acquisition.acquire import resolve_raw
from sbir.data.datasets import get_dataset
from sbir.data.shards.build import shard_dataset, summary_table


@user_errors
def main() -> None:
    params = load()
    data, shard = params["data"], params["shard"]
    dataset = get_dataset(data["dataset"])
    index = shard_dataset(dataset, resolve_raw(RAW / dataset.name), SHARDS, data["split"] or dataset.default_split,
                          image_size=shard["image_size"] or None, shard_size=shard["shard_size"],
                          seed=shard["seed"], val_fraction=shard["val_fraction"],
                          max_per_class=shard["max_per_class"] or None, progress=sys.stderr.isatty())
    print(summary_table(index))


if __name__ == "__main__":
    main()
