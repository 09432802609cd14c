"""Code blocks of the contributor docs run as written."""

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _block(page: str, first_line: str) -> str:
    text = (DOCS / page).read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        if first_line in block:
            return block
    raise AssertionError(f"no python block with {first_line!r} in {page}")


def test_adding_an_algorithm_example_runs():
    code = _block("adding-an-algorithm.md", 'name="im2row"')
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    shape, kernel = r.stdout.strip().splitlines()
    assert shape.startswith("(2, 16, 6, 6) ") and float(shape.split()[-1]) < 1e-5
    assert kernel == "unfold to (OH OW) x (C R S) rows, then one BLAS GEMM per image"
    # the output the page shows is what the block prints
    assert shape.split(") ")[0] + ")" in (DOCS / "adding-an-algorithm.md").read_text()
