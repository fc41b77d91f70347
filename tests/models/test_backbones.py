"""Backbone factory and method registry: shapes and token grids of every backbone (random weights), the staged
ViT forward against the libraries' own, weights errors, and the EfficientNet-Lite0 package weights."""

from __future__ import annotations

import json

import pytest
import torch

from sbir.data.datasets.sketchy import AUGMENTATION
from sbir.errors import SbirError
from sbir.models import create_model, method_names
from sbir.models.backbones import (
    TokenFeatures,
    backbone_names,
    create_backbone,
    efficientnet_package_weights,
    map_lukemelas_efficientnet,
)
from tests import helpers
from tests.helpers import assert_same_tensors

# name -> (pooled size, token width, prefix tokens, grid at 224)
EXPECTED = {
    "tf_efficientnet_lite0": (1280, 1280, 0, (7, 7)),
    "vit_base_patch16_224": (768, 768, 1, (14, 14)),
    "ViT-B-32": (512, 768, 1, (7, 7)),
}


@pytest.fixture(scope="module")
def random_backbones() -> dict:
    torch.manual_seed(0)
    return {name: create_backbone(name, random_init=True) for name in backbone_names()}


def test_every_backbone_is_covered():
    assert sorted(EXPECTED) == backbone_names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_and_token_grid(name, random_backbones):
    backbone = random_backbones[name]
    images = helpers.images(1, 224)
    pooled_dim, token_dim, prefix, grid = EXPECTED[name]
    assert (backbone.embed_dim, backbone.token_dim, backbone.num_prefix_tokens) == (pooled_dim, token_dim, prefix)
    assert backbone.image_config.size == 224 and backbone.name == name and not backbone.training
    with torch.inference_mode():
        out = backbone.forward_tokens(images)
        pooled = backbone(images)
    assert isinstance(out, TokenFeatures)
    assert out.grid == grid
    assert out.pooled.shape == (1, pooled_dim)
    assert out.tokens.shape == (1, prefix + grid[0] * grid[1], token_dim)
    assert torch.equal(pooled, out.pooled)
    assert torch.isfinite(out.tokens).all()
    # the staged forward is the library's own
    with torch.inference_mode():
        if name == "vit_base_patch16_224":  # no classifier: pooled is the CLS token after the final norm
            torch.testing.assert_close(out.tokens, backbone.model.forward_features(images))
            torch.testing.assert_close(out.pooled, out.tokens[:, 0])
        elif name == "ViT-B-32":
            torch.testing.assert_close(out.pooled, backbone.clip.encode_image(images))
        else:
            torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))


def test_cnn_tokens_are_the_feature_map_row_major(random_backbones):
    backbone = random_backbones["tf_efficientnet_lite0"]
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = backbone.forward_tokens(x)
        feature_map = backbone.model.forward_features(x)
    assert out.grid == (2, 3)
    assert torch.equal(out.tokens.reshape(2, 2, 3, 1280), feature_map.permute(0, 2, 3, 1))


