"""ZSE-SBIR: shapes of every component and mode, where gradients go, attention maps, the grid reshape,
relation scores, rerank against relation, the loss, and a few training steps on a separable toy problem.

Tiny configurations throughout: a 2-block ViT of width 32 on 112x112 images (7x7 grid), heads 4, FFN 64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sbir.errors import SbirError
from sbir.models import create_model
from sbir.models.backbones import TimmViTBackbone, TokenFeatures
from sbir.models.losses import balanced_relation_mse_loss, ranking_distillation_loss, zse_loss
from sbir.models.zse import (
    ZSESBIR,
    CrossAttention,
    CrossAttentionBranch,
    KernelRelationNetwork,
    Tokenizer,
    Tokens,
    cls_attention,
    rerank_scores,
    tokens_to_grid,
)
from tests.helpers import WIDTH, ZSE_SMALL, ZSE_SMALLER, TinyCNN, images, tiny_vit


def tiny_zse(**options) -> ZSESBIR:
    model = ZSESBIR(tiny_vit(), **{**ZSE_SMALL, "dropout": 0.0, **options})
    torch.manual_seed(1)
    return model


def head_only(dim: int = 16, **options) -> ZSESBIR:
    torch.manual_seed(0)
    return ZSESBIR(TinyCNN(dim=dim), head_only=True, **{**ZSE_SMALLER, **options})


def objective(embedding: torch.Tensor) -> torch.Tensor:
    """A scalar of the embeddings with a nonzero gradient (their plain sum is constant: the ViT's final
    LayerNorm makes each CLS token zero-mean, so the sum of its L2-normalised copy is 0)."""
    return (embedding * torch.linspace(-1, 1, embedding.shape[1])).sum()


# ------------------------------------------------------------------------------------------ components
def test_tokenizer_is_the_reference_conv_stack_and_maps_224_to_14x14():
    tokenizer = Tokenizer(48)
    convs = [m for m in tokenizer if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 64, 7, 2), (64, 128, 3, 2), (128, 256, 3, 2), (256, 48, 3, 2)]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(m, torch.nn.ReLU) for m in tokenizer) == 3
    assert tokenizer(torch.randn(1, 3, 224, 224)).shape == (1, 48, 14, 14)
    assert tokenizer(torch.randn(1, 3, 112, 112)).shape == (1, 48, 7, 7)
    vit_b32 = Tokenizer(8, patch_size=32)  # one more halving: 224 → 7, the ViT-B/32 grid
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vit_b32) == 5
    assert vit_b32(torch.randn(1, 3, 224, 224)).shape == (1, 8, 7, 7)
    with pytest.raises(ValueError, match="patch size"):
        Tokenizer(8, patch_size=8)


def test_grid_reshape_is_spatial():
    b, h, w = 2, 3, 4
    patches = torch.zeros(b, h * w, 3)
    for i in range(b):
        for r in range(h):
            for k in range(w):
                patches[i, r * w + k] = torch.tensor([r, k, i], dtype=torch.float32)
    grid = tokens_to_grid(patches, (h, w))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i in range(b):
        assert torch.equal(grid[i, 0], rows.float()) and torch.equal(grid[i, 1], cols.float())
        assert (grid[i, 2] == i).all()
    # token selection: tokens placed at their grid cells, dropped cells zero
    kept = torch.tensor([[0, 5, 11], [2, 3, 7]])
    sparse = tokens_to_grid(patches.gather(1, kept[..., None].expand(-1, -1, 3)) + 1, (h, w), kept)
    for i in range(b):
        for cell in range(h * w):
            value = sparse[i, :, cell // w, cell % w]
            expected = patches[i, cell] + 1 if cell in kept[i] else torch.zeros(3)
            assert torch.equal(value, expected)
    with pytest.raises(ValueError, match="do not fill"):
        tokens_to_grid(patches[:, :-1], (h, w))


def test_anchor_conv_sees_the_spatial_grid():
    """The conv input at [b, c, r, k] is token r * w + k's channel c (a (row, col) code, not a memory view)."""
    relation = KernelRelationNetwork(dim=3, grid=(14, 14), anchor_dim=4)
    seen = {}
    relation.anchor_conv.register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0]))
    patches = torch.zeros(2, 196, 3)
    for r in range(14):
        for k in range(14):
            patches[:, r * 14 + k] = torch.tensor([r, k, 100 * r + k], dtype=torch.float32)
    anchors = relation.anchors(patches)
    conv_input = seen["input"]
    assert conv_input.shape == (2, 3, 14, 14)
    for r in range(14):
        for k in range(14):
            assert conv_input[1, :, r, k].tolist() == [r, k, 100 * r + k]
    assert anchors.shape == (2, 49, 4)


