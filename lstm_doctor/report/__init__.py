"""The report stage: formatters of a finished diagnosis. They never compute statistics.

``REPORTERS`` maps each ``--format`` name to ``render(report, options) -> str | bytes``,
where ``report`` is the JSON-able dict built by ``build_report`` and
``options`` is a ``RenderOptions``. Adding a format means adding one entry here
(and its name to ``lstm_doctor.cli.REPORT_FORMATS``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from .build import SCHEMA_VERSION, build_report


@dataclass(frozen=True)
class RenderOptions:
    color: bool = False
    width: int = 110
    output: str | None = None  # where the report goes (None: stdout)
    plots_dir: str | None = None  # markdown: where to write the PNGs


def _json(report: dict, options: RenderOptions) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def _text(report: dict, options: RenderOptions) -> str:
    import io

    from rich.console import Console

    from .text import render

    buffer = io.StringIO()
    console = Console(
        file=buffer, width=options.width, force_terminal=options.color, no_color=not options.color, highlight=False
    )
    render(report, console)
    return buffer.getvalue()


REPORTERS: dict[str, Callable[[dict, RenderOptions], str | bytes]] = {
    "text": _text,
    "json": _json,
}

__all__ = ["SCHEMA_VERSION", "build_report", "REPORTERS", "RenderOptions"]
