"""TU-Berlin sketches (Eitz et al. 2012) and the TU-Berlin Extended photos (Zhang et al. 2016).

Raw layout::

    png/<class>/<n>.png                  # 250 classes x 80 sketches, 1111x1111
    ImageResized/<classnospace>/*.JPEG   # optional, Extended photos

The Extended photo folders drop spaces and have typos (``spacesshuttle``, ``tromobone``, ``griaffe``).
They are mapped to the sketch class names by spelling-insensitive comparison, then the table of known
typos below, then the closest name (difflib ratio >= 0.8, and only when unambiguous); every mapping
that is not exact is written to the shard index's notes, and a folder that maps to no class is skipped
with a reason. Sketches and photos are unpaired (no fine-grained pairing in TU-Berlin).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from sbir.data.datasets.base import Dataset, Scan, Source, scan_class_folders
from sbir.data.datasets.registry import register
from sbir.data.splits import normalise_class_name

KNOWN_TYPOS = {"spacesshuttle": "space shuttle", "tromobone": "trombone", "griaffe": "giraffe"}
PHOTO_FOLDERS = ("ImageResized", "ImageResized_ready")


def photo_folder_mapper(class_names: list[str], notes: list[str]):
    """A function from an Extended photo folder name to a sketch class name (or None)."""
    by_key = {normalise_class_name(c): c for c in class_names}

    def class_of(folder: str) -> str | None:
        key = normalise_class_name(folder)
        if key in by_key:
            return by_key[key]
        typo = KNOWN_TYPOS.get(key)
        if typo in class_names:
            notes.append(f"photo folder '{folder}' -> class '{typo}' (known typo)")
            return typo
        close = difflib.get_close_matches(key, list(by_key), n=2, cutoff=0.8)
        if len(close) == 1 or (len(close) == 2 and difflib.SequenceMatcher(None, key, close[0]).ratio()
                               > difflib.SequenceMatcher(None, key, close[1]).ratio()):
            notes.append(f"photo folder '{folder}' -> class '{by_key[close[0]]}' (closest spelling)")
            return by_key[close[0]]
        return None

    return class_of


@register
class TUBerlin(Dataset):
    name = "tuberlin"
    description = "TU-Berlin: 250 classes x 80 sketches; Extended: 204,489 photos"
    sources = (
        Source("sketches_png.zip", "sketches, PNG 1111x1111",
               url="http://cybertron.cg.tu-berlin.de/eitz/projects/classifysketch/sketches_png.zip",
               md5="023123df86a928a5273e3ba11990d8fd"),
        Source("ImageResized.zip", "Extended photos", drive_id="0B2U-hnwRkpRrMFVvTmFQa3dmSUk", optional=True),
    )
    splits = ("tuberlin30",)
    default_split = "tuberlin30"
    layout_hint = "png/<class>/<n>.png (and optionally ImageResized/<class>/*.JPEG)"

    def is_layout(self, root: Path) -> bool:
        return (root / "png").is_dir()

    def scan(self, root: Path) -> Scan:
        scan = Scan()
        scan_class_folders(scan, root, root / "png", "sketch")
        class_names = sorted({item.class_name for item in scan.items})
        photos = next((root / name for name in PHOTO_FOLDERS if (root / name).is_dir()), None)
        if photos is None:
            scan.notes.append("no ImageResized/ folder: sketches only (no Extended photos)")
        else:
            scan_class_folders(scan, root, photos, "photo",
                               class_of=photo_folder_mapper(class_names, scan.notes))
        return scan
