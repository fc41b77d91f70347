"""Benchmark of ``sbir.retrieval.metrics`` at the real test-set sizes.

    python bench/bench_metrics.py [--quick] [--sample 200] [--block-size 1024] [--threads N]
                                  [--skip-sketchy] [--skip-quickdraw]

1. Sketchy-25 size (15,229 sketches x 17,101 photos, d=512, 25 classes), random class-structured
   embeddings: time of all category-level metrics (mAP@all, mAP@200 in both conventions, P@100, P@200,
   per-class AP, 11-point PR curve) with ``evaluate_embeddings`` (cosine matmul included) and with
   ``evaluate_scores`` on a precomputed float32 matrix; in the same run, the naive per-query loop of earlier
   codebases (score row, full argsort, sklearn ``average_precision_score``, SAKE's ``voc_ap`` with its
   Python loop) on a sample of queries, scaled to all queries; the speed-up; the fine-grained Acc@K too.
2. QuickDraw-Extended size (92,291 x 54,151, d=512, 30 classes) in a child process, so that its peak
   RSS (``ru_maxrss``) is its own: time and peak memory, the embeddings included.

``--quick`` divides every size by 8 (a smoke run). Each measurement ends with one ``SUMMARY`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sbir.retrieval.metrics import evaluate_embeddings, evaluate_scores

SKETCHY25 = {"name": "sketchy25", "n_queries": 15_229, "n_gallery": 17_101, "n_classes": 25}
QUICKDRAW30 = {"name": "quickdraw30", "n_queries": 92_291, "n_gallery": 54_151, "n_classes": 30}
DIM = 512
TIME_LIMIT_S = 10.0
SPEEDUP_TARGET = 10.0
RSS_LIMIT_GIB = 4.0
CATEGORY_KEYS = ("map_all", "map_all_voc", "map_200", "map_200_voc", "prec_100", "prec_200")


def max_rss_bytes() -> int:
    """Peak resident set size of this process, in bytes.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own address space.
    ``ru_maxrss`` is not used there because a child started by ``subprocess`` inherits the parent's
    value (the parent's RSS at fork time), which would hide the child's own peak. Elsewhere: ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def make_embeddings(rng: np.random.Generator, labels: np.ndarray, centroids: np.ndarray, scale: float) -> np.ndarray:
    """float32 noise + scaled class centroid, written in chunks (no float64 copy of the whole set)."""
    out = np.empty((len(labels), centroids.shape[1]), dtype=np.float32)
    for a in range(0, len(labels), 8192):
        b = min(a + 8192, len(labels))
        out[a:b] = rng.standard_normal((b - a, centroids.shape[1]), dtype=np.float32)
        out[a:b] += scale * centroids[labels[a:b]]
    return out


def make_case(case: dict, shrink: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    nq, ng, nc = case["n_queries"] // shrink, case["n_gallery"] // shrink, case["n_classes"]
    ql, gl = rng.integers(0, nc, nq), rng.integers(0, nc, ng)
    centroids = rng.standard_normal((nc, DIM)).astype(np.float32)
    return make_embeddings(rng, ql, centroids, 0.35), make_embeddings(rng, gl, centroids, 0.35), ql, gl


def l2n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------ naive baseline
def sake_voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """``voc_ap`` of the SAKE / ZSE-SBIR code, Python loop included."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def sake_ap(r: np.ndarray, top: int | None = None) -> float:
    tot_pos = int(r.sum())
    tp, fp = r, ~r
    if top is not None:
        top = min(top, len(r))
        tp, fp, tot_pos = tp[:top], fp[:top], min(top, tot_pos)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return sake_voc_ap(tp / tot_pos, tp / (tp + fp))


def naive_metrics(qn: np.ndarray, gn: np.ndarray, ql: np.ndarray, gl: np.ndarray, idx: np.ndarray) -> dict:
    """Per-query loop the way earlier codebases do it (every query here has a positive)."""
    from sklearn.metrics import average_precision_score

    rows = []
    for i in idx:
        score = gn @ qn[i]
        rel = gl == ql[i]
        r = rel[np.argsort(-score)]
        tp200 = np.cumsum(r[:200])
        rows.append(
            {
                "map_all": average_precision_score(rel, score),
                "map_all_voc": sake_ap(r),
                "map_200": float(np.sum((tp200 / np.arange(1, len(tp200) + 1))[r[:200]])) / min(200, int(rel.sum())),
                "map_200_voc": sake_ap(r, 200),
                "prec_100": r[:100].mean(),
                "prec_200": r[:200].mean(),
            }
        )
    return {k: float(np.mean([row[k] for row in rows])) for k in CATEGORY_KEYS}


def verdict(ok: bool) -> str:
    return "OK" if ok else "OVER"


# ------------------------------------------------------------------------------------- runs
class Timer:
    """Wall-clock and process CPU time (all threads) of a ``with`` block."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall ({self.cpu:.2f} s CPU)"


def run_sketchy(args: argparse.Namespace) -> None:
    case = SKETCHY25
    shrink = 8 if args.quick else 1
    q, g, ql, gl = make_case(case, shrink)
    nq, ng = len(ql), len(gl)
    print(f"== {case['name']}: {nq} queries x {ng} gallery, d={DIM}, {case['n_classes']} classes", flush=True)
    kw = {"block_size": args.block_size, "n_threads": args.threads, "per_class": True, "pr_levels": 11}

    with Timer() as t_emb:
        ours = evaluate_embeddings(q, g, ql, gl, **kw)
    print("   " + ", ".join(f"{k}={ours[k]:.4f}" for k in CATEGORY_KEYS))

    qn, gn = l2n(q), l2n(g)
    with Timer() as t_mm:
        scores = qn @ gn.T
    with Timer() as t_scores:
        ours_s = evaluate_scores(scores, ql, gl, **kw)
    diff_emb = max(abs(ours[k] - ours_s[k]) for k in CATEGORY_KEYS)
    print(f"   cosine matmul alone {t_mm}; ranking + metrics on the precomputed matrix {t_scores}")

    idx = np.random.default_rng(1).choice(nq, size=min(args.sample, nq), replace=False)
    with Timer() as t_naive:
        naive = naive_metrics(qn, gn, ql, gl, idx)
    scale = nq / len(idx)
    check = evaluate_scores(scores[idx], ql[idx], gl, block_size=args.block_size, n_threads=args.threads)
    diff = max(abs(naive[k] - check[k]) for k in CATEGORY_KEYS)
    print(
        f"   naive loop: {t_naive} for {len(idx)} queries = {1e3 * t_naive.wall / len(idx):.1f} ms/query; "
        f"same queries, max |naive - ours| over the metrics = {diff:.1e} (float32 near-ties: sklearn groups "
        f"equal scores, the row is a matvec); embeddings vs scores input: {diff_emb:.1e}"
    )
    del scores

    gi = np.arange(ng)
    pick = np.random.default_rng(2).integers(0, ng, nq)  # each sketch paired with one photo ...
    qi, ql_fg = gi[pick], gl[pick]  # ... of that photo's class
    with Timer() as t_fg:
        fg = evaluate_embeddings(q, g, ql_fg, gl, qi, gi, **kw)

    naive_wall, naive_cpu = t_naive.wall * scale, t_naive.cpu * scale
    speedup = naive_wall / t_emb.wall
    limit = f"| limit {TIME_LIMIT_S:.0f} s on 2 cores ->"
    print(
        f"SUMMARY {case['name']} all category-level metrics (evaluate_embeddings, matmul incl.): {t_emb} "
        f"{limit} {verdict(t_emb.wall <= TIME_LIMIT_S)}"
    )
    print(
        f"SUMMARY {case['name']} all category-level metrics (evaluate_scores, matrix given): {t_scores} "
        f"{limit} {verdict(t_scores.wall <= TIME_LIMIT_S)}"
    )
    print(
        f"SUMMARY {case['name']} naive per-query loop, {len(idx)} queries scaled to {nq}: {naive_wall:.1f} s wall "
        f"({naive_cpu:.1f} s CPU); speed-up {speedup:.1f}x wall, {naive_cpu / t_emb.cpu:.1f}x CPU "
        f"(matrix given: {naive_wall / t_scores.wall:.1f}x wall) "
        f"| target >= {SPEEDUP_TARGET:.0f}x -> {verdict(speedup >= SPEEDUP_TARGET)}"
    )
    print(
        f"SUMMARY {case['name']} category-level + fine-grained Acc@1/5/10 ({fg['acc_queries']} pairs, "
        f"acc_1={fg['acc_1']:.4f}): {t_fg} {limit} {verdict(t_fg.wall <= TIME_LIMIT_S)}",
        flush=True,
    )


def child_quickdraw(args: argparse.Namespace) -> None:
    """Runs in its own process: prints one JSON line with time and peak RSS."""
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc
    base = max_rss_bytes()
    shrink = 8 if args.quick else 1
    q, g, ql, gl = make_case(QUICKDRAW30, shrink)
    after_data = max_rss_bytes()
    with Timer() as timer:
        out = evaluate_embeddings(q, g, ql, gl, block_size=args.block_size, n_threads=args.threads, pr_levels=11)
    peak = max_rss_bytes()
    traced_peak = tracemalloc.get_traced_memory()[1]
    emb_bytes = q.nbytes + g.nbytes
    result = {
        "time_s": timer.wall,
        "cpu_s": timer.cpu,
        "rss_base": base,
        "rss_after_data": after_data,
        "rss_peak": peak,
        "traced_peak": traced_peak,
        "emb_bytes": emb_bytes,
        "n_queries": len(ql),
        "n_gallery": len(gl),
    } | {k: out[k] for k in CATEGORY_KEYS}
    print(json.dumps(result))


def run_quickdraw(args: argparse.Namespace) -> None:
    cmd = [sys.executable, __file__, "--child-quickdraw", "--block-size", str(args.block_size)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    shrink = 8 if args.quick else 1
    nq, ng = QUICKDRAW30["n_queries"] // shrink, QUICKDRAW30["n_gallery"] // shrink
    print(f"== quickdraw30: {nq} queries x {ng} gallery, d={DIM}, 30 classes (child process)", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr)
        raise SystemExit(f"quickdraw child failed with exit code {proc.returncode}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = 2**30
    print("   " + ", ".join(f"{k}={r[k]:.4f}" for k in CATEGORY_KEYS))
    print(
        f"   RSS: {r['rss_base'] / gib:.2f} GiB after imports, {r['rss_after_data'] / gib:.2f} GiB with the "
        f"embeddings ({r['emb_bytes'] / gib:.2f} GiB float32), peak {r['rss_peak'] / gib:.2f} GiB; "
        f"tracemalloc peak of Python + numpy allocations {r['traced_peak'] / gib:.2f} GiB"
    )
    delta = r["rss_peak"] - r["rss_base"]
    print(
        f"SUMMARY quickdraw30 all category-level metrics: {r['time_s']:.1f} s wall ({r['cpu_s']:.1f} s CPU); "
        f"peak RSS {r['rss_peak'] / gib:.2f} GiB (delta over imports {delta / gib:.2f} GiB, embeddings included) "
        f"| limit {RSS_LIMIT_GIB:.0f} GiB -> {verdict(r['rss_peak'] <= RSS_LIMIT_GIB * gib)}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="all sizes divided by 8")
    parser.add_argument("--sample", type=int, default=200, help="queries timed with the naive loop")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None, help="default: available cores (max 8)")
    parser.add_argument("--skip-sketchy", action="store_true")
    parser.add_argument("--skip-quickdraw", action="store_true")
    parser.add_argument("--child-quickdraw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_quickdraw:
        child_quickdraw(args)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"numpy {np.__version__}, {cores} cores available, block_size={args.block_size}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes on the machine skew timings)")
    if not args.skip_sketchy:
        run_sketchy(args)
        print(f"load average: {os.getloadavg()[0]:.2f}", flush=True)
    if not args.skip_quickdraw:
        run_quickdraw(args)
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
