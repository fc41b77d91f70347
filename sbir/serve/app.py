"""The web application of ``sbir serve``: a page to draw (or drop) a sketch and see the gallery's best photos, and
the JSON API beside it (FastAPI; uvicorn runs it).

Routes:

- ``GET /``: the page (``static/index.html``, ``app.js``, ``style.css``, shipped with the package);
- ``GET /api/health``: ``{"status": "ok", "photos", "method", "backbone", "modes", "index", "top_k", ...}``;
- ``POST /api/search``: multipart ``sketch`` (an image file), optional ``top_k`` and ``mode`` ->
  ``{"results": [{"rank", "score", "class", "photo", "row", "key", "cosine"}, ...], "mode", "top_k"}``; ``photo``
  is the URL of the photo, by gallery row;
- ``GET /api/photos/{row}``: the photo of a gallery row as the model sees it (JPEG, the model's input size);
- ``POST /api/explain``: multipart ``sketch`` and ``photo`` (a row) -> the correspondence picture and the
  synthesis of ``sbir explain`` for that pair, as PNG data URLs (``{"picture", "synthesis", "source", ...}``).

Only the gallery's photos are served, by row number: no route takes a path. Every refusal is a 4xx answer with
``{"error": "one line"}`` — an upload that is not a usable image (:func:`sbir.data.images.user_image`: empty,
truncated, blank, an animation, ...), over :attr:`Limits.max_bytes` (413) or :attr:`Limits.max_pixels`, an
unknown mode or row — never a traceback. The model runs one request at a time (:class:`SearchService`'s lock);
the index search is thread-safe, so concurrent requests are safe.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException

from sbir.data.images import user_image
from sbir.errors import SbirError
from sbir.explain.correspondence import explain_pair
from sbir.explain.figures import pair_figure
from sbir.models.base import RetrievalModel
from sbir.retrieval.index import build_index
from sbir.retrieval.search import Gallery, Hit, retrieval_modes, search
from sbir.utils.figures import figure_png

#: the page's files, shipped as package data
STATIC = resources.files("sbir.serve") / "static"
#: photos kept decoded for the result grid and explanations (model input size: ~150 KB each)
PHOTO_CACHE = 256


@dataclass(frozen=True)
class Limits:
    """What an upload may be: at most ``max_bytes`` (the request is refused from its length) and ``max_pixels``
    (refused from the image header, before decoding); ``max_top_k`` photos per search."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_top_k: int = 100


class SearchService:
    """The model and gallery behind the app: searches, photos and explanations, safe to call from many threads
    (the model runs under one lock; decoded photos are cached under another)."""

    def __init__(self, model: RetrievalModel, gallery: Gallery, top_k: int = 10, limits: Limits | None = None):
        self.model, self.gallery, self.top_k, self.limits = model, gallery, top_k, limits or Limits()
        if gallery.index is None:
            gallery.index = build_index(gallery.photos.vectors)
        self.size = model.image_config.size
        self.modes = retrieval_modes(model)
        self._model_lock, self._photo_lock = threading.Lock(), threading.Lock()
        self._photos: OrderedDict[int, Image.Image] = OrderedDict()

    def sketch(self, data: bytes, name: str) -> Image.Image:
        """The uploaded sketch as the model's input image (:class:`SbirError` when it is not usable)."""
        if len(data) > self.limits.max_bytes:
            raise UploadTooLarge(f"{name}: {len(data):,} bytes; at most {self.limits.max_bytes:,} accepted")
        return user_image(data, name, "sketch", self.size, self.limits.max_pixels)

    def search(self, sketch: Image.Image, top_k: int | None = None, mode: str = "token") -> list[Hit]:
        """The best ``top_k`` photos for ``sketch`` (their images are decoded for the photo URLs that follow)."""
        top_k = self.top_k if top_k is None else top_k
        if not 1 <= top_k <= self.limits.max_top_k:
            raise SbirError(f"top_k must be 1 to {self.limits.max_top_k}, got {top_k}")
        if mode not in self.modes:
            raise SbirError(f"unknown mode '{mode}' for this model ({self.model.method}): use "
                            f"{' or '.join(self.modes)}")
        with self._model_lock:
            hits = search(self.model, self.gallery, sketch, top_k=top_k, mode=mode)
        self.photos([hit.row for hit in hits])
        return hits

    def row(self, text: str) -> int:
        """The gallery row named by ``text`` (digits only; :class:`NotFound` otherwise)."""
        if not (text.isascii() and text.isdigit()) or int(text) >= len(self.gallery.photos):
            raise NotFound(f"no photo '{text}' in the gallery (rows 0 to {len(self.gallery.photos) - 1})")
        return int(text)

    def photos(self, rows: Sequence[int]) -> list[Image.Image]:
        """The images of gallery ``rows`` (model input size), decoded once and cached."""
        with self._photo_lock:
            missing = [row for row in dict.fromkeys(rows) if row not in self._photos]
            if missing:
                for row, image in zip(missing, self.gallery.images(missing, self.size)):
                    self._photos[row] = image
            for row in rows:
                self._photos.move_to_end(row)
            found = [self._photos[row] for row in rows]
            while len(self._photos) > PHOTO_CACHE:
                self._photos.popitem(last=False)
            return found

    def photo_jpeg(self, row: int) -> bytes:
        buffer = io.BytesIO()
        self.photos([row])[0].save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    def explain(self, sketch: Image.Image, row: int) -> dict:
        """The explanation of ``sketch`` against the photo of ``row``: the picture and synthesis of ``sbir explain``
        (PNG data URLs) and what they show."""
        photo = self.photos([row])[0]
        with self._model_lock:  # the model, and matplotlib (one figure at a time)
            explanation = explain_pair(self.model, sketch, photo)
            found = explanation.correspondence
            title = f"{self.model.method} · {self.model.backbone.name} · your sketch vs {self.gallery.photos.keys[row]}"
            if found.relation is not None:
                title += f" · relation score {found.relation:.3f}"
            picture = figure_png(pair_figure([explanation], title=title))
        synthesis = io.BytesIO()
        Image.fromarray(explanation.synthesis).save(synthesis, format="PNG")
        return {"photo": row, "class": self.gallery.photos.classes[row], "key": self.gallery.photos.keys[row],
                "source": found.source, "detail": found.detail, "relation": found.relation,
                "grid": list(found.grid), "picture": _data_url(picture), "synthesis": _data_url(synthesis.getvalue())}

    def health(self) -> dict:
        info = self.gallery.info
        return {"status": "ok", "photos": len(self.gallery.photos), "gallery": self.gallery.describe(),
                "method": info.get("method"), "backbone": info.get("backbone"), "modes": list(self.modes),
                "index": self.gallery.index.spec.kind, "top_k": self.top_k, "max_top_k": self.limits.max_top_k,
                "max_bytes": self.limits.max_bytes, "max_pixels": self.limits.max_pixels}


