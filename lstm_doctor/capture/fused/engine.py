"""The "fused" capture engine: one compiled pass per step for the element-wise
part of the LSTM step and every streaming statistic.

The NumPy engine (``lstm_doctor.capture.numpy_loop`` + ``stats.DirectionReducer``)
makes about twenty passes over each step's (B, 4H) arrays: one per ufunc.
Here the two GEMMs of a step (x_t·W and h_{t-1}·U) still run in NumPy's
BLAS, and a small C kernel (``_kernels.c``, a CPython extension built at
install) then walks the B rows once. For each row it forms the
pre-activation z = x_t·W + h_{t-1}·U + b (+ peepholes, clip), the gates, c_t
and h_t, and folds the row into the statistics while it is in L1 cache. The
kernel writes the same chunk tables that ``DirectionReducer.block`` writes,
and ``DirectionReducer.finish`` folds them into ``DirectionStats``, so both
engines give the same statistics to float rounding (tested in
``tests/test_fused.py``).

Shapes: T steps, B sequences, D input features, H units. Stacked arrays are
in ``numpy_loop.STEP_ORDER`` (i, f, o, g), as the NumPy engine's.

Precision. σ and tanh are computed within 2 ulp of NumPy's (float32) with
vectorisable code: Cephes' polynomials written with selects only, so that
gcc -O3 vectorises them (AVX-512 or AVX2 where the CPU has it). σ(z) = 1/(1 + e^{−z}),
which keeps the relative precision of small σ. Sums of squares and deviation
moments are float32 within a step (as the NumPy engine's) and float64 across
steps; deviations are taken from the step's first valid row, as in
``DirectionReducer``. The kernel is built without -ffast-math and with
-ffp-contract=off: no fused multiply-adds, so c and h round as NumPy's do,
and NaN and Inf reach the non-finite checks. Only float32 models take this
engine.

Start-up is the import of a ~100 KB extension module (under a millisecond),
so ``--engine auto`` takes this engine for every float32 capture when the
extension is built; when it is not (a machine without a C compiler at
install), ``auto`` runs the NumPy engine and says so once on stderr.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

from lstm_doctor.capture.numpy_loop import (
    CAPTURE_STATS,
    STEP_ORDER,
    StepRecord,
    _to_canonical,
    blas_threads_context,
    step_permutation,
)
from lstm_doctor.capture.numpy_loop import run_direction as numpy_run_direction
from lstm_doctor.model import DirectionParams, Layer
from lstm_doctor.stats import DirectionReducer

# Activation codes understood by the kernel.
ACTIVATION_CODES = {
    "sigmoid": 0,
    "hard_sigmoid": 1,
    "hard_sigmoid6": 2,
    "tanh": 3,
    "softsign": 4,
    "identity": 5,
    "relu": 6,
    "softplus": 7,
}


def activation_codes(layer: Layer) -> np.ndarray:
    """The kernel's codes (3,) int64 of the layer's gate, candidate and cell-output activations."""
    acts = layer.activations
    return np.array([ACTIVATION_CODES[acts.get(role).name] for role in ("gate", "candidate", "cell_output")], np.int64)


_KERNELS = None
_IMPORT_ERROR: str | None = None  # why the extension did not import, once tried
_NOTED = False


def available() -> bool:
    """Whether the compiled kernel imports (it is built by ``pip install``)."""
    try:
        kernels()
    except ImportError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why the kernel did not import (None when it did or was not tried)."""
    return _IMPORT_ERROR


def note_fallback() -> None:
    """Say once per process, on stderr, that the NumPy engine runs instead."""
    global _NOTED
    if not _NOTED:
        _NOTED = True
        print(
            "lstm-doctor: note: the fused engine's compiled kernel is not available "
            f"({_IMPORT_ERROR}); running the numpy engine (same statistics, slower). "
            "Reinstall with a C compiler present (pip install -e .) to build it.",
            file=sys.stderr,
        )


