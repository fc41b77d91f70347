"""Safe, atomic archive extraction: good archives, unsafe entries, damaged archives, crashes."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import py7zr
import pytest

from sbir.data.acquisition import archives
from sbir.data.acquisition.archives import extract
from sbir.errors import SbirError

CONTENT = {
    "root/a.txt": b"hello sketch\n",
    "root/sub/b.bin": os.urandom(40_000),
    "root/car_(sedan)/n02958343_1-1.png": os.urandom(3_000),
    "root/bottle opener/1.png": b"\x89PNG fake",
    "root/empty.txt": b"",
}


def write_zip(path: Path, content: dict[str, bytes] = CONTENT) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in content.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, content: dict[str, bytes] = CONTENT, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_7z(path: Path, content: dict[str, bytes] = CONTENT) -> Path:
    with py7zr.SevenZipFile(path, "w") as zf:
        for name, data in content.items():
            zf.writestr(data, name)
    return path


WRITERS = {
    "a.zip": write_zip,
    "a.7z": write_7z,
    "a.tar.gz": write_tar,
    "a.tgz": write_tar,
    "a.tar": lambda p: write_tar(p, mode="w"),
}


def other_names(folder: Path, keep: set[str]) -> list[str]:
    """Names in ``folder`` other than ``keep`` (temp folders, partial targets)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_extracts_every_format(tmp_path: Path, name: str) -> None:
    archive = WRITERS[name](tmp_path / name)
    target = tmp_path / "out" / "dataset"
    files = extract(archive, target)
    assert sorted(files) == sorted(CONTENT)
    for rel, data in CONTENT.items():
        assert (target / rel).read_bytes() == data
    on_disk = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert on_disk == sorted(CONTENT)
    assert other_names(tmp_path / "out", {"dataset"}) == []


def test_existing_target_is_refused_and_kept(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "a.zip")
    target = tmp_path / "t"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(SbirError, match="already exists"):
        extract(archive, target)
    assert (target / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in target.iterdir()) == ["mine.txt"]


def test_unsupported_suffix(tmp_path: Path) -> None:
    bogus = tmp_path / "a.rar"
    bogus.write_bytes(b"Rar!")
    with pytest.raises(SbirError, match=r"a\.rar: unsupported archive type"):
        extract(bogus, tmp_path / "t")


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(SbirError, match="no such archive"):
        extract(tmp_path / "gone.zip", tmp_path / "t")


# --- unsafe entries: a good entry first, so extracting before checking would write something ---------

GOOD = {"root/good.txt": b"fine"}


