"""Fetching a dataset's published archives: local copies first, then a mirror, then the official link.

Every download is streamed to ``<dest>.part`` and only renamed to ``<dest>`` once it is complete and its
md5 (when published) matches, so a file named like the archive is always a whole, verified archive and a
re-run after success touches nothing. Plain HTTP(S) downloads resume an interrupted transfer with a
``Range`` request; Google Drive files go through the maintained ``gdown`` library.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from sbir.errors import SbirError
from sbir.utils.atomic import atomic_file
from sbir.utils.hashing import file_digest

if TYPE_CHECKING:  # sbir.data.datasets imports the dataset modules, which may import this one
    from sbir.data.datasets.base import Source

CHUNK_SIZE = 1 << 20
#: seconds to wait before the first retry; doubled for each further one, capped at ``MAX_BACKOFF_S``
RETRY_BACKOFF_S = 1.0
MAX_BACKOFF_S = 10.0
USER_AGENT = "sbir-download/0.1 (+python urllib)"
#: HTTP statuses worth retrying: the server or a proxy is briefly unavailable
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
HTML_SUFFIXES = {".html", ".htm"}

_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                   ssl.SSLError)


class _Retry(Exception):
    """An attempt failed in a way another attempt may fix (connection cut, timeout, short body)."""


def part_path(dest: Path) -> Path:
    """The file a download of ``dest`` is streamed to before it is verified: ``<dest>.part``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def verify_md5(path: Path, expected: str | None, name: str | None = None) -> None:
    """Raise :class:`SbirError` unless ``path`` has md5 ``expected`` (nothing to check when None).

    ``name`` is what the message calls the file (default: ``path``).
    """
    if not expected:
        return
    got = file_digest(path, "md5")
    if got.lower() != expected.strip().lower():
        raise SbirError(f"{name or path}: md5 mismatch: expected {expected.strip().lower()}, got {got}")


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html"))


def _html_error(name: str, where: str) -> SbirError:
    return SbirError(f"could not download {name} from {where}: the server returned an HTML page instead of "
                     "the file (likely an error, login or quota page); download it by hand and pass "
                     "--source DIR")


def _expects_html(dest: Path) -> bool:
    return dest.suffix.lower() in HTML_SUFFIXES


def _backoff(failures: int) -> None:
    time.sleep(min(RETRY_BACKOFF_S * 2 ** max(failures - 1, 0), MAX_BACKOFF_S))


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a ``Content-Range`` header; None where absent or ``*``."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(\d+|\*)(?:-\d+)?\s*/\s*(\d+|\*)", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) != "*" else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _attempt(url: str, dest: Path, part: Path, timeout: float) -> None:
    """One request: append the rest of ``url`` to ``part`` (or rewrite it from zero).

    Returns when ``part`` holds the whole body; raises :class:`_Retry` for a failure that another
    attempt may fix and :class:`SbirError` for one it will not.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        with e:
            if e.code == 416 and offset:
                # nothing left past ``offset``: either the .part is whole, or it is not this file
                _, total = _content_range(e.headers.get("Content-Range"))
                if total == offset:
                    return
                part.unlink(missing_ok=True)
                raise _Retry(f"HTTP 416 for a resume at byte {offset}; restarting from zero") from None
            if e.code in RETRY_STATUSES:
                raise _Retry(f"HTTP {e.code} {e.reason}") from None
            raise SbirError(f"could not download {dest.name} from {url}: HTTP {e.code} {e.reason}") from None
    except _NETWORK_ERRORS as e:
        raise _Retry(str(getattr(e, "reason", e)) or type(e).__name__) from None

    with response:
        status = getattr(response, "status", None) or 200  # file:// answers carry no status
        content_type = (response.headers.get("Content-Type") or "").lower()
        if "text/html" in content_type and not _expects_html(dest):
            raise _html_error(dest.name, url)
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Retry(f"server resumed at byte {start} instead of {offset}; restarting from zero")
            if total is None and length is not None:
                total = offset + length
        else:
            # a plain 200 (the server ignored Range, or there was none): start over from zero
            offset = 0
            total = length
        mode = "ab" if offset else "wb"
        written = 0
        with open(part, mode) as f, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=dest.name, disable=None) as bar:
            first = True
            while True:
                try:
                    block = response.read(CHUNK_SIZE)
                except _NETWORK_ERRORS as e:
                    raise _Retry(f"connection lost after {offset + written} bytes: {e}") from None
                if not block:
                    break
                if first and offset == 0 and not _expects_html(dest) and _looks_like_html(block[:512]):
                    f.close()
                    part.unlink(missing_ok=True)
                    raise _html_error(dest.name, url)
                first = False
                f.write(block)
                written += len(block)
                bar.update(len(block))
        if length is not None and written < length:
            raise _Retry(f"connection closed after {offset + written} of {offset + length} bytes")


def http_download(url: str, dest: Path, expected_md5: str | None = None, retries: int = 3,
                  timeout: float = 30) -> Path:
    """Download ``url`` to ``dest`` over plain HTTP(S), resuming and verifying; return ``dest``.

    Streams to ``<dest>.part`` and resumes it with a ``Range`` request after an interrupted
    connection (a server that answers 200 instead of 206 is read again from zero). A failed attempt
    is retried after a short backoff, up to ``retries`` times in a row without progress (an attempt
    that added bytes starts the count again); ``timeout`` bounds every socket operation. An HTML
    page served in place of the file, an HTTP error or an md5 mismatch raise :class:`SbirError` (a
    mismatching ``.part`` is deleted). ``dest`` appears only once complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _attempt(url, dest, part, timeout)
            break
        except _Retry as e:
            after = part.stat().st_size if part.exists() else 0
            # a failure after progress counts as the first of a new run of failures
            failures = 1 if after > before else failures + 1
            if failures > retries:
                raise SbirError(f"could not download {dest.name} from {url}: {e} (gave up after {retries} "
                                f"retries; run again to resume, or download it by hand and pass "
                                f"--source DIR)") from None
            print(f"{dest.name}: {e}; retrying", file=sys.stderr)
            _backoff(failures)
    try:
        verify_md5(part, expected_md5, name=f"{dest.name} (downloaded from {url})")
    except SbirError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def drive_download(drive_id: str, dest: Path, expected_md5: str | None = None, retries: int = 3,
                   timeout: float = 30) -> Path:
    """Download the Google Drive file ``drive_id`` to ``dest`` with ``gdown``; return ``dest``.

    gdown resumes its own partial file; the finished download lands in ``<dest>.part`` and is renamed
    to ``dest`` only after the HTML and md5 checks pass.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    where = f"Google Drive (id {drive_id})"
    hint = "download it by hand and pass --source DIR"
    try:
        import gdown
    except ImportError:
        raise SbirError(f"could not download {dest.name} from {where}: the gdown package is not installed "
                        f"(pip install gdown); or {hint}") from None
    # gdown skips an existing output when resuming: only a file it finished in this call may count
    part.unlink(missing_ok=True)
    try:
        result = gdown.download(id=drive_id, output=str(part), quiet=False, resume=True, timeout=timeout,
                                retries=retries)
    except Exception as e:  # gdown raises its own, requests' and OS errors alike
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SbirError(f"could not download {dest.name} from {where}: {reason}; {hint}") from None
    if result is None or not part.is_file():
        raise SbirError(f"could not download {dest.name} from {where}: gdown returned no file; {hint}")
    with open(part, "rb") as f:
        head = f.read(512)
    if not _expects_html(dest) and _looks_like_html(head):
        part.unlink(missing_ok=True)
        raise _html_error(dest.name, where)
    try:
        verify_md5(part, expected_md5, name=f"{dest.name} (downloaded from {where})")
    except SbirError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _copy_local(src: Path, dest: Path, expected_md5: str | None) -> Path:
    """Copy a user's archive ``src`` to ``dest`` through a temporary file, verifying the md5."""
    print(f"{dest.name}: copying {src}", file=sys.stderr)
    with atomic_file(dest) as tmp:
        shutil.copyfile(src, tmp)
        verify_md5(tmp, expected_md5, name=str(src))
    return dest