class UploadTooLarge(SbirError):
    """An upload over :attr:`Limits.max_bytes` (HTTP 413)."""


class NotFound(SbirError):
    """A photo row that is not in the gallery (HTTP 404)."""


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def result_records(hits: Sequence[Hit]) -> list[dict]:
    """The ``results`` of ``POST /api/search``."""
    return [{"rank": hit.rank, "score": hit.score, "class": hit.class_name, "photo": f"/api/photos/{hit.row}",
             "row": hit.row, "key": hit.key, "cosine": hit.cosine} for hit in hits]


def create_app(model: RetrievalModel, gallery: Gallery, top_k: int = 10, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``gallery`` searched with ``model`` (the model that made it: the caller
    checks, :func:`sbir.retrieval.search.check_model`); ``top_k``: photos per search unless the request says."""
    service = SearchService(model, gallery, top_k, limits)
    app = FastAPI(title="sbir serve", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def refuse_big_uploads(request: Request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > service.limits.max_bytes + 64 * 1024:  # room for the form's fields
            return error(413, f"upload of {int(length):,} bytes; at most {service.limits.max_bytes:,} accepted")
        return await call_next(request)

    @app.exception_handler(SbirError)
    async def user_error(request: Request, exc: SbirError) -> JSONResponse:
        status = 413 if isinstance(exc, UploadTooLarge) else 404 if isinstance(exc, NotFound) else 400
        return error(status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail) if exc.status_code != 404 else f"not found: {request.url.path}")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(part) for part in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                    for e in exc.errors()]
        return error(422, "; ".join(problems) or "bad request")

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:  # a bug, not the user's: no traceback out
        return error(500, f"internal error ({type(exc).__name__}); see the server's log")

    def read_sketch(upload: UploadFile) -> Image.Image:
        name = upload.filename or "sketch"
        return service.sketch(upload.file.read(service.limits.max_bytes + 1), name)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/api/health")
    def health() -> dict:
        return service.health()

    @app.post("/api/search")
    def search_photos(sketch: UploadFile = File(...), top_k: int | None = Form(None),  # noqa: B008
                      mode: str = Form("token")) -> dict:
        hits = service.search(read_sketch(sketch), top_k, mode)
        return {"results": result_records(hits), "mode": mode, "top_k": len(hits)}

    @app.get("/api/photos/{row}")
    def photo(row: str) -> Response:
        return Response(service.photo_jpeg(service.row(row)), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/explain")
    def explain(sketch: UploadFile = File(...), photo: str = Form(...)) -> dict:  # noqa: B008
        row = service.row(photo)
        return service.explain(read_sketch(sketch), row)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
