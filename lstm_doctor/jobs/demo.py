"""``demo``: diagnose the bundled CASE.md-like encoder, then compare its fixed twin.

The broken encoder carries CASE.md's four defects (``lstm_doctor.example``);
the fixed twin has all four repaired. The demo prints the broken encoder's
full report and a side-by-side of the headline metrics, or both reports as
JSON (``{"broken": ..., "fixed": ...}``).
"""

from __future__ import annotations

import json
from dataclasses import replace

from lstm_doctor.jobs.diagnose import DiagnoseOptions, render, run_diagnosis

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
    from lstm_doctor.example import example_folder

    folder = example_folder()
    # The broken encoder also gets the what-if experiment: which fix removes
    # the saturation, which the collapse (CASE.md's ablation, measured).
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
    from lstm_doctor.frontend.example import text_example

    encoding, tweets = text_example()
    return replace(base, model=str(encoding), inputs=str(tweets), preset="tweet2vec", layout=None)


def execute(base: DiagnoseOptions) -> int:
    from lstm_doctor.output import emit

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
    text = render(broken, "text", base.color, base.output is None)
    text += comparison(broken, fixed, base.color, base.output is None)
    text += text_section(from_text)
    emit(text, base.output)
    return 0


def text_section(report: dict) -> str:
    """Text → features → diagnosis, in a few lines: the notes, the front end's statistics, the codes."""
    from lstm_doctor.frontend import stats_lines

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
    import io

    from rich.console import Console
    from rich.table import Table

    from lstm_doctor.report.terminal import text_width, use_color

    table = Table(title="Broken encoder vs its fixed twin (all four CASE.md defects repaired)", title_justify="left")
    table.add_column("metric")
    table.add_column("broken", justify="right")
    table.add_column("fixed", justify="right")
    hb, hf = broken["summary"]["headline"], fixed["summary"]["headline"]
    for key, label, fmt in METRICS:
        table.add_row(label, _fmt(fmt, hb[key]), _fmt(fmt, hf[key]))
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
