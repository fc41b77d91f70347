"""The ``explain`` stage's output: the top photos retrieved for seeded test queries, explained into a folder
(:func:`explain_retrievals`), and the markers by which the commands recognise their own explanation folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sbir.data.images import load_image
from sbir.data.shards.reader import shard_paths
from sbir.errors import SbirError
from sbir.explain.correspondence import MATCH_COLUMNS, explain_pair, json_text, match_records
from sbir.explain.figures import OverviewRow, PairCaption, overview_figure, pair_figure
from sbir.models.base import RetrievalModel
from sbir.retrieval.embeddings import read_embeddings, read_info
from sbir.retrieval.evaluate import cosine_scores, load_images, pick_queries, top_k
from sbir.retrieval.figures import short_label
from sbir.utils.atomic import atomic_dir, check_output
from sbir.utils.figures import save_figure


# ----------------------------------------------------------------------------------------------- test queries
def is_explain_folder(folder: Path) -> bool:
    """overview.png and index.json of the explain stage"""
    return (folder / "overview.png").is_file() and (folder / "index.json").is_file()


def is_pair_explanations(folder: Path) -> bool:
    """the <sketch>__<photo>.json records of 'sbir explain'"""
    for record in folder.glob("*__*.json"):
        try:
            if "correspondence" in json.loads(record.read_text()):
                return True
        except (OSError, ValueError):
            continue
    return False


def explain_retrievals(model: RetrievalModel, embeddings_dir: Path, shard_folder: Path, out: Path, queries: int = 6,
                       seed: int = 0, top: int = 3, lines: int = 10, identity: dict | None = None) -> dict:
    """Explain the ``top`` photos retrieved for ``queries`` seeded sketch queries into the folder ``out``.

    Queries are picked as for the retrieval grid (:func:`sbir.retrieval.evaluate.pick_queries`, one per class first);
    photos are ranked by the cosine of the embeddings of ``embeddings_dir`` (token mode, whatever the
    evaluation's retrieval mode). ``out`` (replaced whole, atomically) holds ``query-NN-<key>.png`` (one row
    per retrieved photo, :func:`pair_figure`), ``overview.png`` (:func:`overview_figure`) and ``index.json``
    (returned): the files, the queries and retrieved keys, classes, cosine scores, the drawn matches, the
    method and the correspondence source.

    ``identity`` (:func:`sbir.models.folder.model_identity` of the model's folder; default: its method) must agree
    with what the embeddings' ``info.json`` records, so that the photos explained are the model's own ranking.
    """
    if queries < 1 or top < 1:
        raise SbirError(f"explain: queries ({queries}) and top ({top}) must be at least 1")
    check_output(out, is_explain_folder, [embeddings_dir, shard_folder])
    sketches, photos = read_embeddings(embeddings_dir, "sketch"), read_embeddings(embeddings_dir, "photo")
    info = read_info(embeddings_dir)
    identity = identity or {"method": model.method}
    for key in ("method", "backbone", "model_sha256"):
        if info.get(key) is not None and identity.get(key) is not None and info[key] != identity[key]:
            raise SbirError(f"{embeddings_dir}: embeddings made with {key} {info[key]!r}, but the model has "
                            f"{identity[key]!r} (re-run the embed stage)")
    part = info.get("part", "test")
    scores_fn = cosine_scores(sketches.vectors, photos.vectors)
    rows = pick_queries(sketches.classes, queries, seed)
    ranked = top_k(scores_fn, rows, top)
    config = model.image_config
    def at_input_size(data: bytes) -> np.ndarray:  # as sbir.retrieval.embed feeds the model
        return load_image(data, config.size, config.interpolation)

    sketch_images = load_images(shard_paths(shard_folder, part, "sketch"), {sketches.keys[q] for q in rows},
                                at_input_size)
    photo_images = load_images(shard_paths(shard_folder, part, "photo"), {photos.keys[i] for i in ranked.ravel()},
                               at_input_size)
    backbone = getattr(model.backbone, "name", "") or info.get("backbone", "")
    heading = " · ".join(str(x) for x in (model.method, backbone, info.get("dataset"), info.get("split"), part) if x)
    records, overview = [], []
    with atomic_dir(out, is_explain_folder, [embeddings_dir, shard_folder]) as tmp:
        for number, (query, best) in enumerate(zip(rows, ranked)):
            sketch_key, sketch_class = sketches.keys[query], sketches.classes[query]
            scores = scores_fn(query, query + 1)[0]
            explanations, captions, retrieved = [], [], []
            for rank, photo in enumerate(best, 1):
                explanation = explain_pair(model, sketch_images[sketch_key], photo_images[photos.keys[photo]], lines)
                relation = explanation.correspondence.relation
                correct = photos.classes[photo] == sketch_class
                explanations.append(explanation)
                captions.append(PairCaption(f"#{rank} {short_label(photos.classes[photo])} · cos {scores[photo]:.2f}"
                                            + (f" · relation {relation:.2f}" if relation is not None else ""),
                                            correct))
                retrieved.append({"photo": photos.keys[photo], "class": photos.classes[photo],
                                  "score": round(float(scores[photo]), 6), "correct": correct,
                                  "relation": None if relation is None else round(relation, 6),
                                  "matches": match_records(explanation)})
            name = f"query-{number:02d}-{sketch_key}.png"
            save_figure(pair_figure(explanations, captions, f"{heading} · query {sketch_key} ({sketch_class})"),
                        tmp / name)
            records.append({"file": name, "sketch": sketch_key, "class": sketch_class, "retrieved": retrieved})
            overview.append(OverviewRow(sketch_class, explanations, captions))
        save_figure(overview_figure(overview, f"{heading} · {len(rows)} seeded queries, top {top} photos"),
                    tmp / "overview.png")
        found = overview[0].explanations[0].correspondence
        index = {"method": model.method, "backbone": backbone, "model_sha256": identity.get("model_sha256"),
                 "dataset": info.get("dataset"),
                 "split": info.get("split"), "part": part, "correspondence": found.source,
                 "correspondence_detail": found.detail, "synthesis": "argmax cosine of patch tokens",
                 "ranking": "cosine of the embeddings", "grid": list(found.grid), "image_size": int(config.size),
                 "seed": seed, "lines": lines, "files": ["overview.png"] + [r["file"] for r in records],
                 "overview": "overview.png", "match_columns": MATCH_COLUMNS, "queries": records}
        (tmp / "index.json").write_text(json_text(index))
    return index
