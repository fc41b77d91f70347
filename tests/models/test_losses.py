"""Losses: hand-computed values on small tensors (arithmetic in the comments) and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch

from sbir.models.losses import (
    RelationMSELoss,
    TripletLoss,
    ZSELoss,
    balanced_relation_mse_loss,
    cosine_triplet_loss,
    pairwise_distance,
    ranking_distillation_loss,
    relation_mse_loss,
    triplet_margin_loss,
    zse_loss,
)

# Two triplets in 2-D.
ANCHOR = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
POSITIVE = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
NEGATIVE = torch.tensor([[0.0, 1.0], [4.0, 4.0]])


def test_l2_triplet_by_hand():
    # row 0: d(a,p) = |(3,4)| = 5, d(a,n) = |(0,1)| = 1 -> [5 - 1 + 1]_+ = 5
    # row 1: d(a,p) = |(0,1)| = 1, d(a,n) = |(3,4)| = 5 -> [1 - 5 + 1]_+ = 0
    # mean = 2.5 (the 1e-6 eps inside the norm moves it by < 1e-5)
    loss = triplet_margin_loss(ANCHOR, POSITIVE, NEGATIVE, margin=1.0)
    assert loss.item() == pytest.approx(2.5, abs=1e-5)
    # margin 5: row 1 becomes [1 - 5 + 5]_+ = 1 -> mean (9 + 1) / 2 = 5
    assert triplet_margin_loss(ANCHOR, POSITIVE, NEGATIVE, margin=5.0).item() == pytest.approx(5.0, abs=1e-5)
    reference = torch.nn.TripletMarginLoss(margin=1.0, p=2)(ANCHOR, POSITIVE, NEGATIVE)
    assert loss.item() == pytest.approx(reference.item(), abs=1e-7)
    assert TripletLoss(margin=1.0)(ANCHOR, POSITIVE, NEGATIVE).item() == pytest.approx(loss.item())


def test_cosine_triplet_by_hand():
    anchor = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[1.0, 1.0]])   # cos = 1/sqrt(2) -> d = 1 - 0.70711 = 0.29289
    negative = torch.tensor([[2.0, 0.0]])   # cos = 1 -> d = 0
    # [0.29289 - 0 + 0.2]_+ = 0.49289
    expected = 1 - 1 / math.sqrt(2) + 0.2
    assert cosine_triplet_loss(anchor, positive, negative).item() == pytest.approx(expected, abs=1e-6)
    # negative (-1, 0): cos = -1 -> d = 2: [0.29289 - 2 + 0.2]_+ = 0
    assert cosine_triplet_loss(anchor, positive, torch.tensor([[-1.0, 0.0]])).item() == 0.0
    assert TripletLoss(0.2, "cosine")(anchor, positive, negative).item() == pytest.approx(expected, abs=1e-6)
    assert pairwise_distance(anchor, positive, "cosine").item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_unknown_distance_is_refused():
    with pytest.raises(ValueError, match="unknown distance"):
        TripletLoss(distance="manhattan")
    with pytest.raises(ValueError, match="unknown distance"):
        pairwise_distance(ANCHOR, POSITIVE, "manhattan")


def test_relation_mse_by_hand():
    positive = torch.tensor([0.99, 0.49])  # errors 0, -0.5   -> squares 0, 0.25
    negative = torch.tensor([0.01, 0.51])  # errors 0, +0.5   -> squares 0, 0.25
    # mean over the 4 scores = 0.5 / 4 = 0.125
    assert relation_mse_loss(positive, negative).item() == pytest.approx(0.125, abs=1e-7)
    # [B, 1] shaped scores (as the relation network returns them) give the same value
    assert relation_mse_loss(positive[:, None], negative[:, None]).item() == pytest.approx(0.125, abs=1e-7)
    assert RelationMSELoss()(positive, negative).item() == pytest.approx(0.125, abs=1e-7)


def test_balanced_relation_mse_by_hand():
    scores = torch.tensor([[0.89, 0.21, 0.01],
                           [0.11, 0.49, 0.99]])
    same = torch.tensor([[True, False, False],
                         [False, True, True]])
    # positives 0.89, 0.49, 0.99: squares 0.01, 0.25, 0 -> mean 0.26 / 3
    # negatives 0.21, 0.01, 0.11: squares 0.04, 0, 0.01 -> mean 0.05 / 3
    # (0.26 / 3 + 0.05 / 3) / 2 = 0.31 / 6 (equal counts: the same as a plain mean, so an unequal batch next)
    assert balanced_relation_mse_loss(scores, same).item() == pytest.approx(0.31 / 6, abs=1e-6)
    # one positive (0.49: 0.25) and three negatives (0.21, 0.01, 0.11: 0.05 / 3): (0.25 + 0.05 / 3) / 2
    one = torch.tensor([[0.49, 0.21, 0.01, 0.11]])
    mask = torch.tensor([[True, False, False, False]])
    assert balanced_relation_mse_loss(one, mask).item() == pytest.approx((0.25 + 0.05 / 3) / 2, abs=1e-6)
    plain = relation_mse_loss(one[:, :1], one[:, 1:]).item()  # (0.25 + 0.05) / 4
    assert balanced_relation_mse_loss(one, mask).item() != pytest.approx(plain)
    # only negatives: their mean alone (0.05 / 3)
    assert balanced_relation_mse_loss(one[:, 1:], mask[:, 1:]).item() == pytest.approx(0.05 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="no relation score"):
        balanced_relation_mse_loss(torch.empty(0), torch.empty(0, dtype=torch.bool))


def test_ranking_distillation_by_hand():
    # teacher logits (0, ln 3) -> p = (1/4, 3/4); student cosines (0, 0) -> q = (1/2, 1/2)
    # KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    student = torch.zeros(1, 2, requires_grad=True)
    loss = ranking_distillation_loss(student, teacher, temperature=0.1)
    assert loss.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    # a student equal to the teacher times the temperature, plus any constant per row: KL 0
    twice = torch.tensor([[0.0, math.log(3.0)], [1.0, -2.0]])
    assert ranking_distillation_loss(0.2 * twice + torch.tensor([[0.3], [-0.7]]), twice, 0.2).item() == \
        pytest.approx(0.0, abs=1e-6)
    # the mean over rows: the second row alone contributes its own KL, the zero row nothing
    rows = ranking_distillation_loss(torch.zeros(2, 2), torch.cat([teacher, torch.zeros(1, 2)]), 0.1)
    assert rows.item() == pytest.approx(loss.item() / 2, abs=1e-6)
    # the gradient reaches the student, never the teacher; d/ds_j = (q_j - p_j) / T = (1/2 - 1/4) / 0.1 = 2.5
    teacher_leaf = teacher.clone().requires_grad_(True)
    ranking_distillation_loss(student, teacher_leaf, 0.1).backward()
    assert teacher_leaf.grad is None
    assert torch.allclose(student.grad, torch.tensor([[2.5, -2.5]]), atol=1e-5)
    with pytest.raises(ValueError, match="matching"):
        ranking_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="temperature"):
        ranking_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        ranking_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), teacher_temperature=0)


def test_ranking_distillation_teacher_temperature_by_hand():
    # the mutual term: teacher cosines (0, 0.1 ln 3) / 0.1 -> p = (1/4, 3/4); student logits (ln 3, 0) at T = 1
    # -> q = (3/4, 1/4); KL(p || q) = 1/4 ln(1/3) + 3/4 ln 3 = 1/2 ln 3
    teacher = torch.tensor([[0.0, 0.1 * math.log(3.0)]])
    student = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    loss = ranking_distillation_loss(student, teacher, temperature=1.0, teacher_temperature=0.1)
    assert loss.item() == pytest.approx(0.5 * math.log(3.0), abs=1e-6)
    loss.backward()  # d/ds_j = q_j - p_j
    assert torch.allclose(student.grad, torch.tensor([[0.5, -0.5]]), atol=1e-6)


def test_zse_total_by_hand():
    relation_positive = torch.tensor([0.49, 0.99])  # squares 0.25, 0
    relation_negative = torch.tensor([0.01, 0.51])  # squares 0, 0.25  -> MSE = 0.5 / 4 = 0.125
    # triplet = 2.5 (test_l2_triplet_by_hand) -> total = 2 * 2.5 + 4 * 0.125 = 5.5
    total, parts = zse_loss(ANCHOR, POSITIVE, NEGATIVE, relation_positive, relation_negative)
    assert total.item() == pytest.approx(5.5, abs=1e-5)
    assert parts["triplet"].item() == pytest.approx(2.5, abs=1e-5)
    assert parts["relation"].item() == pytest.approx(0.125, abs=1e-6)
    module_total, _ = ZSELoss()(ANCHOR, POSITIVE, NEGATIVE, relation_positive, relation_negative)
    assert module_total.item() == pytest.approx(5.5, abs=1e-5)


def test_gradients_flow_to_every_input():
    torch.manual_seed(0)
    sketch, positive, negative = (torch.randn(4, 8, requires_grad=True) for _ in range(3))
    relation_positive = torch.rand(4, requires_grad=True)
    relation_negative = torch.rand(4, requires_grad=True)
    total, _ = zse_loss(sketch, positive, negative, relation_positive, relation_negative, margin=100.0)
    total.backward()
    for tensor in (sketch, positive, negative, relation_positive, relation_negative):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0
    # d/dp of 4 * mean((p - 0.99)^2 over 8 scores) = 4 * 2 (p - 0.99) / 8 = (p - 0.99)
    assert torch.allclose(relation_positive.grad, relation_positive.detach() - 0.99, atol=1e-6)


def test_cosine_triplet_gradient_and_zero_distance_is_finite():
    anchor = torch.tensor([[1.0, 2.0]], requires_grad=True)
    cosine_triplet_loss(anchor, torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), margin=2.0).backward()
    assert torch.isfinite(anchor.grad).all() and anchor.grad.abs().sum() > 0
    same = torch.tensor([[1.0, 2.0]], requires_grad=True)
    triplet_margin_loss(same, same.detach().clone(), torch.tensor([[5.0, 5.0]]), margin=10.0).backward()
    assert torch.isfinite(same.grad).all()
