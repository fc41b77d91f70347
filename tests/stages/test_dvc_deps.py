"""Every DVC stage depends on all the code it runs: the modules its entry point imports, transitively within
the repository (function-level imports included), each lie in a path of the stage's ``deps``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, imported_names

PACKAGES = ("sbir", "pipeline")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_by(name: str) -> set[str]:
    """The in-repository modules ``name`` imports anywhere in its body, and their parent packages."""
    path = module_file(name)
    found = imported_names(path, name if path.name == "__init__.py" else name.rpartition(".")[0])
    modules = set()
    for dotted in found:
        parts = dotted.split(".")
        if parts[0] in PACKAGES:
            modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i])))
    return modules


def closure(entry: str) -> set[str]:
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_by(name)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_code_it_runs(stage):
    entry = re.search(r"python -m (\S+)", STAGES[stage]["cmd"])[1]
    files = sorted(module_file(name).relative_to(ROOT).as_posix() for name in closure(entry))
    assert len(files) > 3, files  # the entry point, its params reader, and the library it calls
    deps = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in STAGES[stage].get("deps", [])]
    uncovered = [file for file in files if not any(file == dep or file.startswith(dep.rstrip("/") + "/")
                                                   for dep in deps)]
    assert uncovered == [], f"stage {stage}: add to its deps in dvc.yaml: {uncovered}"
