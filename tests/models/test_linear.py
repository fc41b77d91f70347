"""``linear`` (B-Lin): shapes, the frozen backbone, the image / cached-feature paths, the loss, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sbir.errors import SbirError
from sbir.models import create_model, method_names
from sbir.models.linear import LinearProjection, projection_head
from tests import helpers
from tests.helpers import TinyCNN


def cnn() -> TinyCNN:
    """One stride-16 conv with batch norm: 64x64 images to 4x4 tokens of 12, pooled by the mean."""
    return TinyCNN(size=64, dim=12, batch_norm=True)


def images64(n: int, seed: int = 0) -> torch.Tensor:
    return helpers.images(n, 64, seed)


def test_registered_and_shapes():
    assert "linear" in method_names()
    model = create_model("linear", cnn(), out_dim=8)
    assert isinstance(model, LinearProjection) and model.embed_dim == 8
    embedding = model.embed(images64(3), "sketch")
    assert embedding.shape == (3, 8) and torch.allclose(embedding.norm(dim=1), torch.ones(3))
    assert model.embed(torch.randn(5, 12), "photo").shape == (5, 8)
    assert model.pair_features(images64(2), "photo").shape == (2, 8)
    with pytest.raises(SbirError, match="bad options"):
        create_model("linear", cnn(), heads="linear")
    with pytest.raises(ValueError, match="modality"):
        model.embed(images64(1), "drawing")


def test_a_square_linear_head_starts_as_the_frozen_baseline():
    model = LinearProjection(cnn())
    x = images64(4)
    with torch.no_grad():
        frozen = F.normalize(model.backbone(x), dim=-1)
    assert torch.allclose(model.embed(x, "sketch"), frozen, atol=1e-6)
    assert torch.allclose(model.embed(x, "photo"), frozen, atol=1e-6)


def test_mlp_head_option():
    head = projection_head("mlp", 12, 6, hidden_dim=20)
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [(12, 20), (20, 6)]
    model = LinearProjection(cnn(), head="mlp", out_dim=6)
    assert model.embed(images64(2), "sketch").shape == (2, 6)
    assert model.heads["sketch"] is not model.heads["photo"]
    with pytest.raises(ValueError, match="unknown head"):
        projection_head("conv", 12, 6)


def test_image_and_cached_feature_paths_agree():
    model = LinearProjection(cnn(), out_dim=8)
    x = images64(3)
    cached = model.features(x)
    assert cached.shape == (3, 12) and not cached.requires_grad
    assert torch.allclose(model.embed(x, "photo"), model.embed_features(cached, "photo"), atol=1e-6)
    assert torch.allclose(model.embed(cached.half(), "photo"), model.embed(cached, "photo"), atol=1e-2)


def test_gradient_reaches_the_heads_only_and_the_backbone_stays_in_eval_mode():
    model = LinearProjection(cnn(), out_dim=8)
    model.train()
    assert model.training and not model.backbone.training
    running_mean = model.backbone.conv[1].running_mean.clone()
    loss, parts = model({"sketch": images64(4), "positive": images64(4, 1), "negative": images64(4, 2)})
    loss.backward()
    assert set(parts) == {"triplet"}
    backbone, heads = list(model.backbone.parameters()), list(model.heads.parameters())
    assert len(backbone) == len(heads) == 4  # conv and batch-norm weight and bias; two linear heads
    assert all(p.grad is None and not p.requires_grad for p in backbone)
    assert all(p.grad is not None for p in heads)
    assert torch.equal(model.backbone.conv[1].running_mean, running_mean)  # no batch-norm update


def test_loss_by_hand():
    model = LinearProjection(cnn())  # identity heads: embeddings = normalised features
    sketch = torch.zeros(1, 12)
    sketch[0, 0] = 1.0                    # e0
    positive = torch.zeros(1, 12)
    positive[0, :2] = 1.0                 # (e0 + e1): cos = 1/sqrt(2) -> d = 1 - 0.70711 = 0.29289
    negative = torch.zeros(1, 12)
    negative[0, 1] = 1.0                  # e1: cos = 0 -> d = 1
    # [0.29289 - 1 + 0.2]_+ = 0; with margin 1: [0.29289 - 1 + 1]_+ = 0.29289
    assert model.loss(sketch, positive, negative)[0].item() == pytest.approx(0.0)
    model.margin = 1.0
    assert model.loss(sketch, positive, negative)[0].item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    l2 = LinearProjection(cnn(), distance="l2", margin=1.0)
    # unit vectors: |e0 - (e0+e1)/sqrt(2)| = sqrt(2 - sqrt(2)) = 0.76537, |e0 - e1| = sqrt(2) = 1.41421
    # [0.76537 - 1.41421 + 1]_+ = 0.35115
    expected = math.sqrt(2 - math.sqrt(2)) - math.sqrt(2) + 1
    assert l2.loss(sketch, positive, negative)[0].item() == pytest.approx(expected, abs=1e-5)


def test_training_on_cached_features_lowers_the_loss():
    """Two classes; photos are the sketches' class centres seen through a fixed rotation-like map."""
    torch.manual_seed(0)
    centres = torch.randn(2, 12)
    photo_map = torch.linalg.qr(torch.randn(12, 12))[0]

    def draw(labels: torch.Tensor, photo: bool) -> torch.Tensor:
        x = centres[labels] + 0.5 * torch.randn(len(labels), 12)
        return x @ photo_map if photo else x

    model = LinearProjection(cnn(), distance="l2", margin=1.0)
    optimizer = torch.optim.Adam(model.heads.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        labels = torch.randint(0, 2, (32,))
        loss, _ = model({"sketch": draw(labels, False), "positive": draw(labels, True),
                         "negative": draw(1 - labels, True)})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert not torch.equal(model.heads["sketch"].weight, model.heads["photo"].weight)


def test_on_the_real_efficientnet_lite0_layout():
    """The registry builds it on ``tf_efficientnet_lite0`` (random weights here): 1280-d pooled features."""
    model = create_model("linear", "tf_efficientnet_lite0", random_init=True, head="mlp", out_dim=16,
                         hidden_dim=32)
    assert model.feature_dim == 1280 and model.image_config.size == 224
    with torch.no_grad():
        assert model.embed(torch.randn(1, 3, 224, 224), "sketch").shape == (1, 16)
