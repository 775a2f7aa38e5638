"""``demo``: diagnose the bundled case-study-like encoder, then compare its fixed twin.

The broken encoder carries the case study's four defects (``lstm_doctor.example``);
the fixed twin has all four repaired. The demo prints, in about one screen
(``demo_text``): the broken encoder's diagnosis (what is wrong, its root causes
in order, what they explain) and its what-if table; the fixed twin's diagnosis
next to the broken one's headline metrics; the same encoder diagnosed from raw
tweets in two lines; and the commands that give the full reports and plots.
``--format json`` gives the three reports (``{"broken", "fixed", "from_text"}``).
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

from lstm_doctor.example import example_folder
from lstm_doctor.frontend import stats_lines
from lstm_doctor.frontend.example import text_example
from lstm_doctor.jobs.diagnose import DiagnoseOptions, run_diagnosis
from lstm_doctor.output import emit
from lstm_doctor.report.diagnosis import plural, status
from lstm_doctor.report.terminal import text_width, use_color

METRICS = (
    ("saturated_fraction", "gate values saturated (i, f, o)", "{:.0%}"),
    ("hidden_at_bound_fraction", "hidden values at a bound", "{:.0%}"),
    ("max_abs_cell", "max |c|", "{:.3g}"),
    ("mean_pairwise_cosine", "mean pairwise cosine of encodings", "{:.6f}"),
    ("cross_input_std", "cross-input std of encodings", "{:.2g}"),
    ("input_variance_share", "input share of pre-activation variance", "{:.2%}"),
)


DEMO_WHAT_IF_SAMPLE = 32


def demo_options(base: DiagnoseOptions) -> tuple[DiagnoseOptions, DiagnoseOptions]:
    folder = example_folder()
    # The broken encoder also gets the what-if experiment: which fix removes
    # the saturation, which the collapse (the case study's ablation, measured).
    # The experiment re-runs 32 of the 96 tweets: the same conclusions as on
    # all of them (tests/test_whatif.py), in a third of the time.
    broken = replace(
        base, model=str(folder / "broken"), inputs=str(folder / "conv_output.npy"), layout=None, what_if=True,
        what_if_sample=DEMO_WHAT_IF_SAMPLE,
    )
    fixed = replace(
        base, model=str(folder / "fixed"), inputs=str(folder / "conv_output_standardized.npy"), layout=None
    )
    return broken, fixed


def text_options(base: DiagnoseOptions) -> DiagnoseOptions:
    """The text path: the bundled tweets through the broken encoder's own front end
    (a 25-array Tweet2Vec file generated once into a cache folder)."""
    encoding, tweets = text_example()
    return replace(base, model=str(encoding), inputs=str(tweets), preset="tweet2vec", layout=None)


def execute(base: DiagnoseOptions) -> int:
    broken_opts, fixed_opts = demo_options(base)
    broken = run_diagnosis(broken_opts)
    fixed = run_diagnosis(fixed_opts)
    from_text = run_diagnosis(text_options(base))
    if base.format == "json":
        emit(
            json.dumps({"broken": broken, "fixed": fixed, "from_text": from_text}, indent=2, ensure_ascii=False) + "\n",
            base.output,
        )
        return 0

    to_terminal = base.output is None
    text = demo_text(broken, fixed, from_text, use_color(base.color, to_terminal), text_width(to_terminal))
    emit(text, base.output)
    return 0


BROKEN = "examples/tweet2vec_like/broken"
FIXED = "examples/tweet2vec_like/fixed"


def demo_text(broken: dict, fixed: dict, from_text: dict | None, color: bool = False, width: int = 110) -> str:
    """The demo's terminal output, from the three report dicts only (about 60 lines at 110 columns)."""
    from rich.console import Console
    from rich.text import Text

    from lstm_doctor.report.text import diagnosis_block
    from lstm_doctor.report.whatif_text import ablation_table

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    inp = broken["inputs"]
    console.print(Text.assemble(
        ("lstm-doctor demo", "bold"),
        f": the case-study encoder ({BROKEN}, cell {broken['model']['layers'][0]['equation']}), "
        f"{plural(inp['sequences'], 'sequence')} × {inp['T']} steps × {inp['D']} features",
    ))
    console.print()
    for part in diagnosis_block(broken):
        console.print(part)
    ranking = broken.get("what_if_ranking") or {}
    if broken.get("what_if"):
        console.print()
        table = ablation_table(broken["what_if"], ranking.get("sample"))
        sample = ranking.get("sample") or {}
        table.title = (f"What-if, on {sample.get('sequences')} of the {sample.get('of')} sequences: each fix alone, "
                       "then cumulatively")
        table.show_edge = False
        console.print(table)
    console.print()
    console.print(comparison_table(broken, fixed))
    d = fixed.get("diagnosis") or {}
    console.print(Text.assemble(
        ("Fixed twin: ", "bold"), ("healthy" if d.get("healthy") else "not healthy") + f"; {status(fixed)['text']}"
    ))
    if from_text is not None:
        errors = sorted({f["code"] for f in from_text["findings"] if f["severity"] == "error"})
        same = errors == sorted({f["code"] for f in broken["findings"] if f["severity"] == "error"})
        console.print(Text.assemble(
            ("From raw tweets: ", "bold"),
            f"the same encoder as a Tweet2Vec file, fed {from_text['inputs']['sequences']} tweets through its "
            f"conv front end: errors {', '.join(errors) or 'none'}" + (" (the same codes)." if same else "."),
        ))
    console.print()
    console.print(Text.assemble(("Next: ", "bold"), (
        f"lstm-doctor diagnose {BROKEN} --inputs examples/tweet2vec_like/conv_output.npy --format html "
        "--output broken.html --exit-zero"), " for the plots; without --format: the full text report; "
        "--format concise: one line per finding."))
    return buffer.getvalue()


