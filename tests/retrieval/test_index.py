"""The gallery's FAISS index (:mod:`sbir.retrieval.index`): the exact index ranks as the numpy scan did (same rows
and classes, scores to float tolerance, ties by gallery row) on seeded vectors and on real galleries (a folder
indexed with ``sbir index``, the embed stage's output, sketchy-mini photos when present); the approximate kinds
find most of the exact neighbours; the index is written into the gallery folder and a stale or damaged one is
refused with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sbir.cli.main import main
from sbir.data.images import load_user_image
from sbir.data.loader import model_input
from sbir.errors import SbirError
from sbir.retrieval.embed import embed_split
from sbir.retrieval.evaluate import cosine_scores
from sbir.retrieval.index import INDEX_NAME, IndexSpec, build_index, gallery_index
from sbir.retrieval.search import index_folder, open_gallery, search
from sbir.utils.device import torch_threads
from tests.helpers import ROOT, drawing, invoke, one_line_error, runner, shared


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread: the backbone runs on a few images at a time on a shared 2-core machine."""
    with torch_threads(1):
        yield


def clustered(rows: int, dim: int, clusters: int, seed: int, spread: float = 0.3) -> np.ndarray:
    """Seeded float32 vectors around ``clusters`` random centres (what embeddings of a few classes look like)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    return (centres[rng.integers(0, clusters, rows)] + spread * rng.standard_normal((rows, dim))).astype(np.float32)


def numpy_scan(queries: np.ndarray, photos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``sbir search`` did before the index: cosine of every photo, stable argsort (ties: lower row)."""
    scores = cosine_scores(queries, photos)(0, len(queries))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_exact_index_ranks_as_the_numpy_scan_with_ties_by_row():
    photos = clustered(3000, 96, 20, seed=0)
    photos[1000:1040] = photos[7]  # 41 copies of one photo: tied scores for every query
    photos[2000:2003] = 0.0  # zero rows score 0, as in the numpy scan
    queries = np.concatenate([clustered(60, 96, 20, seed=1), photos[[7, 1020, 5]]])
    for k in (1, 10, 25, 50):
        scores, rows = build_index(photos).search(queries, k)
        expected_scores, expected_rows = numpy_scan(queries, photos, k)
        assert rows.shape == (63, k)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    tied = build_index(photos).search(photos[[7]], 30)[1][0]
    assert tied.tolist() == [7, *range(1000, 1029)], "ties: lower row first, whatever FAISS returns"


def test_ties_wider_than_the_first_fetch_are_still_ordered_by_row():
    photos = np.repeat(np.eye(4, 16, dtype=np.float32), 50, axis=0)[::-1].copy()  # 4 groups of 50 equal rows
    scores, rows = build_index(photos).search(np.eye(1, 16, dtype=np.float32), 60)
    assert rows.shape == (1, 60)
    assert rows[0, :50].tolist() == list(range(150, 200)) and (scores[0, :50] == 1).all()
    assert rows[0, 50:].tolist() == list(range(10)), "the next tied group (score 0) from its lowest row"


@pytest.mark.parametrize("spec", [IndexSpec("ivf", nlist=64, nprobe=8), IndexSpec("hnsw", m=16, ef_search=256)],
                         ids=["ivf", "hnsw"])