def supports(dtype, model=None) -> bool:
    """Whether this engine computes models of ``dtype`` (float32 only) and, given
    ``model``, its layers: the kernel has no projection (PyTorch ``proj_size``,
    LSTMP), so a model with one runs the NumPy engine."""
    if model is not None and unsupported_reason(model):
        return False
    return np.dtype(dtype) == np.float32


def unsupported_reason(model) -> str | None:
    """Why the kernel cannot compute ``model`` (None when it can, dtype aside)."""
    if getattr(model, "projected", False):
        return "it has no projection (proj_size > 0, LSTMP)"
    return None


_NOTED_UNSUPPORTED = False


def note_unsupported(model) -> None:
    """Say once per process, on stderr, why ``--engine fused`` runs the NumPy engine."""
    global _NOTED_UNSUPPORTED
    if not _NOTED_UNSUPPORTED:
        _NOTED_UNSUPPORTED = True
        print(
            f"lstm-doctor: note: the fused engine cannot run this model ({unsupported_reason(model)}); "
            "running the numpy engine (same statistics).",
            file=sys.stderr,
        )


def kernels():
    """The compiled kernel module ``_kernels``; raises ImportError when it is not built."""
    global _KERNELS, _IMPORT_ERROR
    if _KERNELS is None:
        try:
            _kernels = importlib.import_module("lstm_doctor.capture.fused._kernels")
        except ImportError as exc:
            _IMPORT_ERROR = str(exc) or type(exc).__name__
            raise
        _KERNELS = _kernels
    return _KERNELS


# Bytes of x·W computed ahead, a block of steps at a time (``input_block_steps``).
INPUT_BLOCK_BYTES = 4 * 1024 * 1024


