"""Hashing files and folders: one reader of every file digest (streamed, memory bounded by one chunk)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK_SIZE = 1 << 20


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (``sha256``, ``md5``, ...), read in chunks of :data:`CHUNK_SIZE`."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_fingerprint(root: Path) -> dict:
    """Count, total size and a hash of every file's relative path, size and mtime below ``root``."""
    digest = hashlib.sha256()
    count = size = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            stat = os.stat(os.path.join(folder, name))
            rel = os.path.relpath(os.path.join(folder, name), root)
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            count += 1
            size += stat.st_size
    return {"files": count, "bytes": size, "sha256": digest.hexdigest()}