@pytest.mark.parametrize("grid, kernel", [((14, 14), 2), ((7, 7), 1)])
def test_relation_network_reference_layout(grid, kernel):
    torch.manual_seed(0)
    relation = KernelRelationNetwork(dim=8, grid=grid, anchor_dim=16).eval()
    assert relation.anchor_conv.kernel_size == (kernel, kernel) and relation.anchor_conv.stride == (kernel, kernel)
    linears = [m for m in relation.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2401, 343), (343, 49), (49, 1)]
    sketch, photo = torch.randn(5, grid[0] * grid[1], 8), torch.randn(5, grid[0] * grid[1], 8)
    s_anchors, p_anchors = relation.anchors(sketch), relation.anchors(photo)
    assert s_anchors.shape == (5, 49, 16)
    kernel_matrix = relation.kernel_matrix(s_anchors, p_anchors)
    expected = F.cosine_similarity(s_anchors[:, :, None], p_anchors[:, None], dim=-1)
    assert kernel_matrix.shape == (5, 49, 49) and torch.allclose(kernel_matrix, expected, atol=1e-6)
    scores = relation(sketch, photo)
    assert scores.shape == (5,) and ((scores > 0) & (scores < 1)).all()
    with pytest.raises(ValueError, match="7x7 anchors"):
        KernelRelationNetwork(dim=8, grid=(4, 4))


def test_cross_attention_is_standard_and_keeps_its_maps():
    """Each branch: queries from its own tokens, keys AND values from the other modality, post-LN."""
    torch.manual_seed(0)
    module = CrossAttention(dim=16, heads=4, ffn_dim=32).eval()
    sketch, photo = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    out = module(sketch, photo)
    assert out.sketch.shape == (2, 5, 16) and out.photo.shape == (2, 7, 16)
    assert out.sketch_attention.shape == (2, 4, 5, 7) and out.photo_attention.shape == (2, 4, 7, 5)
    for maps in (out.sketch_attention, out.photo_attention):
        assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-6) and (maps >= 0).all()
    branch: CrossAttentionBranch = module.branches["sketch"]
    assert branch is not module.branches["photo"]
    q = branch.query(sketch).view(2, 5, 4, 4).transpose(1, 2)
    k = branch.key(photo).view(2, 7, 4, 4).transpose(1, 2)
    v = branch.value(photo).view(2, 7, 4, 4).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 2.0, dim=-1)  # sqrt(head dim 4) = 2
    mixed = (weights @ v).transpose(1, 2).reshape(2, 5, 16)
    x = branch.attention_norm(sketch + branch.out(mixed))
    expected = branch.ffn_norm(x + branch.ffn(x))
    assert torch.allclose(weights, out.sketch_attention, atol=1e-6)
    assert torch.allclose(expected, out.sketch, atol=1e-5)


