"""``lstm-doctor featurize MODEL --inputs TEXTS --out X.npy``: the LSTM inputs of a text file.

Runs the same front end as ``diagnose MODEL --inputs TEXTS`` (the built-in
Tweet2Vec one, or ``--featurizer``) and writes what it produced, so a user can
inspect or reuse it: ``diagnose MODEL --inputs X.npy`` then reads the same
numbers. The ``.npy`` is written chunk by chunk into a temporary file that
replaces ``--out`` only when complete (an interrupted run leaves nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import click
import numpy as np

from lstm_doctor.errors import UserError
from lstm_doctor.frontend import frontend_stats, is_text_inputs, stats_lines
from lstm_doctor.jobs.diagnose import open_text_source
from lstm_doctor.jobs.selection import ModelSelection, open_model
from lstm_doctor.load.inputs import check_against_model
from lstm_doctor.output import atomic_path, check_output_path


@dataclass(kw_only=True)
class FeaturizeOptions(ModelSelection):
    inputs: str
    out: str
    text_field: str = "text"
    text_clean: str | None = None
    featurizer: str | None = None
    layout: str | None = None
    engine: str = "auto"
    chunk_size: int = 64


def execute(options: FeaturizeOptions) -> int:
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

