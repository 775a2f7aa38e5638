"""Shared pytest setup: frameworks run on CPU, and the healthy-set false-positive count is reported."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_addoption(parser):
    # tests/test_golden_reports.py: rewrite tests/golden/ from the current renderers (then review the diff)
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite the golden report files in tests/golden/ instead of comparing with them")


def pytest_terminal_summary(terminalreporter):
    try:
        from test_rules import FALSE_POSITIVES
    except ImportError:
        return
    if FALSE_POSITIVES:
        total = sum(len(v) for v in FALSE_POSITIVES.values())
        terminalreporter.write_line(
            f"healthy set: {len(FALSE_POSITIVES)} models, {total} false positives (warning or error)"
        )
        for name, bad in sorted(FALSE_POSITIVES.items()):
            for line in bad:
                terminalreporter.write_line(f"  {name}: {line}")
