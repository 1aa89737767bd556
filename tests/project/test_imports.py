"""Imports point one way: no cycle among the modules of recurrent/ and experiments/ (imports inside
functions included), and recurrent's layers sit in order: user-level features (layers, custom cells,
recording) above the kernels, the kernels above the cells, the cells above the checks."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest
from helpers import ROOT


def module_files() -> Dict[str, Path]:
    files = {}
    for package in ("recurrent", "experiments"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported(module: str, path: Path, known: Set[str]) -> Set[str]:
    """The known modules that ``module`` imports anywhere in its file (``from x import y`` counts
    x, and x.y when y is a module)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    # A package's own __init__ is imported by every module in it: not an edge worth following.
    return {m for m in found & known if m != module and not module.startswith(m + ".")}


def import_graph() -> Dict[str, Set[str]]:
    files = module_files()
    return {m: imported(m, path, set(files)) for m, path in files.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    found, done = [], set()

    def visit(node: str, path: List[str]) -> None:
        for target in sorted(graph[node]):
            if target in path:
                found.append(path[path.index(target) :] + [target])
            elif target not in done:
                visit(target, path + [target])
        done.add(node)

    for module in sorted(graph):
        visit(module, [module])
    return found


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


# Each level may import only from the levels after it (and torch).
LEVELS = [
    ["recurrent", "recurrent.build", "recurrent.recording", "recurrent.variants", "recurrent.example_cells"],
    ["recurrent.custom"],
    ["recurrent.layers", "recurrent.cell_calls"],
    ["recurrent.routes"],
    ["recurrent.onnx_native"],
    ["recurrent.kernels"],
    ["recurrent.cells"],
    ["recurrent.checks", "recurrent._amp", "recurrent._jit", "recurrent._cache"],
    ["recurrent.settings"],
]


def level(module: str) -> int:
    """A module's level: its own entry, else that of its package (recurrent.kernels.* are kernels)."""
    for name in [module] + [module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)]:
        for index, names in enumerate(LEVELS):
            if name in names:
                return index
    raise AssertionError(f"{module} has no level in LEVELS")


@pytest.mark.parametrize("module", sorted(m for m in module_files() if m.startswith("recurrent")))
def test_imports_point_down(module):
    graph = import_graph()
    upward = [t for t in graph[module] if level(t) < level(module)]
    assert upward == [], f"{module} imports from above it: {upward}"


@pytest.mark.parametrize("package", ["recurrent.kernels.cpu", "recurrent.kernels.triton"])
def test_the_backend_kernels_take_only_the_contract_from_the_kernels_above_them(package):
    """cpu/ and triton/ know a kernel's contract (kernels/contract.py), not the autograd wiring, the stack
    or the registry that use them."""
    graph = import_graph()
    above = {"recurrent.kernels.autograd", "recurrent.kernels.stack", "recurrent.kernels.registry"}
    for module in graph:
        if module.startswith(package):
            assert not graph[module] & above, f"{module} imports {sorted(graph[module] & above)}"


# What a call's route is decided from: read in recurrent/routes.py alone (the layers ask it, once a call).
ROUTE_FACTS = ["is_compiling", "is_tracing", "capture_scalar_outputs", "forward_ad", "cpu.available"]
ROUTE_FACTS += ["TRITON_INTERPRET"]


def test_one_file_decides_the_route():
    deciding = {}
    for path in sorted((ROOT / "recurrent").rglob("*.py")):
        found = [fact for fact in ROUTE_FACTS if fact in path.read_text()]
        if found:
            deciding[str(path.relative_to(ROOT))] = found
    allowed = {"recurrent/routes.py", "recurrent/kernels/triton/common.py"}  # (the interpreter's own tanh)
    assert set(deciding) <= allowed, deciding
    callers = [p for p in (ROOT / "recurrent").rglob("*.py") if "routes.decide(" in p.read_text()]
    assert [str(p.relative_to(ROOT)) for p in callers] == ["recurrent/layers.py"]
