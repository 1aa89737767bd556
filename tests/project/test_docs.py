"""The code examples of the README and of the docs site (docs/*.md) run as written; the README stays
a short page whose links resolve; the site builds without a warning.

Which blocks run: every fenced block whose info string is exactly ``python`` (a line ```` ```python ````
opens it), in README.md and docs/*.md. Each runs alone, in a fresh interpreter, from a file in a
temporary folder (TorchScript reads a custom cell's source from its file), with none of the
library's environment switches set (``RECURRENT_BACKEND``, ``RECURRENT_DISABLE_JIT``,
``RECURRENT_FAST_CPU``, ``TRITON_INTERPRET``), as a reader who copies it would run it. It must exit
with status 0 and write nothing containing "warn" to stderr (no deprecation notice reaches the reader).

A block that is meant to be read, not run (a fragment, a shell command, a usage line), is fenced as
something else: ```` ```text ````, ```` ```sh ````.

Printed results: where a ``print(...)`` line of a block (at the block's top level) ends in a comment,
the comments of those lines are the block's expected stdout, one line per print, in order
(``print(tuple(h.shape))  # (3, 20)``). The custom-cells example has its own test below.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, NamedTuple, Tuple

import pytest
from helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 150

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
EXPECTED_PRINT = re.compile(r"^print\(.*\)[ \t]+#[ \t]?(.*?)[ \t]*$", re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SWITCHES = ("RECURRENT_BACKEND", "RECURRENT_DISABLE_JIT", "RECURRENT_FAST_CPU", "TRITON_INTERPRET")


class Block(NamedTuple):
    page: str  # path relative to the repository root
    index: int  # 1-based, among the page's python blocks
    code: str


def python_blocks(page: Path) -> List[Block]:
    name = page.relative_to(ROOT).as_posix()
    return [Block(name, i, m.group(1)) for i, m in enumerate(FENCE.finditer(page.read_text()), 1)]


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


@functools.cache
def run_code(code: str) -> Tuple[int, str, str]:
    """(return code, stdout, stderr) of ``code`` run from a file in a fresh folder."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "example.py"
        script.write_text(code)
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=folder, env=env
        )
    return done.returncode, done.stdout, done.stderr


def test_blocks_are_found():
    """The pages the README points at have examples, and the fence pattern sees them."""
    pages = {block.page for block in BLOCKS}
    assert {"README.md", "docs/index.md", "docs/custom-cells.md", "docs/recording.md"} <= pages, pages


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}#{b.index}" for b in BLOCKS])
def test_python_block_runs(block: Block):
    returncode, stdout, stderr = run_code(block.code)
    assert returncode == 0, f"{block.page}, python block {block.index}:\n{stderr}"
    assert "warn" not in stderr.lower(), f"{block.page}, python block {block.index}:\n{stderr}"
    expected = EXPECTED_PRINT.findall(block.code)
    if expected:
        assert stdout.splitlines() == expected, f"{block.page}, python block {block.index}"


def test_custom_cells_example_runs():
    """A cell the package does not ship, as a 2-layer bidirectional batch_first layer with a backward
    pass (run from a file: TorchScript reads the cell's source)."""
    blocks = python_blocks(DOCS / "custom-cells.md")
    assert blocks, "docs/custom-cells.md has no python block"
    code = blocks[0].code
    assert "class MinimalGatedUnit(CustomCell)" in code and "bidirectional=True" in code and ".backward()" in code
    returncode, stdout, stderr = run_code(code)
    assert returncode == 0, stderr
    assert stdout.strip() == "(32, 28, 128) (4, 32, 64) (128, 64)"
    assert "warn" not in stderr.lower(), stderr  # no TorchScript deprecation notice reaches the user


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_readme_keeps_the_two_commands():
    text = README.read_text()
    assert "| main job: the Fashion-MNIST experiments of the reference report | `make reproduce` |" in text
    assert "| the tests | `make test` |" in text


def relative_links(page: Path) -> List[str]:
    """The page's link targets that are paths in this repository (no scheme, not a bare anchor)."""
    targets = LINK.findall(page.read_text())
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_links_into_docs_resolve():
    links = [t for t in relative_links(README) if t.startswith("docs/")]
    assert links, "README.md links to no page of docs/"
    missing = [t for t in links if not (ROOT / t.split("#")[0]).is_file()]
    assert missing == [], f"README.md links to docs pages that do not exist: {missing}"


def test_readme_relative_links_resolve():
    missing = [t for t in relative_links(README) if not (ROOT / t.split("#")[0]).exists()]
    assert missing == [], f"README.md links to paths that do not exist: {missing}"


def test_every_docs_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text()
    absent = [p.name for p in DOCS.glob("*.md") if not re.search(rf":\s*{re.escape(p.name)}\s*$", config, re.M)]
    assert absent == [], f"docs pages missing from mkdocs.yml's nav: {absent}"


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("mkdocs", "material", "mkdocstrings_handlers")),
    reason="mkdocs, mkdocs-material or mkdocstrings-python is not installed (pip install -e '.[dev]')",
)
def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: no warning (broken links, docstrings griffe cannot read) passes."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
