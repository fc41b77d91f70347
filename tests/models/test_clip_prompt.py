"""CLIP visual prompts (sbir.models.clip_prompt) on a tiny randomly initialised open_clip model."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from sbir.data.images import ImageConfig
from sbir.errors import SbirError
from sbir.models import create_model, method_names
from sbir.models.backbones import OpenClipBackbone
from sbir.models.clip_prompt import (
    ClipPrompt,
    category_mean_distances,
    different_permutations,
    encode_class_texts,
    f_divergence_uniformity_loss,
    merge_patches,
    patch_shuffle_loss,
    random_permutations,
    shuffle_patches,
    split_patches,
    text_classification_loss,
)

WIDTH, LAYERS, EMBED_DIM, IMAGE, PATCH, CONTEXT, VOCAB = 64, 2, 32, 64, 16, 16, 1000
PATCHES = (IMAGE // PATCH) ** 2
CLASSES = ["alarm_clock", "apple", "axe"]
LAYER_NORMS = {"ln_pre", "ln_1", "ln_2", "ln_post"}
RELEASED_EXTRA = {"in_proj_weight", "in_proj_bias", "class_embedding", "positional_embedding", "proj"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model is fastest on one thread (and the machine is shared); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg=open_clip.CLIPVisionCfg(layers=LAYERS, width=WIDTH, patch_size=PATCH, image_size=IMAGE,
                                           head_width=32),
        text_cfg=open_clip.CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=1))


def tiny_tokenizer(texts: list[str]) -> torch.Tensor:
    """Character codes in [1, 997], then the end token 999 (the highest id, where CLIP pools), then padding 0."""
    tokens = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for row, text in enumerate(texts):
        codes = [1 + ord(char) % 997 for char in text][:CONTEXT - 1]
        tokens[row, :len(codes)] = torch.tensor(codes)
        tokens[row, len(codes)] = VOCAB - 1
    return tokens


def tiny_backbone(seed: int = 0) -> OpenClipBackbone:
    return OpenClipBackbone(tiny_clip(seed), tiny_tokenizer,
                            ImageConfig(IMAGE, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD))


def make_model(seed: int = 0, **options) -> ClipPrompt:
    return create_model("clip_prompt", tiny_backbone(seed), class_names=CLASSES, **options)


def make_batch(size: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(3, size, 3, IMAGE, IMAGE, generator=generator)
    labels = torch.arange(size) % 2
    return {"sketch": images[0], "positive": images[1], "negative": images[2], "sketch_label": labels,
            "negative_label": (labels + 1) % len(CLASSES)}


def block_input_lengths(model: ClipPrompt, images: torch.Tensor, modality: str = "sketch") -> list[int]:
    lengths: list[int] = []
    hooks = [block.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[1]))
             for block in model.backbone.visual.transformer.resblocks]
    with torch.no_grad():
        model.embed(images, modality)
    for hook in hooks:
        hook.remove()
    return lengths


# -- shapes and token sequence --------------------------------------------------------------------------------

@pytest.mark.parametrize("deep", [False, True])
def test_embed_shapes_and_normalised(deep):
    model = make_model(deep=deep)
    images = torch.randn(2, 3, IMAGE, IMAGE)
    for modality in ("sketch", "photo"):
        features = model.embed(images, modality)
        assert features.shape == (2, EMBED_DIM)
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))
        assert model.prompt(modality).shape == (LAYERS if deep else 1, 3, WIDTH)


@pytest.mark.parametrize("deep", [False, True])
def test_prompts_lengthen_the_sequence_by_three(deep):
    model = make_model(deep=deep)
    images = torch.randn(1, 3, IMAGE, IMAGE)
    assert block_input_lengths(model, images) == [1 + PATCHES + 3] * LAYERS
    plain: list[int] = []
    first_block = model.backbone.visual.transformer.resblocks[0]
    hook = first_block.register_forward_pre_hook(lambda _, args: plain.append(args[0].shape[1]))
    with torch.no_grad():
        model.backbone(images)
    hook.remove()
    assert plain == [1 + PATCHES]

def test_registered_and_empty_prompt_gives_the_backbones_forward():
    """The prompted forward re-implements the image tower: with no prompt tokens it is the backbone's."""
    assert "clip_prompt" in method_names()
    backbone = tiny_backbone()
    model = create_model("clip_prompt", backbone, prompt_tokens=0, loss_weights={"classification": 0})
    assert isinstance(model, ClipPrompt) and model.embed_dim == EMBED_DIM and model.image_config.size == IMAGE
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(images, "photo"), F.normalize(backbone(images), dim=-1))


