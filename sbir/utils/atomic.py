"""Writing outputs safely: a file or a whole output folder appears complete or not at all, and a command
replaces only what it wrote itself.

Every command that writes a folder goes through :func:`atomic_dir` (or, for folders written piece by
piece, :func:`check_output`), which refuses, before anything is touched:

- an output that is an existing regular file;
- an output that is, contains, or lies inside a path the command reads (``--out`` equal to ``--raw``, a
  parent of it, or a folder inside it);
- an existing non-empty folder that is not this command's own earlier output. A command recognises its
  own output by the file it always writes there (its *marker*: ``index.json`` of the shards,
  ``info.json`` of embeddings, ``model.json`` of a model folder, ...).

Temporary folders are named ``.OUT.tmp-<pid>`` beside ``OUT`` and hold a file ``.sbir-incomplete`` until
they are renamed into place, so none ever looks complete. A run that is killed (SIGKILL: nothing can
clean up) leaves its temporary behind; the next run writing the same ``OUT`` removes the temporaries of
processes that no longer exist, and only those that carry the ``.sbir-incomplete`` file this module
wrote. A run killed between the two renames of :func:`replace_dir` leaves the previous output as
``.OUT.old-<pid>``: the next run puts it back when ``OUT`` is missing, or removes it when ``OUT`` is there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sbir.errors import SbirError

#: Written into every temporary output folder until it is complete; the mark of a folder this module made.
INCOMPLETE = ".sbir-incomplete"

#: What marks a folder as a command's own output: a file name, several (any one present), or a test.
Owned = str | tuple[str, ...] | Callable[[Path], bool]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and one rename."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that look at it still work); it
    replaces ``path`` when the block succeeds and is removed when it fails."""
    path = Path(path)
    _make_parent(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SbirError(f"{path}: cannot write here: {error.strerror}") from None


def _is_owned(folder: Path, owned: Owned) -> bool:
    if callable(owned):
        return owned(folder)
    names = (owned,) if isinstance(owned, str) else owned
    return any((folder / name).exists() for name in names)


def _describe(owned: Owned) -> str:
    if callable(owned):
        return getattr(owned, "__doc__", None) or "this command's output"
    names = (owned,) if isinstance(owned, str) else owned
    return " or ".join(names)


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_inputs(out: Path, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an ``out`` that is, contains or lies inside one of ``inputs`` (what the command reads)."""
    target = Path(out).resolve()
    for source in inputs:
        if source is None or str(source) == "" or "://" in str(source) or str(source).startswith("pipe:"):
            continue  # not a local path: nothing here can overlap it
        read = Path(source).resolve()
        if target == read:
            raise SbirError(f"{out}: is the input {source} that this command reads; choose another output")
        if _contains(target, read):
            raise SbirError(f"{out}: contains the input {source} that this command reads; choose another output")
        if _contains(read, target):
            raise SbirError(f"{out}: lies inside the input {source} that this command reads; "
                            "choose an output outside it")


def check_output(out: Path, owned: Owned, inputs: Iterable[Path | str | None] = ()) -> Path:
    """Refuse (one :class:`SbirError`, nothing touched) an output folder this command may not write: an
    existing regular file, an input or a folder holding or inside one, or an existing non-empty folder
    without the marker ``owned`` of this command's own output. Returns ``out`` as a Path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SbirError(f"{out}: is a file, not a folder; give a folder for the output (nothing was changed)")
    check_inputs(out, inputs)
    if out.is_dir() and any(out.iterdir()) and not _is_owned(out, owned):
        raise SbirError(f"{out}: folder exists, is not empty and is not an output of this command (no "
                        f"{_describe(owned)}); choose a new or empty folder (nothing was changed)")
    return out


def check_output_file(path: Path, owned: Callable[[Path], bool], inputs: Iterable[Path | str | None] = ()) -> Path:
    """The same rules for an output that is one file: refuse a folder, an input, or an existing file that
    ``owned`` does not recognise as this command's own."""
    path = Path(path)
    if path.is_dir():
        raise SbirError(f"{path}: is a folder; give a file name for the output (nothing was changed)")
    check_inputs(path, inputs)
    if path.exists() and not owned(path):
        raise SbirError(f"{path}: file exists and was not written by this command ({_describe(owned)}); "
                        "choose another file name (nothing was changed)")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove the temporaries that dead runs left beside ``out`` (module docstring); return what was removed
    or restored."""
    out = Path(out)
    handled = []
    if not out.parent.is_dir():
        return handled
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)")
    for entry in sorted(out.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if not match or int(match[2]) == os.getpid() or _alive(int(match[2])) or not entry.is_dir():
            continue
        if match[1] == "tmp" and (entry / INCOMPLETE).is_file():
            shutil.rmtree(entry, ignore_errors=True)
            handled.append(entry)
        elif match[1] == "old":
            if not out.exists():
                os.replace(entry, out)
            else:
                shutil.rmtree(entry, ignore_errors=True)
            handled.append(entry)
    return handled


def replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished folder ``tmp`` at ``out``, replacing what was there (two renames)."""
    (tmp / INCOMPLETE).unlink(missing_ok=True)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: Path, owned: Owned, inputs: Iterable[Path | str | None] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; it replaces ``out`` when the block succeeds and
    is removed when it fails, so a killed run never leaves a half-written ``out``.

    ``out`` is first checked with :func:`check_output` (``owned``: the marker of this command's output,
    ``inputs``: what it reads), and dead runs' temporaries beside it are cleaned up.
    """
    out = check_output(out, owned, inputs)
    _make_parent(out)
    clean_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if (tmp / INCOMPLETE).is_file():  # this process's own earlier, failed attempt
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        (tmp / INCOMPLETE).write_text(f"{os.getpid()}\n")
    except OSError as error:
        raise SbirError(f"{out}: cannot write here: {error.strerror}") from None
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
