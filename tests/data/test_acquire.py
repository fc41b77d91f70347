"""The whole acquisition flow of ``acquire``, offline: tiny archives in the official layouts,
served by a local HTTP mirror or lying in a folder, or an extracted copy used in place."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import gdown
import py7zr
import pytest
from PIL import Image

from sbir.data.acquisition import download
from sbir.data.acquisition.acquire import COMPLETE, LOCAL_COPY, acquire, resolve_raw
from sbir.data.datasets import get_dataset
from sbir.data.datasets.sketchy import AUGMENTATION as AUG
from sbir.data.datasets.sketchy import Sketchy
from sbir.data.datasets.tuberlin import TUBerlin
from sbir.data.shards.build import shard_dataset
from sbir.data.shards.reader import iter_tar_samples
from sbir.errors import SbirError
from sbir.utils.hashing import folder_fingerprint

RENDERED, INFO, EXTEND = "rendered_256x256.7z", "info-06-04.7z", "EXTEND_image_sketchy.zip"
#: class -> ImageNet-like photo id prefix (real Sketchy photo ids are unique across classes)
CLASSES = {"cup": "n03063073", "giraffe": "n02439033", "car_(sedan)": "n02958343"}
INVALID_SKETCH = "n03063073_1-2"  # listed in info/invalid-ambiguous.txt


# --- tiny inputs ---------------------------------------------------------------------------------------


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (seed * 40 % 256, 90, 200 - seed * 30 % 200)).save(buf, "JPEG")
    return buf.getvalue()


def png(seed: int) -> bytes:
    image = Image.new("L", (32, 32), 255)
    image.putpixel((seed % 32, 3), 0)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` by relative POSIX path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pack_7z(archive: Path, files: dict[str, bytes]) -> bytes:
    with py7zr.SevenZipFile(archive, "w") as zf:
        for rel, data in files.items():
            zf.writestr(data, rel)
    return archive.read_bytes()


def pack_zip(archive: Path, files: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(archive, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return archive.read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclasses.dataclass
class SketchyArchives:
    layout: Path  # the extracted official layout (what the archives hold)
    folder: Path  # the three archives, as a user would have downloaded them
    rendered: dict[str, bytes]
    info: dict[str, bytes]
    extend: dict[str, bytes]
    data: dict[str, bytes]  # file name -> archive bytes


@pytest.fixture(scope="module")
def sketchy_archives(tmp_path_factory: pytest.TempPathFactory) -> SketchyArchives:
    base = tmp_path_factory.mktemp("sketchy")
    rendered, extend = {}, {}
    for c, (name, synset) in enumerate(CLASSES.items()):
        for n in (1, 2):
            rendered[f"256x256/photo/{AUG}/{name}/{synset}_{n}.jpg"] = jpeg(10 * c + n)
            for k in (1, 2):
                rendered[f"256x256/sketch/{AUG}/{name}/{synset}_{n}-{k}.png"] = png(10 * c + 3 * n + k)
        extend[f"EXTEND_image_sketchy/{name}/ext_{synset}_9.jpg"] = jpeg(c + 7)
    info = {"info/invalid-ambiguous.txt": f"{INVALID_SKETCH}\n".encode(), "info/invalid-error.txt": b""}
    layout = base / "layout"
    write_tree(layout, {**rendered, **info})
    folder = base / "archives"
    folder.mkdir()
    data = {RENDERED: pack_7z(folder / RENDERED, rendered), INFO: pack_7z(folder / INFO, info),
            EXTEND: pack_zip(folder / EXTEND, extend)}
    return SketchyArchives(layout, folder, rendered, info, extend, data)


def with_md5(cls: type, md5s: dict[str, str]) -> tuple:
    """``cls.sources`` with the md5 of the named files replaced (the published ones are of the real files)."""
    return tuple(dataclasses.replace(s, md5=md5s[s.filename]) if s.filename in md5s else s for s in cls.sources)


@pytest.fixture
def sketchy_md5s(monkeypatch: pytest.MonkeyPatch, sketchy_archives: SketchyArchives) -> None:
    monkeypatch.setattr(Sketchy, "sources", with_md5(Sketchy, {RENDERED: md5(sketchy_archives.data[RENDERED]),
                                                               INFO: md5(sketchy_archives.data[INFO])}))


# --- a local mirror ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Mirror:
    url: str
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    requests: list[str] = dataclasses.field(default_factory=list)


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        mirror: Mirror = self.server.mirror  # type: ignore[attr-defined]
        mirror.requests.append(self.path)
        body = mirror.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), MirrorHandler)
    httpd.daemon_threads = True
    httpd.mirror = Mirror(url=f"http://127.0.0.1:{httpd.server_address[1]}/")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd.mirror  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> list:
    """No proxy in the way of 127.0.0.1, no retry sleeps, and Google Drive calls are recorded and fail."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(download, "RETRY_BACKOFF_S", 0.0)
    calls: list = []

    def no_drive(*args, **kwargs):
        calls.append(kwargs.get("id"))
        raise RuntimeError("offline test: Google Drive is not reachable")

    monkeypatch.setattr(gdown, "download", no_drive)
    return calls


