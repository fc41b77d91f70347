"""Writing shards: sample keys and metadata, and byte-reproducible WebDataset tar members (fixed headers,
mtime, owner and mode), streamed by :class:`TarShardWriter` with the shard's sha256 computed as it is written."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path

SHARD_MTIME = 0


TAR_MODE = 0o444


TAR_OWNER = "sbir"


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(*parts: str) -> str:
    """A WebDataset key (no dots, no slashes) built from readable parts."""
    return "_".join(_UNSAFE_KEY_CHARS.sub("-", part).strip("-") for part in parts)


_METADATA_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def sample_metadata(class_name: str, modality: str, source: str, instance_id: str, **extra) -> bytes:
    return _METADATA_ENCODER.encode({"class": class_name, "modality": modality, "source": source,
                                     "instance": instance_id, **extra}).encode()


def tar_member(name: str, data: bytes) -> bytes:
    """One regular-file member of a tar (header, data, padding), exactly as ``tarfile`` writes it.

    Writing the members directly keeps the shard writer small enough to run in every worker process;
    the result is byte-identical to ``webdataset.TarWriter`` with the same header fields (tested).
    """
    return b"".join(_member_pieces(name, data))


def _member_pieces(name: str, data: bytes) -> tuple[bytes, ...]:
    header = _ustar_header(name, len(data))
    padding = -len(data) % tarfile.BLOCKSIZE
    return (header, data, _ZEROS[:padding]) if padding else (header, data)


_ZEROS = tarfile.NUL * tarfile.BLOCKSIZE


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


# A ustar header for a regular file with the shard's fixed fields is: name (100 bytes), mode, uid, gid
# (8 each), size (12), mtime (12), checksum (8), then a tail that never changes. Everything but the name,
# the size and the checksum is fixed, so those parts and their byte sums are computed once.
_FIXED_IDS = _octal(TAR_MODE, 8) + _octal(0, 8) + _octal(0, 8)


_FIXED_MTIME = _octal(SHARD_MTIME, 12)


_HEADER_TAIL = b"".join([
    b"0", b"\0" * 100, tarfile.POSIX_MAGIC, TAR_OWNER.encode().ljust(32, b"\0"),
    TAR_OWNER.encode().ljust(32, b"\0"), b"\0" * 16, b"\0" * 155]).ljust(tarfile.BLOCKSIZE - 156, b"\0")


_FIXED_SUM = sum(_FIXED_IDS) + sum(_FIXED_MTIME) + sum(b" " * 8) + sum(_HEADER_TAIL)


def _ustar_header(name: str, size: int) -> bytes:
    """The 512-byte header ``tarfile`` writes for a regular file with the shard's fixed fields.

    Built directly from precomputed parts (``TarInfo.tobuf`` costs a third of an image decode); names that
    do not fit a plain ustar header (over 100 bytes, or not ASCII) go through ``tarfile`` itself, which
    adds a pax header.
    """
    if len(name) > 100 or not name.isascii() or size >= 8 ** 11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, SHARD_MTIME, TAR_MODE
        info.uname = info.gname = TAR_OWNER
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    encoded = name.encode("ascii")
    size_field = b"%011o\0" % size
    checksum = _FIXED_SUM + sum(encoded) + sum(size_field)
    return b"".join((encoded.ljust(100, b"\0"), _FIXED_IDS, size_field, _FIXED_MTIME,
                     b"%06o\0 " % checksum, _HEADER_TAIL))


def _sample_pieces(key: str, image: bytes, extension: str, class_index: int, metadata: bytes) -> list[bytes]:
    """The tar members of one sample as byte pieces, in the order ``webdataset.TarWriter`` writes them
    (sorted by extension)."""
    members = {extension: image, "cls": str(class_index).encode(), "json": metadata}
    return [piece for ext in sorted(members) for piece in _member_pieces(f"{key}.{ext}", members[ext])]


def sample_bytes(key: str, image: bytes, extension: str, class_index: int, metadata: bytes) -> bytes:
    """The tar members of one sample, in the order ``webdataset.TarWriter`` writes them (sorted)."""
    return b"".join(_sample_pieces(key, image, extension, class_index, metadata))


class TarShardWriter:
    """Appends samples to one tar shard, hashing as it writes.

    The shard is written to ``<path>.tmp`` and renamed to ``path`` by :meth:`close`, so a shard that
    exists is complete.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a 1 MiB buffer: one system call per dozens of samples instead of one per sample
        self._handle = open(self.path.with_suffix(".tar.tmp"), "wb", buffering=1 << 20)
        self._digest = hashlib.sha256()
        self.size = self.count = 0

    def write(self, chunk: bytes) -> None:
        """Append one sample's tar members (from :func:`sample_bytes`)."""
        self._append(chunk)
        self.count += 1

    def write_sample(self, key: str, image: bytes, extension: str, class_index: int, metadata: bytes) -> None:
        """Append one sample (the arguments of :func:`sample_bytes`) without first joining its bytes."""
        for piece in _sample_pieces(key, image, extension, class_index, metadata):
            self._append(piece)
        self.count += 1

    def _append(self, chunk: bytes) -> None:
        self._handle.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    def close(self) -> str:
        """Write the end-of-archive blocks, rename into place; return the shard's sha256."""
        end = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
        end += tarfile.NUL * (-(self.size + len(end)) % tarfile.RECORDSIZE)
        self._append(end)
        self._handle.close()
        os.replace(self.path.with_suffix(".tar.tmp"), self.path)
        return self._digest.hexdigest()
