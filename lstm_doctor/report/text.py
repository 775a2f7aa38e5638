"""The terminal report (rich). It reads the report dict only: no statistics here.

First the diagnosis (``report["diagnosis"]``, built in ``diagnosis.py``): one
sentence on what is wrong, the independent root causes ranked, one line each
(code, where, key number, fix), and the codes they explain, collapsed. Then the
details, one entry per rule and layer (a rule on several gates is one entry
with a per-gate breakdown, its fix shown once). Then a per-gate saturation
summary, the per-step mean h and mean c for the first steps (what the user of
docs/case-study.md printed by hand), the what-if tables, and the verdict. ``verbose``
adds the full table, one row per finding location, grouped by layer and family.
"""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lstm_doctor.analyzers.registry import FAMILIES, RULES
from lstm_doctor.findings import Severity
from lstm_doctor.output import escape_controls_in
from lstm_doctor.report.diagnosis import diagnosis, plural, status
from lstm_doctor.report.whatif_text import render_what_if

RULE_NAMES = {code: r.name for code, r in RULES.items()}

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
FIRST_STEPS = 8


def _where(loc: dict) -> str:
    parts = []
    if loc.get("direction") and loc["direction"] != "fwd":
        parts.append(loc["direction"])
    if loc.get("gate"):
        parts.append(loc["gate"])
    if loc.get("steps"):
        parts.append(f"t {loc['steps'][0]}–{loc['steps'][1]}")
    return " ".join(parts)


def _header(report: dict) -> Panel:
    m = report["model"]
    layers = m["layers"]
    shape = ", ".join(
        f"L{ly['index']}: D={ly['D']} H={ly['H']}" + (f" P={ly['projection']}" if ly.get("projection") else "")
        + (" bidirectional" if len(ly["directions"]) > 1 else "")
        for ly in layers
    )
    lines = [
        Text.assemble(("model  ", "bold"), f"{m['name']} ({m['format']}, {m['dtype']}) · {shape}"),
        Text.assemble(("cell   ", "bold"), layers[0]["equation"] + (" · peepholes" if layers[0]["peepholes"] else "")),
    ]
    inp = report.get("inputs")
    if inp:
        what = f"probe '{inp['probe']}' (synthetic)" if inp["probe"] else inp["source"]
        lines.append(
            Text.assemble(
                ("inputs ", "bold"),
                f"{what}: {plural(inp['sequences'], 'sequence')} × {inp['T']} steps × {inp['D']} features "
                f"(layout {inp['layout']}) · engine {report['engine']}",
            )
        )
    else:
        lines.append(Text.assemble(("inputs ", "bold"), "none: weight rules only"))
    for layer in layers:
        stated = layer.get("assumptions") or []
        if stated:
            lines.append(Text.assemble(
                ("assumes", "bold"),
                f" L{layer['index']}: " + " · ".join(f"{a['item']} {a['value']} [{a['source']}]" for a in stated),
            ))
    for note in m["notes"] + (inp["notes"] if inp else []):
        lines.append(Text(f"note   {note}", style="dim"))
    return Panel(Group(*lines), title=f"lstm-doctor {report['tool']['version']}", expand=False)


def _findings(report: dict) -> list:
    findings = report["findings"]
    if not findings:
        return [Text("No findings.", style="bold green")]
    out = []
    layers = sorted({f["location"]["layer"] for f in findings}, key=lambda x: -1 if x is None else x)
    for layer in layers:
        group = [f for f in findings if f["location"]["layer"] == layer]
        table = Table(
            title=("Model" if layer is None else f"Layer {layer}"),
            title_justify="left",
            show_lines=False,
            expand=True,
        )
        table.add_column("severity", no_wrap=True)
        table.add_column("code", no_wrap=True)
        table.add_column("where", no_wrap=True)
        table.add_column("finding and fix", ratio=1)
        # most severe family first; ties in the catalogue's family order (a set's
        # order changes from run to run with string hashing)
        order = list(FAMILIES)
        families = sorted(
            {f["code"][0] for f in group},
            key=lambda fam: (-max(Severity.parse(f["severity"]) for f in group if f["code"][0] == fam), order.index(fam)),
        )
        for n, fam in enumerate(families):
            rows = [f for f in group if f["code"][0] == fam]
            if n:
                table.add_section()
            table.add_row("", Text(FAMILIES[fam], style="bold"), "", "")
            rows.sort(key=lambda f: (-Severity.parse(f["severity"]), f["code"]))
            for f in rows:
                body = Text(f["message"])
                if f["fix"]:
                    body.append("\nfix: ", style="bold green")
                    body.append(f["fix"], style="green")
                table.add_row(
                    Text(f["severity"], style=STYLE[f["severity"]]),
                    f"{f['code']}\n[dim]{RULE_NAMES.get(f['code'], '')}[/dim]",
                    _where(f["location"]),
                    body,
                )
        out.append(table)
    return out


