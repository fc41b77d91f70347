"""The shared training loop: sampling, determinism, resume after a kill, model selection, 2-process gloo."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from sbir.models.folder import load_weights
from sbir.train.checkpoint import load_checkpoint
from sbir.train.loop import TrainConfig, train
from sbir.train.sampling import PairSampler
from sbir_dvc.live import DVCLiveLogger
from tests.helpers import ROOT, Recorder, ToyModel, assert_same_tensors, toy_data


def test_sampler_pairs_are_right_and_deterministic():
    sketch_labels = np.array([0, 0, 1, 1, 2])
    photo_labels = np.array([0, 1, 1, 2, 2, 0])
    sampler = PairSampler(sketch_labels, photo_labels, seed=3)
    s, p, n = sampler.batch(5, 64)
    assert (photo_labels[p] == sketch_labels[s]).all()
    assert (photo_labels[n] != sketch_labels[s]).all()
    again = PairSampler(sketch_labels, photo_labels, seed=3).batch(5, 64)
    assert len(again) == 3 and all((a == b).all() for a, b in zip((s, p, n), again))
    assert not (PairSampler(sketch_labels, photo_labels, seed=4).batch(5, 64)[0] == s).all()


def test_fine_grained_sampler_uses_the_paired_photo():
    sampler = PairSampler([0, 0, 1], [0, 0, 1, 1], ["a", "b", "x"], ["b", "a", "y", "x"], fine_grained=True)
    s, p, n = sampler.batch(0, 50)
    expected = {0: 1, 1: 0, 2: 3}
    assert all(p[i] == expected[s[i]] for i in range(50))
    assert all(n[i] != p[i] for i in range(50))
    assert any(s[i] in (0, 1) for i in range(50))
    assert all(n[i] in (0, 1) for i in range(50) if s[i] in (0, 1))  # hard negative: same class


def test_training_lowers_loss_and_improves_val(tmp_path):
    model = ToyModel()
    config = TrainConfig(steps=60, batch_size=32, lr=1e-2, eval_every=20, checkpoint_every=20)
    from sbir.train.loop import validate

    before = validate(model, toy_data(1), torch.device("cpu"))["map_all"]
    first_loss = float(model(_batch(model))[0].detach())
    summary = train(model, toy_data(0), toy_data(1), config, tmp_path, progress=False)
    assert summary["best_val_map_all"] > before + 0.05
    assert summary["last_loss"] < first_loss
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = load_weights(tmp_path / "model.safetensors", ToyModel())
    assert validate(reloaded, toy_data(1), torch.device("cpu"))["map_all"] == pytest.approx(summary["best_val_map_all"])


def test_training_runs_with_deterministic_algorithms_on_cpu(tmp_path):
    from sbir.train.loop import deterministic_on_cpu

    model, seen = ToyModel(), []
    forward = model.forward

    def watched_forward(batch):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return forward(batch)

    model.forward = watched_forward
    assert not torch.are_deterministic_algorithms_enabled()
    train(model, toy_data(0), None, TrainConfig(steps=3, batch_size=8), tmp_path, progress=False)
    assert seen == [True, True, True]
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    with pytest.raises(RuntimeError), deterministic_on_cpu(torch.device("cpu")):
        raise RuntimeError("restored on errors too")
    assert not torch.are_deterministic_algorithms_enabled()


def _batch(model):
    data = toy_data(0)
    idx = np.arange(32)
    return {"sketch": data.fetch("sketch", idx), "positive": data.fetch("photo", idx),
            "negative": data.fetch("photo", (idx + 20) % 80)}


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    config = TrainConfig(steps=40, batch_size=16, lr=1e-2, eval_every=10, checkpoint_every=10)
    straight = ToyModel()
    train(straight, toy_data(0), toy_data(1), config, tmp_path / "a", callbacks=[DVCLiveLogger(tmp_path / "a-log")],
          progress=False)

    class Killed(Exception):
        pass

    killed_run, resumed_run = Recorder(), Recorder()
    interrupted = ToyModel()
    calls = {"n": 0}
    original = interrupted.forward

    def dying_forward(batch):
        calls["n"] += 1
        if calls["n"] == 26:  # after the checkpoint at step 20, before the one at 30
            raise Killed
        return original(batch)

    interrupted.forward = dying_forward
    with pytest.raises(Killed):
        train(interrupted, toy_data(0), toy_data(1), config, tmp_path / "b",
              callbacks=[DVCLiveLogger(tmp_path / "b-log"), killed_run], progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 20
    killed_log = (tmp_path / "b-log" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert killed_log[0] == "step\tloss" and killed_log[-1].startswith("25\t")  # steps 21-25: logged, lost
    resumed = ToyModel()  # a fresh process: new model, state from the checkpoint
    train(resumed, toy_data(0), toy_data(1), config, tmp_path / "b",
          callbacks=[DVCLiveLogger(tmp_path / "b-log"), resumed_run], progress=False)
    assert_same_tensors(straight.state_dict(), resumed.state_dict())
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    # the curves of the resumed run are those of the uninterrupted one: one row per step trained (1-40, the
    # x axis of best_step and the checkpoints), the steps trained twice logged once
    for curve in ("train/loss.tsv", "val/map_all.tsv"):
        straight_rows = (tmp_path / "a-log" / "plots" / "metrics" / curve).read_text().splitlines()
        assert (tmp_path / "b-log" / "plots" / "metrics" / curve).read_text().splitlines() == straight_rows
    steps = [int(row.split("\t")[0]) for row in
             (tmp_path / "a-log" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 41))
    val_steps = [row.split("\t")[0] for row in
                 (tmp_path / "a-log" / "plots" / "metrics" / "val" / "map_all.tsv").read_text().splitlines()[1:]]
    assert val_steps == ["10", "20", "30", "40"]
    # what the callbacks saw: the killed run from 0, the resumed one from the checkpoint's step 20
    assert killed_run.events[0] == ("start", 0, False) and killed_run.steps() == list(range(1, 26))
    assert [e for e in killed_run.events if e[0] == "end"] == []
    assert resumed_run.events[0] == ("start", 20, True) and resumed_run.steps() == list(range(21, 41))
    assert resumed_run.val_steps() == [30, 40] and resumed_run.events[-1][0] == "end"
    assert list(resumed_run.metrics[-1]) == ["train/loss", "train/triplet", "val/map_all"]  # in this order


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path / "evil.pt")


SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.helpers import Recorder, ToyModel, toy_data
from sbir.train.loop import TrainConfig, train
recorder = Recorder()
summary = train(ToyModel(), toy_data(0), toy_data(1), TrainConfig(steps=6, batch_size=8, eval_every=3,
                checkpoint_every=3), {out!r}, callbacks=[recorder], progress=False)
rank = torch.distributed.get_rank()
print(f"rank {{rank}} of {{torch.distributed.get_world_size()}} steps {{summary['steps']}} "
      f"reports {{len(recorder.events)}}")
torch.distributed.destroy_process_group()
"""


