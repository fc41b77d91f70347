"""Downloads against a local HTTP server (resume, retries, HTML pages, md5) and a fake gdown; all offline."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gdown
import pytest

from sbir.data.acquisition import download
from sbir.data.acquisition.download import drive_download, fetch_source, http_download, verify_md5
from sbir.data.datasets.base import Source
from sbir.errors import SbirError
from sbir.utils import hashing
from sbir.utils.hashing import file_digest

DATA = os.urandom(300_000)
MD5 = hashlib.md5(DATA).hexdigest()
HALF = len(DATA) // 2
HTML = b"<!DOCTYPE html>\n<html><head><title>Quota exceeded</title></head><body>Too many users</body></html>"


@dataclass
class Seen:
    path: str
    range: str | None


Route = Callable[[http.server.BaseHTTPRequestHandler, int], None]


@dataclass
class Server:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def hits(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: closing it cuts the body

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server: Server = self.server.owner  # type: ignore[attr-defined]
        server.requests.append(Seen(self.path, self.headers.get("Range")))
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self, len(server.hits(self.path)))

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    srv = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.owner = srv  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def fast_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No sleeping between retries, and any attempt to reach Google Drive fails the test."""
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the local server must be reached directly

    def no_google(*args, **kwargs):
        raise AssertionError("the test tried to contact Google Drive")

    monkeypatch.setattr(gdown, "download", no_google)


def serve(data: bytes = DATA, *, honour_range: bool = True, cut_first_at: int | None = None,
          content_type: str = "application/octet-stream") -> Route:
    """A route serving ``data``; optionally ignoring Range, or cutting the first response short."""

    def route(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
        asked = h.headers.get("Range")
        if asked and honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            body = data[start:]
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))  # the full length, even when cut short
        h.end_headers()
        if cut_first_at is not None and n == 1:
            h.wfile.write(body[:cut_first_at])
            h.wfile.flush()
            h.close_connection = True
            return
        h.wfile.write(body)

    return route


def status_then(code: int, then: Route) -> Route:
    """Answer the first request with HTTP ``code``, later ones with ``then``."""

    def route(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
        if n == 1:
            h.send_error(code)
            return
        then(h, n)

    return route


def _always(code: int) -> Route:
    return lambda h, n: h.send_error(code)


def no_part_no_dest(dest: Path) -> bool:
    return not dest.exists() and not download.part_path(dest).exists()


# --- md5 ---------------------------------------------------------------------------------------------


def test_md5sum_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "CHUNK_SIZE", 4096)  # several chunks
    path = tmp_path / "f.bin"
    path.write_bytes(DATA)
    assert file_digest(path, "md5") == MD5
    verify_md5(path, MD5)
    verify_md5(path, MD5.upper())
    verify_md5(path, None)
    with pytest.raises(SbirError) as info:
        verify_md5(path, "0" * 32)
    assert str(info.value) == f"{path}: md5 mismatch: expected {'0' * 32}, got {MD5}"


# --- http_download -----------------------------------------------------------------------------------


