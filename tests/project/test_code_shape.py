"""Short functions: none in the repository's Python (the library, experiments, benchmarks, tools and these
tests) over 50 lines, docstring and comments included."""

import ast
from pathlib import Path

import pytest
from helpers import ROOT

FOLDERS = ["recurrent", "experiments", "benchmarks", "tools", "tests"]
LIMIT = 50


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


SOURCES = sorted(path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short(path):
    long = [f"{name} (line {line}): {length} lines" for name, line, length in functions(path) if length > LIMIT]
    assert long == []
