"""The embedded synthetic dataset: layout, determinism, decodability, pairing, scan, idempotence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbir.data.datasets import get_dataset
from sbir.data.datasets.synthetic import CLASS_NAMES, MANIFEST, UNSEEN_CLASSES, Synthetic, generate
from sbir.errors import SbirError
from tests.helpers import SYNTHETIC_SMALL


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("gen") / "synthetic", seed=0, workers=1, progress=False,
                    **SYNTHETIC_SMALL)


def test_class_lists():
    assert len(CLASS_NAMES) == 20 and len(set(CLASS_NAMES)) == 20
    assert UNSEEN_CLASSES == CLASS_NAMES[3::4]
    assert len(UNSEEN_CLASSES) == 5 and set(UNSEEN_CLASSES) <= set(CLASS_NAMES)


def test_layout_and_counts(small):
    classes = CLASS_NAMES[:4]
    assert sorted(p.name for p in (small / "photo").iterdir()) == sorted(classes)
    assert sorted(p.name for p in (small / "sketch").iterdir()) == sorted(classes)
    for name in classes:
        photos = sorted(p.name for p in (small / "photo" / name).iterdir())
        sketches = sorted(p.name for p in (small / "sketch" / name).iterdir())
        assert photos == [f"{name}_{i:04d}.jpg" for i in (1, 2, 3)]
        assert sketches == [f"{name}_{i:04d}-{k}.png" for i in (1, 2, 3) for k in (1, 2)]
    manifest = json.loads((small / MANIFEST).read_text())
    assert manifest["params"] == {"seed": 0, "image_size": 256, **SYNTHETIC_SMALL}
    assert manifest["classes"] == classes
    assert manifest["unseen_classes"] == [c for c in UNSEEN_CLASSES if c in classes] == ["umbrella"]
    assert manifest["files"] == {"photo": 12, "sketch": 24, "total": 36}
    assert len(_files(small)) == 36 + 1
    assert not [p for p in small.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_byte_identical_across_runs_and_worker_counts(small, tmp_path):
    again = generate(tmp_path / "a", seed=0, workers=2, progress=False, **SYNTHETIC_SMALL)
    assert _files(again) == _files(small)


def test_different_seed_gives_different_bytes(small, tmp_path):
    other = _files(generate(tmp_path / "b", seed=1, workers=1, progress=False, **SYNTHETIC_SMALL))
    ref = _files(small)
    assert other.keys() == ref.keys()
    images = [k for k in ref if k != MANIFEST]
    assert len(images) == 36
    assert all(other[k] != ref[k] for k in images)


def test_every_file_decodes_at_the_right_size_and_mode(small):
    photos = [p for p in (small / "photo").rglob("*") if p.is_file()]
    sketches = [p for p in (small / "sketch").rglob("*") if p.is_file()]
    assert (len(photos), len(sketches)) == (12, 24)
    for path in photos:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (256, 256)), path
            im.load()
    for path in sketches:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (256, 256)), path
            im.load()


def test_sketches_are_dark_strokes_on_white_and_photos_are_not(small):
    sketches, photos = sorted((small / "sketch").rglob("*.png")), sorted((small / "photo").rglob("*.jpg"))
    assert (len(photos), len(sketches)) == (12, 24)
    for path in sketches:
        a = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        white, dark = (a > 230).mean(), (a < 128).mean()
        assert white > 0.8, path
        assert 0.0005 < dark < 0.15, path
    for path in photos:
        a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        assert (a.min(axis=2) > 230).mean() < 0.5, path
        assert a.std() > 10, path


def test_each_sketch_pairs_with_an_existing_photo(small):
    sketches = sorted((small / "sketch").rglob("*.png"))
    assert len(sketches) == 24
    for path in sketches:
        stem, k = path.stem.rsplit("-", 1)
        assert k in {"1", "2"}
        assert (small / "photo" / path.parent.name / f"{stem}.jpg").is_file(), path


def test_scan_and_registry(small):
    dataset = get_dataset("synthetic")
    assert isinstance(dataset, Synthetic)
    assert dataset.default_split == "synthetic" and dataset.extra_splits == {"synthetic": UNSEEN_CLASSES}
    assert dataset.is_layout(small) and not dataset.is_layout(small / "photo")
    scan = dataset.scan(small)
    assert not scan.skipped and not scan.notes
    photos = [it for it in scan.items if it.modality == "photo"]
    sketches = [it for it in scan.items if it.modality == "sketch"]
    assert len(photos) == 12 and len(sketches) == 24
    assert len({it.instance_id for it in photos}) == 12
    assert {it.instance_id for it in sketches} == {it.instance_id for it in photos}
    for it in scan.items:
        assert Path(it.path).is_file()
        assert it.source == Path(it.path).relative_to(small).as_posix()
        assert it.source.split("/")[1] == it.class_name
        assert it.instance_id == f"{it.class_name}/{Path(it.path).stem.split('-')[0]}"
    house = [it for it in sketches if it.instance_id == "house/house_0002"]
    assert sorted(it.source for it in house) == ["sketch/house/house_0002-1.png", "sketch/house/house_0002-2.png"]


def test_rerun_on_a_complete_folder_does_nothing(tmp_path):
    out = generate(tmp_path / "s", seed=3, workers=1, progress=False, classes_count=2, photos_per_class=1,
                   sketches_per_photo=1)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert len([p for p in stamps if p.is_file()]) == 2 + 2 + 1  # photos, sketches, the manifest
    stamps[out] = out.stat().st_mtime_ns
    assert generate(out, seed=3, workers=2, progress=False, classes_count=2, photos_per_class=1,
                    sketches_per_photo=1) == out
    assert {p: p.stat().st_mtime_ns for p in [*out.rglob("*"), out]} == stamps


def test_other_parameters_or_a_damaged_folder_regenerate(tmp_path):
    kw = {"workers": 1, "progress": False, "classes_count": 2, "photos_per_class": 2}
    out = generate(tmp_path / "s", sketches_per_photo=1, **kw)
    assert len(list(out.rglob("*.png"))) == 4
    generate(out, sketches_per_photo=2, **kw)
    assert len(list(out.rglob("*.png"))) == 8
    assert json.loads((out / MANIFEST).read_text())["params"]["sketches_per_photo"] == 2
    next(out.rglob("*.jpg")).unlink()
    generate(out, sketches_per_photo=2, **kw)
    assert len(list(out.rglob("*.jpg"))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SbirError, match="not an output of this command"):
        generate(out, workers=1, progress=False, classes_count=1, photos_per_class=1, sketches_per_photo=1)
    assert (out / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, workers=1, progress=False, classes_count=1, photos_per_class=1, sketches_per_photo=1)
    assert (empty / MANIFEST).is_file()


@pytest.mark.parametrize("bad", [{"classes_count": 0}, {"classes_count": 21}, {"photos_per_class": 0},
                                 {"sketches_per_photo": 0}, {"image_size": 8}, {"seed": -1}])
def test_bad_parameters(tmp_path, bad):
    with pytest.raises(SbirError):
        generate(tmp_path / "x", workers=1, progress=False, **bad)
    assert not (tmp_path / "x").exists()


def test_other_image_size(tmp_path):
    out = generate(tmp_path / "s", workers=1, progress=False, classes_count=1, photos_per_class=1,
                   sketches_per_photo=1, image_size=96)
    paths = sorted(out.rglob("*.*g"))
    assert len(paths) == 2  # one photo, one sketch
    for path in paths:
        assert Image.open(path).size == (96, 96)
