"""Imports point one way: utils (and errors) < data < models < train, retrieval < explain < serve < cli; metrics imports
nothing of the project; train and retrieval never import each other's way back (retrieval never imports
train); the library never imports dvclive (the CLI plugs in sbir_dvc's logger)
and never reads params.yaml; no import cycle between modules.
Function-level imports count; ``if TYPE_CHECKING:`` blocks do not."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import ROOT, imported_names

LAYERS = {"errors": 0, "utils": 0, "data": 1, "models": 2, "train": 3, "retrieval": 3, "explain": 4, "serve": 5,
          "cli": 6}


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
    found = imported_names(path, name if path.name == "__init__.py" else name.rpartition(".")[0])
    return {m for m in found if m in MODULES or m.rpartition(".")[0] not in MODULES}  # modules, not their names


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
    offenders = [name for name in MODULES if {m.split(".")[0] for m in imports(name)}
                 & ({"dvclive"} if name.startswith("sbir.cli") else {"dvclive", "sbir_dvc", "yaml"})]
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
