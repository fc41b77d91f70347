"""sbir: reproducible zero-shot sketch-based image retrieval.

The public API, for notebooks and scripts (each name is imported on first use, so ``import sbir`` is cheap)::

    import sbir

    model = sbir.create_model("frozen", "tf_efficientnet_lite0", weights="package")  # or sbir.load_model(dir)
    index = sbir.read_index("data/shards")              # classes, seen / unseen split, counts, shards
    sbir.embed_split(model, "data/shards", "emb")       # the test part's sketches and photos
    sketches, photos = sbir.read_embeddings("emb", "sketch"), sbir.read_embeddings("emb", "photo")
    metrics = sbir.evaluate_embeddings(sketches.vectors, photos.vectors, sketches.classes, photos.classes)

The packages: ``sbir.data`` (datasets, splits, acquisition, the shard format, image input), ``sbir.models``
(methods, backbones, losses, the model folder), ``sbir.train`` (the loop, checkpoints, inputs, callbacks),
``sbir.retrieval`` (embedding, metrics, evaluation, search), ``sbir.explain`` and ``sbir.utils``. The library
knows nothing of DVC or ``params.yaml``: the stages in ``pipeline/`` and the commands in ``sbir.cli`` pass it
plain arguments and callbacks.
"""

from __future__ import annotations

import importlib

from sbir.errors import SbirError

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "create_model": "sbir.models", "create_backbone": "sbir.models", "method_names": "sbir.models",
    "backbone_names": "sbir.models", "load_model": "sbir.models.folder", "model_identity": "sbir.models.folder",
    "get_dataset": "sbir.data.datasets", "dataset_names": "sbir.data.datasets",
    "shard_dataset": "sbir.data.shards.build", "verify_sharded": "sbir.data.shards.build",
    "read_index": "sbir.data.shards.reader", "shard_paths": "sbir.data.shards.reader",
    "iter_tar_samples": "sbir.data.shards.reader", "sample_pipeline": "sbir.data.pipelines",
    "training_batches": "sbir.train.inputs",
    "TrainConfig": "sbir.train.loop", "TrainCallback": "sbir.train.callbacks", "train_model": "sbir.train.run",
    "embed_split": "sbir.retrieval.embed", "read_embeddings": "sbir.retrieval.embeddings",
    "evaluate_scores": "sbir.retrieval.metrics", "evaluate_embeddings": "sbir.retrieval.metrics",
    "run_evaluation": "sbir.retrieval.evaluate",
    "index_folder": "sbir.retrieval.search", "open_gallery": "sbir.retrieval.search",
    "explain_pair": "sbir.explain.correspondence",
}

__all__ = ["__version__", "SbirError", *_API]


def __getattr__(name: str):
    """PEP 562: import a public name's module when the name is first used."""
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sbir' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})

