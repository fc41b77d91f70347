"""Figures a person looks at (matplotlib, no display needed): the retrieval grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sbir.utils.figures import new_figure, save_figure

CORRECT, WRONG = "#1a9641", "#d7191c"


@dataclass
class RetrievalRow:
    """One query sketch and its top-ranked photos (``correct[i]``: photo i has the sketch's class)."""

    sketch: Image.Image
    sketch_class: str
    photos: list[Image.Image]
    photo_classes: list[str]
    correct: list[bool]


def short_label(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def retrieval_grid(rows: list[RetrievalRow], path: Path, title: str = "") -> None:
    """A PNG grid: each row the query sketch (blue frame, its class above), a gap, then its ranked photos,
    each framed green when its class is the query's and red otherwise, its class above it."""
    columns = max((len(row.photos) for row in rows), default=0)
    cell = 1.35
    figure = new_figure(cell * (columns + 1.3), cell * 1.22 * len(rows) + 1.0)
    axes = figure.subplots(len(rows), columns + 2, squeeze=False,
                           gridspec_kw={"width_ratios": [1, 0.3] + [1] * columns})

    def show(ax, image: Image.Image, caption: str, colour: str, bold: bool = False) -> None:
        ax.imshow(image.convert("RGB"))
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3.5)
        ax.set_title(caption, fontsize=7.5, color=colour if colour != CORRECT else "black", pad=3,
                     fontweight="bold" if bold else "normal")

    for r, row in enumerate(rows):
        show(axes[r][0], row.sketch, short_label(row.sketch_class), "#2b83ba", bold=True)
        axes[r][1].axis("off")
        for c in range(columns):
            ax = axes[r][c + 2]
            if c < len(row.photos):
                show(ax, row.photos[c], short_label(row.photo_classes[c]), CORRECT if row.correct[c] else WRONG)
            else:
                ax.axis("off")
    if rows:
        axes[0][0].annotate("query", xy=(0.5, 1.32), xycoords="axes fraction", ha="center", fontsize=9)
        for c in range(columns):
            axes[0][c + 2].annotate(f"#{c + 1}", xy=(0.5, 1.32), xycoords="axes fraction", ha="center", fontsize=9)
    height = figure.get_figheight()
    legend = "frames: green = the query's class, red = another class"
    figure.suptitle(f"{title}\n{legend}" if title else legend, fontsize=9.5, y=1 - 0.08 / height, va="top")
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 1.0 / height,
                           wspace=0.08, hspace=0.38)
    save_figure(figure, path, dpi=110)
