"""``sbir embed`` and ``sbir train`` (heads on the feature cache, and the whole model) with ``--shards`` an
HTTP URL give what they give with the local folder; ``torchrun`` embedding (2 gloo processes) merges to the
single-process output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sbir.cli.main import main as sbir_main
from tests.helpers import ROOT, invoke

EMBED = ["--method", "frozen", "--backbone", "tf_efficientnet_lite0", "--weights", "package", "--workers", "0",
         "--threads", "1"]


def files(folder) -> dict[str, bytes]:
    found = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "info.json"}
    assert len(found) == 4, sorted(found)  # {sketch,photo}.{npy,json}
    return found


def test_embed_over_http_equals_the_local_folder(synthetic_shards, served, tmp_path):
    for where, out in ((str(synthetic_shards), tmp_path / "local"), (served, tmp_path / "remote")):
        result = invoke(sbir_main, "embed", "--shards", where, "--out", out, *EMBED)
        assert result.exit_code == 0, result.output
    assert files(tmp_path / "local") == files(tmp_path / "remote")


@pytest.mark.parametrize("mode", ["--head-only", "--full"])
def test_train_over_http_equals_the_local_folder(mode, synthetic_shards, served, tmp_path, monkeypatch):
    monkeypatch.setenv("SBIR_CACHE", str(tmp_path / "cache"))
    for name, where in (("local", str(synthetic_shards)), ("remote", served)):
        result = invoke(sbir_main, "train", "--shards", where, "--out", tmp_path / name, "--method", "linear", mode,
                        "--weights", "package", "--features", tmp_path / f"{name}-features", "--steps", "2",
                        "--batch-size", "2", "--eval-every", "2", "--log-dir", tmp_path / f"{name}-log",
                        "--workers", "0", "--device", "cpu")
        assert result.exit_code == 0, result.output
    local, remote = (tmp_path / n / "model.safetensors" for n in ("local", "remote"))
    assert local.stat().st_size > 0 and local.read_bytes() == remote.read_bytes()


def test_torchrun_embedding_merges_to_the_single_process_output(synthetic_shards, tmp_path):
    single = invoke(sbir_main, "embed", "--shards", str(synthetic_shards), "--out", tmp_path / "one", *EMBED)
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--rdzv-endpoint=127.0.0.1:0", "--rdzv-backend=c10d", "-m", "sbir.cli.main", "embed",
                             "--shards", str(synthetic_shards), "--out", str(tmp_path / "two"), *EMBED],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert files(tmp_path / "one") == files(tmp_path / "two")
