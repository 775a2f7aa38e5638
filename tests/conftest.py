"""Shared pytest setup: frameworks run on CPU, the healthy-set false-positive count is
reported, and a skipped test fails the run (a missing framework must not hide tests)."""

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


def pytest_sessionfinish(session, exitstatus):
    """A skip is a failure: every peer framework is in the test extra, so a skipped test
    means a missing install, which must not pass as green (LSTM_DOCTOR_ALLOW_SKIPS=1
    allows them, for a partial environment on purpose)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and os.environ.get("LSTM_DOCTOR_ALLOW_SKIPS", "") in ("", "0") and exitstatus == 0:
        reporter.write_line(
            f"{len(skipped)} test(s) skipped: the suite runs everything (install the test extra, "
            "or set LSTM_DOCTOR_ALLOW_SKIPS=1 for a partial environment)", red=True)
        session.exitstatus = 1