def zip_with(path: Path, bad_name: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in GOOD.items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo(bad_name)
        if symlink:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(info, b"evil")
    return path


def tar_with(path: Path, bad_name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in GOOD.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(bad_name)
        info.type = kind
        info.linkname = link
        if kind == tarfile.REGTYPE:
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
        else:
            tf.addfile(info)
    return path


def sevenz_with(path: Path, bad_name: str, symlink_to: Path | None = None) -> Path:
    with py7zr.SevenZipFile(path, "w") as zf:
        for name, data in GOOD.items():
            real = path.parent / "made-file"
            real.write_bytes(data)
            zf.write(real, arcname=name)  # write(), not writestr(): py7zr cannot mix those with links
            real.unlink()
        if symlink_to is not None:
            link = path.parent / "made-link"
            link.symlink_to(symlink_to)
            zf.write(link, arcname=bad_name)
            link.unlink()
        else:
            zf._writestr(b"evil", bad_name)  # the public writestr refuses unsafe names
    return path


UNSAFE = {
    "zip-dotdot": ("a.zip", "../evil", lambda p: zip_with(p, "../evil")),
    "zip-nested-dotdot": ("a.zip", "root/../../evil", lambda p: zip_with(p, "root/../../evil")),
    "zip-backslash-dotdot": ("a.zip", "..\\evil", lambda p: zip_with(p, "..\\evil")),
    "zip-absolute": ("a.zip", "/abs/path", lambda p: zip_with(p, "/abs/path")),
    "zip-drive": ("a.zip", "C:/evil", lambda p: zip_with(p, "C:/evil")),
    "zip-symlink": ("a.zip", "root/link", lambda p: zip_with(p, "root/link", symlink=True)),
    "tar-dotdot": ("a.tar.gz", "../evil", lambda p: tar_with(p, "../evil")),
    "tar-absolute": ("a.tar.gz", "/abs/path", lambda p: tar_with(p, "/abs/path")),
    "tar-symlink": ("a.tar.gz", "root/link",
                    lambda p: tar_with(p, "root/link", tarfile.SYMTYPE, "/etc/passwd")),
    "tar-relative-symlink": ("a.tar.gz", "root/up",
                             lambda p: tar_with(p, "root/up", tarfile.SYMTYPE, "../..")),
    "tar-hardlink": ("a.tar.gz", "root/hard",
                     lambda p: tar_with(p, "root/hard", tarfile.LNKTYPE, "root/good.txt")),
    "tar-fifo": ("a.tar.gz", "root/fifo", lambda p: tar_with(p, "root/fifo", tarfile.FIFOTYPE)),
    "7z-dotdot": ("a.7z", "../evil", lambda p: sevenz_with(p, "../evil")),
    "7z-absolute": ("a.7z", "/abs/evil", lambda p: sevenz_with(p, "/abs/evil")),
    "7z-symlink": ("a.7z", "root/link", lambda p: sevenz_with(p, "root/link", Path("/etc/passwd"))),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_entries_are_refused_before_writing(tmp_path: Path, case: str) -> None:
    name, bad_entry, make = UNSAFE[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = make(work / name)
    before = sorted(p.name for p in work.iterdir())
    target = work / "out"
    with pytest.raises(SbirError) as info:
        extract(archive, target)
    message = str(info.value)
    assert name in message and bad_entry in message
    assert "unsafe entry" in message
    assert not target.exists()
    assert sorted(p.name for p in work.iterdir()) == before  # no temp folder, nothing extracted
    assert not (tmp_path / "evil").exists() and not Path("/abs/path").exists()


def test_check_entry_normalises_safe_names(tmp_path: Path) -> None:
    assert archives.check_entry(tmp_path / "a.zip", tmp_path / "t", "./root//a.txt") == "root/a.txt"
    assert archives.check_entry(tmp_path / "a.zip", tmp_path / "t", "./", is_dir=True) == "."
    with pytest.raises(SbirError, match="replace the target"):
        archives.check_entry(tmp_path / "a.zip", tmp_path / "t", "./", is_dir=False)


def test_tar_with_dot_root_entry_extracts(tmp_path: Path) -> None:
    """``tar -C dir .`` archives start with a ``./`` folder entry: that one is fine."""
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.addfile(_dir_info("./"))
        info = tarfile.TarInfo("./x/y.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"ok"))
    target = tmp_path / "t"
    assert extract(archive, target) == ["x/y.txt"]
    assert (target / "x" / "y.txt").read_bytes() == b"ok"


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


# --- damaged archives ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.zip", "a.7z", "a.tar.gz"])
def test_truncated_archive_names_the_file(tmp_path: Path, name: str) -> None:
    good = WRITERS[name](tmp_path / ("good-" + name))
    data = good.read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 2])
    target = tmp_path / "t"
    with pytest.raises(SbirError, match=rf"{name}: corrupt or truncated"):
        extract(bad, target)
    assert not target.exists()
    assert other_names(tmp_path, {bad.name, good.name}) == []


@pytest.mark.parametrize("name", ["a.zip", "a.7z", "a.tar.gz", "a.tar"])
def test_garbage_file_names_the_file(tmp_path: Path, name: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(os.urandom(2048))
    with pytest.raises(SbirError, match=rf"{name}: corrupt or truncated"):
        extract(bad, tmp_path / "t")
    assert other_names(tmp_path, {name}) == []


def test_zip_with_bad_crc_is_corrupt(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    payload = b"A" * 5000
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("first.txt", b"fine")
        zf.writestr("second.txt", payload)
    data = bytearray(archive.read_bytes())
    at = data.index(payload)
    data[at + 100] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(SbirError, match=r"a\.zip: corrupt or truncated zip archive"):
        extract(archive, tmp_path / "t")
    assert other_names(tmp_path, {"a.zip"}) == []


@pytest.mark.parametrize("name", ["a.tar.gz", "a.7z", "a.zip"])
def test_flipped_byte_is_corrupt(tmp_path: Path, name: str) -> None:
    """Damage in the middle of the compressed data is caught by the format's checksum."""
    payload = {"root/one.bin": os.urandom(100_000), "root/two.bin": os.urandom(100_000)}
    archive = tmp_path / name
    _write(name, archive, payload)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(SbirError, match=rf"{name}: corrupt or truncated"):
        extract(archive, tmp_path / "t")
    assert other_names(tmp_path, {name}) == []


def _write(name: str, archive: Path, content: dict[str, bytes]) -> Path:
    if name.endswith(".zip"):
        return write_zip(archive, content)
    if name.endswith(".7z"):
        return write_7z(archive, content)
    return write_tar(archive, content)


# --- a crash half way leaves no target -----------------------------------------------------------


class Boom(Exception):
    pass


def test_crash_mid_zip_leaves_no_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_zip(tmp_path / "a.zip")
    original = zipfile.ZipFile.extract
    calls = []

    def flaky(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 3:
            raise Boom("disk on fire")
        return original(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", flaky)
    target = tmp_path / "t"
    with pytest.raises(Boom):
        extract(archive, target)
    assert len(calls) == 3  # two entries were really written somewhere before the crash
    assert not target.exists()
    assert other_names(tmp_path, {"a.zip"}) == []


def test_interrupt_mid_tar_leaves_no_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_tar(tmp_path / "a.tar.gz")
    original = tarfile.TarFile.extractall
    seen = []

    def interrupted(self, path=".", members=None, **kwargs):
        def some():
            for m in members:
                seen.append(m.name)
                if len(seen) == 3:
                    raise KeyboardInterrupt
                yield m

        return original(self, path, members=some(), **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    target = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        extract(archive, target)
    assert len(seen) == 3
    assert not target.exists()
    assert other_names(tmp_path, {"a.tar.gz"}) == []


def test_crash_mid_7z_leaves_no_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_7z(tmp_path / "a.7z")
    written = []

    def half(self, path=None, **kwargs):
        Path(path, "root").mkdir(parents=True)
        Path(path, "root", "a.txt").write_bytes(b"half")
        written.append(Path(path))
        raise Boom("killed")

    monkeypatch.setattr(py7zr.SevenZipFile, "extractall", half)
    target = tmp_path / "t"
    with pytest.raises(Boom):
        extract(archive, target)
    assert written and written[0].parent == tmp_path  # the temp folder sits beside the target
    assert not written[0].exists()
    assert not target.exists()
    assert other_names(tmp_path, {"a.7z"}) == []


def test_rerun_after_crash_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_zip(tmp_path / "a.zip")
    target = tmp_path / "t"
    with monkeypatch.context() as m:
        m.setattr(zipfile.ZipFile, "extract", lambda *a, **k: (_ for _ in ()).throw(Boom()))
        with pytest.raises(Boom):
            extract(archive, target)
    assert sorted(extract(archive, target)) == sorted(CONTENT)
    assert (target / "root" / "sub" / "b.bin").read_bytes() == CONTENT["root/sub/b.bin"]
