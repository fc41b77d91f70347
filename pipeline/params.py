"""Reading ``params.yaml`` for the stages (the library itself never reads it), checked against :data:`SCHEMA`.

Every stage reads it through :func:`load`, which validates the whole file: a wrong type, a value out of its
range, a missing key or an unknown one (a typo such as ``train.step`` would otherwise be silently ignored)
is a :class:`~sbir.errors.SbirError` naming the key, its value and what is allowed, which the stages print
as one ``error: ...`` line with exit status 2. Only ``model.options`` is free-form: its per-method options
are checked by the method when the model is built.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from sbir.cli import IMAGE_SIZE_MAX, IMAGE_SIZE_MIN, SEED
from sbir.data.datasets import dataset_names
from sbir.errors import SbirError

#: the registries' names (``sbir.models.method_names()``, ``backbone_names()``), written out so that reading
#: params.yaml imports no model code (download and shard do not depend on it); a test keeps them equal
METHODS = ("clip_prompt", "frozen", "linear", "sake", "zse")
BACKBONES = ("ViT-B-32", "tf_efficientnet_lite0", "vit_base_patch16_224")

RAW = Path("data/raw")
SHARDS = Path("data/shards")
FEATURES = Path("data/features")
MODEL = Path("data/model")
EMBEDDINGS = Path("data/embeddings")


class Range(NamedTuple):
    """Numbers from ``low`` to ``high`` (None: unbounded; ``*_open``: the bound itself excluded); ``or_zero``
    also allows 0 (``shard.image_size``: 0 keeps each image's size)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    or_zero: bool = False

    def __contains__(self, value: object) -> bool:
        if self.or_zero and value == 0:
            return True
        low_ok = self.low is None or (self.low < value if self.low_open else self.low <= value)  # type: ignore
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)  # type: ignore
        return low_ok and high_ok  # nan fails both comparisons: out of every range

    def describe(self) -> str:
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.low is None:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"0 or {text}" if self.or_zero else text


class Param(NamedTuple):
    """One key of ``params.yaml``: its type (``(str, None)``: a string or null), the values allowed (a
    :class:`Range`, a tuple of choices, a regular expression the whole value must match, or None: any value
    of the type) and what it is."""

    kind: type | tuple[type | None, ...]
    allowed: Range | tuple[str, ...] | re.Pattern | None
    description: str


SEED_RANGE = Range(SEED.min, SEED.max)  # the CLI's --seed range
AT_LEAST_1, AT_LEAST_0 = Range(1), Range(0)
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")

#: Every key of params.yaml, group by group, in the file's order.
SCHEMA: dict[str, Param] = {
    "data.dataset": Param(str, tuple(dataset_names()), "the dataset"),
    "data.split": Param((str, None), None, "a standard split, a split of the dataset or a file of unseen classes; "
                                           "'' is the dataset's default"),
    "data.source": Param((str, None), None, "a local copy or a folder of archives; '' downloads"),
    "data.mirror": Param((str, None), None, "base URL of a mirror serving the archives; '' for none"),
    "data.synthetic_seed": Param(int, SEED_RANGE, "seed of the generated synthetic dataset"),
    "shard.image_size": Param(int, Range(IMAGE_SIZE_MIN, IMAGE_SIZE_MAX, or_zero=True),
                              "side of the square images in the shards; 0 keeps each image's size"),
    "shard.shard_size": Param(int, AT_LEAST_1, "samples per tar"),
    "shard.val_fraction": Param(float, Range(0, 1, high_open=True),
                                "fraction of the seen-class instances held out for validation"),
    "shard.seed": Param(int, SEED_RANGE, "seed of the hold-out and the shuffle"),
    "shard.max_per_class": Param(int, AT_LEAST_0, "images kept per class and modality; 0 keeps all"),
    "model.method": Param(str, METHODS, "the retrieval method"),
    "model.backbone": Param(str, BACKBONES, "the backbone"),
    "model.weights": Param((str, None), None, "package, hub or a local weights file; '' is the backbone's default"),
    "model.head_only": Param(bool, None, "linear/zse: train the heads on the cached frozen backbone; sake: its top "
                                         "stages on the cached frozen part"),
    "model.options": Param(dict, None, "per-method options, {method: {option: value}}"),
    "features.batch_size": Param(int, AT_LEAST_1, "images per batch of the feature cache"),
    "features.workers": Param(int, AT_LEAST_0, "data loading processes of the feature cache; 0 for none"),
    "features.threads": Param(int, AT_LEAST_0, "torch threads; 0 for torch's default"),
    "train.steps": Param(int, AT_LEAST_1, "training steps"),
    "train.batch_size": Param(int, AT_LEAST_1, "sketches per training batch"),
    "train.lr": Param(float, Range(0, low_open=True), "learning rate"),
    "train.weight_decay": Param(float, AT_LEAST_0, "AdamW weight decay"),
    "train.eval_every": Param(int, AT_LEAST_1, "steps between val evaluations"),
    "train.checkpoint_every": Param(int, AT_LEAST_1, "steps between checkpoints"),
    "train.seed": Param(int, SEED_RANGE, "seed of the initial weights and the batches"),
    "train.fine_grained": Param(bool, None, "positives are the sketch's own photo"),
    "train.workers": Param(int, AT_LEAST_0, "processes decoding the training images; 0 decodes in the training one"),
    "embed.part": Param(str, ("test", "val", "train"), "the part of the shards to embed"),
    "embed.batch_size": Param(int, AT_LEAST_1, "images per batch"),
    "embed.workers": Param(int, AT_LEAST_0, "data loading processes; 0 decodes in the model's process"),
    "embed.threads": Param(int, AT_LEAST_0, "torch threads; 0 for torch's default"),
    "embed.device": Param(str, DEVICE, "auto, cpu, cuda or cuda:N"),
    "evaluate.block_size": Param(int, AT_LEAST_1, "query rows scored at once"),
    "evaluate.pr_levels": Param(int, Range(2), "recall levels of the PR curve"),
    "evaluate.grid_queries": Param(int, AT_LEAST_0, "rows of the retrieval grid; 0 for none"),
    "evaluate.grid_top": Param(int, AT_LEAST_1, "photos per row of the retrieval grid"),
    "evaluate.seed": Param(int, SEED_RANGE, "seed of the grid's query choice"),
    "retrieval.mode": Param(str, ("token", "relation", "rerank"), "how photos are scored"),
    "retrieval.top_k": Param(int, AT_LEAST_1, "rerank: photos per sketch re-scored by the relation network"),
    "explain.queries": Param(int, AT_LEAST_1, "test sketches explained"),
    "explain.seed": Param(int, SEED_RANGE, "seed of the query choice"),
    "explain.top": Param(int, AT_LEAST_1, "retrieved photos explained per query"),
    "explain.lines": Param(int, Range(1, 200), "strongest patch matches drawn per pair, as sbir explain --top"),
    "explain.device": Param(str, DEVICE, "auto, cpu, cuda or cuda:N"),
}

