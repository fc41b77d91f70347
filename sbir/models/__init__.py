"""Registry of retrieval methods: ``create_model("frozen", "tf_efficientnet_lite0")``, ``method_names()``.

One module per method (``frozen``, ``linear``, ``zse``, ``clip_prompt``, ``sake``), each a
:class:`~sbir.models.base.RetrievalModel` subclass registered by name with :func:`register_method`;
the interface a method implements is documented in ``sbir.models.base``, the backbones in
``sbir.models.backbones``.
"""

from __future__ import annotations

# Importing the modules registers them.
from sbir.models import clip_prompt, frozen, linear, sake, zse  # noqa: E402,F401,I001
from sbir.models.backbones import Backbone, backbone_names, create_backbone
from sbir.models.base import RetrievalModel
from sbir.models.registry import create_model, method_names, register_method

__all__ = ["Backbone", "RetrievalModel", "backbone_names", "create_backbone", "create_model", "method_names",
           "register_method"]
