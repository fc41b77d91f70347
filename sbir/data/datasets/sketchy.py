"""Sketchy (Sangkloy et al. 2016) and its Extended photos (Liu et al. 2017).

Raw layout (what the archives extract to, and what ``--source`` must look like)::

    256x256/photo/tx_000000000000/<class>/n02691156_58.jpg
    256x256/sketch/tx_000000000000/<class>/n02691156_58-1.png      # sketch 1 of that photo
    EXTEND_image_sketchy/<class>/*.jpg                             # optional, Extended photos
    info/invalid-{error,context,ambiguous,pose}.txt                # optional, validity lists

The fine-grained pairing is in the names: sketch ``<photo-id>-<k>`` depicts photo ``<photo-id>``, so both
get the instance id ``<class>/<photo-id>``. Extended photos have no sketches; their instance ids are
prefixed ``ext:`` so they never pair. Sketches named in the validity lists are skipped with the list's
name as the reason when the lists are present (the ``tx_000000000000`` sketches are the un-augmented ones).
"""

from __future__ import annotations

import os
from pathlib import Path

from sbir.data.datasets.base import Dataset, Scan, Source, scan_class_folders
from sbir.data.datasets.registry import register
from sbir.data.splits import normalise_class_name

AUGMENTATION = "tx_000000000000"
INVALID_LISTS = ("error", "context", "ambiguous", "pose")


def _read_invalid(root: Path) -> dict[str, str]:
    """Sketch stem -> reason, from ``info/invalid-*.txt`` wherever they lie below ``root`` (one walk of the
    tree, in sorted order; the first list naming a sketch gives its reason, lists in INVALID_LISTS order)."""
    wanted = {f"invalid-{kind}.txt": kind for kind in INVALID_LISTS}
    found: dict[str, list[str]] = {kind: [] for kind in INVALID_LISTS}
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in files:
            if name in wanted:
                found[wanted[name]].append(os.path.join(folder, name))
    invalid: dict[str, str] = {}
    for kind in INVALID_LISTS:
        for path in sorted(found[kind], key=lambda p: Path(p).relative_to(root).parts):
            for line in Path(path).read_text(encoding="utf-8", errors="replace").split():
                invalid.setdefault(os.path.splitext(os.path.basename(line.strip()))[0],
                                   f"invalid sketch (info/invalid-{kind}.txt)")
    return invalid


@register
class Sketchy(Dataset):
    name = "sketchy"
    description = "Sketchy: 125 classes, 12,500 photos + 73,002 Extended photos, 75,481 sketches, paired"
    sources = (
        Source("rendered_256x256.7z", "photos and sketches, 256x256", drive_id="0B7ISyeE8QtDdTjE1MG9Gcy1kSkE",
               md5="6a9dccbd07b48566c4754a7674087657"),
        Source("info-06-04.7z", "sketch validity lists", drive_id="0B7ISyeE8QtDdaFhqeTZiNVBYZjA",
               md5="f99274c883d073b323c87140bef7bdbf", optional=True),
        Source("EXTEND_image_sketchy.zip", "Extended photos", drive_id="0B2U-hnwRkpRrdGZKTzkwbkEwVkk",
               optional=True),
    )
    splits = ("sketchy21", "sketchy25")
    default_split = "sketchy25"
    layout_hint = (f"256x256/photo/{AUGMENTATION}/<class>/*.jpg and "
                   f"256x256/sketch/{AUGMENTATION}/<class>/*.png")

    def is_layout(self, root: Path) -> bool:
        return all((root / "256x256" / m / AUGMENTATION).is_dir() for m in ("photo", "sketch"))

    def scan(self, root: Path) -> Scan:
        scan = Scan()
        base = root / "256x256"
        scan_class_folders(scan, root, base / "photo" / AUGMENTATION, "photo", instance_of=lambda stem: stem)
        classes = {normalise_class_name(item.class_name): item.class_name for item in scan.items}
        scan_class_folders(scan, root, base / "sketch" / AUGMENTATION, "sketch",
                           instance_of=lambda stem: stem.rsplit("-", 1)[0])
        extended = root / "EXTEND_image_sketchy"
        if extended.is_dir():
            scan_class_folders(scan, root, extended, "photo", instance_of=lambda stem: f"ext:{stem}",
                               class_of=lambda folder: classes.get(normalise_class_name(folder)))
        else:
            scan.notes.append("no EXTEND_image_sketchy/ folder: Sketchy photos only (no Extended photos)")
        invalid = _read_invalid(root)
        if invalid:
            kept = []
            for item in scan.items:
                reason = invalid.get(Path(item.source).stem) if item.modality == "sketch" else None
                if reason:
                    scan.skip(item.source, reason)
                else:
                    kept.append(item)
            scan.items = kept
        else:
            scan.notes.append("no info/invalid-*.txt validity lists: no sketch dropped as invalid")
        return scan
