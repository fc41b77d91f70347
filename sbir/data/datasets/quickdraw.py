"""QuickDraw (Google Creative Lab, CC BY 4.0) and the QuickDraw-Extended benchmark (Dey et al. 2019).

Two kinds of raw data, either or both below the raw root::

    sketches/<class>/*.png, images/<class>/*.jpg      # QuickDraw-Extended (110 classes), extracted zips
    full/simplified/<word>.ndjson, full/raw/<word>.ndjson   # QuickDraw strokes, one drawing a line

When Extended sketches exist they are used; otherwise the ndjson drawings are rasterised (``simplified``
preferred over ``raw`` unless :attr:`QuickDraw.stroke_format` says otherwise). Rasterisation is
deterministic: strokes are fitted into the square with a margin, drawn with PIL at twice the target
size with round joints and reduced with a Lanczos filter.

Class names follow QuickDraw-Extended; five QuickDraw words differ (``EXTENDED_NAMES``), and a split may
name those classes either way (the QuickDraw word, as in the ndjson file names, or the Extended name).
Sketches and photos are unpaired (no fine-grained pairing).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from sbir.data.datasets.base import Dataset, DatasetBounds, RawItem, Scan, Source, scan_class_folders
from sbir.data.datasets.registry import register
from sbir.data.splits import normalise_class_name
from sbir.errors import BadImage

#: QuickDraw word -> QuickDraw-Extended class name
EXTENDED_NAMES = {"crocodile": "crocodilian", "The Eiffel Tower": "eiffel tower",
                  "hot air balloon": "hot-air_balloon", "motorbike": "motorcycle", "teddy-bear": "teddy_bear"}
SKETCH_FOLDERS = ("sketches", "QuickDraw_sketches_final")
PHOTO_FOLDERS = ("images", "QuickDraw_images_final")
STROKE_FORMATS = ("simplified", "raw")


def rasterise(drawing: list, image_size: int, stroke_format: str) -> Image.Image:
    """Greyscale ``image_size`` x ``image_size`` image of a QuickDraw drawing (black on white).

    ``drawing`` is a list of strokes ``[xs, ys]`` (simplified, 0..255) or ``[xs, ys, ts]`` (raw, pixel
    coordinates); both are shifted and scaled so the drawing's longer side spans the square minus a
    margin of 1/16 on each side, keeping its aspect ratio and centring it.
    """
    strokes = [(list(map(float, s[0])), list(map(float, s[1]))) for s in drawing if len(s) >= 2 and s[0]]
    if not strokes or any(len(xs) != len(ys) for xs, ys in strokes):
        raise BadImage(f"malformed {stroke_format} drawing (no strokes or x/y lengths differ)")
    xs_all = [x for xs, _ in strokes for x in xs]
    ys_all = [y for _, ys in strokes for y in ys]
    left, top = min(xs_all), min(ys_all)
    extent = max(max(xs_all) - left, max(ys_all) - top, 1.0)
    scale_up = 2
    canvas = image_size * scale_up
    margin = canvas / 16
    scale = (canvas - 2 * margin) / extent
    offset_x = (canvas - (max(xs_all) - left) * scale) / 2
    offset_y = (canvas - (max(ys_all) - top) * scale) / 2
    width = max(1, round(canvas / 64))
    image = Image.new("L", (canvas, canvas), 255)
    draw = ImageDraw.Draw(image)
    for xs, ys in strokes:
        points = [(offset_x + (x - left) * scale, offset_y + (y - top) * scale) for x, y in zip(xs, ys)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=0)
        else:
            draw.line(points, fill=0, width=width, joint="curve")
    return image.resize((image_size, image_size), Image.Resampling.LANCZOS)


def read_drawing(item: RawItem) -> list:
    """The ``drawing`` field of the ndjson line at ``item.offset``."""
    with open(item.path, "rb") as handle:
        handle.seek(item.offset)
        line = handle.readline()
    try:
        record = json.loads(line)
        return record["drawing"]
    except (ValueError, KeyError, TypeError) as error:
        raise BadImage(f"not a QuickDraw record: {error}") from None


def extended_name(word: str) -> str:
    return EXTENDED_NAMES.get(word, word)


@register
class QuickDraw(Dataset):
    name = "quickdraw"
    description = "QuickDraw-Extended: 110 classes, 330k sketches, 204k photos; or QuickDraw ndjson strokes"
    sources = (
        Source("QuickDraw_sketches_final.zip", "QuickDraw-Extended sketches",
               url="http://datasets.cvc.uab.es/QuickDraw/QuickDraw_sketches_final.zip"),
        Source("QuickDraw_images_final.zip", "QuickDraw-Extended photos",
               url="http://datasets.cvc.uab.es/QuickDraw/QuickDraw_images_final.zip"),
    )
    splits = ("quickdraw30",)
    #: no splits of its own, but a split may name the five classes by their QuickDraw word or their
    #: QuickDraw-Extended name, whichever form the data has
    class_aliases = EXTENDED_NAMES
    default_split = "quickdraw30"
    layout_hint = "sketches/<class>/*.png + images/<class>/*.jpg, or full/{simplified,raw}/<class>.ndjson"
    #: "auto" (simplified if present, else raw), "simplified" or "raw"
    stroke_format = "auto"

    def _stroke_dir(self, root: Path) -> Path | None:
        formats = STROKE_FORMATS if self.stroke_format == "auto" else (self.stroke_format,)
        return next((root / "full" / f for f in formats if (root / "full" / f).is_dir()), None)

    def is_layout(self, root: Path) -> bool:
        return any((root / f).is_dir() for f in SKETCH_FOLDERS) or self._stroke_dir(root) is not None

    def scan(self, root: Path) -> Scan:
        scan = Scan()
        sketches = next((root / f for f in SKETCH_FOLDERS if (root / f).is_dir()), None)
        photos = next((root / f for f in PHOTO_FOLDERS if (root / f).is_dir()), None)
        if sketches is not None:
            scan_class_folders(scan, root, sketches, "sketch")
        else:
            self._scan_ndjson(scan, root)
        if photos is not None:
            classes = {normalise_class_name(i.class_name): i.class_name for i in scan.items}
            scan_class_folders(scan, root, photos, "photo",
                               class_of=lambda folder: classes.get(normalise_class_name(folder)))
        else:
            scan.notes.append("no images/ folder: sketches only (no QuickDraw-Extended photos)")
        return scan

    def _scan_ndjson(self, scan: Scan, root: Path) -> None:
        stroke_dir = self._stroke_dir(root)
        if stroke_dir is None:
            return
        stroke_format = stroke_dir.name
        scan.notes.append(f"sketches rasterised from {stroke_dir.relative_to(root).as_posix()}/*.ndjson")
        bounds = DatasetBounds(root, stroke_dir)
        for path in sorted(stroke_dir.glob("*.ndjson")):
            class_name = extended_name(path.stem)
            rel = path.relative_to(root).as_posix()
            problem = bounds.link_problem(str(path), path.is_dir()) if path.is_symlink() else None
            if problem:
                scan.skip(rel, problem)
                continue
            found = len(scan.items)
            offset = 0
            with open(path, "rb") as handle:
                for number, line in enumerate(handle, start=1):
                    source = f"{rel}#{number}"
                    if line.strip():
                        key_id = _key_id(line) or str(number)
                        scan.items.append(RawItem(
                            modality="sketch", class_name=class_name, source=source,
                            instance_id=f"{class_name}/sketch:{key_id}", path=str(path), offset=offset,
                            stroke_format=stroke_format))
                    offset += len(line)
            if len(scan.items) == found:
                scan.notes.append(f"{rel}: empty file, no drawings")


def _key_id(line: bytes) -> str | None:
    """The ``key_id`` of an ndjson line without parsing the drawing (it comes before it in the files)."""
    start = line.find(b'"key_id":"')
    if start < 0:
        return None
    start += len(b'"key_id":"')
    end = line.find(b'"', start)
    return line[start:end].decode("ascii", "replace") if end > start else None
