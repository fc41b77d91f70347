"""ZSE-SBIR: "Zero-Shot Everything Sketch-Based Image Retrieval, and in Explainable Style" (Lin et al., CVPR 2023).

Registered as method ``zse``: ``create_model("zse", "vit_base_patch16_224")`` (full model) or
``create_model("zse", "tf_efficientnet_lite0", head_only=True)`` (heads on cached frozen tokens).
A sketch and a photo are compared as two bags of local patches:

1. **Tokens** (:class:`Tokens`: a CLS token and the patch tokens of an ``h x w`` grid) of each image:

   - full model: the ViT backbone (shared by both modalities, fine-tuned) whose patch embedding is averaged
     with a learnable conv :class:`Tokenizer` — for SKETCHES ONLY by default (the paper, and the authors'
     answer to users; the released code applies it to both modalities: ``tokenizer="both"``) — with optional
     EViT-style token selection (:func:`select_tokens`; default keep all, as the released code). On a
     ViT-B/32 the tokenizer gets one more stride-2 conv so that it still matches the patch grid (deviation).
   - ``head_only=True``: the tokens of a frozen backbone (``Backbone.forward_tokens(images).tokens``), e.g.
     EfficientNet-Lite0's 7x7x1280 map, usually read from a token cache so that the CPU path trains the heads
     in minutes (:class:`FrozenTokenHead`). The tokenizer is not applicable there (it is averaged with a
     patch embedding that is not recomputed, in a backbone that is frozen). A CNN has no CLS token: a learned
     CLS is made by projecting the pooled feature (``Linear(C, C)`` of the mean spatial token = the global
     average pool); not in the reference, which only runs on a ViT.

2. **Cross-attention** (:class:`CrossAttention`): one layer, 8 heads, FFN 1024, post-LayerNorm, separate
   weights per branch; each branch queries with its own tokens and attends to the other modality's keys AND
   values (standard cross-attention; docs/methods.md). The released code takes the keys from the
   other modality but the values from its own (``layer(q=x_sk, k=x_im, v=x_sk)``), which only runs because
   both sides have 197 tokens: not copied. The attention maps are returned (:class:`CrossAttentionOutput`,
   :meth:`ZSESBIR.pair`): they are the token-correspondence explanation; their rows sum to 1 (taken
   before attention dropout).

3. **Kernel-based relation network** (:class:`KernelRelationNetwork`): post-cross-attention patch tokens
   reshaped to the grid (a real spatial reshape ``[B, N, C] → [B, C, h, w]``; the released code applies a
   raw ``view`` to ``[B, 196, 768]`` which scrambles positions and channels), conv ``C → 512`` with kernel =
   stride = 2 for a 14x14 grid → 49 anchors per side, the 49x49 cosine kernel matrix, MLP
   ``2401 → 343 → 49 → 1`` and a sigmoid → relation score in (0, 1). DEVIATION for a 7x7 grid
   (EfficientNet-Lite0 tokens, ViT-B/32): kernel = stride = 1, so there are still 49 anchors and the MLP is
   the reference one. In general the kernel is ``h / 7`` and the MLP ``A² → A·a_h → A → 1`` for ``A`` anchors
   on an ``a_h x a_w`` anchor grid (this reproduces the released 49 / 144 / 196-anchor variants).

4. **Retrieval token**: the CLS token after the cross-attention (768-d for ViT-B/16), used by the triplet
   loss during training.

Training (``forward(batch)`` / :meth:`ZSESBIR.loss`): the pairs (sketch, positive) and (sketch, negative);
``2 · triplet(margin 1, L2)`` on the retrieval tokens — anchor = the sketch's token after attending to its
positive, positive / negative = the photos' tokens after attending to the sketch (the released code pairs
the negative photo with a second sketch; here with the same sketch, so a step needs one sketch per triplet)
— plus ``4 · MSE`` of the relation scores against 0.99 / 0.01 (:func:`sbir.models.losses.zse_loss`). Model
selection is done by the training loop on a SEEN-class validation split (the released code selects on the
unseen test classes: not copied). Options that neither the paper nor the released code has, off by
default (:class:`ZSESBIR`): ``relation_pairs="batch"`` (the relation MSE over every in-batch pair),
``distill_weight`` (the token embedding learns the relation network's ranking, for ``rerank``) and
``mutual_weight`` (the reverse: the relation network learns the token's ranking).

Retrieval modes (:data:`RETRIEVAL_MODES`):

- ``token``: cosine between per-image embeddings (:meth:`ZSESBIR.embed`). The retrieval token after
  cross-attention depends on the other image, so it cannot be indexed; the embedding of one image is chosen
  by ``token_source``:

  * ``"backbone"`` — the CLS token before the cross-attention, i.e. the output of the self-attention
    encoder. This is what the released code evaluates as its token mode (``--retrieval sa``: ``sa_fea[:, 0]``),
    which gives the published token-variant numbers: the default of the full model, whose backbone is
    trained through the cross-attention (post-LN residual) by the triplet and relation losses.
  * ``"self_cross"`` — the image's own branch of the cross-attention run on the image alone (queries, keys
    and values from the same image), its CLS output. Default with ``head_only=True``, where the backbone is
    frozen and its CLS token would not be trained at all.

- ``relation``: the relation score of every sketch x photo pair (:meth:`ZSESBIR.score_pairs` on
  :meth:`ZSESBIR.pair_features`). Tokens are computed once per image; the cross-attention projections once
  per image in each chunk of pairs; only attention, FFN, anchor conv and MLP run per pair.
- ``rerank`` (not in the released code): the ``token`` shortlist of the top-k photos per sketch, then
  ``relation`` on the shortlist only (:func:`rerank_scores`). :meth:`ZSESBIR.retrieval_scores` gives the
  block-wise ``scores_fn`` of :func:`sbir.retrieval.metrics.evaluate_scores` for each of the three modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbir.models.backbones import Backbone
from sbir.models.base import MODALITIES, RetrievalModel, check_modality
from sbir.models.losses import balanced_relation_mse_loss, ranking_distillation_loss, triplet_margin_loss, zse_loss
from sbir.models.registry import register_method

TokenizerUse = Literal["sketch", "both", "none"]
TokenSource = Literal["backbone", "self_cross"]
RelationPairs = Literal["reference", "batch"]
RetrievalMode = Literal["token", "relation", "rerank"]
RETRIEVAL_MODES: tuple[str, ...] = ("token", "relation", "rerank")

RelationFn = Callable[[Tensor, Tensor], Tensor]
"""``relation_fn(queries [q], candidates [q, k]) -> [q, k]``: the relation score of query ``queries[i]``
with gallery item ``candidates[i, j]`` (indices into the query and gallery sets)."""

Inputs = Tensor | tuple
"""What the model takes for an image: the image ``[B, 3, H, W]``; with ``head_only=True`` also its cached
frozen tokens ``[B, P + h·w, C]`` or the ``TokenFeatures`` of ``Backbone.forward_tokens``."""


# ----------------------------------------------------------------------------------------------- tokens
@dataclass
class Tokens:
    """The tokens of a batch of images that the cross-attention and the relation network consume.

    ``cls``: ``[B, C]`` CLS token before the cross-attention. ``patches``: ``[B, N, C]`` patch tokens in
    row-major grid order (token ``r * w + c`` is grid cell ``(r, c)``), or the subset kept by token selection,
    whose grid cells are then ``positions`` (``[B, N]`` long, increasing). ``grid``: ``(h, w)``.
    """

    cls: Tensor
    patches: Tensor
    grid: tuple[int, int]
    positions: Tensor | None = None

    def __len__(self) -> int:
        return self.cls.shape[0]

    def sequence(self) -> Tensor:
        """``[B, 1 + N, C]``: the CLS token followed by the patch tokens."""
        return torch.cat([self.cls[:, None], self.patches], dim=1)

    def select(self, index: Tensor | slice) -> Tokens:
        positions = None if self.positions is None else self.positions[index]
        return Tokens(self.cls[index], self.patches[index], self.grid, positions)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tokens:
        positions = None if self.positions is None else self.positions.to(device)
        return Tokens(self.cls.to(device, dtype), self.patches.to(device, dtype), self.grid, positions)

    @staticmethod
    def cat(parts: Sequence[Tokens]) -> Tokens:
        """Concatenate along the batch (same grid, same token count)."""
        positions = None
        if any(p.positions is not None for p in parts):
            positions = torch.cat([_positions_of(p) for p in parts])
        return Tokens(torch.cat([p.cls for p in parts]), torch.cat([p.patches for p in parts]), parts[0].grid,
                      positions)

    def to_features(self) -> Tensor:
        """``[B, 1 + h·w, C]``: CLS then the full grid, row-major; cells dropped by token selection are zero."""
        h, w = self.grid
        if self.positions is None:
            return self.sequence()
        b, n, c = self.patches.shape
        grid = self.patches.new_zeros(b, h * w, c).scatter(1, self.positions[..., None].expand(b, n, c),
                                                           self.patches)
        return torch.cat([self.cls[:, None], grid], dim=1)

    @staticmethod
    def from_features(features: Tensor, grid: tuple[int, int], selected: bool = False) -> Tokens:
        """Inverse of :meth:`to_features`; ``selected``: the zero cells are tokens dropped by token selection
        (every image keeps the same number of tokens)."""
        h, w = grid
        if features.shape[1] != 1 + h * w:
            raise ValueError(f"pair features of shape {tuple(features.shape)} do not hold CLS + {h}x{w} tokens")
        cls, patches = features[:, 0], features[:, 1:]
        if not selected:
            return Tokens(cls, patches, grid)
        kept = patches.abs().amax(dim=-1) > 0
        counts = kept.sum(dim=1)
        if (counts != counts[0]).any():
            raise ValueError("pair features keep different numbers of tokens per image")
        positions = kept.nonzero()[:, 1].view(len(features), -1)
        patches = patches.gather(1, positions[..., None].expand(-1, -1, patches.shape[-1]))
        return Tokens(cls, patches, grid, positions)


def _positions_of(tokens: Tokens) -> Tensor:
    if tokens.positions is not None:
        return tokens.positions
    b, n = tokens.patches.shape[:2]
    return torch.arange(n, device=tokens.patches.device).expand(b, n)


def tokens_to_grid(patches: Tensor, grid: tuple[int, int], positions: Tensor | None = None) -> Tensor:
    """Patch tokens ``[B, N, C]`` in row-major order → feature map ``[B, C, h, w]`` (a real spatial reshape).

    ``out[b, c, r, k] = patches[b, r * w + k, c]``. With ``positions`` (token selection), token ``i`` is put
    at grid cell ``positions[b, i]`` and the dropped cells are zero.
    """
    b, n, c = patches.shape
    h, w = grid
    if positions is not None:
        index = positions[..., None].expand(b, n, c)
        patches = patches.new_zeros(b, h * w, c).scatter(1, index, patches)
    elif n != h * w:
        raise ValueError(f"{n} patch tokens do not fill a {h}x{w} grid")
    return patches.transpose(1, 2).reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------------- encoders
class Tokenizer(nn.Sequential):
    """The learnable tokenizer: 4 convs ``3→64 k7 s2, 64→128 k3 s2, 128→256 k3 s2, 256→C k3 s2``, ReLU
    between, no bias; paddings 3, 1, 1, 1 so that 224x224 → 14x14 (each conv halves the side), the patch grid
    of a ViT with 16-pixel patches.

    DEVIATION for larger patches (ViT-B/32: 7x7 at 224): one more ``256→256 k3 s2`` conv per halving, inserted
    before the last conv, so the output still matches the patch grid (``patch_size`` must be 16 · 2^k).
    """

    def __init__(self, dim: int, patch_size: int = 16):
        extra = int(math.log2(patch_size)) - 4 if patch_size >= 16 else -1
        if extra < 0 or 16 * 2 ** extra != patch_size:
            raise ValueError(f"the tokenizer needs a patch size of 16 · 2^k pixels, got {patch_size}")
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(64, 128, 3, 2, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(128, 256, 3, 2, 1, bias=False), nn.ReLU(inplace=True),
        ]
        for _ in range(extra):
            layers += [nn.Conv2d(256, 256, 3, 2, 1, bias=False), nn.ReLU(inplace=True)]
        super().__init__(*layers, nn.Conv2d(256, dim, 3, 2, 1, bias=False))


def cls_attention(block: nn.Module, x: Tensor) -> Tensor:
    """``[B, N]``: the attention of the CLS token (query 0) to each patch token in a timm ViT ``block``
    whose input is ``x = [CLS, patches]``, averaged over the heads (EViT's token-importance score)."""
    attn = block.attn
    y = block.norm1(x)
    b, n, _ = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0][:, :, :1]), attn.k_norm(qkv[1])
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, 1, N]
    return weights.mean(dim=1)[:, 0, 1:]