def _headline_rows(table, broken: dict, fixed: dict) -> None:
    """The metric, broken and fixed columns of ``table`` (a rich Table), one row per headline metric."""
    table.add_column("metric")
    table.add_column("broken", justify="right")
    table.add_column("fixed", justify="right")
    hb, hf = broken["summary"]["headline"], fixed["summary"]["headline"]
    for key, label, fmt in METRICS:
        table.add_row(label, _fmt(fmt, hb[key]), _fmt(fmt, hf[key]))


def comparison_table(broken: dict, fixed: dict):
    """The headline metrics of the broken encoder and its fixed twin, side by side."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="Broken vs its fixed twin (the four case-study defects repaired)", title_justify="left",
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
    )
    _headline_rows(table, broken, fixed)
    for sev in ("error", "warning"):
        table.add_row(f"{sev}s", str(broken["summary"][sev]), str(fixed["summary"][sev]))
    return table


def text_section(report: dict) -> str:
    """Text → features → diagnosis, in a few lines: the notes, the front end's statistics, the codes."""
    inputs = report["inputs"]
    model_file = report["model"]["files"][0]["path"]
    lines = [
        "",
        "Text → features → diagnosis: the same broken encoder saved as a Tweet2Vec encoding file (conv stack + LSTM):",
        f"  lstm-doctor diagnose {model_file} --inputs {inputs['source']} --preset tweet2vec",
    ]
    lines += [f"  {note}" for note in inputs["notes"]]
    lines += [f"  {line}" for line in stats_lines(inputs.get("frontend"))]
    for sev in ("error", "warning"):
        codes = ", ".join(sorted({f["code"] for f in report["findings"] if f["severity"] == sev})) or "none"
        lines.append(f"  {sev} codes: {codes}")
    return "\n".join(lines) + "\n"


def comparison(broken: dict, fixed: dict, color: str, to_terminal: bool) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Broken encoder vs its fixed twin (all four docs/case-study.md defects repaired)", title_justify="left")
    _headline_rows(table, broken, fixed)
    for sev in ("error", "warning"):
        codes = lambda r: ", ".join(sorted({f["code"] for f in r["findings"] if f["severity"] == sev})) or "none"  # noqa: E731
        table.add_row(f"{sev} codes", codes(broken), codes(fixed))
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=text_width(to_terminal),
        force_terminal=use_color(color, to_terminal),
        no_color=not use_color(color, to_terminal),
    )
    console.print(table)
    console.print(
        "The broken model is examples/tweet2vec_like/broken; run "
        "`lstm-doctor diagnose examples/tweet2vec_like/fixed --inputs "
        "examples/tweet2vec_like/conv_output_standardized.npy` for the twin's full report."
    )
    return buffer.getvalue()


def _fmt(fmt: str, value) -> str:
    return "n/a" if value is None else fmt.format(value)
