"""``lstm-doctor inspect MODEL``: what was found in a model file (no inputs needed)."""

from __future__ import annotations

import click


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--model-format", type=click.Choice(["native", "tweet2vec", "lasagne", "torch", "keras", "onnx"]))
@click.option("--preset", type=click.Choice(["tweet2vec"]))
@click.option("--layer-prefix")
@click.option("--layer-name")
@click.option("--trust-pickle", is_flag=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def inspect_command(model, model_format, preset, layer_prefix, layer_name, trust_pickle, fmt):
    """Describe MODEL: layers, directions, D, H, gate order, activations, peepholes, parameter statistics."""
    from types import SimpleNamespace

    from ..cli import _run

    options = SimpleNamespace(
        model=model, model_format=model_format, preset=preset, layer_prefix=layer_prefix,
        layer_name=layer_name, trust_pickle=trust_pickle, fmt=fmt,
    )
    _run(execute, options)


def execute(options) -> int:
    import json

    from ..diagnose import open_model
    from ..inspect import describe, render_text

    description = describe(open_model(options))
    if options.fmt == "json":
        click.echo(json.dumps(description, indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(description))
    return 0


commands = [inspect_command]
