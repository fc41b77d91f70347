"""``frozen``: the backbone's pooled features as they are, L2-normalised, compared by cosine.

The no-training baseline of both papers (B-FT's starting point); it runs on any backbone. Sketches
and photos go through the same backbone with the same weights. Since nothing is trained, the backbone is
used in its inference-fused form by default (``fuse=True``: a CNN's batch norms folded into its convs,
about 1.3x faster on a CPU, equal up to float rounding; the given backbone is left unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sbir.models.backbones import Backbone
from sbir.models.base import RetrievalModel, check_modality
from sbir.models.registry import register_method


@register_method("frozen")
class FrozenModel(RetrievalModel):
    def __init__(self, backbone: Backbone, fuse: bool = True):
        super().__init__(backbone.fused_for_inference() if fuse else backbone)
        self.requires_grad_(False)
        self.eval()

    def embed(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        check_modality(modality)
        return F.normalize(self.backbone(images).float(), dim=-1)
