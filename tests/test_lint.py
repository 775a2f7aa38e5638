"""The lint rules of ``[tool.ruff]`` in pyproject.toml hold for the whole tree.

Pyflakes (unused or undefined names, redefinitions) and the pycodestyle errors that
are bugs rather than taste. Run in the suite so that CI enforces it on every commit.
"""

from __future__ import annotations

import os
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


def test_a_skipped_test_fails_the_suite(tmp_path):
    """tests/conftest.py turns a skip into a failed run: a missing framework cannot hide tests."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_needs_a_framework():\n    pytest.skip('none')\n")
    (tmp_path / "test_passes.py").write_text("def test_fine():\n    assert True\n")

    def run(files, **env):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env={**os.environ, **env}).returncode

    assert run(["test_skips.py"]) == 1
    assert run(["test_skips.py"], LSTM_DOCTOR_ALLOW_SKIPS="1") == 0
    assert run(["test_passes.py"]) == 0
