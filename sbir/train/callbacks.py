"""How training reports: callbacks, not a logger.

:func:`sbir.train.loop.train` calls every :class:`TrainCallback` it is given, on rank 0 only. The library
ships none that writes anywhere; the ``sbir train`` command and the ``train`` stage plug DVCLive in through
:class:`sbir_dvc.live.DVCLiveLogger`, and a notebook can pass its own (e.g. one that appends to a list).
"""

from __future__ import annotations


class TrainCallback:
    """What the training loop reports; every hook does nothing here: override what you need."""

    def on_start(self, step: int, resumed: bool) -> None:
        """Before the first step. ``step``: steps already trained (0, or the step of the checkpoint a killed
        run is resumed from); ``resumed``: whether it is such a resumption."""

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """After step ``step`` (steps trained so far: the x axis of ``best_step`` and the checkpoints), once
        per step: ``train/loss``, ``train/<term>`` for each loss term, then ``val/map_all`` when the
        seen-class validation ran at this step."""

    def on_end(self, summary: dict) -> None:
        """After the last step, with the summary :func:`sbir.train.loop.train` returns."""
