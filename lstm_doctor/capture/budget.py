"""Memory budget: refuse, before allocating, a run that would need more memory than allowed.

A file can declare sizes (sequences, steps, units) that look harmless on disk
(a memory-mapped ``.npy`` of zeros, a small model with a huge H) but would need
tens of gigabytes once the scan keeps its per-step arrays. ``estimate_*`` gives
an upper-bound estimate in bytes from the model's sizes, the chunk size, T and
the sample size; ``check`` refuses with a one-line ``UserError`` when it is over
``--max-memory`` (default: ``DEFAULT_FRACTION`` of the physical memory).

The estimates are deliberately generous (every array the capture may hold at
once, counted at its dtype, plus float64 statistics) so that a run under the
budget does not swap; they are not exact accounting.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from contextvars import ContextVar

from lstm_doctor.errors import ModelError, UserError

DEFAULT_FRACTION = 0.5  # of physical memory, when --max-memory is not given
FALLBACK_BYTES = 4 << 30  # when the physical memory cannot be read

# Per sequence and step, in units of H values, for one direction:
CHUNK_VALUES_PER_H = 26  # i f g o c h (6H) + preact, input/recurrent/peephole terms (4 × 4H) + temporaries (4H)
SAMPLE_VALUES_PER_H = 18  # SAMPLE_FIELDS kept: input_term, recurrent_term, preact (3 × 4H) + i f g o c h (6H)
TRACE_VALUES_PER_H = 10  # h c i f g o (6H) + preact (4H)
STATS_FLOAT64_PER_TH = 24  # streaming reducers: float64 arrays of shape (T, H)

MAX_LIMIT = 1 << 60  # a --max-memory beyond this is a typo, not a machine

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def default_limit() -> int:
    total = physical_memory()
    return int(total * DEFAULT_FRACTION) if total else FALLBACK_BYTES


def parse_size(text: str | int | None) -> int:
    """``"2GB"``, ``"512M"``, ``"1.5 GiB"``, ``"100000"`` (bytes) → bytes; None → the default limit."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return default_limit()
    if isinstance(text, int):
        return text
    shown = text if len(text) <= 40 else text[:37] + "..."
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"--max-memory {shown!r}: expected a size such as 2GB, 512MB or 1.5G")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value > MAX_LIMIT:
        raise UserError(f"--max-memory {shown!r}: larger than any machine ({human(MAX_LIMIT)} at most)")
    return int(value)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _directions(model):
    for layer in model.layers:
        for _name, params in layer.directions():
            yield layer, params


def estimate_capture(model, T: int, n_sequences: int, D: int, chunk_size: int, sample_size: int) -> int:
    """Bytes ``pipeline.capture`` may hold at once (diagnose, check, what-if)."""
    item = model.dtype.itemsize
    chunk = min(chunk_size, n_sequences)
    sample = min(sample_size, n_sequences)
    total = T * chunk * D * (item + 8)  # the chunk of inputs, and a float64 copy for input statistics
    total += T * sample * D * item  # the input sample
    for layer, _params in _directions(model):
        H = layer.H
        total += T * chunk * H * CHUNK_VALUES_PER_H * item
        total += T * sample * H * SAMPLE_VALUES_PER_H * item
        total += T * H * STATS_FLOAT64_PER_TH * 8
        total += (layer.D + H + 1) * 4 * H * item  # weights
    total += 256 * model.output_size * 8  # encoding sample
    return int(total)


def estimate_trace(model, T: int, n_sequences: int, D: int, chunk_size: int) -> int:
    """Bytes ``trace`` may hold: every sequence's per-step arrays, twice (parts, then the concatenation)."""
    item = model.dtype.itemsize
    total = estimate_capture(model, T, min(chunk_size, n_sequences), D, chunk_size, 0)
    for layer, _params in _directions(model):
        total += 2 * T * n_sequences * layer.H * TRACE_VALUES_PER_H * item
    return int(total)


def check(estimate: int, max_memory: str | int | None, what: str, path: str | None = None) -> None:
    """Refuse (``UserError``) when ``estimate`` bytes exceed the ``--max-memory`` limit."""
    limit = parse_size(max_memory)
    if estimate > limit:
        source = "--max-memory" if max_memory else f"default --max-memory ({DEFAULT_FRACTION:.0%} of physical memory)"
        raise UserError(
            f"{what} would need about {human(estimate)}, over the {human(limit)} allowed by {source}; "
            "use fewer sequences or steps, a smaller --chunk-size or --sample-size, or raise --max-memory",
            path,
        )


def check_capture(model, source, chunk_size: int, sample_size: int, max_memory=None) -> int:
    """``source``: an ``InputSource``, or a (T, n_sequences, D) tuple for inputs not yet made (probes)."""
    T, n, D = source if isinstance(source, tuple) else (source.T, source.n_sequences, source.D)
    estimate = estimate_capture(model, T, n, D, chunk_size, sample_size)
    if isinstance(source, tuple):
        estimate += T * n * D * 8  # the probe array itself (float64)
    check(estimate, max_memory, f"the capture of {n}×{T} steps", getattr(source, "path", None))
    return estimate


def check_trace(model, source, chunk_size: int, max_memory=None) -> int:
    estimate = estimate_trace(model, source.T, source.n_sequences, source.D, chunk_size)
    check(estimate, max_memory, f"the trace of {source.n_sequences}×{source.T} steps", source.path)
    return estimate


