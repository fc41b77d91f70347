"""Tests of ``sbir.retrieval.metrics`` against naive, obviously-correct per-query references written here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from sbir.retrieval import metrics
from sbir.retrieval.metrics import evaluate_embeddings, evaluate_scores, precision_recall_curve_points

CATEGORY_KEYS = ("map_all", "map_all_voc", "map_200", "map_200_voc", "prec_100", "prec_200")


# ------------------------------------------------------------------------------- naive references
def ref_ranked_relevance(s: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Relevance in rank order; tie rule: by score descending, irrelevant before relevant."""
    order = sorted(range(len(s)), key=lambda i: (-float(s[i]), bool(rel[i])))
    return np.array([bool(rel[i]) for i in order])


def sake_voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """``voc_ap`` as in the SAKE / ZSE-SBIR code."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def sake_ap(r: np.ndarray, top: int | None = None) -> float:
    """SAKE's ``eval_AP_inner`` on an already ranked relevance list."""
    tot_pos = int(r.sum())
    tp, fp = r.copy(), ~r
    if top is not None:
        top = min(top, len(r))
        tp, fp = tp[:top], fp[:top]
        tot_pos = min(top, tot_pos)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return sake_voc_ap(tp / tot_pos, tp / (tp + fp))


def ref_query(r: np.ndarray) -> dict[str, float]:
    n, npos = len(r), int(r.sum())
    out = {
        # plain AP: sklearn on the ranked list (distinct scores -rank, so no tie handling inside sklearn)
        "map_all": float(average_precision_score(r, -np.arange(n))),
        "map_all_voc": sake_ap(r),
        "map_200_voc": sake_ap(r, 200),
    }
    hits, total = 0, 0.0
    for k in range(min(200, n)):
        if r[k]:
            hits += 1
            total += hits / (k + 1)
    out["map_200"] = total / min(200, npos)
    for k in (100, 200):
        out[f"prec_{k}"] = float(r[: min(k, n)].sum()) / min(k, n)
    return out


def ref_evaluate(s: np.ndarray, ql: np.ndarray, gl: np.ndarray) -> tuple[dict[str, float], list[Any]]:
    per_query: list[Any] = []
    for q in range(len(ql)):
        rel = gl == ql[q]
        per_query.append(ref_query(ref_ranked_relevance(s[q], rel)) if rel.any() else None)
    done = [p for p in per_query if p is not None]
    out = {k: float(np.mean([p[k] for p in done])) for k in CATEGORY_KEYS}
    out["n_queries_without_positive"] = len(per_query) - len(done)
    return out, per_query


def ref_acc(s, ql, gl, qi, gi) -> dict[str, float]:
    ranks = []
    for q in range(len(ql)):
        same = [j for j in range(len(gl)) if gl[j] == ql[q]]
        pair = [j for j in same if gi[j] == qi[q]]
        if not pair:
            continue
        # rank the class's photos by score, pair last among ties (pessimistic)
        order = sorted(same, key=lambda j: (-float(s[q, j]), j == pair[0]))
        ranks.append(order.index(pair[0]) + 1)
    return {f"acc_{k}": float(np.mean([r <= k for r in ranks])) for k in (1, 5, 10)} | {"acc_queries": len(ranks)}


def ref_pr(s, ql, gl, levels: int) -> list[float]:
    curves = []
    for q in range(len(ql)):
        r = ref_ranked_relevance(s[q], gl == ql[q])
        npos = int(r.sum())
        if npos == 0:
            continue
        tp = np.cumsum(r)
        prec = tp / np.arange(1, len(r) + 1)
        # recall tp/npos >= i/(levels-1), compared in integers
        curves.append([max(prec[tp * (levels - 1) >= i * npos]) for i in range(levels)])
    return list(np.mean(curves, axis=0))


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Exact equality of two result dicts, NaN equal to NaN."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not same(x, y):
                return False
        elif isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


