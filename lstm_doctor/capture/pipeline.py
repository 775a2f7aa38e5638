"""Drive the pipeline over all inputs: chunk → capture → reducers, plus a sample.

``capture`` streams the inputs through ``scan.run_chunk`` in chunks of
sequences and feeds every record to the reducers of ``lstm_doctor.stats``.
Full per-step arrays are kept only for the first ``sample_size`` sequences
(plots, ``trace``, differential diagnosis), so memory is bounded by the chunk
size and the sample, not by the number of sequences.
"""

from __future__ import annotations

import mmap
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lstm_doctor.capture import budget
from lstm_doctor.capture.engines import (
    STREAMING_ENGINES,
    final_hidden,
    resolve_engine,
    run_chunk,
)
from lstm_doctor.capture.fused.engine import kernels as fused_kernels
from lstm_doctor.capture.numpy_loop import CAPTURE_FULL, CAPTURE_STATS, StepRecord
from lstm_doctor.choices import DEFAULT_ENGINE
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import LSTMModel
from lstm_doctor.stats import (
    DirectionStats,
    EncodingStats,
    InputStats,
    StatsConfig,
    axis_correlations,
    input_variance_share,
)

# Upper bound on a chunk's per-step arrays: the inputs (T, B, D) and each
# layer's states (T, B, H) and outputs. Keeps peak memory flat whatever N.

SAMPLE_FIELDS = ("input_term", "recurrent_term", "preact", "i", "f", "g", "o", "c", "h")
# What the analyzers and reports read from the sample. The (T, b, 4H) terms are
# two thirds of its memory and of its copying; ask for them with
# ``CaptureOptions(sample_fields=SAMPLE_FIELDS)``.
DEFAULT_SAMPLE_FIELDS = ("i", "f", "g", "o", "c", "h")


@dataclass
class CaptureOptions:
    engine: str = DEFAULT_ENGINE
    # Sequences per chunk; fewer when a chunk's (T, B, ·) arrays would pass
    # budget.STREAMING_CHUNK_BYTES. Larger chunks mean larger GEMMs and fewer NumPy
    # calls per sequence (benchmarks/RESULTS.md).
    chunk_size: int = 256
    sample_size: int = 64  # sequences whose full per-step arrays are kept
    encoding_sample: int = 256  # final encodings kept for the cosine matrix
    sample_fields: tuple[str, ...] = DEFAULT_SAMPLE_FIELDS  # per-step arrays kept for the sample
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
    engine: str = ""  # the engine that ran ("numpy", "fused", "pytensor"): "auto" resolved
    observed: object | None = None  # observed.SearchResult (--observed), attached by run_diagnosis
    gradients: object | None = None  # gradients.GradientResult (--gradients), attached by run_diagnosis

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
    engine = resolve_engine(options.engine, model, T, source.n_sequences)
    streaming = engine in STREAMING_ENGINES
    kernels = None
    if engine == "fused":  # the input statistics in one compiled pass too

        kernels = fused_kernels()
    for start, x, lengths in source.chunks(effective_chunk_size(model, T, options.chunk_size), model.dtype):
        B = x.shape[1]
        mask = None if lengths is None else (np.arange(T)[:, None] < lengths[None, :])
        take = min(options.sample_size - kept, B) if kept < options.sample_size else 0
        if streaming:
            # The reducers see every step while it is in cache; only the
            # sample's sequences are recorded in full.
            reducers = {
                (k, d): dirs[(k, d)].reducer(B, mask, layer, params.h0, model.dtype, params)
                for k, d, layer, params in model.units()
            }
            records = run_chunk(
                model, x, lengths, engine, CAPTURE_STATS,
                observers=reducers, keep=take, keep_fields=options.sample_fields,
                final_h_only=True,  # the last layer's h: only its final step, the encoding
            )
            for reducer in reducers.values():
                reducer.finish()
        else:
            records = run_chunk(model, x, lengths, engine, CAPTURE_FULL)
            for k, d, layer, params in model.units():
                dirs[(k, d)].update(records[(k, d)], mask, layer, params.h0)
        inputs.update(x, lengths, kernels)
        enc = final_hidden(model, records)
        encoding.update(enc)
        if take:
            _keep(sample, records, take, options.sample_fields)
            sample_x.append(np.array(x[:, :take]))
            kept += take
        if kept_enc < options.encoding_sample:
            take = min(options.encoding_sample - kept_enc, enc.shape[0])
            sample_enc.append(np.array(enc[:take], dtype=np.float64))  # a copy: enc views the chunk
            kept_enc += take
        _release_pages(source.array)
        if progress:
            progress(min(start + x.shape[1], source.n_sequences), source.n_sequences)
    sample_inputs = _join(sample_x)
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
        sample={key: {n: _join(v) for n, v in arrays.items()} for key, arrays in sample.items()},
        sample_inputs=sample_inputs,
        sample_lengths=None if source.lengths is None else source.lengths[:kept],
        sample_encodings=np.concatenate(sample_enc, axis=0),
        seconds=time.perf_counter() - started,
        engine=engine,
    )


def _keep(sample, records: dict[tuple[int, str], StepRecord], take: int, fields=SAMPLE_FIELDS):
    """Append the first ``take`` sequences of each record to ``sample``. With a
    projection (LSTMP) ``m`` (T, b, H), the cell output before it, is kept with
    ``h`` (T, b, P): per-unit analyses read ``m``, the layer's output is ``h``."""
    fields = [name for name in SAMPLE_FIELDS if name in fields]
    if "h" in fields:
        fields.append("m")
    for key, rec in records.items():
        if rec.sample is not None:  # capture "stats": the first sequences, recorded in full
            for name in fields:
                arr = getattr(rec.sample, name)
                if arr is not None:
                    sample[key].setdefault(name, []).append(arr)
            continue
        for name in fields:
            arr = getattr(rec, name)
            if arr is not None:
                sample[key].setdefault(name, []).append(np.array(arr[:, :take]))


def effective_chunk_size(model: LSTMModel, T: int, requested: int) -> int:
    """``requested``, or fewer sequences when a chunk would pass budget.STREAMING_CHUNK_BYTES."""
    per_sequence = budget.sequence_bytes(model, T, budget.STREAMING_VALUES_PER_H, with_inputs=True)
    return budget.sequences_within(budget.STREAMING_CHUNK_BYTES, per_sequence, requested)


def _release_pages(array: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped input that this process has read.

    Pages of a file mapping stay in the resident set once touched, so reading
    a 3 GB ``.npy`` would grow the RSS to 3 GB. MADV_DONTNEED drops them from
    this process (the kernel's page cache keeps them; a later read maps them
    again), so memory stays flat as the number of sequences grows.
    """
    base = array
    while base is not None:
        mm = getattr(base, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (AttributeError, OSError, ValueError):  # no madvise on this platform
                pass
            return
        base = getattr(base, "base", None)


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along the sequence axis, without a copy for a single part."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def headline_metrics(result: CaptureResult) -> dict[str, float]:
    """The few numbers that say whether an encoder works (demo, compare, what-if).

    saturated_fraction: share of sigmoid-gate values (i, f, o, all layers) < 0.1 or > 0.9
    max_abs_cell: largest |c| seen
    hidden_at_bound_fraction: share of h values within 1% of their range's bounds
    mean_pairwise_cosine, cross_input_std: of the final encodings
    input_variance_share: layer 0's input share of pre-activation variance, mean over gates
    """
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
