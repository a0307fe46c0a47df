"""The structure docs/ARCHITECTURE.md describes: a torch-only core, and no two modules that import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import colddiff

PACKAGE = Path(colddiff.__file__).resolve().parent

#: what a user gets without Lightning: the degradation library, samplers, schedules, priors, networks, data and
#: file input/output, objectives, the inference pipeline and exports (torch alone), and the evaluation library
#: (torch and torchmetrics)
TORCH_ONLY = [
    "colddiff.degradations", "colddiff.degradations.functional", "colddiff.sampling", "colddiff.schedules",
    "colddiff.priors", "colddiff.nets", "colddiff.datasets", "colddiff.io", "colddiff.estimation", "colddiff.tiling",
    "colddiff.objectives", "colddiff.pipeline", "colddiff.export",
]
WITHOUT_LIGHTNING = ["colddiff.evaluation"]


def _imported_packages(modules: list[str]) -> set[str]:
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_the_core_imports_no_lightning():
    assert _imported_packages(TORCH_ONLY) & {"lightning", "pytorch_lightning", "torchmetrics"} == set()
    assert _imported_packages(WITHOUT_LIGHTNING) & {"lightning", "pytorch_lightning"} == set()
    assert "lightning" in _imported_packages(["colddiff.module"])  # the check sees Lightning where it is


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """colddiff modules imported by a file, at any depth (functions too), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {node.module})
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) - {name} for name, path in files.items()}


def test_no_two_modules_import_each_other():
    graph = import_graph()
    # strongly connected components (Tarjan): any component with more than one module is an import loop
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert loops == [], f"modules that import each other: {loops}"


def test_the_import_check_sees_a_loop():
    """The graph is real: module.py imports the checkpoint code (which must not import module.py back)."""
    graph = import_graph()
    assert "colddiff.checkpoint" in graph["colddiff.module"]
    assert "colddiff.module" not in graph["colddiff.checkpoint"]
    assert "colddiff.module" not in graph["colddiff.callbacks"]  # only under TYPE_CHECKING