def select_tokens(x: Tensor, positions: Tensor, importance: Tensor, keep_rate: float) -> tuple[Tensor, Tensor]:
    """Keep the CLS token and the ``ceil(keep_rate · N)`` patch tokens of highest ``importance`` ``[B, N]``,
    in their original order. Returns the kept ``[B, 1 + k, C]`` sequence and their grid ``positions``.

    EViT variant without token fusion (the dropped tokens are discarded, as in the released code); the
    selection is made after the whole block, which equals selecting between attention and MLP because the
    MLP acts on each token alone.
    """
    n = x.shape[1] - 1
    keep = min(n, math.ceil(keep_rate * n))
    index = importance.topk(keep, dim=1).indices.sort(dim=1).values  # [B, k]
    patches = x[:, 1:].gather(1, index[..., None].expand(-1, -1, x.shape[-1]))
    return torch.cat([x[:, :1], patches], dim=1), positions.gather(1, index)


class FrozenTokenHead(nn.Module):
    """Head-only front end: frozen backbone tokens ``[B, P + h·w, C]`` (``P = prefix_tokens``: 1 for a ViT's
    CLS, 0 for a CNN) → :class:`Tokens`.

    CLS: the ViT's own token when ``P = 1``; for a CNN a learned CLS = ``Linear(C, C)`` of the mean spatial
    token (= its global average pool). ``width``: an optional learned linear projection ``C → width`` of all
    tokens, shared by both modalities (not in the reference; it makes CPU training on 1280-d tokens cheap).
    """

    def __init__(self, dim: int, grid: tuple[int, int], prefix_tokens: int = 0, width: int | None = None):
        super().__init__()
        if prefix_tokens not in (0, 1):
            raise ValueError(f"prefix_tokens must be 0 (no CLS) or 1 (CLS first), got {prefix_tokens}")
        self.input_dim, self.grid, self.prefix_tokens = dim, tuple(grid), prefix_tokens
        self.cls_projection = nn.Linear(dim, dim) if prefix_tokens == 0 else None
        self.projection = nn.Linear(dim, width) if width is not None else None
        self.dim: int = width or dim

    def forward(self, tokens: Tensor) -> Tokens:
        patches = tokens[:, self.prefix_tokens:]
        h, w = self.grid
        if tokens.ndim != 3 or patches.shape[1] != h * w or patches.shape[2] != self.input_dim:
            raise ValueError(f"expected tokens [B, {self.prefix_tokens} + {h * w}, {self.input_dim}], "
                             f"got {tuple(tokens.shape)}")
        cls = self.cls_projection(patches.mean(dim=1)) if self.cls_projection is not None else tokens[:, 0]
        if self.projection is not None:
            cls, patches = self.projection(cls), self.projection(patches)
        return Tokens(cls, patches, self.grid)