def _saturation(report: dict) -> Table | None:
    stats = report.get("statistics")
    if not stats:
        return None
    table = Table(title="Gate saturation (< 0.1 or > 0.9)", title_justify="left")
    for col in ("layer", "gate", "saturated", "left", "right", "units ≥ 90%"):
        table.add_column(col, justify="right" if col not in ("layer", "gate") else "left")
    for st in stats["layers"]:
        for g, v in st["gates"].items():
            table.add_row(
                f"{st['layer']} {st['direction']}",
                g,
                f"{v['saturated']:.0%}",
                f"{v['left']:.0%}",
                f"{v['right']:.0%}",
                f"{v['units_saturated_90pct']}/{st['H']}",
            )
    return table


def _per_step(report: dict) -> Table | None:
    stats = report.get("statistics")
    if not stats:
        return None
    st = stats["layers"][0]
    h, c = st["mean_h_per_step"], st["mean_c_per_step"]
    steps = list(range(min(FIRST_STEPS, len(h))))
    if len(h) > FIRST_STEPS:
        steps.append(len(h) - 1)
    table = Table(
        title=f"Per step, layer {st['layer']} {st['direction']} (mean over units and sequences)",
        title_justify="left",
    )
    table.add_column("step")
    for t in steps:
        table.add_column(("… " if t == len(h) - 1 and t >= FIRST_STEPS else "") + str(t), justify="right")
    table.add_row("mean h", *[f"{h[t]:.3g}" if h[t] is not None else "nan" for t in steps])
    table.add_row("mean c", *[f"{c[t]:.3g}" if c[t] is not None else "nan" for t in steps])
    return table


STRIP = " ▁▂▃▄▅▆▇█"
STRIP_STEPS = 60


def sensitivity_strip(values: list, steps: int = STRIP_STEPS) -> str:
    """One character per step, oldest left, last step right: log10 of ‖∂h_T/∂x_t‖
    relative to its peak, 8 levels over 6 decades (blank below 1e-6)."""
    vals = [v for v in values[:steps] if v is not None]
    peak = max(vals, default=0.0)
    out = []
    for v in reversed(values[:steps]):
        if v is None or peak <= 0 or v <= 0:
            out.append(STRIP[0])
            continue
        level = 8 + math.log10(v / peak) * 8 / 6
        out.append(STRIP[max(0, min(8, int(math.ceil(level))))])
    return "".join(out)


def _differential(report: dict) -> Text | None:
    stats = report.get("statistics") or {}
    g, obs = stats.get("gradients"), stats.get("observed")
    if not g and not obs:
        return None
    text = Text()
    if g:
        T = len(g["input_sensitivity_by_lag"])
        text.append("Gradient flow ", style="bold")
        text.append(
            f"(layer {g['layer']} {g['direction']}, {plural(g['sequences'], 'sequence')}): memory horizon "
            f"{g['memory_horizon']} of {T} steps; "
            + (
                f"encodings move {g['perturbation_change']:.2g} of their norm when the inputs are swapped\n"
                if g["perturbation_change"] is not None
                # One sequence has no other input to swap in.
                else "no input swap with one sequence\n"
            )
        )
        shown = min(T, STRIP_STEPS)
        text.append(f"‖∂h_T/∂x_t‖, last {shown} steps (log, 6 decades; right = last step): ", style="dim")
        text.append(sensitivity_strip(g["input_sensitivity_by_lag"], shown))
    if obs:
        if g:
            text.append("\n")
        best = obs["ranking"][0] if obs["ranking"] else None
        text.append("Observed trace ", style="bold")
        text.append(f"({obs['kind']}, {plural(obs['sequences'], 'sequence')}, {obs['units']} units): ")
        if best is not None:
            what = "; ".join(best["differences"]) or "the declared configuration"
            text.append(f"best {what} (mean |diff| {best['mean_abs_diff']:.3g}"
                        f"{', fits' if best['fits'] else ', does not fit'})")
        seconds = (report.get("timings") or {}).get("observed_search_seconds")
        text.append("\n" + observed_search_summary(obs, seconds), style="dim")
    return text


def observed_search_summary(obs: dict, seconds: float | None) -> str:
    """How the ``--observed`` search went: the configurations tried, the time it took
    (the report's ``timings``; left out when absent) and how many were pruned early."""
    took = "" if seconds is None else f" in {seconds:.3g} s"
    full = obs["candidates_full"]
    pruned = obs["candidates"] - full
    if pruned:
        by = "their first steps" if obs["kind"] == "per-step" else "the first sequences"
        outcome = f"pruned {pruned} by {by}, ran {full} in full"
    else:
        outcome = "ran every one in full"
    return f"searched {obs['candidates']} configurations{took}; {outcome}"


