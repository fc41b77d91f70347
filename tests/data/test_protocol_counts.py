"""The published split sizes (PROTOCOLS.md) come out of the split logic at full scale.

The full datasets are not on this machine, but the reference file lists of ZSE-SBIR (in
../shared/data/splits/zse-sbir) name every file of each published split. Planning a split over items
made from those names must give exactly the published test counts, and train + val the published
train counts; and the reference-list filter keeps exactly the listed files of a real folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sbir.data.datasets import RawItem, get_dataset
from sbir.data.shards.build import filter_by_reference, plan_split, read_reference_lists, shard_dataset
from sbir.data.splits import normalise_class_name, resolve_unseen_classes
from tests.helpers import shared

CASES = {  # split: (reference folder, sketch lists, photo lists, test sketches, test photos, train sketches, photos)
    "sketchy21": ("Sketchy/zeroshot0", "sketch_tx_000000000000_ready_filelist_{}.txt", "all_photo_filelist_{}.txt",
                  12694, 12553, 57587, 72949),
    "sketchy25": ("Sketchy/zeroshot1", "sketch_tx_000000000000_ready_filelist_{}.txt", "all_photo_filelist_{}.txt",
                  15229, 17101, 55252, 68401),
    "tuberlin30": ("TUBerlin/zeroshot", "png_ready_filelist_{}.txt", "ImageResized_ready_filelist_{}.txt",
                   2400, 27989, 15400, None),
}


def items_from_list(path: Path, modality: str) -> list[RawItem]:
    items = []
    for line in path.read_text().splitlines():
        relative = line.rsplit(" ", 1)[0]
        class_name, stem = Path(relative).parts[-2], Path(relative).stem
        instance = stem.rsplit("-", 1)[0] if modality == "sketch" else stem
        items.append(RawItem(modality, class_name, relative, f"{class_name}/{instance}", relative))
    return items


@pytest.mark.parametrize("split", sorted(CASES))
def test_published_counts(split):
    folder, sketch_list, photo_list, test_sketches, test_photos, train_sketches, train_photos = CASES[split]
    root = shared("splits/zse-sbir/datasets") / folder
    items = []
    for part in ("train", "zero"):
        items += items_from_list(root / sketch_list.format(part), "sketch")
        if (root / photo_list.format(part)).is_file():
            items += items_from_list(root / photo_list.format(part), "photo")
    classes = sorted({item.class_name for item in items})
    unseen = resolve_unseen_classes(split, classes)
    plan = plan_split(items, unseen, seed=0, val_fraction=0.1)
    sizes = {key: len(bucket) for key, bucket in plan.parts.items()}
    assert sizes["test", "sketch"] == test_sketches
    assert sizes["test", "photo"] == test_photos
    assert sizes["train", "sketch"] + sizes["val", "sketch"] == train_sketches
    if train_photos is not None:
        assert sizes["train", "photo"] + sizes["val", "photo"] == train_photos
    assert 0 < sizes["val", "sketch"] < 0.2 * train_sketches
    zero_classes = {line.rsplit(" ", 1)[0] for line in (root / "cname_cid_zero.txt").read_text().splitlines()}
    assert set(unseen) == zero_classes


def test_reference_lists_filter_a_real_folder(sketchy_mini, tmp_path):
    lists = shared("splits/zse-sbir/datasets/Sketchy/zeroshot0")
    paths = [lists / f"sketch_tx_000000000000_ready_filelist_{p}.txt" for p in ("train", "zero")]
    paths += [lists / f"all_photo_filelist_{p}.txt" for p in ("train", "zero")]
    listed = read_reference_lists(paths)
    items = get_dataset("sketchy").scan(sketchy_mini).items
    kept, left_out = filter_by_reference(items, listed)
    assert items and kept  # the loop below checks something
    assert len(kept) + len(left_out) == len(items)
    kept_sources = {item.source for item in kept}
    for item in items:  # a file is kept exactly when the lists name it
        key = (normalise_class_name(item.class_name), Path(item.source).stem)
        assert (key in listed) == (item.source in kept_sources)
    assert {s["source"] for s in left_out} == {i.source for i in items} - kept_sources
    index = shard_dataset(get_dataset("sketchy"), sketchy_mini, tmp_path / "o", "sketchy21",
                          reference_lists=paths, max_per_class=None, progress=False)
    total = sum(sum(by_class.values()) for part in index["counts"].values() for by_class in part.values())
    assert total == len(kept)
    assert Counter(s["reason"] for s in index["skipped"]) == Counter(
        {"not in the reference file lists": len(left_out)} if left_out else {})
