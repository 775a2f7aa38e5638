"""One click command per job. Parsing only: each command fills its job's typed
options and hands them to ``run_job``, which calls ``execute(options) -> int``
and turns a ``UserError`` into one line on stderr with exit 2.

Jobs are imported inside the command functions: importing them pulls in numpy,
and ``lstm-doctor --help`` must not.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable

import click

from lstm_doctor.choices import LAYOUTS, REPORT_FORMATS, SEVERITIES
from lstm_doctor.cli.options import (
    architecture_options,
    color_option,
    engine_option,
    engine_override_option,
    format_option,
    input_options,
    layout_option,
    max_memory_option,
    model_options,
    output_option,
    report_options,
    selection_options,
    split_codes,
    text_options,
)
from lstm_doctor.errors import UserError
from lstm_doctor.output import escape_controls, tracking

EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


def fail(message: str) -> None:
    """One line on stderr, exit 2."""
    click.echo(f"lstm-doctor: error: {one_line(message)}", err=True)
    sys.exit(EXIT_USAGE)


def one_line(message: str) -> str:
    # A non-UTF-8 file name arrives with lone surrogates, a hostile one with ESC or C1 in it:
    # show those as \xNN (lstm_doctor.output.escape_controls), on one line.
    return " ".join(escape_controls(message).splitlines())


def report_bug(exc: BaseException) -> None:
    """An exception no reader or job expected: a bug. One line asking for a report, exit 3;
    the traceback with ``--debug`` or LSTM_DOCTOR_DEBUG=1."""
    if os.environ.get("LSTM_DOCTOR_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    detail = one_line(f"{type(exc).__name__}: {exc}")
    if len(detail) > 300:
        detail = detail[:300] + "..."
    click.echo(
        f"lstm-doctor: internal error (a bug in lstm-doctor, please report it with the command that ran): "
        f"{detail} (--debug shows the traceback)",
        err=True,
    )
    sys.exit(EXIT_BUG)


def run_job(execute: Callable[[Any], int], options: Any) -> None:
    """Run a job and exit with its code: 2 (one line) for a user error, 130 when interrupted,
    3 (one line) for a bug. Every file the job reads is protected from its outputs
    (``lstm_doctor.output.tracking``)."""
    try:
        with tracking():
            code = execute(options)
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        click.echo("lstm-doctor: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        report_bug(exc)
    sys.exit(code)


@click.command()
@click.argument("model", type=click.Path())
@input_options()
@click.option("--probe", type=click.Choice(["normal", "uniform", "zeros"]), default="normal", show_default=True,
              help="Synthetic inputs when no --inputs are given.")
@click.option("--probe-scale", type=float, default=1.0, show_default=True)
@click.option("--probe-steps", type=click.IntRange(1), default=50, show_default=True)
@click.option("--probe-sequences", type=click.IntRange(1), default=64, show_default=True)
@click.option("--what-if", "what_if", is_flag=True,
              help="Also apply each proposed fix virtually and report its measured effect.")
@text_options
@model_options
@engine_option
@report_options
@selection_options
@color_option
@click.option("--chunk-size", type=click.IntRange(1), default=256, show_default=True, help="Sequences per chunk.")
@click.option("--sample-size", type=click.IntRange(1), default=64, show_default=True,
              help="Sequences kept in full for plots.")
@max_memory_option
@click.option("--observed", type=click.Path(),
              help="A trace your own code printed for the same inputs (.npy h (B,T,H)/(T,B,H)/(B,H), or .npz with h, "
              "c, units, layout): rank the configurations that reproduce it (A204).")
@click.option("--gradients/--no-gradients", default=True, show_default=True,
              help="Gradient flow over the bounded sample (G701, G702, H602, memory horizon) by the LSTM's backward "
              "recursion in NumPy; with --engine pytensor by PyTensor's grad (a compile of several seconds).")
@click.option("--verbose", "-v", is_flag=True,
              help="Also print the full findings table, one row per location (text), and each stage's wall time "
              "(load, capture, analyze, render) on stderr.")
def diagnose(model, inputs, layout, lengths, padding, mask, probe,
             probe_scale, probe_steps, probe_sequences, what_if, text_field,
             text_clean, featurizer, model_format, preset, layer_prefix, layer_name, trust_pickle, engine, fmt, output,
             plots_dir, fail_on, exit_zero, select, ignore, threshold, color, chunk_size, sample_size, max_memory,
             observed, gradients, verbose, **architecture):
    """Diagnose MODEL (an lstm.toml, its folder, or a framework file) on sample inputs."""
    from lstm_doctor.jobs.diagnose import DiagnoseOptions, execute

    run_job(execute, DiagnoseOptions(
        model=model, inputs=inputs, layout=layout, lengths=lengths, padding=padding, mask=mask, probe=probe,
        probe_scale=probe_scale,
        probe_steps=probe_steps, probe_sequences=probe_sequences, text_field=text_field, text_clean=text_clean,
        featurizer=featurizer, model_format=model_format, preset=preset, layer_prefix=layer_prefix,
        layer_name=layer_name, trust_pickle=trust_pickle, engine=engine, format=fmt, output=output,
        plots_dir=plots_dir, what_if=what_if, fail_on=fail_on, exit_zero=exit_zero, select=split_codes(select),
        ignore=split_codes(ignore), thresholds=tuple(threshold), color=color, chunk_size=chunk_size,
        sample_size=sample_size, max_memory=max_memory, observed=observed, gradients=gradients, verbose=verbose,
        **architecture,
    ))


@click.command()
@click.argument("model", type=click.Path())
@input_options(required=True)
@click.option("--out", required=True, type=click.Path(), help="The .npz to write.")
@click.option("--steps", help="Only steps A:B.")
@click.option("--units", help="Only these units, e.g. 0,3,5-9.")
@model_options
@engine_option
@max_memory_option
def trace(model, inputs, layout, lengths, padding, mask, out, steps, units, model_format, preset, layer_prefix, layer_name,
          trust_pickle, engine, max_memory, **architecture):
    """Write every step's h, c, i, f, g, o and pre-activations, shaped (B, T, H)."""
    from lstm_doctor.jobs.trace import TraceOptions, execute

    run_job(execute, TraceOptions(
        model=model, inputs=inputs, out=out, layout=layout, lengths=lengths, padding=padding, mask=mask, steps=steps,
        units=units,
        model_format=model_format, preset=preset, layer_prefix=layer_prefix, layer_name=layer_name,
        trust_pickle=trust_pickle, engine=engine, max_memory=max_memory, **architecture,
    ))


