"""Atomic outputs (sbir.utils.atomic): a folder is written under a temporary name marked incomplete and renamed
into place; the temporaries of dead runs (and only those) are removed by the next run, and a run killed between
the two renames gets its previous output back."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sbir.errors import SbirError
from sbir.utils.atomic import INCOMPLETE, atomic_dir, atomic_file, atomic_write_text, check_output, clean_stale


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_dead_runs_are_removed_and_only_those(tmp_path):
    out = tmp_path / "shards"
    pid = dead_pid()
    stale = tmp_path / f".shards.tmp-{pid}"
    stale.mkdir()
    (stale / INCOMPLETE).write_text(f"{pid}\n")
    (stale / "index.json").write_text("{}")
    foreign = tmp_path / f".shards.tmp-{pid + 1000000}"  # no such pid, but not ours: no INCOMPLETE file
    foreign.mkdir()
    (foreign / "x").write_text("y")
    assert clean_stale(out) == [stale]
    assert not stale.exists() and foreign.is_dir()


def test_a_run_killed_between_the_two_renames_gets_its_previous_output_back(tmp_path):
    out = tmp_path / "emb"
    old = tmp_path / f".emb.old-{dead_pid()}"
    old.mkdir()
    (old / "info.json").write_text("{}")
    clean_stale(out)
    assert (out / "info.json").is_file() and not old.exists()


def test_atomic_dir_checks_before_it_touches_anything(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, "info.json") as tmp:
        assert (tmp / INCOMPLETE).is_file()
        (tmp / "info.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["info.json"]
    with pytest.raises(SbirError, match="lies inside the input"):
        check_output(out / "x", "info.json", [out])


def test_atomic_file_replaces_on_success_and_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "eval.json"
    atomic_write_text(path, "first")
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["eval.json"]
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".json" and tmp != path
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "first" and sorted(p.name for p in path.parent.iterdir()) == ["eval.json"]