# ------------------------------------------------------------------------------------------ full model
def test_full_model_shapes_in_every_mode():
    model = tiny_zse().eval()
    sketches, photos = images(3), images(4, seed=1)
    with torch.no_grad():
        sketch_tokens, photo_tokens = model.tokens(sketches, "sketch"), model.tokens(photos, "photo")
        assert sketch_tokens.cls.shape == (3, WIDTH) and sketch_tokens.patches.shape == (3, 49, WIDTH)
        embedding = model.embed(sketches, "sketch")
        assert embedding.shape == (3, WIDTH) and torch.allclose(embedding.norm(dim=1), torch.ones(3))
        relation = model.score_pairs(sketch_tokens, photo_tokens)
        assert relation.shape == (3, 4) and ((relation > 0) & (relation < 1)).all()
        sketch_features, photo_features = model.pair_features(sketches, "sketch"), model.pair_features(photos, "photo")
        assert sketch_features.shape == (3, 50, WIDTH)
        assert torch.allclose(model.score_pairs(sketch_features, photo_features), relation)
        pair = model.pair(sketches[1:2], photos[2:3])
        assert torch.allclose(pair.relation, relation[1, 2:3], atol=1e-6)
        assert pair.sketch_token.shape == (1, WIDTH)
        maps = pair.attention.sketch_attention
        assert maps.shape == (1, 4, 50, 50) and torch.allclose(maps.sum(-1), torch.ones(1, 4, 50), atol=1e-6)
        for mode in ("token", "relation", "rerank"):
            scores_fn = model.retrieval_scores(sketch_features, photo_features, mode, top_k=2)
            assert scores_fn(1, 3).shape == (2, 4)
    assert model.relation_network.anchor_conv.kernel_size == (1, 1)  # 7x7 grid: 49 anchors, kernel 1


def test_reference_geometry_224_gives_14x14_grid_and_49_anchors():
    model = ZSESBIR(tiny_vit(img_size=224, depth=1), **ZSE_SMALL).eval()
    assert model.grid == (14, 14) and model.relation_network.anchor_count == 49
    assert model.relation_network.anchor_conv.kernel_size == (2, 2)
    with torch.no_grad():
        scores = model.score_pairs(model.pair_features(images(1, 224), "sketch"),
                                   model.pair_features(images(2, 224, seed=1), "photo"))
    assert scores.shape == (1, 2) and ((scores > 0) & (scores < 1)).all()


def test_tokenizer_runs_on_sketches_only_and_gets_gradient_only_from_them():
    model = tiny_zse()
    calls = []
    model.tokenizer.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    tokenizer = list(model.tokenizer.parameters())
    assert len(tokenizer) == 4  # its four convolutions' weights
    objective(model.embed(images(2, seed=1), "photo")).backward()
    assert calls == []
    assert all(p.grad is None for p in tokenizer)
    objective(model.embed(images(2), "sketch")).backward()
    assert calls == [2]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tokenizer)
    calls.clear()
    model.zero_grad()
    total, _ = model.loss(images(3), images(3, seed=1), images(3, seed=2))
    total.backward()
    assert calls == [3]  # one call, on the 3 sketches; none on the 6 photos


@pytest.mark.parametrize("use, photo_calls", [("both", 1), ("none", 0)])
def test_tokenizer_options(use, photo_calls):
    model = tiny_zse(tokenizer=use)
    if use == "none":
        assert model.tokenizer is None
        return
    calls = []
    model.tokenizer.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    objective(model.embed(images(2), "photo")).backward()
    assert len(calls) == photo_calls
    tokenizer = list(model.tokenizer.parameters())
    assert len(tokenizer) == 4
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tokenizer)


def test_loss_reaches_every_trainable_part_and_a_frozen_backbone_stays_frozen():
    model = tiny_zse()
    total, parts = model.loss(images(2), images(2, seed=1), images(2, seed=2))
    assert set(parts) == {"triplet", "relation"} and all(isinstance(v, float) for v in parts.values())
    total.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []

    frozen = tiny_zse(freeze_backbone=True)
    frozen.loss(images(2), images(2, seed=1), images(2, seed=2))[0].backward()
    parts = {name: list(getattr(frozen, name).parameters())
             for name in ("backbone", "tokenizer", "cross_attention", "relation_network")}
    assert {name: len(params) for name, params in parts.items()} == {
        "backbone": 30, "tokenizer": 4, "cross_attention": 32, "relation_network": 8}
    assert all(p.grad is None for p in parts["backbone"])
    assert all(p.grad is not None for p in parts["tokenizer"])
    assert all(p.grad is not None for p in parts["cross_attention"])
    assert all(p.grad is not None for p in parts["relation_network"])