def test_clip_text_tower_and_normalisation(random_backbones):
    backbone = random_backbones["ViT-B-32"]
    with torch.inference_mode():
        text = backbone.encode_text(["a photo of a cat", "a sketch of a dog"])
    assert text.shape == (2, 512)
    assert backbone.image_config.mean[0] == pytest.approx(0.4815, abs=1e-4)


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "ViT-B-32"])
def test_missing_hub_weights_offline_is_a_clear_error(name, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    with pytest.raises(SbirError) as error:
        create_backbone(name)
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and "huggingface.co/timm/" in message
    assert ("model.safetensors" if name.startswith("vit") else "open_clip_model.safetensors") in message


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_missing_weights_file_is_named(name, tmp_path):
    missing = tmp_path / "weights.pth"
    with pytest.raises(SbirError, match="weights.pth: weights file of .* does not exist"):
        create_backbone(name, weights=missing)


def test_bad_names_are_clear_errors():
    with pytest.raises(SbirError, match="unknown backbone 'resnet9'.*tf_efficientnet_lite0"):
        create_backbone("resnet9")
    with pytest.raises(SbirError, match="apply to tf_efficientnet_lite0 only"):
        create_backbone("vit_base_patch16_224", weights="package")


def test_local_weights_file_loads(tmp_path, random_backbones):
    """A ViT-B/16 checkpoint with its ImageNet classifier, as timm publishes them (the head is dropped)."""
    source = random_backbones["vit_base_patch16_224"].model
    state = dict(source.state_dict())
    torch.save({**state, "head.weight": torch.zeros(1000, 768), "head.bias": torch.zeros(1000)}, tmp_path / "vit.pth")
    loaded = create_backbone("vit_base_patch16_224", weights=tmp_path / "vit.pth")
    assert len(state) == 150  # ViT-B/16 without its classifier
    assert_same_tensors(loaded.model.state_dict(), state)


# ------------------------------------------------------------------------- EfficientNet-Lite0 package
@pytest.fixture(scope="module")
def package_state() -> dict:
    return torch.load(efficientnet_package_weights(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained_effnet():
    return create_backbone("tf_efficientnet_lite0")


def test_package_weights_map_every_key(package_state, random_backbones, pretrained_effnet):
    model = random_backbones["tf_efficientnet_lite0"].model
    mapped = map_lukemelas_efficientnet(package_state, model)
    assert len(mapped) == len(package_state) == len(model.state_dict())
    loaded = pretrained_effnet.model.state_dict()
    # spot checks across the renaming: stem, first (depthwise-separable) block, last block, head, classifier
    pairs = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_var": "bn1.running_var",
             "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
             "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
             "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
             "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
             "_bn1.running_mean": "bn2.running_mean", "_fc.weight": "classifier.weight"}
    for source, target in pairs.items():
        assert torch.equal(package_state[source], loaded[target]), (source, target)
    for key, value in mapped.items():
        assert torch.equal(loaded[key], value)


def test_unmappable_weights_are_rejected(package_state, random_backbones):
    model = random_backbones["tf_efficientnet_lite0"].model
    with pytest.raises(SbirError, match="no counterpart"):
        map_lukemelas_efficientnet({**package_state, "_extra.weight": torch.zeros(1)}, model)
    broken = dict(package_state)
    broken["_fc.weight"] = torch.zeros(10, 1280)
    with pytest.raises(SbirError, match="shape"):
        map_lukemelas_efficientnet(broken, model)
    del broken["_fc.weight"]
    with pytest.raises(SbirError, match="missing"):
        map_lukemelas_efficientnet(broken, model)


def test_pretrained_effnet_is_deterministic_and_not_random(pretrained_effnet, random_backbones):
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        first, second = pretrained_effnet.classify(x), pretrained_effnet.classify(x)
        random_logits = random_backbones["tf_efficientnet_lite0"].classify(x)
    assert torch.equal(first, second)
    assert not torch.allclose(first, random_logits, atol=1e-2)
    assert torch.isfinite(first).all()


def test_pretrained_effnet_recognises_imagenet_photos(pretrained_effnet, sketchy_mini):
    """Sketchy photos are ImageNet images named by synset: the weights must classify them (about 88% top-1
    on all of sketchy-mini's 679 photos of ImageNet-1k synsets; 16 here, one per class)."""
    import numpy as np
    from PIL import Image
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo().label_names()
    index = {synset: i for i, synset in enumerate(synsets)}
    photos = []
    for folder in sorted((sketchy_mini / "256x256" / "photo" / AUGMENTATION).iterdir()):
        known = [p for p in sorted(folder.glob("*.jpg")) if p.stem.split("_")[0] in index]
        photos += known[:1]
    photos = photos[:16]
    config = pretrained_effnet.image_config
    size = (config.size, config.size)
    arrays = [np.asarray(Image.open(p).convert("RGB").resize(size, Image.BICUBIC)) for p in photos]
    x = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        predicted = pretrained_effnet.classify(x).argmax(dim=1)
    truth = torch.tensor([index[p.stem.split("_")[0]] for p in photos])
    assert (predicted == truth).float().mean() >= 0.6, json.dumps([synsets[i] for i in predicted])


def test_batchnorm_folding_keeps_the_outputs(pretrained_effnet):
    fused = pretrained_effnet.fused_for_inference()
    assert fused is not pretrained_effnet and fused.name == "tf_efficientnet_lite0"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in pretrained_effnet.modules()) == 49  # left unchanged
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.inference_mode():
        expected, got = pretrained_effnet.forward_tokens(x), fused.forward_tokens(x)
        torch.testing.assert_close(got.tokens, expected.tokens, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused.classify(x), pretrained_effnet.classify(x), rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------ method registry
def test_registry_and_frozen_model(random_backbones):
    assert "frozen" in method_names()
    backbone = random_backbones["tf_efficientnet_lite0"]
    model = create_model("frozen", backbone)
    assert model.method == "frozen" and model.embed_dim == 1280 and not model.supports_pairs
    assert create_model("frozen", backbone, fuse=False).backbone is backbone
    parameters = list(model.parameters())
    assert parameters and not any(p.requires_grad for p in parameters)
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        sketch, photo = model.embed(batch, "sketch"), model.embed(batch, "photo")
        pairs = model.score_pairs(model.pair_features(batch, "sketch"), model.pair_features(batch, "photo"))
    assert sketch.shape == (2, 1280)
    torch.testing.assert_close(sketch.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(pairs, sketch @ photo.T)
    with pytest.raises(ValueError, match="modality"):
        model.embed(batch, "drawing")


def test_registry_errors(random_backbones):
    with pytest.raises(SbirError, match="unknown method 'nope'"):
        create_model("nope", random_backbones["tf_efficientnet_lite0"])
    with pytest.raises(SbirError, match="bad options"):
        create_model("frozen", random_backbones["tf_efficientnet_lite0"], margin=1.0)
