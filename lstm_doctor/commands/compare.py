"""``lstm-doctor compare``: two reports (or two models) side by side."""

from __future__ import annotations

import click

from ..cli import LAYOUTS, _run, _split


@click.command("compare")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option(
    "--inputs", "-i", type=click.Path(dir_okay=False), help="Models: the inputs of both (or of A with --inputs-b)."
)
@click.option("--inputs-b", type=click.Path(dir_okay=False), help="Models: B's inputs, when they differ from A's.")
@click.option("--layout", type=click.Choice(LAYOUTS), help="Models: A's input layout (default: the model's).")
@click.option(
    "--layout-b", type=click.Choice(LAYOUTS), help="Models: B's input layout (default: --layout, else the model's)."
)
@click.option("--engine", type=click.Choice(["numpy", "pytensor"]), default="numpy", show_default=True)
@click.option("--select", multiple=True, help="Models: only these code prefixes.")
@click.option("--ignore", multiple=True, help="Models: drop these code prefixes.")
@click.option("--threshold", multiple=True, help="Models: CODE.param=value.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the comparison here (atomically).")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True)
def compare(a, b, inputs, inputs_b, layout, layout_b, engine, select, ignore, threshold, fmt, output, color):
    """Compare two reports (A.json B.json) or two models (MODEL_A MODEL_B --inputs X.npy):
    findings resolved, appeared or changed in severity, and the headline metrics' moves.

    \b
    lstm-doctor compare before.json after.json
    lstm-doctor compare examples/tweet2vec_like/broken examples/tweet2vec_like/fixed \\
        --inputs examples/tweet2vec_like/conv_output.npy \\
        --inputs-b examples/tweet2vec_like/conv_output_standardized.npy
    """
    from ..compare import CompareOptions, execute

    _run(
        execute,
        CompareOptions(
            a=a,
            b=b,
            inputs=inputs,
            inputs_b=inputs_b,
            layout=layout,
            layout_b=layout_b,
            engine=engine,
            select=_split(select),
            ignore=_split(ignore),
            thresholds=tuple(threshold),
            format=fmt,
            output=output,
            color=color,
        ),
    )


commands = [compare]
