"""Generation of the synthetic dataset: :func:`generate`, its manifest and its worker processes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from tqdm import tqdm

from sbir.data.datasets.synthetic.objects import CLASS_NAMES, UNSEEN_CLASSES
from sbir.data.datasets.synthetic.render import _write_instance
from sbir.errors import SbirError
from sbir.utils.atomic import atomic_dir

#: bump whenever the drawing code changes what is written, so that old folders are regenerated
GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"


def _manifest(seed, classes_count, photos_per_class, sketches_per_photo, image_size) -> dict:
    classes = CLASS_NAMES[:classes_count]
    photos = classes_count * photos_per_class
    return {
        # a format name, not this module's path: it is written into synthetic.json and so is part of
        # the DVC-tracked data hash; keep it exactly as it is
        "generator": "sbir.datasets.synthetic",
        "version": GENERATOR_VERSION,
        "params": {"seed": seed, "classes_count": classes_count, "photos_per_class": photos_per_class,
                   "sketches_per_photo": sketches_per_photo, "image_size": image_size},
        "classes": classes,
        "unseen_classes": [c for c in UNSEEN_CLASSES if c in classes],
        "files": {"photo": photos, "sketch": photos * sketches_per_photo,
                  "total": photos * (1 + sketches_per_photo)},
    }


def _dump(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def _complete(out: Path, manifest: dict) -> bool:
    try:
        found = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if found != json.loads(_dump(manifest)):
        return False
    for modality, suffix in (("photo", ".jpg"), ("sketch", ".png")):
        folder = out / modality
        if not folder.is_dir():
            return False
        count = sum(1 for name in manifest["classes"] if (folder / name).is_dir()
                    for f in os.scandir(folder / name) if f.name.endswith(suffix))
        if count != manifest["files"][modality]:
            return False
    return True


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def generate(out: Path, seed: int = 0, classes_count: int = 20, photos_per_class: int = 40,
             sketches_per_photo: int = 2, image_size: int = 256, workers: int | None = None,
             progress: bool = True) -> Path:
    """Draw the synthetic dataset into ``out`` and return ``out``.

    Does nothing when ``out`` already holds a complete generation with the same parameters (and
    generator version). Otherwise draws into a temporary folder beside ``out`` and renames it into
    place at the end, replacing an earlier generation; a file, or a non-empty ``out`` that is not a
    generation (no ``synthetic.json``), is left alone and an error raised (:func:`sbir.utils.atomic.atomic_dir`).
    ``workers`` processes draw the instances (default: every usable core); the bytes written never depend on it.
    """
    out = Path(out)
    for label, value, least in (("classes_count", classes_count, 1), ("photos_per_class", photos_per_class, 1),
                                ("sketches_per_photo", sketches_per_photo, 1), ("image_size", image_size, 32),
                                ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise SbirError(f"synthetic: {label} must be an integer >= {least}, not {value!r}")
    if classes_count > len(CLASS_NAMES):
        raise SbirError(f"synthetic: classes_count must be at most {len(CLASS_NAMES)}, not {classes_count}")
    if photos_per_class > 9999:
        raise SbirError(f"synthetic: photos_per_class must be at most 9999, not {photos_per_class}")
    manifest = _manifest(seed, classes_count, photos_per_class, sketches_per_photo, image_size)
    if _complete(out, manifest):
        return out
    with atomic_dir(out, MANIFEST) as tmp:
        for modality in ("photo", "sketch"):
            for name in manifest["classes"]:
                (tmp / modality / name).mkdir(parents=True)
        tasks = [(seed, ci, inst, sketches_per_photo, image_size, str(tmp))
                 for ci in range(classes_count) for inst in range(photos_per_class)]
        workers = min(workers or _default_workers(), len(tasks))
        with tqdm(total=len(tasks), desc=f"synthetic {out.name}", unit="photo", disable=not progress) as bar:
            if workers <= 1:
                for task in tasks:
                    _write_instance(task)
                    bar.update()
            else:
                methods = multiprocessing.get_all_start_methods()
                ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
                with ctx.Pool(workers) as pool:
                    for _ in pool.imap_unordered(_write_instance, tasks, chunksize=4):
                        bar.update()
        (tmp / MANIFEST).write_text(_dump(manifest))
    return out