def test_loss_is_the_weighted_sum_of_its_terms_on_the_pairs():
    model = tiny_zse().eval()
    sketch, positive, negative = images(2), images(2, seed=1), images(2, seed=2)
    total, parts = model.loss(sketch, positive, negative)
    with_positive, with_negative = model.pair(sketch, positive), model.pair(sketch, negative)
    expected, expected_parts = zse_loss(with_positive.sketch_token, with_positive.photo_token,
                                        with_negative.photo_token, with_positive.relation, with_negative.relation)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["triplet"] == pytest.approx(expected_parts["triplet"].item(), rel=1e-5)
    assert parts["relation"] == pytest.approx(expected_parts["relation"].item(), rel=1e-5)
    assert total.item() == pytest.approx(2 * parts["triplet"] + 4 * parts["relation"], rel=1e-5)
    assert model({"sketch": sketch, "positive": positive, "negative": negative})[0].item() == pytest.approx(
        total.item(), rel=1e-6)


def _every_pair(model: ZSESBIR, sketches, photos) -> torch.Tensor:
    """``[S, P]`` relation of (sketch i, photo j), each pair through ``model.pair`` on its own."""
    return torch.stack([torch.cat([model.pair(sketches[i:i + 1], photos[j:j + 1]).relation for j in range(len(photos))])
                        for i in range(len(sketches))])


def test_batch_relation_pairs_score_every_pair_of_the_batch_by_class():
    model = head_only(relation_pairs="batch", dropout=0.0).eval()
    sketch, positive, negative = (torch.randn(3, 49, 16, generator=torch.Generator().manual_seed(s)) for s in range(3))
    sketch_labels, negative_labels = torch.tensor([0, 1, 0]), torch.tensor([2, 0, 1])
    total, parts = model.loss(sketch, positive, negative, sketch_labels, negative_labels)
    photos = torch.cat([positive, negative])
    relation = _every_pair(model, sketch, photos)  # [3, 6]
    photo_labels = torch.cat([sketch_labels, negative_labels])  # a positive has its sketch's class
    same = sketch_labels[:, None] == photo_labels[None]
    # photo labels 0 1 0 2 0 1: besides its own positive, sketch 0 matches sketch 2's positive and negative 1
    assert same.tolist() == [[True, False, True, False, True, False], [False, True, False, False, False, True],
                             [True, False, True, False, True, False]]
    expected_relation = balanced_relation_mse_loss(relation, same)
    with_positive, with_negative = model.pair(sketch, positive), model.pair(sketch, negative)
    triplet = zse_loss(with_positive.sketch_token, with_positive.photo_token, with_negative.photo_token,
                       with_positive.relation, with_negative.relation)[1]["triplet"]
    assert parts["relation"] == pytest.approx(expected_relation.item(), rel=1e-5)
    assert parts["triplet"] == pytest.approx(triplet.item(), rel=1e-5)
    assert total.item() == pytest.approx(2 * parts["triplet"] + 4 * parts["relation"], rel=1e-5)
    batch = {"sketch": sketch, "positive": positive, "negative": negative, "sketch_label": sketch_labels,
             "negative_label": negative_labels}
    assert model(batch)[0].item() == pytest.approx(total.item(), rel=1e-6)
    with pytest.raises(ValueError, match="sketch_labels"):
        model.loss(sketch, positive, negative)


def test_distillation_term_is_the_kl_from_the_relation_ranking_to_the_token_ranking():
    model = head_only(distill_weight=0.5, distill_temperature=0.2, dropout=0.0).eval()
    sketch, positive, negative = (torch.randn(3, 49, 16, generator=torch.Generator().manual_seed(s)) for s in range(3))
    total, parts = model.loss(sketch, positive, negative)
    photos = torch.cat([positive, negative])
    student = model.embed(sketch, "sketch") @ model.embed(photos, "photo").T
    expected = ranking_distillation_loss(student, torch.logit(_every_pair(model, sketch, photos)), 0.2)
    assert set(parts) == {"triplet", "relation", "distill"}
    assert parts["distill"] == pytest.approx(expected.item(), rel=1e-4)
    reference_total, _ = head_only(dropout=0.0).eval().loss(sketch, positive, negative)  # same seed, same weights
    assert total.item() == pytest.approx(reference_total.item() + 0.5 * parts["distill"], rel=1e-5)


