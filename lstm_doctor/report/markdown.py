"""``--format markdown``: the report as GitHub-flavoured Markdown (a PR comment, a job summary).

Without ``--plots DIR`` the page has no images. With it, the PNGs of
``plots.py`` are written (atomically) into DIR and linked with paths relative
to the Markdown file (``--output``), or to the working directory when the
report goes to stdout. Each finding's code links to its rule's documentation,
embedded at the end for the codes cited (anchors ``#rule-CODE``).
"""

from __future__ import annotations

import os
from pathlib import Path

from lstm_doctor.analyzers import RULES
from lstm_doctor.output import escape_controls_in, write_atomic
from lstm_doctor.report.diagnosis import diagnosis, plural, status
from lstm_doctor.report.html import HEADLINE_LABELS, format_number
from lstm_doctor.report.plots import report_plots, slug


def _cell(text) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _header(report: dict) -> list[str]:
    m, s = report["model"], report["summary"]
    out = [f"# lstm-doctor report: {m['name']}", ""]
    st = status(report)  # never "pass" while a finding reaches --fail-on, whatever the exit code
    verdict = "PASS" if st["state"] == "pass" else "FAIL"
    out.append(
        f"**{verdict}**: {st['text']}; {s['error']} error(s), {s['warning']} warning(s), {s['info']} info"
    )
    out += [""] + _diagnosis(report)
    check = report.get("check")
    if check and check.get("baseline"):
        out.append("")
        out.append(
            f"Baseline `{check['baseline']}`: {check.get('new', 0)} new, {check.get('known', 0)} known; "
            "only new findings fail."
        )
    out.append("")
    layers = "; ".join(
        f"layer {layer['index']}: D={layer['D']}, H={layer['H']}"
        + (f", P={layer['projection']}" if layer.get("projection") else "")
        + (" bidirectional" if len(layer["directions"]) > 1 else "")
        for layer in m["layers"]
    )
    rows = [
        ("model", f"{m['name']} ({m['format']}, {m['dtype']}) · {layers}"),
        ("cell", f"`{m['layers'][0]['equation']}`"),
        ("files", "<br>".join(f"`{f['path']}` sha256 `{(f['sha256'] or 'unreadable')[:16]}…`" for f in m["files"])),
    ]
    inp = report.get("inputs")
    if inp:
        what = f"synthetic probe '{inp['probe']}'" if inp["probe"] else f"`{inp['source']}`"
        rows.append(
            (
                "inputs",
                f"{what}: {plural(inp['sequences'], 'sequence')} × {inp['T']} steps × {inp['D']} features "
                f"(layout {inp['layout']}) · engine {report['engine']}",
            )
        )
    else:
        rows.append(("inputs", "none: weight rules only"))
    rows.append(("created", f"{report['created']} · lstm-doctor {report['tool']['version']}"))
    out += ["| | |", "|---|---|"] + [f"| {k} | {_cell(v)} |" for k, v in rows] + [""]
    if inp and inp["probe"]:
        out += ["> These inputs are a synthetic probe: real inputs (`--inputs`) give a real answer.", ""]
    return out


def _diagnosis(report: dict) -> list[str]:
    """The diagnosis block: what is wrong, the root causes in order, the rest collapsed."""
    d = report.get("diagnosis") or diagnosis(report)
    out = [f"**Diagnosis:** {_cell(d['sentence'])}", ""]
    for n, rc in enumerate(d["root_causes"], 1):
        w = rc.get("what_if")
        effect = ""
        if w and w["rank"] is not None:
            k = len(w["removes_errors"])
            effect = f"; what-if `{w['fix']}` alone removes {k} error{'s' if k != 1 else ''}"
        explains = f" (explains {', '.join(rc['explains'])})" if rc["explains"] else ""
        fix = f" **fix:** {_cell(rc['fix'])}" if rc["fix"] else ""
        out.append(
            f"{n}. **[{rc['code']}](#rule-{rc['code']})** {rc['severity']} {rc['name']} · {_cell(rc['where'])} · "
            f"{_cell(rc['key'])}{explains}.{fix}{effect}"
        )
    if d["root_causes"]:
        out.append("")
    if d["explained"]:
        out += ["Explained by the above: " + ", ".join(
            e["code"] + (f" ×{e['count']}" if e["count"] > 1 else "") for e in d["explained"]), ""]
    if d["other"]:
        out += ["Also noted: " + ", ".join(
            f"{o['code']}" + (f" ×{o['count']}" if o["count"] > 1 else "") + f" ({o['severity']})"
            for o in d["other"]), ""]
    return out