def temporary_names(out: Path) -> list[str]:
    """Temporary names a finished or failed acquisition must not leave behind."""
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.name.startswith(".") or p.name.endswith((".part", ".tmp")))


# --- downloads from a mirror ---------------------------------------------------------------------------


def test_mirror_download_extracts_the_official_layout(mirror, sketchy_archives, sketchy_md5s, offline,
                                                      tmp_path) -> None:
    mirror.files.update({RENDERED: sketchy_archives.data[RENDERED], INFO: sketchy_archives.data[INFO]})
    out = tmp_path / "raw" / "sketchy"
    assert acquire(get_dataset("sketchy"), out, mirror=mirror.url, progress=False) == out

    got = tree(out)
    for rel, data in {**sketchy_archives.rendered, **sketchy_archives.info}.items():
        assert got[rel] == data, rel
    extracted = {rel for rel in got if not rel.startswith("archives/") and rel != COMPLETE}
    assert extracted == set(sketchy_archives.rendered) | set(sketchy_archives.info)
    assert get_dataset("sketchy").is_layout(out)
    assert got[f"archives/{RENDERED}"] == sketchy_archives.data[RENDERED]
    assert temporary_names(out) == []
    assert not (out / LOCAL_COPY).exists()

    complete = json.loads((out / COMPLETE).read_text())
    assert complete["request"] == {"dataset": "sketchy", "source": None, "mirror": mirror.url}
    assert complete["archives"] == {RENDERED: md5(sketchy_archives.data[RENDERED]),
                                    INFO: md5(sketchy_archives.data[INFO])}
    assert sorted(mirror.requests) == sorted(f"/{name}" for name in (RENDERED, INFO, EXTEND))
    assert offline == []  # the mirror replaces Google Drive for every source


def test_optional_source_missing_from_the_mirror_is_skipped(mirror, sketchy_archives, sketchy_md5s, tmp_path,
                                                            capsys) -> None:
    mirror.files.update({RENDERED: sketchy_archives.data[RENDERED], INFO: sketchy_archives.data[INFO]})
    out = tmp_path / "raw"
    acquire(get_dataset("sketchy"), out, mirror=mirror.url, progress=False)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert EXTEND in warnings[0] and "Extended photos" in warnings[0] and "404" in warnings[0]
    assert (out / COMPLETE).is_file()
    assert EXTEND not in json.loads((out / COMPLETE).read_text())["archives"]
    assert not (out / "EXTEND_image_sketchy").exists()
    assert not (out / "archives" / EXTEND).exists()
    scan = get_dataset("sketchy").scan(out)
    assert any("no EXTEND_image_sketchy/" in note for note in scan.notes)
    assert sum(item.modality == "photo" for item in scan.items) == 2 * len(CLASSES)


def test_second_call_makes_no_request(mirror, sketchy_archives, sketchy_md5s, tmp_path, capsys) -> None:
    mirror.files.update({RENDERED: sketchy_archives.data[RENDERED], INFO: sketchy_archives.data[INFO]})
    out = tmp_path / "raw"
    acquire(get_dataset("sketchy"), out, mirror=mirror.url, progress=False)
    assert mirror.requests
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert len(before) > 10
    mirror.requests.clear()
    capsys.readouterr()

    assert acquire(get_dataset("sketchy"), out, mirror=mirror.url, progress=False) == out
    assert mirror.requests == []
    assert "nothing to do" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_sharding_the_download_drops_the_invalid_sketch(mirror, sketchy_archives, sketchy_md5s, tmp_path) -> None:
    mirror.files.update({RENDERED: sketchy_archives.data[RENDERED], INFO: sketchy_archives.data[INFO]})
    raw = acquire(get_dataset("sketchy"), tmp_path / "raw", mirror=mirror.url, progress=False)
    split = tmp_path / "unseen.txt"
    split.write_text("giraffe\n")
    out = tmp_path / "shards"
    index = shard_dataset(get_dataset("sketchy"), raw, out, str(split), image_size=32, workers=1, progress=False)

    invalid_source = f"256x256/sketch/{AUG}/cup/{INVALID_SKETCH}.png"
    assert [s["source"] for s in index["skipped"]] == [invalid_source]
    assert "invalid-ambiguous" in index["skipped"][0]["reason"]
    assert index["unseen_classes"] == ["giraffe"]
    assert sorted(index["classes"]) == sorted(CLASSES)
    sketches = [rel for rel in sketchy_archives.rendered if "/sketch/" in rel]
    assert sum(index["totals"][p]["sketch"] for p in ("train", "val", "test")) == len(sketches) - 1
    assert index["totals"]["test"]["sketch"] == 4 and index["totals"]["test"]["photo"] == 2
    sources = {json.loads(s["json"])["source"] for rel in index["shards"] for s in iter_tar_samples(out / rel)}
    assert invalid_source not in sources
    assert sources == set(sketchy_archives.rendered) - {invalid_source}


