"""Explanations of a sketch-photo match: token correspondences and sketch-to-photo synthesis.

ZSE-SBIR's second goal is explainability (docs/explain.md), but its authors released no code for it: what is
drawn here is designed from the paper's description. For a sketch and a photo, both at the model's input
size and cut into the model's patch grid (ViT-B/16 14x14, EfficientNet-Lite0 and ViT-B/32 7x7):

- **token correspondences** (:func:`correspondences`): a weight per (sketch patch, photo patch) pair.

  * ``zse``: the cross-attention weights of the SKETCH branch (sketch queries over photo keys), averaged
    over the heads, patch-to-patch block; the CLS row and column are left out of the drawing but kept in
    :attr:`Correspondence.attention`, whose rows (over CLS + photo patches) sum to 1. These are the
    weights the model really used (:meth:`sbir.models.zse.ZSESBIR.pair`, eval mode, before dropout).
  * methods without cross-attention (``frozen``, ``linear``, ``clip_prompt``, ``sake``): the raw cosine
    similarity (no softmax, no temperature) of the backbone's patch tokens, labelled ``"patch cosine"`` in
    every title and in ``index.json``. It explains what the frozen backbone matches, not the trained head
    (``linear`` heads act on the pooled feature only; ``clip_prompt``'s prompts are not applied); for
    ``sake``, whose backbone is fine-tuned, the tokens of its fine-tuned stages (domain gates included,
    :meth:`sbir.models.sake.SAKE.student_tokens`).

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
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sbir.data.loader import model_input
from sbir.errors import SbirError
from sbir.models.base import RetrievalModel
from sbir.utils.device import model_device

ImageLike = Image.Image | np.ndarray
"""A PIL image or a uint8 ``[H, W, 3]`` (or ``[H, W]``) array."""

CROSS_ATTENTION = "cross-attention"
PATCH_COSINE = "patch cosine"


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
    config, device = model.image_config, model_device(model)
    sketch_input = model_input([as_array(sketch)], config, device)
    photo_input = model_input([as_array(photo)], config, device)
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
    if hasattr(model, "student_tokens"):  # a fine-tuned backbone with per-domain parts (sake): its own tokens
        sketch_features = model.student_tokens(sketch_input, "sketch")
        patches = torch.cat([sketch_features.tokens, model.student_tokens(photo_input, "photo").tokens])
        grid, whose = tuple(sketch_features.grid), "fine-tuned network's"
    else:
        features = backbone.forward_tokens(torch.cat([sketch_input, photo_input]))
        patches = features.tokens[:, backbone.num_prefix_tokens:]
        grid, whose = tuple(features.grid), "backbone's"
    kept = torch.ones(patches.shape[1], dtype=torch.bool, device=patches.device)
    similarity = _cosine(patches[0], patches[1], kept).cpu().numpy()
    detail = f"cosine of the {whose} patch tokens ('{model.method}' has no cross-attention)"
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