def test_vit_b_32_reference_configuration():
    """The paper's backbone from the factory (random weights): 49 patches + CLS + 3 prompts of width 768, 512-d."""
    model = create_model("clip_prompt", "ViT-B-32", random_init=True, class_names=CLASSES)
    images = torch.randn(1, 3, 224, 224)
    assert block_input_lengths(model, images) == [1 + 49 + 3] * 12
    assert model.prompt("sketch").shape == (1, 3, 768)
    assert model.embed(images, "photo").shape == (1, 512) and model.text_embeddings.shape == (3, 512)
    assert model.image_config.mean == open_clip.OPENAI_DATASET_MEAN
    texts = ["a photo of a alarm clock", "a photo of a apple", "a photo of a axe"]
    with torch.no_grad():
        torch.testing.assert_close(model.text_embeddings, F.normalize(model.backbone.encode_text(texts), dim=-1))


# -- which parameters train -------------------------------------------------------------------------------------

def expected_trainable(name: str, released_switch: bool) -> bool:
    """Prompts and the image tower's LayerNorms; with the switch also its QKV, embeddings and projection."""
    if name.startswith("prompts."):
        return True
    if not name.startswith("backbone.clip.visual."):
        return False  # the text tower, logit scale
    parts = name.split(".")
    return parts[-2] in LAYER_NORMS or (released_switch and parts[-1] in RELEASED_EXTRA)


@pytest.mark.parametrize("released_switch", [False, True])
def test_exactly_the_intended_parameters_train(released_switch):
    model = make_model(train_qkv_and_embeddings=released_switch)
    names = dict(model.named_parameters())
    trainable = {n for n, p in names.items() if p.requires_grad}
    assert trainable and trainable == {n for n in names if expected_trainable(n, released_switch)}
    assert any(n.endswith("in_proj_weight") for n in names) and any(n.endswith("c_fc.weight") for n in names)
    total, _ = model.loss(make_batch())
    total.backward()
    for name, parameter in names.items():
        if expected_trainable(name, released_switch):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_cached_text_classifier_is_not_in_the_checkpoint():
    keys = make_model().state_dict().keys()
    assert {"prompts.sketch", "prompts.photo"} <= set(keys)
    assert not {"text_embeddings", "text_rows", "logit_scale"} & set(keys)


# -- prompts per modality ---------------------------------------------------------------------------------------

def test_each_modality_uses_its_own_prompt():
    model = make_model()
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        sketch, photo = model.embed(images, "sketch"), model.embed(images, "photo")
        assert not torch.allclose(sketch, photo)
        model.prompts["sketch"].add_(torch.randn_like(model.prompts["sketch"]))
        assert not torch.allclose(model.embed(images, "sketch"), sketch)
        torch.testing.assert_close(model.embed(images, "photo"), photo)
        model.prompts["photo"].add_(torch.randn_like(model.prompts["photo"]))
        assert not torch.allclose(model.embed(images, "photo"), photo)


def test_shared_prompt_serves_both_modalities():
    for model in (make_model(shared_prompt=True), make_model(fine_grained=True)):
        assert list(model.prompts) == ["shared"]
        assert model.prompt("sketch") is model.prompt("photo")
        images = torch.randn(2, 3, IMAGE, IMAGE)
        with torch.no_grad():
            torch.testing.assert_close(model.embed(images, "sketch"), model.embed(images, "photo"))
    assert set(make_model(fine_grained=True, shared_prompt=False).prompts) == {"sketch", "photo"}