def _headline(report: dict) -> list[str]:
    head = report["summary"].get("headline")
    if not head:
        return []
    out = ["## Headline metrics", "", "| metric | value |", "|---|---:|"]
    for k, v in head.items():
        label, spec = HEADLINE_LABELS.get(k, (k, ".4g"))
        out.append(f"| {_cell(label)} | {format_number(v, spec)} |")
    return out + [""]


def _findings(report: dict, names: dict[str, str]) -> list[str]:
    """One row per rule and layer (the diagnosis' groups): a per-location breakdown, the fix once."""
    out = ["## Findings", ""]
    if not report["findings"]:
        return out + ["No findings.", ""]
    d = report.get("diagnosis") or diagnosis(report)
    findings = report["findings"]
    out += ["| severity | code | where | finding | fix |", "|---|---|---|---|---|"]
    for g in d["groups"]:
        locs = g["locations"]
        known = all(findings[x["finding"]].get("baseline") == "known" for x in locs)
        sev = g["severity"] + (" (in baseline)" if known else "")
        where = "model" if g["layer"] is None else f"layer {g['layer']}"
        if g["role"] == "explained":
            where += f" (explained by {', '.join(g['explained_by'])})"
        elif g["role"] == "root_cause":
            where += " (root cause)"
        message = findings[locs[0]["finding"]]["message"]
        if len(locs) > 1:
            message = "; ".join(f"{x['where'] or x['path']}: {x['key']}" for x in locs) + ". " + message
        out.append(
            f"| {sev} | [{g['code']}](#rule-{g['code']}) {_cell(names.get(g['code'], ''))} | "
            f"{_cell(where)} | {_cell(message)} | {_cell(' '.join(g['fixes']))} |"
        )
    skipped = report.get("not_evaluated") or {}
    if skipped:
        out += ["", "Not evaluated: " + "; ".join(f"{c} ({_cell(why)})" for c, why in skipped.items())]
    return out + [""]


def _plots(report: dict, options, prefix: str) -> list[str]:
    if not options or not options.plots_dir:
        return []

    sections = report_plots(report, prefix=f"{prefix}{slug(report['model']['name'])}-")
    if not sections:
        return []
    folder = Path(options.plots_dir)
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(options.output).resolve().parent if options.output else Path.cwd()
    out = ["## Plots", ""]
    for section in sections:
        out += [f"### {section.title}", ""]
        for plot in section.plots:
            target = folder / f"{plot.key}.png"
            write_atomic(target, plot.png)
            link = Path(os.path.relpath(target.resolve(), base)).as_posix()
            out += [f"![{plot.title}]({link})", "", f"*{plot.title}.* {plot.caption}", ""]
    return out


def _rules(cited: set[str]) -> list[str]:
    if not cited:
        return []
    out = ["## Rules cited", ""]
    for code in sorted(cited):
        r = RULES.get(code)
        if r is None:
            continue
        out += [
            f'<a id="rule-{code}"></a>',
            "",
            f"### {code} {r.name}",
            "",
            f"*Default severity {r.severity.name}. Statistic: {' '.join(r.statistic.split())}*",
            "",
            f"**What it does.** {' '.join(r.doc.what.split())}",
            "",
            f"**Why it matters.** {' '.join(r.doc.why.split())}",
            "",
            f"**Fix.** {' '.join(r.doc.fix.split())}",
            "",
        ]
    return out


def _names() -> dict[str, str]:
    return {code: r.name for code, r in RULES.items()}


def _body(report: dict, options, prefix: str = "") -> list[str]:
    names = _names()
    return _header(report) + _headline(report) + _findings(report, names) + _plots(report, options, prefix)


def render(report: dict, options=None) -> str:
    # names from a model file: no raw ESC, and no line break that ends a heading or a table row
    report = escape_controls_in(report, newlines=True)
    cited = {f["code"] for f in report["findings"]}
    return "\n".join(_body(report, options) + _rules(cited)).rstrip() + "\n"


def render_many(reports: list[dict], options=None) -> str:
    if len(reports) == 1:
        return render(reports[0], options)
    reports = [escape_controls_in(r, newlines=True) for r in reports]
    lines: list[str] = []
    for k, report in enumerate(reports):
        lines += _body(report, options, prefix=f"m{k}-") + ["---", ""]
    cited = {f["code"] for r in reports for f in r["findings"]}
    return "\n".join(lines + _rules(cited)).rstrip() + "\n"
