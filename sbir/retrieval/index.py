"""The nearest-neighbour index of a gallery's photo embeddings (FAISS), searched by cosine.

The index holds the L2-normalised photo embeddings (so inner product = cosine, the ``token`` score of
:func:`sbir.retrieval.evaluate.cosine_scores`) in one of three kinds (:class:`IndexSpec`):

- ``exact``: ``IndexFlatIP``, every photo scored — the same ranking as a numpy scan of the whole gallery;
- ``ivf``: ``IndexIVFFlat`` (inner product): the photos clustered into ``nlist`` lists by k-means (seeded), a
  query scores the photos of its ``nprobe`` nearest lists only;
- ``hnsw``: ``IndexHNSWFlat`` (inner product): a graph of ``m`` neighbours per photo, searched with a
  candidate list of ``ef_search``.

The approximate kinds trade recall for speed (bench/bench_index.py measures both). Ties are ordered by gallery
row (lower first) whatever FAISS returns, so a ranking is the same from run to run and the same as numpy's
stable ``argsort``: :meth:`GalleryIndex.search` asks the exact index for more neighbours until the k-th score is
no longer tied with the last one fetched.

A gallery folder stores its index as :data:`INDEX_NAME` beside ``photo.npy``, described in ``info.json``'s
``"faiss"`` entry (:meth:`IndexSpec.record`); a folder without one (the embed stage's) gets an exact index built
when it is opened (:func:`gallery_index`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sbir.errors import SbirError

INDEX_TYPES = ("exact", "ivf", "hnsw")
#: the index file in a gallery folder
INDEX_NAME = "photo.faiss"
#: rows normalised and added to FAISS at a time (bounds the extra memory of a big gallery to one chunk)
ADD_CHUNK = 65_536
#: k-means of ``ivf``: training points per list (FAISS warns below 39), at most this many in all
TRAIN_POINTS_PER_LIST, TRAIN_POINTS_MAX = 64, 262_144


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and how to search it.

    ``nlist`` (``ivf``): lists, at most one per 39 photos (fewer photos: fewer lists); ``nprobe``: lists scanned
    per query. ``m`` (``hnsw``): graph neighbours per photo; ``ef_construction`` / ``ef_search``: candidate list
    lengths when building / searching (at least the number of neighbours asked for). ``seed``: k-means.
    """

    kind: str = "exact"
    nlist: int = 1024
    nprobe: int = 16
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_TYPES:
            raise SbirError(f"unknown index type '{self.kind}': use one of {', '.join(INDEX_TYPES)}")
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise SbirError(f"index option {name} must be at least 1, got {getattr(self, name)}")

    @property
    def exact(self) -> bool:
        return self.kind == "exact"

    def record(self) -> dict:
        """What ``info.json`` says of the index (only the options of its kind)."""
        keep = {"exact": (), "ivf": ("nlist", "nprobe", "seed"), "hnsw": ("m", "ef_construction", "ef_search")}
        return {"type": self.kind, "file": INDEX_NAME,
                **{key: value for key, value in asdict(self).items() if key in keep[self.kind]}}

    @classmethod
    def from_record(cls, record: dict) -> IndexSpec:
        options = {key: record[key] for key in ("nlist", "nprobe", "m", "ef_construction", "ef_search", "seed")
                   if key in record}
        return cls(kind=record.get("type", "exact"), **options)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (zero rows left zero), as :func:`sbir.retrieval.evaluate.cosine_scores`
    normalises them."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms == 0, 1, norms))


