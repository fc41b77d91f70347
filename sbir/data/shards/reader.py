"""Reading shards back: the index (its shape checked), the shards of a part, and their samples.

A shard is a plain tar of samples; each sample is ``<key>.jpg`` or ``<key>.png`` (the image),
``<key>.cls`` (class index, ASCII) and ``<key>.json`` (class name, modality, source path, instance id).
Shards are read from wherever they are (:mod:`sbir.data.shards.location`: a local folder, a URL, a
``pipe:`` command): a local shard is a :class:`~pathlib.Path`, a remote one a URL string, and
:func:`iter_tar_samples` streams either.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from sbir.data.shards.location import ShardLocation, shard_location
from sbir.errors import SbirError

INDEX_NAME = "index.json"
PARTS = ("train", "val", "test")


#: the index keys a reader may ask :func:`read_index` to insist on
INDEX_KEYS = ("shards", "counts", "totals", "classes", "seen_classes", "unseen_classes")
_SHARD_NAME = re.compile(r"(train|val|test)/(sketch|photo)-[0-9]+\.tar")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_index(folder: Path | str | ShardLocation, require: tuple[str, ...] = ()) -> dict:
    """The shard index ``folder/index.json``, its shape checked; :class:`SbirError` in one line otherwise.
    ``folder``: a local folder, or a URL / ``pipe:`` location of one (:mod:`sbir.data.shards.location`).

    Every key of :data:`INDEX_KEYS` that is present must have the shape ``sbir-prep shard`` writes
    (``shards``: ``<part>/<modality>-<n>.tar`` -> samples and sha256; ``counts``: part -> modality ->
    class -> count; ...), and the keys in ``require`` must be present. With no ``require`` the index must
    still hold one of those keys (``{}`` is no index), but readers that need only the class lists (a
    frozen model's training) accept an index of just those.
    """
    location = shard_location(folder)
    path = location.url(INDEX_NAME)
    if location.is_local and not location.folder.joinpath(INDEX_NAME).is_file():
        raise SbirError(f"{path}: no shard index (is {folder} the output of 'sbir-prep shard'?)")
    try:
        index = json.loads(location.read(INDEX_NAME).decode("utf-8"))
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


def shard_paths(folder: Path | str | ShardLocation, part: str, modality: str) -> list[Path | str]:
    """The shards of one part and modality, in order, as listed in the index: paths of a local folder, URLs
    (or ``pipe:`` commands) of a remote one."""
    location = shard_location(folder)
    index = read_index(location, require=("shards",))
    rels = [rel for rel in index["shards"] if rel.startswith(f"{part}/{modality}-")]
    return [location.folder / rel if location.is_local else location.url(rel) for rel in rels]


class ShardReadError(SbirError):
    """A shard's tar cannot be read to its end: ``path``, the last whole sample read (``after``, None when
    none was) and the ``reason``."""

    def __init__(self, path: Path | str, after: str | None, reason: str):
        self.path, self.after, self.reason = path, after, reason
        where = f"after sample {after}" if after is not None else "before its first sample"
        super().__init__(f"{path}: unreadable tar {where}: {reason}")


def iter_tar_samples(path: Path | str) -> Iterator[dict]:
    """Samples of one shard (a plain, uncompressed tar) as dicts of raw bytes (``__key__`` plus one entry per
    extension). ``path``: a local file, or a URL / ``pipe:`` command, streamed with WebDataset's ``gopen``.

    A tar that cannot be read to its end raises :class:`ShardReadError` naming the last whole sample read;
    the sample being read when it fails is not yielded (it may lack members). That includes a damaged
    header in the middle of the shard, which ``tarfile`` on its own takes for the end of the archive
    (dropping the rest silently): whatever follows the last member must be the zero blocks of the end.
    """
    if isinstance(path, str) and (path.startswith("pipe:") or "://" in path):
        yield from _iter_remote_samples(path)
        return
    state: dict = {"done": None, "last": {}}
    try:
        with tarfile.open(path, "r:") as tar:
            yield from _grouped(tar, state)
            end = tar.offset
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ShardReadError(path, state["done"], str(error) or type(error).__name__) from None
    reason = _damage_after_end(path, end)
    if reason:
        raise ShardReadError(path, state["done"], reason)
    if state["last"]:
        yield state["last"]


def _grouped(tar: tarfile.TarFile, state: dict) -> Iterator[dict]:
    """The members of ``tar`` grouped by key into samples; the last, possibly incomplete, one is left in
    ``state["last"]`` (the caller yields it once the tar is known to be whole), ``state["done"]`` is the key
    of the last sample yielded."""
    sample: dict = {}
    for member in tar:
        if not member.isfile():
            continue
        key, _, extension = member.name.partition(".")
        if sample and sample["__key__"] != key:
            state["done"] = sample["__key__"]
            yield sample
            sample = {}
        sample["__key__"] = key
        sample[extension] = tar.extractfile(member).read()
    state["last"] = sample


def _iter_remote_samples(url: str) -> Iterator[dict]:
    """:func:`iter_tar_samples` of a stream, read once, start to end."""
    from webdataset import gopen

    state: dict = {"done": None, "last": {}}
    try:
        with gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            yield from _grouped(tar, state)
    except Exception as error:  # tar errors, curl's or the pipe's exit status
        raise ShardReadError(url, state["done"], str(error) or type(error).__name__) from None
    if state["last"]:
        yield state["last"]


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
