"""``sake``: the student starts as the teacher, only the top stages and heads train, the loss is the documented
classification + semantic-aware distillation (checked against a direct computation), the domain gates start
as the identity, cached inputs and images give the same embeddings, and bad options are refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbir.errors import SbirError
from sbir.models import create_model
from sbir.models.sake import batch_norms
from tests.helpers import tiny_vit

CLASSES = ["ant", "bee", "cat", "dog"]
SEEN = ["ant", "bee", "cat"]


def sake(**options):
    return create_model("sake", "tf_efficientnet_lite0", random_init=True, seed=0, class_names=CLASSES,
                        seen_classes=SEEN, **options)


def images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def batch_of(model, count: int = 2, seed: int = 0, cached: bool = False) -> dict:
    groups = [images(count, seed + i) for i in range(3)]
    if cached:
        with torch.no_grad():
            groups = [{"stage": model.stage_input(g), "logits": model.teacher.classify(g)} for g in groups]
    return {"sketch": groups[0], "positive": groups[1], "negative": groups[2],
            "sketch_label": torch.tensor([0, 1] * (count // 2)), "negative_label": torch.tensor([2, 0] * (count // 2))}


@torch.no_grad()
def test_the_student_starts_as_the_teacher_and_cached_inputs_equal_images():
    model = sake().eval()
    x = images(2, 0)
    student = model.backbone.classifier(model.student_tokens(x, "photo").pooled)
    assert torch.allclose(student, model.teacher.classify(x), atol=1e-3)
    assert torch.allclose(model.student_tokens(x, "photo").pooled, model.backbone(x), atol=1e-5)
    cached = {"stage": model.stage_input(x), "logits": model.teacher.classify(x)}
    assert torch.allclose(model.embed(cached, "sketch"), model.embed(x, "sketch"), atol=1e-6)
    # the gates start as the identity: the same image gives the same embedding in either domain
    assert torch.allclose(model.embed(x, "sketch"), model.embed(x, "photo"), atol=1e-6)
    assert model.embed(x, "photo").shape == (2, 512)


def test_only_the_top_stages_and_heads_train_and_the_teacher_stays():
    model = sake(stages=1).train()
    teacher = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    loss, parts = model(batch_of(model))
    assert set(parts) == {"classification", "distillation"} and parts["distillation"] > 0
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    last_stage = f"backbone.model.blocks.{model.backbone.num_stages - 1}."
    assert any(n.startswith(last_stage) for n in with_grad)
    assert {"embedding.weight", "classifier.weight", "gates.0", "gates.1", "backbone.model.classifier.weight",
            "backbone.model.conv_head.weight"} <= with_grad
    frozen = ("backbone.model.blocks.5.", "backbone.model.conv_stem", "teacher.")
    assert not any(n.startswith(frozen) for n in with_grad)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher[key]), key
    assert batch_norms(model) and not any(norm.training for norm in batch_norms(model))


def test_more_stages_train_when_asked():
    model = sake(stages=2)
    trainable = {name.split(".")[3] for name, p in model.named_parameters()
                 if p.requires_grad and name.startswith("backbone.model.blocks.")}
    assert trainable == {"5", "6"} and len(model.gates) == 3


def test_the_loss_is_classification_plus_semantic_aware_distillation():
    model = sake(imagenet_classes={"bee": [7, 9]}, kd_weight=0.5, adjust_weight=0.3, temperature=2.0).train()
    batch = batch_of(model, cached=True)
    torch.manual_seed(0)
    with torch.no_grad():
        model.gates[1].normal_()  # photos and sketches now differ
    loss, parts = model(batch)
    with torch.no_grad():
        stage = torch.cat([batch[g]["stage"] for g in ("sketch", "positive", "negative")])
        domains = torch.tensor([0, 0, 1, 1, 1, 1])
        pooled = model.backbone.tokens_of_map(model.top(stage, domains)).pooled
        labels = torch.tensor([0, 1, 0, 1, 2, 0])
        ce = F.cross_entropy(model.classifier(model.embedding(pooled)), labels)
        teacher = torch.cat([batch["positive"]["logits"], batch["negative"]["logits"]])
        adjust = torch.zeros_like(teacher)
        adjust[1, [7, 9]] = 0.3  # the positive photo of 'bee' (label 1); the others' classes have no ImageNet class
        target = F.softmax((teacher + adjust) / 2.0, dim=-1)
        kd = -(target * F.log_softmax(model.backbone.classifier(pooled[2:]) / 2.0, dim=-1)).sum(-1).mean() * 4.0
    assert parts["classification"] == pytest.approx(float(ce), rel=1e-5)
    assert parts["distillation"] == pytest.approx(float(kd), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ce + 0.5 * kd), rel=1e-5)
    # the adjustment matters: without it the distillation term differs
    _, plain = sake(kd_weight=0.5, adjust_weight=0.0, temperature=2.0).train()(batch)
    assert plain["distillation"] != pytest.approx(parts["distillation"], rel=1e-4)


def test_without_distillation_there_is_no_teacher_and_without_domain_no_gates():
    model = sake(kd_weight=0.0, domain=False).train()
    assert model.teacher is None and model.gates is None
    _, parts = model(batch_of(model))
    assert set(parts) == {"classification"}


def test_a_batch_of_an_unseen_class_is_refused():
    model = sake().train()
    batch = batch_of(model)
    batch["negative_label"] = torch.tensor([3, 0])  # 'dog' is not a seen class
    with pytest.raises(ValueError, match="not among seen_classes"):
        model(batch)


@pytest.mark.parametrize("options, message", [
    ({"stages": 8}, "stages must be in [0, 7]"),
    ({"class_names": []}, "needs the dataset's class names"),
    ({"seen_classes": ["emu"]}, "not among class_names"),
    ({"imagenet_classes": {"emu": [1]}}, "not among class_names"),
    ({"temperature": 0.0}, "temperature and backbone_lr_scale > 0"),
    ({"backbone_lr_scale": 0.0}, "temperature and backbone_lr_scale > 0"),
])
def test_bad_options_are_refused(options, message):
    arguments = {"class_names": CLASSES, "seen_classes": SEEN, **options}
    with pytest.raises(SbirError, match=message.replace("[", r"\[").replace("]", r"\]")):
        create_model("sake", "tf_efficientnet_lite0", random_init=True, **arguments)


def test_a_backbone_without_stages_and_classifier_is_refused():
    with pytest.raises(SbirError, match="use tf_efficientnet_lite0"):
        create_model("sake", tiny_vit(), class_names=CLASSES)


def test_parameter_groups_scale_the_pretrained_parts_only():
    model = sake(backbone_lr_scale=0.1)
    pretrained, new = model.parameter_groups(1e-3)
    assert pretrained["lr"] == pytest.approx(1e-4) and new["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert pretrained["params"] and all(names[id(p)].startswith("backbone.") for p in pretrained["params"])
    gates = {f"gates.{number}" for number in range(model.stages + 1)}  # one per trained stage, one on the head
    assert model.stages >= 1 and {names[id(p)] for p in new["params"]} == gates | {
        "embedding.weight", "embedding.bias", "classifier.weight", "classifier.bias"}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(pretrained["params"]) + len(new["params"]) == len(trainable)


def test_the_class_map_file_is_read_by_training_not_passed_to_the_model():
    """params.yaml's imagenet_map names a file for training; building the model for embed/evaluate/explain from
    the same options must not pass it to the model (the embed stage failed with 'bad options')."""
    from sbir.models.folder import model_options

    spec = {"method": "sake", "backbone": "tf_efficientnet_lite0", "weights": None, "head_only": True,
            "options": {"imagenet_map": "", "out_dim": 8}}
    index = {"classes": CLASSES, "seen_classes": SEEN}
    with pytest.raises(SbirError, match="imagenet_map"):
        create_model("sake", "tf_efficientnet_lite0", random_init=True, class_names=CLASSES, imagenet_map="")

    options = model_options(spec, index)
    assert "imagenet_map" not in options and options["out_dim"] == 8 and options["class_names"] == CLASSES


def test_images_and_cached_inputs_give_the_same_loss():
    """From images, the teacher's logits come from the frozen part's output through the teacher's top stages; from
    the cache, they are read: the two loss terms agree."""
    model = sake().train()
    _, from_images = model(batch_of(model))
    _, from_cache = model(batch_of(model, cached=True))
    for name in ("classification", "distillation"):
        assert from_images[name] == pytest.approx(from_cache[name], rel=1e-4), name