# -- chunk sizing: how many sequences one chunk may hold -----------------------------

STREAMING_VALUES_PER_H = 3  # a streaming capture keeps h, c and one temporary per unit and step
FULL_RECORD_VALUES_PER_H = 23  # a full record: i f g o c h (6H) + preact, input, recurrent, peephole terms (16H) + h
STREAMING_CHUNK_BYTES = 192 * 2**20  # diagnose, check, trace: a chunk of streamed sequences
FULL_RECORD_CHUNK_BYTES = 256 * 2**20  # what-if: a chunk of full per-step records


def sequence_bytes(model, T: int, values_per_h: int, with_inputs: bool = False) -> int:
    """Bytes one sequence of T steps takes when every direction of every layer holds
    ``values_per_h`` values per unit and step (plus its D input features)."""
    # a projection (LSTMP) also keeps m = o ⊙ act(c) (H per step); its h (P ≤ H in practice) is counted as H
    per_step = sum((values_per_h + layer.projected) * layer.H for layer, _params in _directions(model))
    if with_inputs:
        per_step += model.D
    return int(T * per_step * model.dtype.itemsize)


def sequences_within(budget_bytes: int, per_sequence: int, requested: int) -> int:
    """``requested`` sequences, or fewer (at least 1) when they would pass ``budget_bytes``."""
    return int(max(1, min(requested, budget_bytes // max(per_sequence, 1))))


# ---------------------------------------------------------------------------
# The budget of the readers: declared sizes are checked before allocating.
#
# ``load_model`` (and the input readers) run inside ``reading(max_memory)``.
# Every reader asks an ``Allowance`` for the bytes a file declares (an array's
# shape × itemsize, a zip member's uncompressed size, a pickle's bytes) before
# it allocates them; the allowance sums what one file has taken and refuses,
# with a one-line ``ModelError``, once the sum passes the limit.

_READ_LIMIT: ContextVar[int | None] = ContextVar("lstm_doctor_read_limit", default=None)
_READ_SOURCE: ContextVar[str] = ContextVar("lstm_doctor_read_source", default="")


@contextmanager
def reading(max_memory: str | int | None):
    """Readers called inside this block refuse files declaring more than ``max_memory``."""
    limit = parse_size(max_memory)
    token = _READ_LIMIT.set(limit)
    source = _READ_SOURCE.set("--max-memory" if max_memory else "the default --max-memory")
    try:
        yield limit
    finally:
        _READ_LIMIT.reset(token)
        _READ_SOURCE.reset(source)


def read_limit() -> int:
    """Bytes one file may make a reader allocate (``--max-memory``, else the default)."""
    limit = _READ_LIMIT.get()
    return default_limit() if limit is None else limit


class BudgetError(ModelError):
    """A file declares more than ``--max-memory`` allows: refused before reading.

    Format sniffers let it through (the file is too big whatever its format).
    """


class Allowance:
    """The bytes one file's reader has allocated so far, against ``read_limit()``."""

    def __init__(self, limit: int | None = None):
        self.limit = read_limit() if limit is None else limit
        self.used = 0

    def take(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` for ``what``; refuse before allocating when over the limit."""
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ModelError(f"{what} declares a negative size")
        if self.used + nbytes > self.limit:
            source = _READ_SOURCE.get() or "the default --max-memory"
            raise BudgetError(
                f"{what} declares {human(nbytes)}, over the {human(self.limit)} allowed by {source} "
                "(refused before reading)"
            )
        self.used += nbytes


# The running total of the file being read: one ContextVar for every reader (torch,
# Keras, pickles), so loads in threads never share one and a nested load restores the
# outer one's when it ends.
_FILE_ALLOWANCE: ContextVar[Allowance | None] = ContextVar("lstm_doctor_file_allowance", default=None)


@contextmanager
def file_allowance(join: bool = False):
    """The scope of one file's read: every ``take`` inside counts against one Allowance.

    ``join=True`` reads a part of the file being read (a ``.pt``'s ``data.pkl``, whose
    pickled arrays count with its storages): it adds to the enclosing file's total, or
    starts one when there is none.
    """
    current = _FILE_ALLOWANCE.get()
    token = _FILE_ALLOWANCE.set(current if join and current is not None else Allowance())
    try:
        yield _FILE_ALLOWANCE.get()
    finally:
        _FILE_ALLOWANCE.reset(token)


def current_allowance() -> Allowance:
    """The running total of the file being read, or a new one outside ``file_allowance``."""
    return _FILE_ALLOWANCE.get() or Allowance()


def take(nbytes: int, what: str) -> None:
    """Count ``nbytes`` against the file being read (outside ``file_allowance``: this size alone)."""
    current_allowance().take(nbytes, what)


def check_declared(nbytes: int, what: str) -> None:
    """One declared size against the read limit (``Allowance`` for a running total)."""
    Allowance().take(nbytes, what)


def declared_bytes(shape, itemsize: int) -> int:
    """shape × itemsize as a Python int (no overflow), refusing negative dimensions."""
    n = int(itemsize)
    for s in shape:
        s = int(s)
        if s < 0:
            raise ModelError(f"a declared shape {tuple(shape)} has a negative dimension")
        n *= s
    return n
