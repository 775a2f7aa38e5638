"""``trace``: write the captured per-step arrays of every sequence to an ``.npz``.

Arrays are shaped (B, T, H) (``preact`` (B, T, 4H), gate blocks i, f, g, o),
in input time order: a backward direction is flipped back, as PyTorch and ONNX
return it. Keys are ``h``, ``c``, ``i``, ``f``, ``g``, ``o``, ``preact`` for a
single-layer, single-direction model, else prefixed ``l{k}.`` and
``l{k}.rev.`` (layer k, backward direction).

Step t is always step t of the user's inputs. With ``--mask`` or ``--padding pre``
the LSTM runs only the valid steps (Keras carries h and c over the others); the
file then also holds ``valid`` (B, T) bool, True where the cell ran, and at the
other steps ``h`` and ``c`` are the carried state (zeros before the first valid
step; for a backward direction the state of the next valid step) while ``i``,
``f``, ``g``, ``o`` and ``preact`` are NaN.

A layer with a projection (PyTorch ``proj_size`` P, LSTMP) also gets ``m``
(B, T, H), the cell output o ⊙ tanh(c) before the projection, and its ``h`` is
(B, T, P). ``--units`` picks cell units (0..H−1) of c, m, the gates and the
pre-activations; such a layer's ``h`` is written whole, since its P units are
mixtures of every cell unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_doctor.capture.budget import check_trace
from lstm_doctor.capture.engines import run_chunk, to_time_order
from lstm_doctor.errors import UserError
from lstm_doctor.jobs.selection import ModelSelection, open_model
from lstm_doctor.load.inputs import check_against_model, expand, load_inputs
from lstm_doctor.model import location_name
from lstm_doctor.output import check_output_path, output_file

TRACE_FIELDS = ("h", "c", "i", "f", "g", "o", "preact", "m")  # m: only layers with a projection


@dataclass(kw_only=True)
class TraceOptions(ModelSelection):
    inputs: str
    out: str
    layout: str | None = None
    lengths: str | None = None
    padding: str | None = None  # --padding pre|post
    mask: bool = False  # --mask: Keras masking
    steps: str | None = None  # "A:B"
    units: str | None = None  # "0,3,5-9"
    engine: str = "auto"
    chunk_size: int = 64
    max_memory: str | None = None  # e.g. "2GB"; None: a fraction of physical memory (lstm_doctor.capture.budget)


def parse_steps(text: str | None, T: int) -> slice:
    if not text:
        return slice(0, T)
    a, sep, b = text.partition(":")
    try:
        start = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else T
    except ValueError:
        raise UserError(f"--steps {text!r}: expected A:B with integers") from None
    if not sep or not (0 <= start < stop <= T):
        raise UserError(f"--steps {text!r}: need 0 <= A < B <= T={T}")
    return slice(start, stop)


def parse_units(text: str | None, H: int) -> np.ndarray | None:
    if not text:
        return None
    shown = text if len(text) <= 40 else text[:37] + "..."
    chosen = np.zeros(H, bool)  # bounded by H: a range such as 0-999999999 is checked, never expanded
    try:
        for part in text.split(","):
            a, sep, b = part.partition("-")
            lo, hi = (int(a), int(b)) if sep else (int(a), int(a))
            if lo < 0 or hi >= H or lo > hi:
                raise UserError(f"--units {shown!r}: units must be in 0..{H - 1}")
            chosen[lo : hi + 1] = True
    except ValueError:
        raise UserError(f"--units {shown!r}: expected a list such as 0,3,5-9") from None
    units = np.flatnonzero(chosen)
    if units.size == 0:
        raise UserError(f"--units {shown!r}: units must be in 0..{H - 1}")
    return units


def collect_trace(model, source, engine="numpy", chunk_size=64, steps=None, units=None) -> dict[str, np.ndarray]:
    """Run every sequence and gather the per-step arrays as (B, T, ·), time order."""
    steps = steps or slice(0, source.T)
    parts: dict[str, list[np.ndarray]] = {}
    for start, x, lengths in source.chunks(chunk_size, model.dtype):
        records = run_chunk(model, x, lengths, engine)
        # Masked or pre-padded inputs run with their valid steps moved to the front: put
        # every value back at its step of the user's time axis.
        valid = source.valid_steps(start, start + x.shape[1])
        if valid is not None:
            parts.setdefault("valid", []).append(valid[steps].T)
        for (k, d), rec in records.items():
            layer = model.layers[k]
            prefix = location_name(k, d, len(model.layers), layer.bidirectional or layer.go_backwards)
            for name in TRACE_FIELDS:
                if name == "m" and rec.m is None:
                    continue
                arr = to_time_order(getattr(rec, name), d, lengths)
                if valid is not None:
                    arr = expand(arr, valid, "state" if name in ("h", "c") else "none", backward=d == "rev")
                arr = arr[steps].transpose(1, 0, 2)
                if units is not None and not (name == "h" and layer.projected):
                    if name == "preact":
                        H = layer.H
                        arr = arr[..., np.concatenate([units + j * H for j in range(4)])]
                    else:
                        arr = arr[..., units]
                parts.setdefault(prefix + name, []).append(arr)
    return {key: np.concatenate(v, axis=0) for key, v in parts.items()}


def execute(options: TraceOptions) -> int:
    out = options.out if options.out.endswith(".npz") else options.out + ".npz"
    # The files named here; the read-set adds every file the loaders open.
    check_output_path(out, [options.model, options.inputs, options.lengths])
    model = open_model(options)
    source = load_inputs(
        options.inputs, options.layout, options.lengths, model=model,
        padding=options.padding, mask=options.mask,
        max_memory=options.max_memory,
    )
    check_against_model(source, model.D)

    check_trace(model, source, options.chunk_size, options.max_memory)
    arrays = collect_trace(
        model,
        source,
        options.engine,
        options.chunk_size,
        parse_steps(options.steps, source.T),
        parse_units(options.units, min(layer.H for layer in model.layers)),
    )
    with output_file(out) as fh:  # atomic over a regular file; in place to a device or FIFO
        np.savez(fh, **arrays)
    return 0
