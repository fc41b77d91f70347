"""Bad data given to the data tools: malformed shard indexes, damaged shards, symbolic links leaving the raw
folder, empty class folders, and QuickDraw class names spelt the QuickDraw way or the QuickDraw-Extended way."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from sbir.cli.prep import main
from sbir.data.datasets import get_dataset
from sbir.data.datasets.quickdraw import EXTENDED_NAMES
from sbir.data.datasets.sketchy import AUGMENTATION as AUG
from sbir.data.shards.build import shard_dataset, verify_sharded
from sbir.data.shards.reader import iter_tar_samples, read_index, shard_paths
from sbir.data.shards.writer import TarShardWriter, tar_member
from sbir.data.splits import resolve_unseen_classes
from sbir.errors import SbirError
from tests import helpers
from tests.helpers import image_bytes, make_sketchy, one_line_error


def invoke(*args: str | Path):
    return helpers.invoke(main, *args)


def split_file(folder: Path, *names: str) -> Path:
    path = folder / "split.txt"
    path.write_text("\n".join(names) + "\n")
    return path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """Shards of a tiny Sketchy: 4 photos and 4 sketches per class, 'door' unseen, no val part."""
    tmp = tmp_path_factory.mktemp("bad-data")
    raw = make_sketchy(tmp / "raw", photos=4)
    out = tmp / "shards"
    shard_dataset(get_dataset("sketchy"), raw, out, str(split_file(tmp, "door")), image_size=32, val_fraction=0,
                  workers=1, progress=False)
    return out


@pytest.fixture()
def shards(sharded, tmp_path) -> Path:
    """A copy of :func:`sharded` to damage."""
    out = tmp_path / "shards"
    shutil.copytree(sharded, out)
    return out


# --- 1. index.json of the wrong shape: one line naming the file and what is wrong -----------------------


def _without(index: dict, key: str) -> dict:
    return {k: v for k, v in index.items() if k != key}


def _first_shard(index: dict, **entry) -> dict:
    first = sorted(index["shards"])[0]
    return {**index, "shards": {**index["shards"], first: entry}}


BAD_INDEXES = {
    "empty object": (lambda index: {}, "not a shard index (no 'shards' object)"),
    "empty array": (lambda index: [], "not a shard index (a JSON array, not an object)"),
    "a number": (lambda index: 3, "not a shard index (a JSON number, not an object)"),
    "null": (lambda index: None, "not a shard index (a JSON null, not an object)"),
    "shards is a list": (lambda index: {**index, "shards": sorted(index["shards"])},
                         "not a shard index ('shards' is a JSON array, not an object)"),
    "no shards": (lambda index: _without(index, "shards"), "not a shard index (no 'shards' object)"),
    "no counts": (lambda index: _without(index, "counts"), "not a shard index (no 'counts' object)"),
    "counts without a part": (lambda index: {**index, "counts": _without(index["counts"], "val")},
                              "not a shard index (no 'counts.val' object)"),
    "count not a number": (lambda index: {**index, "counts": {**index["counts"], "train": {
        "sketch": {"cup": "4"}, "photo": {}}}}, "not a shard index ('counts.train.sketch.cup' is a JSON string, "
                                               "not a count)"),
    "shard without sha256": (lambda index: _first_shard(index, samples=4),
                             "not a shard index (shard 'test/photo-000000.tar' has no 'sha256' string)"),
    "shard entry not an object": (lambda index: {**index, "shards": {"test/photo-000000.tar": "abc"}},
                                  "not a shard index (shard 'test/photo-000000.tar' is a JSON string, not an "
                                  "object)"),
    "samples not a count": (lambda index: _first_shard(index, samples=-1, sha256="0" * 64),
                            "not a shard index (shard 'test/photo-000000.tar': 'samples' is not a count)"),
    "shard path leaves the folder": (lambda index: {**index, "shards": {"../../etc/x.tar": {
        "samples": 1, "sha256": "0" * 64}}},
        "not a shard index (shard path '../../etc/x.tar' is not <part>/<modality>-<number>.tar)"),
    "classes not a list": (lambda index: {**index, "classes": "cup"},
                           "not a shard index ('classes' is a JSON string, not a list of class names)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEXES))
def test_verify_an_index_of_the_wrong_shape_says_so_in_one_line(shards, case) -> None:
    make, expected = BAD_INDEXES[case]
    path = shards / "index.json"
    path.write_text(json.dumps(make(json.loads(path.read_text()))))
    line = one_line_error(invoke("verify", shards, "--workers", 1))
    assert line == f"error: {path}: {expected}"
    assert "Traceback" not in line


def test_invalid_json_and_missing_index_say_so_in_one_line(shards, tmp_path) -> None:
    path = shards / "index.json"
    path.write_text('{"shards": {')
    line = one_line_error(invoke("verify", shards))
    assert line.startswith(f"error: {path}: unreadable shard index: ")
    path.unlink()
    line = one_line_error(invoke("verify", shards))
    assert line.startswith(f"error: {path}: no shard index")
    path.mkdir()  # index.json a folder, not a file
    assert one_line_error(invoke("verify", shards)).startswith(f"error: {path}: no shard index")


def test_read_index_checks_the_shape_for_every_reader(shards) -> None:
    path = shards / "index.json"
    good = json.loads(path.read_text())
    assert read_index(shards) == good
    assert len(shard_paths(shards, "train", "photo")) == 1
    path.write_text("[]")
    with pytest.raises(SbirError, match=r"index.json: not a shard index \(a JSON array, not an object\)$"):
        read_index(shards)
    path.write_text("{}")
    with pytest.raises(SbirError, match=r"index.json: not a shard index \(no 'shards' object\)$"):
        shard_paths(shards, "train", "photo")
    # readers that need only some keys accept an index holding just those (e.g. the classes, for training)
    path.write_text(json.dumps({"classes": ["a"], "seen_classes": ["a"], "unseen_classes": []}))
    assert read_index(shards)["classes"] == ["a"]
    with pytest.raises(SbirError, match=r"no 'shards' object"):
        shard_paths(shards, "train", "photo")


# --- 2. problems in a damaged shard name the shard (with its part), the sample and what is wrong ---------


def test_a_damaged_tar_header_names_shard_part_and_last_good_sample(shards) -> None:
    index = json.loads((shards / "index.json").read_text())
    rel = "train/photo-000000.tar"
    assert index["shards"][rel]["samples"] == 8
    with tarfile.open(shards / rel) as tar:
        members = [(m.name, m.offset) for m in tar]
    assert len(members) == 24
    name, offset = members[10]  # the 4th sample's second member
    assert name.endswith(".jpg")
    last_good = members[8][0].split(".")[0]
    data = bytearray((shards / rel).read_bytes())
    data[offset:offset + 100] = b"X" * 100  # the member's name field: the header checksum no longer matches
    (shards / rel).write_bytes(bytes(data))

    problems, _ = verify_sharded(shards, workers=1, progress=False)
    assert f"{rel}: unreadable tar after sample {last_good}: damaged tar header at byte {offset} " \
           f"(bad checksum)" in problems
    assert f"{rel}: sha256 mismatch" in "\n".join(problems)
    assert not any("'json'" in p for p in problems), problems
    result = invoke("verify", shards, "--workers", 1)
    assert result.exit_code == 1
    assert f"problem: {rel}: unreadable tar after sample {last_good}: damaged tar header" in result.stderr

    # the readers of training and embedding stop there too, instead of quietly losing the rest of the shard
    keys = []
    with pytest.raises(SbirError, match=f"{rel}: unreadable tar after sample {last_good}: damaged tar header"):
        for sample in iter_tar_samples(shards / rel):
            keys.append(sample["__key__"])
    assert len(keys) == 3 and keys[-1] == last_good


def test_a_zeroed_header_before_more_samples_is_not_taken_for_the_end(shards) -> None:
    rel = "train/sketch-000000.tar"
    with tarfile.open(shards / rel) as tar:
        members = [(m.name, m.offset) for m in tar]
    assert len(members) == 24
    offset = members[12][1]
    data = bytearray((shards / rel).read_bytes())
    data[offset:offset + 512] = bytes(512)
    (shards / rel).write_bytes(bytes(data))
    problems, _ = verify_sharded(shards, workers=1, progress=False)
    after = members[8][0].split(".")[0]  # the sample before the damage is whole but cannot be told from a torn one
    assert f"{rel}: unreadable tar after sample {after}: data after the end-of-archive marker at byte " \
           f"{offset}" in problems


def test_a_sample_without_json_member_is_named(shards) -> None:
    rel = "train/photo-000000.tar"
    path = shards / rel
    samples = list(iter_tar_samples(path))
    assert len(samples) == 8
    writer = TarShardWriter(path)
    for number, sample in enumerate(samples):
        members = [(f"{sample['__key__']}.{ext}", sample[ext]) for ext in sorted(sample) if ext != "__key__"]
        if number == 2:
            members = [(name, data) for name, data in members if not name.endswith(".json")]
        writer.write(b"".join(tar_member(name, data) for name, data in members))
    index = json.loads((shards / "index.json").read_text())
    index["shards"][rel]["sha256"] = writer.close()
    (shards / "index.json").write_text(json.dumps(index))

    problems, _ = verify_sharded(shards, workers=1, progress=False)
    assert f"{rel}: sample {samples[2]['__key__']}: no .json member" in problems
    assert not any(p == "'json'" or p.endswith(": 'json'") for p in problems), problems
    result = invoke("verify", shards, "--workers", 1)
    assert result.exit_code == 1
    assert f"problem: {rel}: sample {samples[2]['__key__']}: no .json member\n" in result.stderr


def test_bad_members_are_named_in_words(shards) -> None:
    rel = "train/photo-000000.tar"
    path = shards / rel
    samples = list(iter_tar_samples(path))
    assert len(samples) == 8
    damage = {1: ("json", b"{not json"), 3: ("cls", b"seven"), 5: ("jpg", b"not an image")}
    writer = TarShardWriter(path)
    for number, sample in enumerate(samples):
        if number in damage:
            ext, data = damage[number]
            sample = {**sample, ext: data}
        members = [(f"{sample['__key__']}.{ext}", sample[ext]) for ext in sorted(sample) if ext != "__key__"]
        writer.write(b"".join(tar_member(name, data) for name, data in members))
    index = json.loads((shards / "index.json").read_text())
    index["shards"][rel]["sha256"] = writer.close()
    (shards / "index.json").write_text(json.dumps(index))
    problems = [p for p in verify_sharded(shards, workers=1, progress=False)[0] if p.startswith(f"{rel}: sample ")]
    assert len(problems) == 3, problems
    keys = [samples[n]["__key__"] for n in sorted(damage)]
    assert problems[0].startswith(f"{rel}: sample {keys[0]}: .json member is not JSON: ")
    assert problems[1] == f"{rel}: sample {keys[1]}: .cls member is not a class number: b'seven'"
    assert problems[2].startswith(f"{rel}: sample {keys[2]}: .jpg image does not decode: ")


# --- 3. symbolic links that leave the raw folder are skipped, with a reason -----------------------------


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def test_a_link_to_a_file_outside_the_raw_folder_is_skipped_when_sharding(tmp_path) -> None:
    real = make_sketchy(tmp_path / "data" / "sketchy", photos=2)
    raw = tmp_path / "raw-link"  # users link the raw folder: links inside it resolve into `real`, still inside
    raw.symlink_to(real, target_is_directory=True)
    outside = tmp_path / "elsewhere" / "holiday.jpg"
    outside.parent.mkdir()
    outside.write_bytes(image_bytes("RGB", "JPEG"))
    photos = real / "256x256" / "photo" / AUG
    _link(photos / "cup" / "n00_7.jpg", outside)                       # a file outside: skipped
    _link(photos / "bat" / "n01_7.jpg", photos / "bat" / "n01_0.jpg")  # a file inside: kept
    _link(photos / "cup" / "n00_8.jpg", Path("..") / "bat" / "n01_1.jpg")  # relative, inside: kept
    (tmp_path / "elsewhere" / "owl").mkdir()
    (tmp_path / "elsewhere" / "owl" / "n09_0.jpg").write_bytes(image_bytes("RGB", "JPEG"))
    _link(photos / "owl", tmp_path / "elsewhere" / "owl")              # a class folder outside: skipped

    index = shard_dataset(get_dataset("sketchy"), raw, tmp_path / "out", str(split_file(tmp_path, "door")),
                          image_size=32, val_fraction=0, workers=1, progress=False)
    skipped = {s["source"]: s["reason"] for s in index["skipped"]}
    assert skipped == {
        f"256x256/photo/{AUG}/cup/n00_7.jpg": f"symbolic link to a file outside the dataset ({outside})",
        f"256x256/photo/{AUG}/owl/": f"symbolic link to a folder outside the dataset ({tmp_path / 'elsewhere/owl'})",
    }
    out = tmp_path / "out"
    sources = [json.loads(s["json"])["source"] for rel in index["shards"] for s in iter_tar_samples(out / rel)]
    assert len(sources) == 3 * 2 * 2 + 2
    assert f"256x256/photo/{AUG}/cup/n00_7.jpg" not in sources
    assert f"256x256/photo/{AUG}/bat/n01_7.jpg" in sources and f"256x256/photo/{AUG}/cup/n00_8.jpg" in sources
    assert "owl" not in index["classes"]


def _outside_jpeg(tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / "x.jpg"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(image_bytes("RGB", "JPEG"))
    return outside


def _tuberlin(root: Path) -> Path:
    for name in ("ant", "bee"):
        (root / "png" / name).mkdir(parents=True)
        (root / "png" / name / "1.png").write_bytes(image_bytes("L", "PNG"))
    return root


def _quickdraw_extended(root: Path) -> Path:
    for name in ("ant", "bee"):
        (root / "sketches" / name).mkdir(parents=True)
        (root / "sketches" / name / "1.png").write_bytes(image_bytes("L", "PNG"))
        (root / "images" / name).mkdir(parents=True)
        (root / "images" / name / "1.jpg").write_bytes(image_bytes("RGB", "JPEG"))
    return root


def _synthetic(root: Path) -> Path:
    for name in ("ant", "bee"):
        (root / "photo" / name).mkdir(parents=True)
        (root / "photo" / name / "ant_0000.jpg").write_bytes(image_bytes("RGB", "JPEG"))
        (root / "sketch" / name).mkdir(parents=True)
        (root / "sketch" / name / "ant_0000-1.png").write_bytes(image_bytes("L", "PNG"))
    return root


DRAWING = {"word": "x", "key_id": "1", "drawing": [[[0, 50, 100], [0, 80, 20]]]}


def _ndjson(root: Path, words: tuple[str, ...] = ("ant", "bee"), lines: int = 2) -> Path:
    folder = root / "full" / "simplified"
    folder.mkdir(parents=True)
    for word in words:
        records = [{**DRAWING, "word": word, "key_id": f"{word}{n}"} for n in range(lines)]
        (folder / f"{word}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


# dataset -> (make a raw folder, the link to add (file), the folder the link's class lies in)
LINKED = {
    "sketchy": (make_sketchy, f"256x256/photo/{AUG}/cup/n00_9.jpg"),
    "tuberlin": (_tuberlin, "png/ant/9.png"),
    "quickdraw": (_quickdraw_extended, "images/ant/9.jpg"),
    "quickdraw-ndjson": (_ndjson, "full/simplified/cat.ndjson"),
    "synthetic": (_synthetic, "photo/ant/ant_0009.jpg"),
}


@pytest.mark.parametrize("case", sorted(LINKED))
def test_every_scan_skips_a_link_to_outside_the_raw_folder(case, tmp_path) -> None:
    make, rel = LINKED[case]
    real = make(tmp_path / "raw")
    root = tmp_path / "root-link"
    root.symlink_to(real, target_is_directory=True)
    outside = _outside_jpeg(tmp_path)
    if rel.endswith(".ndjson"):
        outside = tmp_path / "outside" / "cat.ndjson"
        outside.write_text(json.dumps(DRAWING) + "\n")
    _link(real / rel, outside)
    scan = get_dataset(case.split("-")[0]).scan(root)
    assert len(scan.items) >= 2
    assert {"source": rel, "reason": f"symbolic link to a file outside the dataset ({outside})"} in scan.skipped
    assert not [item for item in scan.items if item.source.split("#")[0] == rel]
    assert not [item for item in scan.items if os.path.realpath(item.path) == str(outside)]


def test_a_linked_layout_folder_is_used_and_a_broken_link_skipped(tmp_path) -> None:
    """The bounds are the resolved raw root and the resolved layout folder scanned: Extended photos linked in
    from another disk are used, but a link inside them that leaves that folder is not."""
    raw = make_sketchy(tmp_path / "raw")
    extended = tmp_path / "other-disk" / "EXTEND_image_sketchy"
    (extended / "cup").mkdir(parents=True)
    (extended / "cup" / "e1.jpg").write_bytes(image_bytes("RGB", "JPEG"))
    outside = _outside_jpeg(tmp_path)
    _link(extended / "cup" / "e2.jpg", outside)
    (raw / "EXTEND_image_sketchy").symlink_to(extended, target_is_directory=True)
    _link(raw / "256x256" / "photo" / AUG / "bat" / "gone.jpg", raw / "no-such.jpg")
    scan = get_dataset("sketchy").scan(raw)
    sources = sorted(item.source for item in scan.items)
    assert len(sources) == 7
    assert "EXTEND_image_sketchy/cup/e1.jpg" in sources
    assert scan.skipped == [
        {"source": f"256x256/photo/{AUG}/bat/gone.jpg", "reason": f"broken symbolic link ({raw / 'no-such.jpg'})"},
        {"source": "EXTEND_image_sketchy/cup/e2.jpg",
         "reason": f"symbolic link to a file outside the dataset ({outside})"},
    ]


# --- 4. an empty class folder is noted -----------------------------------------------------------------


def test_an_empty_class_folder_is_noted(tmp_path) -> None:
    raw = make_sketchy(tmp_path / "raw", photos=2)
    (raw / "256x256" / "sketch" / AUG / "owl").mkdir()
    (raw / "256x256" / "photo" / AUG / "emu").mkdir()
    (raw / "256x256" / "photo" / AUG / "emu" / "readme.txt").write_text("nothing here")
    index = shard_dataset(get_dataset("sketchy"), raw, tmp_path / "out", str(split_file(tmp_path, "door")),
                          image_size=32, val_fraction=0, workers=1, progress=False)
    assert f"256x256/sketch/{AUG}/owl: empty class folder, no images" in index["notes"]
    assert f"256x256/photo/{AUG}/emu: class folder with no usable images (1 entry skipped)" in index["notes"]
    assert not [n for n in index["notes"] if "/cup" in n or "/bat" in n or "/door" in n]
    scan = get_dataset("tuberlin").scan(_tuberlin(tmp_path / "tb"))
    assert scan.notes == ["no ImageResized/ folder: sketches only (no Extended photos)"]
    (tmp_path / "tb" / "png" / "cow").mkdir()
    assert "png/cow: empty class folder, no images" in get_dataset("tuberlin").scan(tmp_path / "tb").notes
    qd = _ndjson(tmp_path / "qd")
    (qd / "full" / "simplified" / "cow.ndjson").write_text("\n")
    assert "full/simplified/cow.ndjson: empty file, no drawings" in get_dataset("quickdraw").scan(qd).notes


# --- 5. QuickDraw: a split may name a class by its QuickDraw word or its QuickDraw-Extended name ----------


def test_quickdraw_words_in_a_split_match_the_extended_names(quickdraw_mini, tmp_path) -> None:
    words = sorted(EXTENDED_NAMES)
    assert {p.stem for p in (quickdraw_mini / "full" / "simplified").glob("*.ndjson")} >= set(words)
    index = shard_dataset(get_dataset("quickdraw"), quickdraw_mini, tmp_path / "qd",
                          str(split_file(tmp_path, *words, "banana")), image_size=16, shard_size=5000,
                          max_per_class=1, val_fraction=0, workers=1, progress=False)
    assert index["unseen_classes"] == sorted([*EXTENDED_NAMES.values(), "banana"])
    assert sorted(index["counts"]["test"]["sketch"]) == index["unseen_classes"]


@pytest.mark.parametrize("form", ["ndjson", "extended"])
@pytest.mark.parametrize("names", ["words", "extended names"])
def test_quickdraw_names_both_ways_on_both_forms_of_data(form, names, tmp_path) -> None:
    words = ("The Eiffel Tower", "motorbike", "crocodile", "cat")
    if form == "ndjson":
        raw = _ndjson(tmp_path / "raw", words)
    else:
        raw = tmp_path / "raw"
        for name in ("eiffel tower", "motorcycle", "crocodilian", "cat"):
            (raw / "sketches" / name).mkdir(parents=True)
            for n in range(2):
                (raw / "sketches" / name / f"{n}.png").write_bytes(image_bytes("L", "PNG", 100 + n))
    split = ["The Eiffel Tower", "motorbike"] if names == "words" else ["Eiffel_Tower", "motorcycle"]
    index = shard_dataset(get_dataset("quickdraw"), raw, tmp_path / "out", str(split_file(tmp_path, *split)),
                          image_size=16, val_fraction=0, workers=1, progress=False)
    assert index["classes"] == ["cat", "crocodilian", "eiffel tower", "motorcycle"]
    assert index["unseen_classes"] == ["eiffel tower", "motorcycle"]
    assert index["counts"]["test"]["sketch"] == {"eiffel tower": 2, "motorcycle": 2}


def test_resolve_unseen_classes_with_aliases(tmp_path) -> None:
    classes = ["cat", "crocodilian", "motorcycle"]
    aliases = {"crocodile": "crocodilian", "motorbike": "motorcycle"}
    extra = {"mine": ["Crocodile", "motorbike"]}
    assert resolve_unseen_classes("mine", classes, extra, aliases=aliases) == ["crocodilian", "motorcycle"]
    # the other way round: the data has the QuickDraw words, the split the Extended names
    extra = {"mine": ["crocodilian"]}
    assert resolve_unseen_classes("mine", ["cat", "crocodile"], extra, aliases=aliases) == ["crocodile"]
    # positional use as before, and without aliases an alias stays unknown
    with pytest.raises(SbirError, match=r"split 'mine': unknown class\(es\) 'crocodilian'"):
        resolve_unseen_classes("mine", ["cat", "crocodile"], extra)
    with pytest.raises(SbirError, match=r"unknown class\(es\) 'unicorn'"):
        resolve_unseen_classes("mine", classes, {"mine": ["unicorn"]}, aliases=aliases)
    # QuickDraw declares the five renamed classes as its class_aliases (shard_dataset passes them on)
    split = split_file(tmp_path, "The Eiffel Tower", "hot air balloon")
    quickdraw = get_dataset("quickdraw")
    unseen = resolve_unseen_classes(str(split), ["cat", "eiffel tower", "hot-air_balloon"], quickdraw.extra_splits,
                                    aliases=quickdraw.class_aliases)
    assert unseen == ["eiffel tower", "hot-air_balloon"]
    assert get_dataset("sketchy").class_aliases == {}
