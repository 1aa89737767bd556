"""The README's examples run as written."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section_code(heading: str) -> str:
    """The first python block of the README section whose heading contains ``heading``."""
    text = README.read_text()
    start = next(m.end() for m in re.finditer(r"^## .*$", text, re.M) if heading in m.group(0))
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_custom_cells_example_runs(tmp_path):
    """A cell the package does not ship, as a 2-layer bidirectional batch_first layer with a backward
    pass (run from a file: TorchScript reads the cell's source)."""
    code = section_code("Custom cells")
    assert "class MinimalGatedUnit(CustomCell)" in code and "bidirectional=True" in code and ".backward()" in code
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(32, 28, 128) (4, 32, 64) (128, 64)"
    assert "warn" not in done.stderr.lower(), done.stderr  # no TorchScript deprecation notice reaches the user
