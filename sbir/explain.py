"""Explanations of a sketch-photo match: token correspondences and sketch-to-photo synthesis.

ZSE-SBIR's second goal is explainability (METHODS.md), but its authors released no code for it: what is
drawn here is designed from the paper's description. For a sketch and a photo, both at the model's input
size and cut into the model's patch grid (ViT-B/16 14x14, EfficientNet-Lite0 and ViT-B/32 7x7):

- **token correspondences** (:func:`correspondences`): a weight per (sketch patch, photo patch) pair.

  * ``zse``: the cross-attention weights of the SKETCH branch (sketch queries over photo keys), averaged
    over the heads, patch-to-patch block; the CLS row and column are left out of the drawing but kept in
    :attr:`Correspondence.attention`, whose rows (over CLS + photo patches) sum to 1. These are the
    weights the model really used (:meth:`sbir.models.zse.ZSESBIR.pair`, eval mode, before dropout).
  * methods without cross-attention (``frozen``, ``linear``, ``clip_prompt``): the raw cosine similarity
    (no softmax, no temperature) of the backbone's patch tokens, labelled ``"patch cosine"`` in every
    title and in ``index.json``. It explains what the frozen backbone matches, not the trained head
    (``linear`` heads act on the pooled feature only; ``clip_prompt``'s prompts are not applied).

  Drawn as lines between the ``n`` strongest pairs (:func:`top_matches`, coloured by weight, with a
  colour bar) and as heat maps: over the sketch, each patch's strongest weight; over the photo, where
  the focus sketch patch (the one of the strongest pair, or a chosen one) goes, and the weight each photo
  patch receives from the whole sketch (attention: the sum; cosine: the mean).

- **sketch-to-photo synthesis by universal patch replacement** (:func:`synthesise`): every sketch patch
  is replaced by the photo patch whose token has the highest cosine similarity with its own, pasted at
  the sketch patch's position — a photo-textured picture in the sketch's layout. The tokens compared are
  those the model compares: for ``zse`` its tokens before the cross-attention (:meth:`ZSESBIR.tokens`:
  the backbone's, through the learned head projection when ``head_only``), otherwise the backbone's patch
  tokens. Every output patch is a photo patch, pixel for pixel.

Deviation: with EViT token selection (``keep_rates``), a grid cell whose token was dropped has zero weight
and cannot be chosen as a photo patch; a dropped sketch cell gets the photo patch of zero similarity
(the first kept one). The default keeps every token.

:func:`explain_pair` bundles both for one pair, :func:`pair_figure` and :func:`overview_figure` draw
them (matplotlib figures, no display needed), :func:`explain_retrievals` explains the top retrieved
photos of seeded test queries into a folder (the ``explain`` stage).
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sbir.atomic import atomic_dir, check_output
from sbir.embed import Normalise, load_image, model_device
from sbir.embeddings import read_embeddings, read_info
from sbir.errors import SbirError
from sbir.evaluate import cosine_scores, load_images, pick_queries, top_k
from sbir.models.base import RetrievalModel
from sbir.plots import CORRECT, WRONG, _short
from sbir.shards import shard_paths

ImageLike = Image.Image | np.ndarray
"""A PIL image or a uint8 ``[H, W, 3]`` (or ``[H, W]``) array."""

CROSS_ATTENTION = "cross-attention"
PATCH_COSINE = "patch cosine"
#: lines drawn between matched patches: low to high weight, dark enough to show on white sketches
LINE_COLOURS = "plasma"
LINE_RANGE = (0.0, 0.85)
HEAT_COLOURS = "inferno"
FOCUS = "#00c8ff"


# ----------------------------------------------------------------------------------------------- computing
@dataclass
class Correspondence:
    """Token correspondences of one sketch-photo pair on an ``h x w`` grid (cell ``r * w + c``).

    ``weights`` ``[h·w, h·w]``: sketch cell i → photo cell j, what is drawn (cross-attention weights or patch
    cosine, see ``source``). ``similarity`` ``[h·w, h·w]``: cosine of the patch tokens, what the synthesis
    uses (for the cosine fallback the same matrix). ``attention`` (``zse`` only) ``[1 + Ns, 1 + Np]``: the
    head-averaged sketch-branch cross-attention including the CLS token, rows summing to 1.
    """

    weights: np.ndarray
    similarity: np.ndarray
    source: str
    grid: tuple[int, int]
    detail: str
    attention: np.ndarray | None = None
    relation: float | None = None

    def received(self) -> np.ndarray:
        """``[h·w]`` per photo cell: attention mass received from all sketch patches, or the mean cosine."""
        return self.weights.sum(axis=0) if self.source == CROSS_ATTENTION else self.weights.mean(axis=0)

    @property
    def received_label(self) -> str:
        return ("attention, sum over sketch patches" if self.source == CROSS_ATTENTION
                else "cosine, mean over sketch patches")

    @property
    def weight_label(self) -> str:
        return "attention weight" if self.source == CROSS_ATTENTION else "cosine"


@dataclass(frozen=True)
class Match:
    """A (sketch cell, photo cell) pair and its weight."""

    sketch_cell: int
    photo_cell: int
    weight: float


def as_array(image: ImageLike) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB of a PIL image or an array (grey replicated)."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image, got {array.dtype} {array.shape}")
    return array


def model_input(model: RetrievalModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Normalised ``[B, 3, S, S]`` input of uint8 ``[S, S, 3]`` images already at the model's input size."""
    size = model.image_config.size
    for image in images:
        if image.shape[:2] != (size, size):
            raise ValueError(f"image of {image.shape[1]}x{image.shape[0]}: the model takes {size}x{size}")
    device = model_device(model)
    return Normalise(model.image_config, device)(torch.from_numpy(np.stack(images)).to(device))


