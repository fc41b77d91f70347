"""CLIP for All Things ZS-SBIR (Sain et al., CVPR 2023): a frozen CLIP ViT adapted to sketches by visual prompts.

The model (:class:`ClipPrompt`, registered as ``clip_prompt``:
``create_model("clip_prompt", "ViT-B-32", class_names=..., seen_classes=...)``) prompts the image tower of an
open_clip backbone (:mod:`sbir.models.backbones`, ViT-B/32 in the paper):

- two learnable prompt sets, one per modality (sketch, photo), ``prompt_tokens`` (3) tokens of the
  tower's width (768) each, appended to the token sequence after the positional embedding and before
  ``ln_pre``: ``[CLS, patch_1 .. patch_P, prompt_1 .. prompt_3]`` (shallow prompts, the paper's method);
- ``deep=True``: a new prompt set for every transformer block, replacing the previous block's prompt tokens
  (the B-Deep baseline; block 0's prompts are inserted as in the shallow case);
- ``shared_prompt=True``: one prompt set used for both modalities (the paper's fine-grained setup);
- the embedding is ``normalize(ln_post(x_CLS) @ proj)`` after the last block (prompt tokens are dropped).

Trainable: the prompts and every LayerNorm of the image tower (the paper). The released code
(``aneeshan95/Sketch_LVM``) freezes CLIP with a hook that only freezes parameters exposed as ``.weight`` /
``.bias`` of non-LayerNorm modules, which leaves trainable, at lr 1e-6, everything else: the attention
QKV projections (``in_proj_weight``, ``in_proj_bias``), ``class_embedding``, ``positional_embedding`` and the
output projection ``proj``. ``train_qkv_and_embeddings=True`` reproduces exactly that set (default off).

The text tower is used once, at construction: the embeddings of ``"a photo of a [class]"`` for the seen
classes are computed without gradient, L2-normalised and cached (a non-persistent buffer, recomputed when the
model is rebuilt). The logit scale is CLIP's ``exp(logit_scale)`` (clamped at 100 as in CLIP), frozen.

Losses (formulas in each function's docstring; all distances are cosine, ``d(x, y) = 1 - cos(x, y)``):

- ``triplet``: :func:`sbir.models.losses.cosine_triplet_loss`, margin 0.2, (sketch, positive photo, negative photo);
- ``classification``: :func:`text_classification_loss` of sketch, positive and negative photo features
  against the cached text embeddings;
- ``patch_shuffle`` (fine-grained): :func:`patch_shuffle_loss` on grid-shuffled sketch / paired photo;
- ``divergence`` (fine-grained): :func:`f_divergence_uniformity_loss` of the per-category mean sketch-photo
  distances.

The paper gives no code for the last two: they are designs from its description (see the functions).

Departures from the released code (each an option; the default follows the paper; docs/methods.md):

- trainable set: LayerNorms only, not the released hook's accidental set (``train_qkv_and_embeddings``);
- the classification loss: the paper's; the released code trains with the triplet loss only
  (``loss_weights={"classification": 0}`` gives the released objective);
- deep prompts (B-Deep), the shared prompt, the patch-shuffle and divergence losses: not in the released code.

Training batches (see :mod:`sbir.train`) are dicts with ``sketch``, ``positive``, ``negative`` (images
``[B, 3, H, W]``, CLIP-normalised), ``sketch_label`` (class ids indexing ``class_names``), optionally
``negative_label`` and, fine-grained, ``paired`` (the sketch's own photo; defaults to ``positive``, which the
fine-grained :class:`sbir.train.sampling.PairSampler` already makes the paired photo).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbir.models.backbones import Backbone
from sbir.models.base import MODALITIES, RetrievalModel, check_modality
from sbir.models.losses import cosine_triplet_loss, pairwise_distance
from sbir.models.registry import register_method

Modality = Literal["sketch", "photo"]
Divergence = Literal["kl", "reverse_kl", "chi2", "hellinger"]

PROMPT_TOKENS = 3
TEXT_TEMPLATE = "a photo of a {}"
MAX_LOGIT_SCALE = 100.0
LOSS_TERMS = ("triplet", "classification", "patch_shuffle", "divergence")
DIVERGENCES = ("kl", "reverse_kl", "chi2", "hellinger")


# ---------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------

def text_classification_loss(features: Tensor, text_embeddings: Tensor, labels: Tensor,
                             logit_scale: float | Tensor) -> Tensor:
    """Cross-entropy of image features classified against class text embeddings (CLIP zero-shot head).

    ``logits[i, c] = s · cos(f_i, t_c)``, ``loss = mean_i -log softmax(logits_i)[y_i]`` with ``s`` CLIP's
    logit scale, ``f`` ``[B, D]`` features, ``t`` ``[C, D]`` text embeddings, ``y`` ``[B]`` indices into ``t``.
    """
    logits = logit_scale * F.normalize(features, dim=-1) @ F.normalize(text_embeddings, dim=-1).T
    return F.cross_entropy(logits, labels)


def split_patches(images: Tensor, grid: int) -> Tensor:
    """``[B, C, H, W]`` → ``[B, grid², C, H/grid, W/grid]``: the blocks of a ``grid x grid`` split, row-major."""
    batch, channels, height, width = images.shape
    if height % grid or width % grid:
        raise ValueError(f"a {height}x{width} image does not split into a {grid}x{grid} grid of equal blocks")
    h, w = height // grid, width // grid
    blocks = images.reshape(batch, channels, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(batch, grid * grid, channels, h, w)


def merge_patches(patches: Tensor, grid: int) -> Tensor:
    """Inverse of :func:`split_patches`: ``[B, grid², C, h, w]`` → ``[B, C, grid·h, grid·w]``."""
    batch, _, channels, h, w = patches.shape
    image = patches.reshape(batch, grid, grid, channels, h, w).permute(0, 3, 1, 4, 2, 5)
    return image.reshape(batch, channels, grid * h, grid * w)


def shuffle_patches(images: Tensor, permutation: Tensor, grid: int) -> Tensor:
    """Rearrange the ``grid x grid`` blocks of each image: output block ``k`` is input block ``permutation[k]``.

    ``permutation`` is ``[grid²]`` (one for the batch) or ``[B, grid²]`` (one per image), blocks numbered
    row-major. Shuffling with ``argsort(permutation)`` undoes it.
    """
    patches = split_patches(images, grid)
    index = permutation.to(images.device).expand(patches.shape[0], -1)
    index = index[:, :, None, None, None].expand_as(patches)
    return merge_patches(patches.gather(1, index), grid)


def random_permutations(batch: int, size: int, device: torch.device | None = None,
                        generator: torch.Generator | None = None) -> Tensor:
    """``[batch, size]``: one uniformly random permutation of ``range(size)`` per row (torch RNG)."""
    return torch.rand(batch, size, device=device, generator=generator).argsort(dim=1)


def different_permutations(permutation: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation per row that differs from ``permutation``'s row (needs ``size >= 2``).

    A fresh random permutation is drawn per row; where it equals the given one, the given one rolled by one
    place is used instead (a cyclic shift of a permutation of two or more elements always differs from it).
    """
    if permutation.shape[1] < 2:
        raise ValueError("a permutation of one block has no different permutation: use a grid of 2 or more")
    other = random_permutations(*permutation.shape, device=permutation.device, generator=generator)
    same = (other == permutation).all(dim=1)
    other[same] = permutation[same].roll(1, dims=1)
    return other


