"""``sbir search`` (a sketch against a gallery) and ``sbir index`` (a folder of photos into a gallery):
:mod:`sbir.retrieval.search`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sbir.cli import SHARDS, user_errors
from sbir.errors import SbirError


def _identity(model_dir: Path) -> dict:
    """The model folder's identity (method, backbone, weights, sha256 of the trained weights)."""
    from sbir.models.folder import model_identity

    if not model_dir.is_dir():
        raise SbirError(f"{model_dir}: no such model folder (the train stage's output; see --model)")
    return {**model_identity(model_dir), "model": str(model_dir)}


MODEL_HELP = "A trained model folder (model.json + model.safetensors: the train stage's output)."
DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda, cuda:N."


@click.command()
@click.option("--sketch", type=click.Path(path_type=Path), required=True,
              help="The query: a drawing in PNG, JPEG, WebP, BMP, GIF (one frame) or TIFF, any size, dark strokes "
                   "on a white or transparent background.")
@click.option("--top-k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Photos to show.")
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=Path("data/embeddings"),
              show_default=True, help="The gallery: the embed stage's output, or a folder made by 'sbir index'.")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=Path("data/model"),
              show_default=True, help=MODEL_HELP + " Must be the model that made the index.")
@click.option("--shards", type=SHARDS, default="data/shards", show_default=True,
              help="Where the photos of an embed-stage gallery are (not needed for an 'sbir index' gallery).")
@click.option("--mode", type=click.Choice(["token", "rerank"]), default="token", show_default=True,
              help="token: cosine of the embeddings over the whole gallery. rerank (zse): the --shortlist best "
                   "by cosine re-scored by the relation network.")
@click.option("--shortlist", type=click.IntRange(1, 10000), default=None,
              help="rerank: photos re-scored by the relation network [--top-k].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("result.png"), show_default=True,
              help="The result grid: the sketch, then the ranked photos with their scores and classes.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@user_errors
def search(sketch: Path, top_k: int, index_dir: Path, model_dir: Path, shards: str, mode: str,
           shortlist: int | None, out: Path, device: str) -> None:
    """Find the photos of a gallery that best match a sketch.

    Prints the ranking (rank, score, class, photo) and writes it as a picture (--out). The gallery is the
    photo embeddings of the embed stage (data/embeddings, images read from --shards) or of a folder of
    photos indexed with 'sbir index'; the model must be the one that embedded it (checked). Examples:

    \b
      sbir search --sketch my-cat.png
      sbir index ~/photos --out photo-index
      sbir search --sketch my-cat.png --index photo-index --top-k 5 --mode rerank --out cats.png
    """
    from sbir.data.images import load_user_image
    from sbir.retrieval.search import is_result_grid
    from sbir.utils.atomic import check_output_file

    load_user_image(sketch, "sketch", 224)  # a bad query is refused before anything slow (torch) is loaded
    check_output_file(out, is_result_grid, [sketch, index_dir, model_dir, shards])
    from sbir.models.folder import load_model
    from sbir.retrieval.search import check_model, format_hits, open_gallery, result_grid
    from sbir.retrieval.search import search as search_gallery

    gallery = open_gallery(index_dir, shards)
    for note in check_model(gallery.info, _identity(model_dir), index_dir, model_dir):
        click.echo(f"note: {note}", err=True)
    model = load_model(model_dir, device=device)
    size = model.image_config.size
    query = load_user_image(sketch, "sketch", size)
    hits = search_gallery(model, gallery, query, top_k=top_k, mode=mode, shortlist=shortlist)
    shortlisted = f" (shortlist {shortlist or top_k})" if mode == "rerank" else ""
    click.echo(f"{sketch} against {gallery.describe()}, mode {mode}{shortlisted}", err=True)
    click.echo(format_hits(hits, mode))
    title = f"{sketch.name} · {model.method} · {model.backbone.name} · {mode} · {len(gallery.photos)} photos"
    result_grid(query, hits, gallery.images([hit.row for hit in hits], size), out, title, mode)
    click.echo(f"result grid -> {out}", err=True)


@click.command()
@click.argument("photos_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The index folder to write (replaced whole; never the photo folder).")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=Path("data/model"),
              show_default=True, help=MODEL_HELP)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("--index-type", type=click.Choice(["exact", "ivf", "hnsw"]), default="exact", show_default=True,
              help="The FAISS index of the photos: exact (every photo scored), or approximate for big galleries: "
                   "ivf (clustered lists) or hnsw (a neighbour graph).")
@click.option("--nlist", type=click.IntRange(1, 1 << 20), default=1024, show_default=True,
              help="ivf: lists (at most one per 39 photos).")
@click.option("--nprobe", type=click.IntRange(1, 1 << 20), default=16, show_default=True,
              help="ivf: lists scanned per query (more: better recall, slower).")
@click.option("--hnsw-m", type=click.IntRange(2, 256), default=32, show_default=True,
              help="hnsw: neighbours per photo in the graph.")
@click.option("--ef-search", type=click.IntRange(1, 1 << 16), default=64, show_default=True,
              help="hnsw: candidate list length when searching (more: better recall, slower).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@user_errors
def index(photos_dir: Path, out: Path, model_dir: Path, batch_size: int, index_type: str, nlist: int, nprobe: int,
          hnsw_m: int, ef_search: int, device: str) -> None:
    """Embed every photo under PHOTOS_DIR into a gallery that 'sbir search --index OUT' searches.

    Subfolders are read too; a photo's class is the name of its folder. Files that are not usable photos
    (not an image, empty, truncated, an animation, ...) are skipped, printed, and listed with the reason
    in OUT/info.json. The photos' FAISS index (exact, or ivf / hnsw: --index-type) is written beside them.
    Example: sbir index ~/photos --out photo-index --model data/model
    """
    from sbir.models.folder import load_model
    from sbir.retrieval.index import IndexSpec
    from sbir.retrieval.search import index_folder

    spec = IndexSpec(index_type, nlist=nlist, nprobe=nprobe, m=hnsw_m, ef_search=ef_search)
    identity = _identity(model_dir)
    if not photos_dir.is_dir():  # before loading the model
        raise SbirError(f"{photos_dir}: {'not a folder' if photos_dir.exists() else 'no such folder'} "
                        "(give the folder of the photos to index)")
    model = load_model(model_dir, device=device)
    info = index_folder(model, photos_dir, out, identity, batch_size=batch_size, progress=sys.stderr.isatty(),
                        index_spec=spec)
    for skipped in info["skipped"]:
        click.echo(f"skipped {skipped['path']}: {skipped['reason']}", err=True)
    click.echo(f"indexed {info['counts']['photo']} photos of {photos_dir} ({info['method']}, {info['backbone']}; "
               f"{info['counts']['skipped']} skipped, listed in {out / 'info.json'}; {info['faiss']['type']} "
               f"index) -> {out}")
