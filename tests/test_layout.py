"""The house plan, checked on the source: each floor imports only the floors below it, and module-level
imports form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "lit_gen"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_level_only: bool) -> set[str]:
    """The lit_gen modules a file imports (at module level only, or anywhere in it)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "lit_gen" or name.startswith("lit_gen.")}


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolved(names: set[str]) -> set[str]:
    """Imported names narrowed to modules of the package (``from a.b import C`` imports ``a.b``)."""
    return {name for name in names if name in MODULES}


def family_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "models" and parts[2] != "base":
        return parts[2]
    return None


def floor_violations(module: str, imported: set[str]) -> list[str]:
    out = []
    for name in sorted(imported):
        if module.startswith("lit_gen.core") and not name.startswith(("lit_gen.core", "lit_gen.errors")) \
                and name != "lit_gen":
            out.append(f"{module} (core) imports {name}")
        if module.startswith(("lit_gen.datamodules", "lit_gen.nn", "lit_gen.core")) \
                and name.startswith(("lit_gen.evaluation", "lit_gen.models", "lit_gen.cli")):
            out.append(f"{module} imports {name} from a floor above")
        if module.startswith("lit_gen.evaluation") and family_of(name):
            out.append(f"{module} (evaluation) imports the family module {name}")
        family = family_of(module)
        if family and family_of(name) not in (None, family):
            out.append(f"{module} (family {family}) imports another family's {name}")
        if not module.startswith(("lit_gen.cli", "lit_gen.command")) and name.startswith("lit_gen.cli"):
            out.append(f"{module} imports the CLI")
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_floors_below_it(module):
    assert floor_violations(module, resolved(imports(MODULES[module], module_level_only=False))) == []


def test_module_level_imports_form_no_cycle():
    graph = {m: resolved(imports(p, module_level_only=True)) - {m} for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if name.startswith(module + "."):
                continue  # a package importing its own submodules is how packages work
            if state.get(name) == 1:
                cycles.append([*path[path.index(name):], name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checks_see_a_violation():
    """The rules above can fail: a core module importing evaluation, a family importing another."""
    assert floor_violations("lit_gen.core.levels", {"lit_gen.evaluation.metrics"})
    assert floor_violations("lit_gen.models.vae.module", {"lit_gen.models.flow.module"})
    assert floor_violations("lit_gen.evaluation.callback", {"lit_gen.models.gan.module"})
    assert not floor_violations("lit_gen.models.vae.module", {"lit_gen.models.base", "lit_gen.nn.priors"})