def test_download_with_md5(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve()
    dest = tmp_path / "sub" / "a.zip"
    assert http_download(server.url + "/a.zip", dest, expected_md5=MD5) == dest
    assert dest.read_bytes() == DATA
    assert not download.part_path(dest).exists()
    assert [r.range for r in server.requests] == [None]


def test_resume_after_connection_cut(server: Server, tmp_path: Path) -> None:
    server.routes["/a.7z"] = serve(cut_first_at=HALF)
    dest = tmp_path / "a.7z"
    http_download(server.url + "/a.7z", dest, expected_md5=MD5)
    assert [r.range for r in server.requests] == [None, f"bytes={HALF}-"]
    assert dest.read_bytes() == DATA


def test_interrupted_download_keeps_part_and_next_run_resumes(server: Server, tmp_path: Path) -> None:
    server.routes["/a.7z"] = serve(cut_first_at=HALF)
    dest = tmp_path / "a.7z"
    # first run: no retries allowed, so the cut connection ends it with the first half kept
    with pytest.raises(SbirError, match="a.7z"):
        http_download(server.url + "/a.7z", dest, expected_md5=MD5, retries=0)
    assert not dest.exists()
    assert download.part_path(dest).read_bytes() == DATA[:HALF]
    http_download(server.url + "/a.7z", dest, expected_md5=MD5, retries=0)
    assert [r.range for r in server.requests] == [None, f"bytes={HALF}-"]
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve(honour_range=False, cut_first_at=HALF)
    dest = tmp_path / "a.zip"
    http_download(server.url + "/a.zip", dest, expected_md5=MD5)
    assert [r.range for r in server.requests] == [None, f"bytes={HALF}-"]
    assert dest.read_bytes() == DATA  # not the first half followed by the whole file


def test_stale_part_with_server_ignoring_range(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve(honour_range=False)
    dest = tmp_path / "a.zip"
    download.part_path(dest).write_bytes(b"garbage" * 100)
    http_download(server.url + "/a.zip", dest)  # no md5: the content check below is what counts
    assert server.requests[0].range == "bytes=700-"
    assert dest.read_bytes() == DATA


def test_complete_part_answered_416_is_kept(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve()
    dest = tmp_path / "a.zip"
    download.part_path(dest).write_bytes(DATA)
    http_download(server.url + "/a.zip", dest, expected_md5=MD5)
    assert [r.range for r in server.requests] == [f"bytes={len(DATA)}-"]
    assert dest.read_bytes() == DATA


def test_oversized_part_answered_416_restarts(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve()
    dest = tmp_path / "a.zip"
    download.part_path(dest).write_bytes(DATA + b"extra")
    http_download(server.url + "/a.zip", dest, expected_md5=MD5)
    assert [r.range for r in server.requests] == [f"bytes={len(DATA) + 5}-", None]
    assert dest.read_bytes() == DATA


def test_md5_mismatch_removes_everything(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve()
    dest = tmp_path / "a.zip"
    with pytest.raises(SbirError, match=f"md5 mismatch: expected {'1' * 32}, got {MD5}"):
        http_download(server.url + "/a.zip", dest, expected_md5="1" * 32)
    assert no_part_no_dest(dest)


@pytest.mark.parametrize(("content_type", "body"), [
    ("text/html; charset=utf-8", b"Sorry, the download quota for this file is exceeded."),  # by header
    ("application/octet-stream", b"\n  " + HTML),  # by content
], ids=["by-header", "by-content"])
def test_html_page_instead_of_archive(server: Server, tmp_path: Path, content_type: str, body: bytes) -> None:
    server.routes["/a.zip"] = serve(body, content_type=content_type)
    dest = tmp_path / "a.zip"
    with pytest.raises(SbirError, match="returned an HTML page") as info:
        http_download(server.url + "/a.zip", dest)
    assert "a.zip" in str(info.value)
    assert no_part_no_dest(dest)
    assert len(server.requests) == 1  # not retried


def test_html_is_fine_when_html_is_expected(server: Server, tmp_path: Path) -> None:
    server.routes["/index.html"] = serve(HTML, content_type="text/html")
    dest = tmp_path / "index.html"
    http_download(server.url + "/index.html", dest)
    assert dest.read_bytes() == HTML


def test_404_is_an_error_without_retries(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "a.zip"
    with pytest.raises(SbirError, match=r"could not download a\.zip from .*/missing\.zip: HTTP 404"):
        http_download(server.url + "/missing.zip", dest)
    assert no_part_no_dest(dest)
    assert len(server.requests) == 1


def test_503_is_retried(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = status_then(503, serve())
    dest = tmp_path / "a.zip"
    http_download(server.url + "/a.zip", dest, expected_md5=MD5)
    assert len(server.requests) == 2
    assert dest.read_bytes() == DATA


def test_retries_are_bounded(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = _always(503)
    dest = tmp_path / "a.zip"
    with pytest.raises(SbirError, match="gave up after 2 retries"):
        http_download(server.url + "/a.zip", dest, retries=2)
    assert len(server.requests) == 3
    assert no_part_no_dest(dest)


def test_progress_restarts_the_retry_count(server: Server, tmp_path: Path) -> None:
    """A server that drops every connection after 50 kB still delivers the file, piece by piece."""

    def trickle(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
        asked = h.headers.get("Range")
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        h.send_response(206 if asked else 200)
        if asked:
            h.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        h.send_header("Content-Length", str(len(DATA) - start))
        h.end_headers()
        h.wfile.write(DATA[start:start + 50_000])

    server.routes["/a.zip"] = trickle
    dest = tmp_path / "a.zip"
    http_download(server.url + "/a.zip", dest, expected_md5=MD5, retries=1)
    assert [r.range for r in server.requests] == [None] + [f"bytes={k * 50_000}-" for k in range(1, 6)]
    assert dest.read_bytes() == DATA


def test_connection_refused_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(SbirError, match=r"could not download a\.zip"):
        http_download(f"http://127.0.0.1:{port}/a.zip", tmp_path / "a.zip", retries=2)
    assert time.monotonic() - start < 5


def test_stalled_server_times_out(server: Server, tmp_path: Path) -> None:
    def stall(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
        server.stop.wait(5)

    server.routes["/a.zip"] = stall
    start = time.monotonic()
    with pytest.raises(SbirError, match=r"could not download a\.zip"):
        http_download(server.url + "/a.zip", tmp_path / "a.zip", retries=1, timeout=0.3)
    assert time.monotonic() - start < 3
    assert len(server.requests) == 2


# --- drive_download ----------------------------------------------------------------------------------


def fake_gdown(monkeypatch: pytest.MonkeyPatch, body: bytes | Exception) -> list[dict]:
    calls: list[dict] = []

    def fake(url=None, output=None, quiet=False, id=None, resume=False, **kwargs):  # noqa: A002
        calls.append(dict(url=url, output=output, id=id, resume=resume, quiet=quiet, **kwargs))
        if isinstance(body, Exception):
            raise body
        Path(output).write_bytes(body)
        return output

    monkeypatch.setattr(gdown, "download", fake)
    return calls


def test_drive_download_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_gdown(monkeypatch, DATA)
    dest = tmp_path / "rendered_256x256.7z"
    assert drive_download("DRIVE-ID", dest, expected_md5=MD5) == dest
    assert dest.read_bytes() == DATA
    assert not download.part_path(dest).exists()
    assert len(calls) == 1
    assert calls[0]["id"] == "DRIVE-ID" and calls[0]["url"] is None
    assert calls[0]["resume"] is True
    assert calls[0]["output"] == str(download.part_path(dest))


def test_drive_download_failure_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gdown(monkeypatch, gdown.exceptions.FileURLRetrievalError(
        "Failed to retrieve file url:\n\n\tCannot retrieve the public link of the file."))
    dest = tmp_path / "rendered_256x256.7z"
    with pytest.raises(SbirError) as info:
        drive_download("DRIVE-ID", dest)
    message = str(info.value)
    assert message.startswith("could not download rendered_256x256.7z from Google Drive (id DRIVE-ID): "
                              "Failed to retrieve file url")
    assert message.endswith("download it by hand and pass --source DIR")
    assert "\n" not in message
    assert no_part_no_dest(dest)


def test_drive_download_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gdown(monkeypatch, ConnectionError("Name or service not known"))
    with pytest.raises(SbirError, match=r"Google Drive \(id X\): Name or service not known"):
        drive_download("X", tmp_path / "a.7z")


def test_drive_download_md5_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gdown(monkeypatch, DATA[:-1])
    dest = tmp_path / "a.7z"
    with pytest.raises(SbirError, match="md5 mismatch"):
        drive_download("X", dest, expected_md5=MD5)
    assert no_part_no_dest(dest)


def test_drive_download_html_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gdown(monkeypatch, HTML)
    dest = tmp_path / "a.7z"
    with pytest.raises(SbirError, match="HTML page"):
        drive_download("X", dest)
    assert no_part_no_dest(dest)


# --- fetch_source ------------------------------------------------------------------------------------


def test_fetch_twice_downloads_once(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve()
    source = Source("a.zip", "test archive", url=server.url + "/a.zip", md5=MD5)
    path = fetch_source(source, tmp_path / "archives")
    assert path == tmp_path / "archives" / "a.zip" and path.read_bytes() == DATA
    stamp = path.stat().st_mtime_ns
    assert fetch_source(source, tmp_path / "archives") == path
    assert len(server.requests) == 1
    assert path.stat().st_mtime_ns == stamp


def test_fetch_replaces_a_bad_existing_file(server: Server, tmp_path: Path) -> None:
    server.routes["/a.zip"] = serve()
    (tmp_path / "a.zip").write_bytes(b"broken")
    source = Source("a.zip", "test archive", url=server.url + "/a.zip", md5=MD5)
    assert fetch_source(source, tmp_path).read_bytes() == DATA
    assert len(server.requests) == 1


def test_fetch_keeps_existing_file_without_md5(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.zip").write_bytes(b"whatever the user has")
    source = Source("a.zip", "test archive", url=server.url + "/a.zip")
    assert fetch_source(source, tmp_path).read_bytes() == b"whatever the user has"
    assert server.requests == []


def test_fetch_copies_from_local_dirs(server: Server, tmp_path: Path) -> None:
    empty, mine = tmp_path / "empty", tmp_path / "mine"
    empty.mkdir()
    mine.mkdir()
    (mine / "a.zip").write_bytes(DATA)
    source = Source("a.zip", "test archive", url=server.url + "/a.zip", md5=MD5)
    path = fetch_source(source, tmp_path / "archives", local_dirs=[empty, mine])
    assert path == tmp_path / "archives" / "a.zip" and path.read_bytes() == DATA
    assert (mine / "a.zip").read_bytes() == DATA  # copied, not moved
    assert server.requests == []


def test_fetch_rejects_a_bad_local_copy(server: Server, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.zip").write_bytes(DATA[:1000])
    source = Source("a.zip", "test archive", url=server.url + "/a.zip", md5=MD5)
    with pytest.raises(SbirError, match=rf"{re.escape(str(mine / 'a.zip'))}: md5 mismatch"):
        fetch_source(source, tmp_path / "archives", local_dirs=[mine])
    assert no_part_no_dest(tmp_path / "archives" / "a.zip")
    assert server.requests == []


def test_fetch_uses_the_mirror(server: Server, tmp_path: Path) -> None:
    server.routes["/mirror/my%20data.7z"] = serve()
    source = Source("my data.7z", "test archive", url=server.url + "/official/my data.7z", md5=MD5)
    path = fetch_source(source, tmp_path, mirror=server.url + "/mirror/")
    assert path.read_bytes() == DATA
    assert [r.path for r in server.requests] == ["/mirror/my%20data.7z"]


def test_fetch_uses_a_mirror_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "a.7z").write_bytes(DATA)
    source = Source("a.7z", "test archive", drive_id="NEVER-USED", md5=MD5)
    assert fetch_source(source, tmp_path / "archives", mirror=str(folder)).read_bytes() == DATA


def test_fetch_from_drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_gdown(monkeypatch, DATA)
    source = Source("a.7z", "test archive", drive_id="ID1", md5=MD5)
    assert fetch_source(source, tmp_path).read_bytes() == DATA
    assert fetch_source(source, tmp_path).read_bytes() == DATA
    assert [c["id"] for c in calls] == ["ID1"]


def test_optional_source_failing_gives_none(server: Server, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    source = Source("extra.zip", "extended photos", url=server.url + "/gone.zip", optional=True)
    assert fetch_source(source, tmp_path) is None
    err = capsys.readouterr().err
    assert "warning" in err and "extra.zip" in err and "404" in err
    assert no_part_no_dest(tmp_path / "extra.zip")


def test_optional_drive_source_failing_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake_gdown(monkeypatch, ConnectionError("offline"))
    source = Source("extra.zip", "extended photos", drive_id="ID2", optional=True)
    assert fetch_source(source, tmp_path) is None
    assert "offline" in capsys.readouterr().err


def test_required_source_failing_raises(server: Server, tmp_path: Path) -> None:
    source = Source("a.zip", "test archive", url=server.url + "/gone.zip")
    with pytest.raises(SbirError, match="HTTP 404"):
        fetch_source(source, tmp_path)


def test_source_without_location(tmp_path: Path) -> None:
    with pytest.raises(SbirError, match="--source DIR"):
        fetch_source(Source("a.zip", "test archive"), tmp_path, local_dirs=[tmp_path / "nothing"])
