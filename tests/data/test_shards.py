"""Sharding real data (../shared/data) and generated fixtures: counts, splits, pairing, determinism,
bad inputs and atomic writes."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from sbir.data.datasets import get_dataset
from sbir.data.datasets.sketchy import AUGMENTATION as AUG
from sbir.data.images import decode
from sbir.data.shards import build as sharding
from sbir.data.shards.build import shard_dataset, verify_sharded
from sbir.data.shards.reader import iter_tar_samples, read_index
from sbir.data.splits import normalise_class_name, standard_split
from sbir.errors import SbirError
from sbir.utils.hashing import file_digest
from tests.helpers import make_sketchy


def read_all(out: Path) -> dict[tuple[str, str], list[dict]]:
    """Every sample of a sharded folder, by (part, modality), with decoded metadata."""
    samples = defaultdict(list)
    index = read_index(out)
    for rel in index["shards"]:
        part, modality = rel.split("/")[0], rel.split("/")[1].split("-")[0]
        for sample in iter_tar_samples(out / rel):
            sample["meta"] = json.loads(sample["json"])
            samples[part, modality].append(sample)
    return samples


def folder_counts(folder: Path) -> Counter:
    return Counter({d.name: len(list(d.iterdir())) for d in folder.iterdir() if d.is_dir()})


@pytest.fixture(scope="module", params=["sketchy21", "sketchy25"])
def sketchy_sharded(request, sketchy_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "shards"
    index = shard_dataset(get_dataset("sketchy"), sketchy_mini, out, request.param, shard_size=300,
                          progress=False)
    return request.param, out, index


def test_sketchy_counts_classes_and_pairing(sketchy_sharded, sketchy_mini):
    split, out, index = sketchy_sharded
    photos = folder_counts(sketchy_mini / "256x256" / "photo" / AUG)
    sketches = folder_counts(sketchy_mini / "256x256" / "sketch" / AUG)
    unseen = sorted(standard_split(split))
    assert index["unseen_classes"] == unseen
    assert sorted(index["seen_classes"]) == sorted(set(photos) - set(unseen))
    assert len(index["classes"]) == 125
    samples = read_all(out)
    for modality, expected in (("photo", photos), ("sketch", sketches)):
        got = Counter(s["meta"]["class"] for p in ("train", "val", "test") for s in samples[p, modality])
        assert got == expected
        test_classes = {s["meta"]["class"] for s in samples["test", modality]}
        assert test_classes == set(unseen)
        seen_side = {s["meta"]["class"] for p in ("train", "val") for s in samples[p, modality]}
        assert not seen_side & set(unseen)
    assert index["totals"]["test"]["sketch"] == sum(sketches[c] for c in unseen)
    assert index["totals"]["test"]["photo"] == sum(photos[c] for c in unseen)
    assert index["skipped"] == []
    # fine-grained pairing: each sketch's instance is its own photo, in the same part
    for part in ("train", "val", "test"):
        assert samples[part, "sketch"], part
        photo_instances = {s["meta"]["instance"]: s for s in samples[part, "photo"]}
        for sketch in samples[part, "sketch"]:
            source = Path(sketch["meta"]["source"])
            photo_id = source.stem.rsplit("-", 1)[0]
            assert sketch["meta"]["instance"] == f"{sketch['meta']['class']}/{photo_id}"
            photo = photo_instances[sketch["meta"]["instance"]]
            assert Path(photo["meta"]["source"]).stem == photo_id
            assert (sketchy_mini / source).is_file()
    # class index and keys
    for group in samples.values():
        for sample in group:
            assert index["classes"][int(sample["cls"])] == sample["meta"]["class"]
            assert "." not in sample["__key__"]
    assert len({s["__key__"] for g in samples.values() for s in g}) == sum(map(len, samples.values()))


def test_sketchy_shards_are_mixed_and_verified(sketchy_sharded):
    _, out, index = sketchy_sharded
    big = [rel for rel in index["shards"] if index["shards"][rel]["samples"] > 20]
    assert big
    for rel in big:
        classes = {json.loads(s["json"])["class"] for s in iter_tar_samples(out / rel)}
        assert len(classes) > 1, f"{rel} holds a single class"
    problems, table = verify_sharded(out, progress=False)
    assert problems == []
    assert "train" in table and "photo" in table


def test_val_is_a_seen_class_instance_holdout(sketchy_sharded):
    _, out, index = sketchy_sharded
    samples = read_all(out)
    val_instances = {s["meta"]["instance"] for m in ("sketch", "photo") for s in samples["val", m]}
    train_instances = {s["meta"]["instance"] for m in ("sketch", "photo") for s in samples["train", m]}
    assert val_instances and not val_instances & train_instances
    assert {s["meta"]["class"] for s in samples["val", "photo"]} <= set(index["seen_classes"])


def test_determinism_byte_for_byte_across_runs_and_workers(sketchy_mini, tmp_path):
    outs = []
    for run, workers in enumerate((1, 2)):
        out = tmp_path / f"run{run}"
        shard_dataset(get_dataset("sketchy"), sketchy_mini, out, "sketchy21", shard_size=250,
                      max_per_class=4, workers=workers, progress=False)
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert len(files) > 5
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for rel in files:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    other = tmp_path / "other-seed"
    shard_dataset(get_dataset("sketchy"), sketchy_mini, other, "sketchy21", shard_size=250, max_per_class=4,
                  seed=1, progress=False)
    assert (other / "train/photo-000000.tar").read_bytes() != (outs[0] / "train/photo-000000.tar").read_bytes()


def test_quickdraw_ndjson_rasterised_with_extended_names(quickdraw_mini, tmp_path):
    out = tmp_path / "qd"
    index = shard_dataset(get_dataset("quickdraw"), quickdraw_mini, out, "quickdraw30", image_size=64,
                          shard_size=500, progress=False)
    ndjson = sorted((quickdraw_mini / "full" / "simplified").glob("*.ndjson"))
    assert len(index["classes"]) == len(ndjson) == 344
    for name in ("crocodilian", "eiffel tower", "hot-air_balloon", "motorcycle", "teddy_bear"):
        assert name in index["classes"]
    assert "motorbike" not in index["classes"]
    wanted = {normalise_class_name(c) for c in standard_split("quickdraw30")}
    assert {normalise_class_name(c) for c in index["unseen_classes"]} == wanted
    lines = {p.stem: sum(1 for line in p.open() if line.strip()) for p in ndjson}
    counts = Counter()
    for part in ("train", "val", "test"):
        counts.update(index["counts"][part]["sketch"])
        assert index["counts"][part]["photo"] == {}
    from sbir.data.datasets.quickdraw import extended_name
    assert counts == Counter({extended_name(k): v for k, v in lines.items()})
    sample = next(iter_tar_samples(out / "test" / "sketch-000000.tar"))
    image = decode(sample["png"])
    assert image.size == (64, 64) and image.mode == "L"
    assert 0 < int((np.asarray(image) < 128).sum()) < 64 * 64 / 2


def test_tuberlin_with_a_user_split_file(tuberlin_mini, tmp_path):
    split_file = tmp_path / "unseen.txt"
    split_file.write_text("# my split\nant\nhourglass\n\nsnake\n")
    out = tmp_path / "tb"
    index = shard_dataset(get_dataset("tuberlin"), tuberlin_mini, out, str(split_file), image_size=128,
                          progress=False)
    expected = folder_counts(tuberlin_mini / "png")
    assert index["unseen_classes"] == ["ant", "hourglass", "snake"]
    assert index["counts"]["test"]["sketch"] == {c: expected[c] for c in ("ant", "hourglass", "snake")}
    seen_total = Counter(index["counts"]["train"]["sketch"]) + Counter(index["counts"]["val"]["sketch"])
    assert seen_total == Counter({c: n for c, n in expected.items() if c not in ("ant", "hourglass", "snake")})
    sample = next(iter_tar_samples(out / "train" / "sketch-000000.tar"))
    assert decode(sample["png"]).size == (128, 128)


# ----------------------------------------------------------------------------------------- bad inputs

def three_classes(root: Path) -> Path:
    """Three classes (one with a name to normalise) of 3 photos of 256 px, with 2 sketches each."""
    return make_sketchy(root, ("cat", "dog", "car_(sedan)"), photos=3, sketches=2, size=256)


def test_bad_and_odd_images_are_skipped_or_converted(tmp_path):
    from PIL import Image

    root = three_classes(tmp_path / "raw")
    photos = root / "256x256" / "photo" / AUG / "cat"
    sketches = root / "256x256" / "sketch" / AUG / "cat"
    good = (photos / "n00_0.jpg").read_bytes()
    (photos / "n00_9.jpg").write_bytes(good[: len(good) // 2])          # truncated
    (photos / "n00_8.jpg").write_bytes(b"")                              # zero bytes
    (photos / "n00_7.jpg").write_bytes(b"this is not an image at all")   # not an image
    (photos / "notes.txt").write_text("hello")                           # not an image file
    Image.new("CMYK", (300, 200), (0, 50, 100, 0)).save(photos / "n00_6.jpg")
    Image.new("I;16", (256, 256), 40000).save(photos / "n00_5.png")
    Image.new("P", (100, 120), 3).save(sketches / "n00_0-7.png")
    rgba = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (100, 100, 140, 140))
    rgba.save(sketches / "n00_0-8.png")
    out = tmp_path / "out"
    index = shard_dataset(get_dataset("sketchy"), root, out, _split_file(tmp_path, "dog"), max_bad=1.0,
                          progress=False)
    reasons = {s["source"].rsplit("/", 1)[1]: s["reason"] for s in index["skipped"]}
    assert "truncated" in reasons["n00_9.jpg"] or "corrupt" in reasons["n00_9.jpg"]
    assert "empty" in reasons["n00_8.jpg"]
    assert "not an image" in reasons["n00_7.jpg"]
    assert "not an image file" in reasons["notes.txt"]
    assert set(reasons) == {"n00_9.jpg", "n00_8.jpg", "n00_7.jpg", "notes.txt"}
    samples = {Path(s["meta"]["source"]).name: s for g in read_all(out).values() for s in g}
    for name in ("n00_6.jpg", "n00_5.png"):
        image = decode(samples[name]["jpg"])
        assert image.mode == "RGB" and image.size == (256, 256)
    assert np.asarray(decode(samples["n00_5.png"]["jpg"])).min() > 100  # 40000/65535 of white, not clipped
    transparent = decode(samples["n00_0-8.png"]["png"])
    assert transparent.getpixel((5, 5)) in (255, (255, 255, 255))        # transparent -> paper white
    assert transparent.getpixel((120, 120)) in (0, (0, 0, 0))
    assert decode(samples["n00_0-7.png"]["png"]).size == (256, 256)


def test_too_many_unreadable_images_fail_the_run(tmp_path):
    root = three_classes(tmp_path / "raw")
    for path in (root / "256x256" / "photo" / AUG / "cat").iterdir():
        path.write_bytes(b"")
    with pytest.raises(SbirError, match="unreadable"):
        shard_dataset(get_dataset("sketchy"), root, tmp_path / "out", _split_file(tmp_path, "dog"),
                      progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def _split_file(tmp_path: Path, *names: str) -> str:
    path = tmp_path / "split.txt"
    path.write_text("\n".join(names) + "\n")
    return str(path)


def test_user_errors_are_clear(tmp_path):
    root = three_classes(tmp_path / "raw")
    sketchy = get_dataset("sketchy")
    with pytest.raises(SbirError, match=r"split.txt: unknown class\(es\) 'unicorn'"):
        shard_dataset(sketchy, root, tmp_path / "o", _split_file(tmp_path, "dog", "unicorn"), progress=False)
    with pytest.raises(SbirError, match="does not exist"):
        shard_dataset(sketchy, tmp_path / "missing", tmp_path / "o", "sketchy21", progress=False)
    with pytest.raises(SbirError, match="not in the sketchy layout"):
        shard_dataset(sketchy, tmp_path, tmp_path / "o", "sketchy21", progress=False)
    with pytest.raises(SbirError, match="unknown split 'nope'"):
        shard_dataset(sketchy, root, tmp_path / "o", "nope", progress=False)
    with pytest.raises(SbirError, match="unknown dataset 'sketchi'"):
        get_dataset("sketchi")
    with pytest.raises(SbirError, match="every class is unseen"):
        shard_dataset(sketchy, root, tmp_path / "o", _split_file(tmp_path, "cat", "dog", "car (sedan)"),
                      progress=False)


def test_split_names_match_spelling_variants(tmp_path):
    root = three_classes(tmp_path / "raw")
    index = shard_dataset(get_dataset("sketchy"), root, tmp_path / "o", _split_file(tmp_path, "Car (Sedan)"),
                          progress=False)
    assert index["unseen_classes"] == ["car_(sedan)"]


def test_crash_leaves_previous_output_and_no_partial(tmp_path, monkeypatch):
    root = three_classes(tmp_path / "raw")
    out = tmp_path / "out"
    first = shard_dataset(get_dataset("sketchy"), root, out, _split_file(tmp_path, "dog"), progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) > 3  # index.json and the shards
    calls = {"n": 0}
    real = sharding.TarShardWriter.write_sample

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("power cut")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sharding.TarShardWriter, "write_sample", crash)
    with pytest.raises(RuntimeError):
        shard_dataset(get_dataset("sketchy"), root, out, _split_file(tmp_path, "cat"), workers=1, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert read_index(out)["unseen_classes"] == first["unseen_classes"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_verify_finds_tampering(tmp_path):
    root = three_classes(tmp_path / "raw")
    out = tmp_path / "out"
    shard_dataset(get_dataset("sketchy"), root, out, _split_file(tmp_path, "dog"), progress=False)
    assert verify_sharded(out, progress=False)[0] == []
    shard = out / "train" / "photo-000000.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "test" / "sketch-000000.tar").unlink()
    problems, _ = verify_sharded(out, progress=False)
    assert any("train/photo-000000.tar: sha256 mismatch" in p for p in problems)
    assert any("test/sketch-000000.tar: listed in index.json but missing" in p for p in problems)


@pytest.mark.parametrize("method", ["write", "write_sample"])
def test_tar_bytes_equal_webdataset_tarwriter(tmp_path, method):
    import io
    import tarfile

    import webdataset as wds

    from sbir.data.shards.writer import SHARD_MTIME, TAR_MODE, TAR_OWNER, TarShardWriter, sample_bytes

    samples = [(f"photo_cat_{i}", bytes(j % 251 for j in range(i, i + 700 + 37 * i)), "jpg", i, b'{"class":"cat"}')
               for i in range(5)]
    path = tmp_path / "photo-000000.tar"
    writer = TarShardWriter(path)
    for sample in samples:
        writer.write(sample_bytes(*sample)) if method == "write" else writer.write_sample(*sample)
    digest = writer.close()
    count = writer.count
    reference = io.BytesIO()
    writer = wds.TarWriter(reference, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE, mtime=SHARD_MTIME,
                           encoder=False)
    for key, image, ext, cls, meta in samples:
        writer.write({"__key__": key, ext: image, "cls": str(cls).encode(), "json": meta})
    writer.close()
    assert count == 5
    assert path.read_bytes() == reference.getvalue()
    assert digest == file_digest(path)
    with tarfile.open(path) as tar:
        assert tar.getnames()[:3] == ["photo_cat_0.cls", "photo_cat_0.jpg", "photo_cat_0.json"]


@pytest.mark.parametrize("name", ["a.jpg", "x" * 96 + ".png", "y" * 120 + ".json", "café_ü.cls"])
@pytest.mark.parametrize("size", [0, 1, 511, 512, 70_000])
def test_fast_tar_header_equals_tarfile(name, size):
    import tarfile

    from sbir.data.shards.writer import SHARD_MTIME, TAR_MODE, TAR_OWNER, tar_member

    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, SHARD_MTIME, TAR_MODE
    info.uname = info.gname = TAR_OWNER
    expected = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    data = bytes(size)
    assert tar_member(name, data) == expected + data + b"\0" * (-size % 512)
