"""Imports point one way: utils (and errors) < data < models < train, retrieval < explain < cli; metrics imports
nothing of the project; train and retrieval never import each other's way back (retrieval never imports
train); the library never imports dvclive and never reads params.yaml; no import cycle between modules.
Function-level imports count; ``if TYPE_CHECKING:`` blocks do not."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

LAYERS = {"errors": 0, "utils": 0, "data": 1, "models": 2, "train": 3, "retrieval": 3, "explain": 4, "cli": 5}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "sbir").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            module = (".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                      if node.level else node.module)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None  # None: sbir/__init__.py, the lazy public API


def test_every_module_has_a_layer():
    assert len(MODULES) > 30
    assert [name for name in MODULES if name != "sbir" and layer(name) is None] == []


def test_imports_point_down():
    wrong = []
    for name in MODULES:
        for target in imports(name):
            if target in MODULES and layer(name) is not None and layer(target) is not None:
                if layer(target) > layer(name):
                    wrong.append(f"{name} -> {target}")
                elif name.startswith("sbir.retrieval") and target.startswith("sbir.train"):
                    wrong.append(f"{name} -> {target} (retrieval never imports train)")
    assert wrong == []


def test_metrics_imports_nothing_of_the_project():
    assert [m for m in imports("sbir.retrieval.metrics") if m.split(".")[0] == "sbir"] == []


def test_the_library_never_imports_dvclive_or_yaml():
    offenders = [name for name in MODULES if not name.startswith("sbir.cli")
                 and {m.split(".")[0] for m in imports(name)} & {"dvclive", "yaml"}]
    assert offenders == []


def test_no_import_cycles():
    graph = {name: {t for t in imports(name) if t in MODULES and t != name} for name in MODULES}
    # (a registry's __init__ that imports its modules, each importing ``register`` back from the __init__,
    # is a cycle: the registries live in ``registry.py``, as in timm)
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])
    assert cycles == []
