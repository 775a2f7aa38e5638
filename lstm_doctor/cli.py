"""The command line. Parsing only: each command fills an options object and calls
an ``execute(options) -> int``. Heavy modules (numpy's users, pytensor,
matplotlib) are imported inside the commands, so ``--help`` and ``--version``
answer instantly.

Exit codes: 0 no finding at or above --fail-on; 1 findings at or above it;
2 usage or input error (one line on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import sys

import click

from . import __version__

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
LAYOUTS = ("btd", "tbd", "bct")
FORMATS = ("native", "tweet2vec", "lasagne", "torch", "keras", "onnx")
# Report formats; each has a renderer in lstm_doctor.report.REPORTERS (kept
# here as names only, so that --help imports nothing heavy).
REPORT_FORMATS = ("text", "json", "html", "markdown", "junit", "github")


def _fail(message: str) -> None:
    # A non-UTF-8 file name arrives with lone surrogates: show its bytes as \xNN, on one line.
    message = message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    message = " ".join(message.splitlines())
    click.echo(f"lstm-doctor: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _run(execute, options) -> None:
    from .errors import UserError

    try:
        code = execute(options)
    except UserError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("lstm-doctor: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code)


def model_options(f):
    f = click.option("--model-format", type=click.Choice(FORMATS), help="Override format detection.")(f)
    f = click.option("--preset", type=click.Choice(["tweet2vec"]), help="Declare a known codebase's actual equations.")(f)
    f = click.option("--layer-prefix", help="torch/lasagne: the submodule whose LSTM to load (e.g. encoder.lstm).")(f)
    f = click.option("--layer-name", help="keras/onnx: the LSTM layer or node to load when there are several.")(f)
    f = click.option("--trust-pickle", is_flag=True, help="Allow arbitrary pickles (runs code from the file!).")(f)
    return f


def input_options(f):
    # No dir_okay=False on file paths: the loaders refuse a directory in one line (exit 2).
    f = click.option("--inputs", "-i", type=click.Path(),
                     help="Input sequences (.npy or .npz), or texts (.txt, .jsonl, .json) for a front end.")(f)
    f = click.option(
        "--layout",
        type=click.Choice(LAYOUTS),
        help="Axes of the inputs: btd (batch, time, features), tbd, or bct (channels-first conv output). "
        "Default: the model's declared layout.",
    )(f)
    f = click.option("--lengths", type=click.Path(), help="Valid length of each sequence (.npy).")(f)
    return f


def text_options(f):
    f = click.option("--text-field", default="text", show_default=True,
                     help="Text inputs (.json/.jsonl): the field of an object that holds the text.")(f)
    f = click.option("--text-clean", type=click.Choice(["tweet2vec", "none"]),
                     help="Text inputs: cleaning before the front end (default: tweet2vec built-in, none for a plug-in).")(f)
    f = click.option("--featurizer", help="Text inputs: a plug-in front end, module:function or an entry point name.")(f)
    return f


def engine_option(f):
    return click.option(
        "--engine",
        type=click.Choice(["auto", "numpy", "fused", "pytensor"]),
        default="auto",
        show_default=True,
        help="Capture engine: fused (NumPy GEMMs with one compiled pass for the step and its statistics, "
        "float32), numpy (the NumPy loop), pytensor (the scan, engine of record); auto picks fused when "
        "the run is large enough to repay loading (or first compiling) its kernel, numpy otherwise.",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstm-doctor")
def cli():
    """A doctor for LSTM layers: re-runs the layer in an instrumented scan and says,
    with numbers and a fix, what is wrong.

    \b
    Start with:  lstm-doctor demo
    Then:        lstm-doctor diagnose MODEL --inputs X.npy
    """


def diagnosis_options(f):
    f = click.option("--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True)(f)
    f = click.option("--output", "-o", type=click.Path(), help="Write the report here (atomically).")(f)
    f = click.option(
        "--plots", "plots_dir", type=click.Path(file_okay=False), help="markdown: write the plots (PNG) here and link them."
    )(f)
    f = click.option(
        "--fail-on",
        type=click.Choice(["error", "warning", "info"]),
        default="error",
        show_default=True,
        help="Exit 1 when a finding is at or above this severity.",
    )(f)
    f = click.option("--exit-zero", is_flag=True, help="Always exit 0 when the diagnosis ran.")(f)
    f = click.option("--select", multiple=True, help="Only these code prefixes (repeat or comma-separate).")(f)
    f = click.option("--ignore", multiple=True, help="Drop these code prefixes (longest prefix wins).")(f)
    f = click.option("--threshold", multiple=True, help="Override a rule threshold: CODE.param=value.")(f)
    f = click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)(f)
    f = click.option("--chunk-size", type=click.IntRange(1), default=256, show_default=True, help="Sequences per chunk.")(f)
    f = click.option(
        "--sample-size", type=click.IntRange(1), default=64, show_default=True, help="Sequences kept in full for plots."
    )(f)
    return f


def max_memory_option(f):
    return click.option(
        "--max-memory",
        metavar="SIZE",
        help="Refuse, before allocating, a run estimated to need more memory than SIZE (e.g. 2GB, 512MB). "
        "Default: half the physical memory.",
    )(f)


def _split(values) -> tuple[str, ...]:
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


@cli.command()
@click.argument("model", type=click.Path())
@input_options
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
@diagnosis_options
@max_memory_option
@click.option("--observed", type=click.Path(),
              help="A trace your own code printed for the same inputs (.npy h (B,T,H)/(T,B,H)/(B,H), or .npz with h, "
              "c, units, layout): rank the configurations that reproduce it (A204).")
@click.option("--gradients/--no-gradients", default=False, show_default=True,
              help="Gradient flow by autodiff over the bounded sample (G701, G702, H602, memory horizon); "
              "costs a PyTensor compile of several seconds, hence opt-in.")
def diagnose(model, inputs, layout, lengths, probe, probe_scale, probe_steps, probe_sequences, what_if, text_field,
             text_clean, featurizer, model_format,
             preset, layer_prefix, layer_name, trust_pickle, engine, fmt, output, plots_dir, fail_on, exit_zero, select, ignore,
             threshold, color, chunk_size, sample_size, max_memory, observed, gradients):
    """Diagnose MODEL (an lstm.toml, its folder, or a framework file) on sample inputs."""
    from .diagnose import DiagnoseOptions, execute

    _run(
        execute,
        DiagnoseOptions(
            model=model, inputs=inputs, layout=layout, lengths=lengths, probe=probe, probe_scale=probe_scale,
            probe_steps=probe_steps, probe_sequences=probe_sequences, text_field=text_field, text_clean=text_clean,
            featurizer=featurizer, model_format=model_format, preset=preset,
            layer_prefix=layer_prefix, layer_name=layer_name, trust_pickle=trust_pickle, engine=engine, format=fmt, output=output,
            plots_dir=plots_dir, what_if=what_if, fail_on=fail_on, exit_zero=exit_zero, select=_split(select), ignore=_split(ignore),
            thresholds=tuple(threshold), color=color, chunk_size=chunk_size, sample_size=sample_size,
            max_memory=max_memory, observed=observed, gradients=gradients,
        ),
    )


@cli.command()
@click.argument("model", type=click.Path())
@input_options
@click.option("--out", required=True, type=click.Path(), help="The .npz to write.")
@click.option("--steps", help="Only steps A:B.")
@click.option("--units", help="Only these units, e.g. 0,3,5-9.")
@model_options
@engine_option
@max_memory_option
def trace(model, inputs, layout, lengths, out, steps, units, model_format, preset, layer_prefix, layer_name,
          trust_pickle, engine, max_memory):
    """Write every step's h, c, i, f, g, o and pre-activations, shaped (B, T, H)."""
    from .trace import TraceOptions, execute

    if not inputs:
        _fail("trace needs --inputs")
    _run(
        execute,
        TraceOptions(
            model=model, inputs=inputs, out=out, layout=layout, lengths=lengths, steps=steps, units=units,
            model_format=model_format, preset=preset, layer_prefix=layer_prefix, layer_name=layer_name,
            trust_pickle=trust_pickle, engine=engine, max_memory=max_memory,
        ),
    )


@cli.command()
@engine_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False))
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
def demo(engine, fmt, output, color):
    """Diagnose the bundled CASE.md-like encoder and compare it with its fixed twin."""
    from . import demo as demo_module
    from .diagnose import DiagnoseOptions

    _run(demo_module.execute, DiagnoseOptions(model="", engine=engine, format=fmt, output=output, color=color))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def rules(fmt):
    """List every rule code with its name, family and default severity."""
    from .rules_cmd import list_rules

    _run(list_rules, fmt)


@cli.command()
@click.argument("code")
def explain(code):
    """Print a rule's documentation: what it does, why it matters, an example, the fix."""
    from .rules_cmd import explain_rule

    _run(explain_rule, code)


def _register_command_modules() -> None:
    import importlib
    import pkgutil

    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        for command in getattr(module, "commands", []):
            cli.add_command(command)


_register_command_modules()


def main() -> None:
    cli(prog_name="lstm-doctor")
