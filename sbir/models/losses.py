"""Training losses of the SBIR methods, one function per concept (and a module wrapping each).

Notation: ``a``, ``p``, ``n`` are ``[B, D]`` anchor (sketch), positive and negative (photo) embeddings; a
loss is the mean over the batch. ``[x]_+ = max(x, 0)``.

- :func:`triplet_margin_loss` — ``mean [d(a, p) - d(a, n) + margin]_+`` with ``d`` the L2 distance
  (ZSE-SBIR: margin 1, on the retrieval tokens) or the cosine distance ``1 - cos`` (CLIP visual prompts
  and B-Lin: margin 0.2).
- :func:`relation_mse_loss` — squared error of relation scores against 0.99 (positive pairs) and 0.01
  (negative pairs), averaged over all ``2B`` scores.
- :func:`zse_loss` — the ZSE-SBIR total ``2 · triplet(margin 1, L2) + 4 · MSE(relation)``.
- :func:`balanced_relation_mse_loss` — (not in the reference) the relation MSE over every sketch x photo
  pair of a batch, positive and negative pairs averaged separately.
- :func:`ranking_distillation_loss` — (not in the reference) KL divergence from a teacher's ranking of a
  batch's photos (no gradient) to a student's: the relation network's to the token cosine's, and for
  ``zse``'s mutual term the other way round.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Distance = Literal["l2", "cosine"]

L2_EPS = 1e-6
"""Added to ``a - b`` before the L2 norm, as ``torch.nn.TripletMarginLoss`` (used by the ZSE-SBIR code) does;
it keeps the gradient finite when two embeddings coincide."""


def pairwise_distance(x: Tensor, y: Tensor, distance: Distance = "l2") -> Tensor:
    """Row-wise distance ``[B]`` of two ``[B, D]`` tensors.

    ``l2``: ``||x - y + eps||_2`` (eps = :data:`L2_EPS`). ``cosine``: ``1 - x·y / (||x|| ||y||)``, in [0, 2].
    """
    if distance == "l2":
        return F.pairwise_distance(x, y, p=2.0, eps=L2_EPS)
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(x, y, dim=-1)
    raise ValueError(f"unknown distance {distance!r}: use 'l2' or 'cosine'")


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0,
                        distance: Distance = "l2") -> Tensor:
    """Triplet loss ``mean_i [d(a_i, p_i) - d(a_i, n_i) + margin]_+`` (see :func:`pairwise_distance`).

    With ``distance="l2"`` this equals ``torch.nn.TripletMarginLoss(margin, p=2)``, the ZSE-SBIR reference.
    """
    hinge = pairwise_distance(anchor, positive, distance) - pairwise_distance(anchor, negative, distance) + margin
    return hinge.clamp_min(0).mean()


def cosine_triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.2) -> Tensor:
    """Triplet loss on the cosine distance ``1 - cos`` (CLIP for all things ZS-SBIR: margin 0.2)."""
    return triplet_margin_loss(anchor, positive, negative, margin, distance="cosine")


def relation_mse_loss(positive_scores: Tensor, negative_scores: Tensor, positive_target: float = 0.99,
                      negative_target: float = 0.01) -> Tensor:
    """``mean over the 2B scores of (s_pos - 0.99)^2 and (s_neg - 0.01)^2``.

    The ZSE-SBIR reference regresses relation scores onto the clamped labels 1 → 0.99, 0 → 0.01 with
    ``nn.MSELoss`` over the concatenation of positive and negative pairs; scores of any shape are flattened.
    """
    positive_scores, negative_scores = positive_scores.reshape(-1), negative_scores.reshape(-1)
    scores = torch.cat([positive_scores, negative_scores])
    targets = torch.cat([torch.full_like(positive_scores, positive_target),
                         torch.full_like(negative_scores, negative_target)])
    return F.mse_loss(scores, targets)


def zse_loss(sketch: Tensor, positive: Tensor, negative: Tensor, positive_relation: Tensor,
             negative_relation: Tensor, margin: float = 1.0, triplet_weight: float = 2.0,
             relation_weight: float = 4.0) -> tuple[Tensor, dict[str, Tensor]]:
    """ZSE-SBIR loss ``2 · triplet(sketch, positive, negative; margin 1, L2) + 4 · MSE(relation; 0.99 / 0.01)``.

    ``sketch``/``positive``/``negative`` are the retrieval tokens, ``positive_relation``/``negative_relation``
    the relation scores of the (sketch, positive) and (sketch, negative) pairs. Returns the total and the
    unweighted terms ``{"triplet", "relation"}`` (tensors attached to the graph).
    """
    triplet = triplet_margin_loss(sketch, positive, negative, margin, distance="l2")
    relation = relation_mse_loss(positive_relation, negative_relation)
    total = triplet_weight * triplet + relation_weight * relation
    return total, {"triplet": triplet, "relation": relation}


def balanced_relation_mse_loss(scores: Tensor, same: Tensor, positive_target: float = 0.99,
                                negative_target: float = 0.01) -> Tensor:
    """``(mean_{same} (s - 0.99)^2 + mean_{other} (s - 0.01)^2) / 2`` over the relation scores of every pair.

    ``scores`` and ``same`` (bool: the pair's sketch and photo share a class) have one shape, e.g. ``[B, 2B]``
    for every sketch of a batch against every photo of it. The two means are taken separately because
    nearly all in-batch pairs are negatives: a plain mean over them trains the network to answer 0.01
    everywhere (seen on sketchy-mini: unseen relation mAP@all 0.08 after 50 steps). A term with no pair
    (every pair positive, or none) is left out.
    """
    scores, same = scores.reshape(-1), same.reshape(-1).to(torch.bool)
    terms = [F.mse_loss(scores[mask], torch.full_like(scores[mask], target))
             for mask, target in ((same, positive_target), (~same, negative_target)) if mask.any()]
    if not terms:
        raise ValueError("no relation score to take the loss of")
    return torch.stack(terms).mean()


def ranking_distillation_loss(student_scores: Tensor, teacher_logits: Tensor, temperature: float = 0.1,
                              teacher_temperature: float = 1.0) -> Tensor:
    """``mean_i KL(softmax(teacher_i / teacher_temperature) || softmax(student_i / temperature))`` over rows ``i``.

    Row ``i`` ranks the photos of a batch for sketch ``i``. In ``zse``'s distillation ``student_scores``
    ``[B, P]`` are token cosines and ``teacher_logits`` ``[B, P]`` the relation network's pre-sigmoid scores
    (``logit(relation)``): it trains the token embedding to order photos as the relation network does, which is
    what the ``rerank`` shortlist needs. Its mutual term swaps them (the relation logits learn the cosines'
    ranking: ``temperature=1``, ``teacher_temperature`` the cosines'). The teacher is detached here, so each
    call trains the student only.
    """
    if student_scores.shape != teacher_logits.shape or student_scores.ndim != 2:
        raise ValueError(f"student {tuple(student_scores.shape)} and teacher {tuple(teacher_logits.shape)} must be "
                         "matching [queries, photos] matrices")
    if temperature <= 0 or teacher_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got {temperature} and {teacher_temperature}")
    teacher = (teacher_logits.detach().float() / teacher_temperature).log_softmax(dim=1)
    student = (student_scores.float() / temperature).log_softmax(dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


class TripletLoss(nn.Module):
    """:func:`triplet_margin_loss` as a module (``distance`` ``"l2"`` or ``"cosine"``)."""

    def __init__(self, margin: float = 1.0, distance: Distance = "l2"):
        super().__init__()
        if distance not in ("l2", "cosine"):
            raise ValueError(f"unknown distance {distance!r}: use 'l2' or 'cosine'")
        self.margin, self.distance = margin, distance

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_margin_loss(anchor, positive, negative, self.margin, self.distance)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}"


class RelationMSELoss(nn.Module):
    """:func:`relation_mse_loss` as a module."""

    def __init__(self, positive_target: float = 0.99, negative_target: float = 0.01):
        super().__init__()
        self.positive_target, self.negative_target = positive_target, negative_target

    def forward(self, positive_scores: Tensor, negative_scores: Tensor) -> Tensor:
        return relation_mse_loss(positive_scores, negative_scores, self.positive_target, self.negative_target)


class ZSELoss(nn.Module):
    """:func:`zse_loss` as a module: ``triplet_weight · triplet + relation_weight · MSE(relation)``."""

    def __init__(self, margin: float = 1.0, triplet_weight: float = 2.0, relation_weight: float = 4.0):
        super().__init__()
        self.margin, self.triplet_weight, self.relation_weight = margin, triplet_weight, relation_weight

    def forward(self, sketch: Tensor, positive: Tensor, negative: Tensor, positive_relation: Tensor,
                negative_relation: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return zse_loss(sketch, positive, negative, positive_relation, negative_relation, self.margin,
                        self.triplet_weight, self.relation_weight)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, triplet_weight={self.triplet_weight}, relation_weight={self.relation_weight}"