def _is_url(value: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def _fetch(source: Source, archive_dir: Path, mirror: str | None, local_dirs: Sequence[Path]) -> Path:
    dest = archive_dir / source.filename
    if dest.is_file():
        if not source.md5 or file_digest(dest, "md5") == source.md5.strip().lower():
            return dest
        print(f"{dest}: md5 does not match the published {source.md5}; fetching it again", file=sys.stderr)
    dirs = [Path(d) for d in local_dirs]
    if mirror and not _is_url(mirror):
        if not Path(mirror).is_dir():
            raise SbirError(f"mirror {mirror}: not a URL nor an existing folder")
        dirs.append(Path(mirror))
        mirror = None
    archive_dir.mkdir(parents=True, exist_ok=True)
    for folder in dirs:
        candidate = folder / source.filename
        if candidate.is_file() and candidate.resolve() != dest.resolve():
            return _copy_local(candidate, dest, source.md5)
    if mirror:
        url = mirror.rstrip("/") + "/" + urllib.parse.quote(source.filename)
        return http_download(url, dest, source.md5)
    if source.url:
        return http_download(source.url, dest, source.md5)
    if source.drive_id:
        return drive_download(source.drive_id, dest, source.md5)
    looked = ", ".join(str(d) for d in dirs) or "no local folder given"
    raise SbirError(f"{source.filename}: no download location is known and it is not in {looked}; "
                    "download it by hand and pass --source DIR")


def fetch_source(source: Source, archive_dir: Path, mirror: str | None = None,
                 local_dirs: Sequence[Path] = ()) -> Path | None:
    """Make ``archive_dir/<filename>`` a verified copy of ``source``; return its path.

    In order: an existing verified file is kept (nothing downloaded); a copy in one of ``local_dirs``
    is copied; ``mirror`` (a base URL, or a folder of archives) is used when given; else the official
    ``url`` or Google Drive ``drive_id``. An ``optional`` source that cannot be had gives None and a
    warning on stderr; any other failure raises :class:`SbirError`.
    """
    try:
        return _fetch(source, Path(archive_dir), mirror, local_dirs)
    except SbirError as e:
        if not source.optional:
            raise
        print(f"warning: skipping optional archive {source.filename} ({source.description}): {e}",
              file=sys.stderr)
        return None
