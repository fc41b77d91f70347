"""The embedded default dataset: photo-like and sketch-like renderings of parametric objects.

What ``dvc repro`` runs on a machine with no data. :func:`generate` draws every instance of
:data:`CLASS_NAMES` (a house, a car, a tree, ...: each class a fixed arrangement of primitive parts,
some classes with sub-types (pine or leafy tree, open or folded umbrella, acoustic or electric guitar,
...), each instance with its own proportions, part counts, pose, position, scale and colours) twice
over:

* a photo: filled, shaded parts in instance colours, with a drop shadow, on a cluttered background
  (colour gradients, a horizon, out-of-focus blobs, sharp distractor shapes, small out-of-focus objects
  of other seen classes, sensor noise), JPEG;
* sketches: the same instance in black hand-drawn outlines on white, with hidden lines removed, wobbly
  strokes of varying width and darkness, occasional missing, broken, re-traced and extra strokes
  (hatching, ground lines), and a small global shift/scale/rotation of its own, PNG (mode ``L``).

Written in the Sketchy layout, so that the fine-grained pairing is in the names::

    OUT/photo/<class>/<class>_<nnnn>.jpg
    OUT/sketch/<class>/<class>_<nnnn>-<k>.png      # sketch k (1-based) of photo nnnn
    OUT/synthetic.json                             # generator version, parameters, file counts

Every image depends only on ``(seed, class index, instance, stream)`` through
:class:`numpy.random.SeedSequence`, so the output is byte-identical for the same seed and parameters
whatever the number of workers or their scheduling. The unseen classes of the ``synthetic`` split are
every fourth class of :data:`CLASS_NAMES` (:data:`UNSEEN_CLASSES`), so a smaller ``classes_count`` keeps
about a quarter of its classes unseen.

Difficulty was tuned on the default generation (seed 0) with frozen ImageNet EfficientNet-Lite0 features
(global-average-pooled, cosine): sketch->photo mAP on the unseen classes is about 0.44 (chance 0.20),
while mean colour or a raw grey-level thumbnail stay at chance (0.22). Bump :data:`GENERATOR_VERSION`
whenever a change alters the bytes written.

The code is split by stage, each module importing only the ones before it: :mod:`.geometry` (primitive
outlines), :mod:`.objects` (parts and the object classes), :mod:`.render` (one instance: pose, photo,
sketches), :mod:`.generation` (the whole dataset); this package re-exports their public names and holds the
dataset class.
"""

from __future__ import annotations

from pathlib import Path

from sbir.data.datasets.base import Dataset, Scan, scan_class_folders
from sbir.data.datasets.registry import register
from sbir.data.datasets.synthetic.generation import GENERATOR_VERSION, MANIFEST, generate
from sbir.data.datasets.synthetic.geometry import TAU
from sbir.data.datasets.synthetic.objects import CLASS_NAMES, UNSEEN_CLASSES
from sbir.data.datasets.synthetic.render import JPEG_QUALITY, SUPERSAMPLE, render_instance

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "MANIFEST",
    "SUPERSAMPLE",
    "TAU",
    "UNSEEN_CLASSES",
    "Synthetic",
    "generate",
    "render_instance",
]


@register
class Synthetic(Dataset):
    name = "synthetic"
    description = ("Embedded default: photo-like and sketch-like renderings of 20 parametric object "
                   "classes drawn by sbir.data.datasets.synthetic.generate (no download), sketches paired "
                   "with their photos")
    sources = ()
    splits = ()
    extra_splits = {"synthetic": list(UNSEEN_CLASSES)}
    default_split = "synthetic"
    layout_hint = "photo/<class>/*.jpg and sketch/<class>/*-<k>.png"

    def is_layout(self, root: Path) -> bool:
        root = Path(root)
        return (root / "photo").is_dir() and (root / "sketch").is_dir()

    def scan(self, root: Path) -> Scan:
        root = Path(root)
        scan = Scan()
        scan_class_folders(scan, root, root / "photo", "photo", instance_of=lambda stem: stem)
        scan_class_folders(scan, root, root / "sketch", "sketch", instance_of=lambda stem: stem.rsplit("-", 1)[0])
        photos = {it.instance_id for it in scan.items if it.modality == "photo"}
        orphans = sum(1 for it in scan.items if it.modality == "sketch" and it.instance_id not in photos)
        if orphans:
            scan.notes.append(f"{orphans} sketches have no photo of their instance")
        if not (root / MANIFEST).is_file():
            scan.notes.append(f"no {MANIFEST}: this folder was not written by sbir.data.datasets.synthetic.generate")
        return scan
