"""The layering of the code base: imports point down only, and no module imports itself in a circle.

Every import is parsed (module level and inside functions; ``if TYPE_CHECKING:`` blocks excluded,
they never run). Layers, lowest first (see README, Layout):

    harness.core      stdlib + numpy (+ torch/packaging inside the few functions that need them)
    harness.model     -> core
    harness.results   -> core
    harness.backends  -> core, model
    model_zoo         -> core, model
    harness.report    -> core, results (and its data modules never import its views)
    harness.run       -> everything above
    harness.exec      -> core, run, results
    faces             harness (package), cli, pytest_plugin, selection, summary: anything
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "model_zoo")
MAX_LINES = 400

ALLOWED: dict[str, set[str]] = {
    "harness.core": set(),
    "harness.model": {"harness.core"},
    "harness.results": {"harness.core"},
    "harness.backends": {"harness.core", "harness.model"},
    "model_zoo": {"harness.core", "harness.model"},
    "harness.report": {"harness.core", "harness.results"},
    "harness.run": {"harness.core", "harness.model", "harness.results", "harness.backends", "model_zoo"},
    "harness.exec": {"harness.core", "harness.run", "harness.results"},
}
FACES = {"harness", "harness.cli", "harness.pytest_plugin", "harness.selection", "harness.summary"}
CORE_THIRD_PARTY = {"numpy", "torch", "packaging"}
"""What harness.core may import beyond the standard library (torch only inside ModelSpec.build)."""
REPORT_VIEWS = {"harness.report.page", "harness.report.dashboard", "harness.report.compare_view",
                "harness.report.trend", "harness.report.ops", "harness.report"}
REPORT_DATA = {"harness.report.load", "harness.report.regress", "harness.report.thresholds",
               "harness.report.figures", "harness.report.text"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out[name] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str) -> set[str]:
    """Absolute module names imported by module ``name`` (resolved to modules of this project where possible)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def layer_of(name: str) -> str | None:
    """The layer a module belongs to (longest matching prefix), None for faces and foreign modules."""
    if name in FACES:
        return None
    return max((layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")), key=len, default=None)


def test_every_import_points_down_a_layer():
    bad = []
    for name in MODULES:
        layer = layer_of(name)
        if layer is None:
            continue
        for target in imports_of(name):
            top = target.split(".")[0]
            if top not in PACKAGES:
                if layer == "harness.core" and top not in sys.stdlib_module_names and top not in CORE_THIRD_PARTY:
                    bad.append(f"{name} imports third-party {target} (core is stdlib + numpy)")
                continue
            target_layer = layer_of(target)
            if target in FACES or (target_layer != layer and target_layer not in ALLOWED[layer]):
                bad.append(f"{name} ({layer}) imports {target} ({target_layer or 'face'})")
            if name in REPORT_DATA and target in REPORT_VIEWS:
                bad.append(f"{name} (report data) imports the view {target}")
    assert not bad, "imports pointing up a layer:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = {name: {t for t in imports_of(name) if t in MODULES and t != name} for name in MODULES}
    # a package's __init__ importing its submodules is how packages work, not a cycle of logic
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".") and not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                dfs(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_stays_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (limit {MAX_LINES}): split it"


def test_the_checker_sees_function_local_imports_and_skips_type_checking():
    assert "model_zoo" in imports_of("harness.run.case") or "model_zoo.registry" in imports_of("harness.run.case")
    assert "harness.model.export" not in imports_of("harness.backends.base")  # TYPE_CHECKING only
    assert layer_of("harness.core.types") == "harness.core"
    assert layer_of("harness.cli") is None
