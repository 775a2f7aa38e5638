"""The lint rules of ``[tool.ruff]`` in pyproject.toml hold for the whole tree.

Pyflakes (unused or undefined names, redefinitions) and the pycodestyle errors that
are bugs rather than taste. Run in the suite so that CI enforces it on every commit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "--no-cache",
         "lstm_doctor", "tests", "benchmarks", "corpus", "docs"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