def test_two_process_gloo_training(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT.format(root=str(ROOT), out=str(tmp_path / "out")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--rdzv-endpoint=127.0.0.1:0", "--rdzv-backend=c10d",
                             str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # both ranks train every step; only rank 0 reports (start, 6 steps, end)
    assert "rank 0 of 2 steps 6 reports 8" in result.stdout and "rank 1 of 2 steps 6 reports 0" in result.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path, capsys):
    config = TrainConfig(steps=10, batch_size=8, lr=1e-2, eval_every=5, checkpoint_every=5)
    train(ToyModel(), toy_data(0), None, config, tmp_path, progress=False)
    other = TrainConfig(steps=10, batch_size=8, lr=5e-3, eval_every=5, checkpoint_every=5)
    fresh = ToyModel()
    train(fresh, toy_data(0), None, other, tmp_path, progress=False)
    assert "not resumed" in capsys.readouterr().err
    reference = ToyModel()
    train(reference, toy_data(0), None, other, tmp_path / "ref", progress=False)
    assert_same_tensors(fresh.state_dict(), reference.state_dict())


def test_a_finished_run_is_trained_afresh_not_resumed(tmp_path, capsys):
    """DVC keeps ``last.pt`` (persistent output) and re-runs the stage after a code change: the finished
    checkpoint must not turn the new run into a no-op that keeps the old weights."""
    config = TrainConfig(steps=10, batch_size=8, lr=1e-2, eval_every=5, checkpoint_every=5)
    train(ToyModel(), toy_data(0), toy_data(1), config, tmp_path, progress=False)
    summary = train(ToyModel(), toy_data(0), toy_data(1), config, tmp_path, progress=False)
    assert "a finished run (10 steps), not resumed" in capsys.readouterr().err
    assert math.isfinite(summary["last_loss"]) and summary["best_val_map_all"] is not None
    extended = train(ToyModel(), toy_data(0), toy_data(1), TrainConfig(**{**asdict(config), "steps": 15}), tmp_path,
                     progress=False)
    assert "not resumed" not in capsys.readouterr().err and extended["steps"] == 15
