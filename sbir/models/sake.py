"""``sake``: SAKE, semantic-aware knowledge preservation (Liu et al., ICCV 2019; code qliu24/SAKE).

Fine-tune an ImageNet-pretrained CNN on the seen classes without forgetting what ImageNet taught it — the
knowledge that transfers to unseen classes. The student is the backbone with its last ``stages`` block
stages, final 1x1 convolution and ImageNet classifier trainable, followed by an embedding layer
(``out_dim``) and a classifier over the seen classes; the teacher is the frozen pretrained network with its
ImageNet classifier. The loss of a batch of sketches and photos is

    cross-entropy(seen-class logits, label)                      (sketches and photos)
    + kd_weight * T² * soft-CE(student ImageNet logits / T,
                               softmax((teacher logits + adjust_weight * m) / T))   (photos only)

with ``m`` 1 on the ImageNet classes that correspond to the photo's class and 0 elsewhere (the semantic
adjustment: :mod:`sbir.models.imagenet`, ``imagenet_classes``), as in ``METHODS.md`` (λ_sake = 1,
λ_adj = 0.3, KD on photos only, as the reference code). Retrieval: cosine of the embedding layer's output.

Departures from the paper, each an option or forced by the backbone:

- backbone: any backbone with stages and an ImageNet classifier (EfficientNet-Lite0 here) instead of
  SE-ResNet-50. Lite0 has no squeeze-excitation blocks to condition on the domain, so the domain signal
  (``domain=True``) is a learned channel gate per domain after each trained stage and after the final
  convolution: ``x * 2·sigmoid(g[domain])``, ``g`` starting at 0 (the identity) — the excitation of a
  conditional SE block without its squeeze;
- which stages train (``stages``; the paper fine-tunes the whole network): the frozen part below them
  runs once per image, so on a CPU its output (and the teacher's logits) is cached and only the top stages
  and heads run per training step (:mod:`sbir.train.features`; the ``sake`` inputs of the cache);
- batch norms keep their ImageNet statistics (eval mode; their affine parameters train): the training
  batches are small and mix two domains, and the cached path could not update the frozen part's anyway;
- batches are the training loop's triplets (a sketch, a photo of its class, a photo of another class), so
  sketches and photos come 1 : 2 as in the reference Sketchy code; AdamW and the loop's learning rate and
  schedule instead of Adam with lr 1e-4 decayed over 20 epochs; the checkpoint is chosen on seen-class val
  mAP@all (the paper: seen-class val accuracy);
- the paper's 64-bit ITQ codes are not made.

Inputs: images ``[B, 3, H, W]``, or the cached inputs ``{"stage": [B, C, h, w], "logits": [B, 1000]}`` (the
input of the first trained stage, and the teacher's logits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sbir.models.backbones import Backbone, TokenFeatures
from sbir.models.base import MODALITIES, RetrievalModel, check_modality
from sbir.models.imagenet import IMAGENET_CLASSES
from sbir.models.registry import register_method

Inputs = Tensor | Mapping[str, Tensor]
#: the default of ``stages``: the last two stages (14x14 and 7x7) and the final convolution train (chosen on the
#: seen-class val split of Sketchy: 2 stages reached val mAP@all 0.604 against 0.533 for 1)
DEFAULT_STAGES = 2


def batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@register_method("sake")
class SAKE(RetrievalModel):
    """SAKE on ``backbone`` (see the module docstring).

    Args:
        class_names: the names that the class ids of a batch index (all classes of the dataset).
        seen_classes: the training classes, the classifier's outputs (default: all ``class_names``).
        stages: how many of the backbone's last block stages train (0: only the final convolution and the
            classifiers); the rest is frozen.
        out_dim: size of the embedding.
        kd_weight: weight of the distillation term (0: no distillation, the "without distillation" ablation).
        adjust_weight: the semantic adjustment added to the teacher's logits of the photo's ImageNet classes
            (0: none).
        temperature: of the distillation (1 in the paper).
        domain: the per-domain channel gates (the domain signal).
        backbone_lr_scale: the learning rate of the fine-tuned pretrained parts (trained stages, final convolution,
            ImageNet classifier) relative to the training learning rate, which the new parts take.
        imagenet_classes: ``{class name: [ImageNet-1k indices]}`` of the semantic adjustment; classes not in
            it are distilled from the plain teacher (``sbir.train.run`` fills it from the training photos'
            synset ids or a class map file).
    """

    def __init__(self, backbone: Backbone, *, class_names: Sequence[str] | None = None,
                 seen_classes: Sequence[str] | None = None, stages: int = DEFAULT_STAGES, out_dim: int = 512,
                 kd_weight: float = 1.0, adjust_weight: float = 0.3, temperature: float = 1.0, domain: bool = True,
                 backbone_lr_scale: float = 1.0, imagenet_classes: Mapping[str, Sequence[int]] | None = None):
        super().__init__(backbone)
        if not hasattr(backbone, "stage_modules") or not hasattr(backbone, "classifier"):
            raise ValueError("sake fine-tunes the last stages of a CNN with its ImageNet classifier: use "
                             "tf_efficientnet_lite0")
        if not 0 <= stages <= backbone.num_stages:
            raise ValueError(f"stages must be in [0, {backbone.num_stages}], got {stages}")
        if not class_names:
            raise ValueError("sake needs the dataset's class names (class_names) for its seen-class classifier")
        if out_dim < 1 or kd_weight < 0 or adjust_weight < 0 or temperature <= 0 or backbone_lr_scale <= 0:
            raise ValueError("out_dim must be >= 1, kd_weight and adjust_weight >= 0, temperature and "
                             "backbone_lr_scale > 0")
        self.backbone_lr_scale = backbone_lr_scale
        class_names = list(class_names)
        seen_classes = list(seen_classes or class_names)
        unknown = sorted(set(seen_classes) - set(class_names)) + sorted(set(imagenet_classes or {}) - set(class_names))
        if unknown:
            raise ValueError(f"classes not among class_names: {unknown[:5]}")
        self.stages, self.out_dim, self.domain = stages, out_dim, domain
        self.kd_weight, self.adjust_weight, self.temperature = kd_weight, adjust_weight, temperature
        self.class_names, self.seen_classes = class_names, seen_classes

        backbone.requires_grad_(False)
        self.trained_stages = backbone.stage_modules(stages)
        trained = [*self.trained_stages, backbone.model.conv_head, backbone.model.bn2, backbone.classifier]
        for module in trained:
            module.requires_grad_(True)
        # the teacher: the pretrained network as it is now, frozen (batch norms folded: nothing of it is stored)
        self.teacher = backbone.fused_for_inference() if kd_weight > 0 else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
        widths = [self._width(stage) for stage in self.trained_stages] + [backbone.embed_dim]
        self.gates = nn.ParameterList([nn.Parameter(torch.zeros(len(MODALITIES), w)) for w in widths]) \
            if domain else None
        self.embedding = nn.Linear(backbone.embed_dim, out_dim)
        self.classifier = nn.Linear(out_dim, len(seen_classes))
        seen_position = {name: i for i, name in enumerate(seen_classes)}
        self.register_buffer("seen_label", torch.tensor([seen_position.get(n, -1) for n in class_names]),
                             persistent=False)
        adjustment = torch.zeros(len(class_names), IMAGENET_CLASSES)
        position = {name: i for i, name in enumerate(class_names)}
        for name, indices in (imagenet_classes or {}).items():
            adjustment[position[name], list(indices)] = 1.0
        self.register_buffer("adjustment", adjustment, persistent=False)
        self.imagenet_classes = {k: list(v) for k, v in (imagenet_classes or {}).items()}

    def parameter_groups(self, lr: float) -> list[dict]:
        """The optimiser's groups: the fine-tuned pretrained parts at ``lr * backbone_lr_scale``, the new parts
        (gates, embedding, seen-class classifier) at ``lr``."""
        pretrained = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("backbone.")]
        return [{"params": pretrained, "lr": lr * self.backbone_lr_scale}, {"params": new, "lr": lr}]

    @staticmethod
    def _width(stage: nn.Module) -> int:
        convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
        return convs[-1].out_channels

    @property
    def embed_dim(self) -> int:
        return self.out_dim

    def train(self, mode: bool = True) -> SAKE:
        """Train mode for the trained parts; every batch norm keeps its statistics (module docstring)."""
        super().train(mode)
        for norm in batch_norms(self):
            norm.eval()
        return self

    # --------------------------------------------------------------------------------------------- forward
    def stage_input(self, images: Tensor) -> Tensor:
        """``[B, C, h, w]``: what the frozen part makes of images (the cached input of the trained stages)."""
        with torch.no_grad():
            return self.backbone.lower(images, self.stages)

    def _gate(self, features: Tensor, number: int, domains: Tensor) -> Tensor:
        if self.gates is None:
            return features
        return features * (2 * torch.sigmoid(self.gates[number]))[domains][:, :, None, None]

    def top(self, stage_input: Tensor, domains: Tensor) -> Tensor:
        """The final feature map ``[B, D, h, w]`` of the trained stages on their input; ``domains``: ``[B]``,
        0 for a sketch, 1 for a photo."""
        features = stage_input.to(self.embedding.weight.dtype)
        for number, stage in enumerate(self.trained_stages):
            features = self._gate(stage(features), number, domains)
        return self._gate(self.backbone.head_map(features), len(self.trained_stages), domains)

    def _stage_input(self, inputs: Inputs) -> Tensor:
        return inputs["stage"] if isinstance(inputs, Mapping) else self.stage_input(inputs)

    def _domains(self, count: int, modality: str, device: torch.device) -> Tensor:
        return torch.full((count,), MODALITIES.index(modality), dtype=torch.long, device=device)

    def embed(self, inputs: Inputs, modality: str) -> Tensor:
        """``[B, out_dim]`` L2-normalised embeddings of images or of cached inputs (module docstring)."""
        return F.normalize(self.embedding(self.student_tokens(inputs, modality).pooled), dim=-1)

    def student_tokens(self, inputs: Inputs, modality: str) -> TokenFeatures:
        """The student's pooled feature and final token map (its trained stages, gates included): what
        :mod:`sbir.explain` compares."""
        check_modality(modality)
        stage_input = self._stage_input(inputs)
        top = self.top(stage_input, self._domains(len(stage_input), modality, stage_input.device))
        return self.backbone.tokens_of_map(top)

    def teacher_logits(self, stage_input: Tensor) -> Tensor:
        """The teacher's ImageNet logits from ``stage_input`` (what the frozen part, the same in the teacher and the
        student, made of the images) through the teacher's own top stages (the cache holds them for its inputs)."""
        with torch.no_grad():
            top = self.teacher.top_map(stage_input, self.stages)
            return self.teacher.classifier(self.teacher.tokens_of_map(top).pooled).float()

    # ------------------------------------------------------------------------------------------------ loss
    def forward(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Training-loop entry (:mod:`sbir.train`): ``sketch``, ``positive``, ``negative`` (images or cached
        inputs), ``sketch_label`` (the class of the sketch and of the positive) and ``negative_label``."""
        groups = [batch["sketch"], batch["positive"], batch["negative"]]
        if isinstance(groups[0], Mapping):
            stage_input = torch.cat([group["stage"] for group in groups])
        else:  # images: the frozen part runs once on the whole batch
            stage_input = self.stage_input(torch.cat(groups))
        sketches = len(stage_input) // 3
        domains = torch.cat([self._domains(sketches, "sketch", stage_input.device),
                             self._domains(2 * sketches, "photo", stage_input.device)])
        labels = torch.cat([batch["sketch_label"], batch["sketch_label"], batch["negative_label"]])
        seen = self.seen_label[labels]
        if bool((seen < 0).any()):
            raise ValueError("a training batch holds a class that is not among seen_classes")
        pooled = self.backbone.tokens_of_map(self.top(stage_input, domains)).pooled
        classification = F.cross_entropy(self.classifier(self.embedding(pooled)).float(), seen)
        parts = {"classification": float(classification.detach())}
        loss = classification
        if self.kd_weight > 0:
            if isinstance(groups[1], Mapping):
                teacher = torch.cat([groups[1]["logits"], groups[2]["logits"]]).float()
            else:
                teacher = self.teacher_logits(stage_input[sketches:])
            target = F.softmax((teacher + self.adjust_weight * self.adjustment[labels[sketches:]]) / self.temperature,
                               dim=-1)
            student = F.log_softmax(self.backbone.classifier(pooled[sketches:]).float() / self.temperature, dim=-1)
            distillation = -(target * student).sum(dim=-1).mean() * self.temperature ** 2
            loss = loss + self.kd_weight * distillation
            parts["distillation"] = float(distillation.detach())
        return loss, parts

    def extra_repr(self) -> str:
        return (f"stages={self.stages}, out_dim={self.out_dim}, kd_weight={self.kd_weight}, "
                f"adjust_weight={self.adjust_weight}, temperature={self.temperature}, domain={self.domain}, "
                f"seen_classes={len(self.seen_classes)}, adjusted_classes={len(self.imagenet_classes)}")
