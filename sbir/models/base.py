"""What every retrieval method provides.

A method is an ``nn.Module`` built around a :class:`~sbir.models.backbones.Backbone`:

- ``embed(images, modality) -> [B, D]``: one L2-normalised vector per image; ``modality`` is ``"sketch"``
  or ``"photo"`` (methods with separate branches, heads or prompts per modality pick theirs). Retrieval
  by cosine similarity of these vectors is every method's fast mode (ZSE-SBIR's ``token`` mode).
- ``image_config``: the input the model expects (the backbone's, see ``sbir.retrieval.embed``).
- optionally, a pairwise relation score for methods that compare a sketch with a photo jointly
  (ZSE-SBIR's ``relation`` mode), in two steps so that the per-image work is done once per image:

  - ``pair_features(images, modality) -> Tensor``: what the pair scorer needs of one image (e.g. its
    backbone tokens), computed once per image and kept for all of its pairs;
  - ``score_pairs(sketch_features [S, ...], photo_features [P, ...]) -> [S, P]``: a score per pair,
    higher = more similar. ``sbir.retrieval.evaluate.pairwise_scores`` turns it into the block-wise score
    function of the metrics, and a ``rerank`` mode scores only a shortlist with it.

  ``supports_pairs`` tells whether a model has them. The base class gives cosine similarity of the
  embeddings as the pairwise score, so the pairwise path is exercised (and must agree with the cosine
  path) for every model.
- trainable methods add ``forward(batch) -> (loss, parts)`` for ``sbir.train``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.data.images import ImageConfig
from sbir.models.backbones import Backbone

MODALITIES = ("sketch", "photo")


class RetrievalModel(nn.Module):
    """Base class of the methods (see the module docstring)."""

    method: str = ""
    #: True when ``score_pairs`` is a relation of its own, not the cosine of the embeddings
    supports_pairs: bool = False

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    @property
    def image_config(self) -> ImageConfig:
        return self.backbone.image_config

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def embed(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        raise NotImplementedError

    def pair_features(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        return self.embed(images, modality)

    def score_pairs(self, sketch_features: torch.Tensor, photo_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(sketch_features.float(), dim=-1) @ F.normalize(photo_features.float(), dim=-1).T


def check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
