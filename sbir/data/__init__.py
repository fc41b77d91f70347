"""Data: datasets (``datasets/``, one module each), zero-shot splits (``splits/``), acquisition (download,
archives), the shard format (``shards/``: reader, writer, build and verify), image decoding and model input."""
