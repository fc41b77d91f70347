"""What every dataset module provides: where its archives come from and how its files map to samples.

A dataset module turns a raw folder in the dataset's official layout into a list of :class:`RawItem`
(one per sketch or photo) plus the inputs it had to skip, each with a reason. Sharding, splitting and
verification are generic and live elsewhere (``sbir.data.shards.build``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MODALITIES = ("sketch", "photo")


@dataclass(frozen=True)
class Source:
    """One published archive of a dataset.

    ``url`` is a plain HTTP(S) address, ``drive_id`` a Google Drive file id (one of them is set);
    ``md5`` is None where the publisher gives none. ``optional`` archives (Extended photos, validity
    lists) are used when present and skipped with a note when they cannot be had.
    """

    filename: str
    description: str
    url: str | None = None
    drive_id: str | None = None
    md5: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class RawItem:
    """One sketch or photo of a raw dataset.

    ``source`` is the path relative to the raw root (for QuickDraw strokes ``<file>#<line>``), used as
    the sample's provenance in metadata and in skip reports. ``instance_id`` pairs a sketch with the
    photo it depicts (Sketchy: ``<photo-id>``); datasets without pairing use a unique id per image.
    ``offset`` >= 0 marks a QuickDraw drawing stored at that byte offset of the ndjson file ``path``.
    """

    modality: str
    class_name: str
    source: str
    instance_id: str
    path: str
    offset: int = -1
    stroke_format: str = ""


@dataclass
class Scan:
    """The result of reading a raw folder: usable items and skipped inputs with their reasons."""

    items: list[RawItem] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, source: str, reason: str) -> None:
        self.skipped.append({"source": source, "reason": reason})


class Dataset:
    """Base class of a dataset module; subclasses fill in the class attributes and :meth:`scan`."""

    name: str = ""
    description: str = ""
    sources: tuple[Source, ...] = ()
    #: names of the standard splits (``sbir.data.splits``) that apply to this dataset
    splits: tuple[str, ...] = ()
    #: splits of this dataset's own, name -> unseen class names
    extra_splits: dict[str, list[str]] = {}
    default_split: str = ""
    #: other names of the dataset's classes (other name -> the dataset's name, or the reverse), which a
    #: split file may use: :func:`sbir.data.splits.resolve_unseen_classes`
    class_aliases: dict[str, str] = {}
    #: the folders that must exist below the raw root for :meth:`scan` to make sense
    layout_hint: str = ""

    def scan(self, root: Path) -> Scan:
        raise NotImplementedError

    def is_layout(self, root: Path) -> bool:
        """True when ``root`` holds the extracted dataset in its official layout."""
        raise NotImplementedError


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DatasetBounds:
    """Where a scan may take its inputs from: below the raw root, or below the layout folder being scanned,
    both resolved (so a raw root that is itself a symbolic link, or a layout folder such as
    ``EXTEND_image_sketchy`` linked in from another disk, works as before).

    A symbolic link inside the dataset whose target resolves outside those folders is skipped with a reason:
    following it would turn any file on the machine into a sample without a word. A link whose target
    resolves inside them is kept as an ordinary input (a dataset may link duplicates or alternative folder
    names to its own files); a broken link is skipped.
    """

    def __init__(self, *folders: Path | str):
        self.folders = tuple(os.path.realpath(folder) for folder in folders)

    def link_problem(self, path: str, is_dir: bool) -> str | None:
        """The reason to skip the symbolic link ``path``, or None to keep it (call it for links only)."""
        target = os.path.realpath(path)
        if not os.path.exists(target):
            return f"broken symbolic link ({target})"
        if any(target == folder or target.startswith(folder.rstrip(os.sep) + os.sep) for folder in self.folders):
            return None
        return f"symbolic link to a {'folder' if is_dir else 'file'} outside the dataset ({target})"


def scan_class_folders(scan: Scan, root: Path, folder: Path, modality: str, instance_of=None,
                       class_of=None) -> None:
    """Add every file of ``folder/<class>/`` to ``scan`` as an item of ``modality``.

    ``instance_of(stem)`` gives a file's fine-grained instance id (default: the modality and the stem,
    i.e. unpaired); ``class_of(folder_name)`` maps a folder name to a class name, or None to skip the
    folder with a reason. Files whose suffix is not an image suffix are skipped and reported, as are
    hidden files and symbolic links leaving the dataset (:class:`DatasetBounds`); decoding is checked
    later, while sharding. A class folder that gives no image is written to the scan's notes.
    """
    # os.scandir: the file type comes with the directory entry (no stat per file); plain strings, no Path
    # objects per file — the scan runs before any worker starts, so its cost is paid in full.
    prefix = folder.relative_to(root).as_posix()
    bounds = DatasetBounds(root, folder)
    with os.scandir(folder) as entries:
        listed = sorted((e.name, e.path, e.is_dir(), e.is_symlink()) for e in entries)
    for folder_name, class_path, is_dir, is_link in listed:
        rel_dir = f"{prefix}/{folder_name}" if prefix != "." else folder_name
        problem = bounds.link_problem(class_path, is_dir) if is_link else None
        if problem:
            scan.skip(rel_dir + ("/" if is_dir else ""), problem)
            continue
        if not is_dir:
            continue
        class_name = class_of(folder_name) if class_of else folder_name
        if class_name is None:
            scan.skip(rel_dir + "/", "folder matches no class of the dataset")
            continue
        with os.scandir(class_path) as entries:
            files = sorted((e.name, e.path, e.is_dir(), e.is_symlink()) for e in entries)
        found = len(scan.items)
        for name, path, is_dir, is_link in files:
            rel = f"{rel_dir}/{name}"
            problem = bounds.link_problem(path, is_dir) if is_link else None
            if problem:
                scan.skip(rel + ("/" if is_dir else ""), problem)
                continue
            if is_dir:
                scan.skip(rel + "/", "unexpected sub-folder inside a class folder")
                continue
            if name.startswith("."):
                scan.skip(rel, "hidden file")
                continue
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_SUFFIXES:
                scan.skip(rel, f"not an image file (suffix '{suffix}')")
                continue
            instance = instance_of(stem) if instance_of else f"{modality}:{stem}"
            scan.items.append(RawItem(modality=modality, class_name=class_name, source=rel,
                                      instance_id=f"{class_name}/{instance}", path=path))
        if not files:
            scan.notes.append(f"{rel_dir}: empty class folder, no images")
        elif len(scan.items) == found:
            scan.notes.append(f"{rel_dir}: class folder with no usable images "
                              f"({len(files)} {'entry' if len(files) == 1 else 'entries'} skipped)")
