"""Exact, block-wise retrieval metrics for (zero-shot) sketch-based image retrieval.

Everything is computed from a query x gallery score matrix (higher = more similar) that is never
materialised whole: it is consumed in blocks of ``block_size`` query rows, either sliced from an array
or produced by a callable ``scores_fn(start, stop) -> (stop - start, n_gallery)``. Per block, each row
is ranked with one vectorised sort and every metric is read off the ranked relevance; there is no
per-query Python loop (row chunks of a block are ranked in parallel threads: numpy releases the GIL).
Memory is O(block_size x n_gallery) plus O(n_queries) for the per-query results.

Conventions (relevance = same class label; see ``docs/methods.md``, "Evaluation metrics"):

* **Tie rule (order independent).** Rows are ranked by a stable sort on the key ``(-score, relevance)``:
  among equal scores, *irrelevant items rank before relevant ones* (pessimistic). Items that share both
  score and relevance are interchangeable for every metric here, so no result depends on the gallery
  order. ``-0.0`` and ``+0.0`` are equal scores. NaN scores raise ``ValueError``. Consequence: with
  ties, plain AP is ``sklearn.metrics.average_precision_score`` on the ranking produced by this rule
  (e.g. ``y_score = -rank``), which can be lower than sklearn on the raw tied scores (sklearn scores a
  tie group as one threshold step).
* **AP, plain (non-interpolated).** Mean over the positives of the precision at each positive's rank,
  on the full ranked gallery. ``map_all`` is its mean over queries.
* **AP, VOC-interpolated** (the SAKE / ZSE-SBIR ``voc_ap`` code). Precision is made monotone from the
  right (precision at rank k := max precision at rank k or any later rank of the list), then summed over
  the recall steps: each positive contributes ``interpolated precision at its rank / #positives``.
  ``map_all_voc``. It reads higher than plain AP; never mix the two in one table.
* **@200.** ``map_200`` / ``map_200_voc``: the same two APs computed on the top-200 list only (the VOC
  interpolation also looks only within the top 200), normalised by ``min(200, #positives)`` (SAKE /
  ZSE-SBIR convention; with a gallery smaller than 200 this is simply #positives).
* **P@K** (``prec_100``, ``prec_200``): relevant items in the top K divided by ``min(K, n_gallery)``
  (as the SAKE code does, so a gallery smaller than K is not penalised for its size).
* **Queries without any positive in the gallery** have undefined AP: they are excluded from every
  category-level mean (mAP, mAP@200, P@K, per-class AP, PR curve) and counted in
  ``n_queries_without_positive``. If no query has a positive, those means are NaN.
* **Fine-grained Acc@K** (``acc_1``, ``acc_5``, ``acc_10``; when instance ids are given): fraction of
  queries whose paired photo (the gallery item with the same class label *and* the same instance id)
  ranks in the top K among the gallery items of the query's class. Same tie rule: the paired photo
  ranks after every same-class photo with an equal score, i.e. its rank is the number of same-class
  photos scoring >= its score. A (class, instance) pair must appear at most once in the gallery
  (``ValueError`` otherwise). Queries without a paired photo in the gallery are excluded;
  ``acc_queries`` is the number of queries Acc is averaged over and ``acc_queries_without_pair`` the
  number excluded.
* **PR curve** (``precision_recall_curve_points`` / ``pr_levels``): at recall levels ``i / (L - 1)``,
  ``i = 0..L-1``, the interpolated precision ``max{precision at rank r : recall at r >= level}``,
  averaged over the queries with a positive (11 levels = the classic VOC 11-point curve).

Scores dtype: float32 scores take a fast path (the sort key ``(-score, relevance)`` is packed into one
uint64 per item and sorted in place). float64 scores whose values are all exactly representable in
float32 take the same path; other float64 scores are ranked exactly with ``np.lexsort`` (several times
slower). Integer scores are converted to float64 first; float16/bfloat16 to float32 (exact).

Labels and instance ids may be ints or strings; they are mapped to ints internally. Inputs may be numpy
arrays, sequences, or torch tensors (converted with ``.detach().cpu().numpy()`` when torch is loaded;
this module never imports torch itself).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = [
    "ACC_KS",
    "MAP_TOP",
    "PREC_KS",
    "evaluate_embeddings",
    "evaluate_scores",
    "precision_recall_curve_points",
]

MAP_TOP = 200
"""Cut-off of ``map_200`` / ``map_200_voc``."""
PREC_KS = (100, 200)
"""The K of ``prec_K``."""
ACC_KS = (1, 5, 10)
"""The K of the fine-grained ``acc_K``."""

ScoresFn = Callable[[int, int], Any]

_LITTLE = sys.byteorder == "little"
# Position of the high / low 32-bit word inside a uint64 viewed as two uint32, and of the least
# significant byte of the uint64 viewed as 8 uint8.
_HI, _LO, _LSB = (1, 0, 0) if _LITTLE else (0, 1, 7)
_INT32_MIN = np.int32(-(2**31))


# --------------------------------------------------------------------------------------------- inputs
def _to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of an array-like; torch tensors via ``.detach().cpu().numpy()`` if torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _encode(query: Any, gallery: Any, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map query and gallery labels (ints or strings) to shared ints ``0..n_unique-1``."""
    q, g = _to_numpy(query), _to_numpy(gallery)
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError(f"query and gallery {what} must be 1-D, got shapes {q.shape} and {g.shape}")
    if len(q) and len(g) and (q.dtype.kind in "USO") != (g.dtype.kind in "USO"):
        raise ValueError(f"query and gallery {what} must be of the same kind, got {q.dtype} and {g.dtype}")
    uniques, inverse = np.unique(np.concatenate([q, g]), return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse[: len(q)], inverse[len(q) :], uniques


def _pair_index(qlab: np.ndarray, glab: np.ndarray, query_instances: Any, gallery_instances: Any) -> np.ndarray:
    """Gallery index of each query's paired item (same label and instance id), -1 where there is none.

    Raises ``ValueError`` if a (label, instance) pair occurs more than once in the gallery.
    """
    qins, gins, uniques = _encode(query_instances, gallery_instances, "instance ids")
    if len(qins) != len(qlab) or len(gins) != len(glab):
        raise ValueError(
            f"instance ids must match the labels in length: {len(qins)} query ids for {len(qlab)} "
            f"queries, {len(gins)} gallery ids for {len(glab)} gallery items"
        )
    n_ins = max(len(uniques), 1)
    gkey = glab * n_ins + gins
    order = np.argsort(gkey, kind="stable")
    sorted_key = gkey[order]
    dup = np.flatnonzero(sorted_key[1:] == sorted_key[:-1])
    if dup.size:
        i, j = order[dup[0]], order[dup[0] + 1]
        raise ValueError(
            f"gallery items {i} and {j} have the same class and instance id {uniques[gins[i]]!r}: "
            "a photo must appear once in the gallery"
        )
    qkey = qlab * n_ins + qins
    pos = np.minimum(np.searchsorted(sorted_key, qkey), len(sorted_key) - 1)  # gallery is not empty
    return np.where(sorted_key[pos] == qkey, order[pos], -1).astype(np.int64)


def _score_block(block: Any, expected: tuple[int, int]) -> np.ndarray:
    """A block of scores as a C-contiguous float32 or float64 array of the expected shape."""
    s = _to_numpy(block)
    if s.shape != expected:
        raise ValueError(f"score block has shape {s.shape}, expected {expected}")
    if s.dtype == np.float32 or s.dtype == np.float64:
        return np.ascontiguousarray(s)
    if (s.dtype.kind == "f" and s.dtype.itemsize < 4) or s.dtype == np.bool_:
        return np.ascontiguousarray(s, dtype=np.float32)
    if s.dtype.kind in "iuf":
        return np.ascontiguousarray(s, dtype=np.float64)
    raise ValueError(f"scores must be numeric, got dtype {s.dtype}")


def _default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


# ------------------------------------------------------------------------------------------- ranking
def _desc_key32(scores: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint32 key of float32 scores, ascending in the key == descending in the score.

    ``-0.0`` and ``+0.0`` get the same key; NaN must have been rejected before.
    """
    neg = np.subtract(np.float32(0), scores)  # 0 - s: negates and maps -0.0 and +0.0 to +0.0
    bits = neg.view(np.int32)
    mask = bits >> 31  # all ones for negative floats, 0 otherwise
    mask |= _INT32_MIN
    if out is None:
        out = np.empty(scores.shape, dtype=np.uint32)
    # IEEE total order as unsigned ints: flip all bits of negatives, only the sign bit of the others.
    np.bitwise_xor(bits, mask, out=out.view(np.int32))
    return out


def _rank_positives(scores: np.ndarray, rel: np.ndarray, want_keys: bool) -> tuple[np.ndarray, Any, Any]:
    """Rank each row; return where its relevant items land, and (optionally) their score keys.

    Ranking = stable sort on ``(-score, relevance)`` (the module's tie rule). Returns ``flat``, the flat
    indices ``row * n_gallery + rank - 1`` of the relevant items in row-major order (so a row's
    positives come out in rank order); if ``want_keys``, ``pos_key``, a key of each of those items'
    score, and ``key_of``, the function mapping scores to that key: a lower key is a higher score, equal
    keys are equal scores.
    """
    b, g = scores.shape
    if scores.dtype == np.float64:
        as32 = scores.astype(np.float32)
        if np.array_equal(as32, scores):
            scores = as32
        else:
            order = np.lexsort((rel, -scores), axis=1)
            flat = np.flatnonzero(np.take_along_axis(rel, order, axis=1))
            if not want_keys:
                return flat, None, None
            rows, cols = np.divmod(flat, g)
            return flat, -scores[rows, order[rows, cols]], np.negative
    # float32: pack the sort key into one uint64 per item: high word = _desc_key32(score), low word =
    # relevance; sorting the uint64 values ascending == lexicographic (-score, relevance).
    key = np.empty((b, g, 2), dtype=np.uint32)
    _desc_key32(scores, out=key[..., _HI])
    key[..., _LO] = rel
    key64 = key.view(np.uint64).reshape(b, g)
    key64.sort(axis=1)
    rel_sorted = np.ascontiguousarray(key64.view(np.uint8).reshape(b, g, 8)[..., _LSB])
    flat = np.flatnonzero(rel_sorted.view(np.bool_))
    if not want_keys:
        return flat, None, None
    pos_key = key.reshape(b * g, 2)[flat, _HI]
    return flat, pos_key, lambda x: _desc_key32(np.asarray(x, dtype=np.float32))


def _reverse_cummax(a: np.ndarray) -> np.ndarray:
    """``out[i, j] = max(a[i, j:])``: precision made monotone from the right."""
    return np.maximum.accumulate(a[:, ::-1], axis=1)[:, ::-1]


class _Results:
    """Per-query results, filled block by block (NaN / -1 where undefined)."""

    def __init__(self, n_queries: int, pr_levels: int | None, with_pairs: bool) -> None:
        def nan() -> np.ndarray:
            return np.full(n_queries, np.nan)

        self.ap, self.ap_voc, self.ap200, self.ap200_voc = nan(), nan(), nan(), nan()
        self.prec = {k: nan() for k in PREC_KS}
        self.pr = np.full((n_queries, pr_levels), np.nan) if pr_levels else None
        self.fg_rank = np.full(n_queries, -1, dtype=np.int64) if with_pairs else None


def _process_rows(
    scores: np.ndarray,
    qlab: np.ndarray,
    glab: np.ndarray,
    npos: np.ndarray,
    pairs: np.ndarray | None,
    res: _Results,
    start: int,
) -> None:
    """Compute every per-query metric of the query rows ``start .. start + len(scores)``."""
    b, g = scores.shape
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    rel = glab[None, :] == qlab[:, None]
    stop = start + b

    with_pairs = pairs is not None and res.fg_rank is not None and bool((pairs >= 0).any())
    flat, pos_key, key_of = _rank_positives(scores, rel, with_pairs)
    del rel
    rows, cols = np.divmod(flat, g)  # row in block, 0-based rank of each positive
    counts = np.bincount(rows, minlength=b)
    first = np.cumsum(counts) - counts
    j = np.arange(rows.size) - first[rows]  # 0-based index of the positive within its row
    prec = (j + 1) / (cols + 1)  # precision at each positive's rank

    if with_pairs:
        assert pairs is not None and res.fg_rank is not None and key_of is not None
        has = pairs >= 0
        target = key_of(scores[np.flatnonzero(has), pairs[has]])
        target_all = np.zeros(b, dtype=target.dtype)
        target_all[has] = target
        # Pessimistic rank of the paired item among the query's class (= the row's positives): the
        # number of them scoring >= its score, itself included.
        rank = np.bincount(rows, weights=pos_key <= target_all[rows], minlength=b).astype(np.int64)
        res.fg_rank[start:stop] = np.where(has, rank, -1)

    valid = npos > 0
    npos_f = npos.astype(np.float64)
    n200 = np.minimum(npos_f, MAP_TOP)

    def per_row(sel: np.ndarray | None, weights: np.ndarray, denom: np.ndarray) -> np.ndarray:
        r = rows if sel is None else rows[sel]
        total = np.bincount(r, weights=weights, minlength=b)
        out = np.full(b, np.nan)
        np.divide(total, denom, out=out, where=valid)
        return out

    maxc = int(counts.max()) if rows.size else 0
    padded = np.zeros((b, maxc))
    padded[rows, j] = prec
    interp = _reverse_cummax(padded)
    del padded

    res.ap[start:stop] = per_row(None, prec, npos_f)
    res.ap_voc[start:stop] = per_row(None, interp[rows, j], npos_f)

    top = cols < MAP_TOP
    r2, j2, p2 = rows[top], j[top], prec[top]
    res.ap200[start:stop] = per_row(top, p2, n200)
    padded = np.zeros((b, min(maxc, MAP_TOP)))
    padded[r2, j2] = p2
    res.ap200_voc[start:stop] = per_row(top, _reverse_cummax(padded)[r2, j2], n200)
    del padded

    for k in PREC_KS:
        keff = min(k, g)
        hits = np.bincount(rows[cols < keff], minlength=b).astype(np.float64)
        res.prec[k][start:stop] = np.where(valid, hits / max(keff, 1), np.nan)

    if res.pr is not None:
        levels = res.pr.shape[1]
        i = np.arange(levels)
        # smallest number of retrieved positives whose recall reaches i / (levels - 1): ceil, in ints
        need = (i[None, :] * npos[:, None] + (levels - 2)) // max(levels - 1, 1)
        idx = np.clip(need - 1, 0, max(maxc - 1, 0))
        pr = interp[np.arange(b)[:, None], idx] if maxc else np.zeros((b, levels))
        res.pr[start:stop] = np.where(valid[:, None], pr, np.nan)


# ------------------------------------------------------------------------------------------ driver
def _evaluate(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    query_instances: Any,
    gallery_instances: Any,
    block_size: int,
    pr_levels: int | None,
    n_threads: int | None,
) -> tuple[_Results, dict[str, Any], np.ndarray, np.ndarray]:
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if pr_levels is not None and pr_levels < 2:
        raise ValueError(f"pr_levels must be >= 2, got {pr_levels}")
    qlab, glab, uniques = _encode(query_labels, gallery_labels, "labels")
    n_q, n_g = len(qlab), len(glab)
    if n_g == 0:
        raise ValueError("the gallery is empty")
    if (query_instances is None) != (gallery_instances is None):
        raise ValueError("give both query_instances and gallery_instances, or neither")
    pairs = None
    if query_instances is not None:
        pairs = _pair_index(qlab, glab, query_instances, gallery_instances)

    if callable(scores):
        scores_fn: ScoresFn = scores
    else:
        torch = sys.modules.get("torch")
        arr = scores if torch is not None and isinstance(scores, torch.Tensor) else np.asarray(scores)
        if tuple(arr.shape) != (n_q, n_g):
            raise ValueError(f"scores have shape {tuple(arr.shape)}, expected ({n_q}, {n_g}) from the labels")

        def scores_fn(a: int, b: int) -> Any:
            return arr[a:b]

    npos_all = np.bincount(glab, minlength=len(uniques))[qlab]
    res = _Results(n_q, pr_levels, pairs is not None)
    n_threads = _default_threads() if n_threads is None else max(1, int(n_threads))
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
    try:
        for a in range(0, n_q, block_size):
            b = min(a + block_size, n_q)
            block = _score_block(scores_fn(a, b), (b - a, n_g))
            step = -(-(b - a) // n_threads)
            jobs = []
            for c in range(a, b, step):
                d = min(c + step, b)
                args = (
                    block[c - a : d - a],
                    qlab[c:d],
                    glab,
                    npos_all[c:d],
                    None if pairs is None else pairs[c:d],
                    res,
                    c,
                )
                if pool is None:
                    _process_rows(*args)
                else:
                    jobs.append(pool.submit(_process_rows, *args))
            for job in jobs:
                job.result()
            del block
    finally:
        if pool is not None:
            pool.shutdown()
    info = {"n_queries": n_q, "n_gallery": n_g}
    return res, info, qlab, uniques


def _mean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.mean(x)) if x.size else float("nan")


def _py(label: Any) -> Any:
    return label.item() if hasattr(label, "item") else label


def evaluate_scores(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    query_instances: Any = None,
    gallery_instances: Any = None,
    block_size: int = 1024,
    per_class: bool = False,
    pr_levels: int | None = None,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """All retrieval metrics of a query x gallery score matrix (higher = more similar).

    Args:
        scores: ``(n_queries, n_gallery)`` array / torch tensor, or a callable ``scores_fn(start, stop)``
            returning the rows ``start:stop`` (``n_queries`` is taken from ``query_labels``).
        query_labels, gallery_labels: class label of each query / gallery item (ints or strings).
        query_instances, gallery_instances: instance ids for the fine-grained Acc@K (both or neither).
        block_size: query rows scored and ranked at once; peak memory ~ 21 bytes x block_size x n_gallery
            for float32 scores (1.1 GiB at 1024 x 54,151).
            Results do not depend on it.
        per_class: also return ``per_class_ap`` and ``per_class_ap_voc`` ({label: mean AP of the
            label's queries that have a positive}; labels without such a query are left out).
        pr_levels: if given, also return ``pr_curve`` = {"recall": [...], "precision": [...]} at that many
            recall levels (see the module docstring).
        n_threads: threads ranking row chunks of a block in parallel (default: available cores, <= 8).
            Results do not depend on it.

    Returns:
        dict with floats ``map_all``, ``map_all_voc``, ``map_200``, ``map_200_voc``, ``prec_100``,
        ``prec_200``; with instances ``acc_1``, ``acc_5``, ``acc_10`` and ints ``acc_queries``,
        ``acc_queries_without_pair``; ints ``n_queries``, ``n_gallery``, ``n_queries_without_positive``.
        Conventions (tie rule, exclusions, normalisations): module docstring.
    """
    res, info, qlab, uniques = _evaluate(
        scores,
        query_labels,
        gallery_labels,
        query_instances,
        gallery_instances,
        block_size,
        pr_levels,
        n_threads,
    )
    out: dict[str, Any] = {
        "map_all": _mean(res.ap),
        "map_all_voc": _mean(res.ap_voc),
        "map_200": _mean(res.ap200),
        "map_200_voc": _mean(res.ap200_voc),
    }
    for k in PREC_KS:
        out[f"prec_{k}"] = _mean(res.prec[k])
    if res.fg_rank is not None:
        has = res.fg_rank > 0
        n_pair = int(has.sum())
        for k in ACC_KS:
            out[f"acc_{k}"] = float(np.mean(res.fg_rank[has] <= k)) if n_pair else float("nan")
        out["acc_queries"] = n_pair
        out["acc_queries_without_pair"] = int(len(has) - n_pair)
    out.update(info)
    out["n_queries_without_positive"] = int(np.isnan(res.ap).sum())
    if per_class:
        for key, values in (("per_class_ap", res.ap), ("per_class_ap_voc", res.ap_voc)):
            table = {}
            for c in np.unique(qlab):
                v = values[qlab == c]
                v = v[~np.isnan(v)]
                if v.size:
                    table[_py(uniques[c])] = float(np.mean(v))
            out[key] = table
    if res.pr is not None:
        out["pr_curve"] = _pr_curve(res.pr)
    return out


def _pr_curve(pr: np.ndarray) -> dict[str, list[float]]:
    levels = pr.shape[1]
    valid = ~np.isnan(pr[:, 0])
    mean = pr[valid].mean(axis=0) if valid.any() else np.full(levels, np.nan)
    return {
        "recall": [i / (levels - 1) for i in range(levels)],
        "precision": [float(v) for v in mean],
    }


def precision_recall_curve_points(
    scores: Any,
    query_labels: Any,
    gallery_labels: Any,
    n_levels: int = 11,
    block_size: int = 1024,
    n_threads: int | None = None,
) -> dict[str, list[float]]:
    """Mean interpolated precision at ``n_levels`` evenly spaced recall levels (e.g. 11 or 101).

    Interpolated precision at recall level r = max precision over the ranks whose recall is >= r (VOC),
    averaged over queries with a positive. Use ``evaluate_scores(..., pr_levels=n)`` to get it in the
    same pass as the other metrics. Returns {"recall": [...], "precision": [...]}.
    """
    res, _, _, _ = _evaluate(scores, query_labels, gallery_labels, None, None, block_size, n_levels, n_threads)
    assert res.pr is not None
    return _pr_curve(res.pr)


def _l2_normalised(x: Any, name: str) -> np.ndarray:
    a = np.array(_to_numpy(x), dtype=np.float32, copy=True)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    norms[norms == 0] = 1.0  # a zero vector stays zero: cosine 0 with everything
    a /= norms[:, None]
    return a


def evaluate_embeddings(
    query_emb: Any,
    gallery_emb: Any,
    query_labels: Any,
    gallery_labels: Any,
    query_instances: Any = None,
    gallery_instances: Any = None,
    block_size: int = 1024,
    per_class: bool = False,
    pr_levels: int | None = None,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """``evaluate_scores`` on cosine similarities, computed block by block (float32 matmul per block).

    Embeddings are L2-normalised (a zero vector stays zero). Peak memory beyond the two normalised
    float32 copies of the embeddings is that of one block (see ``evaluate_scores``).
    """
    q = _l2_normalised(query_emb, "query_emb")
    g = _l2_normalised(gallery_emb, "gallery_emb")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"embedding sizes differ: queries {q.shape[1]}, gallery {g.shape[1]}")
    gt = g.T

    def scores_fn(a: int, b: int) -> np.ndarray:
        return q[a:b] @ gt

    return evaluate_scores(
        scores_fn,
        query_labels,
        gallery_labels,
        query_instances,
        gallery_instances,
        block_size,
        per_class,
        pr_levels,
        n_threads,
    )
