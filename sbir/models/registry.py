"""The registry of retrieval methods (as timm's ``_registry``): :func:`register_method` for the method modules,
:func:`create_model` and :func:`method_names` for everyone (re-exported by :mod:`sbir.models`)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable

import torch

from sbir.errors import SbirError
from sbir.models.backbones import Backbone, Weights, create_backbone
from sbir.models.base import RetrievalModel

_METHODS: dict[str, Callable[..., RetrievalModel]] = {}


def register_method(name: str):
    """Class decorator: make a method available as ``name``; it is built as ``cls(backbone, **options)``."""

    def decorate(cls):
        cls.method = name
        _METHODS[name] = cls
        return cls

    return decorate


def method_names() -> list[str]:
    return sorted(_METHODS)


def create_model(method: str, backbone: Backbone | str, weights: Weights = None, random_init: bool = False,
                 seed: int | None = None, **options) -> RetrievalModel:
    """The method ``method`` on ``backbone`` (a :class:`Backbone`, or a backbone name built here with
    ``weights`` and ``random_init``, see ``create_backbone``); ``options`` go to the method.

    ``seed``: initialise every randomly initialised parameter (heads, prompts, a random-init backbone)
    from this seed, leaving torch's global random state as it was, so that the same seed gives the same
    starting weights in any process; None draws from the global state. Options the method does not take,
    or values it refuses, raise :class:`SbirError`.
    """
    try:
        factory = _METHODS[method]
    except KeyError:
        raise SbirError(f"unknown method '{method}': choose one of {', '.join(method_names())}") from None
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(seed)
        if isinstance(backbone, str):
            backbone = create_backbone(backbone, weights=weights, random_init=random_init)
        try:
            inspect.signature(factory).bind(backbone, **options)
        except TypeError as error:
            raise SbirError(f"method '{method}': bad options {sorted(options)}: {error}") from None
        try:
            return factory(backbone, **options)
        except ValueError as error:  # an option value that does not fit this backbone or the other options
            name = getattr(backbone, "name", "") or type(backbone).__name__
            raise SbirError(f"method '{method}' on {name}: {error}") from None