def _new_index(spec: IndexSpec, dim: int, rows: int):
    import faiss

    if spec.kind == "exact":
        return faiss.IndexFlatIP(dim), spec
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
        return index, spec
    nlist = max(1, min(spec.nlist, rows // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = spec.seed
    index.nprobe = min(spec.nprobe, nlist)
    return index, IndexSpec(spec.kind, nlist, min(spec.nprobe, nlist), spec.m, spec.ef_construction, spec.ef_search,
                            spec.seed)


def build_index(vectors: np.ndarray, spec: IndexSpec | None = None) -> GalleryIndex:
    """The :class:`GalleryIndex` of ``vectors`` ``[N, D]`` (normalised here, :data:`ADD_CHUNK` rows at a time, so
    a big gallery is not copied whole). ``ivf`` lists are trained on an evenly spaced sample of the rows."""
    rows, dim = vectors.shape
    spec = spec or IndexSpec()
    if rows == 0:
        raise SbirError("cannot index an empty gallery")
    index, spec = _new_index(spec, dim, rows)
    if spec.kind == "ivf":
        sample = np.linspace(0, rows - 1, min(rows, TRAIN_POINTS_MAX, TRAIN_POINTS_PER_LIST * spec.nlist)).astype(int)
        index.train(unit_rows(vectors[np.unique(sample)]))
    for start in range(0, rows, ADD_CHUNK):
        index.add(unit_rows(vectors[start:start + ADD_CHUNK]))
    return GalleryIndex(index, spec)


class GalleryIndex:
    """A FAISS index of a gallery's photos and the :class:`IndexSpec` it was built with. Searching is thread-safe
    (FAISS reads the index only; the search options travel with each call, the index is never changed)."""

    def __init__(self, index, spec: IndexSpec) -> None:
        self.index, self.spec = index, spec

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def _params(self, k: int):
        import faiss

        if self.spec.kind == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.spec.nprobe)
        if self.spec.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.spec.ef_search, k))
        return None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best photos of each query ``[Q, D]`` by cosine: ``(scores [Q, k] float32, rows [Q, k] int64)``,
        best first, ties by lower row. An approximate index may find fewer than ``k`` (row -1, score -inf)."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise SbirError(f"queries of shape {tuple(queries.shape)} for an index of {self.dim}-d photos")
        if k < 1:
            raise SbirError(f"the number of photos to find must be at least 1, got {k}")
        unit, total = unit_rows(queries), len(self)
        k = min(k, total)
        fetch = min(total, k + 8)
        while True:
            scores, rows = self.index.search(unit, fetch, params=self._params(fetch))
            if not self.spec.exact or fetch == total or not (scores[:, -1] >= scores[:, k - 1]).any():
                break  # (exact) the last fetched score is below the k-th: every photo tied with it is fetched
            fetch = min(total, 2 * fetch)
        best_scores = np.full((len(unit), k), -np.inf, dtype=np.float32)
        best_rows = np.full((len(unit), k), -1, dtype=np.int64)
        for query, (query_scores, query_rows) in enumerate(zip(scores, rows)):
            found = query_rows >= 0
            order = np.lexsort((query_rows[found], -query_scores[found]))[:k]
            best_scores[query, :len(order)] = query_scores[found][order]
            best_rows[query, :len(order)] = query_rows[found][order]
        return best_scores, best_rows

    def write(self, path: Path) -> None:
        """Write the index to ``path`` (inside a gallery's temporary folder: the folder is what appears atomically)."""
        import faiss

        faiss.write_index(self.index, str(path))


def read_index(path: Path, spec: IndexSpec) -> GalleryIndex:
    """The index written by :meth:`GalleryIndex.write` (``spec``: its record in ``info.json``)."""
    import faiss

    try:
        return GalleryIndex(faiss.read_index(str(path)), spec)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise SbirError(f"{path}: not a readable FAISS index ({reason}); make the index again with 'sbir index'") \
            from None


def gallery_index(folder: Path, info: dict, vectors: np.ndarray) -> GalleryIndex:
    """The index of the gallery folder ``folder``: its :data:`INDEX_NAME` when ``info.json`` records one (checked
    against the ``vectors`` of ``photo.npy``: same count and size), otherwise an exact index built now."""
    folder = Path(folder)
    record = info.get("faiss")
    if not record or not (folder / INDEX_NAME).is_file():
        if record:
            raise SbirError(f"{folder}: {INDEX_NAME} is missing (info.json records a {record.get('type')} index); "
                            "make the index again with 'sbir index'")
        return build_index(vectors)
    index = read_index(folder / INDEX_NAME, IndexSpec.from_record(record))
    if len(index) != len(vectors) or index.dim != vectors.shape[1]:
        raise SbirError(f"{folder / INDEX_NAME}: {len(index)} photos of {index.dim} dimensions, but photo.npy holds "
                        f"{len(vectors)} of {vectors.shape[1]}; make the index again with 'sbir index'")
    return index
