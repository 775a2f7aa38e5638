"""The report stage: formatters of a finished diagnosis. They never compute statistics.

``REPORTERS`` maps each ``--format`` name to a function ``render(report) -> str``
where ``report`` is the JSON-able dict built by ``build_report``.
"""

from __future__ import annotations

from .build import SCHEMA_VERSION, build_report

REPORT_FORMATS = ("text", "json")

__all__ = ["SCHEMA_VERSION", "build_report", "REPORT_FORMATS"]
