"""DVCLive, plugged into the library's training loop by the app (the ``train`` stage and ``sbir train``): the one
module that imports dvclive, kept out of the library (``sbir/``), which reports training through callbacks only
(:class:`sbir.train.callbacks.TrainCallback`).

:class:`DVCLiveLogger` writes DVCLive's ``metrics.json`` and ``plots/metrics/**.tsv`` (x = steps trained), and a
resumed run first drops the rows its killed predecessor logged after the checkpoint, so its curves equal an
uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sbir.train.callbacks import TrainCallback
from sbir.utils.atomic import atomic_write_text, check_output


def is_training_log(folder: Path) -> bool:
    """metrics.json or plots/ of DVCLive's training log"""
    return (folder / "metrics.json").is_file() or (folder / "plots").is_dir()


class DVCLiveLogger(TrainCallback):
    """Log a training run into the DVCLive folder ``folder``.

    ``folder`` is checked first (:func:`sbir.utils.atomic.check_output`): it may only be an earlier training
    log or a new or empty folder, and none of ``inputs``.
    """

    def __init__(self, folder: Path, inputs: Sequence[Path | None] = ()):
        self.folder = check_output(folder, is_training_log, inputs)
        self.live = None

    def on_start(self, step: int, resumed: bool) -> None:
        from dvclive import Live

        if resumed:
            forget_logged_after(self.folder, step)
        self.live = Live(str(self.folder), resume=resumed, save_dvc_exp=False, dvcyaml=None)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.live.step = step
        for name, value in metrics.items():
            self.live.log_metric(name, value)
        self.live.next_step()

    def on_end(self, summary: dict) -> None:
        self.live.end()

    def nothing_trained(self) -> None:
        """The outputs for a method that trains nothing (one point: 0 steps trained), so that the metrics and
        plots a pipeline declares exist."""
        from dvclive import Live

        with Live(str(self.folder), save_dvc_exp=False, dvcyaml=None) as live:
            live.log_metric("steps_trained", 0)


def forget_logged_after(log_dir: Path, step: int) -> None:
    """Drop the rows of DVCLive's metric histories (``plots/metrics/**.tsv``) logged after ``step``.

    A run killed between two checkpoints has logged steps that its resumed run trains (and logs) again;
    without this, each such step would have two rows and the curves would double back. Each file is
    rewritten atomically.
    """
    for history in sorted((log_dir / "plots" / "metrics").rglob("*.tsv")):
        lines = history.read_text(encoding="utf-8").splitlines(keepends=True)
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        column = header.rstrip("\n").split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[column]) <= step]
        if len(kept) != len(rows):
            atomic_write_text(history, header + "".join(kept))
