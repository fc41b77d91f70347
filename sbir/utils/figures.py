"""Figures drawn without a display and without touching matplotlib's global state: every figure is a
``Figure`` on its own ``FigureCanvasAgg`` (never ``matplotlib.use`` or pyplot), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sbir.utils.atomic import atomic_file


def new_figure(width: float, height: float):
    """A ``width`` x ``height`` inch figure with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def figure_array(figure) -> np.ndarray:
    """uint8 ``[H, W, 3]`` rendering of a figure (at its own dpi)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure, path: Path, dpi: int = 100, metadata: dict | None = None) -> None:
    """Write ``figure`` as a PNG through a temporary file and one rename (``metadata``: PNG text chunks)."""
    with atomic_file(Path(path)) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png", metadata=metadata)


def figure_png(figure, dpi: int = 100) -> bytes:
    """The PNG bytes of ``figure`` (what :func:`save_figure` would write, kept in memory)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()