def test_deep_prompts_enter_every_block():
    model = make_model(deep=True)
    images = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        before = model.embed(images, "sketch")
        # the set that replaces the prompt tokens before block 1
        model.prompts["sketch"][1].add_(torch.randn_like(model.prompts["sketch"][1]))
        assert not torch.allclose(model.embed(images, "sketch"), before)


def test_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="modality"):
        make_model().embed(torch.randn(1, 3, IMAGE, IMAGE), "drawing")


# -- text embeddings --------------------------------------------------------------------------------------------

def test_text_embeddings_are_cached_prompts_of_the_classes():
    backbone = tiny_backbone()
    tokens = tiny_tokenizer(["a photo of a alarm clock", "a photo of a apple", "a photo of a axe"])
    with torch.no_grad():
        expected = F.normalize(backbone.clip.encode_text(tokens), dim=-1)
    model = ClipPrompt(backbone, class_names=CLASSES)
    torch.testing.assert_close(model.text_embeddings, expected)
    assert not model.text_embeddings.requires_grad
    torch.testing.assert_close(model.logit_scale, torch.tensor(1 / 0.07))
    torch.testing.assert_close(encode_class_texts(backbone, CLASSES), expected)


def test_classifier_chooses_among_seen_classes_only():
    """Class ids index all classes; the text classifier's rows are the seen ones ("apple", "bat")."""
    names = ["alarm_clock", "apple", "axe", "bat"]
    backbone = tiny_backbone()
    model = ClipPrompt(backbone, class_names=names, seen_classes=["apple", "bat"])
    torch.testing.assert_close(model.text_embeddings, encode_class_texts(backbone, ["apple", "bat"]))
    batch = make_batch(size=2)
    batch.update(sketch_label=torch.tensor([1, 3]), negative_label=torch.tensor([3, 1]))
    _, parts = model.loss(batch)
    with torch.no_grad():  # ids 1, 3 → rows 0, 1 of the seen-class text embeddings
        sketch = model.embed(batch["sketch"], "sketch")
        positive, negative = model.embed(batch["positive"], "photo"), model.embed(batch["negative"], "photo")
    rows, text, scale = torch.tensor([0, 1]), model.text_embeddings, model.logit_scale
    expected = (text_classification_loss(sketch, text, rows, scale)
                + text_classification_loss(positive, text, rows, scale)
                + text_classification_loss(negative, text, rows.flip(0), scale)) / 3
    torch.testing.assert_close(parts["classification"], expected)
    batch["sketch_label"] = torch.tensor([1, 2])  # "axe" is not a seen class
    with pytest.raises(ValueError, match="seen_classes"):
        model.loss(batch)


def test_classification_needs_class_texts():
    with pytest.raises(ValueError, match="classification"):
        ClipPrompt(tiny_backbone())
    with pytest.raises(SbirError, match="open_clip"):
        create_model("clip_prompt", "tf_efficientnet_lite0", random_init=True)
    model = ClipPrompt(tiny_backbone(), loss_weights={"classification": 0})
    assert set(model.loss(make_batch())[1]) == {"triplet"}


# -- losses against hand-computed values ---------------------------------------------------------------------

def test_text_classification_loss_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: e1, e2 → logits (scale 1) [1, 0], [0, 1]
    labels = torch.tensor([0, 0])
    # sample 0: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1) = 0.31326; sample 1: log(1 + e^1) = 1.31326
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    torch.testing.assert_close(text_classification_loss(features, text, labels, 1.0), torch.tensor(expected))
    # scale 2: logits [2, 0] for sample 0 → log(1 + e^-2)
    torch.testing.assert_close(text_classification_loss(features[:1], text, labels[:1], 2.0),
                               torch.tensor(math.log(1 + math.exp(-2))))


