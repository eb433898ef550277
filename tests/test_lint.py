"""ruff is clean on the Python code and on the notebooks (CONVENTIONS.md)."""

import subprocess
import sys
from pathlib import Path

from grader.assignments import ROOT


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