def test_md5_mismatch_is_an_error_and_nothing_is_marked_complete(mirror, sketchy_archives, monkeypatch,
                                                                 tmp_path) -> None:
    monkeypatch.setattr(Sketchy, "sources", with_md5(Sketchy, {RENDERED: "0" * 32,
                                                               INFO: md5(sketchy_archives.data[INFO])}))
    mirror.files.update({RENDERED: sketchy_archives.data[RENDERED], INFO: sketchy_archives.data[INFO]})
    out = tmp_path / "raw"
    with pytest.raises(SbirError, match="md5 mismatch") as info:
        acquire(get_dataset("sketchy"), out, mirror=mirror.url, progress=False)
    assert RENDERED in str(info.value) and "0" * 32 in str(info.value)
    assert md5(sketchy_archives.data[RENDERED]) in str(info.value)
    assert not (out / COMPLETE).exists()
    assert not (out / "256x256").exists()
    assert not (out / "archives" / RENDERED).exists()
    assert not download.part_path(out / "archives" / RENDERED).exists()
    assert temporary_names(out) == []

    # with the right md5 the same folder then completes
    monkeypatch.setattr(Sketchy, "sources", with_md5(Sketchy, {RENDERED: md5(sketchy_archives.data[RENDERED]),
                                                               INFO: md5(sketchy_archives.data[INFO])}))
    acquire(get_dataset("sketchy"), out, mirror=mirror.url, progress=False)
    assert (out / COMPLETE).is_file() and get_dataset("sketchy").is_layout(out)


# --- local copies --------------------------------------------------------------------------------------


def test_source_folder_of_archives_needs_no_server(sketchy_archives, sketchy_md5s, offline, tmp_path) -> None:
    out = tmp_path / "raw"
    acquire(get_dataset("sketchy"), out, source=sketchy_archives.folder, progress=False)
    assert offline == []  # every archive came from the folder, none from Google Drive
    got = tree(out)
    for rel, data in {**sketchy_archives.rendered, **sketchy_archives.info, **sketchy_archives.extend}.items():
        assert got[rel] == data, rel
    complete = json.loads((out / COMPLETE).read_text())
    assert complete["request"]["source"] == str(sketchy_archives.folder)
    assert sorted(complete["archives"]) == sorted([RENDERED, INFO, EXTEND])
    assert not (out / LOCAL_COPY).exists()
    assert temporary_names(out) == []
    # the archives in the user's folder are untouched
    assert tree(sketchy_archives.folder) == sketchy_archives.data

    scan = get_dataset("sketchy").scan(out)
    extended = sorted((i.class_name, i.instance_id) for i in scan.items if "EXTEND" in i.source)
    assert extended == sorted((name, f"{name}/ext:ext_{synset}_9") for name, synset in CLASSES.items())


def test_source_in_the_layout_is_used_in_place(sketchy_archives, offline, tmp_path, capsys) -> None:
    layout = sketchy_archives.layout
    before = folder_fingerprint(layout)
    out = tmp_path / "raw"
    assert acquire(get_dataset("sketchy"), out, source=layout, progress=False) == out
    assert sorted(p.name for p in out.iterdir()) == [COMPLETE, LOCAL_COPY]  # no copy made
    pointer = json.loads((out / LOCAL_COPY).read_text())
    assert pointer["path"] == str(layout.resolve())
    assert pointer["fingerprint"] == before
    assert pointer["fingerprint"]["files"] == len(sketchy_archives.rendered) + len(sketchy_archives.info)
    assert json.loads((out / COMPLETE).read_text())["local_copy"] == str(layout.resolve())
    assert resolve_raw(out) == layout.resolve()
    assert resolve_raw(layout) == layout  # a folder without a pointer is its own raw folder
    assert "using the local copy" in capsys.readouterr().err
    assert folder_fingerprint(layout) == before
    assert offline == []


