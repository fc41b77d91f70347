"""Search a photo gallery with a person's own sketch (``sbir search``), and make a gallery of a folder of
photos (``sbir index``).

A gallery is an embeddings folder in the layout of :mod:`sbir.retrieval.embeddings` (``photo.npy``, ``photo.json``,
``info.json``), of one of two kinds:

- the ``embed`` stage's output (``data/embeddings``): the photos of a sharded dataset's part; their images
  are read back from the shards (``info.json`` names the part) by sample key;
- :func:`index_folder` (``sbir index PHOTOS_DIR --out DIR``): every photo under a folder. ``key`` = the
  path relative to the folder, ``class`` = the name of the photo's parent folder (``""`` at the top),
  ``instance`` = the file stem; ``info.json`` records ``photo_root`` (absolute), the model (method,
  backbone, backbone weights, sha256 of the trained weights, folder) and ``skipped``: every file that is
  not a usable photo, with the reason (:func:`sbir.data.images.load_user_image`). Hidden files and folders
  (names starting with ``.``) are not looked at. The folder also holds the photos' FAISS index
  (:mod:`sbir.retrieval.index`: exact by default, ``ivf`` or ``hnsw`` on request), recorded in ``info.json``'s
  ``faiss``; the embed stage's galleries get an exact one built when they are opened.

A query is embedded with the model that made the gallery — :func:`check_model` compares the gallery's
``info.json`` with the model folder's identity (:func:`sbir.models.folder.model_identity`) and refuses a
mismatch — and ranked against the gallery (:func:`search`):

- ``token``: cosine of the embeddings, found by the gallery's index (exact: every photo of the gallery, the same
  ranking as a numpy scan; ties by gallery row);
- ``rerank`` (models with a relation network, ``zse``): the ``token`` shortlist of ``shortlist`` photos is
  re-scored by the relation network (as :func:`sbir.models.zse.rerank_scores` does), on pair features computed
  from the query's and the shortlisted photos' images.

:func:`result_grid` draws the query and its ranked photos into a PNG.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sbir.data.images import fit, load_user_image, to_8bit
from sbir.data.loader import model_input
from sbir.data.shards.reader import shard_paths
from sbir.errors import SbirError
from sbir.models.base import RetrievalModel
from sbir.retrieval.embeddings import (
    INFO_NAME,
    Embeddings,
    is_embeddings_folder,
    read_embeddings,
    read_info,
    write_embeddings,
)
from sbir.retrieval.evaluate import load_images
from sbir.retrieval.index import INDEX_NAME, GalleryIndex, IndexSpec, build_index, gallery_index
from sbir.utils.atomic import check_output
from sbir.utils.device import model_device
from sbir.utils.figures import new_figure, save_figure

SEARCH_MODES = ("token", "rerank")
#: The PNG text chunk that marks a result grid as written by ``sbir search`` (so it may be overwritten).
RESULT_GRID_SOFTWARE = "sbir search"
INDEX_FILES = ("photo.npy", "photo.json", INFO_NAME, INDEX_NAME)


def retrieval_modes(model: RetrievalModel) -> tuple[str, ...]:
    """The search modes ``model`` supports: ``token`` always, ``rerank`` with a relation network."""
    return tuple(mode for mode in SEARCH_MODES if mode in getattr(model, "retrieval_modes", ("token",)))


# ----------------------------------------------------------------------------------------------- indexing
@dataclass
class Skipped:
    """A file under the photo folder that was not indexed, and why."""

    path: str  # relative to the photo folder
    reason: str


def photo_files(root: Path) -> list[Path]:
    """Every file under ``root`` (symbolic links followed, each real folder once), hidden names left out,
    in a fixed order: a folder's files sorted by name, then its subfolders sorted by name."""
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(folder) / name for name in sorted(names) if not name.startswith(".")]
    return files


def _reason(error: SbirError, path: Path) -> str:
    message = str(error)
    return message.removeprefix(f"{path}: ")


