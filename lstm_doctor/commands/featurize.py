"""``lstm-doctor featurize MODEL --inputs TEXTS --out X.npy``: the LSTM inputs of a text file.

Runs the same front end as ``diagnose MODEL --inputs TEXTS`` (the built-in
Tweet2Vec one, or ``--featurizer``) and writes what it produced, so a user can
inspect or reuse it: ``diagnose MODEL --inputs X.npy`` then reads the same
numbers. The ``.npy`` is written chunk by chunk into a temporary file that
replaces ``--out`` only when complete (an interrupted run leaves nothing).
"""

from __future__ import annotations

import click

LAYOUTS = ("btd", "tbd", "bct")


@click.command("featurize")
@click.argument("model", type=click.Path())
@click.option("--inputs", "-i", required=True, type=click.Path(dir_okay=False),
              help="Texts: .txt (one per line), .jsonl (one JSON object or string per line) or .json (a list).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npy to write (atomically).")
@click.option("--text-field", default="text", show_default=True,
              help="The field holding the text in .json/.jsonl objects (a dotted path works too).")
@click.option("--text-clean", type=click.Choice(["tweet2vec", "none"]),
              help="Cleaning before the front end. Default: tweet2vec for the built-in front end, none for a plug-in.")
@click.option("--featurizer", help="A plug-in front end: module:function, file.py:function, or an "
              "lstm_doctor.featurizers entry point name.")
@click.option("--layout", type=click.Choice(LAYOUTS),
              help="The LSTM's input layout (default: the model's declared layout).")
@click.option("--engine", type=click.Choice(["numpy", "pytensor"]), default="numpy", show_default=True,
              help="Engine of the built-in conv stack (numpy is the reference).")
@click.option("--chunk-size", type=click.IntRange(1), default=64, show_default=True, help="Texts per chunk.")
@click.option("--model-format", type=click.Choice(["native", "tweet2vec", "lasagne", "torch", "keras", "onnx"]))
@click.option("--layer-prefix")
@click.option("--layer-name")
@click.option("--trust-pickle", is_flag=True, help="Allow arbitrary pickles (runs code from the file!).")
def featurize_command(model, inputs, out, text_field, text_clean, featurizer, layout, engine, chunk_size,
                      model_format, layer_prefix, layer_name, trust_pickle):
    """Write the LSTM inputs (.npy) that the front end makes of the texts in --inputs."""
    from types import SimpleNamespace

    from ..cli import _run

    options = SimpleNamespace(
        model=model, inputs=inputs, out=out, text_field=text_field, text_clean=text_clean,
        featurizer=featurizer, layout=layout, engine=engine, chunk_size=chunk_size,
        model_format=model_format, preset=None, layer_prefix=layer_prefix, layer_name=layer_name,
        trust_pickle=trust_pickle,
    )
    _run(execute, options)


def execute(options) -> int:
    import numpy as np

    from ..diagnose import open_model, open_text_source
    from ..errors import UserError
    from ..frontend import frontend_stats, is_text_inputs, stats_lines
    from ..load.inputs import check_against_model
    from ..output import atomic_path, check_output_path

    if not is_text_inputs(options.inputs):
        raise UserError("featurize reads texts: .txt, .jsonl or .json", options.inputs)
    if not str(options.out).endswith(".npy"):
        raise UserError("the output is a NumPy array file: give it the suffix .npy", options.out)
    check_output_path(options.out, [options.model, options.inputs])
    model = open_model(options)
    source = open_text_source(options, model)
    check_against_model(source, model.D)
    features = source.array
    with atomic_path(options.out) as tmp:
        target = np.lib.format.open_memmap(tmp, mode="w+", dtype=features.dtype, shape=features.shape)
        index = [slice(None)] * 3
        for start, block in features.iter_chunks():
            index[features.batch_axis] = slice(start, start + block.shape[features.batch_axis])
            target[tuple(index)] = block
        target.flush()
        del target
    for note in source.notes:
        click.echo(f"note: {note}", err=True)
    for line in stats_lines(frontend_stats(source)):
        click.echo(line)
    click.echo(
        f"wrote {options.out}: {features.shape} {features.dtype}; read it with "
        f"`lstm-doctor diagnose {options.model} --inputs {options.out}`"
        + (f" --layout {source.layout}" if options.layout else "")
    )
    return 0


commands = [featurize_command]