def _grid_features(patches: torch.Tensor, grid: tuple[int, int], positions: torch.Tensor | None):
    """``[h·w, C]`` tokens of one image in grid order and ``[h·w]`` kept mask (token selection drops some)."""
    cells = grid[0] * grid[1]
    if positions is None:
        return patches, torch.ones(cells, dtype=torch.bool, device=patches.device)
    full = patches.new_zeros(cells, patches.shape[-1]).index_copy(0, positions, patches)
    return full, torch.zeros(cells, dtype=torch.bool, device=patches.device).index_fill(0, positions, True)


def _cosine(sketch: torch.Tensor, photo: torch.Tensor, photo_kept: torch.Tensor) -> torch.Tensor:
    similarity = F.normalize(sketch.float(), dim=-1) @ F.normalize(photo.float(), dim=-1).T
    return similarity.masked_fill(~photo_kept[None], -torch.inf)


@torch.inference_mode()
def correspondences(model: RetrievalModel, sketch: ImageLike, photo: ImageLike) -> Correspondence:
    """The :class:`Correspondence` of a sketch and a photo (``size`` x ``size``, the model's input size).

    ``zse``: its sketch-branch cross-attention (mean over heads); any other method: patch-token cosine
    (see the module docstring)."""
    sketch_input, photo_input = model_input(model, [as_array(sketch)]), model_input(model, [as_array(photo)])
    if getattr(model, "method", "") == "zse":
        sketch_tokens, photo_tokens = model.tokens(sketch_input, "sketch"), model.tokens(photo_input, "photo")
        grid = tuple(sketch_tokens.grid)
        pair = model.pair(sketch_tokens, photo_tokens)
        heads = pair.attention.sketch_attention.shape[1]
        attention = pair.attention.sketch_attention[0].float().mean(dim=0)  # [1 + Ns, 1 + Np]
        sketch_grid, sketch_kept = _grid_features(sketch_tokens.patches[0], grid, _first(sketch_tokens.positions))
        photo_grid, photo_kept = _grid_features(photo_tokens.patches[0], grid, _first(photo_tokens.positions))
        cells = grid[0] * grid[1]
        weights = attention.new_zeros(cells, cells)
        weights[sketch_kept.nonzero()[:, 0][:, None], photo_kept.nonzero()[:, 0][None]] = attention[1:, 1:]
        detail = (f"cross-attention weights (sketch branch, mean of {heads} heads, patch-to-patch block; "
                  "CLS not drawn)")
        return Correspondence(weights.cpu().numpy(), _cosine(sketch_grid, photo_grid, photo_kept).cpu().numpy(),
                              CROSS_ATTENTION, grid, detail, attention.cpu().numpy(), float(pair.relation[0]))
    backbone = model.backbone
    features = backbone.forward_tokens(torch.cat([sketch_input, photo_input]))
    patches = features.tokens[:, backbone.num_prefix_tokens:]
    grid = tuple(features.grid)
    kept = torch.ones(patches.shape[1], dtype=torch.bool, device=patches.device)
    similarity = _cosine(patches[0], patches[1], kept).cpu().numpy()
    detail = f"cosine of the backbone's patch tokens ('{model.method}' has no cross-attention)"
    return Correspondence(similarity, similarity, PATCH_COSINE, grid, detail)