def test_pointer_to_a_removed_local_copy_is_an_error(sketchy_archives, tmp_path) -> None:
    copy = tmp_path / "copy"
    write_tree(copy, sketchy_archives.rendered)
    out = tmp_path / "raw"
    acquire(get_dataset("sketchy"), out, source=copy, progress=False)
    assert resolve_raw(out) == copy.resolve()
    for path in sorted(copy.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    copy.rmdir()
    with pytest.raises(SbirError, match="no longer exists") as info:
        resolve_raw(out)
    assert str(copy) in str(info.value)


def test_missing_source_folder_is_an_error(tmp_path) -> None:
    with pytest.raises(SbirError, match="does not exist") as info:
        acquire(get_dataset("sketchy"), tmp_path / "raw", source=tmp_path / "nowhere", progress=False)
    assert "nowhere" in str(info.value)
    assert not (tmp_path / "raw").exists()


# --- TU-Berlin Extended photo folders with typos -------------------------------------------------------


def test_tuberlin_extended_typo_folders_map_to_sketch_classes(mirror, monkeypatch, tmp_path) -> None:
    sketches = {"png/space shuttle/1.png": png(1), "png/giraffe/2.png": png(2), "png/ant/3.png": png(3)}
    photos = {"ImageResized/spacesshuttle/a.JPEG": jpeg(1), "ImageResized/griaffe/b.JPEG": jpeg(2),
              "ImageResized/ant/c.JPEG": jpeg(3), "ImageResized/xylophone/d.JPEG": jpeg(4)}
    mirror.files["sketches_png.zip"] = pack_zip(tmp_path / "sketches_png.zip", sketches)
    mirror.files["ImageResized.zip"] = pack_zip(tmp_path / "ImageResized.zip", photos)
    monkeypatch.setattr(TUBerlin, "sources", with_md5(TUBerlin, {"sketches_png.zip":
                                                                 md5(mirror.files["sketches_png.zip"])}))
    out = acquire(get_dataset("tuberlin"), tmp_path / "raw", mirror=mirror.url, progress=False)
    assert (out / COMPLETE).is_file()
    assert tree(out).items() >= {**sketches, **photos}.items()

    scan = get_dataset("tuberlin").scan(out)
    classes = {item.source: (item.modality, item.class_name) for item in scan.items}
    assert classes == {
        "png/space shuttle/1.png": ("sketch", "space shuttle"),
        "png/giraffe/2.png": ("sketch", "giraffe"),
        "png/ant/3.png": ("sketch", "ant"),
        "ImageResized/spacesshuttle/a.JPEG": ("photo", "space shuttle"),
        "ImageResized/griaffe/b.JPEG": ("photo", "giraffe"),
        "ImageResized/ant/c.JPEG": ("photo", "ant"),
    }
    assert "photo folder 'spacesshuttle' -> class 'space shuttle' (known typo)" in scan.notes
    assert "photo folder 'griaffe' -> class 'giraffe' (known typo)" in scan.notes
    assert not any("'ant'" in note for note in scan.notes)  # exact names need no note
    assert scan.skipped == [{"source": "ImageResized/xylophone/", "reason": "folder matches no class of the dataset"}]


# --- unsafe archives -----------------------------------------------------------------------------------


def traversal_7z(path: Path) -> bytes:
    with py7zr.SevenZipFile(path, "w") as zf:
        zf.writestr(png(1), f"256x256/sketch/{AUG}/cup/n1_1-1.png")
        zf._writestr(b"evil", "../../evil")  # the public writestr refuses unsafe names
    return path.read_bytes()


def traversal_zip(path: Path) -> bytes:
    return pack_zip(path, {"png/ant/1.png": png(1), "../../evil": b"evil"})


@pytest.mark.parametrize("dataset, filename, make", [("sketchy", RENDERED, traversal_7z),
                                                     ("tuberlin", "sketches_png.zip", traversal_zip)])
def test_path_traversal_entry_from_the_mirror_is_refused(mirror, monkeypatch, tmp_path, dataset, filename,
                                                         make) -> None:
    work = tmp_path / "work"
    work.mkdir()
    mirror.files[filename] = make(tmp_path / filename)
    cls = type(get_dataset(dataset))
    monkeypatch.setattr(cls, "sources", with_md5(cls, {s.filename: None for s in cls.sources}))
    out = work / "raw"
    with pytest.raises(SbirError, match="unsafe entry") as info:
        acquire(get_dataset(dataset), out, mirror=mirror.url, progress=False)
    assert "../../evil" in str(info.value) and filename in str(info.value)
    assert [p for p in tmp_path.rglob("*evil*")] == []
    assert sorted(os.listdir(work)) == ["raw"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["archives", f"archives/{filename}"]
    assert f"/{filename}" in mirror.requests
