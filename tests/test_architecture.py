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
#: the sampling and evaluation command lines (sample.py, evaluate.py) run on the core: no Lightning either
COMMAND_LINES = ["colddiff._cli", "colddiff.sample_cli", "colddiff.evaluate_cli"]


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


def test_the_sampling_and_evaluation_command_lines_import_no_lightning():
    assert _imported_packages(COMMAND_LINES) & {"lightning", "pytorch_lightning"} == set()
    for name in COMMAND_LINES:  # nor at any depth of their code (a function-level import)
        assert {"colddiff.module", "colddiff.cli", "colddiff.callbacks", "colddiff.checkpoint"} & \
            _reachable(import_graph(), name) == set(), name


def test_sampling_from_an_export_runs_without_lightning(tmp_path):
    """A whole sample.py run (restore, and reconstruct from the embedded digits) on an export: Lightning is never
    imported (only a training checkpoint's own recorded data module would need it)."""
    code = f"""
import sys
import torch
import numpy as np
from PIL import Image
import colddiff.degradations as cd
from colddiff.nets import ConvNeXtUNet
from colddiff.pipeline import Pipeline
from colddiff.sample_cli import main
root = {str(tmp_path)!r}
net = ConvNeXtUNet(in_channels=1, dim=4, dim_mults=(1, 2), num_blocks=1, attention="none", image_size=16)
Pipeline(cd.GaussianBlur(4, kernel_size=5, sigma=1.0), net, image_size=16, channels=1).save(root + "/export")
Image.fromarray(np.zeros((16, 16), np.uint8), "L").save(root + "/in.png")
main(["restore", "--ckpt", root + "/export", "--out", root + "/a", "--input", root + "/in.png", "--level", "auto"])
main(["reconstruct", "--ckpt", root + "/export", "--out", root + "/b", "--dataset", "embedded-mnist", "--num", "2"])
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"lightning", "pytorch_lightning"}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]"


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


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for other in graph[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


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


def test_signal_noise_is_a_degradation_whose_policy_lives_in_objectives_and_sampling():
    """``SignalNoise`` is an abstract :class:`Degradation` (the protocol reads its own ``num_steps``, buffers and
    ``reestimate``), not a mixin reaching into a host; the sampler maths built on it (the ancestral posterior draw)
    is in ``colddiff.sampling`` and the training policy (the default objective) in ``colddiff.objectives``: no
    ``default_objective`` in ``colddiff/degradations`` returns an objective's name (operators declare theirs as
    data, ``default_objective_spec``)."""
    import colddiff.degradations as cd
    from colddiff.degradations.base import Degradation, SignalNoise
    from colddiff.degradations.noise import NoiseParams
    from colddiff.objectives import OBJECTIVES

    assert issubclass(SignalNoise, Degradation) and SignalNoise.reestimate is False
    for cls in (cd.GaussianNoise, cd.FlowNoise, cd.BlurNoise, cd.Mix):
        assert issubclass(cls, SignalNoise), cls
    for cls in (cd.GaussianNoise, cd.FlowNoise, cd.BlurNoise):  # the noise param's methods still come first
        assert cls.make_params is NoiseParams.make_params and cls.check_params is NoiseParams.check_params, cls
    assert not hasattr(SignalNoise, "ancestral_step") and not hasattr(SignalNoise, "ancestral_refusal")
    assert SignalNoise.default_objective is Degradation.default_objective
    for path in sorted((PACKAGE / "degradations").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "default_objective":
                returned = {leaf.value for ret in ast.walk(node) if isinstance(ret, ast.Return) and ret.value
                            for leaf in ast.walk(ret.value) if isinstance(leaf, ast.Constant)}
                assert not returned & set(OBJECTIVES), (path.name, node.lineno, returned)