def test_approximate_indexes_find_most_exact_neighbours(spec):
    photos, queries = clustered(6000, 64, 64, seed=2), clustered(100, 64, 64, seed=3)
    exact = build_index(photos).search(queries, 10)[1]
    index = build_index(photos, spec)
    assert len(index) == 6000 and index.spec.kind == spec.kind
    found = index.search(queries, 10)[1]
    assert found.shape == (100, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.9, f"recall@10 {recall:.3f}"


def test_ivf_lists_are_capped_by_the_gallery_size():
    index = build_index(clustered(400, 8, 4, seed=4), IndexSpec("ivf", nlist=1024, nprobe=64))
    assert index.spec.nlist == 400 // 39 and index.spec.nprobe == 400 // 39
    assert index.spec.record() == {"type": "ivf", "file": INDEX_NAME, "nlist": 10, "nprobe": 10, "seed": 0}


def test_bad_index_options_are_refused():
    with pytest.raises(SbirError, match="unknown index type 'annoy'"):
        IndexSpec("annoy")
    with pytest.raises(SbirError, match="nprobe must be at least 1"):
        IndexSpec("ivf", nprobe=0)
    index = build_index(clustered(50, 8, 2, seed=5))
    with pytest.raises(SbirError, match="for an index of 8-d photos"):
        index.search(np.zeros((1, 9), dtype=np.float32), 3)


# ----------------------------------------------------------------------------------------------- real galleries
def _same_as_numpy(gallery, model, sketches, k: int) -> int:
    """Compare :func:`search` (the gallery's index) with the numpy scan for each sketch; return the count."""
    config = model.image_config
    for sketch in sketches:
        with torch.inference_mode():
            query = model.embed(model_input([sketch], config, torch.device("cpu")), "sketch").float().numpy()
        expected_scores, expected_rows = numpy_scan(query, gallery.photos.vectors, k)
        hits = search(model, gallery, sketch, top_k=k)
        assert [hit.rank for hit in hits] == list(range(1, min(k, len(gallery.photos)) + 1))
        assert [hit.row for hit in hits] == expected_rows[0].tolist()
        assert [hit.class_name for hit in hits] == [gallery.photos.classes[row] for row in expected_rows[0]]
        assert [hit.score for hit in hits] == pytest.approx(expected_scores[0].tolist(), abs=1e-5)
    return len(sketches)


def _sketches(n: int) -> list:
    return [drawing(seed=seed).convert("RGB").resize((224, 224)) for seed in range(n)]


def test_folder_gallery_searches_as_the_numpy_scan(tiny, photo_folder, tmp_path):
    info = index_folder(tiny.model, photo_folder, tmp_path / "gallery")
    assert info["faiss"] == {"type": "exact", "file": INDEX_NAME} and (tmp_path / "gallery" / INDEX_NAME).is_file()
    gallery = open_gallery(tmp_path / "gallery")
    assert gallery.index.spec.kind == "exact" and len(gallery.index) == 5
    assert _same_as_numpy(gallery, tiny.model, _sketches(4), k=5) == 4


def test_embed_stage_gallery_gets_an_exact_index_and_searches_as_the_numpy_scan(tiny, synthetic_shards, tmp_path):
    embed_split(tiny.model, synthetic_shards, tmp_path / "embeddings", workers=0, progress=False,
                info={"method": tiny.model.method, "backbone": tiny.model.backbone.name})
    assert not (tmp_path / "embeddings" / INDEX_NAME).exists()
    gallery = open_gallery(tmp_path / "embeddings", synthetic_shards)
    assert gallery.index.spec.kind == "exact" and len(gallery.index) == len(gallery.photos) == 4
    assert _same_as_numpy(gallery, tiny.model, _sketches(3), k=3) == 3


def test_sketchy_photos_search_as_the_numpy_scan(tiny, tmp_path):
    photos = shared("sketchy-mini") / "256x256" / "photo" / "tx_000000000000"
    sketches = shared("sketchy-mini") / "256x256" / "sketch" / "tx_000000000000"
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("airplane", "alarm_clock", "ant"):
        (root / name).symlink_to(photos / name)
    index_folder(tiny.model, root, tmp_path / "gallery", batch_size=16)
    gallery = open_gallery(tmp_path / "gallery")
    assert len(gallery.photos) == len(list(root.glob("*/*.jpg"))) > 30
    queries = [load_user_image(sorted((sketches / name).glob("*.png"))[0], "sketch", 224)
               for name in ("airplane", "ant")]
    assert _same_as_numpy(gallery, tiny.model, queries, k=20) == 2


# ----------------------------------------------------------------------------------------------- the gallery folder
def test_sbir_index_writes_an_approximate_index_that_search_uses(tiny, photo_folder, tmp_path):
    torch.manual_seed(0)
    result = invoke(main, "index", photo_folder, "--out", tmp_path / "gallery", "--model", tiny.folder,
                    "--index-type", "hnsw", "--hnsw-m", "8", "--ef-search", "16")
    assert result.exit_code == 0 and "hnsw index" in result.stdout, result.output
    info = json.loads((tmp_path / "gallery" / "info.json").read_text())
    assert info["faiss"] == {"type": "hnsw", "file": INDEX_NAME, "m": 8, "ef_construction": 80, "ef_search": 16}
    gallery = open_gallery(tmp_path / "gallery")
    assert gallery.index.spec.kind == "hnsw" and gallery.index.spec.m == 8
    hits = search(tiny.model, gallery, _sketches(1)[0], top_k=5)
    assert sorted(hit.row for hit in hits) == list(range(5)), "5 photos: every one found"
    drawing().save(tmp_path / "query.png")
    torch.manual_seed(0)
    searched = invoke(main, "search", "--sketch", tmp_path / "query.png", "--index", tmp_path / "gallery",
                      "--model", tiny.folder, "--top-k", "3", "--out", tmp_path / "result.png")
    assert searched.exit_code == 0, searched.output
    assert len(searched.stdout.strip().splitlines()) == 4


def test_a_stale_or_damaged_index_is_refused_in_one_line(tiny, photo_folder, tmp_path):
    gallery_dir = tmp_path / "gallery"
    index_folder(tiny.model, photo_folder, gallery_dir)
    info = json.loads((gallery_dir / "info.json").read_text())
    build_index(clustered(3, 1280, 1, seed=6)).write(gallery_dir / INDEX_NAME)  # 3 photos, photo.npy holds 5
    with pytest.raises(SbirError, match="3 photos of 1280 dimensions, but photo.npy holds 5"):
        gallery_index(gallery_dir, info, np.zeros((5, 1280), np.float32))
    (gallery_dir / INDEX_NAME).write_bytes(b"not an index")
    drawing().save(tmp_path / "query.png")
    line = one_line_error(runner().invoke(main, ["search", "--sketch", str(tmp_path / "query.png"), "--index",
                                                 str(gallery_dir), "--model", str(tiny.folder)]))
    assert f"{gallery_dir / INDEX_NAME}: not a readable FAISS index" in line and "sbir index" in line
    (gallery_dir / INDEX_NAME).unlink()
    with pytest.raises(SbirError, match="photo.faiss is missing"):
        open_gallery(gallery_dir)


def test_sbir_index_keeps_the_output_rules(tiny, photo_folder, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    line = one_line_error(runner().invoke(main, ["index", str(photo_folder), "--out", str(tmp_path / "mine"),
                                                 "--model", str(tiny.folder), "--index-type", "ivf"]))
    assert "not an output of this command" in line
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary left behind"


def test_index_files_are_in_the_gallery_folder_only(tiny, photo_folder, tmp_path):
    index_folder(tiny.model, photo_folder, tmp_path / "gallery", index_spec=IndexSpec("ivf"))
    assert sorted(p.name for p in (tmp_path / "gallery").iterdir()) == ["info.json", "photo.faiss", "photo.json",
                                                                       "photo.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]
    assert not list(Path(photo_folder).rglob("*.faiss"))


def test_the_index_benchmark_runs_tiny():
    """bench/bench_index.py end to end at a toy size (its figures are the benchmark's business, not a test's)."""
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_index.py"), "--size", "2000", "--dim", "32",
                             "--clusters", "10", "--queries", "20", "--single", "3", "--nlist", "16", "--nprobe", "4",
                             "--hnsw", "--ef-search", "32", "--threads", "1"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    summaries = [json.loads(line.removeprefix("SUMMARY ")) for line in result.stdout.splitlines()
                 if line.startswith("SUMMARY ")]
    assert [s["measure"] for s in summaries] == ["exact", "ivf", "hnsw"]
    assert summaries[0]["top10_agree"] is True and summaries[0]["index_bytes"] == 2000 * 32 * 4
    assert all(0 <= s["recall_at_10"] <= 1 for s in summaries[1:])
