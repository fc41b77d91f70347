"""WebDataset shards: deterministic writing, and reading back.

A shard is a plain tar of samples; each sample is ``<key>.jpg`` or ``<key>.png`` (the image),
``<key>.cls`` (class index, ASCII) and ``<key>.json`` (class name, modality, source path, instance id).
Tar headers carry a fixed mtime, owner and mode, so the same samples in the same order give the same
bytes. A shard is written to ``<name>.tmp`` and renamed when complete.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from sbir.errors import SbirError

INDEX_NAME = "index.json"
PARTS = ("train", "val", "test")





























#: the index keys a reader may ask :func:`read_index` to insist on
INDEX_KEYS = ("shards", "counts", "totals", "classes", "seen_classes", "unseen_classes")
_SHARD_NAME = re.compile(r"(train|val|test)/(sketch|photo)-[0-9]+\.tar")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_index(folder: Path, require: tuple[str, ...] = ()) -> dict:
    """The shard index ``folder/index.json``, its shape checked; :class:`SbirError` in one line otherwise.

    Every key of :data:`INDEX_KEYS` that is present must have the shape ``sbir-prep shard`` writes
    (``shards``: ``<part>/<modality>-<n>.tar`` -> samples and sha256; ``counts``: part -> modality ->
    class -> count; ...), and the keys in ``require`` must be present. With no ``require`` the index must
    still hold one of those keys (``{}`` is no index), but readers that need only the class lists (a
    frozen model's training) accept an index of just those.
    """
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise SbirError(f"{path}: no shard index (is {folder} the output of 'sbir-prep shard'?)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise SbirError(f"{path}: unreadable shard index: {error}") from None
    except OSError as error:
        raise SbirError(f"{path}: unreadable shard index: {error.strerror}") from None
    problem = _index_problem(index, require)
    if problem:
        raise SbirError(f"{path}: not a shard index ({problem})")
    return index


def _json_kind(value) -> str:
    """How JSON calls the type of ``value``, for messages."""
    kinds = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"), (list, "array"),
             (dict, "object"), (type(None), "null"))
    return "a JSON " + next((kind for type_, kind in kinds if isinstance(value, type_)), type(value).__name__)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _index_problem(index, require: tuple[str, ...]) -> str | None:
    """What makes ``index`` not a shard index (for ``not a shard index (...)``), or None."""
    if not isinstance(index, dict):
        return f"{_json_kind(index)}, not an object"
    missing = [key for key in require if key not in index]
    if not require and not any(key in index for key in INDEX_KEYS):
        missing = ["shards"]
    if missing:
        kind = "list" if missing[0].endswith("classes") else "object"
        return f"no '{missing[0]}' {kind}"
    if "shards" in index:
        shards = index["shards"]
        if not isinstance(shards, dict):
            return f"'shards' is {_json_kind(shards)}, not an object"
        for rel, entry in shards.items():
            if not _SHARD_NAME.fullmatch(rel):
                return f"shard path {rel!r} is not <part>/<modality>-<number>.tar"
            if not isinstance(entry, dict):
                return f"shard {rel!r} is {_json_kind(entry)}, not an object"
            if not isinstance(entry.get("sha256"), str):
                return f"shard {rel!r} has no 'sha256' string"
            if not _SHA256.fullmatch(entry["sha256"]):
                return f"shard {rel!r}: 'sha256' is not 64 hexadecimal digits"
            if not _is_count(entry.get("samples")):
                return f"shard {rel!r}: 'samples' is not a count"
    for key in ("counts", "totals"):
        if key in index:
            problem = _per_part_problem(index[key], key, per_class=key == "counts")
            if problem:
                return problem
    for key in ("classes", "seen_classes", "unseen_classes"):
        names = index.get(key, [])
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return f"'{key}' is {_json_kind(names)}, not a list of class names"
    return None


def _per_part_problem(table, key: str, per_class: bool) -> str | None:
    """``table[part][modality]`` must be a count (``totals``) or class -> count (``counts``) for every part
    and modality."""
    if not isinstance(table, dict):
        return f"'{key}' is {_json_kind(table)}, not an object"
    for part in PARTS:
        if not isinstance(table.get(part), dict):
            return f"no '{key}.{part}' object"
        for modality in ("sketch", "photo"):
            value, where = table[part].get(modality), f"{key}.{part}.{modality}"
            if not per_class:
                if not _is_count(value):
                    return f"'{where}' is {_json_kind(value)}, not a count"
                continue
            if not isinstance(value, dict):
                return f"no '{where}' object"
            for class_name, count in value.items():
                if not _is_count(count):
                    return f"'{where}.{class_name}' is {_json_kind(count)}, not a count"
    return None


def shard_paths(folder: Path, part: str, modality: str) -> list[Path]:
    """The shards of one part and modality, in order, as listed in the index."""
    index = read_index(folder, require=("shards",))
    return [Path(folder) / rel for rel in index["shards"] if rel.startswith(f"{part}/{modality}-")]


class ShardReadError(SbirError):
    """A shard's tar cannot be read to its end: ``path``, the last whole sample read (``after``, None when
    none was) and the ``reason``."""

    def __init__(self, path: Path, after: str | None, reason: str):
        self.path, self.after, self.reason = Path(path), after, reason
        where = f"after sample {after}" if after is not None else "before its first sample"
        super().__init__(f"{path}: unreadable tar {where}: {reason}")


def iter_tar_samples(path: Path) -> Iterator[dict]:
    """Samples of one shard (a plain, uncompressed tar) as dicts of raw bytes (``__key__`` plus one entry per
    extension).

    A tar that cannot be read to its end raises :class:`ShardReadError` naming the last whole sample read;
    the sample being read when it fails is not yielded (it may lack members). That includes a damaged
    header in the middle of the shard, which ``tarfile`` on its own takes for the end of the archive
    (dropping the rest silently): whatever follows the last member must be the zero blocks of the end.
    """
    sample: dict = {}
    done = None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                if sample and sample["__key__"] != key:
                    done = sample["__key__"]
                    yield sample
                    sample = {}
                sample["__key__"] = key
                sample[extension] = tar.extractfile(member).read()
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ShardReadError(path, done, str(error) or type(error).__name__) from None
    reason = _damage_after_end(path, end)
    if reason:
        raise ShardReadError(path, done, reason)
    if sample:
        yield sample


def _damage_after_end(path: Path, offset: int) -> str | None:
    """Why the bytes of ``path`` from ``offset`` (where ``tarfile`` stopped reading) are not the end of
    the archive, or None when they are all zero."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        header = handle.read(tarfile.BLOCKSIZE)
        if not header.strip(tarfile.NUL):
            for block in iter(lambda: handle.read(1 << 20), b""):
                if block.strip(tarfile.NUL):
                    return f"data after the end-of-archive marker at byte {offset}"
            return None
    try:
        tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError as error:
        return f"damaged tar header at byte {offset} ({error})"
    return f"damaged tar header at byte {offset}"


def image_of(sample: dict) -> tuple[str, bytes]:
    for extension in ("jpg", "png"):
        if extension in sample:
            return extension, sample[extension]
    raise KeyError(f"sample {sample.get('__key__')} has no image")


def decode_image(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image
