"""The capture stage: run a whole model over one chunk of sequences.

The engines compute the same instrumented step and return the same
``StepRecord`` (see ``lstm_doctor.capture.numpy_loop``):

- ``pytensor``: the symbolic ``scan`` (``lstm_doctor.capture.symbolic.scan``), the engine of
  record. It runs on PyTensor, or on legacy Theano when only that is installed,
  and it is the one that differentiates (gradient flow).
- ``numpy``: the NumPy reference loop. NumPy's vectorised ufuncs make it
  faster than the scan on CPU (docs/engines.md); it passes the same parity tests.
- ``fused`` (``lstm_doctor.capture.fused.engine``): the NumPy loop's GEMMs with the rest of
  the step and every streaming statistic in one compiled (C) pass per
  step; float32 capture "stats" only, anything else runs the NumPy loop.
- ``auto`` (the default): ``fused`` for float32 models when its compiled
  kernel is built, ``numpy`` otherwise (``resolve_engine``).

The driver stacks layers (layer k+1 reads layer k's h, forward and backward
concatenated) and runs the backward direction on per-sequence reversed inputs:
with lengths, only the valid part of each sequence is reversed, as PyTorch's
packed sequences do. Records of a backward direction are kept in processing
order (step 0 is the last valid element); ``to_time_order`` flips them back.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from lstm_doctor.capture.fused import engine as fused
from lstm_doctor.capture.numpy_loop import CAPTURE_FULL, StepRecord
from lstm_doctor.capture.numpy_loop import run_direction as numpy_run_direction
from lstm_doctor.choices import DEFAULT_ENGINE, ENGINES
from lstm_doctor.errors import ConfigError
from lstm_doctor.model import LSTMModel

# engines that hand every step to the streaming reducers (capture "stats")
STREAMING_ENGINES = ("numpy", "fused")


def resolve_engine(name: str, model: LSTMModel, T: int, n_sequences: int) -> str:
    """The engine that ``name`` stands for on this workload: "auto" and
    "fused" become "fused" for a float32 model when the compiled kernel is
    built (its start-up is an import of under a millisecond, so it pays at
    every size), else "numpy", so that the report names the engine that ran.
    When the kernel is missing, a note says so once on stderr. Other names
    are returned as they are. (T and n_sequences: kept for callers that weigh
    a workload; no engine's choice depends on them now.)"""
    if name not in ("auto", "fused"):
        return name

    if fused.unsupported_reason(model):  # a projection (LSTMP): the kernel has none
        if name == "fused":
            fused.note_unsupported(model)
        return "numpy"
    if not fused.supports(model.dtype):
        return "numpy"
    if fused.available():
        return "fused"
    fused.note_fallback()
    return "numpy"


def get_engine(name: str) -> Callable[..., StepRecord]:
    """The ``run_direction`` function of an engine, imported lazily ("auto" is
    the NumPy loop: resolve it first to get the fused one)."""
    if name in ("numpy", "auto"):
        return numpy_run_direction
    if name == "fused":
        return fused.run_direction
    if name == "pytensor":
        from lstm_doctor.capture.symbolic.scan import (
            run_direction,  # imports pytensor (or theano)
        )

        return run_direction
    raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")


def step_mask(lengths: np.ndarray | None, T: int) -> np.ndarray | None:
    """(T, B) bool, True where step t < length of sequence b; None without lengths."""
    if lengths is None:
        return None
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def reverse_padded(x: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Reverse the time axis (0) of (T, B, ...) within each sequence's valid length.

    Padding steps stay where they are, so a reversed sequence still starts at
    step 0 and the same mask applies. The function is its own inverse.
    """
    if lengths is None:
        return x[::-1]
    T, B = x.shape[:2]
    t = np.arange(T)[:, None]
    lengths = np.asarray(lengths)[None, :]
    src = np.where(t < lengths, lengths - 1 - t, t)
    return x[src, np.arange(B)[None, :]]


def run_chunk(
    model: LSTMModel,
    x: np.ndarray,
    lengths: np.ndarray | None = None,
    engine: str = DEFAULT_ENGINE,
    capture: str = CAPTURE_FULL,
    *,
    observers: dict | None = None,
    keep: int = 0,
    keep_fields: tuple[str, ...] | None = None,
    final_h_only: bool = False,
) -> dict[tuple[int, str], StepRecord]:
    """Run every layer and direction over ``x`` (T, B, D), time-major.

    Returns one ``StepRecord`` per (layer, direction), in processing order.
    ``observers`` ((layer, direction) -> ``reference.StepObserver``),
    ``keep`` and ``keep_fields`` are passed to the NumPy engine (capture
    "stats": the reducers see every step in cache and only the first ``keep``
    sequences are recorded in full); other engines do not take them.

    ``final_h_only`` (streaming only): the last layer's ``h`` is read for its
    final step alone (``final_hidden``), so an engine may return just that step,
    (1, B, H) (the fused engine does, without a (T, B, H) array), and the last
    layer's outputs are not assembled for a next layer.
    """
    run = get_engine(engine)
    extra = {}
    if observers is not None or keep:
        if engine not in STREAMING_ENGINES + ("auto",):
            raise ConfigError(f"engine {engine!r} does not stream steps to observers")
        extra = {"keep": keep, "keep_fields": keep_fields}
    elif final_h_only:
        raise ConfigError("final_h_only needs a streaming capture (observers)")
    T = x.shape[0]
    mask = step_mask(lengths, T)
    records: dict[tuple[int, str], StepRecord] = {}
    layer_input = np.asarray(x, dtype=model.dtype)
    for k, layer in enumerate(model.layers):
        outputs = []
        feeds_next = k + 1 < len(model.layers)
        if extra:
            extra["final_h_only"] = final_h_only and not feeds_next
        for direction, params in layer.directions():
            if observers is not None:
                extra["observer"] = observers.get((k, direction))
            rev = direction == "rev"
            rec = run(params, layer, reverse_padded(layer_input, lengths) if rev else layer_input, mask, capture,
                      **extra)
            records[(k, direction)] = rec
            if final_h_only and not feeds_next:
                continue  # no next layer reads the outputs
            if not rev:
                outputs.append(rec.h)
            elif layer.output_reversed and feeds_next:
                # Keras go_backwards: the next layer reads the outputs in processing order
                if lengths is not None:
                    raise ConfigError(
                        f"layer {k} hands its outputs on reversed (Keras go_backwards) and feeds "
                        "another layer: with sequence lengths Keras reverses the padding too, "
                        "which is not modelled; run without lengths or choose one layer"
                    )
                outputs.append(rec.h)
            else:
                outputs.append(reverse_padded(rec.h, lengths))
        if outputs:
            layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
    return records


def to_time_order(
    array: np.ndarray, direction: str, lengths: np.ndarray | None
) -> np.ndarray:
    """A (T, B, ...) array of a record in input time order (flips the backward one)."""
    return reverse_padded(array, lengths) if direction == "rev" else array


def final_hidden(
    model: LSTMModel, records: dict[tuple[int, str], StepRecord]
) -> np.ndarray:
    """The encoding (B, H_out): the last layer's final h, directions concatenated.

    The final h of each direction is its state after its last processed step
    (masked steps carry the state, so index T-1 is right with lengths too).
    """
    k = len(model.layers) - 1
    parts = [records[(k, d)].h[-1] for d, _ in model.layers[k].directions()]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