def _first(positions: torch.Tensor | None) -> torch.Tensor | None:
    return None if positions is None else positions[0]


def top_matches(weights: np.ndarray, n: int) -> list[Match]:
    """The ``n`` (sketch cell, photo cell) pairs of largest weight, strongest first (ties: lower cell first)."""
    flat = np.asarray(weights, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")[:max(0, n)]
    columns = weights.shape[1]
    return [Match(int(i // columns), int(i % columns), float(flat[i])) for i in order]


def best_photo_cells(similarity: np.ndarray) -> np.ndarray:
    """``[Ns]`` for each sketch cell the photo cell of highest similarity (ties: the lower cell)."""
    return np.asarray(similarity).argmax(axis=1)


def synthesise(sketch: np.ndarray, photo: np.ndarray, similarity: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Sketch-to-photo synthesis by universal patch replacement: an image of the sketch's size whose grid
    cell i is the photo's cell ``argmax_j similarity[i, j]``, copied pixel for pixel."""
    sketch, photo = as_array(sketch), as_array(photo)
    h, w = grid
    height, width = photo.shape[:2]
    if sketch.shape != photo.shape:
        raise ValueError(f"sketch {sketch.shape} and photo {photo.shape} differ in size")
    if height % h or width % w:
        raise ValueError(f"a {width}x{height} image does not split into a {h}x{w} grid of equal patches")
    if similarity.shape != (h * w, h * w):
        raise ValueError(f"similarity {similarity.shape} does not match the {h}x{w} grid")
    ph, pw = height // h, width // w
    patches = photo.reshape(h, ph, w, pw, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, ph, pw, 3)
    chosen = patches[best_photo_cells(similarity)]
    return np.ascontiguousarray(chosen.reshape(h, w, ph, pw, 3).transpose(0, 2, 1, 3, 4).reshape(height, width, 3))


@dataclass
class Explanation:
    """Everything drawn for one pair: the images as the model saw them, the correspondences, the ``n``
    strongest matches, the synthesis, and the focus sketch cell whose weights are mapped over the photo."""

    sketch: np.ndarray
    photo: np.ndarray
    correspondence: Correspondence
    matches: list[Match]
    synthesis: np.ndarray
    focus: int


def explain_pair(model: RetrievalModel, sketch: ImageLike, photo: ImageLike, lines: int = 10,
                 focus: int | tuple[int, int] | None = None) -> Explanation:
    """The :class:`Explanation` of a pair (images at the model's input size); ``focus``: the sketch cell
    (index or ``(row, column)``) whose weights are mapped over the photo (default: the sketch cell of the
    strongest pair). A focus outside the grid raises :class:`SbirError`."""
    sketch, photo = as_array(sketch), as_array(photo)
    found = correspondences(model, sketch, photo)
    h, w = found.grid
    if focus is None:
        focus = top_matches(found.weights, 1)[0].sketch_cell
    else:
        row, column = divmod(focus, w) if isinstance(focus, int) else focus
        if not (0 <= row < h and 0 <= column < w):
            raise SbirError(f"sketch patch {tuple(focus) if not isinstance(focus, int) else focus} is outside "
                            f"the model's {h}x{w} patch grid")
        focus = row * w + column
    return Explanation(sketch, photo, found, top_matches(found.weights, lines),
                       synthesise(sketch, photo, found.similarity, found.grid), int(focus))


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


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


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
    figure = _new_figure(15.5, 2.3 * rows + 0.65)
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
    figure = _new_figure(width, 1.62 * len(rows) + header)
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
                matches_ax.set_ylabel(_short(row.label, 18), fontsize=8)
    figure.suptitle(heading, fontsize=9, y=1 - 0.06 / figure.get_figheight(), va="top")
    return figure


def figure_array(figure) -> np.ndarray:
    """uint8 ``[H, W, 3]`` rendering of a figure (at its own dpi)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure, path: Path, dpi: int = 100) -> None:
    """Write ``figure`` as a PNG (to a temporary name first, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    figure.savefig(tmp, dpi=dpi, format="png")
    os.replace(tmp, path)


def save_image(image: np.ndarray, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


#: the columns of :func:`match_records`
MATCH_COLUMNS = ["sketch_row", "sketch_column", "photo_row", "photo_column", "weight"]


def match_records(explanation: Explanation) -> list[list]:
    """The drawn matches, strongest first, as rows of :data:`MATCH_COLUMNS`."""
    w = explanation.correspondence.grid[1]
    return [[*divmod(m.sketch_cell, w), *divmod(m.photo_cell, w), round(m.weight, 6)] for m in explanation.matches]


def json_text(data) -> str:
    """Indented JSON with lists of plain numbers kept on one line."""
    number = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
    return re.sub(rf"\[\s+({number}(?:,\s+{number})*)\s+\]",
                  lambda m: "[" + ", ".join(re.split(r",\s+", m[1])) + "]", json.dumps(data, indent=1)) + "\n"


# ----------------------------------------------------------------------------------------------- test queries
def is_explain_folder(folder: Path) -> bool:
    """overview.png and index.json of the explain stage"""
    return (folder / "overview.png").is_file() and (folder / "index.json").is_file()


def is_pair_explanations(folder: Path) -> bool:
    """the <sketch>__<photo>.json records of 'sbir explain'"""
    for record in folder.glob("*__*.json"):
        try:
            if "correspondence" in json.loads(record.read_text()):
                return True
        except (OSError, ValueError):
            continue
    return False


def explain_retrievals(model: RetrievalModel, embeddings_dir: Path, shard_folder: Path, out: Path, queries: int = 6,
                       seed: int = 0, top: int = 3, lines: int = 10, identity: dict | None = None) -> dict:
    """Explain the ``top`` photos retrieved for ``queries`` seeded sketch queries into the folder ``out``.

    Queries are picked as for the retrieval grid (:func:`sbir.evaluate.pick_queries`, one per class first);
    photos are ranked by the cosine of the embeddings of ``embeddings_dir`` (token mode, whatever the
    evaluation's retrieval mode). ``out`` (replaced whole, atomically) holds ``query-NN-<key>.png`` (one row
    per retrieved photo, :func:`pair_figure`), ``overview.png`` (:func:`overview_figure`) and ``index.json``
    (returned): the files, the queries and retrieved keys, classes, cosine scores, the drawn matches, the
    method and the correspondence source.

    ``identity`` (:func:`sbir.checkpoint.model_identity` of the model's folder; default: its method) must agree
    with what the embeddings' ``info.json`` records, so that the photos explained are the model's own ranking.
    """
    if queries < 1 or top < 1:
        raise SbirError(f"explain: queries ({queries}) and top ({top}) must be at least 1")
    check_output(out, is_explain_folder, [embeddings_dir, shard_folder])
    sketches, photos = read_embeddings(embeddings_dir, "sketch"), read_embeddings(embeddings_dir, "photo")
    info = read_info(embeddings_dir)
    identity = identity or {"method": model.method}
    for key in ("method", "backbone", "model_sha256"):
        if info.get(key) is not None and identity.get(key) is not None and info[key] != identity[key]:
            raise SbirError(f"{embeddings_dir}: embeddings made with {key} {info[key]!r}, but the model has "
                            f"{identity[key]!r} (re-run the embed stage)")
    part = info.get("part", "test")
    scores_fn = cosine_scores(sketches.vectors, photos.vectors)
    rows = pick_queries(sketches.classes, queries, seed)
    ranked = top_k(scores_fn, rows, top)
    config = model.image_config
    def at_input_size(data: bytes) -> np.ndarray:  # as sbir.embed feeds the model
        return load_image(data, config.size, config.interpolation)

    sketch_images = load_images(shard_paths(shard_folder, part, "sketch"), {sketches.keys[q] for q in rows},
                                at_input_size)
    photo_images = load_images(shard_paths(shard_folder, part, "photo"), {photos.keys[i] for i in ranked.ravel()},
                               at_input_size)
    backbone = getattr(model.backbone, "name", "") or info.get("backbone", "")
    heading = " · ".join(str(x) for x in (model.method, backbone, info.get("dataset"), info.get("split"), part) if x)
    records, overview = [], []
    with atomic_dir(out, is_explain_folder, [embeddings_dir, shard_folder]) as tmp:
        for number, (query, best) in enumerate(zip(rows, ranked)):
            sketch_key, sketch_class = sketches.keys[query], sketches.classes[query]
            scores = scores_fn(query, query + 1)[0]
            explanations, captions, retrieved = [], [], []
            for rank, photo in enumerate(best, 1):
                explanation = explain_pair(model, sketch_images[sketch_key], photo_images[photos.keys[photo]], lines)
                relation = explanation.correspondence.relation
                correct = photos.classes[photo] == sketch_class
                explanations.append(explanation)
                captions.append(PairCaption(f"#{rank} {_short(photos.classes[photo])} · cos {scores[photo]:.2f}"
                                            + (f" · relation {relation:.2f}" if relation is not None else ""),
                                            correct))
                retrieved.append({"photo": photos.keys[photo], "class": photos.classes[photo],
                                  "score": round(float(scores[photo]), 6), "correct": correct,
                                  "relation": None if relation is None else round(relation, 6),
                                  "matches": match_records(explanation)})
            name = f"query-{number:02d}-{sketch_key}.png"
            save_figure(pair_figure(explanations, captions, f"{heading} · query {sketch_key} ({sketch_class})"),
                        tmp / name)
            records.append({"file": name, "sketch": sketch_key, "class": sketch_class, "retrieved": retrieved})
            overview.append(OverviewRow(sketch_class, explanations, captions))
        save_figure(overview_figure(overview, f"{heading} · {len(rows)} seeded queries, top {top} photos"),
                    tmp / "overview.png")
        found = overview[0].explanations[0].correspondence
        index = {"method": model.method, "backbone": backbone, "model_sha256": identity.get("model_sha256"),
                 "dataset": info.get("dataset"),
                 "split": info.get("split"), "part": part, "correspondence": found.source,
                 "correspondence_detail": found.detail, "synthesis": "argmax cosine of patch tokens",
                 "ranking": "cosine of the embeddings", "grid": list(found.grid), "image_size": int(config.size),
                 "seed": seed, "lines": lines, "files": ["overview.png"] + [r["file"] for r in records],
                 "overview": "overview.png", "match_columns": MATCH_COLUMNS, "queries": records}
        (tmp / "index.json").write_text(json_text(index))
    return index
