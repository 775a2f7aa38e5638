"""``compare``: did my fix help? Two reports (or two models) side by side.

Findings are matched by (code, layer, direction, gate), as baselines match
them, never by message text (its numbers change with every fix). A finding of
A without a match in B is resolved, one of B without a match in A appeared,
and a match whose severity differs changed. ``resolved_codes`` lists the codes
with findings in A and none in B. The headline metrics (``summary.headline``)
are listed with their change B − A. Nothing is recomputed: this reads the two
report dicts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from lstm_doctor.analyzers import RULES
from lstm_doctor.errors import UserError
from lstm_doctor.findings import Severity, finding_identity
from lstm_doctor.jobs.diagnose import DiagnoseOptions, run_diagnosis
from lstm_doctor.output import check_output_path, emit
from lstm_doctor.report import to_json
from lstm_doctor.report.build import clean, envelope, read_json
from lstm_doctor.report.html import HEADLINE_LABELS
from lstm_doctor.report.terminal import text_width, use_color


@dataclass
class CompareOptions:
    a: str
    b: str
    inputs: str | None = None  # for models: inputs of both (or of A with inputs_b)
    inputs_b: str | None = None
    layout: str | None = None
    layout_b: str | None = None
    lengths: str | None = None
    engine: str = "auto"
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    thresholds: tuple[str, ...] = ()
    format: str = "text"
    output: str | None = None
    color: str = "auto"
    created: str | None = None
    max_memory: str | None = None  # --max-memory: both models' reading and capture
    # Keras settings of both models (--gate-activation, --activation, --go-backwards)
    gate_activation: str | None = None
    activation: str | None = None
    go_backwards: bool | None = None




def _entry(f: dict) -> dict:
    code, layer, direction, gate = finding_identity(f)
    return {
        "code": code,
        "layer": layer,
        "direction": direction,
        "gate": gate,
        "severity": f["severity"],
        "message": f["message"],
    }


def _label(report: dict, source: str) -> dict:
    s = report["summary"]
    return {
        "model": report["model"]["name"],
        "source": source,
        "error": s["error"],
        "warning": s["warning"],
        "info": s["info"],
    }


def compare_reports(a: dict, b: dict, source_a: str = "A", source_b: str = "B") -> dict:
    """The comparison document (schema: ``$defs/compare`` of ``report/schema.json``)."""
    groups_a: dict[tuple, list[dict]] = {}
    groups_b: dict[tuple, list[dict]] = {}
    for f in a["findings"]:
        groups_a.setdefault(finding_identity(f), []).append(f)
    for f in b["findings"]:
        groups_b.setdefault(finding_identity(f), []).append(f)
    resolved, appeared, changed = [], [], []
    unchanged = 0
    for key in sorted(set(groups_a) | set(groups_b), key=_order):
        fa = sorted(groups_a.get(key, []), key=lambda f: -Severity.parse(f["severity"]))
        fb = sorted(groups_b.get(key, []), key=lambda f: -Severity.parse(f["severity"]))
        for x, y in zip(fa, fb):
            if x["severity"] == y["severity"]:
                unchanged += 1
            else:
                changed.append(
                    {
                        **dict(zip(("code", "layer", "direction", "gate"), key)),
                        "from": x["severity"],
                        "to": y["severity"],
                    }
                )
        resolved += [_entry(f) for f in fa[len(fb) :]]
        appeared += [_entry(f) for f in fb[len(fa) :]]
    codes_a = {f["code"] for f in a["findings"]}
    codes_b = {f["code"] for f in b["findings"]}
    head_a = a["summary"].get("headline") or {}
    head_b = b["summary"].get("headline") or {}
    headline = []
    for metric in list(head_a) + [m for m in head_b if m not in head_a]:
        va, vb = head_a.get(metric), head_b.get(metric)
        headline.append({"metric": metric, "a": va, "b": vb, "delta": None if va is None or vb is None else vb - va})
    return clean(
        {
            **envelope(None, kind="lstm-doctor-compare"),
            "a": _label(a, source_a),
            "b": _label(b, source_b),
            "resolved": resolved,
            "appeared": appeared,
            "changed": changed,
            "unchanged": unchanged,
            "resolved_codes": sorted(codes_a - codes_b),
            "new_codes": sorted(codes_b - codes_a),
            "headline": headline,
        }
    )


def _order(key: tuple) -> tuple:
    code, layer, direction, gate = key
    return (code, -1 if layer is None else layer, direction or "", gate or "")


def load_report(path: str) -> dict:
    """A ``diagnose`` JSON report, or a ``check`` output holding exactly one model."""
    data = read_json(path, "file not found", "not a JSON report")
    if isinstance(data, dict) and data.get("kind") == "lstm-doctor-check":
        if len(data.get("models", [])) != 1:
            raise UserError(f"a check output with {len(data.get('models', []))} models: compare one report", path)
        data = data["models"][0]["report"]
    if not isinstance(data, dict) or "findings" not in data or "summary" not in data or "model" not in data:
        raise UserError("not an lstm-doctor report (expected `diagnose --format json` output)", path)
    return data


def _is_report(path: str) -> bool:
    p = Path(path)
    return p.suffix.lower() == ".json" and p.is_file()


def _side(path: str, inputs: str | None, layout: str | None, options: CompareOptions) -> dict:
    if _is_report(path):
        return load_report(path)

    return run_diagnosis(
        DiagnoseOptions(
            model=path,
            inputs=inputs,
            layout=layout,
            lengths=options.lengths,
            engine=options.engine,
            select=options.select,
            ignore=options.ignore,
            thresholds=options.thresholds,
            created=options.created,
            gate_activation=options.gate_activation,
            activation=options.activation,
            go_backwards=options.go_backwards,
            max_memory=options.max_memory,
        )
    )


def run_compare(options: CompareOptions) -> dict:
    if _is_report(options.a) != _is_report(options.b):
        raise UserError("compare two reports (.json) or two models, not one of each")
    if _is_report(options.a) and (options.inputs or options.inputs_b):
        raise UserError("--inputs applies to models, not to reports")
    flags = [f for f, v in (("--gate-activation", options.gate_activation), ("--activation", options.activation),
                            ("--go-backwards", options.go_backwards)) if v is not None]
    if _is_report(options.a) and flags:
        raise UserError(f"{'/'.join(flags)} applies to models, not to reports")
    a = _side(options.a, options.inputs, options.layout, options)
    b = _side(options.b, options.inputs_b or options.inputs, options.layout_b or options.layout, options)
    return compare_reports(a, b, options.a, options.b)


def render_text(doc: dict, color: bool, width: int) -> str:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    a, b = doc["a"], doc["b"]
    console.print(
        Text.assemble(
            ("A ", "bold"),
            f"{a['model']} ({a['source']}): {a['error']} errors, {a['warning']} warnings, {a['info']} info",
        )
    )
    console.print(
        Text.assemble(
            ("B ", "bold"),
            f"{b['model']} ({b['source']}): {b['error']} errors, {b['warning']} warnings, {b['info']} info",
        )
    )

    def where(f):
        parts = []
        if f["layer"] is not None:
            parts.append(f"layer {f['layer']}" + (f" {f['direction']}" if f["direction"] else ""))
        if f["gate"]:
            parts.append(f["gate"])
        return " ".join(parts) or "model"


    table = Table(title="Findings, A → B (matched by code, layer, direction, gate)", title_justify="left")
    for col in ("change", "code", "rule", "where", "A", "B"):
        table.add_column(col, no_wrap=True)
    sev = lambda s: Text(s, style=style[s]) if s else Text("—", style="dim")  # noqa: E731
    name = lambda code: RULES[code].name if code in RULES else ""  # noqa: E731
    for f in doc["resolved"]:
        table.add_row(
            Text("resolved", style="green"), f["code"], name(f["code"]), where(f), sev(f["severity"]), sev(None)
        )
    for f in doc["appeared"]:
        table.add_row(
            Text("appeared", style="bold red"), f["code"], name(f["code"]), where(f), sev(None), sev(f["severity"])
        )
    for f in doc["changed"]:
        better = Severity.parse(f["to"]) < Severity.parse(f["from"])
        table.add_row(
            Text("less severe" if better else "more severe", style="green" if better else "bold red"),
            f["code"],
            name(f["code"]),
            where(f),
            sev(f["from"]),
            sev(f["to"]),
        )
    if doc["resolved"] or doc["appeared"] or doc["changed"]:
        console.print(table)
    console.print(f"{doc['unchanged']} finding(s) unchanged.")
    console.print(Text.assemble(("resolved codes: ", "bold green"), ", ".join(doc["resolved_codes"]) or "none"))
    console.print(Text.assemble(("new codes: ", "bold red"), ", ".join(doc["new_codes"]) or "none"))
    if doc["headline"]:
        metrics = Table(title="Headline metrics", title_justify="left")
        for col in ("metric", "A", "B", "B − A"):
            metrics.add_column(col, justify="left" if col == "metric" else "right")
        fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
        for m in doc["headline"]:
            label = HEADLINE_LABELS.get(m["metric"], (m["metric"],))[0]
            metrics.add_row(label, fmt(m["a"]), fmt(m["b"]), "n/a" if m["delta"] is None else f"{m['delta']:+.4g}")
        console.print(metrics)
    return buffer.getvalue()


def execute(options: CompareOptions) -> int:
    if options.format not in ("text", "json"):
        raise UserError(f"unknown format {options.format!r}; choose text or json")
    if options.output:
        check_output_path(options.output, [options.a, options.b, options.inputs, options.inputs_b, options.lengths])
    doc = run_compare(options)
    if options.format == "json":
        emit(to_json(doc), options.output)
    else:
        to_terminal = options.output is None
        emit(render_text(doc, use_color(options.color, to_terminal), text_width(to_terminal)), options.output)
    return 0
