"""``linear`` (B-Lin): a frozen backbone and a trained projection head per modality.

The "B-Lin" baseline of CLIP for all things ZS-SBIR (Sain et al., CVPR 2023) on any backbone: the
backbone's pooled feature (``Backbone.forward``, never trained, kept in eval mode) goes through the sketch or
the photo head — ``head="linear"`` (one ``Linear``) or ``head="mlp"`` (``Linear → ReLU → Linear``) — and is
L2-normalised; retrieval is by cosine. Choices (the paper gives no details of its linear probe):

- loss: triplet on the cosine distance, margin 0.2 (the loss the CLIP paper trains all its variants with);
  ``distance="l2", margin=1.0`` gives ZSE-SBIR's triplet instead (:func:`sbir.models.losses.triplet_margin_loss`);
- a square linear head starts as the identity, so that before training ``linear`` equals ``frozen`` and
  training can only move away from the baseline it is compared with; other heads use PyTorch's default init.

Training runs on images or, much faster, on cached pooled features: ``embed`` and ``forward`` take either
(``[B, 3, H, W]`` images, or ``[B, D]`` features, told apart by their number of dimensions).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbir.models.backbones import Backbone
from sbir.models.base import MODALITIES, RetrievalModel, check_modality
from sbir.models.losses import Distance, triplet_margin_loss
from sbir.models.registry import register_method

HeadKind = Literal["linear", "mlp"]


def projection_head(kind: HeadKind, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> nn.Module:
    """``Linear(in, out)`` (identity-initialised when square), or ``Linear(in, hidden) → ReLU → Linear(hidden,
    out)`` with ``hidden`` defaulting to ``in``."""
    if kind == "linear":
        head = nn.Linear(in_dim, out_dim)
        if in_dim == out_dim:
            with torch.no_grad():
                head.weight.copy_(torch.eye(in_dim))
                head.bias.zero_()
        return head
    if kind == "mlp":
        hidden_dim = hidden_dim or in_dim
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    raise ValueError(f"unknown head {kind!r}: use 'linear' or 'mlp'")


@register_method("linear")
class LinearProjection(RetrievalModel):
    """B-Lin on ``backbone`` (see the module docstring).

    Args:
        head: ``"linear"`` or ``"mlp"``, one per modality (separate weights).
        out_dim: embedding size (default: the backbone's pooled size).
        hidden_dim: the MLP's hidden size (default: the backbone's pooled size).
        margin, distance: the triplet loss (default cosine distance, margin 0.2).
    """

    def __init__(self, backbone: Backbone, *, head: HeadKind = "linear", out_dim: int | None = None,
                 hidden_dim: int | None = None, margin: float = 0.2, distance: Distance = "cosine"):
        super().__init__(backbone)
        if distance not in ("l2", "cosine"):
            raise ValueError(f"unknown distance {distance!r}: use 'l2' or 'cosine'")
        backbone.requires_grad_(False)
        backbone.eval()
        self.feature_dim = backbone.embed_dim
        self.out_dim = out_dim or self.feature_dim
        self.head_kind = head
        self.heads = nn.ModuleDict({m: projection_head(head, self.feature_dim, self.out_dim, hidden_dim)
                                    for m in MODALITIES})
        self.margin, self.distance = margin, distance

    @property
    def embed_dim(self) -> int:
        return self.out_dim

    def train(self, mode: bool = True) -> LinearProjection:
        """Train mode for the heads; the frozen backbone stays in eval mode (batch-norm statistics, dropout)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """``[B, D]`` pooled backbone features (what a feature cache holds)."""
        return self.backbone(images)

    def embed_features(self, features: Tensor, modality: str) -> Tensor:
        """``[B, out_dim]`` L2-normalised embeddings of pooled features ``[B, D]``."""
        check_modality(modality)
        head = self.heads[modality]
        return F.normalize(head(features.to(next(head.parameters()).dtype)), dim=-1)

    def embed(self, inputs: Tensor, modality: str) -> Tensor:
        """Embeddings of images ``[B, 3, H, W]`` or of their pooled features ``[B, D]``."""
        return self.embed_features(inputs if inputs.ndim == 2 else self.features(inputs), modality)

    def loss(self, sketch: Tensor, positive: Tensor, negative: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Triplet loss of the sketch, positive-photo and negative-photo embeddings."""
        loss = triplet_margin_loss(self.embed(sketch, "sketch"), self.embed(positive, "photo"),
                                   self.embed(negative, "photo"), self.margin, self.distance)
        return loss, {"triplet": float(loss.detach())}

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Training-loop entry (:mod:`sbir.train`): ``batch`` holds ``sketch``, ``positive``, ``negative``."""
        return self.loss(batch["sketch"], batch["positive"], batch["negative"])

    def extra_repr(self) -> str:
        return f"head={self.head_kind!r}, out_dim={self.out_dim}, margin={self.margin}, distance={self.distance!r}"