def input_block_steps(B: int, H: int, T: int) -> int:
    """Steps whose x·W (B, 4H) float32 fit in INPUT_BLOCK_BYTES (at least 1, at most T)."""
    return int(max(1, min(T, INPUT_BLOCK_BYTES // max(B * 4 * H * 4, 1))))


def run_direction(
    params: DirectionParams,
    layer: Layer,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    capture: str = CAPTURE_STATS,
    *,
    observer=None,
    keep: int = 0,
    keep_fields: tuple[str, ...] | None = None,
    final_h_only: bool = False,
) -> StepRecord:
    """Like ``reference.run_direction``, with the step fused when it can be.

    The fused path needs capture "stats", a ``stats.DirectionReducer`` as the
    observer, a float32 model and kernels that load; anything else runs the
    NumPy engine, which computes the same values.

    ``final_h_only`` (the last layer of a streaming capture, whose h only the
    encoding reads): on the fused path the record's ``h`` is the final step
    alone, (1, B, H), and h runs in a ring of two steps instead of a (T, B, H)
    array (39 MB of fresh memory per chunk at 256 × 150 × 256); the sample
    keeps its h in full. The NumPy engine returns the whole sequence.
    """
    if (
        capture != CAPTURE_STATS
        or not isinstance(observer, DirectionReducer)
        or not supports(params.dtype)
        or params.projection is not None  # the kernel has no projection (LSTMP)
        or not available()
    ):
        return numpy_run_direction(
            params, layer, x, mask, capture, observer=observer, keep=keep, keep_fields=keep_fields
        )
    return _run_fused(params, layer, np.asarray(x, dtype=params.dtype), mask, observer, keep, keep_fields,
                      final_h_only)


def _run_fused(params, layer, x, mask, reducer, keep, keep_fields, final_h_only=False) -> StepRecord:
    k = kernels()
    dtype = np.float32
    T, B, D = x.shape
    H = params.H
    H4 = 4 * H
    perm = step_permutation(H)
    W = np.ascontiguousarray(params.W[:, perm], dtype)
    U = np.ascontiguousarray(params.U[:, perm], dtype)
    bias = np.ascontiguousarray(params.b[perm], dtype)
    codes = activation_codes(layer)
    has_peep = params.peephole is not None
    peep = np.ascontiguousarray(params.peephole if has_peep else np.zeros((3, H)), dtype)
    clip = layer.clip
    keep = min(int(keep), B)
    valid = np.ones((T, B), bool) if mask is None else np.ascontiguousarray(mask, bool)

    r = reducer
    if has_peep and "peephole" not in r.term_sumsq:  # as DirectionReducer.block adds them
        r.terms.append("peephole")
        r.term_sumsq["peephole"] = np.zeros((T, H4))
        r.term_sum["peephole"] = np.zeros((T, H4))
    # float32 thresholds, compared in float32 as NumPy compares a float32
    # array with a Python float
    cfg = r.cfg
    limits = np.array(
        [
            cfg.sat_low,
            cfg.sat_high,
            cfg.preact_limit,
            r.g_limit if r.g_limit is not None else np.inf,
            r.actc_limit if r.out_bounded else np.inf,
            r.h_low if r.out_bounded else -np.inf,
            r.h_high if r.out_bounded else np.inf,
            clip if clip is not None else np.inf,
        ],
        dtype,
    )
    flags = np.array(
        [
            mask is not None,
            has_peep,
            clip is not None,
            r.g_limit is not None,
            r.out_bounded,
            bool(r.term_sum),  # sums of the terms wanted (else they follow by linearity)
        ],
        np.bool_,
    )

    # term tables stacked as input, recurrent, total, peephole: totals over the chunk's steps
    # (one row), which is all ``DirectionReducer.finish`` reads of them (it sums over steps)
    term_sq = np.zeros((4, 1, H4))
    term_sum = np.zeros((4, 1, H4))
    over = np.zeros((2, 1, H4), np.int64)
    counts = np.zeros((T, k.N_COUNTS), np.int64)  # columns _kernels.COUNT_*
    extrema = np.full((2,), np.inf)
    extrema[1] = -np.inf
    c_sums = np.zeros((T, 3))  # Σc, Σ|c|, max|c|
    state = np.zeros((B, 3 * H), np.int8)
    switch = np.zeros(3 * H, np.int64)

    # x·W for a block of steps in one GEMM: one packing of W per block instead
    # of per step, and a large GEMM where B is small (B = 32: 16 rows of 32
    # sequences make a GEMM of 512 rows)
    steps = input_block_steps(B, H, T)
    xw_block = np.empty((steps, B, H4), dtype)
    rec = np.empty((B, H4), dtype)
    h_seq = np.empty((2 if final_h_only else T, B, H), dtype)  # final_h_only: a ring of two steps
    h_keep = np.empty((T, keep, H), dtype) if final_h_only and keep else None  # the sample's h, then
    cells = np.empty((2, B, H), dtype)
    h = np.ascontiguousarray(np.broadcast_to(params.h0, (B, H)), dtype)
    c = np.ascontiguousarray(np.broadcast_to(params.c0, (B, H)), dtype)

    # the sample: the first ``keep`` sequences' intermediates, written by the kernel
    wanted = set(("input_term", "recurrent_term", "preact", "peephole_term", "i", "f", "g", "o", "c"))
    if keep_fields is not None:
        wanted &= set(keep_fields)
    if not has_peep:
        wanted.discard("peephole_term")
    if not keep:
        wanted = set()

    def sample_buffer(needed: bool, width: int) -> tuple[int, np.ndarray]:
        if needed:
            return keep, np.zeros((T, keep, width), dtype)
        return 0, np.empty((1, 1, width), dtype)

    keep_z, z_keep = sample_buffer("preact" in wanted, H4)
    keep_act, act_keep = sample_buffer(bool(wanted & set("ifgo")), H4)
    keep_pt, pt_keep = sample_buffer("peephole_term" in wanted, H4)
    keep_c, c_keep = sample_buffer("c" in wanted, H)
    keep_counts = np.array([keep_z, keep_act, keep_pt, keep_c], np.int64)
    terms_keep = {name: np.empty((T, keep, H4), dtype) for name in ("input_term", "recurrent_term") if name in wanted}

    x_sum = getattr(r, "x_sum", None)
    if x_sum is not None:
        x_sum[:] = np.add.reduce(x, axis=1)  # float32 per step, as the NumPy engine

    with blas_threads_context(B, D, H):
        for t in range(T):
            k_blk = t % steps
            if k_blk == 0:
                n = min(steps, T - t)
                np.matmul(x[t : t + n].reshape(n * B, D), W, out=xw_block[:n].reshape(n * B, H4))
            xw = xw_block[k_blk]
            np.matmul(h, U, out=rec)
            c_new, h_new = cells[t % 2], h_seq[t % 2 if final_h_only else t]
            k.fused_step(
                t, T, B, H, keep, xw, rec, bias, peep, codes, limits, flags, valid,
                c, h, c_new, h_new,
                r.ref, r.dev_sum, r.dev_sumsq, r.left, r.right, state, switch,
                term_sq, term_sum, over, counts, c_sums, extrema, r.dh2,
                keep_counts, z_keep, act_keep, pt_keep, c_keep,
            )
            for name, buf in (("input_term", xw), ("recurrent_term", rec)):
                if name in terms_keep:
                    terms_keep[name][t] = buf[:keep]
            if h_keep is not None:
                h_keep[t] = h_new[:keep]
            c, h = c_new, h_new

    _fold_into_reducer(r, term_sq, term_sum, over, counts, c_sums, extrema, switch)
    out = StepRecord(h=h[None] if final_h_only else h_seq, c=None, bias=params.b)
    if keep:
        record = {}
        stacked = dict(terms_keep, preact=z_keep, peephole_term=pt_keep)
        for name, buf in stacked.items():
            if name in wanted:  # gate blocks back to the canonical order i, f, g, o
                record[name] = np.empty_like(buf)
                _to_canonical(record[name], buf, H)
        for j, name in enumerate(STEP_ORDER):
            if name in wanted:
                record[name] = act_keep[:, :, j * H : (j + 1) * H]
        if "c" in wanted:
            record["c"] = c_keep
        out.sample = StepRecord(h=h_keep if h_keep is not None else h_seq[:, :keep].copy(), bias=params.b, **record)
    return out


def _fold_into_reducer(r, term_sq, term_sum, over, counts, c_sums, extrema, switch) -> None:
    """Write the kernel's tables into the reducer's, so that its ``finish`` folds them."""
    K = kernels()
    # the reducer's tables of this chunk are still zero: take the kernel's in their place (no copy)
    for j, name in enumerate(("input", "recurrent", "total", "peephole")):
        if name in r.term_sumsq:
            r.term_sumsq[name] = term_sq[j]
        if name in r.term_sum:
            r.term_sum[name] = term_sum[j]
    r.over["input"] = over[0]
    r.over["total"] = over[1]
    r.c_sum[:] = c_sums[:, 0]
    r.c_abs_sum[:] = c_sums[:, 1]
    r.max_abs_c[:] = c_sums[:, 2]
    r.g_bound[:] = counts[:, K.COUNT_G_BOUND]
    r.actc_bound[:] = counts[:, K.COUNT_ACTC_BOUND]
    r.h_bound[:] = counts[:, K.COUNT_H_BOUND]
    r.c_negative += int(counts[:, K.COUNT_C_NEG].sum())
    r.c_positive += int(counts[:, K.COUNT_C_POS].sum())
    r.transitions += int(counts[:, K.COUNT_TRANSITIONS].sum())
    r.switch += switch
    if counts[:, K.COUNT_VALID_ROWS].any():
        r.min_h = min(r.min_h, float(extrema[0]))
        r.max_h = max(r.max_h, float(extrema[1]))
        r.seen_valid = True
    bad = np.flatnonzero(counts[:, K.COUNT_NONFINITE_STEP])
    if bad.size:
        r.first_nonfinite = int(bad[0]) if r.first_nonfinite < 0 else r.first_nonfinite
        r.nonfinite += int(counts[:, K.COUNT_NONFINITE].sum())
