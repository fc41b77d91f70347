"""Drawing explanations (:mod:`sbir.explain.correspondence`): match lines, heat maps and the synthesis of one
pair (:func:`pair_figure`), one row per query (:func:`overview_figure`); matplotlib, no display needed."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sbir.explain.correspondence import Explanation
from sbir.retrieval.figures import CORRECT, WRONG, short_label
from sbir.utils.atomic import atomic_file
from sbir.utils.figures import new_figure

#: lines drawn between matched patches: low to high weight, dark enough to show on white sketches
LINE_COLOURS = "plasma"


LINE_RANGE = (0.0, 0.85)


HEAT_COLOURS = "inferno"


FOCUS = "#00c8ff"


# ----------------------------------------------------------------------------------------------- drawing
@dataclass
class PairCaption:
    """What is known about a pair beyond the model: a caption and, when the classes are known, whether the
    photo has the sketch's class (colours the caption and frame)."""

    text: str = ""
    correct: bool | None = None

    @property
    def colour(self) -> str:
        return "black" if self.correct is None else (CORRECT if self.correct else WRONG)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax, colour: str, width: float = 2.5) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def _cell_centre(cell: int, grid: tuple[int, int], size: int) -> tuple[float, float]:
    h, w = grid
    row, column = divmod(cell, w)
    return (column + 0.5) * size / w, (row + 0.5) * size / h


def _cell_name(cell: int, grid: tuple[int, int]) -> str:
    return "({}, {})".format(*divmod(cell, grid[1]))


def _grid_lines(ax, grid: tuple[int, int], size: int, x0: float = 0.0) -> None:
    h, w = grid
    ax.vlines([x0 + size * k / w for k in range(1, w)], 0, size, colors="grey", linewidth=0.3, alpha=0.45)
    ax.hlines([size * k / h for k in range(1, h)], x0, x0 + size, colors="grey", linewidth=0.3, alpha=0.45)


def _colour_bar(figure, ax, mappable, label: str = "") -> None:
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bar_ax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.04)
    bar = figure.colorbar(mappable, cax=bar_ax)
    bar.ax.tick_params(labelsize=6, length=2, pad=1)
    if label:
        bar.set_label(label, fontsize=6.5, labelpad=2)


