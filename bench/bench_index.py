"""Benchmark of the gallery index (``sbir.retrieval.index``) at a million photos.

    python bench/bench_index.py [--size 1000000] [--dim 1280] [--clusters 1000] [--queries 200] [--single 20]
                                [--nlist 512] [--nprobe 4 8 16] [--hnsw] [--threads 2] [--seed 0]

The gallery: ``--size`` unit vectors of ``--dim`` dimensions (1280: EfficientNet-Lite0's pooled embedding) around
``--clusters`` random centres (seeded; generated chunk by chunk straight into the index, never held twice);
the queries: new points of the same clusters.

1. exact: FAISS ``IndexFlatIP`` against the numpy scan ``sbir search`` made before the index (one float32
   matrix-vector product over the whole gallery, then a stable argsort; the gallery already normalised, which
   favours numpy: the old search normalised it on every query), on the same memory (numpy reads the index's own
   vectors): single-query latency (median of ``--single``), batched queries/s (``--queries`` at once), the ratios;
   the top-10 rows of both must agree.
2. the exact top 10 of every query is kept, the flat index freed, then ``IndexIVFFlat`` (``--nlist`` lists,
   trained on a sample) is built and searched one query at a time at each ``--nprobe``: recall@10 against exact
   and ms/query (target: recall >= 0.95 at <= 5 ms/query on 2 cores). ``--hnsw``: the same for ``IndexHNSWFlat``
   (slow to build at a million on 2 cores).

Memory: the bytes each index holds and the process's RSS after each step. Each measurement ends with one
``SUMMARY`` line (JSON). ``--size 2000 --dim 32`` is a smoke run (the test suite's).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import faiss
import numpy as np

from sbir.retrieval.index import IndexSpec, unit_rows

CHUNK = 65_536


def rss_gib() -> float:
    """The process's resident memory now, GiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def summary(name: str, **values) -> None:
    print(f"SUMMARY {json.dumps({'measure': name, **values})}", flush=True)


class Clusters:
    """Seeded points around random unit centres: chunk ``i`` is the same every time it is made."""

    def __init__(self, dim: int, clusters: int, seed: int, spread: float = 1.0) -> None:
        self.dim, self.seed, self.spread = dim, seed, spread
        self.centres = unit_rows(np.random.default_rng(seed).standard_normal((clusters, dim)))

    def chunk(self, number: int, rows: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, number])
        noise = rng.standard_normal((rows, self.dim), dtype=np.float32) * (self.spread / np.sqrt(self.dim))
        return unit_rows(self.centres[rng.integers(0, len(self.centres), rows)] + noise)

    def chunks(self, size: int, stream: int = 0):
        for number, start in enumerate(range(0, size, CHUNK)):
            yield self.chunk(number, min(CHUNK, size - start), stream)


def median_seconds(search, queries: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Median seconds of ``search(query)`` over ``queries`` one at a time, and its answers."""
    times, answers = [], []
    for query in queries:
        start = time.perf_counter()
        answers.append(search(query))
        times.append(time.perf_counter() - start)
    return float(np.median(times)), answers


def numpy_top(gallery: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The old search: every photo's cosine (unit vectors), stable argsort, the first ``k``."""
    return np.argsort(-(gallery @ query), kind="stable")[:k]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, exact)]))


