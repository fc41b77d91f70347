"""Turn a raw dataset into zero-shot WebDataset shards: ``OUT/{train,val,test}/{sketch,photo}-NNNNNN.tar``.

Parts: ``test`` holds every sketch and photo of the unseen classes; the seen classes go to ``train``
except a seeded hold-out of instances, ``val``, for model selection (a held-out photo takes its paired
sketches with it, so val also works for fine-grained checks). Within each part and modality the samples
are sorted, then shuffled with a seed derived from ``seed``, part and modality, so no shard is
single-class and the same inputs always give the same bytes.

Images are decoded and normalised (``sbir.data.images.prepare``) in worker processes, one per core; the main
process writes the shards in plan order. Inputs that cannot be used are skipped and listed with their
reason in ``index.json``. Everything is written into a temporary folder beside ``OUT`` that replaces
``OUT`` only when the index is complete, so an interrupted run never leaves shards that look finished.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import random
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sbir.data.datasets import MODALITIES, Dataset, RawItem
from sbir.data.datasets.quickdraw import rasterise, read_drawing
from sbir.data.images import prepare, render_png
from sbir.data.shards.reader import (
    INDEX_NAME,
    PARTS,
    ShardReadError,
    decode_image,
    image_of,
    iter_tar_samples,
    read_index,
)
from sbir.data.shards.writer import TarShardWriter, sample_key, sample_metadata
from sbir.data.splits import normalise_class_name, resolve_unseen_classes
from sbir.errors import BadImage, SbirError
from sbir.utils.atomic import atomic_dir, check_output
from sbir.utils.hashing import file_digest

INDEX_VERSION = 1


def is_shard_folder(folder: Path) -> bool:
    """index.json and the part folders of 'sbir-prep shard'"""
    return (folder / INDEX_NAME).is_file() and any((folder / part).is_dir() for part in PARTS)


@dataclass
class Plan:
    """Which raw item goes to which part, in shard order."""

    classes: list[str]
    seen: list[str]
    unseen: list[str]
    parts: dict[tuple[str, str], list[RawItem]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # source -> sample key


def _held_out(instances: list[str], fraction: float, rng: random.Random) -> set[str]:
    if fraction <= 0 or len(instances) < 2:
        return set()
    count = min(len(instances) - 1, max(1, round(fraction * len(instances))))
    return set(rng.sample(sorted(instances), count))


def _stem(source: str) -> str:
    """``Path(source).stem`` without building a Path (this runs once per input, before any worker starts)."""
    return os.path.splitext(source.rsplit("/", 1)[-1])[0]


def plan_split(items: list[RawItem], unseen: list[str], seed: int = 0, val_fraction: float = 0.1,
               max_per_class: int | None = None) -> Plan:
    """Assign items to train/val/test (see the module docstring) and give each a unique sample key."""
    items = sorted(items, key=lambda i: (i.class_name, i.modality, i.source))
    if max_per_class:
        taken: Counter = Counter()
        kept = []
        for item in items:
            if taken[item.class_name, item.modality] < max_per_class:
                taken[item.class_name, item.modality] += 1
                kept.append(item)
        items = kept
    classes = sorted({item.class_name for item in items})
    unseen_set = set(unseen)
    plan = Plan(classes=classes, seen=[c for c in classes if c not in unseen_set], unseen=sorted(unseen))
    instances_by_class: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.class_name not in unseen_set:
            instances_by_class[item.class_name].add(item.instance_id)
    held_out: set[str] = set()
    for class_name in sorted(instances_by_class):
        rng = random.Random(f"{seed}:val:{class_name}")
        held_out |= _held_out(sorted(instances_by_class[class_name]), val_fraction, rng)
    buckets: dict[tuple[str, str], list[RawItem]] = {(p, m): [] for p in PARTS for m in MODALITIES}
    used_keys: set[str] = set()
    for item in items:
        if item.class_name in unseen_set:
            part = "test"
        else:
            part = "val" if item.instance_id in held_out else "train"
        buckets[part, item.modality].append(item)
        key = base = sample_key(item.modality, item.class_name, _stem(item.source))
        suffix = 1
        while key in used_keys:
            suffix += 1
            key = f"{base}_{suffix}"
        used_keys.add(key)
        plan.keys[item.source] = key
    for (part, modality), bucket in buckets.items():
        random.Random(f"{seed}:{part}:{modality}").shuffle(bucket)
        plan.parts[part, modality] = bucket
    return plan


def read_reference_lists(paths: list[Path]) -> set[tuple[str, str]]:
    """(class key, file stem) of every file named in SAKE-format lists (``<relative path> <class id>``).

    Paths may contain spaces, so each line is split on its LAST space. These are the reference file
    lists of the published splits (e.g. ZSE-SBIR's ``sketch_tx_000000000000_ready_filelist_zero.txt``);
    they also encode which sketches the reference filtered out as invalid.
    """
    listed: set[tuple[str, str]] = set()
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise SbirError(f"{path}: cannot read reference list: {error.strerror}") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            relative = line.rsplit(" ", 1)[0] if " " in line.strip() else line
            parts = Path(relative.strip()).parts
            if len(parts) < 2:
                raise SbirError(f"{path}:{number}: expected '<class>/<file> <class id>', got {line!r}")
            listed.add((normalise_class_name(parts[-2]), Path(parts[-1]).stem))
    return listed


def filter_by_reference(scan_items: list[RawItem], listed: set[tuple[str, str]]) -> tuple[list, list]:
    """Items whose (class, stem) the reference lists name, and skip records for the others."""
    kept, skipped = [], []
    for item in scan_items:
        if (normalise_class_name(item.class_name), Path(item.source).stem) in listed:
            kept.append(item)
        else:
            skipped.append({"source": item.source, "reason": "not in the reference file lists"})
    return kept, skipped


def load_item(item: RawItem, image_size: int | None) -> tuple[bytes, str]:
    """Image bytes and extension of one raw item, ready for a shard; :class:`BadImage` if unusable."""
    if item.offset >= 0:
        image = rasterise(read_drawing(item), image_size or 256, item.stroke_format)
        return render_png(image), "png"
    try:
        with open(item.path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise BadImage(f"cannot read: {error.strerror}") from None
    return prepare(data, item.modality, image_size)


@dataclass
class ShardJob:
    """One shard to write: a block of consecutive plan positions of one part and modality."""

    path: Path
    items: list[RawItem]
    keys: list[str]
    class_indices: list[int]
    image_size: int | None


def write_shard(job: ShardJob) -> dict:
    """A worker's job: write one whole shard; return its sha256, counts per class and skipped inputs.

    Workers write whole shards so that no image crosses a process boundary: the only cost of sharding
    beyond decoding is appending bytes to a file.
    """
    writer = TarShardWriter(job.path)
    counts: Counter = Counter()
    skipped = []
    for item, key, class_index in zip(job.items, job.keys, job.class_indices):
        try:
            data, extension = load_item(item, job.image_size)
        except BadImage as error:
            skipped.append({"source": item.source, "reason": str(error)})
            continue
        meta = sample_metadata(item.class_name, item.modality, item.source, item.instance_id)
        writer.write_sample(key, data, extension, class_index, meta)
        counts[item.class_name] += 1
    return {"path": job.path, "samples": writer.count, "sha256": writer.close(), "counts": counts,
            "skipped": skipped, "inputs": len(job.items)}


def shard_dataset(dataset: Dataset, raw: Path, out: Path, split: str, image_size: int | None = 256,
                  shard_size: int = 1000, seed: int = 0, val_fraction: float = 0.1,
                  max_per_class: int | None = None, workers: int | None = None, max_bad: float = 0.01,
                  reference_lists: list[Path] = (), progress: bool = True) -> dict:
    """Shard ``raw`` (the dataset's official layout) into ``out``; return the index (also ``out/index.json``).

    Raises :class:`SbirError` when the raw folder is missing or not in the dataset's layout, the split
    is unknown or names classes the dataset lacks, a part would be empty, or more than ``max_bad`` of
    the images are unreadable (the run could not be trusted). ``reference_lists`` (SAKE-format file
    lists) restrict the inputs to the files they name, reproducing a published split's exact counts.
    """
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise SbirError(f"{raw}: raw data folder does not exist (run 'sbir-prep download --dataset "
                        f"{dataset.name}' or pass --raw DIR)")
    if not dataset.is_layout(raw):
        raise SbirError(f"{raw}: not in the {dataset.name} layout (expected {dataset.layout_hint})")
    if shard_size < 1:
        raise SbirError(f"--shard-size must be at least 1, got {shard_size}")
    check_output(out, is_shard_folder, inputs=[raw, *reference_lists])  # before the scan: fail fast
    scan = dataset.scan(raw)
    if not scan.items:
        raise SbirError(f"{raw}: no {dataset.name} images found (expected {dataset.layout_hint})")
    if reference_lists:
        scan.items, left_out = filter_by_reference(scan.items, read_reference_lists(list(reference_lists)))
        scan.skipped += left_out
        if not scan.items:
            raise SbirError(f"{raw}: no file is named in the reference lists {', '.join(map(str, reference_lists))}")
    class_names = sorted({item.class_name for item in scan.items})
    unseen = resolve_unseen_classes(split, class_names, dataset.extra_splits, aliases=dataset.class_aliases)
    plan = plan_split(scan.items, unseen, seed=seed, val_fraction=val_fraction, max_per_class=max_per_class)
    class_index = {name: i for i, name in enumerate(plan.classes)}

    skipped = list(scan.skipped)
    counts: dict = {p: {m: Counter() for m in MODALITIES} for p in PARTS}
    shards: dict[str, dict] = {}
    bad = 0
    with atomic_dir(out, is_shard_folder, inputs=[raw, *reference_lists]) as tmp:
        jobs = []
        for (part, modality), bucket in plan.parts.items():
            for number, start in enumerate(range(0, len(bucket), shard_size)):
                block = bucket[start:start + shard_size]
                jobs.append(ShardJob(tmp / part / f"{modality}-{number:06d}.tar", block,
                                     [plan.keys[item.source] for item in block],
                                     [class_index[item.class_name] for item in block], image_size))
        total = sum(len(job.items) for job in jobs)
        # largest shards first, so the last ones to finish are small and no core idles long
        ordered = sorted(jobs, key=lambda job: -len(job.items))
        with _pool(min(workers or os.cpu_count() or 1, len(jobs))) as pool:
            results = pool.imap_unordered(write_shard, ordered) if pool else map(write_shard, ordered)
            bar = tqdm(total=total, desc=f"shard {dataset.name}", unit="img", disable=not progress, file=sys.stderr)
            written = []
            for result in results:
                written.append(result)
                bar.update(result["inputs"])
            bar.close()
        for result in sorted(written, key=lambda r: str(r["path"])):
            part, modality = result["path"].parent.name, result["path"].name.split("-")[0]
            counts[part][modality].update(result["counts"])
            skipped += result["skipped"]
            bad += len(result["skipped"])
            shards[result["path"].relative_to(tmp).as_posix()] = {"samples": result["samples"],
                                                                   "sha256": result["sha256"]}
        if total and bad / total > max_bad:
            raise SbirError(f"{raw}: {bad} of {total} images are unreadable (more than "
                            f"{max_bad:.0%}); see the reasons with --max-bad 1 and {INDEX_NAME}")
        for part in ("train", "test"):
            if not any(counts[part][m] for m in MODALITIES):
                raise SbirError(f"split '{split}' leaves the {part} part empty")
        index = {
            "version": INDEX_VERSION, "dataset": dataset.name, "split": split,
            "params": {"image_size": image_size, "shard_size": shard_size, "seed": seed,
                       "val_fraction": val_fraction, "max_per_class": max_per_class,
                       "reference_lists": [Path(p).name for p in reference_lists]},
            "classes": plan.classes, "seen_classes": plan.seen, "unseen_classes": plan.unseen,
            "counts": {p: {m: dict(sorted(c.items())) for m, c in by_modality.items()}
                       for p, by_modality in counts.items()},
            "totals": {p: {m: sum(c.values()) for m, c in mods.items()} for p, mods in counts.items()},
            "shards": dict(sorted(shards.items())),
            "skipped": sorted(skipped, key=lambda s: s["source"]),
            "notes": scan.notes,
        }
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


class _pool:
    """A process pool over ``workers`` processes, or None (work in this process) for one worker."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            self.pool = multiprocessing.get_context("fork").Pool(self.workers)
        return self.pool

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate() if exc[0] else self.pool.close()
            self.pool.join()
        return False


def summary_table(index: dict) -> str:
    """A plain-text table of samples, classes and shards per part and modality."""
    rows = [("part", "modality", "samples", "classes", "shards")]
    for part in PARTS:
        for modality in MODALITIES:
            per_class = index["counts"][part][modality]
            n_shards = sum(1 for rel in index["shards"] if rel.startswith(f"{part}/{modality}-"))
            rows.append((part, modality, str(sum(per_class.values())), str(len(per_class)), str(n_shards)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i >= 2 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join(lines)


def _verify_shard(path: Path, root: Path) -> tuple[str, Counter, list[str]]:
    """sha256 of a shard, its samples counted by class, and the problems found in it, each naming the shard by
    its path below ``root`` (``train/photo-000001.tar``), the sample by its key, and what is wrong in words."""
    from PIL import Image

    name = path.relative_to(root).as_posix()
    counts: Counter = Counter()
    problems = []
    try:
        for sample in iter_tar_samples(path):
            wrong = []
            meta = None
            if "json" not in sample:
                wrong.append("no .json member")
            else:
                try:
                    meta = json.loads(sample["json"])
                except ValueError as error:
                    wrong.append(f".json member is not JSON: {error}")
                if meta is not None and not (isinstance(meta, dict) and isinstance(meta.get("class"), str)):
                    wrong.append(".json member has no 'class' name")
                    meta = None
            try:
                extension, data = image_of(sample)
            except KeyError:
                wrong.append("no image member (.jpg or .png)")
            else:
                try:
                    decode_image(data)
                except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
                    wrong.append(f".{extension} image does not decode: {error}")
            if "cls" not in sample:
                wrong.append("no .cls member")
            else:
                try:
                    int(sample["cls"])
                except ValueError:
                    wrong.append(f".cls member is not a class number: {sample['cls'][:40]!r}")
            if meta is not None:
                counts[meta["class"]] += 1
            if wrong:
                problems.append(f"{name}: sample {sample['__key__']}: {'; '.join(wrong)}")
    except ShardReadError as error:
        after = f"after sample {error.after}" if error.after is not None else "before its first sample"
        problems.append(f"{name}: unreadable tar {after}: {error.reason}")
    return file_digest(path), counts, problems


def verify_sharded(out: Path, workers: int | None = None, progress: bool = True) -> tuple[list[str], str]:
    """Check a sharded dataset against its index: shard hashes, counts per part/modality/class, and that
    every image decodes. Returns the problems found (empty when all is well) and a summary table."""
    out = Path(out)
    index = read_index(out, require=("shards", "counts"))
    problems = []
    listed = set(index["shards"])
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("*/*.tar")}
    problems += [f"{rel}: listed in {INDEX_NAME} but missing" for rel in sorted(listed - on_disk)]
    problems += [f"{rel}: on disk but not listed in {INDEX_NAME}" for rel in sorted(on_disk - listed)]
    present = sorted(listed & on_disk)
    found: dict = {p: {m: Counter() for m in MODALITIES} for p in PARTS}
    with _pool(min(workers or os.cpu_count() or 1, max(1, len(present)))) as pool:
        paths = [out / rel for rel in present]
        check = functools.partial(_verify_shard, root=out)
        results = pool.imap(check, paths) if pool else map(check, paths)
        for rel, (digest, counts, shard_problems) in tqdm(zip(present, results), total=len(present),
                                                          desc="verify", unit="shard", disable=not progress,
                                                          file=sys.stderr):
            problems += shard_problems
            if digest != index["shards"][rel]["sha256"]:
                problems.append(f"{rel}: sha256 mismatch (expected {index['shards'][rel]['sha256'][:12]}..., "
                                f"got {digest[:12]}...)")
            part, modality = rel.split("/")[0], rel.split("/")[1].split("-")[0]
            found[part][modality].update(counts)
    for part in PARTS:
        for modality in MODALITIES:
            expected = Counter(index["counts"][part][modality])
            if found[part][modality] != expected and not any("missing" in p for p in problems):
                diff = sorted(set(expected) | set(found[part][modality]))
                bad = [f"{c} {expected[c]}->{found[part][modality][c]}" for c in diff
                       if expected[c] != found[part][modality][c]]
                problems.append(f"{part}/{modality}: counts differ from {INDEX_NAME}: {', '.join(bad[:5])}")
    return problems, summary_table(index)