def backbone_grid(backbone: Backbone) -> tuple[int, int]:
    """``(h, w)`` of a backbone's token map at its input size (a ViT's patch grid; one dummy forward for a CNN)."""
    size = backbone.image_config.size
    if hasattr(backbone, "patch_size"):
        return size // backbone.patch_size, size // backbone.patch_size
    parameter, training = next(backbone.parameters()), backbone.training
    backbone.eval()  # no batch-norm statistics update from the dummy batch
    with torch.no_grad():
        grid = backbone.forward_tokens(parameter.new_zeros(1, 3, size, size)).grid
    backbone.train(training)
    return tuple(grid)


# ----------------------------------------------------------------------------------------------- cross-attention
class CrossAttentionBranch(nn.Module):
    """One branch: ``x' = LN(x + MHA(q = x W_q, k = y W_k, v = y W_v))``, ``out = LN(x' + FFN(x'))``.

    Post-LayerNorm, ReLU FFN, dropout (default 0.1, the reference) on the attention weights, the attention
    output and the FFN output. ``torch.nn.LayerNorm`` (eps 1e-6) where the reference divides by the unbiased
    standard deviation plus eps: the same up to a factor ``sqrt(C / (C - 1))`` absorbed by the gain.
    The projections are exposed separately (:meth:`queries`, :meth:`keys_values`, :meth:`attend`) so that
    scoring many pairs projects each image once.
    """

    def __init__(self, dim: int, heads: int = 8, ffn_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.attention_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        return x.reshape(*x.shape[:2], self.heads, self.head_dim).transpose(1, 2)  # [B, H, N, d]

    def queries(self, x: Tensor) -> Tensor:
        return self._heads(self.query(x))

    def keys_values(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._heads(self.key(y)), self._heads(self.value(y))

    def attend(self, x: Tensor, queries: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Output tokens ``[B, N, C]`` and attention weights ``[B, H, N, M]`` (rows sum to 1)."""
        weights = (queries @ keys.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)
        mixed = (self.dropout(weights) @ values).transpose(1, 2).reshape(x.shape)
        x = self.attention_norm(x + self.dropout(self.out(mixed)))
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x, weights

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, N, C]`` attends to ``y`` ``[B, M, C]``."""
        return self.attend(x, self.queries(x), *self.keys_values(y))


@dataclass
class CrossAttentionOutput:
    """Both branches' tokens after cross-attention and their attention maps (the explanation).

    ``sketch``: ``[B, 1 + Ns, C]``; ``photo``: ``[B, 1 + Np, C]``; ``sketch_attention``: ``[B, H, 1 + Ns, 1 + Np]``
    (sketch queries over photo keys, token 0 = CLS); ``photo_attention``: ``[B, H, 1 + Np, 1 + Ns]``.
    """

    sketch: Tensor
    photo: Tensor
    sketch_attention: Tensor
    photo_attention: Tensor


class CrossAttention(nn.Module):
    """The two-branch cross-attention module (separate weights per branch), one layer."""

    def __init__(self, dim: int, heads: int = 8, ffn_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleDict({m: CrossAttentionBranch(dim, heads, ffn_dim, dropout) for m in MODALITIES})

    def forward(self, sketch: Tensor, photo: Tensor) -> CrossAttentionOutput:
        sketch_out, sketch_attention = self.branches["sketch"](sketch, photo)
        photo_out, photo_attention = self.branches["photo"](photo, sketch)
        return CrossAttentionOutput(sketch_out, photo_out, sketch_attention, photo_attention)


# ----------------------------------------------------------------------------------------------- relation
def default_anchor_kernel(grid: tuple[int, int]) -> int:
    """Kernel (= stride) of the anchor conv giving a 7x7 anchor grid: 2 for 14x14 (reference), 1 for 7x7."""
    h, w = grid
    if h == w and h % 7 == 0:
        return h // 7
    raise ValueError(f"a {h}x{w} grid does not pool to 7x7 anchors: pass anchor_kernel explicitly")


class KernelRelationNetwork(nn.Module):
    """Relation score of a sketch-photo pair from their post-cross-attention patch tokens.

    ``anchors``: grid reshape (:func:`tokens_to_grid`) → ``Conv2d(C, anchor_dim, k, stride=k)`` (one conv for
    both modalities) → ``A`` anchors ``[B, A, anchor_dim]``. ``kernel_matrix``: ``K[i, j] = cos(s_i, p_j)``
    ``[B, A, A]`` (zero for a zero anchor, like the reference's NaN → 0). ``score``: MLP
    ``A² → A·a_h → A → 1`` (ReLU, dropout) and sigmoid → ``[B]`` in (0, 1).
    """

    def __init__(self, dim: int, grid: tuple[int, int], anchor_dim: int = 512, anchor_kernel: int | None = None,
                 dropout: float = 0.1):
        super().__init__()
        self.grid = tuple(grid)
        kernel = anchor_kernel or default_anchor_kernel(self.grid)
        anchor_h, anchor_w = self.grid[0] // kernel, self.grid[1] // kernel
        if anchor_h * kernel != self.grid[0] or anchor_w * kernel != self.grid[1]:
            raise ValueError(f"anchor kernel {kernel} does not tile the {self.grid} grid")
        self.anchor_count = anchors = anchor_h * anchor_w
        self.anchor_conv = nn.Conv2d(dim, anchor_dim, kernel, kernel)
        self.mlp = nn.Sequential(
            nn.Linear(anchors * anchors, anchors * anchor_h), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(anchors * anchor_h, anchors), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(anchors, 1),
        )

    def anchors(self, patches: Tensor, positions: Tensor | None = None) -> Tensor:
        feature_map = self.anchor_conv(tokens_to_grid(patches, self.grid, positions))
        return feature_map.flatten(2).transpose(1, 2)

    @staticmethod
    def kernel_matrix(sketch_anchors: Tensor, photo_anchors: Tensor) -> Tensor:
        return F.normalize(sketch_anchors, dim=-1) @ F.normalize(photo_anchors, dim=-1).transpose(1, 2)

    def score(self, sketch_anchors: Tensor, photo_anchors: Tensor) -> Tensor:
        """The MLP runs outside autocast, in the parameters' dtype: bf16 scores in (0, 1) would tie often."""
        kernel = self.kernel_matrix(sketch_anchors, photo_anchors).flatten(1)
        with torch.autocast(kernel.device.type, enabled=False):
            return torch.sigmoid(self.mlp(kernel.to(self.mlp[0].weight.dtype)))[:, 0]

    def forward(self, sketch_patches: Tensor, photo_patches: Tensor, sketch_positions: Tensor | None = None,
                photo_positions: Tensor | None = None) -> Tensor:
        return self.score(self.anchors(sketch_patches, sketch_positions),
                          self.anchors(photo_patches, photo_positions))


# ----------------------------------------------------------------------------------------------- rerank
def rerank_scores(token_scores: Tensor, relation_fn: RelationFn, top_k: int,
                  query_block: int = 256) -> tuple[Tensor, int]:
    """Rerank: relation scores on each query's top-``top_k`` token shortlist, token order below it.

    ``token_scores`` ``[Q, G]``; ``relation_fn`` (:data:`RelationFn`) is called on blocks of ``query_block``
    queries. Returns ``(scores [Q, G], pairs scored = Q · min(top_k, G))``: shortlisted photos carry their
    exact relation score (so ``top_k >= G`` gives the ``relation`` matrix itself); the others keep their token
    order, shifted to lie strictly below the row's lowest shortlisted score.
    """
    n_queries, n_gallery = token_scores.shape
    k = min(int(top_k), n_gallery)
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    shortlist = token_scores.topk(k, dim=1).indices
    relation = torch.cat([
        relation_fn(torch.arange(a, min(a + query_block, n_queries)), shortlist[a:a + query_block])
        for a in range(0, n_queries, query_block)
    ]).to(token_scores.device)
    dtype = torch.promote_types(token_scores.dtype, relation.dtype)
    relation = relation.to(dtype)
    if k < n_gallery:
        in_shortlist = torch.zeros_like(token_scores, dtype=torch.bool).scatter(1, shortlist, True)
        rest_max = token_scores.masked_fill(in_shortlist, -math.inf).amax(dim=1, keepdim=True)
        floor = relation.amin(dim=1, keepdim=True) - 1
        scores = (token_scores.to(dtype) - rest_max.to(dtype)) + floor
    else:
        scores = torch.empty_like(token_scores, dtype=dtype)
    return scores.scatter(1, shortlist, relation), n_queries * k


# ----------------------------------------------------------------------------------------------- model
@dataclass
class PairOutput:
    """One forward pass over aligned pairs ``(sketch_i, photo_i)``."""

    sketch_token: Tensor  # [B, C] sketch retrieval token (CLS after attending to the photo)
    photo_token: Tensor  # [B, C]
    relation: Tensor  # [B] relation score in (0, 1)
    attention: CrossAttentionOutput  # tokens after cross-attention and the attention maps


@dataclass
class _Projected:
    """Tokens of a set of sketches and photos with their cross-attention projections (once per image)."""

    sketch: Tokens
    photo: Tokens
    sketch_sequence: Tensor  # [S, 1 + N, C]
    photo_sequence: Tensor  # [P, 1 + N, C]
    sketch_queries: Tensor  # sketch branch: queries of the sketches, keys / values of the photos
    photo_keys: Tensor
    photo_values: Tensor
    photo_queries: Tensor  # photo branch: queries of the photos, keys / values of the sketches
    sketch_keys: Tensor
    sketch_values: Tensor


@register_method("zse")
class ZSESBIR(RetrievalModel):
    """ZSE-SBIR (see the module docstring) on ``backbone``.

    ``inputs`` below are images, or with ``head_only=True`` also cached frozen tokens (:data:`Inputs`);
    ``features`` are :meth:`pair_features` outputs (or :class:`Tokens`), computed once per image.

    Args:
        head_only: train the heads only, on the frozen backbone's tokens.
        tokenizer: full model: whose patch embedding is averaged with the learnable tokenizer — ``"sketch"``
            (default, paper), ``"both"`` (released code) or ``"none"``.
        keep_rates: full model on a timm ViT: the token keep rate after each block (EViT); None keeps all.
        freeze_backbone: full model: keep the ViT fixed (the reference fine-tunes it).
        width: head-only: a learned projection of the tokens to this width (None: the backbone's).
        token_source: the ``token``-mode embedding, ``"backbone"`` or ``"self_cross"`` (module docstring);
            None: ``"backbone"`` for the full model, ``"self_cross"`` head-only.
        heads, ffn_dim, dropout: the cross-attention (reference 8, 1024, 0.1; the dropout also in the
            relation MLP).
        anchor_dim, anchor_kernel: the relation network (512 channels; kernel ``h / 7`` by default).
        margin, triplet_weight, relation_weight: the loss (1, 2, 4).
        relation_pairs: ``"reference"`` (one positive and one negative pair per sketch) or ``"batch"`` (every
            sketch x photo pair of the batch, labelled by class, positives and negatives averaged apart;
            category-level training). Not in the paper or the released code; default the reference.
        distill_weight, distill_temperature: weight (default 0: off, the reference) and student temperature
            of the ranking distillation from the relation network to the token embedding (below).
        mutual_weight: weight of its reverse term, the relation network learning the token's ranking (default
            0: off; below).
        pair_chunk: pairs scored at once (memory ~ pair_chunk x tokens x (width + ffn_dim) floats).

    Ranking distillation (DEVIATION, not in the paper or the released code; off by default): ``rerank``
    re-scores the token shortlist with the relation network, so it can only match exhaustive ``relation`` if
    the token embedding orders photos as the relation network does. With ``distill_weight > 0`` each step
    also scores every sketch x photo pair of the batch with the relation network (the teacher, detached) and
    adds the KL divergence of the token cosines' softmax over those photos (divided by
    ``distill_temperature``) to the softmax of the relation logits. Unless ``mutual_weight > 0``, the
    relation network learns from its own loss only. It costs a relation forward over ``B x 2B`` pairs per step
    (with ``relation_pairs="batch"`` that forward is the relation loss's own).

    Mutual distillation (DEVIATION, same status; ``mutual_weight > 0``, off by default): the reverse term as
    in deep mutual learning (Zhang et al., CVPR 2018), ``mutual_weight ·`` KL from the softmax of the token
    cosines / ``distill_temperature`` (detached) to the softmax of the relation logits over the same photos.
    The relation network then also learns the token's ranking of the batch. A 20x-cheaper ``rerank`` stays
    close to the token's ranking, so its gap to exhaustive ``relation`` is the two heads' difference: the
    forward term pulls the token toward the relation network, this one the relation network toward the
    token (docs/results.md's quality table measures both). With ``relation_pairs="reference"`` it scores the
    ``B x 2B`` pairs with gradient.
    """

    supports_pairs = True
    retrieval_modes = RETRIEVAL_MODES

    def __init__(self, backbone: Backbone, *, head_only: bool = False, tokenizer: TokenizerUse | None = None,
                 keep_rates: Sequence[float] | None = None, freeze_backbone: bool = False, width: int | None = None,
                 token_source: TokenSource | None = None, heads: int = 8, ffn_dim: int = 1024,
                 anchor_dim: int = 512, anchor_kernel: int | None = None, dropout: float = 0.1,
                 margin: float = 1.0, triplet_weight: float = 2.0, relation_weight: float = 4.0,
                 relation_pairs: RelationPairs = "reference", distill_weight: float = 0.0,
                 distill_temperature: float = 0.1, mutual_weight: float = 0.0, pair_chunk: int = 64):
        super().__init__(backbone)
        self.head_only = head_only
        self.tokenizer: Tokenizer | None = None
        self.token_head: FrozenTokenHead | None = None
        self.keep_rates: tuple[float, ...] | None = None
        if head_only:
            if tokenizer not in (None, "none") or keep_rates is not None or freeze_backbone:
                raise ValueError("head_only=True: the backbone is frozen and its tokens precomputed, so tokenizer, "
                                 "keep_rates and freeze_backbone do not apply")
            self.token_head = FrozenTokenHead(backbone.token_dim, backbone_grid(backbone),
                                              backbone.num_prefix_tokens, width)
            self.dim, self.grid = self.token_head.dim, self.token_head.grid
            self.tokenizer_use = "none"
        else:
            if width is not None:
                raise ValueError(f"width={width} applies to head_only=True only (a projection of the cached "
                                 f"tokens); the full model works at the backbone's token width "
                                 f"{backbone.token_dim}: leave width unset (null)")
            _check_staged_vit(backbone)
            self.dim = backbone.token_dim
            side = backbone.image_config.size // backbone.patch_size
            self.grid = (side, side)
            self.tokenizer_use = tokenizer or "sketch"
            if self.tokenizer_use not in ("sketch", "both", "none"):
                raise ValueError(f"tokenizer must be 'sketch', 'both' or 'none', got {tokenizer!r}")
            if self.tokenizer_use != "none":
                self.tokenizer = Tokenizer(self.dim, backbone.patch_size)
            self.keep_rates = _keep_rates(backbone, keep_rates)
        self.backbone_frozen = head_only or freeze_backbone
        if self.backbone_frozen:
            backbone.requires_grad_(False)
            backbone.eval()
        self.token_source = token_source or ("self_cross" if head_only else "backbone")
        if self.token_source not in ("backbone", "self_cross"):
            raise ValueError(f"token_source must be 'backbone' or 'self_cross', got {token_source!r}")
        self.cross_attention = CrossAttention(self.dim, heads, ffn_dim, dropout)
        self.relation_network = KernelRelationNetwork(self.dim, self.grid, anchor_dim, anchor_kernel, dropout)
        self.margin, self.triplet_weight, self.relation_weight = margin, triplet_weight, relation_weight
        if relation_pairs not in ("reference", "batch"):
            raise ValueError(f"relation_pairs must be 'reference' or 'batch', got {relation_pairs!r}")
        if distill_weight < 0 or mutual_weight < 0 or distill_temperature <= 0:
            raise ValueError(f"distill_weight and mutual_weight must be >= 0 and distill_temperature > 0, got "
                             f"{distill_weight}, {mutual_weight} and {distill_temperature}")
        self.relation_pairs = relation_pairs
        self.distill_weight, self.distill_temperature = float(distill_weight), float(distill_temperature)
        self.mutual_weight = float(mutual_weight)
        self.pair_chunk = pair_chunk

    @property
    def embed_dim(self) -> int:
        return self.dim

    def train(self, mode: bool = True) -> ZSESBIR:
        """Train mode for the heads; a frozen backbone stays in eval mode (batch-norm statistics, dropout)."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def _parameter(self) -> Tensor:
        return self.cross_attention.branches["sketch"].query.weight

    # ---- tokens and per-image embeddings (token mode)
    def uses_tokenizer(self, modality: str) -> bool:
        return self.tokenizer is not None and self.tokenizer_use in ("both", modality)

    def tokens(self, inputs: Inputs | Tokens, modality: str) -> Tokens:
        """The :class:`Tokens` of a batch (``Tokens`` pass through, moved to the model's device and dtype)."""
        check_modality(modality)
        parameter = self._parameter()
        if isinstance(inputs, Tokens):
            return inputs.to(parameter.device, parameter.dtype)
        if not self.head_only:
            return self._encode_images(inputs, modality)
        if isinstance(inputs, tuple | list):  # Backbone.forward_tokens output
            inputs = inputs[1]
        elif inputs.ndim == 4:  # images: through the frozen backbone
            with torch.no_grad():
                inputs = self.backbone.forward_tokens(inputs).tokens
        return self.token_head(inputs.to(parameter.device, parameter.dtype))

    def _encode_images(self, images: Tensor, modality: str) -> Tokens:
        backbone = self.backbone
        patches = backbone.patchify(images)  # [B, h*w, C], row-major
        if self.uses_tokenizer(modality):
            learned = self.tokenizer(images)
            if tuple(learned.shape[-2:]) != self.grid:
                raise ValueError(f"tokenizer grid {tuple(learned.shape[-2:])} != patch grid {self.grid}: the "
                                 "image side must be a multiple of the patch size")
            patches = (patches + learned.flatten(2).transpose(1, 2)) / 2
        sequence = backbone.add_cls_and_position(patches)
        if self.keep_rates is None:
            encoded, positions = backbone.encode_sequence(sequence), None
        else:
            encoded, positions = self._encode_selecting(sequence)
        return Tokens(encoded[:, 0], encoded[:, 1:], self.grid, positions)

    def _encode_selecting(self, sequence: Tensor) -> tuple[Tensor, Tensor]:
        """timm's ``norm_pre → blocks → norm`` with :func:`select_tokens` after the blocks whose rate is < 1."""
        vit = self.backbone.model
        x = vit.norm_pre(vit.patch_drop(sequence))
        positions = torch.arange(x.shape[1] - 1, device=x.device).expand(x.shape[0], -1)
        for block, keep_rate in zip(vit.blocks, self.keep_rates):
            if keep_rate < 1:
                importance = cls_attention(block, x)
                x, positions = select_tokens(block(x), positions, importance, keep_rate)
            else:
                x = block(x)
        return vit.norm(x), positions

    def embed_tokens(self, tokens: Tokens, modality: str) -> Tensor:
        """``[B, C]`` L2-normalised ``token``-mode embedding (see ``token_source``)."""
        check_modality(modality)
        if self.token_source == "backbone":
            embedding = tokens.cls
        else:
            sequence = tokens.sequence()
            embedding = self.cross_attention.branches[modality](sequence, sequence)[0][:, 0]
        return F.normalize(embedding, dim=-1)

    def embed(self, inputs: Inputs | Tokens, modality: str) -> Tensor:
        """``[B, C]`` L2-normalised per-image embedding: ``token`` retrieval by cosine (= dot product)."""
        return self.embed_tokens(self.tokens(inputs, modality), modality)

    def pair_features(self, inputs: Inputs, modality: str) -> Tensor:
        """``[B, 1 + h·w, C]``: what the relation scorer needs of an image (:meth:`Tokens.to_features`)."""
        return self.tokens(inputs, modality).to_features()

    def _take(self, features: Tensor | Tokens, index: Tensor | slice) -> Tokens:
        """The :class:`Tokens` of rows ``index`` of ``features`` (a tensor, an array or :class:`Tokens`), on
        the model's device and dtype."""
        parameter = self._parameter()
        if isinstance(features, Tokens):
            index = index.to(features.cls.device) if isinstance(index, Tensor) else index
            return features.select(index).to(parameter.device, parameter.dtype)
        if isinstance(features, Tensor):
            rows = features[index.to(features.device) if isinstance(index, Tensor) else index]
        else:  # a numpy array (or memory map) of cached pair features
            rows = torch.as_tensor(features[index.cpu().numpy() if isinstance(index, Tensor) else index])
        rows = rows.to(parameter.device, parameter.dtype)
        return Tokens.from_features(rows, self.grid, selected=self.keep_rates is not None)

    # ---- pairs
    def pair(self, sketch: Inputs | Tokens, photo: Inputs | Tokens) -> PairOutput:
        """Cross-attention and relation score of aligned pairs ``(sketch_i, photo_i)``, attention maps kept."""
        sketch_tokens, photo_tokens = self.tokens(sketch, "sketch"), self.tokens(photo, "photo")
        attention = self.cross_attention(sketch_tokens.sequence(), photo_tokens.sequence())
        relation = self.relation_network(attention.sketch[:, 1:], attention.photo[:, 1:], sketch_tokens.positions,
                                         photo_tokens.positions)
        return PairOutput(attention.sketch[:, 0], attention.photo[:, 0], relation, attention)

    def _project(self, sketch: Tokens, photo: Tokens) -> _Projected:
        branches = self.cross_attention.branches
        sketch_sequence, photo_sequence = sketch.sequence(), photo.sequence()
        return _Projected(sketch, photo, sketch_sequence, photo_sequence, branches["sketch"].queries(sketch_sequence),
                          *branches["sketch"].keys_values(photo_sequence), branches["photo"].queries(photo_sequence),
                          *branches["photo"].keys_values(sketch_sequence))

    def _pairs_forward(self, projected: _Projected, sketch_index: Tensor,
                       photo_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Retrieval tokens ``[P, C]`` x 2 and relation ``[P]`` of the pairs ``(sketch_index[i], photo_index[i])``."""
        s, p = sketch_index, photo_index
        sketch, photo = projected.sketch, projected.photo
        branches = self.cross_attention.branches
        sketch_out, _ = branches["sketch"].attend(projected.sketch_sequence[s], projected.sketch_queries[s],
                                                  projected.photo_keys[p], projected.photo_values[p])
        photo_out, _ = branches["photo"].attend(projected.photo_sequence[p], projected.photo_queries[p],
                                                projected.sketch_keys[s], projected.sketch_values[s])
        sketch_positions = None if sketch.positions is None else sketch.positions[s]
        photo_positions = None if photo.positions is None else photo.positions[p]
        relation = self.relation_network(sketch_out[:, 1:], photo_out[:, 1:], sketch_positions, photo_positions)
        return sketch_out[:, 0], photo_out[:, 0], relation

    def score_pairs(self, sketch_features: Tensor | Tokens, photo_features: Tensor | Tokens) -> Tensor:
        """``[S, P]`` relation scores of every sketch x photo pair (``relation`` mode).

        Each image is projected once; the pairs run ``pair_chunk`` at a time."""
        sketch, photo = self._take(sketch_features, slice(None)), self._take(photo_features, slice(None))
        projected = self._project(sketch, photo)
        n_s, n_p = len(sketch), len(photo)
        device = sketch.cls.device
        scores = []
        for a in range(0, n_s * n_p, self.pair_chunk):
            pair_index = torch.arange(a, min(a + self.pair_chunk, n_s * n_p), device=device)
            scores.append(self._pairs_forward(projected, pair_index // n_p, pair_index % n_p)[2])
        return torch.cat(scores).view(n_s, n_p)

    def score_index_pairs(self, sketch_features: Tensor | Tokens, photo_features: Tensor | Tokens,
                          sketch_index: Tensor, photo_index: Tensor) -> Tensor:
        """``[n]`` relation scores of the pairs ``(sketch_index[i], photo_index[i])``, ``pair_chunk`` at a time
        (each chunk projects its distinct images once)."""
        scores = []
        for a in range(0, len(sketch_index), self.pair_chunk):
            distinct_s, s = torch.unique(sketch_index[a:a + self.pair_chunk], return_inverse=True)
            distinct_p, p = torch.unique(photo_index[a:a + self.pair_chunk], return_inverse=True)
            projected = self._project(self._take(sketch_features, distinct_s), self._take(photo_features, distinct_p))
            device = projected.sketch.cls.device
            scores.append(self._pairs_forward(projected, s.to(device), p.to(device))[2])
        return torch.cat(scores) if scores else self._parameter().new_empty(0)

    def candidate_relation_fn(self, sketch_features: Tensor | Tokens, photo_features: Tensor | Tokens) -> RelationFn:
        """A :data:`RelationFn` over the sketches (queries) and photos (gallery), for :func:`rerank_scores`."""

        def relation_fn(queries: Tensor, candidates: Tensor) -> Tensor:
            sketch_index = queries.repeat_interleave(candidates.shape[1])
            return self.score_index_pairs(sketch_features, photo_features, sketch_index,
                                          candidates.reshape(-1)).view(candidates.shape)

        return relation_fn

    def retrieval_scores(self, sketch_features: Tensor | Tokens, photo_features: Tensor | Tokens,
                         mode: RetrievalMode = "token", top_k: int = 100, photo_block: int = 1024) -> RetrievalScores:
        """``scores_fn(start, stop)`` of ``mode`` for :func:`sbir.retrieval.metrics.evaluate_scores` (see
        :class:`RetrievalScores`); call in ``eval()`` mode. Features may stay on the CPU (moved per chunk)."""
        return RetrievalScores(self, sketch_features, photo_features, mode, top_k, photo_block)

    # ---- training
    def loss(self, sketch: Inputs, positive: Inputs, negative: Inputs, sketch_labels: Tensor | None = None,
             negative_labels: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """``2 · triplet(margin 1, L2) + 4 · MSE(relation(s, p+) → 0.99, relation(s, p-) → 0.01)``, the
        reference; with ``relation_pairs="batch"`` the MSE is taken over every sketch x photo pair of the batch
        (:func:`~sbir.models.losses.balanced_relation_mse_loss`, pairs labelled by class: needs ``sketch_labels`` and
        ``negative_labels``), and ``distill_weight > 0`` adds ``distill_weight ·``
        :func:`~sbir.models.losses.ranking_distillation_loss` of the token cosines to the relation scores over the
        batch's photos, and ``mutual_weight > 0`` its reverse term (see the class docstring).

        The sketches are encoded and projected once for all of their pairs. Returns the total and the
        unweighted terms ``triplet``, ``relation`` (and ``distill``, ``mutual``).
        """
        if self.relation_pairs == "batch" and (sketch_labels is None or negative_labels is None):
            raise ValueError("relation_pairs='batch' labels the batch's pairs by class: give sketch_labels and "
                             "negative_labels")
        sketch_tokens = self.tokens(sketch, "sketch")
        photo_tokens = Tokens.cat([self.tokens(positive, "photo"), self.tokens(negative, "photo")])
        n = len(sketch_tokens)
        device = sketch_tokens.cls.device
        projected = self._project(sketch_tokens, photo_tokens)
        if self.relation_pairs == "batch":
            # every pair: row i, column j is (sketch i, photo j), the photos being the positives then the negatives
            sketch_token, photo_token, relation = self._pairs_forward(projected, *_all_pairs(n, device))
            rows = torch.arange(n, device=device) * (2 * n + 1)  # flat index of (sketch i, its positive i)
            on_pairs = torch.cat([rows, rows + n])  # then (sketch i, its negative n + i)
            sketch_token, photo_token, relation = sketch_token[on_pairs], photo_token[on_pairs], relation.view(n, 2 * n)
            sketch_labels = sketch_labels.to(device)
            photo_labels = torch.cat([sketch_labels, negative_labels.to(device)])
            parts = {"triplet": triplet_margin_loss(sketch_token[:n], photo_token[:n], photo_token[n:], self.margin),
                     "relation": balanced_relation_mse_loss(relation, sketch_labels[:, None] == photo_labels[None])}
            total = self.triplet_weight * parts["triplet"] + self.relation_weight * parts["relation"]
        else:
            sketch_token, photo_token, pair_relation = self._pairs_forward(
                projected, torch.arange(n, device=device).repeat(2), torch.arange(2 * n, device=device))
            total, parts = zse_loss(sketch_token[:n], photo_token[:n], photo_token[n:], pair_relation[:n],
                                    pair_relation[n:], self.margin, self.triplet_weight, self.relation_weight)
        if self.distill_weight or self.mutual_weight:
            if self.relation_pairs != "batch":  # a graph only where the relation network learns from the token
                with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.mutual_weight)):
                    relation = self._pairs_forward(projected, *_all_pairs(n, device))[2].view(n, 2 * n)
            cosine = self.embed_tokens(sketch_tokens, "sketch") @ self.embed_tokens(photo_tokens, "photo").T
            logits = torch.logit(relation.float(), eps=1e-6)
            if self.distill_weight:
                parts["distill"] = ranking_distillation_loss(cosine, logits, self.distill_temperature)
                total = total + self.distill_weight * parts["distill"]
            if self.mutual_weight:
                parts["mutual"] = ranking_distillation_loss(logits, cosine, 1.0,
                                                            teacher_temperature=self.distill_temperature)
                total = total + self.mutual_weight * parts["mutual"]
        return total, {name: float(value.detach()) for name, value in parts.items()}

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Training-loop entry (:mod:`sbir.train`): ``batch`` holds ``sketch``, ``positive``, ``negative`` (and
        the class labels ``sketch_label``, ``negative_label``, which ``relation_pairs="batch"`` needs)."""
        return self.loss(batch["sketch"], batch["positive"], batch["negative"], batch.get("sketch_label"),
                         batch.get("negative_label"))

    def extra_repr(self) -> str:
        return (f"head_only={self.head_only}, tokenizer={self.tokenizer_use!r}, keep_rates={self.keep_rates}, "
                f"token_source={self.token_source!r}, grid={self.grid}, relation_pairs={self.relation_pairs!r}, "
                f"distill_weight={self.distill_weight}, mutual_weight={self.mutual_weight}")


def _all_pairs(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(sketch_index, photo_index)`` of every pair of ``n`` sketches and ``2n`` photos, row-major: pair
    ``i · 2n + j`` is (sketch ``i``, photo ``j``)."""
    return (torch.arange(n, device=device).repeat_interleave(2 * n), torch.arange(2 * n, device=device).repeat(n))


def _check_staged_vit(backbone: Backbone) -> None:
    staged = ("patchify", "add_cls_and_position", "encode_sequence", "patch_size")
    if not all(hasattr(backbone, name) for name in staged):
        raise ValueError(f"the full ZSE-SBIR model needs a ViT backbone with a staged forward, not "
                         f"{type(backbone).__name__}: use head_only=True (on its cached tokens)")
    if backbone.num_prefix_tokens != 1:
        raise ValueError("the full ZSE-SBIR model needs a ViT with exactly one (CLS) prefix token")


def _keep_rates(backbone: Backbone, keep_rates: Sequence[float] | None) -> tuple[float, ...] | None:
    """The validated keep-rate schedule, or None when every token is kept (the plain staged forward)."""
    if keep_rates is None:
        return None
    blocks = getattr(getattr(backbone, "model", None), "blocks", None)
    if blocks is None:
        raise ValueError("token selection needs a timm ViT backbone (backbone.model.blocks)")
    if len(keep_rates) != len(blocks) or not all(0 < rate <= 1 for rate in keep_rates):
        raise ValueError(f"keep_rates needs {len(blocks)} rates in (0, 1], got {tuple(keep_rates)}")
    return tuple(float(rate) for rate in keep_rates) if any(rate < 1 for rate in keep_rates) else None


class RetrievalScores:
    """``scores_fn(start, stop) -> [stop - start, n_photos]`` (float32, CPU) of one retrieval mode, for
    :func:`sbir.retrieval.metrics.evaluate_scores`; ``sketch_features`` / ``photo_features`` from ``pair_features``.

    ``token``: cosine of the per-image embeddings (computed once, here). ``relation``: every pair, photos in
    blocks of ``photo_block``. ``rerank``: :func:`rerank_scores` with ``top_k``. ``pairs_scored`` counts the
    pairs the relation network has scored so far (the cost of ``relation`` and ``rerank``).
    """

    def __init__(self, model: ZSESBIR, sketch_features: Tensor | Tokens, photo_features: Tensor | Tokens,
                 mode: RetrievalMode = "token", top_k: int = 100, photo_block: int = 1024):
        if mode not in RETRIEVAL_MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}: use one of {RETRIEVAL_MODES}")
        self.model, self.sketches, self.photos = model, sketch_features, photo_features
        self.mode, self.top_k, self.photo_block = mode, top_k, photo_block
        self.pairs_scored = 0
        if mode in ("token", "rerank"):
            self.sketch_embeddings = self._embed_all(sketch_features, "sketch")
            self.photo_embeddings = self._embed_all(photo_features, "photo")

    @torch.no_grad()
    def _embed_all(self, features: Tensor | Tokens, modality: str, block: int = 1024) -> Tensor:
        parts = [self.model.embed_tokens(self.model._take(features, slice(a, a + block)), modality)
                 for a in range(0, len(features), block)]
        return torch.cat([part.float().cpu() for part in parts])

    def _token_scores(self, start: int, stop: int) -> Tensor:
        with torch.autocast("cpu", enabled=False):  # float32 cosines: bf16 would create ties
            return self.sketch_embeddings[start:stop] @ self.photo_embeddings.T

    @torch.no_grad()
    def __call__(self, start: int, stop: int) -> Tensor:
        if self.mode == "token":
            return self._token_scores(start, stop)
        if self.mode == "relation":
            queries = self.model._take(self.sketches, slice(start, stop))
            n_photos = len(self.photos)
            blocks = [self.model.score_pairs(queries, self.model._take(self.photos, slice(a, a + self.photo_block)))
                      .float().cpu() for a in range(0, n_photos, self.photo_block)]
            self.pairs_scored += (stop - start) * n_photos
            return torch.cat(blocks, dim=1)
        relation_fn = self.model.candidate_relation_fn(self.sketches, self.photos)

        def shifted(queries: Tensor, candidates: Tensor) -> Tensor:
            return relation_fn(queries + start, candidates).float().cpu()

        scores, pairs = rerank_scores(self._token_scores(start, stop), shifted, self.top_k)
        self.pairs_scored += pairs
        return scores