def approximate(name: str, index, queries: np.ndarray, exact: np.ndarray, settings: list, index_bytes: int) -> None:
    for setting in settings:
        params = (faiss.SearchParametersIVF(nprobe=setting) if name == "ivf"
                  else faiss.SearchParametersHNSW(efSearch=setting))
        index.search(queries[:2], 10, params=params)  # warm
        start = time.perf_counter()
        found = np.concatenate([index.search(queries[i:i + 1], 10, params=params)[1] for i in range(len(queries))])
        ms = (time.perf_counter() - start) / len(queries) * 1000
        value = recall(found, exact)
        key = "nprobe" if name == "ivf" else "ef_search"
        print(f"{name} {key}={setting}: recall@10 {value:.4f}, {ms:.2f} ms/query (target >= 0.95 at <= 5 ms)")
        summary(name, **{key: setting}, recall_at_10=round(value, 4), ms_per_query=round(ms, 3),
                meets_target=bool(value >= 0.95 and ms <= 5), index_bytes=index_bytes, rss_gib=round(rss_gib(), 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--single", type=int, default=20, help="queries timed one at a time (exact)")
    parser.add_argument("--nlist", type=int, default=512)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--hnsw", action="store_true", help="also build and search IndexHNSWFlat")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    data = Clusters(args.dim, args.clusters, args.seed)
    queries = np.concatenate(list(data.chunks(args.queries, stream=1)))
    print(f"gallery {args.size:,} x {args.dim} float32 ({args.size * args.dim * 4 / 1e9:.2f} GB), "
          f"{args.clusters} clusters, {args.queries} queries, {args.threads} threads")

    # 1. exact FAISS vs the numpy scan, on the same vectors
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    for chunk in data.chunks(args.size):
        flat.add(chunk)
    gallery = faiss.rev_swig_ptr(flat.get_xb(), args.size * args.dim).reshape(args.size, args.dim)  # no copy
    flat_bytes = args.size * args.dim * 4
    print(f"built exact index in {time.perf_counter() - start:.1f} s; RSS {rss_gib():.2f} GiB")
    single = queries[:args.single]
    faiss_single, faiss_rows = median_seconds(lambda q: flat.search(q[None], 10)[1][0], single)  # noqa: F821
    numpy_single, numpy_rows = median_seconds(lambda q: numpy_top(gallery, q, 10), single)  # noqa: F821
    agree = all(np.array_equal(a, b) for a, b in zip(faiss_rows, numpy_rows))
    start = time.perf_counter()
    _, exact = flat.search(queries, 10)
    faiss_batch = len(queries) / (time.perf_counter() - start)
    start = time.perf_counter()
    for first in range(0, len(queries), 20):
        scores = queries[first:first + 20] @ gallery.T
        np.argsort(-scores, axis=1, kind="stable")[:, :10]
    numpy_batch = len(queries) / (time.perf_counter() - start)
    del scores
    print(f"exact FAISS: {faiss_single * 1000:.1f} ms/query alone, {faiss_batch:.1f} queries/s batched; numpy scan: "
          f"{numpy_single * 1000:.1f} ms/query, {numpy_batch:.1f} queries/s; ratio (numpy time / FAISS time): "
          f"{numpy_single / faiss_single:.2f}x alone, {faiss_batch / numpy_batch:.2f}x batched; top-10 agree: {agree}")
    summary("exact", faiss_ms_per_query=round(faiss_single * 1000, 2), numpy_ms_per_query=round(numpy_single * 1000, 2),
            ratio_single=round(numpy_single / faiss_single, 3), faiss_queries_per_s=round(faiss_batch, 2),
            numpy_queries_per_s=round(numpy_batch, 2), ratio_batch=round(faiss_batch / numpy_batch, 3),
            top10_agree=agree, index_bytes=flat_bytes, rss_gib=round(rss_gib(), 2))
    del gallery, flat
    gc.collect()

    # 2. approximate indexes, one at a time, against the exact top 10
    spec = IndexSpec("ivf", nlist=args.nlist)
    nlist = max(1, min(spec.nlist, args.size // 39))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed, ivf.cp.niter = args.seed, 10
    start = time.perf_counter()
    ivf.train(np.concatenate(list(data.chunks(min(args.size, 64 * nlist), stream=2))))
    for chunk in data.chunks(args.size):
        ivf.add(chunk)
    ivf_bytes = args.size * (args.dim * 4 + 8) + nlist * args.dim * 4
    print(f"built ivf ({nlist} lists) in {time.perf_counter() - start:.1f} s; RSS {rss_gib():.2f} GiB")
    approximate("ivf", ivf, queries, exact, [p for p in args.nprobe if p <= nlist], ivf_bytes)
    del ivf
    gc.collect()
    if args.hnsw:
        hnsw = faiss.IndexHNSWFlat(args.dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        start = time.perf_counter()
        for chunk in data.chunks(args.size):
            hnsw.add(chunk)
        hnsw_bytes = args.size * (args.dim * 4 + 2 * args.hnsw_m * 4 + 8)  # vectors + level-0 links (+ upper levels)
        print(f"built hnsw (M={args.hnsw_m}) in {time.perf_counter() - start:.1f} s; RSS {rss_gib():.2f} GiB")
        approximate("hnsw", hnsw, queries, exact, args.ef_search, hnsw_bytes)


if __name__ == "__main__":
    main()