def test_distillation_trains_the_token_path_only_and_brings_the_rankings_together():
    """The relation network is the teacher: no gradient from the distillation term. Trained on that term
    alone, the token cosines come to order held-out photos as the (fixed) relation network does."""
    model = head_only(distill_weight=1.0, triplet_weight=0.0, relation_weight=0.0, dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    draw = [torch.randn(8, 49, 16, generator=generator) for _ in range(3)]
    total, parts = model.loss(*draw)
    total.backward()  # the other terms have weight 0: any gradient in the relation network would be the KL's
    relation = list(model.relation_network.parameters())
    assert len(relation) == 8
    assert all(p.grad is None or not p.grad.any() for p in relation)
    assert model.cross_attention.branches["sketch"].query.weight.grad.abs().sum() > 0
    assert model.token_head.cls_projection.weight.grad.abs().sum() > 0

    before, after = _held_out_term_before_and_after_training(
        model, "distill", [p for p in model.parameters() if p.requires_grad], 3e-3, 40, generator)
    assert after < 0.5 * before


def _held_out_term_before_and_after_training(model: ZSESBIR, term: str, parameters, lr: float, steps: int,
                                             generator: torch.Generator) -> tuple[float, float]:
    """The loss term ``term`` on held-out random batches before and after ``steps`` Adam steps of the model's
    loss on fresh random batches, training ``parameters`` only."""
    held_out = [torch.randn(8, 49, 16, generator=generator) for _ in range(3)]

    def value() -> float:
        model.eval()
        with torch.no_grad():
            result = model.loss(*held_out)[1][term]
        model.train()
        return result

    before = value()
    optimizer = torch.optim.Adam(parameters, lr=lr)
    for _ in range(steps):
        batch = [torch.randn(8, 49, 16, generator=generator) for _ in range(3)]
        optimizer.zero_grad()
        model.loss(*batch)[0].backward()
        optimizer.step()
    return before, value()


def test_mutual_term_trains_the_relation_network_on_the_token_ranking():
    """The reverse term: the KL from the token cosines' ranking (detached) to the relation logits', the
    gradient reaching the relation network only; trained on it alone, the relation network comes to order
    held-out photos as the (fixed) token path does."""
    model = head_only(mutual_weight=1.0, distill_temperature=0.2, triplet_weight=0.0, relation_weight=0.0,
                      dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    sketch, positive, negative = (torch.randn(4, 49, 16, generator=generator) for _ in range(3))
    total, parts = model.loss(sketch, positive, negative)
    photos = torch.cat([positive, negative])
    with torch.no_grad():  # the teacher, a constant
        cosine = model.embed(sketch, "sketch") @ model.embed(photos, "photo").T
    expected = ranking_distillation_loss(torch.logit(_every_pair(model, sketch, photos)), cosine, 1.0,
                                         teacher_temperature=0.2)
    assert set(parts) == {"triplet", "relation", "mutual"}
    assert parts["mutual"] == pytest.approx(expected.item(), rel=1e-4)
    assert total.item() == pytest.approx(parts["mutual"], rel=1e-5)  # the other weights are 0
    # the same gradient as the KL with the cosines held constant: none flows through the teacher
    trainable = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(total, trainable, allow_unused=True)
    want = torch.autograd.grad(expected, trainable, allow_unused=True)
    zero = torch.zeros(())
    assert len(got) == len(want) == len(trainable) > 0
    assert all(torch.allclose(zero if g is None else g, zero if w is None else w, atol=1e-6, rtol=1e-4)
               for g, w in zip(got, want))
    grads = {id(p): g for p, g in zip(trainable, got)}
    assert grads[id(model.relation_network.mlp[0].weight)].abs().sum() > 0

    before, after = _held_out_term_before_and_after_training(  # the token path stays fixed
        model, "mutual", model.relation_network.parameters(), 1e-2, 60, generator)
    assert after < 0.5 * before


def test_bad_loss_options_are_refused():
    with pytest.raises(ValueError, match="relation_pairs"):
        head_only(relation_pairs="all")
    with pytest.raises(ValueError, match="distill"):
        head_only(distill_weight=-1.0)
    with pytest.raises(ValueError, match="distill"):
        head_only(distill_temperature=0.0)
    with pytest.raises(ValueError, match="mutual_weight"):
        head_only(mutual_weight=-0.5)


def test_token_selection_keeps_the_top_tokens_by_cls_attention():
    model = tiny_zse(keep_rates=(1.0, 0.5)).eval()
    block_inputs = []
    model.backbone.model.blocks[1].register_forward_pre_hook(lambda module, args: block_inputs.append(args[0]))
    with torch.no_grad():
        tokens = model.tokens(images(2), "sketch")
        assert tokens.patches.shape == (2, math.ceil(0.5 * 49), WIDTH)
        importance = cls_attention(model.backbone.model.blocks[1], block_inputs[0])
        expected = importance.topk(25, dim=1).indices.sort(dim=1).values
        assert torch.equal(tokens.positions, expected)
        scores = model.score_pairs(tokens, model.tokens(images(3, seed=1), "photo"))
    assert scores.shape == (2, 3) and ((scores > 0) & (scores < 1)).all()
    model.train()
    model.loss(images(2), images(2, seed=1), images(2, seed=2))[0].backward()
    with pytest.raises(ValueError, match="keep_rates"):
        tiny_zse(keep_rates=(0.5,))


# ------------------------------------------------------------------------------------------ head-only
def cached_tokens(backbone: TimmViTBackbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # the token cache
        return backbone.forward_tokens(x).tokens  # [B, 1 + 49, C], CLS first


def test_head_only_never_sends_gradient_to_the_frozen_backbone():
    backbone = tiny_vit()
    model = create_model("zse", backbone, head_only=True, **ZSE_SMALL)
    assert isinstance(model, ZSESBIR) and model.grid == (7, 7) and model.token_head.prefix_tokens == 1
    assert model.tokenizer is None and model.token_source == "self_cross"
    sketch, positive, negative = (cached_tokens(backbone, images(2, seed=s)) for s in range(3))
    total, _ = model.loss(sketch, positive, negative)
    total.backward()
    frozen = list(backbone.parameters())
    assert len(frozen) == 30
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    heads = [name for name, p in model.named_parameters() if not name.startswith("backbone.")]
    assert heads and all(model.get_parameter(name).grad is not None for name in heads)
    model.train()
    assert model.training and not backbone.training  # a frozen backbone stays in eval mode
    model.eval()
    with torch.no_grad():  # images go through the frozen backbone, cached tokens do not
        assert torch.allclose(model.embed(images(2), "photo"), model.embed(cached_tokens(backbone, images(2)),
                                                                            "photo"), atol=1e-5)
    with pytest.raises(SbirError, match="do not apply"):
        create_model("zse", tiny_vit(), head_only=True, tokenizer="both")


def test_head_only_on_cnn_tokens_learns_a_cls_from_the_pooled_feature():
    model = head_only(20, token_source="backbone").eval()
    assert model.grid == (7, 7) and model.relation_network.anchor_conv.kernel_size == (1, 1)
    feature_map = torch.randn(3, 20, 7, 7, generator=torch.Generator().manual_seed(0))  # like Lite0's 7x7x1280
    flat = feature_map.flatten(2).transpose(1, 2)  # [B, 49, C], row-major: the cached tokens
    tokens = model.tokens(flat, "photo")
    assert torch.allclose(tokens.cls, model.token_head.cls_projection(feature_map.mean(dim=(2, 3))), atol=1e-6)
    as_token_features = model.tokens(TokenFeatures(feature_map.mean(dim=(2, 3)), flat, (7, 7)), "photo")
    assert torch.allclose(as_token_features.cls, tokens.cls, atol=1e-6)
    assert torch.allclose(model.embed(flat, "photo"), F.normalize(tokens.cls, dim=-1))
    assert model.score_pairs(model.pair_features(flat, "sketch"), model.pair_features(flat, "photo")).shape == (3, 3)
    narrow = head_only(20, width=8, heads=2)
    assert narrow.embed(flat, "sketch").shape == (3, 8) and narrow.embed_dim == 8
    with pytest.raises(ValueError, match="expected tokens"):
        model.tokens(flat[:, :48], "sketch")
    with pytest.raises(SbirError, match="head_only=True"):
        create_model("zse", TinyCNN(dim=20))


def test_self_cross_token_is_per_image():
    """``self_cross`` embeddings do not depend on the rest of the batch: indexable one image at a time."""
    model = head_only().eval()
    features = torch.randn(4, 49, 16)
    batch = model.embed(features, "sketch")
    single = torch.cat([model.embed(features[i:i + 1], "sketch") for i in range(4)])
    assert torch.allclose(batch, single, atol=1e-6)
    sequence = model.tokens(features, "sketch").sequence()
    expected = F.normalize(model.cross_attention.branches["sketch"](sequence, sequence)[0][:, 0], dim=-1)
    assert torch.allclose(batch, expected, atol=1e-6)
    assert not torch.allclose(batch, model.embed(features, "photo"))  # each modality uses its own branch


# ------------------------------------------------------------------------------------------ retrieval modes
def test_score_pairs_does_not_depend_on_the_chunking():
    model = head_only().eval()
    sketches, photos = torch.randn(3, 49, 16), torch.randn(5, 49, 16)
    with torch.no_grad():
        sketch_features, photo_features = model.pair_features(sketches, "sketch"), model.pair_features(photos, "photo")
        chunked = model.score_pairs(sketch_features, photo_features)
        model.pair_chunk = 1
        one_by_one = model.score_pairs(sketch_features, photo_features)
        aligned = torch.stack([model.pair(sketches[i:i + 1], photos[j:j + 1]).relation[0]
                               for i in range(3) for j in range(5)]).view(3, 5)
        indexed = model.score_index_pairs(sketch_features, photo_features, torch.tensor([2, 0, 2]),
                                          torch.tensor([4, 1, 0]))
    assert torch.allclose(chunked, one_by_one, atol=1e-6) and torch.allclose(chunked, aligned, atol=1e-6)
    assert torch.allclose(indexed, chunked[[2, 0, 2], [4, 1, 0]], atol=1e-6)
    from_arrays = model.score_pairs(sketch_features.numpy().astype("float16"), photo_features.numpy())
    assert torch.allclose(from_arrays, chunked, atol=1e-2)  # cached features may be numpy / float16


def test_pair_features_round_trip_with_token_selection():
    """Pair features keep the full grid layout (dropped cells zero) and score like the tokens they came from."""
    model = tiny_zse(keep_rates=(0.5, 1.0)).eval()
    with torch.no_grad():
        sketch_tokens, photo_tokens = model.tokens(images(2), "sketch"), model.tokens(images(3, seed=1), "photo")
        sketch_features = model.pair_features(images(2), "sketch")
        assert sketch_features.shape == (2, 50, WIDTH)
        assert ((sketch_features[:, 1:].abs().amax(dim=-1) > 0).sum(dim=1) == 25).all()
        back = Tokens.from_features(sketch_features, (7, 7), selected=True)
        assert torch.equal(back.positions, sketch_tokens.positions)
        assert torch.allclose(back.patches, sketch_tokens.patches)
        from_features = model.score_pairs(sketch_features, model.pair_features(images(3, seed=1), "photo"))
        assert torch.allclose(from_features, model.score_pairs(sketch_tokens, photo_tokens), atol=1e-6)


def test_rerank_scores_by_hand():
    token = torch.tensor([[0.9, 0.1, 0.5, 0.3],
                          [0.2, 0.8, 0.7, 0.4]])
    relation = torch.tensor([[0.2, 0.9, 0.6, 0.7],
                             [0.5, 0.1, 0.3, 0.8]])
    calls = []

    def relation_fn(queries, candidates):
        calls.append(candidates.numel())
        return relation[queries[:, None], candidates]

    scores, pairs = rerank_scores(token, relation_fn, top_k=2)
    # query 0 shortlist (token top 2): photos 0 (0.9), 2 (0.5) -> relation 0.2, 0.6: photo 2 first, then 0
    # query 1 shortlist: photos 1 (0.8), 2 (0.7) -> relation 0.1, 0.3: photo 2 first, then 1
    assert pairs == 4 and sum(calls) == 4
    assert scores[0].argsort(descending=True).tolist() == [2, 0, 3, 1]  # then token order 0.3 > 0.1
    assert scores[1].argsort(descending=True).tolist() == [2, 1, 3, 0]  # then token order 0.4 > 0.2
    assert scores[0, 2].item() == pytest.approx(0.6) and scores[1, 1].item() == pytest.approx(0.1)
    full, full_pairs = rerank_scores(token, relation_fn, top_k=4)
    assert full_pairs == 8 and torch.equal(full, relation)
    assert torch.equal(rerank_scores(token, relation_fn, top_k=100)[0], relation)


def test_rerank_matches_relation_at_full_depth_and_scores_few_pairs_otherwise():
    model = head_only().eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sketches = model.pair_features(torch.randn(6, 49, 16, generator=generator), "sketch")
        photos = model.pair_features(torch.randn(10, 49, 16, generator=generator), "photo")
    relation_fn = model.retrieval_scores(sketches, photos, "relation", photo_block=4)
    relation = relation_fn(0, 6)
    assert relation_fn.pairs_scored == 60
    full = model.retrieval_scores(sketches, photos, "rerank", top_k=10)
    assert torch.equal(full(0, 6), relation)
    shallow = model.retrieval_scores(sketches, photos, "rerank", top_k=3)
    scores = torch.cat([shallow(0, 4), shallow(4, 6)])
    assert shallow.pairs_scored == 6 * 3
    token = model.retrieval_scores(sketches, photos, "token")(0, 6)
    for q in range(6):
        shortlist = set(token[q].topk(3).indices.tolist())
        ranked = scores[q].argsort(descending=True).tolist()
        assert set(ranked[:3]) == shortlist
        assert ranked[:3] == sorted(shortlist, key=lambda j: -relation[q, j].item())
        assert torch.allclose(scores[q, ranked[:3]], relation[q, ranked[:3]])
        rest = ranked[3:]
        assert rest == sorted(rest, key=lambda j: -token[q, j].item())


def test_tokens_round_trip_and_concatenate():
    tokens = Tokens(torch.randn(2, 4), torch.randn(2, 9, 4), (3, 3))
    both = Tokens.cat([tokens, tokens.select(slice(0, 1))])
    assert len(both) == 3 and both.sequence().shape == (3, 10, 4) and both.positions is None


# ------------------------------------------------------------------------------------------ training
def test_a_few_steps_on_a_separable_toy_problem_lower_the_loss():
    """Two classes with different spatial patterns; sketches and photos see them through different maps."""
    torch.manual_seed(0)
    classes, dim = 2, 16
    patterns = torch.randn(classes, 49, dim)
    photo_map = torch.randn(dim, dim) / dim ** 0.5

    def draw(labels: torch.Tensor, photo: bool) -> torch.Tensor:
        x = patterns[labels] + 0.3 * torch.randn(len(labels), 49, dim)
        return x @ photo_map if photo else x

    model = head_only(dim, heads=2, dropout=0.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        labels = torch.randint(0, classes, (16,))
        batch = {"sketch": draw(labels, False), "positive": draw(labels, True), "negative": draw(1 - labels, True)}
        loss, _ = model(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