@click.command("inspect")
@click.argument("model", type=click.Path())
@model_options
@format_option("text", "json")
@max_memory_option
def inspect_command(model, model_format, preset, layer_prefix, layer_name, trust_pickle, fmt, max_memory,
                    **architecture):
    """Describe MODEL: layers, directions, D, H, gate order, activations, peepholes, parameter statistics."""
    from lstm_doctor.jobs.inspect import InspectOptions, execute

    run_job(execute, InspectOptions(
        model=model, model_format=model_format, preset=preset, layer_prefix=layer_prefix,
        layer_name=layer_name, trust_pickle=trust_pickle, format=fmt, max_memory=max_memory, **architecture,
    ))


@click.command("what-if")
@click.argument("model", type=click.Path())
@input_options(required=True, texts=False)
@click.option("--fixes", multiple=True,
              help="Only these fix ids (comma-separated or repeated); each runs even without its finding.")
@click.option("--sample-size", type=click.IntRange(1), default=256, show_default=True,
              help="Sequences re-run for every fix (evenly spaced over the inputs).")
@click.option("--write-fixed", type=click.Path(file_okay=False),
              help="Write the model with the cumulative path's model-level fixes to this new (or empty) folder.")
@format_option("text", "json")
@output_option()
@engine_option
@selection_options
@color_option
@model_options
@max_memory_option
def what_if(model, inputs, layout, lengths, padding, mask, fixes, sample_size, write_fixed, fmt, output, engine, fail_on, exit_zero,
            select, ignore, threshold, color, model_format, preset, layer_prefix, layer_name, trust_pickle, max_memory,
            **architecture):
    """Apply each proposed fix virtually, measure its effect alone and cumulatively, rank the root causes.

    \b
    Fixes: center-weights (W101), rescale-recurrent (W102), forget-bias-1 (W103),
    tanh-cell-output (A201), sigmoid-gates (A202), tanh-candidate (A203),
    standardize-inputs (I501, I503), rescale-inputs (I502), swap-time-axis (I504),
    mask-padding (I506).
    """
    from lstm_doctor.jobs.whatif import WhatIfCommandOptions, execute

    run_job(execute, WhatIfCommandOptions(
        model=model, inputs=inputs, layout=layout, lengths=lengths, padding=padding, mask=mask,
        model_format=model_format, preset=preset,
        layer_prefix=layer_prefix, layer_name=layer_name, trust_pickle=trust_pickle, engine=engine, format=fmt,
        output=output, write_fixed=write_fixed, fixes=split_codes(fixes), sample_size=sample_size, fail_on=fail_on,
        exit_zero=exit_zero, select=split_codes(select), ignore=split_codes(ignore), thresholds=tuple(threshold),
        color=color, max_memory=max_memory, **architecture,
    ))


