"""The report stage: formatters of a finished diagnosis. They never compute statistics.

``REPORTERS`` maps each ``--format`` name to ``render(report, options) -> str | bytes``,
where ``report`` is the JSON-able dict built by ``build_report`` and
``options`` is a ``RenderOptions``. Adding a format means adding one entry here
(and its name to ``lstm_doctor.choices.REPORT_FORMATS``).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib.resources import files
from typing import Callable

from lstm_doctor.report import concise, github, html, junit, markdown
from lstm_doctor.report.build import SCHEMA_VERSION, build_report, to_json


@dataclass(frozen=True)
class RenderOptions:
    color: bool = False
    width: int = 110
    output: str | None = None  # where the report goes (None: stdout)
    plots_dir: str | None = None  # markdown: where to write the PNGs
    verbose: bool = False  # text: also the full table, one row per finding location


def _json(report: dict, options: RenderOptions) -> str:
    return to_json(report)


def _text(report: dict, options: RenderOptions) -> str:
    from rich.console import Console

    from lstm_doctor.report.text import render

    buffer = io.StringIO()
    console = Console(
        file=buffer, width=options.width, force_terminal=options.color, no_color=not options.color, highlight=False
    )
    render(report, console, verbose=options.verbose)
    return buffer.getvalue()


REPORTERS: dict[str, Callable[[dict, RenderOptions], str | bytes]] = {
    "text": _text,
    "json": _json,
    "html": html.render,  # matplotlib is imported only when a plot is drawn
    "markdown": markdown.render,
    "junit": junit.render,
    "github": github.render,
    "concise": concise.render,
}

# Formats that put several reports in one file (``lstm-doctor check``):
# each module defines ``render_many(reports, options)``.
# The others (text) are concatenated; JSON is the check's own document.
MULTI = {"html": html, "markdown": markdown, "junit": junit, "github": github, "concise": concise}


def render_many(fmt: str, reports: list[dict], options: RenderOptions) -> str | bytes:
    """Several reports in one output of format ``fmt`` (not json: see ``lstm_doctor.jobs.check``)."""
    if fmt in MULTI:
        return MULTI[fmt].render_many(reports, options)
    if fmt == "json":
        raise ValueError("several reports in JSON: use lstm_doctor.jobs.check.check_document")
    return "".join(REPORTERS[fmt](report, options) for report in reports)


def load_schema() -> dict:
    """The JSON Schema (draft 2020-12) of the report, shipped as ``report/schema.json``."""
    return json.loads(files(__name__).joinpath("schema.json").read_text(encoding="utf-8"))


__all__ = ["SCHEMA_VERSION", "build_report", "to_json", "REPORTERS", "RenderOptions", "render_many", "load_schema"]
