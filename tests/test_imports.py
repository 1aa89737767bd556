"""Imports point one way: no cycle among the modules of recurrent/ and experiments/ (imports inside
functions included), and recurrent's layers sit in order: user-level features (layers, custom cells,
recording) above the kernels, the kernels above the cells, the cells above the checks."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    ["recurrent.layers"],
    ["recurrent.onnx_native"],
    ["recurrent.kernels"],
    ["recurrent.cells"],
    ["recurrent.checks", "recurrent._amp", "recurrent._jit", "recurrent._cache"],
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