@click.command("featurize")
@click.argument("model", type=click.Path())
@click.option("--inputs", "-i", required=True, type=click.Path(dir_okay=False),
              help="Texts: .txt (one per line), .jsonl (one JSON object or string per line) or .json (a list).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npy to write (atomically).")
@text_options
@layout_option
@engine_option
@click.option("--chunk-size", type=click.IntRange(1), default=64, show_default=True, help="Texts per chunk.")
@model_options
@max_memory_option
def featurize(model, inputs, out, text_field, text_clean, featurizer, layout, engine, chunk_size,
              model_format, preset, layer_prefix, layer_name, trust_pickle, max_memory, **architecture):
    """Write the LSTM inputs (.npy) that the front end makes of the texts in --inputs."""
    from lstm_doctor.jobs.featurize import FeaturizeOptions, execute

    run_job(execute, FeaturizeOptions(
        model=model, inputs=inputs, out=out, text_field=text_field, text_clean=text_clean,
        featurizer=featurizer, layout=layout, engine=engine, chunk_size=chunk_size,
        model_format=model_format, preset=preset, layer_prefix=layer_prefix, layer_name=layer_name,
        trust_pickle=trust_pickle, max_memory=max_memory, **architecture,
    ))


@click.command("check")
@click.option("--config", "config", type=click.Path(dir_okay=False),
              help="Config file (default: lstm-doctor.toml, else [tool.lstm-doctor] in pyproject.toml, "
              "in the working directory).")
@format_option(*REPORT_FORMATS, help="What goes to stdout (github: workflow annotations).")
@click.option("--report", "reports", multiple=True, metavar="FORMAT=FILE",
              help="Also write this format to FILE (adds to / replaces the config's outputs), e.g. junit=junit.xml.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Where the markdown report's PNGs go.")
@click.option("--baseline", type=click.Path(dir_okay=False),
              help="Fail only on findings not in this baseline (or check/diagnose JSON report).")
@click.option("--no-baseline", is_flag=True, help="Ignore the config's baseline.")
@click.option("--write-baseline", type=click.Path(dir_okay=False),
              help="Record the current findings as the baseline in FILE, and exit 0.")
