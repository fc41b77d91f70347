"""``sbir serve``: the web page and JSON API of :mod:`sbir.serve.app`, run by uvicorn."""

from __future__ import annotations

from pathlib import Path

import click

from sbir.cli import SHARDS, FiniteFloatRange, user_errors
from sbir.cli.search import DEVICE_HELP, MODEL_HELP, _identity


@click.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), default=Path("data/model"),
              show_default=True, help=MODEL_HELP + " Must be the model that made the index.")
@click.option("--index", "index_dir", type=click.Path(path_type=Path), default=Path("data/embeddings"),
              show_default=True, help="The gallery: the embed stage's output, or a folder made by 'sbir index'.")
@click.option("--shards", type=SHARDS, default="data/shards", show_default=True,
              help="Where the photos of an embed-stage gallery are (not needed for an 'sbir index' gallery).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--top-k", type=click.IntRange(1, 100), default=10, show_default=True,
              help="Photos per search unless the page asks for another number.")
@click.option("--max-upload-mb", type=FiniteFloatRange(0.01, 1024), default=10.0, show_default=True,
              help="Largest sketch file accepted.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@user_errors
def serve(model_dir: Path, index_dir: Path, shards: str, host: str, port: int, top_k: int, max_upload_mb: float,
          device: str) -> None:
    """A web page to search the gallery with a sketch drawn in the browser (or an image file dropped on it).

    Open the printed address; draw with a mouse, finger or pen; click a photo to see why it matches. The same
    searches are a JSON API: POST /api/search (multipart field 'sketch'), GET /api/health. Examples:

    \b
      sbir serve                                    # after dvc repro: the embed stage's gallery
      sbir serve --index photo-index --port 8080    # a folder indexed with 'sbir index'
    """
    import uvicorn

    from sbir.models.folder import load_model
    from sbir.retrieval.search import check_model, open_gallery
    from sbir.serve.app import Limits, create_app

    gallery = open_gallery(index_dir, shards)
    for note in check_model(gallery.info, _identity(model_dir), index_dir, model_dir):
        click.echo(f"note: {note}", err=True)
    model = load_model(model_dir, device=device)
    app = create_app(model, gallery, top_k=top_k, limits=Limits(max_bytes=int(max_upload_mb * 1024 * 1024)))
    click.echo(f"serving {gallery.describe()} on http://{host}:{port}/ (Ctrl+C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
