"""No command deletes or overwrites what it did not write: every output is checked before anything is
touched (:mod:`sbir.utils.atomic`), a killed run's temporaries never look complete and are cleaned by the next
run, and file-system refusals are one-line errors."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sbir.cli.main import main as sbir_main
from sbir.cli.prep import main as prep_main
from sbir.utils.atomic import INCOMPLETE
from tests.helpers import invoke, make_sketchy, one_line_error


def run(main, *args) -> object:
    return invoke(main, *args)


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (hidden ones too) with the sha256 of its bytes."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def raw(tmp_path) -> Path:
    root = make_sketchy(tmp_path / "Sketchy")
    (tmp_path / "unseen.txt").write_text("door\n")
    return root


def shard(raw: Path, out: Path):
    return run(prep_main, "shard", "--dataset", "sketchy", "--raw", raw, "--out", out,
               "--split", raw.parent / "unseen.txt", "--workers", "1", "--val-fraction", "0")


# ----------------------------------------------------------------------------------- sbir-prep shard
@pytest.mark.parametrize("where, message", [
    ("raw", "is the input"),          # --out DATA --raw DATA: used to delete the raw dataset
    ("parent", "contains the input"),  # --out a parent of --raw
    ("inside", "lies inside the input"),  # --out inside the raw dataset: read back as input next time
])
def test_shard_refuses_an_out_that_overlaps_the_raw_data(raw, where, message):
    out = {"raw": raw, "parent": raw.parent, "inside": raw / "shards"}[where]
    before = snapshot(raw.parent)
    assert len(before) == 7  # 6 images + the split file
    one_line_error(shard(raw, out), str(out), message)
    assert snapshot(raw.parent) == before


def test_shard_refuses_a_folder_of_the_users_files(raw, tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("three years of work")
    one_line_error(shard(raw, thesis), str(thesis), "not an output of this command")
    assert snapshot(thesis) == {"chapter1.tex": hashlib.sha256(b"three years of work").hexdigest()}


def test_shard_refuses_a_regular_file(raw, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    one_line_error(shard(raw, target), str(target), "is a file")
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Sketchy", "notes.txt", "unseen.txt"]  # no .old-<pid>


def test_shard_replaces_its_own_output_and_an_empty_folder(raw, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    assert shard(raw, out).exit_code == 0
    first = snapshot(out)
    assert "index.json" in first
    assert shard(raw, out).exit_code == 0
    assert snapshot(out) == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_read_only_file_system_is_one_line(raw, tmp_path, monkeypatch):
    real_mkdir = pathlib.Path.mkdir
    read_only = tmp_path / "ro"

    def mkdir(self, *args, **kwargs):
        if read_only in (self, *self.parents):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    one_line_error(shard(raw, read_only / "shards"), "shards", "Read-only file system")
    assert not read_only.exists()


# ------------------------------------------------------------------- every other command that writes
@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Real shards of a tiny Sketchy, a frozen model folder, and a sketch image."""
    root = tmp_path_factory.mktemp("made")
    raw = make_sketchy(root / "Sketchy")
    (root / "unseen.txt").write_text("door\n")
    assert shard(raw, root / "shards").exit_code == 0
    result = run(sbir_main, "train", "--shards", root / "shards", "--out", root / "model", "--method", "frozen",
                 "--log-dir", root / "log")
    assert result.exit_code == 0, result.output
    sketch = root / "sketch.png"
    image = Image.new("L", (64, 64), 255)
    image.paste(0, (10, 30, 54, 34))
    image.save(sketch)
    return {"raw": raw, "shards": root / "shards", "model": root / "model", "sketch": sketch}


def command(name: str, made: dict[str, Path], out: Path) -> tuple:
    """(cli, arguments) of a command writing to ``out``."""
    return {
        "download": (prep_main, ["download", "--dataset", "synthetic", "--out", out]),
        "train": (sbir_main, ["train", "--shards", made["shards"], "--out", out, "--method", "frozen"]),
        "train --log-dir": (sbir_main, ["train", "--shards", made["shards"], "--out", out.parent / "new-model",
                                        "--method", "frozen", "--log-dir", out]),
        "embed": (sbir_main, ["embed", "--shards", made["shards"], "--out", out, "--model", made["model"]]),
        "evaluate --plots": (sbir_main, ["evaluate", "--embeddings", out.parent / "emb", "--plots", out]),
        "index": (sbir_main, ["index", made["raw"], "--out", out, "--model", made["model"]]),
        "explain": (sbir_main, ["explain", "--sketch", made["sketch"], "--photo", made["sketch"], "--out", out,
                                "--model", made["model"]]),
    }[name]


COMMANDS = ["download", "train", "train --log-dir", "embed", "evaluate --plots", "index", "explain"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_a_foreign_folder(name, made, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "data.csv").write_text("1,2,3")
    cli, args = command(name, made, out)
    one_line_error(run(cli, *args), str(out), "not an output of this command")
    assert snapshot(out) == {"data.csv": hashlib.sha256(b"1,2,3").hexdigest()}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_refuses_a_regular_file(name, made, tmp_path):
    out = tmp_path / "a-file"
    out.write_text("keep")
    cli, args = command(name, made, out)
    one_line_error(run(cli, *args), str(out), "is a file")
    assert out.read_text() == "keep"


@pytest.mark.parametrize("name, out_is", [("embed", "shards"), ("index", "raw"), ("embed", "model"),
                                          ("train", "shards")])
def test_commands_refuse_to_write_over_their_inputs(name, out_is, made):
    target = made[out_is]
    before = snapshot(target)
    cli, args = command(name, made, target)
    one_line_error(run(cli, *args), "is the input")
    assert snapshot(target) == before


def test_file_outputs_are_only_overwritten_when_the_command_wrote_them(made, tmp_path):
    picture = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8), "red").save(picture)
    before = picture.read_bytes()
    result = run(sbir_main, "search", "--sketch", made["sketch"], "--out", picture, "--model", made["model"])
    one_line_error(result, str(picture), "not written by this command")
    result = run(sbir_main, "search", "--sketch", made["sketch"], "--out", made["sketch"])  # the query itself
    one_line_error(result, "is the input")
    metrics = tmp_path / "results.json"
    metrics.write_text(json.dumps({"my": "numbers"}))
    one_line_error(run(sbir_main, "evaluate", "--metrics", metrics, "--plots", tmp_path / "plots"),
                   str(metrics), "not written by this command")
    assert picture.read_bytes() == before and json.loads(metrics.read_text()) == {"my": "numbers"}


# ------------------------------------------------------------------------------ killed runs (SIGKILL)
def test_sigkilled_shard_leaves_nothing_that_looks_complete_and_the_next_run_cleans_up(sketchy_mini, tmp_path):
    out = tmp_path / "shards"
    args = [sys.executable, "-c", "from sbir.cli.prep import main; main()", "shard", "--dataset", "sketchy",
            "--raw", str(sketchy_mini), "--out", str(out), "--split", "sketchy21", "--workers", "1"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    temporaries: list[Path] = []
    while time.monotonic() < deadline and not any(temporaries):
        temporaries = [p for p in tmp_path.glob(".shards.tmp-*") if any(p.glob("*/*.tar"))]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(temporaries) == 1, "the run ended before a shard was written"
    assert not out.exists()  # nothing where a later stage would look
    assert (temporaries[0] / INCOMPLETE).is_file() and not (temporaries[0] / "index.json").exists()
    result = subprocess.run([*args[:-2], "--workers", "2", "--max-per-class", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "index.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
