"""``--format html``: one self-contained page (inline CSS, plots as PNG data URIs).

It reads the report dict only (the plots come from ``plots.py``, which reads it
too) and the rule registry, whose documentation is embedded at the end of the
page: every finding's code links to ``#rule-CODE``. No script, no external
asset, so the file can be mailed or attached to a CI run as it is.
``render_many`` puts several reports (``lstm-doctor check``) on one page.
"""

from __future__ import annotations

import base64
import json
import re
from html import escape

from lstm_doctor.analyzers import RULES, all_rules
from lstm_doctor.analyzers.registry import FAMILIES
from lstm_doctor.output import escape_controls_in
from lstm_doctor.report.diagnosis import diagnosis, plural, status
from lstm_doctor.report.plots import report_plots

CSS = """
:root { --err: #c62828; --warn: #b26a00; --info: #00838f; --ok: #2e7d32; --muted: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #1a1a1a; margin: 0; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 17px; margin: 26px 0 8px; }
a { color: #1f5fbf; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
pre { background: #f3f4f6; padding: 8px 10px; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { background: #fafafa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.kv th { width: 150px; }
.sev { display: inline-block; padding: 1px 7px; border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600; }
.sev.error { background: var(--err); } .sev.warning { background: var(--warn); } .sev.info { background: var(--info); }
.verdict { display: inline-block; padding: 4px 12px; border-radius: 4px; color: #fff; font-weight: 600; }
.verdict.fail, .verdict.forced { background: var(--err); } .verdict.pass { background: var(--ok); }
.diagnosis { border: 2px solid var(--line); border-radius: 6px; padding: 10px 16px 6px; margin: 10px 0 18px; }
.diagnosis.sick { border-color: var(--err); } .diagnosis.healthy { border-color: var(--ok); }
.diagnosis .what { font-size: 17px; font-weight: 600; margin: 4px 0 8px; }
.diagnosis ol { margin: 4px 0 8px; padding-left: 24px; } .diagnosis li { margin: 3px 0; }
.diagnosis .key { font-variant-numeric: tabular-nums; }
.breakdown { margin: 2px 0 4px; padding-left: 18px; font-size: 14px; }
.counts span { margin-right: 14px; }
.muted { color: var(--muted); }
.fix { color: var(--ok); margin-top: 4px; }
.known { opacity: 0.6; }
details summary { cursor: pointer; color: var(--muted); font-size: 13px; }
figure { margin: 14px 0 26px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
figcaption b { color: #1a1a1a; }
.rule { border: 1px solid var(--line); border-radius: 6px; padding: 4px 16px 10px; margin: 12px 0; }
.rule:target { border-color: #1f5fbf; box-shadow: 0 0 0 3px #1f5fbf33; }
.rule h3 { margin-top: 12px; }
.rule h4 { margin: 10px 0 2px; font-size: 14px; }
.rule p { margin: 4px 0; }
.probe { background: #fff8e1; border-left: 4px solid var(--warn); padding: 8px 12px; }
nav ul { padding-left: 20px; }
.sha { font-size: 12px; color: var(--muted); }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
"""


