"""Hashing (sbir.utils.hashing): the one file hasher reads in chunks and equals hashlib on the whole bytes; the
folder fingerprint sees every file's path, size and time, and nothing else."""

from __future__ import annotations

import hashlib
import os

import pytest

from sbir.utils import hashing
from sbir.utils.hashing import file_digest, folder_fingerprint


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5])
@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_file_digest_in_chunks_equals_hashlib(tmp_path, monkeypatch, size, algorithm):
    monkeypatch.setattr(hashing, "CHUNK_SIZE", 4096)  # several chunks, and sizes at their edges
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_digest(path, algorithm) == hashlib.new(algorithm, data).hexdigest()


def test_file_digest_defaults_to_sha256(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"sketch")
    assert file_digest(path) == hashlib.sha256(b"sketch").hexdigest()


def test_folder_fingerprint_changes_with_any_file_and_only_then(tmp_path):
    root = tmp_path / "raw"
    for rel, data in {"a/1.png": b"x" * 10, "a/2.png": b"yy", "b/c/3.jpg": b""}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    first = folder_fingerprint(root)
    assert first["files"] == 3 and first["bytes"] == 12 and len(first["sha256"]) == 64
    assert folder_fingerprint(root) == first
    (root / "empty").mkdir()  # folders alone are not content
    assert folder_fingerprint(root) == first
    stat = (root / "a/2.png").stat()
    (root / "a/2.png").write_bytes(b"zz")  # same size, same time: not seen (the fingerprint does not read files)
    os.utime(root / "a/2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder_fingerprint(root) == first
    os.utime(root / "a/2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    touched = folder_fingerprint(root)
    assert touched["files"] == 3 and touched["sha256"] != first["sha256"]
    (root / "a/2.png").rename(root / "a/4.png")
    assert folder_fingerprint(root)["sha256"] not in (first["sha256"], touched["sha256"])
    (root / "b/c/3.jpg").unlink()
    assert folder_fingerprint(root)["files"] == 2