def patch_shuffle_loss(sketch_shuffled: Tensor, photo_same_shuffle: Tensor, photo_other_shuffle: Tensor,
                       margin: float = 0.2) -> Tensor:
    """Patch-shuffling loss (paper, no released code; this is the design).

    The anchor sketch ``s`` and its paired photo ``p`` are cut into a ``g x g`` grid of blocks
    (:func:`shuffle_patches`); ``π`` and ``π' ≠ π`` are random block permutations. Shuffled with the same
    permutation the two still correspond block for block, so they must match; shuffled differently they must
    not. With ``f`` the (prompted) embeddings:

        ``loss = mean_i [ d(f(π_i s_i), f(π_i p_i)) - d(f(π_i s_i), f(π'_i p_i)) + margin ]_+``,
        ``d(x, y) = 1 - cos(x, y)``

    i.e. the cosine triplet loss with the same-permutation photo as positive, the other one as negative.
    Arguments are the three embeddings ``[B, D]``.
    """
    return cosine_triplet_loss(sketch_shuffled, photo_same_shuffle, photo_other_shuffle, margin)


def category_mean_distances(distances: Tensor, labels: Tensor) -> Tensor:
    """``[K]``: the mean of ``distances`` over the items of each of the ``K`` distinct ``labels`` (sorted)."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    count = classes.numel()
    sums = distances.new_zeros(count).index_add(0, inverse, distances)
    sizes = torch.bincount(inverse, minlength=count).to(distances.dtype)
    return sums / sizes


def f_divergence_uniformity_loss(distances: Tensor, labels: Tensor, divergence: Divergence = "kl",
                                 temperature: float = 1.0) -> Tensor:
    """f-divergence between the distribution of sketch-photo distances over categories and the uniform one.

    The paper asks the relative sketch-photo separation to be uniform across categories and gives no code;
    this is the design. For the ``K`` categories present in the batch, with ``d_i`` the distance of sketch
    ``i`` to its positive photo and ``y_i`` its category:

        ``d̄_c = mean_{i: y_i = c} d_i``,   ``p = softmax(-d̄ / τ)``,   ``u_c = 1 / K``

    and the loss is ``D_f(p || u)``:

    - ``kl``:         ``Σ_c p_c log(p_c / u_c) = log K - H(p)``
    - ``reverse_kl``: ``Σ_c u_c log(u_c / p_c) = -log K - (1/K) Σ_c log p_c``
    - ``chi2``:       ``Σ_c (p_c - u_c)² / u_c = K Σ_c p_c² - 1`` (Pearson)
    - ``hellinger``:  ``½ Σ_c (√p_c - √u_c)² = 1 - Σ_c √(p_c / K)``

    Every one is ``>= 0`` and ``0`` exactly when all categories have the same mean distance; with fewer than
    two categories in the batch the loss is 0. ``τ`` (default 1) sets how strongly distance gaps count.
    """
    means = category_mean_distances(distances, labels)
    count = means.shape[0]
    if count < 2:
        return distances.sum() * 0.0
    log_p = F.log_softmax(-means / temperature, dim=0)
    p = log_p.exp()
    log_k = torch.log(torch.tensor(float(count), dtype=p.dtype, device=p.device))
    if divergence == "kl":
        return (p * (log_p + log_k)).sum()
    if divergence == "reverse_kl":
        return -log_k - log_p.mean()
    if divergence == "chi2":
        return count * (p * p).sum() - 1.0
    if divergence == "hellinger":
        return 1.0 - (p / count).sqrt().sum()
    raise ValueError(f"unknown divergence {divergence!r}: use {', '.join(DIVERGENCES)}")


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------

@register_method("clip_prompt")
class ClipPrompt(RetrievalModel):
    """Frozen CLIP image tower with learned visual prompts (see the module docstring).

    Args:
        backbone: an open_clip backbone of :func:`sbir.models.backbones.create_backbone` (``"ViT-B-32"``):
            a ViT image tower pooled by its class token, with ``encode_text``. Its parameters are frozen here
            (and the LayerNorms of the image tower unfrozen): the backbone is used in place, not copied.
        class_names: the names that the class ids of a batch index (all classes of the dataset, as the shard
            manifest's ``classes``); ``_`` reads as a space.
        seen_classes: the classes the text classifier chooses among (the training classes); default: all
            ``class_names``. A batch holding another class is refused.
        text_embeddings: ``[S, D]`` precomputed text embeddings of the seen classes (in ``seen_classes`` order,
            or indexed by class id directly when no ``class_names`` are given), instead of encoding names.
        prompt_tokens: prompt tokens per set (3).
        deep: a prompt set per block (B-Deep) instead of one before ``ln_pre``.
        fine_grained: positives are the sketch's paired photo; adds the patch-shuffle and divergence losses.
        shared_prompt: one prompt for both modalities; ``None`` means ``fine_grained`` (the paper's setups).
        train_qkv_and_embeddings: also train what the released code trains by accident (QKV projections,
            class and positional embeddings, output projection of the image tower).
        margin: triplet margin (cosine distance), also used by the patch-shuffle loss.
        loss_weights: weights of ``triplet``, ``classification``, ``patch_shuffle``, ``divergence``; a term
            with weight 0 is not computed. Defaults: 1 each, the fine-grained terms 0 unless ``fine_grained``
            (a choice; docs/methods.md).
        shuffle_grid: blocks per side of the patch-shuffle split (2 → 2x2). Blocks need not align with the
            ViT patches.
        divergence, divergence_temperature: see :func:`f_divergence_uniformity_loss`.
        text_template: the class prompt, ``"a photo of a {}"``.
        prompt_init_std: prompts start as ``N(0, std²)``; 1 as in the released code (``torch.randn``).
    """

    def __init__(self, backbone: Backbone, class_names: Sequence[str] | None = None,
                 seen_classes: Sequence[str] | None = None, text_embeddings: Tensor | None = None,
                 prompt_tokens: int = PROMPT_TOKENS, deep: bool = False, fine_grained: bool = False,
                 shared_prompt: bool | None = None, train_qkv_and_embeddings: bool = False, margin: float = 0.2,
                 loss_weights: dict[str, float] | None = None, shuffle_grid: int = 2,
                 divergence: Divergence = "kl", divergence_temperature: float = 1.0,
                 text_template: str = TEXT_TEMPLATE, prompt_init_std: float = 1.0):
        super().__init__(backbone)
        visual = getattr(backbone, "visual", None)
        if visual is None or not hasattr(backbone, "encode_text"):
            raise ValueError(f"clip_prompt needs an open_clip CLIP backbone (ViT-B-32), not {backbone.name!r}")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("clip_prompt needs a CLIP ViT image tower pooled by its class token")
        self.deep, self.fine_grained = deep, fine_grained
        self.shared_prompt = fine_grained if shared_prompt is None else shared_prompt
        self.train_qkv_and_embeddings = train_qkv_and_embeddings
        self.prompt_tokens, self.margin, self.shuffle_grid = prompt_tokens, margin, shuffle_grid
        self.divergence, self.divergence_temperature = divergence, divergence_temperature
        self.loss_weights = self._resolve_weights(loss_weights, fine_grained)
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}: use {', '.join(DIVERGENCES)}")
        if self.loss_weights["patch_shuffle"] and shuffle_grid < 2:
            raise ValueError("the patch-shuffle loss needs a grid of at least 2x2 blocks")

        width = visual.class_embedding.shape[-1]
        depth = len(visual.transformer.resblocks) if deep else 1
        names = ("shared",) if self.shared_prompt else MODALITIES
        self.prompts = nn.ParameterDict({
            name: nn.Parameter(prompt_init_std * torch.randn(depth, prompt_tokens, width)) for name in names})

        self._freeze(train_qkv_and_embeddings)
        logit_scale = backbone.clip.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE).reshape(())
        self.register_buffer("logit_scale", logit_scale, persistent=False)
        self._set_text_classifier(class_names, seen_classes, text_embeddings, text_template)
        if self.loss_weights["classification"] and self.text_embeddings is None:
            raise ValueError("the classification loss needs class_names (or text_embeddings); "
                             "set loss_weights={'classification': 0} to train without it")

    def _set_text_classifier(self, class_names: Sequence[str] | None, seen_classes: Sequence[str] | None,
                             text_embeddings: Tensor | None, template: str) -> None:
        """Cache the seen classes' text embeddings and the map class id → their row (-1: not a seen class)."""
        seen = list(class_names if seen_classes is None else seen_classes) if class_names is not None else None
        if text_embeddings is None and seen is not None:
            text_embeddings = encode_class_texts(self.backbone, seen, template)
        rows = None
        if class_names is not None:
            unknown = set(seen) - set(class_names)
            if unknown:
                raise ValueError(f"seen classes {sorted(unknown)} are not in class_names")
            row_of = {name: row for row, name in enumerate(seen)}
            rows = torch.tensor([row_of.get(name, -1) for name in class_names])
            if text_embeddings is not None and text_embeddings.shape[0] != len(seen):
                raise ValueError(f"{text_embeddings.shape[0]} text embeddings for {len(seen)} seen classes")
        self.register_buffer("text_embeddings", None if text_embeddings is None
                             else F.normalize(text_embeddings.detach().float(), dim=-1), persistent=False)
        self.register_buffer("text_rows", rows, persistent=False)

    @staticmethod
    def _resolve_weights(loss_weights: dict[str, float] | None, fine_grained: bool) -> dict[str, float]:
        weights = {"triplet": 1.0, "classification": 1.0, "patch_shuffle": 1.0 if fine_grained else 0.0,
                   "divergence": 1.0 if fine_grained else 0.0}
        unknown = set(loss_weights or {}) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}: use {', '.join(LOSS_TERMS)}")
        weights.update(loss_weights or {})
        if not any(weights.values()):
            raise ValueError("every loss weight is 0: nothing to train")
        return weights

    def _freeze(self, train_qkv_and_embeddings: bool) -> None:
        """Everything frozen but the image tower's LayerNorms; with the switch, the released code's accidental set.

        The released freeze hook calls ``requires_grad_(False)`` on ``m.weight`` and ``m.bias`` of every
        non-LayerNorm module ``m``; a parameter under any other name stays trainable. That rule is applied
        here verbatim to the image tower (for ViT-B/32: ``in_proj_weight``, ``in_proj_bias``,
        ``class_embedding``, ``positional_embedding``, ``proj``). The hook leaves text-tower parameters
        trainable too, but they get no gradient there (the released loss never uses text) nor here (text
        embeddings are cached), so they stay frozen.
        """
        self.backbone.requires_grad_(False)
        for module in self.backbone.visual.modules():
            is_norm = isinstance(module, nn.LayerNorm)
            for name, parameter in module.named_parameters(recurse=False):
                released_leaves_it = name not in ("weight", "bias")
                parameter.requires_grad_(is_norm or (train_qkv_and_embeddings and released_leaves_it))

    # -- encoding -----------------------------------------------------------------------------------------

    def prompt(self, modality: Modality) -> Tensor:
        """``[depth, prompt_tokens, width]``: the prompt set used for ``modality``."""
        check_modality(modality)
        return self.prompts["shared" if self.shared_prompt else modality]

    def embed(self, images: Tensor, modality: Modality) -> Tensor:
        """L2-normalised ``[B, embed_dim]`` features of ``images`` encoded with ``modality``'s prompts."""
        return F.normalize(self.encode(images, self.prompt(modality)), dim=-1)

    def encode(self, images: Tensor, prompt: Tensor) -> Tensor:
        """The image tower's forward with prompts; unnormalised ``[B, embed_dim]``.

        ``[CLS, patches] + pos`` → append ``prompt[0]`` → ``ln_pre`` → blocks (deep: before block ``k > 0``
        the last ``prompt_tokens`` tokens are replaced by ``prompt[k]``) → ``ln_post(x_CLS) @ proj``.
        Patch dropout (off in CLIP) is not applied.
        """
        backbone, visual = self.backbone, self.backbone.visual
        x = backbone.add_cls_and_position(backbone.patchify(images))
        x = visual.ln_pre(torch.cat([x, prompt[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1))
        batch_first = getattr(visual.transformer, "batch_first", True)
        for index, block in enumerate(visual.transformer.resblocks):
            if index > 0 and self.deep:
                kept = x[:, :x.shape[1] - self.prompt_tokens]
                x = torch.cat([kept, prompt[index].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        return backbone.pool(visual.ln_post(x[:, :1]))

    # -- training -----------------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss(batch)

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(total, parts)``: ``total = Σ_term weight_term · term`` over the terms with non-zero weight;
        ``parts`` holds the unweighted terms, detached. Batch keys: see the module docstring.
        """
        weights = self.loss_weights
        sketch_images = batch["sketch"]
        positive_images = batch["paired"] if self.fine_grained and "paired" in batch else batch["positive"]
        photo_images = [positive_images, batch["negative"]]
        sketch_inputs = [sketch_images]
        if weights["patch_shuffle"]:
            grid = self.shuffle_grid
            same = random_permutations(sketch_images.shape[0], grid * grid, device=sketch_images.device)
            other = different_permutations(same)
            sketch_inputs.append(shuffle_patches(sketch_images, same, grid))
            photo_images += [shuffle_patches(positive_images, same, grid),
                             shuffle_patches(positive_images, other, grid)]
        sketch_features = self.embed(torch.cat(sketch_inputs), "sketch").chunk(len(sketch_inputs))
        photo_features = self.embed(torch.cat(photo_images), "photo").chunk(len(photo_images))
        sketch, positive, negative = sketch_features[0], photo_features[0], photo_features[1]

        terms: dict[str, Tensor] = {}
        if weights["triplet"]:
            terms["triplet"] = cosine_triplet_loss(sketch, positive, negative, self.margin)
        if weights["classification"]:
            terms["classification"] = self._classification(sketch, positive, negative, batch)
        if weights["patch_shuffle"]:
            terms["patch_shuffle"] = patch_shuffle_loss(sketch_features[1], photo_features[2], photo_features[3],
                                                        self.margin)
        if weights["divergence"]:
            distances = pairwise_distance(sketch, positive, "cosine")
            terms["divergence"] = f_divergence_uniformity_loss(distances, batch["sketch_label"], self.divergence,
                                                               self.divergence_temperature)
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    def _classification(self, sketch: Tensor, positive: Tensor, negative: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Mean of the text-classification losses of sketches, positive photos and (when labelled) negatives.

        The positive photo has the sketch's class (category level) or is its paired photo (fine-grained).
        """
        text, scale, labels = self.text_embeddings, self.logit_scale, self._text_rows(batch["sketch_label"])
        losses = [text_classification_loss(sketch, text, labels, scale),
                  text_classification_loss(positive, text, labels, scale)]
        if "negative_label" in batch:
            losses.append(text_classification_loss(negative, text, self._text_rows(batch["negative_label"]), scale))
        return torch.stack(losses).mean()

    def _text_rows(self, labels: Tensor) -> Tensor:
        if self.text_rows is None:
            return labels
        rows = self.text_rows[labels]
        if bool((rows < 0).any()):
            raise ValueError("a training batch holds a class outside seen_classes: the text classifier has no row "
                             "for it")
        return rows

    def param_groups(self, lr_prompts: float = 1e-4, lr_other: float = 1e-6) -> list[dict]:
        """Optimiser groups: the prompts at ``lr_prompts``, every other trainable parameter at ``lr_other``."""
        prompt_ids = {id(p) for p in self.prompts.parameters()}
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in prompt_ids]
        groups = [{"params": list(self.prompts.parameters()), "lr": lr_prompts, "name": "prompts"}]
        if other:
            groups.append({"params": other, "lr": lr_other, "name": "other"})
        return groups

    def make_optimizer(self, lr_prompts: float = 1e-4, lr_other: float = 1e-6) -> torch.optim.Adam:
        """Adam over :meth:`param_groups` (the reference optimiser)."""
        return torch.optim.Adam(self.param_groups(lr_prompts, lr_other))

    def extra_repr(self) -> str:
        depth = "deep" if self.deep else "shallow"
        sets = "shared" if self.shared_prompt else "sketch+photo"
        return (f"prompts={sets} {depth} x{self.prompt_tokens}, fine_grained={self.fine_grained}, "
                f"train_qkv_and_embeddings={self.train_qkv_and_embeddings}, loss_weights={self.loss_weights}")


@torch.no_grad()
def encode_class_texts(backbone: Backbone, class_names: Sequence[str], template: str = TEXT_TEMPLATE) -> Tensor:
    """``[C, D]`` L2-normalised text embeddings of ``template.format(name)`` (``_`` in names read as spaces)."""
    texts = [template.format(name.replace("_", " ")) for name in class_names]
    return F.normalize(backbone.encode_text(texts).float(), dim=-1)
