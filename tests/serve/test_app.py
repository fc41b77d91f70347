"""``sbir serve``'s JSON API (:mod:`sbir.serve.app`): a search answers what the library's search answers, photos
come by row and explanations by (sketch, row); bad uploads, rows and paths are 4xx with one ``{"error"}`` line,
never a traceback; 32 parallel searches against the real server (uvicorn on 127.0.0.1) all get the answer of a
search made alone; ``sbir serve`` with no options serves the default gallery."""

from __future__ import annotations

import http.client
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from sbir.cli.main import main
from sbir.explain.correspondence import explain_pair
from sbir.retrieval.search import open_gallery, search
from sbir.serve.app import Limits, create_app
from sbir.utils.device import torch_threads
from tests.helpers import drawing, one_line_error, png_bytes, runner, serving

SIZE = 224
LIMITS = Limits(max_bytes=300_000, max_pixels=4_000_000, max_top_k=50)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def gallery(folder_gallery):
    return open_gallery(folder_gallery)


@pytest.fixture(scope="module")
def client(tiny, gallery):
    with TestClient(create_app(tiny.model, gallery, top_k=3, limits=LIMITS)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server(tiny, gallery):
    with serving(create_app(tiny.model, gallery, top_k=3, limits=LIMITS)) as url:
        yield url


def sketch_file(seed: int = 0) -> tuple[str, bytes, str]:
    return ("my drawing.png", png_bytes(drawing(seed=seed)), "image/png")


def expected_hits(tiny, gallery, seed: int, top_k: int, mode: str = "token"):
    sketch = drawing(seed=seed).convert("RGB")
    from sbir.data.images import fit

    return search(tiny.model, gallery, fit(sketch, "sketch", SIZE), top_k=top_k, mode=mode)


def records(hits) -> list[dict]:
    return [{"rank": h.rank, "class": h.class_name, "photo": f"/api/photos/{h.row}"} for h in hits]


# ----------------------------------------------------------------------------------------------- the API
def test_health_says_what_is_served(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok" and health["photos"] == 5 and health["modes"] == ["token", "rerank"]
    assert health["method"] == "zse" and health["index"] == "exact" and health["top_k"] == 3


@pytest.mark.parametrize("mode", ["token", "rerank"])
def test_search_answers_what_the_library_answers(client, tiny, gallery, mode):
    response = client.post("/api/search", files={"sketch": sketch_file(1)}, data={"top_k": "4", "mode": mode})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 4
    hits = expected_hits(tiny, gallery, 1, 4, mode)
    assert [{k: r[k] for k in ("rank", "class", "photo")} for r in results] == records(hits)
    assert [r["score"] for r in results] == pytest.approx([h.score for h in hits], abs=1e-5)
    assert [r["key"] for r in results] == [h.key for h in hits]


def test_search_uses_the_default_top_k_and_photo_urls_serve_the_gallery_photos(client, gallery):
    results = client.post("/api/search", files={"sketch": sketch_file(2)}).json()["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    for result in results:
        response = client.get(result["photo"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.content))
        assert image.size == (SIZE, SIZE)
        original = np.asarray(gallery.images([result["row"]], SIZE)[0], dtype=float)
        assert np.abs(np.asarray(image.convert("RGB"), dtype=float) - original).mean() < 4  # JPEG of that photo


def test_explain_draws_the_pair_of_the_clicked_photo(client, tiny, gallery):
    response = client.post("/api/explain", files={"sketch": sketch_file(3)}, data={"photo": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["photo"] == 2 and body["key"] == gallery.photos.keys[2]
    pictures = {}
    for name in ("picture", "synthesis"):
        prefix, _, data = body[name].partition(",")
        assert prefix == "data:image/png;base64"
        import base64

        pictures[name] = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    from sbir.data.images import fit

    expected = explain_pair(tiny.model, fit(drawing(seed=3).convert("RGB"), "sketch", SIZE),
                            gallery.images([2], SIZE)[0])
    assert body["source"] == expected.correspondence.source
    assert body["relation"] == pytest.approx(expected.correspondence.relation, abs=1e-5)
    np.testing.assert_array_equal(pictures["synthesis"], expected.synthesis)
    assert pictures["picture"].shape[1] == 1550 and pictures["picture"].std() > 20  # pair_figure, 15.5 in at 100 dpi


# ----------------------------------------------------------------------------------------------- bad input
def _bad_uploads() -> dict[str, tuple[bytes, int, str]]:
    animated = io.BytesIO()
    frames = [drawing(seed=1).convert("P"), drawing(seed=2).convert("P")]
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    big = drawing(size=(2100, 2100), seed=4)  # 4.4 Mpixels, a small PNG
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    data = png_bytes(drawing())
    return {
        "text": (b"this is not a drawing\n", 400, "not an image"),
        "empty": (b"", 400, "empty file"),
        "truncated": (data[: len(data) // 2], 400, "corrupt or truncated"),
        "blank": (png_bytes(Image.new("L", (300, 300), 255)), 400, "the sketch is blank"),
        "animated": (animated.getvalue(), 400, "an animation"),
        "too many pixels": (png_bytes(big), 400, "too many pixels (2100x2100"),
        "too big": (png_bytes(noisy), 413, "at most 300,000"),
    }


BAD_UPLOADS = _bad_uploads()


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
@pytest.mark.parametrize("route", ["/api/search", "/api/explain"])
def test_a_bad_upload_is_a_clear_4xx(client, kind, route):
    data, status, said = BAD_UPLOADS[kind]
    response = client.post(route, files={"sketch": ("upload.png", data, "image/png")}, data={"photo": "0"})
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and said in body["error"] and "\n" not in body["error"]
    if status == 400:
        assert body["error"].startswith("upload.png: ")


@pytest.mark.parametrize(("data", "status", "said"), [
    ({"top_k": "0"}, 400, "top_k must be 1 to 50"),
    ({"top_k": "51"}, 400, "top_k must be 1 to 50"),
    ({"top_k": "ten"}, 422, "top_k"),
    ({"mode": "relation"}, 400, "unknown mode 'relation'"),
])
def test_bad_search_options_are_a_clear_4xx(client, data, status, said):
    response = client.post("/api/search", files={"sketch": sketch_file()}, data=data)
    assert response.status_code == status and said in response.json()["error"], response.text


def test_a_request_without_a_sketch_is_a_clear_4xx(client):
    response = client.post("/api/search", data={"top_k": "3"})
    assert response.status_code == 422 and response.json() == {"error": "sketch: Field required"}
    response = client.post("/api/explain", files={"sketch": sketch_file()})
    assert response.status_code == 422 and "photo: Field required" in response.json()["error"]


def test_an_upload_over_the_limit_is_refused_from_its_length(client):
    response = client.post("/api/search", files={"sketch": ("big.png", b"\0" * 600_000, "image/png")})
    assert response.status_code == 413 and response.json()["error"].startswith("upload of ")


# ----------------------------------------------------------------------------------------------- what is served
@pytest.mark.parametrize("row", ["5", "-1", "1.0", "x", "00000000000000000000099", "٣"])
def test_only_rows_of_the_gallery_are_photos(client, row):
    response = client.get(f"/api/photos/{row}")
    assert response.status_code == 404 and "no photo" in response.json()["error"], response.text
    response = client.post("/api/explain", files={"sketch": sketch_file()}, data={"photo": row})
    assert response.status_code == 404 and "no photo" in response.json()["error"], response.text


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side ``..`` removal or re-encoding)."""
    connection = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=30)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    connection.endheaders()
    response = connection.getresponse()
    status, body = response.status, response.read()
    connection.close()
    return status, body


TRAVERSALS = ["/api/photos/../../../../etc/passwd", "/api/photos/..%2f..%2f..%2fetc%2fpasswd",
              "/api/photos/%2e%2e/%2e%2e/etc/passwd", "/static/../app.py", "/static/..%2fapp.py",
              "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/static/..%5c..%5capp.py", "/static/%252e%252e/app.py",
              "/api/photos/0/../../../app.py", "/static//etc/passwd", "/../../etc/passwd", "/%2e%2e/etc/passwd"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_leads_out_of_the_gallery_and_the_page(server, path):
    status, body = raw_get(server, path)
    assert status in (400, 404), (status, body[:200])
    assert b"root:" not in body and b"import" not in body and b"def " not in body
    if body:
        assert "error" in json.loads(body)


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for needed in ('id="canvas"', 'id="results"', 'src="/static/app.js"', 'href="/static/style.css"'):
        assert needed in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "pointerdown" in script.text and "/api/search" in script.text
    assert client.get("/static/style.css").status_code == 200


# ----------------------------------------------------------------------------------------------- concurrency
def test_32_parallel_searches_on_the_real_server_answer_as_one_alone(server, tiny, gallery):
    seeds = [0, 1, 2, 3]
    alone = {seed: records(expected_hits(tiny, gallery, seed, 5)) for seed in seeds}
    assert len({json.dumps(v) for v in alone.values()}) > 1, "the sketches must not all get the same answer"

    def one(number: int) -> tuple[int, int, list[dict]]:
        seed = seeds[number % len(seeds)]
        files = {"sketch": (f"s{number}.png", png_bytes(drawing(seed=seed)), "image/png")}
        response = httpx.post(f"{server}/api/search", files=files, data={"top_k": "5"}, timeout=120)
        results = response.json().get("results", [])
        return seed, response.status_code, [{k: r[k] for k in ("rank", "class", "photo")} for r in results]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, range(32)))
    assert len(answers) == 32
    assert [status for _, status, _ in answers] == [200] * 32
    assert [results for seed, _, results in answers] == [alone[seed] for seed, _, _ in answers]


# ----------------------------------------------------------------------------------------------- the command
def test_sbir_serve_with_no_options_serves_the_default_gallery(tiny, folder_gallery, tmp_path, monkeypatch):
    import shutil

    import uvicorn

    (tmp_path / "data").mkdir()
    shutil.copytree(tiny.folder, tmp_path / "data" / "model")
    shutil.copytree(folder_gallery, tmp_path / "data" / "embeddings")
    monkeypatch.chdir(tmp_path)
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    torch.manual_seed(0)  # the random-init backbone of the tiny model
    result = runner().invoke(main, ["serve"])
    assert result.exit_code == 0, result.output
    assert (started["host"], started["port"]) == ("127.0.0.1", 8000)
    assert "serving 5 photos" in result.stderr and "http://127.0.0.1:8000/" in result.stderr
    with TestClient(started["app"]) as client:
        assert client.get("/api/health").json()["photos"] == 5
        results = client.post("/api/search", files={"sketch": sketch_file(1)}).json()["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]  # the default --top-k (10), at most the gallery


def test_sbir_serve_refuses_a_missing_gallery_or_model_in_one_line(tiny, folder_gallery, tmp_path):
    line = one_line_error(runner().invoke(main, ["serve", "--index", str(tmp_path / "none"), "--model",
                                                 str(tiny.folder)]))
    assert "no such index folder" in line
    line = one_line_error(runner().invoke(main, ["serve", "--index", str(folder_gallery), "--model",
                                                 str(tmp_path / "none")]))
    assert "no such model folder" in line
    assert not Path(tmp_path / "none").exists()