def make_data(seed: int, nq: int, ng: int, ncls: int, kind: str):
    """Random labels with a one-positive class (label ncls) and two query-only classes (no positive)."""
    rng = np.random.default_rng(seed)
    gl = rng.integers(0, ncls, ng)
    gl[ng // 2] = ncls  # the only gallery item of class ncls
    ql = rng.integers(0, ncls + 3, nq)
    ql[:3] = [ncls, ncls + 1, ncls + 2]
    if kind == "f64_continuous":  # float64 not representable in float32: the lexsort path
        s = rng.standard_normal((nq, ng))
    elif kind == "f64_int_ties":  # integer-valued: many ties; float64 but float32-exact: packed-key path
        s = rng.integers(0, 5, (nq, ng)).astype(np.float64)
    elif kind == "f64_ties_lexsort":  # ties again, but not float32-exact: the lexsort path
        s = rng.integers(0, 5, (nq, ng)) + 0.1
    elif kind == "f32_ties":
        s = rng.integers(-3, 3, (nq, ng)).astype(np.float32)
    else:  # f32
        s = rng.standard_normal((nq, ng)).astype(np.float32)
    return s, ql, gl


KINDS = ("f64_continuous", "f64_int_ties", "f64_ties_lexsort", "f32_ties", "f32")


# --------------------------------------------------------------------------------- hand-computed
def test_hand_five_items_both_conventions() -> None:
    # Ranked relevance N R N R R (scores 0.9 .. 0.5), 3 positives.
    # plain: precision at the positives 1/2, 2/4, 3/5 -> AP = (0.5 + 0.5 + 0.6) / 3 = 0.533333...
    # VOC:   precision made monotone from the right: rank 2 -> max(1/2, 1/3, 2/4, 3/5) = 3/5,
    #        rank 4 -> max(2/4, 3/5) = 3/5, rank 5 -> 3/5; AP = (0.6 + 0.6 + 0.6) / 3 = 0.6
    # gallery of 5 < 100: P@100 = P@200 = 3/5 (divided by min(K, n_gallery) = 5)
    s = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    out = evaluate_scores(s, [1], [0, 1, 0, 1, 1])
    assert out["map_all"] == pytest.approx(1.6 / 3, abs=1e-12)
    assert out["map_all_voc"] == pytest.approx(0.6, abs=1e-12)
    assert out["map_200"] == pytest.approx(1.6 / 3, abs=1e-12)
    assert out["map_200_voc"] == pytest.approx(0.6, abs=1e-12)
    assert out["prec_100"] == pytest.approx(0.6) and out["prec_200"] == pytest.approx(0.6)


def test_hand_five_items_with_ties_pessimistic() -> None:
    # scores 0.9 (N), 0.7 (R), 0.7 (N), 0.7 (R), 0.1 (R). Tie rule: in the 0.7 group the irrelevant item
    # ranks first -> ranked relevance N N R R R.
    # plain: 1/3, 2/4, 3/5 -> AP = (1/3 + 1/2 + 3/5) / 3 = 43/90 = 0.477777...
    # VOC:   monotone from the right: 3/5 at every positive -> AP = 0.6
    # (sklearn on the raw tied scores would give 2/3 * 2/4 + 1/3 * 3/5 = 0.533333: it scores a tie group
    # as one threshold; the pessimistic rule is lower.)
    for dtype in (np.float64, np.float32):
        s = np.array([[0.9, 0.7, 0.7, 0.7, 0.1]], dtype=dtype)
        out = evaluate_scores(s, ["b"], ["a", "b", "a", "b", "b"])
        assert out["map_all"] == pytest.approx(43 / 90, abs=1e-12)
        assert out["map_all_voc"] == pytest.approx(0.6, abs=1e-12)
    assert average_precision_score([0, 1, 0, 1, 1], [0.9, 0.7, 0.7, 0.7, 0.1]) == pytest.approx(1.6 / 3)


def test_hand_signed_zero_is_a_tie() -> None:
    # -0.0 == +0.0: a tie, so the irrelevant item ranks first whatever the sign -> AP = 1/2 (VOC too)
    for dtype in (np.float64, np.float32):
        for row in ([0.0, -0.0], [-0.0, 0.0]):
            out = evaluate_scores(np.array([row], dtype=dtype), [1], [1, 0])
            assert out["map_all"] == 0.5 and out["map_all_voc"] == 0.5


def test_hand_top200_normalisation() -> None:
    # 300 items, 250 positives, ranked: 100 R, then 50 N, then 150 R.
    # P@100 = 100/100 = 1; P@200 = (100 + 50) / 200 = 0.75
    # VOC@200: in the top 200 the precision at the i-th late positive (rank 150+i) is (100+i)/(150+i),
    #   increasing in i, so the monotone precision is 1 for the first 100 and 150/200 = 0.75 for the 50
    #   late ones; normalised by min(200, 250) = 200: (100 + 50 * 0.75) / 200 = 0.6875
    # plain@200: (100 + sum_{i=1..50} (100+i)/(150+i)) / 200
    # VOC@all: late precisions (100+i)/(150+i), i = 1..150, max at the end 250/300 = 5/6:
    #   (100 + 150 * 5/6) / 250 = 0.9
    # plain@all: (100 + sum_{i=1..150} (100+i)/(150+i)) / 250
    rel = np.array([1] * 100 + [0] * 50 + [1] * 150)
    s = -np.arange(300, dtype=np.float64)[None, :]
    out = evaluate_scores(s, [1], rel)
    assert out["prec_100"] == 1.0 and out["prec_200"] == 0.75
    assert out["map_200_voc"] == pytest.approx(0.6875, abs=1e-12)
    assert out["map_200"] == pytest.approx((100 + sum((100 + i) / (150 + i) for i in range(1, 51))) / 200)
    assert out["map_all_voc"] == pytest.approx(0.9, abs=1e-12)
    assert out["map_all"] == pytest.approx((100 + sum((100 + i) / (150 + i) for i in range(1, 151))) / 250)


def test_hand_fine_grained() -> None:
    # gallery: photos a1 a2 a3 (class A), b1 b2 (class B)
    gl = ["A", "A", "A", "B", "B"]
    gi = ["a1", "a2", "a3", "b1", "b2"]
    ql = ["A", "B", "A"]
    qi = ["a2", "b1", "a9"]  # a9 has no photo in the gallery: excluded
    s = np.array(
        [
            # a2 among class A: a1 scores higher, a3 ties (ranks before it): rank 3.
            # The class-B photos score higher but do not count.
            [0.9, 0.5, 0.5, 0.95, 0.99],
            # b1 is first among class B (rank 1) although class-A photos score higher
            [0.99, 0.98, 0.97, 0.3, 0.2],
            [0.1, 0.2, 0.3, 0.4, 0.5],
        ]
    )
    out = evaluate_scores(s, ql, gl, qi, gi)
    assert out["acc_1"] == 0.5  # only b1
    assert out["acc_5"] == 1.0 and out["acc_10"] == 1.0
    assert out["acc_queries"] == 2 and out["acc_queries_without_pair"] == 1
    assert out == {**out, **ref_acc(s, np.array(ql), np.array(gl), np.array(qi), np.array(gi))}


def test_duplicate_instance_in_class_raises() -> None:
    s = np.zeros((1, 3))
    with pytest.raises(ValueError, match="appear once"):
        evaluate_scores(s, [0], [0, 0, 1], [7], [7, 7, 8])
    # the same instance id in two different classes is two different photos
    out = evaluate_scores(s, [0], [0, 1, 1], [7], [7, 7, 8])
    assert out["acc_queries"] == 1


# ------------------------------------------------------------------------- random vs reference
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nq,ng,ncls", [(25, 40, 3), (12, 520, 2)])
def test_random_against_reference(kind: str, nq: int, ng: int, ncls: int) -> None:
    # (25, 40): gallery smaller than K = 100 / 200; (12, 520): classes with more than 200 positives
    s, ql, gl = make_data(KINDS.index(kind) * 1000 + ng, nq, ng, ncls, kind)
    expected, per_query = ref_evaluate(s, ql, gl)
    out = evaluate_scores(s, ql, gl, block_size=5, per_class=True)
    assert out["n_queries"] == nq and out["n_gallery"] == ng
    assert out["n_queries_without_positive"] == expected["n_queries_without_positive"] >= 2
    for k in CATEGORY_KEYS:
        assert out[k] == pytest.approx(expected[k], abs=1e-12), k
    # per-class AP: mean over the class's queries that have a positive
    for key, ref_key in (("per_class_ap", "map_all"), ("per_class_ap_voc", "map_all_voc")):
        ref = {}
        for c in np.unique(ql):
            v = [p[ref_key] for p, lab in zip(per_query, ql, strict=True) if lab == c and p is not None]
            if v:
                ref[int(c)] = float(np.mean(v))
        assert out[key].keys() == ref.keys()
        for c in ref:
            assert out[key][c] == pytest.approx(ref[c], abs=1e-12)
    assert ncls in out["per_class_ap"]  # the one-positive class


@pytest.mark.parametrize("kind", ("f64_int_ties", "f64_ties_lexsort", "f64_continuous", "f32"))
def test_fine_grained_random_against_reference(kind: str) -> None:
    s, _, gl = make_data(5, 40, 60, 3, kind)
    gi = np.array([f"p{j}" for j in range(60)])
    pick = np.random.default_rng(1).integers(0, 75, 40)  # >= 60: a photo that is not in the gallery
    qi = np.array([gi[j] if j < 60 else f"missing{j}" for j in pick])
    ql = np.array([gl[j] if j < 60 else 0 for j in pick])
    ql[:4] = (ql[:4] + 1) % 3  # the sketch's photo exists but in another class: no pair either
    out = evaluate_scores(s, ql, gl, qi, gi, block_size=7)
    ref = ref_acc(s, ql, gl, qi, gi)
    assert out["acc_queries"] == ref["acc_queries"] > 10
    assert out["acc_queries"] + out["acc_queries_without_pair"] == 40
    for k in (1, 5, 10):
        assert out[f"acc_{k}"] == pytest.approx(ref[f"acc_{k}"], abs=1e-12)


@pytest.mark.parametrize("levels", [11, 101])
def test_pr_curve_against_reference(levels: int) -> None:
    s, ql, gl = make_data(3, 20, 230, 2, "f64_int_ties")
    got = precision_recall_curve_points(s, ql, gl, n_levels=levels, block_size=6)
    assert got["recall"] == pytest.approx([i / (levels - 1) for i in range(levels)])
    assert got["precision"] == pytest.approx(ref_pr(s, ql, gl, levels), abs=1e-12)
    same_pass = evaluate_scores(s, ql, gl, pr_levels=levels)["pr_curve"]
    assert same_pass == got


# ------------------------------------------------------------------------------------ invariances
def _fg_data(seed: int = 11):
    s, ql, gl = make_data(seed, 23, 150, 4, "f32_ties")
    gi = np.arange(150)
    qi = np.random.default_rng(seed).integers(0, 170, 23)
    return s, ql, gl, qi, gi


def test_block_size_and_threads_do_not_change_results() -> None:
    s, ql, gl, qi, gi = _fg_data()
    full = evaluate_scores(s, ql, gl, qi, gi, block_size=len(ql), per_class=True, pr_levels=11, n_threads=1)
    for bs in (1, 3, 7, 10_000):
        for nt in (1, 2, 3):
            out = evaluate_scores(s, ql, gl, qi, gi, block_size=bs, per_class=True, pr_levels=11, n_threads=nt)
            assert same(out, full), (bs, nt)


@pytest.mark.parametrize("kind", ("f64_int_ties", "f64_ties_lexsort", "f32_ties"))
def test_gallery_order_does_not_change_results(kind: str) -> None:
    s, ql, gl = make_data(4, 30, 240, 3, kind)
    gi = np.arange(240)
    qi = np.random.default_rng(0).integers(0, 260, 30)
    base = evaluate_scores(s, ql, gl, qi, gi, per_class=True, pr_levels=11)
    for seed in range(3):
        p = np.random.default_rng(seed).permutation(240)
        out = evaluate_scores(s[:, p], ql, gl[p], qi, gi[p], per_class=True, pr_levels=11)
        assert same(out, base)


def test_torch_input_equals_numpy() -> None:
    torch = pytest.importorskip("torch")
    for kind in ("f64_continuous", "f32_ties"):
        s, ql, gl, qi, gi = _fg_data()
        if kind == "f64_continuous":
            s = np.random.default_rng(0).standard_normal(s.shape)
        expected = evaluate_scores(s, ql, gl, qi, gi, per_class=True)
        out = evaluate_scores(
            torch.from_numpy(s), torch.from_numpy(ql), torch.from_numpy(gl), torch.from_numpy(qi),
            torch.from_numpy(gi), per_class=True,
        )  # fmt: skip
        assert same(out, expected)
        s_fn = evaluate_scores(lambda a, b, s=s: torch.from_numpy(s[a:b]), ql, gl, qi, gi, per_class=True)
        assert same(s_fn, expected)
    emb_q = np.random.default_rng(1).standard_normal((9, 8)).astype(np.float32)
    emb_g = np.random.default_rng(2).standard_normal((30, 8)).astype(np.float32)
    labels_q, labels_g = np.arange(9) % 3, np.arange(30) % 3
    assert same(
        evaluate_embeddings(torch.from_numpy(emb_q), torch.from_numpy(emb_g), labels_q, labels_g),
        evaluate_embeddings(emb_q, emb_g, labels_q, labels_g),
    )


def test_callable_scores_equal_array() -> None:
    s, ql, gl, qi, gi = _fg_data()
    calls = []

    def scores_fn(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        return s[a:b]

    expected = evaluate_scores(s, ql, gl, qi, gi, per_class=True, pr_levels=11)
    out = evaluate_scores(scores_fn, ql, gl, qi, gi, block_size=10, per_class=True, pr_levels=11)
    assert same(out, expected)
    assert calls == [(0, 10), (10, 20), (20, 23)]
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(lambda a, b: s[a:b, :-1], ql, gl)


def test_string_labels_equal_int_labels() -> None:
    s, ql, gl = make_data(8, 20, 60, 3, "f32_ties")
    names = np.array(["car_(sedan)", "hot-air_balloon", "bottle opener", "jack-o-lantern", "x", "y"])
    out_int = evaluate_scores(s, ql, gl, per_class=True)
    out_str = evaluate_scores(s, names[ql], names[gl], per_class=True)
    for k in CATEGORY_KEYS:
        assert out_int[k] == out_str[k]
    assert out_str["per_class_ap"] == {str(names[c]): v for c, v in out_int["per_class_ap"].items()}


def test_evaluate_embeddings_is_cosine() -> None:
    rng = np.random.default_rng(6)
    q, g = rng.standard_normal((17, 12)) * 3, rng.standard_normal((45, 12))
    g[4] = 0.0  # a zero vector scores 0 with everything
    ql, gl = rng.integers(0, 4, 17), rng.integers(0, 3, 45)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
    expected = evaluate_scores(qn @ gn.T, ql, gl, per_class=True)
    out = evaluate_embeddings(q, g, ql, gl, block_size=4, per_class=True)
    assert out.keys() == expected.keys()
    for k in CATEGORY_KEYS:
        assert out[k] == pytest.approx(expected[k], abs=1e-12)
    assert out["n_queries_without_positive"] == expected["n_queries_without_positive"] == int((ql == 3).sum())


def test_no_query_has_a_positive_and_bad_inputs() -> None:
    out = evaluate_scores(np.ones((2, 3)), [5, 6], [0, 1, 2])
    assert out["n_queries_without_positive"] == 2
    assert all(math.isnan(out[k]) for k in CATEGORY_KEYS)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(np.array([[0.1, np.nan]]), [0], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(np.array([[0.1, np.nan]], dtype=np.float32), [0], [0, 1])
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(np.ones((2, 3)), [0], [0, 1, 2])
    with pytest.raises(ValueError, match="both"):
        evaluate_scores(np.ones((1, 3)), [0], [0, 1, 2], query_instances=[1])


def test_packed_key_and_lexsort_paths_rank_identically() -> None:
    rng = np.random.default_rng(9)
    ints = rng.integers(-4, 4, (6, 300))
    rel = rng.random((6, 300)) < 0.3
    fast = metrics._rank_positives(ints.astype(np.float32), rel, True)
    exact = metrics._rank_positives(ints + 0.25 + 1e-12, rel, True)  # same order and ties, float64 only
    assert np.array_equal(fast[0], exact[0])
    # the score keys of the positives order them the same way too
    for key in (fast[1], exact[1]):
        _, inverse = np.unique(key, return_inverse=True)
        assert np.array_equal(inverse, np.unique(fast[1], return_inverse=True)[1])
