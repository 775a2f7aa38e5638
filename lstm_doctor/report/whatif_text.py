"""The what-if section of the terminal report (rich), read from the report dict only.

``what_if_renderables(report)`` returns the ablation table (the model as
loaded, each fix alone, the fixes that could not run, then the cumulative
path, as in docs/case-study.md), the root-cause ranking and the measured conclusions.
``render_what_if(report, console)`` prints them; it prints nothing when the
report has no ``what_if`` section.
"""

from __future__ import annotations

import io

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

COLUMNS = (
    ("saturated_fraction", "gates\nsat.", "{:.0%}"),
    ("max_abs_cell", "max\n|c|", "{:.3g}"),
    ("hidden_at_bound_fraction", "h at\nbound", "{:.0%}"),
    ("encoding_mean_abs", "mean\n|h_T|", "{:.2g}"),
    ("mean_pairwise_cosine", "cosine", None),
    ("cross_input_std", "cross\nstd", "{:.2g}"),
    ("input_variance_share", "input\nshare", "{:.2%}"),
    ("output_change", "moves\nh_T", "{:.2g}"),
)


def _fmt(key: str, fmt: str | None, value) -> str:
    if value is None or value != value:
        return "n/a"
    if key == "mean_pairwise_cosine":
        return f"{value:.6f}" if value >= 0.9995 else f"{value:.3f}"
    return fmt.format(value)


def _codes(row: dict, key: str, base: set[str] | None = None) -> Text:
    codes = row.get(key)
    if codes is None:
        return Text("—", style="dim")
    if not codes:
        return Text("none", style="green")
    text = Text()
    for n, code in enumerate(codes):
        if n:
            text.append(" ")
        new = base is not None and code not in base
        text.append(code, style="bold magenta" if new else ("red" if key == "remaining_errors" else "yellow"))
    return text


def _label(row: dict) -> Text:
    if row.get("status") == "baseline":
        return Text("as loaded", style="bold")
    if row["cumulative"]:
        return Text.assemble((f"{row['step']}. ", "bold green"), ("" if row["step"] == 1 else "+ ") + row["fix"])
    return Text("   " + row["fix"])


def _sections(table: Table, rows: list[dict]):
    """Yield rows, adding a section line after the baseline and before the cumulative path."""
    previous = None
    blank = [""] * (len(table.columns) - 1)
    for row in rows:
        if previous is not None and previous.get("status") == "baseline" and not row["cumulative"]:
            table.add_section()
            table.add_row(Text("each fix alone:", style="italic dim"), *blank)
        if row["cumulative"] and (previous is None or not previous["cumulative"]):
            table.add_section()
            table.add_row(Text("cumulative (greedy):", style="italic dim"), *blank)
        yield row
        previous = row


def _not_run(row: dict) -> bool:
    return row.get("status") in ("needs-retraining", "no-effect")


def ablation_table(rows: list[dict], sample: dict | None = None) -> Table:
    """The headline metrics of every run, as the case study's ablation."""
    title = "What-if: each fix alone, then cumulatively (same sample for every run"
    if sample:
        title += f": {sample['sequences']} of {sample['of']} sequences × {sample['T']} steps"
    table = Table(title=title + ")", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run", no_wrap=True)
    for _, label, _ in COLUMNS:
        table.add_column(label, justify="right", no_wrap=True)
    notes = [f"{row['fix']}: {row.get('needs') or 'no effect: ' + row['applied']}" for row in rows if _not_run(row)]
    if notes:
        table.caption = "not run: " + "; ".join(notes)
        table.caption_justify = "left"
    for row in _sections(table, [r for r in rows if not _not_run(r)]):
        m = row["metrics"] or {}
        label = _label(row)
        if row.get("harm"):
            label.append(" (harmful)", style="bold red")
        table.add_row(label, *[_fmt(key, fmt, m.get(key)) for key, _, fmt in COLUMNS])
    return table


def codes_table(rows: list[dict]) -> Table:
    """The error and warning codes left after every run (new ones in magenta)."""
    table = Table(title="Codes left after each run", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("run", no_wrap=True)
    table.add_column("errors left", ratio=1)
    table.add_column("warnings left", ratio=1)
    base = next((r for r in rows if r.get("status") == "baseline"), None)
    base_codes = set(base["remaining_codes"] or []) if base else None
    for row in _sections(table, [r for r in rows if not _not_run(r)]):
        table.add_row(_label(row), _codes(row, "remaining_errors", base_codes), _codes(row, "remaining_warnings", base_codes))
    return table


def ranking_table(ranking: list[dict]) -> Table:
    table = Table(
        title="Root causes, ranked by what each fix achieves alone (bold: on the cumulative path)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        expand=True,
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("fix (codes)", no_wrap=True)
    table.add_column("removes alone (errors)", ratio=2)
    table.add_column("notes", ratio=3)
    for entry in ranking:
        removes = ", ".join(entry["removes_errors"]) or "—"
        if entry.get("downgrades"):
            removes += f"; {', '.join(entry['downgrades'])} only to warning"
        notes = []
        if entry.get("explains"):
            notes.append(f"explains {', '.join(entry['explains'])}")
        if entry.get("note"):
            notes.append(entry["note"])
        table.add_row(
            str(entry["rank"]) if entry["rank"] is not None else ("✗" if entry.get("harmful") else "—"),
            Text.assemble(
                (entry["fix"], "bold" if entry.get("on_path") else ""),
                (f" ({', '.join(entry['present'] or entry['codes'])})", "dim"),
            ),
            removes if entry["rank"] is not None or entry.get("harmful") else "not run",
            Text("; ".join(notes)),
        )
    return table


def what_if_renderables(report: dict) -> list:
    rows = report.get("what_if")
    if not rows:
        return []
    summary = report.get("what_if_ranking") or {}
    parts: list = [ablation_table(rows, summary.get("sample")), codes_table(rows)]
    if summary.get("ranking"):
        parts.append(ranking_table(summary["ranking"]))
    if summary.get("conclusions"):
        lines = [Text("What the measurements say", style="bold")]
        lines += [Text.assemble(("• ", "bold"), line) for line in summary["conclusions"]]
        if summary.get("model_fixes"):
            lines.append(
                Text(
                    "`lstm-doctor what-if MODEL --inputs X --write-fixed DIR` writes the model with "
                    + " + ".join(summary["model_fixes"])
                    + " applied, as a starting point for retraining"
                    + (
                        f" (the input fixes {', '.join(summary['input_fixes'])} belong to the data pipeline)."
                        if summary.get("input_fixes")
                        else "."
                    ),
                    style="dim",
                )
            )
        parts.append(Group(*lines))
    if summary.get("objective"):
        parts.append(Text(f"objective: {summary['objective']}", style="dim"))
    return parts


def render_what_if(report: dict, console: Console) -> None:
    for part in what_if_renderables(report):
        console.print(part)


def render_text(report: dict, width: int = 110, color: bool = False) -> str:
    """The what-if section alone, as text (the ``what-if`` command's text output)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    render_what_if(report, console)
    return buffer.getvalue()