def _summary(report: dict) -> Text:
    s = report["summary"]
    text = Text()
    for sev in ("error", "warning", "info"):
        text.append(f"{s[sev]} {sev}{'s' if s[sev] != 1 and sev != 'info' else ''}", style=STYLE[sev] if s[sev] else "dim")
        text.append("  ")

    st = status(report)
    text.append(f"({st['text']})", style="bold red" if st["state"] == "forced" else "dim")
    skipped = report.get("not_evaluated") or {}
    if skipped:
        text.append("\nnot evaluated: " + "; ".join(f"{c} ({why})" for c, why in skipped.items()), style="dim")
    if report.get("inputs") and report["inputs"]["probe"]:
        text.append(
            "\nThese inputs are a synthetic probe: real inputs (--inputs) give a real answer.",
            style="bold yellow",
        )
    return text


def _count(code: str, n: int) -> str:
    return code + (f" ×{n}" if n > 1 else "")


def diagnosis_block(report: dict) -> list:
    """The diagnosis: what is wrong, the root causes (one line each), what they explain, the verdict."""
    d = report.get("diagnosis") or diagnosis(report)
    out: list = []
    title = Text("Diagnosis: ", style="bold")
    title.append(d["sentence"], style="bold green" if d["healthy"] else "bold")
    out.append(title)
    if d["root_causes"]:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(ratio=1)
        label = "Root causes" + (", ranked by what each explains and the what-if" if report.get("what_if") else
                                 ", ranked by what each explains")
        out.append(Text(label + ":", style="bold"))
        for n, rc in enumerate(d["root_causes"], 1):
            body = Text.assemble((rc["code"], STYLE[rc["severity"]]), f" {RULE_NAMES.get(rc['code'], '')}")
            body.append(f" · {rc['where']} · ", style="dim")
            body.append(rc["key"])
            if rc["explains"]:
                body.append(f" · explains {len(rc['explains'])}", style="dim")
            if rc["fix"]:
                body.append("\nfix: ", style="bold green")
                body.append(rc["fix"], style="green")
            w = rc.get("what_if")
            if w and w["rank"] is not None:
                k = len(w["removes_errors"])
                body.append(
                    f" · what-if {w['fix']}: −{k} error{'s' if k != 1 else ''}"
                    + (f", step {w['path_step']}" if w["on_path"] and w["path_step"] else ""),
                    style="dim",
                )
            elif w:
                body.append(f" · what-if {w['fix']}: not run", style="dim")
            grid.add_row(f"{n}.", body)
        out.append(grid)
    if d["explained"]:
        out.append(
            Text.assemble(
                ("Explained by the above: ", "bold"), ", ".join(_count(e["code"], e["count"]) for e in d["explained"])
            )
        )
    if d["other"]:
        out.append(
            Text.assemble(
                ("Also noted: ", "bold"),
                ", ".join(f"{_count(o['code'], o['count'])} ({o['severity']})" for o in d["other"]),
            )
        )
    st = status(report)
    verdict = {"pass": "pass: ", "fail": "FAIL: ", "forced": "FAIL: "}[st["state"]]
    out.append(Text.assemble(("Status: ", "bold"), (verdict + st["text"], "bold red" if st["state"] != "pass" else "green")))
    return out


def _details(report: dict) -> list:
    """One entry per rule and layer: the per-location breakdown, one message, the fix once."""
    d = report.get("diagnosis") or diagnosis(report)
    if not d["groups"]:
        return []
    findings = report["findings"]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    role = {"root_cause": "root cause", "explained": "explained by ", "other": ""}
    for g in d["groups"]:
        body = Text()
        where = "model" if g["layer"] is None else f"layer {g['layer']}"
        tag = role[g["role"]] + (", ".join(g["explained_by"]) if g["role"] == "explained" else "")
        body.append(f"{RULE_NAMES.get(g['code'], '')} · {where}" + (f" · {tag}" if tag else ""), style="dim")
        locs = g["locations"]
        first = findings[locs[0]["finding"]]
        if len(locs) > 1:
            for x in locs:
                mark = f" [{x['severity']}]" if x["severity"] != g["severity"] else ""
                body.append(f"\n  {x['where'] or x['path']}: {x['key']}{mark}")
            body.append(f"\n{locs[0]['where'] or 'first'}: ", style="dim")
            body.append(first["message"])
        else:
            body.append("\n" + first["message"])
        for fix in g["fixes"]:
            body.append("\nfix: ", style="bold green")
            body.append(fix, style="green")
        grid.add_row(Text(g["severity"], style=STYLE[g["severity"]]), Text(g["code"], style="bold"), body)
    return [Text("Details (one entry per rule; --verbose: one row per location)", style="bold"), grid]


def render(report: dict, console: Console, verbose: bool = False) -> None:
    report = escape_controls_in(report)  # names from a model file: no raw ESC to the terminal
    console.print(_header(report))
    for part in diagnosis_block(report):
        console.print(part)
    console.print()
    for part in _details(report):
        console.print(part)
    if verbose:
        for part in _findings(report):
            console.print(part)
    for part in (_saturation(report), _per_step(report), _differential(report)):
        if part is not None:
            console.print(part)

    render_what_if(report, console)  # prints nothing without a what-if section
    console.print(_summary(report))