@click.option("--fail-on", type=click.Choice(SEVERITIES), help="Override the config's fail-on.")
@click.option("--select", multiple=True, help="Override the config's select (code prefixes).")
@click.option("--ignore", multiple=True, help="Override the config's ignore (code prefixes).")
@click.option("--threshold", multiple=True, help="CODE.param=value, on top of the config's thresholds.")
@engine_override_option
@click.option("--exit-zero", is_flag=True, help="Always exit 0 when the check ran.")
@color_option
@max_memory_option
def check(config, fmt, reports, plots_dir, baseline, no_baseline, write_baseline, fail_on, select, ignore, threshold,
          engine, exit_zero, color, max_memory):
    """Diagnose every model of the config; exit 1 if any finding at or above fail-on
    (with --baseline: any new one).

    \b
    [tool.lstm-doctor]                 # pyproject.toml (or the top level of lstm-doctor.toml)
    fail-on = "error"
    ignore = ["I503"]
    thresholds = { S301 = { share = 0.6 } }
    outputs = { junit = "junit.xml", html = "lstm-doctor.html" }
    [[tool.lstm-doctor.models]]
    model = "models/encoder"
    inputs = "data/sample.npy"
    """
    from lstm_doctor.jobs.check import CheckOptions, execute

    run_job(execute, CheckOptions(
        config=config, format=fmt, reports=tuple(reports), plots_dir=plots_dir, baseline=baseline,
        no_baseline=no_baseline, write_baseline=write_baseline, fail_on=fail_on,
        select=split_codes(select) if select else None, ignore=split_codes(ignore) if ignore else None,
        thresholds=tuple(threshold), engine=engine, exit_zero=exit_zero, color=color, max_memory=max_memory,
    ))


@click.command("compare")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--inputs", "-i", type=click.Path(dir_okay=False),
              help="Models: the inputs of both (or of A with --inputs-b).")
@click.option("--inputs-b", type=click.Path(dir_okay=False), help="Models: B's inputs, when they differ from A's.")
@click.option("--layout", type=click.Choice(LAYOUTS), help="Models: A's input layout (default: the model's).")
@click.option("--layout-b", type=click.Choice(LAYOUTS),
              help="Models: B's input layout (default: --layout, else the model's).")
@engine_option
@click.option("--select", multiple=True, help="Models: only these code prefixes.")
@click.option("--ignore", multiple=True, help="Models: drop these code prefixes.")
@click.option("--threshold", multiple=True, help="Models: CODE.param=value.")
@format_option("text", "json")
@output_option("the comparison")
@color_option
@architecture_options
@max_memory_option
def compare(a, b, inputs, inputs_b, layout, layout_b, engine, select, ignore, threshold, fmt, output, color,
            max_memory, **architecture):
    """Compare two reports (A.json B.json) or two models (MODEL_A MODEL_B --inputs X.npy):
    findings resolved, appeared or changed in severity, and the headline metrics' moves.

    \b
    lstm-doctor compare before.json after.json
    lstm-doctor compare examples/tweet2vec_like/broken examples/tweet2vec_like/fixed \\
        --inputs examples/tweet2vec_like/conv_output.npy \\
        --inputs-b examples/tweet2vec_like/conv_output_standardized.npy
    """
    from lstm_doctor.jobs.compare import CompareOptions, execute

    run_job(execute, CompareOptions(
        a=a, b=b, inputs=inputs, inputs_b=inputs_b, layout=layout, layout_b=layout_b, engine=engine,
        select=split_codes(select), ignore=split_codes(ignore), thresholds=tuple(threshold), format=fmt,
        output=output, color=color, max_memory=max_memory, **architecture,
    ))


@click.command()
@engine_option
@format_option("text", "json")
@output_option("the demo's output")
@color_option
def demo(engine, fmt, output, color):
    """Diagnose the bundled case-study-like encoder and compare it with its fixed twin."""
    from lstm_doctor.jobs.demo import execute
    from lstm_doctor.jobs.diagnose import DiagnoseOptions

    run_job(execute, DiagnoseOptions(model="", engine=engine, format=fmt, output=output, color=color))


@click.command()
@format_option("text", "json", "markdown", help="markdown: the full rule reference (docs/rules.md).")
def rules(fmt):
    """List every rule code with its name, family and default severity."""
    from lstm_doctor.jobs.rules import list_rules

    run_job(list_rules, fmt)


@click.command()
@click.argument("code")
def explain(code):
    """Print a rule's documentation: what it does, why it matters, an example, the fix."""
    from lstm_doctor.jobs.rules import explain_rule

    run_job(explain_rule, code)


ALL = [diagnose, trace, inspect_command, what_if, featurize, check, compare, demo, rules, explain]