def test_patch_shuffle_loss_by_hand():
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    same = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    other = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # row 0: d(a, same) = 1 - 1 = 0, d(a, other) = 1 - 0 = 1 → [0 - 1 + 0.2]_+ = 0
    # row 1: d(a, same) = 1 - 0 = 1, d(a, other) = 1 - 1/√2 = 0.29289 → [1 - 0.29289 + 0.2]_+ = 0.90711
    expected = (0.0 + 1.0 - (1 - 1 / math.sqrt(2)) + 0.2) / 2
    torch.testing.assert_close(patch_shuffle_loss(anchor, same, other, margin=0.2), torch.tensor(expected))


def test_category_mean_distances():
    distances = torch.tensor([0.2, 0.4, 0.6, 0.6, 1.0])
    labels = torch.tensor([7, 7, 3, 3, 7])
    # category 3: (0.6 + 0.6) / 2 = 0.6; category 7: (0.2 + 0.4 + 1.0) / 3 = 0.5333
    torch.testing.assert_close(category_mean_distances(distances, labels), torch.tensor([0.6, 1.6 / 3]))


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "chi2", "hellinger"])
def test_f_divergence_zero_when_uniform_positive_otherwise(divergence):
    labels = torch.tensor([0, 0, 1, 1, 2])
    equal = torch.tensor([0.1, 0.5, 0.2, 0.4, 0.3])  # every category's mean is 0.3
    assert abs(float(f_divergence_uniformity_loss(equal, labels, divergence))) < 1e-6
    unequal = torch.tensor([0.1, 0.5, 0.9, 0.7, 0.3])
    assert float(f_divergence_uniformity_loss(unequal, labels, divergence)) > 1e-4
    assert float(f_divergence_uniformity_loss(unequal, torch.zeros(5, dtype=torch.long), divergence)) == 0.0


# d = [0.2, 0.4 | 0.6, 0.6] with categories [0, 0 | 1, 1]: d̄ = [0.3, 0.6], p = softmax([-0.3, -0.6])
# p_0 = 1 / (1 + e^-0.3) = 0.574443, p_1 = 0.425557, u = [0.5, 0.5]
# kl         = p_0 log(2 p_0) + p_1 log(2 p_1) = 0.574443·0.138796 + 0.425557·(-0.161210) = 0.011125
# reverse_kl = -log 2 - (log p_0 + log p_1) / 2 = -0.693147 + (0.554355 + 0.854357) / 2 = 0.011208
# chi2       = 2 (p_0² + p_1²) - 1 = 2 (0.329984 + 0.181099) - 1 = 0.022167
# hellinger  = 1 - √(p_0 / 2) - √(p_1 / 2) = 1 - 0.535930 - 0.461280 = 0.002790
@pytest.mark.parametrize("divergence, expected", [("kl", 0.0111247), ("reverse_kl", 0.0112081),
                                                  ("chi2", 0.0221668), ("hellinger", 0.0027903)])
