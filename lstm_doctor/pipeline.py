"""Drive the pipeline over all inputs: chunk → capture → reducers, plus a sample.

``capture`` streams the inputs through ``scan.run_chunk`` in chunks of
sequences and feeds every record to the reducers of ``lstm_doctor.stats``.
Full per-step arrays are kept only for the first ``sample_size`` sequences
(plots, ``trace``, differential diagnosis), so memory is bounded by the chunk
size and the sample, not by the number of sequences.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .load.inputs import InputSource
from .model import LSTMModel
from .reference import CAPTURE_FULL, StepRecord
from .scan import DEFAULT_ENGINE, final_hidden, run_chunk
from .stats import DirectionStats, EncodingStats, InputStats, StatsConfig, axis_correlations

SAMPLE_FIELDS = ("input_term", "recurrent_term", "preact", "i", "f", "g", "o", "c", "h")


@dataclass
class CaptureOptions:
    engine: str = DEFAULT_ENGINE
    chunk_size: int = 64  # sequences per chunk
    sample_size: int = 64  # sequences whose full per-step arrays are kept
    encoding_sample: int = 256  # final encodings kept for the cosine matrix
    stats: StatsConfig = field(default_factory=StatsConfig)


@dataclass
class CaptureResult:
    """What the analyzers and reporters read. Keys are (layer, direction)."""

    model: LSTMModel
    source: InputSource
    options: CaptureOptions
    directions: dict[tuple[int, str], DirectionStats]
    encoding: EncodingStats
    inputs: InputStats
    step_correlation: float  # adjacent steps (raw input sample)
    feature_correlation: float  # adjacent features (raw input sample)
    sample: dict[tuple[int, str], dict[str, np.ndarray]]  # name -> (T, b, ·)
    sample_inputs: np.ndarray  # (T, b, D)
    sample_lengths: np.ndarray | None
    sample_encodings: np.ndarray  # (b, E)
    seconds: float

    @property
    def n_sequences(self) -> int:
        return self.source.n_sequences

    @property
    def T(self) -> int:
        return self.source.T


def capture(
    model: LSTMModel,
    source: InputSource,
    options: CaptureOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    options = options or CaptureOptions()
    started = time.perf_counter()
    T = source.T
    dirs = {
        (k, d): DirectionStats.empty(k, d, T, layer.H, options.stats)
        for k, d, layer, _ in model.units()
    }
    encoding = EncodingStats.empty(model.output_size)
    inputs = InputStats.empty(T, source.D)
    sample: dict[tuple[int, str], dict[str, list]] = {key: {} for key in dirs}
    sample_x: list[np.ndarray] = []
    sample_enc: list[np.ndarray] = []
    kept = kept_enc = 0
    for start, x, lengths in source.chunks(options.chunk_size, model.dtype):
        records = run_chunk(model, x, lengths, options.engine, CAPTURE_FULL)
        mask = None if lengths is None else (np.arange(T)[:, None] < lengths[None, :])
        inputs.update(x, lengths)
        for k, d, layer, params in model.units():
            dirs[(k, d)].update(records[(k, d)], mask, layer, params.h0)
        enc = final_hidden(model, records)
        encoding.update(enc)
        if kept < options.sample_size:
            take = min(options.sample_size - kept, x.shape[1])
            _keep(sample, records, take)
            sample_x.append(x[:, :take])
            kept += take
        if kept_enc < options.encoding_sample:
            take = min(options.encoding_sample - kept_enc, enc.shape[0])
            sample_enc.append(np.asarray(enc[:take], dtype=np.float64))
            kept_enc += take
        if progress:
            progress(min(start + x.shape[1], source.n_sequences), source.n_sequences)
    sample_inputs = np.concatenate(sample_x, axis=1)
    step_corr, feat_corr = axis_correlations(sample_inputs)
    return CaptureResult(
        model=model,
        source=source,
        options=options,
        directions=dirs,
        encoding=encoding,
        inputs=inputs,
        step_correlation=step_corr,
        feature_correlation=feat_corr,
        sample={key: {n: np.concatenate(v, axis=1) for n, v in arrays.items()} for key, arrays in sample.items()},
        sample_inputs=sample_inputs,
        sample_lengths=None if source.lengths is None else source.lengths[:kept],
        sample_encodings=np.concatenate(sample_enc, axis=0),
        seconds=time.perf_counter() - started,
    )


def _keep(sample, records: dict[tuple[int, str], StepRecord], take: int):
    for key, rec in records.items():
        for name in SAMPLE_FIELDS:
            arr = getattr(rec, name)
            if arr is not None:
                sample[key].setdefault(name, []).append(np.array(arr[:, :take]))


def headline_metrics(result: CaptureResult) -> dict[str, float]:
    """The few numbers that say whether an encoder works (demo, compare, what-if).

    saturated_fraction: share of sigmoid-gate values (i, f, o, all layers) < 0.1 or > 0.9
    max_abs_cell: largest |c| seen
    hidden_at_bound_fraction: share of h values within 1% of their range's bounds
    mean_pairwise_cosine, cross_input_std: of the final encodings
    input_variance_share: layer 0's input share of pre-activation variance, mean over gates
    """
    from .analyzers.inputs import input_variance_share  # analyzers import pipeline lazily

    saturated = values = at_bound = 0
    for st in result.directions.values():
        n = st.n_values * st.H
        values += n
        at_bound += int(st.h_at_bound_t.sum())
        saturated += sum(int(g.left_tu.sum() + g.right_tu.sum()) for g in st.gates.values())
    first = result.directions[next(iter(result.directions))]
    return {
        "saturated_fraction": saturated / max(3 * values, 1),
        "max_abs_cell": float(max(st.max_abs_c_t.max() for st in result.directions.values())),
        "hidden_at_bound_fraction": at_bound / max(values, 1),
        "mean_pairwise_cosine": result.encoding.mean_pairwise_cosine(),
        "cross_input_std": result.encoding.cross_input_std(),
        "input_variance_share": float(input_variance_share(first.terms).mean()),
    }