def draw_matches(figure, ax, explanation: Explanation, colour_bar: bool = True):
    """Sketch and photo side by side on ``ax``, a line between the patches of each of the strongest matches
    (coloured and widened by weight, strongest drawn last). Returns the ``LineCollection``: its segments run
    from sketch to photo cell centres in the order of ``explanation.matches`` reversed (weakest first)."""
    import matplotlib.patheffects as effects
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap, Normalize

    sketch, photo, found = explanation.sketch, explanation.photo, explanation.correspondence
    size = sketch.shape[0]
    gap = max(4, size // 12)
    ax.imshow(np.concatenate([sketch, np.full((size, gap, 3), 255, np.uint8), photo], axis=1))
    _grid_lines(ax, found.grid, size)
    _grid_lines(ax, found.grid, size, size + gap)
    matches = explanation.matches[::-1]
    weights = np.array([m.weight for m in matches])
    colours = ListedColormap(colormaps[LINE_COLOURS](np.linspace(*LINE_RANGE, 256)))
    norm = Normalize(float(weights.min()) if len(weights) else 0.0, float(weights.max()) if len(weights) else 1.0)
    segments = []
    for match in matches:
        x0, y0 = _cell_centre(match.sketch_cell, found.grid, size)
        x1, y1 = _cell_centre(match.photo_cell, found.grid, size)
        segments.append([(x0, y0), (x1 + size + gap, y1)])
    shade = norm(weights) if len(weights) and norm.vmax > norm.vmin else np.ones(len(weights))
    lines = LineCollection(segments, cmap=colours, norm=norm, linewidths=0.8 + 1.8 * np.asarray(shade))
    lines.set_array(weights)
    lines.set_path_effects([effects.Stroke(linewidth=3.2, foreground="white", alpha=0.7), effects.Normal()])
    ax.add_collection(lines)
    if segments:
        ends = np.array(segments).reshape(-1, 2)
        ax.scatter(ends[:, 0], ends[:, 1], c=np.repeat(weights, 2), cmap=colours, norm=norm, s=9,
                   edgecolors="white", linewidths=0.5, zorder=3)
    ax.set_xlim(-0.5, 2 * size + gap - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    _bare(ax)
    if colour_bar:
        _colour_bar(figure, ax, lines, found.weight_label)
    return lines


def _heat(figure, ax, image: np.ndarray, values: np.ndarray, grid: tuple[int, int], title: str,
          label: str = "") -> None:
    size = image.shape[0]
    grey = np.asarray(Image.fromarray(image).convert("L"))
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
    heat = ax.imshow(np.asarray(values, dtype=np.float64).reshape(grid), cmap=HEAT_COLOURS, alpha=0.6,
                     extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest")
    _bare(ax)
    ax.set_title(title, fontsize=7.5, pad=3)
    _colour_bar(figure, ax, heat, label)


def _box(ax, cell: int, grid: tuple[int, int], size: int) -> None:
    from matplotlib.patches import Rectangle

    h, w = grid
    row, column = divmod(cell, w)
    ax.add_patch(Rectangle((column * size / w - 0.5, row * size / h - 0.5), size / w, size / h, fill=False,
                           edgecolor=FOCUS, linewidth=1.8))


def _draw_synthesis(ax, explanation: Explanation, title: str = "synthesis") -> None:
    ax.imshow(explanation.synthesis)
    _bare(ax)
    ax.set_title(title, fontsize=7.5, pad=3)


def draw_pair_row(figure, axes: Sequence, explanation: Explanation, caption: PairCaption | None = None) -> None:
    """One row of five panels: matches, synthesis, sketch heat map (strongest weight per patch, focus
    patch boxed), photo heat map of the focus patch's weights, photo heat map of the weight received."""
    caption = caption or PairCaption()
    found, grid, size = explanation.correspondence, explanation.correspondence.grid, explanation.sketch.shape[0]
    matches_ax, synthesis_ax, sketch_ax, focus_ax, received_ax = axes
    draw_matches(figure, matches_ax, explanation)
    title = f"{caption.text} · " if caption.text else ""
    matches_ax.set_title(f"{title}top {len(explanation.matches)} matches ({found.source})", fontsize=7.5, pad=3,
                         color=caption.colour)
    if caption.correct is not None:
        _frame(matches_ax, caption.colour)
    _draw_synthesis(synthesis_ax, explanation, "synthesis (best photo patches)")
    _heat(figure, sketch_ax, explanation.sketch, found.weights.max(axis=1), grid, "sketch: strongest match",
          f"{found.weight_label}, max over photo patches")
    _box(sketch_ax, explanation.focus, grid, size)
    _heat(figure, focus_ax, explanation.photo, found.weights[explanation.focus], grid,
          f"photo: matches of sketch patch {_cell_name(explanation.focus, grid)}", found.weight_label)
    _heat(figure, received_ax, explanation.photo, found.received(), grid, "photo: received from the sketch",
          found.received_label)


def pair_figure(explanations: Sequence[Explanation], captions: Sequence[PairCaption] | None = None,
                title: str = ""):
    """A figure with one :func:`draw_pair_row` per explanation (e.g. the photos retrieved for one sketch)."""
    captions = list(captions or [PairCaption() for _ in explanations])
    rows = len(explanations)
    figure = new_figure(15.5, 2.3 * rows + 0.65)
    grid = figure.add_gridspec(rows, 5, width_ratios=[2.2, 1, 1, 1, 1], left=0.01, right=0.97, bottom=0.01,
                               top=1 - 0.62 / figure.get_figheight(), wspace=0.32, hspace=0.22)
    for row, (explanation, caption) in enumerate(zip(explanations, captions)):
        draw_pair_row(figure, [figure.add_subplot(grid[row, c]) for c in range(5)], explanation, caption)
    if explanations:
        detail = explanations[0].correspondence.detail
        figure.suptitle(f"{title}\n{detail}; synthesis: cosine of patch tokens" if title else detail,
                        fontsize=9.5, y=1 - 0.08 / figure.get_figheight(), va="top")
    return figure


@dataclass
class OverviewRow:
    """One query of the overview: its sketch's class and the explanations of its retrieved photos."""

    label: str
    explanations: list[Explanation]
    captions: list[PairCaption] = field(default_factory=list)


def overview_figure(rows: Sequence[OverviewRow], title: str = ""):
    """A grid to scan in seconds: one row per query, for each retrieved photo its matches panel (framed green
    when the photo has the sketch's class, red otherwise) and its synthesis."""
    columns = max((len(row.explanations) for row in rows), default=0)
    width = max(6.0, 4.4 * columns)
    legend = ("lines: the strongest patch matches (darker = weaker); synthesis: each sketch patch replaced by its "
              "most similar photo patch; frames: green = the query's class, red = another")
    detail = rows[0].explanations[0].correspondence.detail if rows and rows[0].explanations else ""
    heading = "\n".join(textwrap.fill(part, int(width * 14)) for part in (title, detail, legend) if part)
    header = 0.2 + 0.17 * (heading.count("\n") + 1)  # inches of 9-point lines
    figure = new_figure(width, 1.62 * len(rows) + header)
    grid = figure.add_gridspec(len(rows), 2 * columns, width_ratios=[2.2, 1] * columns, left=0.025, right=0.99,
                               bottom=0.01, top=1 - header / figure.get_figheight(), wspace=0.1, hspace=0.3)
    for r, row in enumerate(rows):
        captions = row.captions or [PairCaption() for _ in row.explanations]
        for c, (explanation, caption) in enumerate(zip(row.explanations, captions)):
            matches_ax, synthesis_ax = figure.add_subplot(grid[r, 2 * c]), figure.add_subplot(grid[r, 2 * c + 1])
            draw_matches(figure, matches_ax, explanation, colour_bar=False)
            matches_ax.set_title(caption.text, fontsize=7.5, pad=3, color=caption.colour)
            _frame(matches_ax, caption.colour if caption.correct is not None else "grey")
            _draw_synthesis(synthesis_ax, explanation)
            if c == 0:
                matches_ax.set_ylabel(short_label(row.label, 18), fontsize=8)
    figure.suptitle(heading, fontsize=9, y=1 - 0.06 / figure.get_figheight(), va="top")
    return figure


def save_image(image: np.ndarray, path: Path) -> None:
    """Write a uint8 ``[H, W, 3]`` image as a PNG, atomically."""
    with atomic_file(Path(path)) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