def test_f_divergence_by_hand(divergence, expected):
    distances = torch.tensor([0.2, 0.4, 0.6, 0.6], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    value = f_divergence_uniformity_loss(distances, labels, divergence)
    assert float(value) == pytest.approx(expected, abs=1e-6)
    # temperature 0.5 doubles the gaps: p = softmax([-0.6, -1.2]), kl = log 2 - H(p)
    if divergence == "kl":
        p = torch.softmax(torch.tensor([-0.6, -1.2], dtype=torch.float64), 0)
        by_formula = math.log(2) + float((p * p.log()).sum())
        assert float(f_divergence_uniformity_loss(distances, labels, "kl", 0.5)) == pytest.approx(by_formula)


def test_unknown_divergence_is_refused():
    with pytest.raises(ValueError, match="divergence"):
        f_divergence_uniformity_loss(torch.rand(4), torch.tensor([0, 0, 1, 1]), "js")
    with pytest.raises(SbirError, match="divergence"):
        make_model(fine_grained=True, divergence="js")


# -- patch split and shuffle ------------------------------------------------------------------------------------

def test_shuffle_moves_whole_blocks():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    # blocks of the 2x2 grid, row-major:
    # 0 = [[0,1],[4,5]], 1 = [[2,3],[6,7]], 2 = [[8,9],[12,13]], 3 = [[10,11],[14,15]]
    shuffled = shuffle_patches(image, torch.tensor([3, 2, 1, 0]), grid=2)
    expected = torch.tensor([[10.0, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5]])
    torch.testing.assert_close(shuffled[0, 0], expected)
    # output block k = input block permutation[k]: [1, 0, 3, 2] swaps left and right halves
    torch.testing.assert_close(shuffle_patches(image, torch.tensor([1, 0, 3, 2]), 2)[0, 0],
                               torch.tensor([[2.0, 3, 0, 1], [6, 7, 4, 5], [10, 11, 8, 9], [14, 15, 12, 13]]))


def test_split_merge_and_unshuffle_are_inverse_permutations_of_blocks():
    images = torch.randn(5, 3, 12, 12)
    for grid in (2, 3):
        torch.testing.assert_close(merge_patches(split_patches(images, grid), grid), images)
        permutation = random_permutations(5, grid * grid, generator=torch.Generator().manual_seed(grid))
        shuffled = shuffle_patches(images, permutation, grid)
        # block k of each shuffled image is exactly block permutation[k] of the original
        original, moved = split_patches(images, grid), split_patches(shuffled, grid)
        for b in range(5):
            for k in range(grid * grid):
                torch.testing.assert_close(moved[b, k], original[b, permutation[b, k]])
        torch.testing.assert_close(shuffle_patches(shuffled, permutation.argsort(dim=1), grid), images)
        assert torch.equal(shuffled.flatten().sort().values, images.flatten().sort().values)
    with pytest.raises(ValueError, match="grid"):
        split_patches(torch.randn(1, 3, 10, 10), 3)


def test_different_permutations_differ_and_are_permutations():
    generator = torch.Generator().manual_seed(0)
    for size in (2, 4):
        same = random_permutations(200, size, generator=generator)
        other = different_permutations(same, generator=generator)
        assert not (other == same).all(dim=1).any()
        assert torch.equal(other.sort(dim=1).values, torch.arange(size).expand(200, -1))


# -- the loss API and training ---------------------------------------------------------------------------------

def test_loss_terms_and_weighted_total():
    batch = make_batch()
    category = make_model()
    total, parts = category.loss(batch)
    assert set(parts) == {"triplet", "classification"}
    torch.testing.assert_close(total.detach(), parts["triplet"] + parts["classification"])

    weights = {"triplet": 2.0, "classification": 0.5, "patch_shuffle": 3.0, "divergence": 4.0}
    fine = make_model(fine_grained=True, loss_weights=weights)
    torch.manual_seed(0)
    total, parts = fine.loss({**batch, "paired": batch["positive"]})
    assert set(parts) == set(weights)
    torch.testing.assert_close(total.detach(), sum(weights[k] * parts[k] for k in weights))
    torch.manual_seed(0)
    same_total, _ = fine(batch)  # fine-grained without "paired": the positive is the paired photo
    torch.testing.assert_close(same_total, total)
    # the triplet term is the cosine triplet of the model's own embeddings (margin 0.2)
    with torch.no_grad():
        a, p, n = (category.embed(batch[k], m) for k, m in
                   (("sketch", "sketch"), ("positive", "photo"), ("negative", "photo")))
    by_hand = ((1 - (a * p).sum(1)) - (1 - (a * n).sum(1)) + 0.2).clamp_min(0).mean()
    torch.testing.assert_close(category.loss(batch)[1]["triplet"], by_hand)


def test_adam_steps_lower_the_loss():
    model = make_model()
    optimizer = torch.optim.Adam(model.param_groups(lr_prompts=5e-2, lr_other=5e-2))
    batch = make_batch(size=6)
    losses = []
    for _ in range(15):
        total, _ = model.loss(batch)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_param_groups_and_optimizer():
    model = make_model(train_qkv_and_embeddings=True)
    groups = model.param_groups()
    assert [g["lr"] for g in groups] == [1e-4, 1e-6]
    assert groups[0]["params"] and groups[1]["params"]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.prompts.parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    optimizer = model.make_optimizer()
    assert isinstance(optimizer, torch.optim.Adam)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-6]
