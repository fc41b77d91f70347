"""Safe, atomic extraction of the dataset archives (.zip, .7z, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

Every entry is checked before anything is written: absolute paths, ``..`` components, names that would
land outside the target, symlinks, hardlinks and other special files are refused with an
:class:`SbirError` naming the archive and the entry. The archive is extracted into a hidden folder beside
the target and renamed into place only when extraction finished, so an existing target is always a
complete extraction and an interrupted one leaves no target behind.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import re
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from sbir.errors import SbirError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SUFFIXES = (".zip", ".7z", *TAR_SUFFIXES)

_DRIVE = re.compile(r"^[A-Za-z]:")


def archive_kind(archive: Path) -> str:
    """``"zip"``, ``"7z"`` or ``"tar"`` from the file name; :class:`SbirError` for anything else."""
    name = Path(archive).name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(".7z"):
        return "7z"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    raise SbirError(f"{archive}: unsupported archive type (expected one of {', '.join(SUFFIXES)})")


def _bad(archive: Path, entry: str, why: str) -> SbirError:
    return SbirError(f"{archive}: unsafe entry '{entry}': {why}; refusing to extract anything")


def check_entry(archive: Path, target: Path, name: str, is_dir: bool = False) -> str:
    """The entry ``name`` as a normalised relative POSIX path, or :class:`SbirError` when it is unsafe.

    Backslashes count as separators here, so a Windows-style ``..\\x`` is refused too.
    """
    if not name or "\x00" in name:
        raise _bad(archive, name, "empty name or NUL byte in the name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or _DRIVE.match(unified):
        raise _bad(archive, name, "absolute path")
    if ".." in unified.split("/"):
        raise _bad(archive, name, "parent-directory ('..') component")
    norm = posixpath.normpath(unified)
    root = os.path.abspath(target)
    dest = os.path.normpath(os.path.join(root, norm))
    if os.path.commonpath([root, dest]) != root:
        raise _bad(archive, name, f"resolves outside {target}")
    if norm == "." and not is_dir:
        raise _bad(archive, name, "a file that would replace the target folder itself")
    return norm


class _Reader:
    """One open archive: its entries (checked) and a way to extract them all into a folder."""

    #: how many progress updates :meth:`extract_to` makes
    count: int | None = None

    def entries(self) -> list[str]:
        """Check every entry; return the normalised names of the regular files."""
        raise NotImplementedError

    def extract_to(self, folder: Path, bar: tqdm) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _ZipReader(_Reader):
    def __init__(self, archive: Path, target: Path):
        self.archive, self.target = archive, target
        self.zf = zipfile.ZipFile(archive)
        self.infos = self.zf.infolist()
        self.count = len(self.infos)

    def entries(self) -> list[str]:
        files = []
        for info in self.infos:
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if stat.S_ISLNK(mode):
                raise _bad(self.archive, info.filename, "symbolic link")
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise _bad(self.archive, info.filename, "special file (device, fifo or socket)")
            if info.flag_bits & 0x1:
                raise SbirError(f"{self.archive}: entry '{info.filename}' is encrypted; cannot extract it")
            norm = check_entry(self.archive, self.target, info.filename, info.is_dir())
            if not info.is_dir():
                files.append(norm)
        return files

    def extract_to(self, folder: Path, bar: tqdm) -> None:
        for info in self.infos:
            self.zf.extract(info, folder)
            bar.update(1)

    def close(self) -> None:
        self.zf.close()


class _TarReader(_Reader):
    def __init__(self, archive: Path, target: Path):
        self.archive, self.target = archive, target
        self.tf = tarfile.open(archive, "r:*")
        self.members = self.tf.getmembers()
        self.count = len(self.members)

    def entries(self) -> list[str]:
        files = []
        for m in self.members:
            if m.issym():
                raise _bad(self.archive, m.name, f"symbolic link (to {m.linkname!r})")
            if m.islnk():
                raise _bad(self.archive, m.name, f"hard link (to {m.linkname!r})")
            if not (m.isfile() or m.isdir()):
                raise _bad(self.archive, m.name, "special file (device, fifo or socket)")
            norm = check_entry(self.archive, self.target, m.name, m.isdir())
            if m.isfile():
                files.append(norm)
        return files

    def extract_to(self, folder: Path, bar: tqdm) -> None:
        def counted():
            for m in self.members:
                yield m
                bar.update(1)

        # extractall (not extract per member) so read-only folders get their mode only at the end;
        # the "data" filter (Python >= 3.10.12) is a second line of defence behind entries()
        if hasattr(tarfile, "data_filter"):
            self.tf.extractall(folder, members=counted(), filter="data")
        else:  # pragma: no cover - old Python without extraction filters
            self.tf.extractall(folder, members=counted())
        # read the compressed stream to its end: gzip checks its CRC only there, and tarfile stops
        # at the end-of-archive blocks, so a damaged .tar.gz would otherwise extract without a word
        while self.tf.fileobj.read(1 << 20):
            pass

    def close(self) -> None:
        self.tf.close()


class _SevenZipReader(_Reader):
    def __init__(self, archive: Path, target: Path):
        import py7zr

        self.archive, self.target = archive, target
        self.zf = py7zr.SevenZipFile(archive, mode="r")
        self.count = sum(1 for f in self.zf.files if not f.is_directory)

    def entries(self) -> list[str]:
        files = []
        for f in self.zf.files:
            if f.is_symlink or f.is_junction:
                raise _bad(self.archive, f.filename, "symbolic link")
            if f.is_socket:
                raise _bad(self.archive, f.filename, "special file (socket)")
            norm = check_entry(self.archive, self.target, f.filename, f.is_directory)
            if not f.is_directory:
                files.append(norm)
        return files

    def extract_to(self, folder: Path, bar: tqdm) -> None:
        from py7zr.callbacks import ExtractCallback

        class Progress(ExtractCallback):
            def report_start_preparation(self) -> None:
                pass

            def report_start(self, processing_file_path: str, processing_bytes: str) -> None:
                pass

            def report_update(self, decompressed_bytes: str) -> None:
                pass

            def report_end(self, processing_file_path: str, wrote_bytes: str) -> None:
                bar.update(1)

            def report_warning(self, message: str) -> None:
                pass

            def report_postprocess(self) -> None:
                pass

        self.zf.extractall(path=folder, callback=Progress())

    def close(self) -> None:
        self.zf.close()


def _corrupt_errors(kind: str) -> tuple[type[BaseException], ...]:
    """The exceptions that mean the archive itself is damaged, for each kind."""
    common: tuple[type[BaseException], ...] = (EOFError, zlib.error, lzma.LZMAError)
    if kind == "zip":
        return (*common, zipfile.BadZipFile, NotImplementedError)
    if kind == "tar":
        return (*common, tarfile.TarError, gzip.BadGzipFile)
    import py7zr.exceptions

    return (*common, py7zr.exceptions.ArchiveError, py7zr.exceptions.PasswordRequired, KeyError, ValueError)


def extract(archive: Path, target: Path) -> list[str]:
    """Extract ``archive`` into the new folder ``target``; return the relative names of its files.

    ``target`` must not exist yet (an existing one is a finished extraction: remove it to redo). The
    entries are all checked first (see :func:`check_entry`); extraction goes to a hidden folder beside
    ``target`` that is renamed to ``target`` at the end and removed on any failure. A damaged or
    truncated archive raises :class:`SbirError` naming the file.
    """
    archive, target = Path(archive), Path(target)
    kind = archive_kind(archive)
    if not archive.is_file():
        raise SbirError(f"{archive}: no such archive file")
    if target.exists() or target.is_symlink():
        raise SbirError(f"{target} already exists; remove it to extract {archive.name} again")
    readers = {"zip": _ZipReader, "tar": _TarReader, "7z": _SevenZipReader}
    try:
        reader = readers[kind](archive, target)
        try:
            files = reader.entries()
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.extracting-{os.getpid()}-{secrets.token_hex(4)}"
            tmp.mkdir()
            try:
                with tqdm(total=reader.count, desc=f"extracting {archive.name}", unit="entry",
                          disable=None) as bar:
                    reader.extract_to(tmp, bar)
                os.rename(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        finally:
            reader.close()
    except SbirError:
        raise
    except _corrupt_errors(kind) as e:
        raise SbirError(f"{archive}: corrupt or truncated {kind} archive ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise SbirError(f"{archive}: could not extract into {target}: {e}") from None
    return files