@torch.inference_mode()
def index_folder(model: RetrievalModel, photo_root: Path, out: Path, identity: dict | None = None, batch_size: int = 16,
                 progress: bool = False, index_spec: IndexSpec | None = None) -> dict:
    """Embed every photo under ``photo_root`` with ``model`` into the gallery folder ``out`` (written
    atomically, see the module docstring for its contents); return its ``info.json``.

    ``identity``: what identifies the model (:func:`sbir.models.folder.model_identity`, plus e.g. its folder),
    recorded in ``info.json``. Files that are not usable photos are skipped and listed there; an error is
    raised when no photo is left. ``index_spec``: the FAISS index written beside the embeddings (default exact).
    """
    photo_root, out = Path(photo_root), Path(out)
    if not photo_root.exists():
        raise SbirError(f"{photo_root}: no such folder")
    if not photo_root.is_dir():
        raise SbirError(f"{photo_root}: not a folder (give the folder of the photos to index)")
    if batch_size < 1:
        raise SbirError(f"batch size must be at least 1, got {batch_size}")
    inputs = [photo_root, (identity or {}).get("model")]
    check_output(out, is_embeddings_folder, inputs)
    files = photo_files(photo_root)
    if not files:
        raise SbirError(f"{photo_root}: no files to index")
    config, device = model.image_config, model_device(model)
    keys, vectors, skipped = [], [], []
    batch: list[Image.Image] = []

    def flush() -> None:
        if batch:
            vectors.append(model.embed(model_input(batch, config, device), "photo").float().cpu().numpy())
            batch.clear()

    with tqdm(total=len(files), desc="index", unit="photo", disable=not progress, file=sys.stderr) as bar:
        for path in files:
            relative = path.relative_to(photo_root).as_posix()
            try:
                batch.append(load_user_image(path, "photo", config.size))
                keys.append(relative)
            except SbirError as error:
                skipped.append(Skipped(relative, _reason(error, path)))
            if len(batch) == batch_size:
                flush()
            bar.update(1)
        flush()
    if not keys:
        raise SbirError(f"{photo_root}: none of its {len(files)} files is a usable photo (e.g. {skipped[0].path}: "
                        f"{skipped[0].reason})")
    photos = Embeddings(np.concatenate(vectors), keys, [Path(key).parent.name for key in keys],
                        [Path(key).stem for key in keys])
    index = build_index(photos.vectors, index_spec)
    info = {**(identity or {}), "kind": "folder", "photo_root": str(photo_root.resolve()), "method": model.method,
            "backbone": model.backbone.name, "embed_dim": int(photos.vectors.shape[1]), "image_size": config.size,
            "counts": {"photo": len(keys), "skipped": len(skipped)}, "faiss": index.spec.record(),
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
    write_embeddings(out, {"photo": photos}, info, inputs, extra=lambda folder: index.write(folder / INDEX_NAME))
    return info


# ----------------------------------------------------------------------------------------------- galleries
@dataclass
class Gallery:
    """The photos of a gallery folder, its ``info.json``, and where their images are."""

    folder: Path
    photos: Embeddings
    info: dict
    shards: Path | None = None  # the embed stage's galleries: the shards of the embedded dataset
    index: GalleryIndex | None = None  # the photos' FAISS index (:func:`open_gallery` reads or builds it)

    @property
    def photo_root(self) -> Path | None:
        root = self.info.get("photo_root")
        return Path(root) if root else None

    def describe(self) -> str:
        where = self.photo_root or f"{self.info.get('dataset') or 'dataset'} {self.info.get('part', 'test')} part"
        return f"{len(self.photos)} photos of {where} ({self.info['method']}, {self.info['backbone']})"

    def images(self, rows: Sequence[int], size: int) -> list[Image.Image]:
        """The photos of gallery rows ``rows`` as ``size`` x ``size`` RGB images (what the model sees)."""
        keys = [self.photos.keys[row] for row in rows]
        if self.photo_root is not None:
            images = []
            for key in keys:
                try:
                    images.append(load_user_image(self.photo_root / key, "photo", size))
                except SbirError as error:
                    raise SbirError(f"gallery photo {error} (changed since 'sbir index' made {self.folder}?)") from None
            return images
        if self.shards is None:
            raise SbirError(f"{self.folder}: a gallery of the embed stage; its photos are in the shards (--shards)")
        part = self.info.get("part", "test")
        decoded = load_images(shard_paths(self.shards, part, "photo"), set(keys))
        return [fit(to_8bit(decoded[key]).convert("RGB"), "photo", size) for key in keys]


def open_gallery(folder: Path, shards: Path | None = None) -> Gallery:
    """The gallery of ``folder`` (``sbir index`` output, or the embed stage's with its ``shards``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SbirError(f"{folder}: no such index folder (make one with 'sbir index PHOTOS_DIR --out {folder}')")
    info = read_info(folder)
    missing = [key for key in ("method", "backbone") if not info.get(key)]
    if missing:
        raise SbirError(f"{folder}: {INFO_NAME} does not say which model made it ({', '.join(missing)} missing); "
                        "make the index again with 'sbir index'")
    photos = read_embeddings(folder, "photo")
    if not len(photos):
        raise SbirError(f"{folder}: the index holds no photos")
    return Gallery(folder, photos, info, None if info.get("photo_root") else shards,
                   gallery_index(folder, info, photos.vectors))


def check_model(info: dict, identity: dict, index: Path, model_dir: Path, what: str = "index") -> list[str]:
    """Refuse (:class:`SbirError`) a model other than the one that made the gallery (``what``: the ``index``
    of ``sbir search``, the ``embeddings`` of ``sbir evaluate``): method, backbone, backbone weights and,
    when both record it, the sha256 of the trained weights must match. Returns notes on what could not be
    checked."""
    differences = []
    for key in ("method", "backbone"):
        if info.get(key) != identity.get(key):
            differences.append(f"{key} {info.get(key)!r} ({what}) vs {identity.get(key)!r} (model)")
    if info.get("weights") and identity.get("weights") and info["weights"] != identity["weights"]:
        differences.append(f"backbone weights {info['weights']!r} ({what}) vs {identity['weights']!r} (model)")
    if not differences and info.get("model_sha256") and identity.get("model_sha256") \
            and info["model_sha256"] != identity["model_sha256"]:
        differences.append(f"trained weights sha256 {info['model_sha256'][:12]}… ({what}) vs "
                           f"{identity['model_sha256'][:12]}… (model)")
    if differences:
        remedy = (f"index the photos again with this model ('sbir index {info['photo_root']} --out {index} --model "
                  f"{model_dir}')" if info.get("photo_root") else "embed the gallery again with this model")
        raise SbirError(f"the {what} {index} was not made with the model {model_dir}: {'; '.join(differences)}. "
                        f"Use the model that made it (--model) or {remedy}")
    notes = []
    if identity.get("model_sha256") and not info.get("model_sha256"):
        notes.append(f"{index}: the {what} does not record which trained weights made it; only the method and "
                     "backbone could be checked")
    return notes


# ----------------------------------------------------------------------------------------------- search
@dataclass
class Hit:
    """A gallery photo in a ranking: ``score`` ranks (cosine in ``token`` mode, the relation score in
    ``rerank`` mode); ``cosine`` is the cosine of the embeddings in both modes."""

    rank: int
    row: int  # position in the gallery
    key: str
    class_name: str
    score: float
    cosine: float


@torch.inference_mode()
def search(model: RetrievalModel, gallery: Gallery, sketch: Image.Image, top_k: int = 10, mode: str = "token",
           shortlist: int | None = None) -> list[Hit]:
    """The ``top_k`` best photos of ``gallery`` for ``sketch`` (RGB, the model's input size), best first.

    ``mode`` ``rerank``: the ``shortlist`` (default ``top_k``, at least ``top_k``) best photos by cosine are
    ranked by the model's relation network (see the module docstring).
    """
    if mode not in SEARCH_MODES:
        raise SbirError(f"unknown search mode '{mode}': use one of {', '.join(SEARCH_MODES)}")
    if mode not in retrieval_modes(model):
        raise SbirError(f"--mode {mode} needs a model with a relation network (zse); this model is "
                        f"'{model.method}': use --mode token")
    if top_k < 1:
        raise SbirError(f"--top-k must be at least 1, got {top_k}")
    shortlist = shortlist or top_k
    if shortlist < top_k:
        raise SbirError(f"the rerank shortlist ({shortlist}) must hold at least the --top-k ({top_k}) photos shown")
    config, device = model.image_config, model_device(model)
    query = model_input([sketch], config, device)
    embedding = model.embed(query, "sketch").float().cpu().numpy()
    if embedding.shape[1] != gallery.photos.vectors.shape[1]:
        raise SbirError(f"{gallery.folder}: {gallery.photos.vectors.shape[1]}-d photo embeddings, but the model "
                        f"gives {embedding.shape[1]}-d ones (made with another model?)")
    if gallery.index is None:
        gallery.index = build_index(gallery.photos.vectors)
    cosine, rows = (values[0] for values in gallery.index.search(embedding, shortlist if mode == "rerank" else top_k))
    found = rows >= 0
    cosine, rows = cosine[found], rows[found]
    scores = cosine
    if mode == "rerank":
        photos = model_input(gallery.images(rows.tolist(), config.size), config, device)
        relation = model.score_pairs(model.pair_features(query, "sketch"), model.pair_features(photos, "photo"))
        scores = relation[0].float().cpu().numpy()
    order = np.lexsort((rows, -scores))[:top_k]  # best first, ties by gallery row
    photos = gallery.photos
    return [Hit(rank, int(rows[i]), photos.keys[rows[i]], photos.classes[rows[i]], float(scores[i]), float(cosine[i]))
            for rank, i in enumerate(order, start=1)]


def format_hits(hits: Sequence[Hit], mode: str = "token") -> str:
    """The ranking as aligned text: rank, score(s), class, photo key (path under the photo folder)."""
    width = max([len("class")] + [len(hit.class_name) for hit in hits])
    if mode == "rerank":
        lines = [f"{'rank':>4}  {'relation':>8}  {'cosine':>7}  {'class':<{width}}  photo"]
        lines += [f"{h.rank:>4}  {h.score:>8.4f}  {h.cosine:>7.4f}  {h.class_name:<{width}}  {h.key}" for h in hits]
    else:
        lines = [f"{'rank':>4}  {'cosine':>7}  {'class':<{width}}  photo"]
        lines += [f"{h.rank:>4}  {h.score:>7.4f}  {h.class_name:<{width}}  {h.key}" for h in hits]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- result grid
GRID_DPI = 100
GRID_CELL = 1.5  # inches per image
GRID_COLUMNS = 10  # photos per row


def grid_shape(photos: int, columns: int = GRID_COLUMNS) -> tuple[int, int]:
    """``(rows, photo columns)`` of the result grid of ``photos`` ranked photos."""
    columns = max(1, min(columns, photos))
    return max(1, -(-photos // columns)), columns


def grid_size(photos: int, columns: int = GRID_COLUMNS) -> tuple[int, int]:
    """Pixel ``(width, height)`` of the PNG that :func:`result_grid` writes for ``photos`` photos."""
    rows, columns = grid_shape(photos, columns)
    width, height = GRID_CELL * (columns + 1.25), GRID_CELL * 1.3 * rows + 0.5
    return round(width * GRID_DPI), round(height * GRID_DPI)


def _caption(text: str, width: int = 18) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def result_grid(sketch: Image.Image, hits: Sequence[Hit], photos: Sequence[Image.Image], path: Path,
                title: str = "", mode: str = "token", columns: int = GRID_COLUMNS) -> None:
    """A PNG of the query sketch (blue frame) followed by its ranked photos, ``columns`` per row, each titled
    with its rank, score and class. Written atomically; size :func:`grid_size`."""
    rows, columns = grid_shape(len(hits), columns)
    width, height = grid_size(len(hits), columns)
    figure = new_figure(width / GRID_DPI, height / GRID_DPI)
    axes = figure.subplots(rows, columns + 2, squeeze=False, gridspec_kw={"width_ratios": [1, 0.25] + [1] * columns})
    for ax in axes.ravel():
        ax.axis("off")
    query = axes[0][0]
    query.axis("on")
    query.imshow(sketch.convert("RGB"))
    query.set_xticks([])
    query.set_yticks([])
    for spine in query.spines.values():
        spine.set_edgecolor("#2b83ba")
        spine.set_linewidth(3)
    query.set_title("query", fontsize=8, fontweight="bold", pad=3)
    label = "relation" if mode == "rerank" else "cosine"
    for hit, image in zip(hits, photos):
        ax = axes[(hit.rank - 1) // columns][(hit.rank - 1) % columns + 2]
        ax.imshow(image.convert("RGB"))
        ax.set_title(f"#{hit.rank} {label} {hit.score:.3f}\n{_caption(hit.class_name or hit.key)}", fontsize=7,
                     pad=3)
    figure.suptitle(title, fontsize=9, y=1 - 0.12 / (height / GRID_DPI), va="top")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=1 - 0.62 / (height / GRID_DPI), wspace=0.08,
                           hspace=0.45)
    save_figure(figure, path, dpi=GRID_DPI, metadata={"Software": RESULT_GRID_SOFTWARE})


def is_result_grid(path: Path) -> bool:
    """a result grid PNG of 'sbir search'"""
    try:
        with Image.open(path) as image:
            return image.info.get("Software") == RESULT_GRID_SOFTWARE
    except (OSError, ValueError):
        return False
