"""``--format github``: GitHub Actions workflow commands, one annotation per finding.

``::error file=PATH,title=CODE name::message`` (``::warning`` for warnings,
``::notice`` for info, and for findings already in a ``check --baseline``).
PATH is the model's first file as given on the command line or in the config,
so run lstm-doctor from the repository root for the annotation to land on the
file in a pull request. Values are escaped as the runner expects
(``%``, CR, LF; and ``:``, ``,`` in properties).
"""

from __future__ import annotations

from lstm_doctor.analyzers import RULES
from lstm_doctor.output import escape_controls_in
from lstm_doctor.report.html import location_label

LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _names() -> dict[str, str]:
    return {code: r.name for code, r in RULES.items()}


def annotations(report: dict, names: dict[str, str]) -> list[str]:
    files = report["model"]["files"]
    path = files[0]["path"] if files else None
    lines = []
    for f in report["findings"]:
        known = f.get("baseline") == "known"
        level = "notice" if known else LEVEL[f["severity"]]
        title = f"{f['code']} {names.get(f['code'], '')}".strip()
        if known:
            title += " (in baseline)"
        where = location_label(f["location"])
        message = f"{report['model']['name']}, {where}: {f['message']}"
        if f["fix"]:
            message += f"\nfix: {f['fix']}"
        props = ([f"file={escape_property(path)}"] if path else []) + [f"title={escape_property(title)}"]
        lines.append(f"::{level} {','.join(props)}::{escape_data(message)}")
    return lines


def render_many(reports: list[dict], options=None) -> str:
    # names from a model file: no raw ESC in the log, and a line break in one cannot end
    # the workflow command early (escape_data's %0A is for our own "fix:" line)
    reports = [escape_controls_in(r, newlines=True) for r in reports]
    names = _names()
    lines = [line for report in reports for line in annotations(report, names)]
    return "\n".join(lines) + ("\n" if lines else "")


def render(report: dict, options=None) -> str:
    return render_many([report], options)