def _inline(text: str) -> str:
    """Escape, then `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(str(text)))


def _paragraphs(text: str) -> str:
    blocks = [b.strip() for b in re.split(r"\n\s*\n", str(text)) if b.strip()]
    return "".join(f"<p>{_inline(' '.join(b.split()))}</p>" for b in blocks)


def format_number(value, spec: str = ".4g") -> str:
    """A report value for a table cell: floats to ``spec``, None as n/a (also markdown's)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def location_label(loc: dict) -> str:
    """A finding's location as one phrase (layer 0 fwd, gate f, steps 3–9, …), shared by the
    HTML, JUnit, GitHub and check outputs."""
    parts = []
    if loc.get("layer") is not None:
        parts.append(f"layer {loc['layer']}" + (f" {loc['direction']}" if loc.get("direction") else ""))
    if loc.get("gate"):
        parts.append(f"gate {loc['gate']}" if loc["gate"] in ("i", "f", "g", "o") else loc["gate"])
    if loc.get("steps"):
        parts.append(f"steps {loc['steps'][0]}–{loc['steps'][1]}")
    if loc.get("units"):
        units = loc["units"]
        shown = ", ".join(map(str, units[:8])) + (" …" if len(units) > 8 else "")
        parts.append(f"{len(units)} units ({shown})")
    return ", ".join(parts) or "model"


def _rule_names() -> dict[str, str]:
    return {code: r.name for code, r in RULES.items()}


def _file(f: dict) -> str:
    size = "" if f["bytes"] is None else f", {f['bytes']} bytes"
    return (
        f"<code>{escape(f['path'])}</code> <span class='sha'>sha256 {escape(f['sha256'] or 'unreadable')}{size}</span>"
    )


def _header(report: dict) -> str:
    s = report["summary"]
    st = status(report)  # never "pass" while a finding reaches --fail-on, whatever the exit code
    label = {"pass": "PASS", "fail": "FAIL", "forced": "FAIL"}[st["state"]]
    verdict = f'<span class="verdict {st["state"]}">{label}: {escape(st["text"])}</span>'
    counts = "".join(
        f'<span><span class="sev {sev}">{s[sev]}</span> {sev}{"s" if s[sev] != 1 else ""}</span>'
        for sev in ("error", "warning", "info")
    )
    check = report.get("check")
    baseline = ""
    if check and check.get("baseline"):
        baseline = (
            f'<p class="muted">Baseline <code>{escape(check["baseline"])}</code>: '
            f"{check.get('new', 0)} new, {check.get('known', 0)} known finding(s); only new findings fail.</p>"
        )
    return f'<p>{verdict}</p><p class="counts">{counts}</p>{baseline}'


def _overview(report: dict) -> str:
    m = report["model"]
    rows = []
    layers = "; ".join(
        f"layer {layer['index']}: D={layer['D']}, H={layer['H']}"
        + (f", P={layer['projection']}" if layer.get("projection") else "")
        + (" bidirectional" if len(layer["directions"]) > 1 else f" ({layer['directions'][0]})")
        + (" · peepholes" if layer["peepholes"] else "")
        + (f" · clip {layer['clip']}" if layer["clip"] is not None else "")
        for layer in m["layers"]
    )
    rows.append(
        (
            "model",
            f"<b>{escape(m['name'])}</b> ({escape(m['format'])}, {escape(m['dtype'])}, "
            f"gate order {escape(m['stored_gate_order'])})",
        )
    )
    rows.append(("layers", escape(layers)))
    first = m["layers"][0]["equation"]
    others = "".join(
        f" <span class='muted'>(layer {layer['index']}: <code>{escape(layer['equation'])}</code>)</span>"
        for layer in m["layers"][1:]
        if layer["equation"] != first
    )
    rows.append(("cell", f"<code>{escape(first)}</code>{others}"))
    files = "<br>".join(_file(f) for f in m["files"])
    rows.append(("files", files or "<span class='muted'>none</span>"))
    inp = report.get("inputs")
    if inp:
        what = (
            f"synthetic probe <b>{escape(inp['probe'])}</b>"
            if inp["probe"]
            else f"<code>{escape(inp['source'])}</code>"
        )
        sha = ""
        if inp.get("file") and inp["file"].get("sha256"):
            sha = f" <span class='sha'>sha256 {escape(inp['file']['sha256'])}</span>"
        summ = inp["summary"]
        rows.append(
            (
                "inputs",
                f"{what}{sha}<br>{plural(inp['sequences'], 'sequence')} × {inp['T']} steps × {inp['D']} features "
                f"(layout {escape(inp['layout'])}, stored shape {tuple(inp['stored_shape'])})"
                + (", with lengths" if inp["lengths_given"] else "")
                + f"<br><span class='muted'>mean {format_number(summ['mean'])}, rms {format_number(summ['rms'])}, "
                f"range [{format_number(summ['min'])}, {format_number(summ['max'])}], zeros {format_number(summ['zero_share'], '.1%')}, "
                f"adjacent-step correlation {format_number(summ['step_correlation'], '.3f')}, "
                f"adjacent-feature correlation {format_number(summ['feature_correlation'], '.3f')}</span>",
            )
        )
        rows.append(("engine", escape(str(report.get("engine")))))
    else:
        rows.append(("inputs", "none: weight rules only"))
    cfg = report["config"]
    select = ", ".join(p or "ALL" for p in cfg["select"]) or "ALL"
    rows.append(
        (
            "config",
            f"select {escape(select)}; ignore {escape(', '.join(cfg['ignore']) or 'nothing')}; "
            f"fail-on {escape(cfg['fail_on'])}",
        )
    )
    for layer in m["layers"]:
        stated = layer.get("assumptions") or []
        if stated:
            rows.append((
                f"assumes (L{layer['index']})",
                "<br>".join(f"{escape(a['item'])}: {escape(a['value'])} <i>[{escape(a['source'])}]</i>" for a in stated),
            ))
    notes = m["notes"] + (inp["notes"] if inp else [])
    if notes:
        rows.append(("notes", "<br>".join(escape(n) for n in notes)))
    rows.append(
        (
            "created",
            f"{escape(report['created'])} · {escape(report['tool']['name'])} "
            f"{escape(report['tool']['version'])} · report schema {escape(report['schema_version'])}",
        )
    )
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    probe = ""
    if inp and inp["probe"]:
        probe = (
            '<p class="probe">These inputs are a synthetic probe: real inputs (<code>--inputs</code>) '
            "give a real answer.</p>"
        )
    return f'<table class="kv">{body}</table>{probe}'


HEADLINE_LABELS = {
    "saturated_fraction": ("gate values saturated (i, f, o)", ".1%"),
    "hidden_at_bound_fraction": ("hidden values at a bound", ".1%"),
    "max_abs_cell": ("max |c|", ".4g"),
    "mean_pairwise_cosine": ("mean pairwise cosine of encodings", ".6f"),
    "cross_input_std": ("cross-input std of encodings", ".3g"),
    "input_variance_share": ("input share of pre-activation variance", ".3%"),
}


def _headline(report: dict) -> str:
    head = report["summary"].get("headline")
    if not head:
        return ""
    rows = "".join(
        f"<tr><td>{escape(HEADLINE_LABELS.get(k, (k, ''))[0])} <span class='muted'>({escape(k)})</span></td>"
        f"<td class='num'>{escape(format_number(v, HEADLINE_LABELS.get(k, ('', '.4g'))[1]))}</td></tr>"
        for k, v in head.items()
    )
    return f"<h3>Headline metrics</h3><table><tr><th>metric</th><th class='num'>value</th></tr>{rows}</table>"


def _findings(report: dict, names: dict[str, str]) -> str:
    findings = report["findings"]
    if not findings:
        return "<p><b>No findings.</b></p>"
    rows = []
    for f in findings:
        known = f.get("baseline") == "known"
        evidence = json.dumps(f["evidence"], indent=1, ensure_ascii=False)
        fix = f'<div class="fix"><b>fix:</b> {_inline(f["fix"])}</div>' if f["fix"] else ""
        tag = ' <span class="muted">(in baseline)</span>' if known else ""
        rows.append(
            f'<tr class="{"known" if known else ""}">'
            f'<td><span class="sev {f["severity"]}">{f["severity"]}</span>{tag}</td>'
            f'<td><a href="#rule-{f["code"]}"><b>{f["code"]}</b></a><br>'
            f'<span class="muted">{escape(names.get(f["code"], ""))}</span></td>'
            f"<td>{escape(location_label(f['location']))}</td>"
            f"<td>{_inline(f['message'])}{fix}"
            f"<details><summary>evidence</summary><pre>{escape(evidence)}</pre></details></td></tr>"
        )
    head = "<tr><th>severity</th><th>code</th><th>where</th><th>finding and fix</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _diagnosis(report: dict) -> str:
    """The diagnosis block: what is wrong, the root causes in order (code, where, key number, fix), the rest collapsed."""
    d = report.get("diagnosis") or diagnosis(report)
    out = [f'<section class="diagnosis {"healthy" if d["healthy"] else "sick"}" id="diagnosis">',
           f'<p class="what">{_inline(d["sentence"])}</p>']
    if d["root_causes"]:
        out.append("<p><b>Root causes</b>, in the order to fix them:</p><ol>")
        for rc in d["root_causes"]:
            w = rc.get("what_if")
            effect = ""
            if w and w["rank"] is not None:
                k = len(w["removes_errors"])
                effect = (f' <span class="muted">· what-if <code>{escape(w["fix"])}</code> alone removes {k} '
                          f'error{"s" if k != 1 else ""}' + (f", cumulative step {w['path_step']}"
                                                             if w["on_path"] and w["path_step"] else "") + "</span>")
            elif w:
                effect = f' <span class="muted">· what-if <code>{escape(w["fix"])}</code> not run: {escape(w["note"])}</span>'
            explains = (f' <span class="muted">· explains {escape(", ".join(rc["explains"]))}</span>'
                        if rc["explains"] else "")
            out.append(
                f'<li><span class="sev {rc["severity"]}">{rc["severity"]}</span> '
                f'<a href="#rule-{rc["code"]}"><b>{rc["code"]}</b></a> {escape(rc["name"])} · '
                f'{escape(rc["where"])} · <span class="key">{escape(rc["key"])}</span>{explains}'
                + (f'<div class="fix"><b>fix:</b> {_inline(rc["fix"])}{effect}</div>' if rc["fix"] else effect)
                + "</li>"
            )
        out.append("</ol>")
    if d["explained"]:
        items = ", ".join(
            f'<a href="#rule-{e["code"]}">{e["code"]}</a>' + (f" ×{e['count']}" if e["count"] > 1 else "")
            for e in d["explained"]
        )
        out.append(f"<p><b>Explained by the above:</b> {items}</p>")
    if d["other"]:
        items = ", ".join(
            f'<a href="#rule-{o["code"]}">{o["code"]}</a>' + (f" ×{o['count']}" if o["count"] > 1 else "")
            + f" ({o['severity']})"
            for o in d["other"]
        )
        out.append(f'<p class="muted">Also noted: {items}</p>')
    out.append("</section>")
    return "".join(out)


def _grouped_findings(report: dict, names: dict[str, str]) -> str:
    """One row per rule and layer, in the diagnosis order; a rule on several gates gets a breakdown, its fix once."""
    d = report.get("diagnosis") or diagnosis(report)
    if not d["groups"]:
        return "<p><b>No findings.</b></p>"
    findings = report["findings"]
    role = {"root_cause": "root cause", "explained": "explained by ", "other": ""}
    rows = []
    for g in d["groups"]:
        locs = g["locations"]
        first = findings[locs[0]["finding"]]
        known = all(findings[x["finding"]].get("baseline") == "known" for x in locs)
        where = "model" if g["layer"] is None else f"layer {g['layer']}"
        tag = role[g["role"]] + ", ".join(g["explained_by"]) if g["role"] == "explained" else role[g["role"]]
        breakdown = ""
        if len(locs) > 1:
            items = "".join(
                f"<li>{escape(x['where'] or x['path'])}: {escape(x['key'])}"
                + (f' <span class="sev {x["severity"]}">{x["severity"]}</span>' if x["severity"] != g["severity"] else "")
                + "</li>"
                for x in locs
            )
            breakdown = f'<ul class="breakdown">{items}</ul>'
        fixes = "".join(f'<div class="fix"><b>fix:</b> {_inline(fix)}</div>' for fix in g["fixes"])
        evidence = json.dumps([findings[x["finding"]]["evidence"] for x in locs] if len(locs) > 1
                              else first["evidence"], indent=1, ensure_ascii=False)
        rows.append(
            f'<tr class="{"known" if known else ""}">'
            f'<td><span class="sev {g["severity"]}">{g["severity"]}</span>'
            + (' <span class="muted">(in baseline)</span>' if known else "")
            + f'</td><td><a href="#rule-{g["code"]}"><b>{g["code"]}</b></a><br>'
            f'<span class="muted">{escape(names.get(g["code"], ""))}</span></td>'
            f"<td>{escape(where)}" + (f'<br><span class="muted">{escape(tag)}</span>' if tag else "") + "</td>"
            f"<td>{breakdown}{_inline(first['message'])}{fixes}"
            f"<details><summary>evidence</summary><pre>{escape(evidence)}</pre></details></td></tr>"
        )
    head = "<tr><th>severity</th><th>code</th><th>where</th><th>finding and fix</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _not_evaluated(report: dict) -> str:
    skipped = report.get("not_evaluated") or {}
    if not skipped:
        return ""
    items = "".join(f'<li><a href="#rule-{c}">{c}</a>: {escape(why)}</li>' for c, why in skipped.items())
    return f"<h3>Not evaluated</h3><ul>{items}</ul>"


def _saturation_table(report: dict) -> str:
    stats = report.get("statistics")
    if not stats:
        return ""
    rows = []
    for st in stats["layers"]:
        for g, v in st["gates"].items():
            rows.append(
                f"<tr><td>layer {st['layer']} {st['direction']}</td><td>{g}</td>"
                f"<td class='num'>{format_number(v['saturated'], '.0%')}</td><td class='num'>{format_number(v['left'], '.0%')}</td>"
                f"<td class='num'>{format_number(v['right'], '.0%')}</td>"
                f"<td class='num'>{v['units_saturated_90pct']}/{st['H']}</td></tr>"
            )
    head = (
        "<tr><th>where</th><th>gate</th><th>saturated</th><th>left (&lt; 0.1)</th>"
        "<th>right (&gt; 0.9)</th><th>units ≥ 90% of the time</th></tr>"
    )
    return f"<h3>Gate saturation</h3><table>{head}{''.join(rows)}</table>"


def _plots(report: dict, prefix: str) -> str:
    sections = report_plots(report, prefix)
    if not sections:
        return ""
    out = ["<h2>Plots</h2>"]
    for section in sections:
        out.append(f'<h3 id="{section.key}">{escape(section.title)}</h3>')
        for plot in section.plots:
            data = base64.b64encode(plot.png).decode("ascii")
            out.append(
                f'<figure id="{plot.key}"><img alt="{escape(plot.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)}</figcaption></figure>"
            )
    return "".join(out)


def _rules(cited: set[str]) -> str:
    out = [
        '<h2 id="rules">Rules</h2>',
        '<p class="muted">The catalogue (<code>lstm-doctor rules</code>, <code>lstm-doctor explain CODE</code>). '
        "Codes cited in this report are marked ●.</p>",
    ]
    for r in all_rules():
        thresholds = ", ".join(f"{k} = {v:g}" for k, v in r.thresholds.items()) or "none"
        mark = " ●" if r.code in cited else ""
        out.append(
            f'<section class="rule" id="rule-{r.code}"><h3>{r.code} {escape(r.name)}{mark}</h3>'
            f'<p class="muted">{escape(FAMILIES[r.family])} · default severity {r.severity.name} · '
            f"{'static (weights only)' if not r.needs_inputs else 'dynamic (needs inputs)'} · thresholds: "
            f"{escape(thresholds)}</p>"
            f"<p class='muted'>Statistic: {_inline(r.statistic)}</p>"
            f"<h4>What it does</h4>{_paragraphs(r.doc.what)}"
            f"<h4>Why it matters</h4>{_paragraphs(r.doc.why)}"
            f"<h4>Example</h4><pre>{escape(r.doc.example)}</pre>"
            f"<h4>Fix</h4>{_paragraphs(r.doc.fix)}</section>"
        )
    return "".join(out)


def _report_body(report: dict, names: dict[str, str], prefix: str = "") -> str:
    name = report["model"]["name"]
    model_id = (report.get("check") or {}).get("model_id")
    title = f"lstm-doctor report: {name}" + (f" ({model_id})" if model_id and model_id != name else "")
    return (
        f"<h1>{escape(title)}</h1>"
        + _header(report)
        + _diagnosis(report)
        + "<h2>Findings</h2>"
        + _grouped_findings(report, names)
        + (
            "<details><summary>every finding location (the full table)</summary>"
            + _findings(report, names)
            + "</details>"
            if report["findings"]
            else ""
        )
        + _not_evaluated(report)
        + "<h2>Model and inputs</h2>"
        + _overview(report)
        + _headline(report)
        + _saturation_table(report)
        + _plots(report, prefix)
    )


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="lstm-doctor">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}<footer>Generated by lstm-doctor. Self-contained: every plot is embedded "
        "in this file.</footer></main></body></html>\n"
    )