GROUPS: dict[str, list[str]] = {}
for _key in SCHEMA:
    _group, _name = _key.split(".")
    GROUPS.setdefault(_group, []).append(_name)

_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}


def _show(value: Any) -> str:
    """``value`` as written in YAML terms (strings quoted), cut to a readable length."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_ok(param: Param, value: Any) -> bool:
    kinds = param.kind if isinstance(param.kind, tuple) else (param.kind,)
    if value is None:
        return None in kinds
    if isinstance(value, bool):  # bool is an int to Python, never to params.yaml
        return bool in kinds
    if float in kinds and isinstance(value, (int, float)):
        return math.isfinite(value)
    return any(kind is not None and isinstance(value, kind) for kind in kinds)


def _allowed_ok(param: Param, value: Any) -> bool:
    allowed = param.allowed
    if value is None or allowed is None:
        return True
    if isinstance(allowed, re.Pattern):
        return allowed.fullmatch(value) is not None
    return value in allowed


def expected(param: Param) -> str:
    """What a key takes, in words: ``an integer >= 1 (training steps)``."""
    kinds = param.kind if isinstance(param.kind, tuple) else (param.kind,)
    allowed = param.allowed
    if isinstance(allowed, tuple) and not isinstance(allowed, Range):
        text = "one of " + ", ".join(allowed)
    elif isinstance(allowed, re.Pattern):
        text = param.description
    else:
        text = " or ".join(_KIND_NAMES[kind] if kind is not None else "null" for kind in kinds)
        if isinstance(allowed, Range):
            text += (", " if allowed.or_zero else " ") + allowed.describe()
    return text if text == param.description else f"{text} ({param.description})"


def _hint(param: Param, value: Any) -> str:
    """Why a string may stand where a number was meant (PyYAML reads ``1e-3``, without a dot, as text)."""
    if not isinstance(value, str) or param.kind not in (int, float):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if param.kind is float and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
        return f"; YAML reads {value} as text: write {number!r}"
    return "; a quoted number is text: remove the quotes"


def _unknown(source: str, key: str, value: Any, known: list[str], prefix: str) -> SbirError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    where = f"{prefix.rstrip('.')} takes" if prefix else "the groups are"
    return SbirError(f"{source}: {key} is {_show(value)}, an unknown key{hint}; {where} {', '.join(known)}")


def validate(params: Any, source: str = "params.yaml") -> dict:
    """``params`` (params.yaml as read) checked against :data:`SCHEMA`; returned unchanged when valid.

    Raises :class:`SbirError` for the first problem found, group by group in the file's order: an unknown
    key first (a typo also makes its intended key missing, and the unknown key says more), then a missing
    key, a wrong type or a value out of range. ``model.options`` holds free per-method mappings.
    """
    groups = list(GROUPS)
    if not isinstance(params, dict):
        raise SbirError(f"{source} is {_show(params)}; expected a mapping of the groups {', '.join(groups)}")
    for group in params:
        if group not in GROUPS:
            raise _unknown(source, str(group), params[group], groups, "")
    for group, names in GROUPS.items():
        if group not in params:
            raise SbirError(f"{source}: {group} is missing; expected a mapping of {', '.join(names)}")
        values = params[group]
        if not isinstance(values, dict):
            raise SbirError(f"{source}: {group} is {_show(values)}; expected a mapping of {', '.join(names)}")
        for name in values:
            if name not in names:
                raise _unknown(source, f"{group}.{name}", values[name], names, f"{group}.")
        for name in names:
            key, param = f"{group}.{name}", SCHEMA[f"{group}.{name}"]
            if name not in values:
                raise SbirError(f"{source}: {key} is missing; expected {expected(param)}")
            value = values[name]
            if not (_type_ok(param, value) and _allowed_ok(param, value)):
                raise SbirError(f"{source}: {key} is {_show(value)}; expected {expected(param)}{_hint(param, value)}")
    for method, options in params["model"]["options"].items():
        if options is not None and not isinstance(options, dict):
            raise SbirError(f"{source}: model.options.{method} is {_show(options)}; expected a mapping of the "
                            f"{method} method's options (or null)")
    return params


def load(path: str = "params.yaml") -> dict:
    """``path`` read and validated (:func:`validate`); :class:`SbirError` when it is absent or not YAML."""
    try:
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SbirError(f"{path}: no such file (run the stages in the project's root)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SbirError(f"{path}: not valid YAML{where}: {problem}") from None
    return validate(params, path)

