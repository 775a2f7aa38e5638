"""``lstm-doctor check``: the CI entry point (config file, several models, baseline)."""

from __future__ import annotations

import click

from ..cli import REPORT_FORMATS, _run, _split


@click.command("check")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    help="Config file (default: lstm-doctor.toml, else [tool.lstm-doctor] in pyproject.toml, "
    "in the working directory).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(REPORT_FORMATS),
    default="text",
    show_default=True,
    help="What goes to stdout (github: workflow annotations).",
)
@click.option(
    "--report",
    "reports",
    multiple=True,
    metavar="FORMAT=FILE",
    help="Also write this format to FILE (adds to / replaces the config's outputs), e.g. junit=junit.xml.",
)
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), help="Where the markdown report's PNGs go.")
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False),
    help="Fail only on findings not in this baseline (or check/diagnose JSON report).",
)
@click.option("--no-baseline", is_flag=True, help="Ignore the config's baseline.")
@click.option(
    "--write-baseline",
    type=click.Path(dir_okay=False),
    help="Record the current findings as the baseline in FILE, and exit 0.",
)
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), help="Override the config's fail-on.")
@click.option("--select", multiple=True, help="Override the config's select (code prefixes).")
@click.option("--ignore", multiple=True, help="Override the config's ignore (code prefixes).")
@click.option("--threshold", multiple=True, help="CODE.param=value, on top of the config's thresholds.")
@click.option("--engine", type=click.Choice(["numpy", "pytensor"]), help="Override the config's engine.")
@click.option("--exit-zero", is_flag=True, help="Always exit 0 when the check ran.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
def check(
    config,
    fmt,
    reports,
    plots_dir,
    baseline,
    no_baseline,
    write_baseline,
    fail_on,
    select,
    ignore,
    threshold,
    engine,
    exit_zero,
    color,
):
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
    from ..check import CheckOptions, execute

    _run(
        execute,
        CheckOptions(
            config=config,
            format=fmt,
            reports=tuple(reports),
            plots_dir=plots_dir,
            baseline=baseline,
            no_baseline=no_baseline,
            write_baseline=write_baseline,
            fail_on=fail_on,
            select=_split(select) if select else None,
            ignore=_split(ignore) if ignore else None,
            thresholds=tuple(threshold),
            engine=engine,
            exit_zero=exit_zero,
            color=color,
        ),
    )


commands = [check]