def render(report: dict, options=None) -> str:
    return render_many([report], options)


def render_many(reports: list[dict], options=None) -> str:
    # names from a model file: shown as \\xNN, not as raw ESC, BEL or C1 bytes in the page
    reports = [escape_controls_in(r, newlines=True) for r in reports]
    names = _rule_names()
    cited = {f["code"] for r in reports for f in r["findings"]}
    if len(reports) == 1:
        report = reports[0]
        return _page(f"lstm-doctor: {report['model']['name']}", _report_body(report, names) + _rules(cited))
    parts = ["<h1>lstm-doctor check</h1>", "<nav><ul>"]
    for k, r in enumerate(reports):
        s = r["summary"]
        label = (r.get("check") or {}).get("model_id") or r["model"]["name"]

        parts.append(
            f'<li><a href="#model-{k}">{escape(label)}</a>: {s["error"]} errors, {s["warning"]} warnings, '
            f"{s['info']} info · {escape(status(r)['text'])}</li>"
        )
    parts.append("</ul></nav>")
    for k, r in enumerate(reports):
        parts.append(f'<section id="model-{k}">')
        parts.append(_report_body(r, names, prefix=f"m{k}-"))
        parts.append("</section>")
    return _page("lstm-doctor check", "".join(parts) + _rules(cited))
