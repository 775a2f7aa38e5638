"""``--format concise``: one line per finding, for terminals and CI logs (as ``ruff --output-format concise``).

    MODEL:layer0.fwd.f: S301 error: gate f 99% saturated (right), 64/64 units pinned (explained by W101) [fix: …]
    ...
    3 root causes, 11 errors, 6 warnings, 1 info, exit 1

MODEL is the model's first file as given (as in the GitHub annotations), or the
``check`` model id. Lines follow the diagnosis: root causes first, then what
they explain, then the rest; within a rule, its strongest location first. A
fix is printed once per rule (its first line), then ``[fix: see above]``.
It reads the report's ``diagnosis`` only; nothing is computed here.
"""

from __future__ import annotations

import os

from lstm_doctor.output import escape_controls_in
from lstm_doctor.report.diagnosis import count_line, diagnosis, status


def _model(report: dict) -> str:
    check = report.get("check") or {}
    if check.get("model_id"):
        return str(check["model_id"])

    files = report["model"]["files"]
    if not files:
        return report["model"]["name"]
    path = files[0]["path"]
    try:  # relative to the working directory when under it, as linters print paths
        rel = os.path.relpath(path)
        return path if rel.startswith("..") else rel
    except ValueError:
        return path


def lines(report: dict) -> list[str]:
    report = escape_controls_in(report, newlines=True)  # names from a model file: no raw ESC to the terminal
    d = report.get("diagnosis") or diagnosis(report)
    model = _model(report)
    findings = report["findings"]
    out = []
    for g in d["groups"]:
        for n, loc in enumerate(g["locations"]):
            f = findings[loc["finding"]]
            note = []
            if g["role"] == "root_cause":
                note.append("root cause")
            if g["explained_by"]:
                note.append("explained by " + ", ".join(g["explained_by"]))
            if f.get("baseline") == "known":
                note.append("in baseline")
            tail = f" ({'; '.join(note)})" if note else ""
            fix = g["fix_short"] if n == 0 else ("see above" if g["fix_short"] else "")
            fix_text = f" [fix: {fix}]" if fix else ""
            line = f"{model}:{loc['path']}: {g['code']} {f['severity']}: {loc['key']}{tail}{fix_text}"
            out.append(" ".join(line.split()))  # one line, whatever the message holds
    return out


def render(report: dict, options=None) -> str:
    return "\n".join(lines(report) + [count_line(report)]) + "\n"


def render_many(reports: list[dict], options=None) -> str:
    """Every model's lines, each model's count line, then the total."""
    if len(reports) == 1:
        return render(reports[0], options)

    reports = [escape_controls_in(r, newlines=True) for r in reports]  # the count lines name them too
    out: list[str] = []
    for report in reports:
        out += lines(report)
        out.append(f"{_model(report)}: {count_line(report)}")
    total = {sev: sum(r["summary"][sev] for r in reports) for sev in ("error", "warning", "info")}
    code = max(r["summary"]["exit_code"] for r in reports)
    roots = sum(len((r.get("diagnosis") or {}).get("root_causes") or []) for r in reports)
    parts = [f"{len(reports)} models", f"{roots} root cause{'s' if roots != 1 else ''}"]
    parts += [f"{n} {sev}{'s' if n != 1 and sev != 'info' else ''}" for sev, n in total.items() if n]

    forced = code == 0 and any(status(r)["state"] == "forced" for r in reports)
    out.append(", ".join(parts + [f"exit {code}" + (" (forced by --exit-zero)" if forced else "")]))
    return "\n".join(out) + "\n"
