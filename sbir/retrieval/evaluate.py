"""Evaluate retrieval: sketch queries against the photo gallery of the same part (all of it, never a sample).

Scores reach the metrics through one block interface, ``scores_fn(start, stop) -> [stop - start,
n_photos]`` (rows = sketches ``start:stop``, higher = more similar), consumed block by block by
``sbir.retrieval.metrics.evaluate_scores``, so the full sketch x photo matrix never has to exist:

- :func:`cosine_scores`: cosine of the embeddings (every method's fast mode; ZSE-SBIR ``token``);
- :func:`pairwise_scores`: a model's ``score_pairs`` over cached per-image pair features, in
  ``gallery_block`` photo chunks (ZSE-SBIR ``relation``; a ``rerank`` mode can call it on the
  ``cosine_scores`` shortlist of each block and fill the rest of the row from the cosine scores).

Relevance is the class label. Fine-grained Acc@K is computed only when the data has instance pairs
(some sketch's instance id is a photo's instance id, as in Sketchy); datasets without pairing give
every image its own id, so Acc@K is left out rather than reported as 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sbir.data.shards.reader import decode_image, image_of, iter_tar_samples, shard_paths
from sbir.errors import SbirError
from sbir.retrieval.embeddings import Embeddings, read_embeddings, read_info
from sbir.retrieval.figures import RetrievalRow, retrieval_grid
from sbir.retrieval.metrics import evaluate_scores
from sbir.utils.atomic import atomic_write_text, check_output, check_output_file

ScoresFn = Callable[[int, int], np.ndarray]

#: the keys of ``eval.json``, in order; ``acc_K`` only with instance pairs
CATEGORY_METRICS = ("map_all", "map_all_voc", "map_200", "map_200_voc", "prec_100", "prec_200")
FINE_GRAINED_METRICS = ("acc_1", "acc_5", "acc_10")


def _l2_normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def cosine_scores(queries: np.ndarray, gallery: np.ndarray) -> ScoresFn:
    """Block score function of cosine similarity (one float32 matmul per block)."""
    query_unit, gallery_unit_t = _l2_normalised(queries), np.ascontiguousarray(_l2_normalised(gallery).T)
    if query_unit.shape[1] != gallery_unit_t.shape[0]:
        raise SbirError(f"embedding sizes differ: sketches {query_unit.shape[1]}, photos {gallery_unit_t.shape[0]}")

    def scores_fn(start: int, stop: int) -> np.ndarray:
        return query_unit[start:stop] @ gallery_unit_t

    return scores_fn


def pairwise_scores(score_pairs: Callable, query_features, gallery_features, gallery_block: int = 4096) -> ScoresFn:
    """Block score function of a pairwise scorer ``score_pairs(queries [S, ...], gallery [P, ...]) -> [S, P]``
    (a model's ``score_pairs``, torch tensors in and out), called on ``gallery_block`` photos at a time."""
    import torch

    n_gallery = len(gallery_features)

    def scores_fn(start: int, stop: int) -> np.ndarray:
        with torch.inference_mode():
            queries = query_features[start:stop]
            blocks = [score_pairs(queries, gallery_features[first:first + gallery_block])
                      for first in range(0, n_gallery, gallery_block)]
            return torch.cat(blocks, dim=1).float().cpu().numpy()

    return scores_fn


def has_instance_pairs(sketches: Embeddings, photos: Embeddings) -> bool:
    """True when some sketch's instance id is also a photo's (the dataset pairs sketches with photos)."""
    return not set(sketches.instances).isdisjoint(photos.instances)


@dataclass
class Evaluation:
    metrics: dict[str, float]  # exactly the keys of eval.json
    per_class_ap: dict[str, float]  # plain AP per query class
    pr_curve: dict[str, list[float]]  # {"recall": [...], "precision": [...]}
    counts: dict[str, int]  # queries, gallery, queries without a positive, Acc queries
    seconds: float = 0.0  # wall time of scoring and metrics (not the plots)
    pairs_scored: int = 0  # relation pairs scored for the metrics (``scores_fn.pairs_scored``; not the grid's)


def evaluate(sketches: Embeddings, photos: Embeddings, scores_fn: ScoresFn | None = None, block_size: int = 1024,
             pr_levels: int = 101) -> Evaluation:
    """All metrics of sketch-to-photo retrieval (cosine of the embeddings unless ``scores_fn`` is given)."""
    if not len(sketches) or not len(photos):
        raise SbirError(f"nothing to evaluate: {len(sketches)} sketches, {len(photos)} photos")
    scores_fn = scores_fn or cosine_scores(sketches.vectors, photos.vectors)
    fine_grained = has_instance_pairs(sketches, photos)
    try:
        result = evaluate_scores(scores_fn, sketches.classes, photos.classes,
                                 sketches.instances if fine_grained else None,
                                 photos.instances if fine_grained else None,
                                 block_size=block_size, per_class=True, pr_levels=pr_levels)
    except ValueError as error:
        raise SbirError(f"cannot evaluate: {error}") from None
    keys = CATEGORY_METRICS + (FINE_GRAINED_METRICS if fine_grained else ())
    counts = {key: int(result[key]) for key in ("n_queries", "n_gallery", "n_queries_without_positive",
                                                "acc_queries") if key in result}
    return Evaluation({key: float(result[key]) for key in keys}, dict(sorted(result["per_class_ap"].items())),
                      result["pr_curve"], counts)


def top_k(scores_fn: ScoresFn, rows: Sequence[int], k: int) -> np.ndarray:
    """Gallery indices of the ``k`` best-scoring items of each query row (ties: lower gallery index first)."""
    ranked = []
    for row in rows:
        scores = np.asarray(scores_fn(row, row + 1))[0]
        ranked.append(np.argsort(-scores, kind="stable")[:k])
    return np.stack(ranked) if ranked else np.zeros((0, k), dtype=np.int64)


def pick_queries(classes: Sequence[str], count: int, seed: int) -> list[int]:
    """``count`` seeded query rows, from as many different classes as possible (one per class first)."""
    rng = np.random.default_rng(seed)
    rows_of: dict[str, list[int]] = {}
    for row, name in enumerate(classes):
        rows_of.setdefault(name, []).append(row)
    chosen: list[int] = []
    names = [sorted(rows_of)[i] for i in rng.permutation(len(rows_of))]
    while len(chosen) < min(count, len(classes)):
        for name in names:
            left = [row for row in rows_of[name] if row not in chosen]
            if left and len(chosen) < count:
                chosen.append(int(left[rng.integers(len(left))]))
    return chosen


def load_images(shards: Sequence[Path], keys: set[str], decode: Callable[[bytes], Any] = decode_image) -> dict:
    """Decoded images of the samples ``keys``, read from ``shards`` (each read once); ``decode`` turns a
    sample's image bytes into the image (default: PIL)."""
    images = {}
    for path in shards:
        for sample in iter_tar_samples(path):
            if sample["__key__"] in keys:
                images[sample["__key__"]] = decode(image_of(sample)[1])
    missing = keys - set(images)
    if missing:
        raise SbirError(f"samples not found in the shards: {', '.join(sorted(missing)[:3])} (are the "
                        "embeddings and the shards from the same run?)")
    return images


def retrieval_examples(sketches: Embeddings, photos: Embeddings, scores_fn: ScoresFn, sketch_shards: Sequence[Path],
                       photo_shards: Sequence[Path], count: int = 8, k: int = 10, seed: int = 0) -> list[RetrievalRow]:
    """The rows of a retrieval grid: ``count`` seeded query sketches (see :func:`pick_queries`), each with
    its ``k`` best photos."""
    queries = pick_queries(sketches.classes, count, seed)
    ranked = top_k(scores_fn, queries, k)
    sketch_images = load_images(sketch_shards, {sketches.keys[q] for q in queries})
    photo_images = load_images(photo_shards, {photos.keys[i] for i in ranked.ravel()})
    rows = []
    for query, best in zip(queries, ranked):
        name = sketches.classes[query]
        rows.append(RetrievalRow(sketch_images[sketches.keys[query]], name,
                                 [photo_images[photos.keys[i]] for i in best], [photos.classes[i] for i in best],
                                 [photos.classes[i] == name for i in best]))
    return rows


def _write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def is_metrics_file(path: Path) -> bool:
    """a metrics JSON of 'sbir evaluate', with map_all"""
    try:
        return "map_all" in json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return False


def is_plots_folder(folder: Path) -> bool:
    """pr_curve.json of 'sbir evaluate'"""
    return (folder / "pr_curve.json").is_file()


def check_evaluation_outputs(metrics_path: Path, plots_dir: Path, inputs: Sequence[Path | None]) -> None:
    """Refuse, before any work, outputs that are not this command's own or that are among its inputs."""
    check_output_file(metrics_path, is_metrics_file, inputs)
    check_output(plots_dir, is_plots_folder, inputs)


def write_evaluation(evaluation: Evaluation, metrics_path: Path, plots_dir: Path) -> None:
    """``metrics_path`` (the metrics) and, in ``plots_dir``, ``pr_curve.json`` (x=recall, y=precision) and
    ``per_class_ap.json`` (class, ap): lists of records, as DVC's plots read them."""
    _write_json(metrics_path, evaluation.metrics)
    curve = evaluation.pr_curve
    _write_json(Path(plots_dir) / "pr_curve.json",
                {"pr_curve": [{"recall": r, "precision": p} for r, p in zip(curve["recall"], curve["precision"])]})
    _write_json(Path(plots_dir) / "per_class_ap.json",
                {"per_class_ap": [{"class": name, "ap": ap} for name, ap in evaluation.per_class_ap.items()]})


def run_evaluation(embeddings_dir: Path, shard_folder: Path, metrics_path: Path, plots_dir: Path,
                   block_size: int = 1024, pr_levels: int = 101, grid_queries: int = 8, grid_top: int = 10,
                   seed: int = 0, scores_fn: ScoresFn | None = None, photo_embeddings_dir: Path | None = None,
                   photo_shard_folder: Path | None = None) -> Evaluation:
    """Evaluate the embeddings of ``embeddings_dir``: ``metrics_path``, the two plot files of
    :func:`write_evaluation` and ``plots_dir/retrieval_grid.png`` (images read from ``shard_folder``).
    Scores are the cosine of the embeddings unless ``scores_fn`` (rows and columns in the embeddings'
    order, e.g. a pairwise relation mode) is given.

    Cross-dataset: ``photo_embeddings_dir`` (and ``photo_shard_folder`` for the grid's photos) take the
    gallery from another embedded dataset, e.g. TU-Berlin sketches against Sketchy photos; both must come
    from the same model."""
    check_evaluation_outputs(metrics_path, plots_dir,
                             [embeddings_dir, shard_folder, photo_embeddings_dir, photo_shard_folder])
    sketches = read_embeddings(embeddings_dir, "sketch")
    photos = read_embeddings(photo_embeddings_dir or embeddings_dir, "photo")
    info = read_info(embeddings_dir)
    if photo_embeddings_dir is not None:
        photo_info = read_info(photo_embeddings_dir)
        for key in ("method", "backbone", "weights", "model_sha256"):
            if info.get(key) != photo_info.get(key):
                raise SbirError(f"{photo_embeddings_dir}: photos embedded with {key} {photo_info.get(key)!r}, "
                                f"sketches ({embeddings_dir}) with {info.get(key)!r}")
        if sketches.vectors.shape[1] != photos.vectors.shape[1]:
            raise SbirError(f"{photo_embeddings_dir}: {photos.vectors.shape[1]}-d photo embeddings for "
                            f"{sketches.vectors.shape[1]}-d sketch embeddings")
    scores_fn = scores_fn or cosine_scores(sketches.vectors, photos.vectors)
    start = time.perf_counter()
    evaluation = evaluate(sketches, photos, scores_fn, block_size=block_size, pr_levels=pr_levels)
    evaluation.seconds = time.perf_counter() - start
    evaluation.pairs_scored = int(getattr(scores_fn, "pairs_scored", 0))
    write_evaluation(evaluation, metrics_path, plots_dir)
    if grid_queries > 0:
        part = info.get("part", "test")
        rows = retrieval_examples(sketches, photos, scores_fn, shard_paths(shard_folder, part, "sketch"),
                                  shard_paths(photo_shard_folder or shard_folder, part, "photo"), grid_queries,
                                  grid_top, seed)
        title = " · ".join(str(info[key]) for key in ("method", "backbone", "dataset", "split") if info.get(key))
        retrieval_grid(rows, Path(plots_dir) / "retrieval_grid.png",
                       f"{title} · {part} · mAP@all {evaluation.metrics['map_all']:.3f}")
    return evaluation


def model_scores(model, mode: str, top_k: int, embeddings_dir: Path, shard_folder: Path,
                 photo_embeddings_dir: Path | None = None, photo_shard_folder: Path | None = None,
                 **encode_options) -> ScoresFn:
    """``scores_fn`` of a model's retrieval ``mode`` (``zse``: ``relation``, ``rerank`` on the token
    top-``top_k``) for the embeddings of ``embeddings_dir``, its pair features computed once per image from
    the shards the embeddings came from (``photo_*``: the cross-dataset gallery, as in
    :func:`run_evaluation`); ``encode_options`` go to :func:`sbir.retrieval.embed.pair_features_split` (batch size,
    workers, device, threads, progress). Rows and columns are in the embeddings' order (checked by key)."""
    from sbir.retrieval.embed import pair_features_split

    if mode not in getattr(model, "retrieval_modes", ("token",)):
        raise SbirError(f"retrieval mode {mode} needs a model with a relation network (zse); this model is "
                        f"'{getattr(model, 'method', type(model).__name__)}'")
    sources = {"sketch": (embeddings_dir, shard_folder),
               "photo": (photo_embeddings_dir or embeddings_dir, photo_shard_folder or shard_folder)}
    features = {}
    for modality, (folder, shards) in sources.items():
        part = read_info(folder).get("part", "test")
        computed = pair_features_split(model, shards, part, modalities=(modality,), **encode_options)
        values, keys = computed[modality]
        if keys != read_embeddings(folder, modality).keys:
            raise SbirError(f"{folder}: its {modality}s are not the {part} {modality}s of {shards} (embed again)")
        features[modality] = values
    return model.retrieval_scores(features["sketch"], features["photo"], mode=mode, top_k=top_k)


def metrics_table(evaluation: Evaluation) -> str:
    """The metrics and counts as aligned text lines."""
    lines = [f"{key:<12} {value:.4f}" for key, value in evaluation.metrics.items()]
    lines += [f"{key:<12} {value}" for key, value in evaluation.counts.items()]
    return "\n".join(lines)
