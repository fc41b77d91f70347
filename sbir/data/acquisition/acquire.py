"""Getting a dataset's raw files in place: from the publishers, a mirror, a folder of archives, or an
extracted local copy the user already has.

``acquire(dataset, out, source=..., mirror=...)`` leaves ``out`` in the dataset's official layout and
writes ``out/COMPLETE.json`` last; a second call then does nothing. A local copy in the official layout
is not duplicated: ``out/LOCAL_COPY.json`` points at it with a fingerprint of its files, and
:func:`resolve_raw` follows the pointer.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from sbir.data.acquisition.archives import extract
from sbir.data.acquisition.download import fetch_source
from sbir.data.datasets import Dataset
from sbir.errors import SbirError
from sbir.utils.atomic import atomic_write_text, check_output
from sbir.utils.hashing import folder_fingerprint

COMPLETE = "COMPLETE.json"
LOCAL_COPY = "LOCAL_COPY.json"


def resolve_raw(raw: Path) -> Path:
    """The folder holding the raw data: ``raw`` itself, or the local copy it points to."""
    pointer = Path(raw) / LOCAL_COPY
    if not pointer.is_file():
        return Path(raw)
    target = Path(json.loads(pointer.read_text())["path"])
    if not target.is_dir():
        raise SbirError(f"{pointer}: the local copy it points to, {target}, no longer exists")
    return target


def _write_json(path: Path, content: dict) -> None:
    atomic_write_text(path, json.dumps(content, indent=1, sort_keys=True) + "\n")


def _is_complete(out: Path, expected: dict) -> bool:
    marker = out / COMPLETE
    return marker.is_file() and json.loads(marker.read_text()).get("request") == expected


def is_raw_folder(folder: Path) -> bool:
    """COMPLETE.json, LOCAL_COPY.json, archives/ or synthetic.json of 'sbir-prep download'"""
    return any((folder / name).exists() for name in (COMPLETE, LOCAL_COPY, "archives", "synthetic.json"))


def acquire(dataset: Dataset, out: Path, source: Path | None = None, mirror: str | None = None,
            synthetic_options: dict | None = None, progress: bool = True) -> Path:
    """Make ``out`` hold ``dataset`` in its official layout (see the module docstring); return ``out``."""
    out = check_output(out, is_raw_folder, [source])
    if dataset.name == "synthetic":
        from sbir.data.datasets.synthetic import generate

        return generate(out, progress=progress, **(synthetic_options or {}))
    request = {"dataset": dataset.name, "source": str(source) if source else None, "mirror": mirror}
    if source is not None:
        source = Path(source).resolve()
        if not source.is_dir():
            raise SbirError(f"{source}: --source folder does not exist")
        if dataset.is_layout(source):
            out.mkdir(parents=True, exist_ok=True)
            for name in (COMPLETE, LOCAL_COPY):
                (out / name).unlink(missing_ok=True)
            _write_json(out / LOCAL_COPY, {"path": str(source), "fingerprint": folder_fingerprint(source)})
            _write_json(out / COMPLETE, {"request": request, "local_copy": str(source)})
            print(f"{dataset.name}: using the local copy in {source}", file=sys.stderr)
            return out
    if _is_complete(out, request):
        print(f"{dataset.name}: {out} is complete, nothing to do", file=sys.stderr)
        return out
    (out / LOCAL_COPY).unlink(missing_ok=True)
    archive_dir = out / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    fetched = {}
    for item in dataset.sources:
        archive = fetch_source(item, archive_dir, mirror=mirror, local_dirs=[source] if source else [])
        if archive is None:
            continue
        staging = out / f".extract-{item.filename}"
        shutil.rmtree(staging, ignore_errors=True)
        extract(archive, staging)
        for entry in sorted(staging.iterdir()):
            target = out / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)
        staging.rmdir()
        fetched[item.filename] = item.md5
    if not dataset.is_layout(out):
        raise SbirError(f"{out}: after extracting {', '.join(fetched) or 'nothing'} the folder is not in the "
                        f"{dataset.name} layout (expected {dataset.layout_hint})")
    _write_json(out / COMPLETE, {"request": request, "archives": fetched})
    return out
