"""The "numpy" capture engine: the LSTM step as an optimised NumPy loop.

It computes the equations of ``lstm_doctor.capture.step`` (the readable
oracle, which ``tests/test_step_oracle.py`` holds it to) and returns every
intermediate, time-major. NumPy's vectorised ufuncs beat compiled scalar
loops on the element-wise part of the step (``docs/engines.md``), so this
loop is fast where the oracle is clear: preallocated buffers, the three σ
gates contiguous, statistics handed to an observer while in cache.

Shapes: T steps, B sequences, D input features, H units, P hidden-state
units (P = H unless the layer projects h, PyTorch's ``proj_size``).

Three capture modes share one step loop:

- ``full``: every intermediate of every step, (T, B, ·) arrays;
- ``h``: only ``h`` and ``c``;
- ``stats``: only ``h``, while an *observer* (the streaming reducers of
  ``lstm_doctor.stats``) sees every step's intermediates while they are in
  cache; the full intermediates are kept only for the first ``keep`` sequences
  (``StepRecord.sample``). Memory is then (T, B, H) instead of (T, B, 18·H).

Inside the loop the four gate blocks are stacked in the order i, f, o, g
(``STEP_ORDER``): the three σ gates are then contiguous, and one ``tanh`` call
computes σ(z) = 0.5·tanh(0.5·z) + 0.5 for i, f, o and tanh(z) for g. Records
are always returned in the canonical order i, f, g, o. The loop works in
preallocated buffers with ``out=`` arguments; the operations and their order
are those of the equations (and of ``lstm_doctor.model.activations``), so the three
modes compute the same values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import threadpoolctl

from lstm_doctor.model import DirectionParams, Layer

CAPTURE_FULL = "full"
CAPTURE_HIDDEN = "h"
CAPTURE_STATS = "stats"

STEP_ORDER = "ifog"  # gate blocks of the arrays an observer sees


@dataclass
class StepRecord:
    """Everything one direction computed over one chunk, time-major.

    input_term      (T, B, 4H)  x_t·W
    recurrent_term  (T, B, 4H)  h_{t-1}·U
    peephole_term   (T, B, 4H) or None   p·c (zero in the g block)
    bias            (4H,)
    preact          (T, B, 4H)  the sum of the terms, after ``clip``
    i, f, g, o, c  (T, B, H)
    h               (T, B, P)   the hidden state (the layer's output)
    m               (T, B, H) or None   with a projection R: the cell output
                    o ⊙ cell_output(c_t) before it, h = m·R (None without one)

    Gate blocks are in the canonical order i, f, g, o. With capture "h" only
    ``h`` and ``c`` are filled (the others are None); with "stats" only ``h``,
    and ``sample`` is the full record of the first ``keep`` sequences (or None).
    """

    h: np.ndarray
    c: np.ndarray | None
    bias: np.ndarray
    input_term: np.ndarray | None = None
    recurrent_term: np.ndarray | None = None
    peephole_term: np.ndarray | None = None
    preact: np.ndarray | None = None
    i: np.ndarray | None = None
    f: np.ndarray | None = None
    g: np.ndarray | None = None
    o: np.ndarray | None = None
    m: np.ndarray | None = None
    sample: "StepRecord | None" = None

    @property
    def T(self) -> int:
        return self.h.shape[0]

    @property
    def B(self) -> int:
        return self.h.shape[1]

    def gate(self, name: str) -> np.ndarray:
        return getattr(self, name)


class StepObserver(Protocol):
    """What ``run_direction`` hands, step by step, to a streaming reducer.

    All arrays are views into buffers that the next step overwrites: an
    observer reduces them and keeps no reference. Stacked (B, 4H) arrays hold
    the gate blocks in ``STEP_ORDER`` (i, f, o, g).

    x            (B, D)   the step's input x_t
    xw, rec, z   (B, 4H)  x_t·W, h_{t-1}·U and the pre-activation (after clip)
    peep         (B, 4H) or None  the peephole term (zero in the g block)
    act          (B, 4H)  the gates i, f, o, g side by side
    actc         (B, H)   cell_output(c_t), before the mask is applied
    c, h         (B, H)   c_t and h_t (padding steps carry the state)
    h_prev       (B, H)   h_{t-1} (h0 at t = 0)

    With a projection (LSTMP) ``h`` and ``h_prev`` are the H-wide cell
    outputs m_t = o_t ⊙ cell_output(c_t) before the projection (m_{-1} = 0):
    the per-unit statistics describe the cell's units, while the projected
    h (P wide) is what the record, the next layer and the encodings get.
    """

    def step(self, t, x, xw, rec, peep, z, act, actc, c, h, h_prev) -> None: ...

    def block(self, t0, x, xw, rec, peep, z, act, actc, c, h, h_prev) -> None:
        """Steps t0 … t0+n−1 at once: the same arrays with a leading axis of n
        steps, except ``h_prev`` (B, H) = h_{t0−1} (h0 for t0 = 0)."""


# Steps per block handed to an observer: as many as fit in this many bytes of
# step buffers, so that small layers pay NumPy's per-call cost once per block
# and large ones still work in cache one step at a time.
BLOCK_BYTES = 4 * 1024 * 1024


def block_steps(B: int, H: int, T: int, peephole: bool = False, itemsize: int = 4) -> int:
    """How many steps of (B, ·H) buffers make one observer block."""
    per_step = B * H * (19 + 4 * peephole) * itemsize  # xw, rec, z, act (4H each), actc, c, h
    return int(max(1, min(T, BLOCK_BYTES // max(per_step, 1))))


# A step's GEMMs below this many flops run on one BLAS thread: waking a second
# thread for every small GEMM costs more than it saves (6x slower captures of
# the demo's layer on a busy 2-core machine), while large ones keep them all.
SMALL_GEMM_FLOPS = 2e7


_BLAS = None  # threadpoolctl.ThreadpoolController of the BLAS NumPy loaded, made on first use


def one_blas_thread():
    """Context manager: one BLAS thread inside, the previous counts restored after
    (threadpoolctl, which knows OpenBLAS, MKL and BLIS). Where threadpoolctl
    cannot inspect the loaded libraries, BLAS is left alone."""
    global _BLAS
    if _BLAS is None:
        try:
            _BLAS = threadpoolctl.ThreadpoolController()  # inspects the loaded libraries: ~10 ms, once
        except Exception:  # a library it cannot inspect
            _BLAS = False
    if _BLAS is False:
        return _Nothing()
    return _BLAS.limit(limits=1, user_api="blas")


def blas_threads_context(B: int, D: int, H: int):
    """The BLAS threading to run a step's GEMMs (B, D + H) × (D + H, 4H) under:
    one thread for small GEMMs (``SMALL_GEMM_FLOPS``) and on machines with at
    most two CPUs, where a second OpenBLAS thread made even the 256-unit
    GEMMs slower (0.32 s against 0.23 s for a 2048² GEMM on this project's
    2-vCPU machines, and 4.4 s against 0.6 s for a capture's 300 step GEMMs);
    the library's own choice otherwise."""
    small = 2.0 * B * (D + H) * 4 * H < SMALL_GEMM_FLOPS
    if small or (os.cpu_count() or 1) <= 2:
        return one_blas_thread()
    return _Nothing()


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def step_permutation(H: int) -> np.ndarray:
    """Column indices that take a canonical (…, 4H) array (i, f, g, o) to i, f, o, g."""
    blocks = [np.arange(k * H, (k + 1) * H) for k in (0, 1, 3, 2)]
    return np.concatenate(blocks)


def _sigmoid_into(src: np.ndarray, dst: np.ndarray) -> None:
    # The same operations as activations._sigmoid, into ``dst``.
    np.multiply(src, 0.5, out=dst)
    np.tanh(dst, out=dst)
    dst *= 0.5
    dst += 0.5


def _apply(act, src: np.ndarray, dst: np.ndarray) -> None:
    """dst = act(src) without temporaries for the common activations."""
    if act.name == "sigmoid":
        _sigmoid_into(src, dst)
    elif act.name == "tanh":
        np.tanh(src, out=dst)
    else:
        dst[...] = act.fn(src)


def _to_canonical(dst: np.ndarray, src: np.ndarray, H: int) -> None:
    """dst (…, 4H) in order i, f, g, o  ←  src (…, 4H) in order i, f, o, g."""
    dst[..., : 2 * H] = src[..., : 2 * H]
    dst[..., 2 * H : 3 * H] = src[..., 3 * H :]
    dst[..., 3 * H :] = src[..., 2 * H : 3 * H]


def run_direction(
    params: DirectionParams,
    layer: Layer,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    capture: str = CAPTURE_FULL,
    *,
    observer: StepObserver | None = None,
    keep: int = 0,
    keep_fields: tuple[str, ...] | None = None,
    final_h_only: bool = False,
) -> StepRecord:
    """Run one direction forward in time over ``x`` (T, B, D).

    ``final_h_only`` is the streaming engines' shared convention
    (``engines.run_chunk``); this loop's observers read the h sequence, so it
    returns the whole sequence either way.

    ``mask`` (T, B) bool: where False the step is padding and the state is
    carried unchanged (h_t = h_{t-1}, c_t = c_{t-1}); gate values there are
    computed but meaningless, and statistics skip them. The backward direction
    is run by the caller on per-sequence reversed inputs.

    ``observer`` (any capture mode) is called once per step with the step's
    intermediates (see ``StepObserver``); ``keep`` (capture "stats") is the
    number of leading sequences whose full record is returned as ``sample``,
    with only the fields named in ``keep_fields`` when it is given (h is
    always there).
    """
    if capture not in (CAPTURE_FULL, CAPTURE_HIDDEN, CAPTURE_STATS):
        raise ValueError(f"unknown capture mode {capture!r}")
    dtype = params.dtype
    x = np.asarray(x, dtype=dtype)
    T, B, D = x.shape
    H, P = params.H, params.P
    R = params.projection  # (H, P) or None
    H2, H3, H4 = 2 * H, 3 * H, 4 * H
    acts = layer.activations
    gate_act = acts.get("gate")
    cand_act = acts.get("candidate")
    out_act = acts.get("cell_output")
    clip = layer.clip
    full = capture == CAPTURE_FULL
    stats = capture == CAPTURE_STATS
    keep = min(int(keep), B) if stats else 0
    peep = params.peephole  # rows p_i, p_f, p_o
    # A full record without an observer is written in place in the canonical
    # order i, f, g, o (x·W for every step in one GEMM, as Lasagne does); every
    # other mode works in STEP_ORDER i, f, o, g.
    direct = full and observer is None
    order = "ifgo" if direct else STEP_ORDER
    blk = {name: slice(order.index(name) * H, (order.index(name) + 1) * H) for name in "ifgo"}
    if direct:
        W, U, bias = params.W, params.U, params.b
    else:
        perm = step_permutation(H)
        W, U, bias = params.W[:, perm], params.U[:, perm], params.b[perm]
    # h only, no observer: x_t·W + h_{t-1}·U as one GEMM of [x_t, h_{t-1}].
    joint = capture == CAPTURE_HIDDEN and observer is None
    if joint:
        WU = np.concatenate([W, U], axis=0)
        xh = np.empty((B, D + P), dtype)
    # Step buffers, in blocks of ``steps`` steps when an observer takes blocks.
    steps = 1
    if observer is not None and hasattr(observer, "block"):
        steps = block_steps(B, H, T, peep is not None, np.dtype(dtype).itemsize)
    xw_b = np.empty((steps, B, H4), dtype)
    rec_b = np.empty((steps, B, H4), dtype)
    z_b = np.empty((steps, B, H4), dtype)
    act_b = np.empty((steps, B, H4), dtype)
    actc_b = np.empty((steps, B, H), dtype)
    pt_b = np.zeros((steps, B, H4), dtype) if peep is not None else None
    # c_t goes to c_seq, or (capture "stats") to a ring of at least 2 buffers
    ring = max(steps, 2)
    cells = np.empty((ring, B, H), dtype) if stats else None

    h_seq = np.empty((T, B, P), dtype)
    # with a projection the cell outputs m_t before it: recorded, and what observers see as h
    m_seq = None if R is None else np.empty((T, B, H), dtype)
    c_seq = np.empty((T, B, H), dtype) if not stats else None
    tmp = np.empty((B, H), dtype)
    record = {}
    if full:
        record = {name: np.empty((T, B, H4), dtype) for name in ("input_term", "recurrent_term", "preact")}
        if peep is not None:
            record["peephole_term"] = np.zeros((T, B, H4), dtype)
        record.update({name: np.empty((T, B, H), dtype) for name in "ifgo"})
        if direct:
            np.matmul(x.reshape(T * B, D), W, out=record["input_term"].reshape(T * B, H4))
    elif keep:
        record = {name: np.empty((T, keep, H4), dtype) for name in ("input_term", "recurrent_term", "preact")}
        if peep is not None:
            record["peephole_term"] = np.zeros((T, keep, H4), dtype)
        record.update({name: np.empty((T, keep, H), dtype) for name in "ifgoc"})
        if R is not None:
            record["m"] = np.empty((T, keep, H), dtype)
        if keep_fields is not None:
            # m (with a projection) goes with h: it is the h the analyzers read per unit
            record = {
                name: arr for name, arr in record.items()
                if name in keep_fields or (name == "m" and "h" in keep_fields)
            }
    rows = 0 if direct else B if full else keep

    # σ over i, f, o and tanh over g in one tanh call: scale z by 0.5 in the
    # σ blocks and by 1 in the g block, then finish σ. With peepholes o needs
    # c_t first, so i, f and g are done first.
    fused = gate_act.name == "sigmoid" and cand_act.name == "tanh"
    if fused:
        scale = np.full(H4, 0.5, dtype)
        scale[blk["g"]] = 1.0
    # the σ blocks as contiguous column ranges: i, f (and o without peepholes)
    sigma = [slice(0, H3)] if order == "ifog" else [slice(0, H2), blk["o"]]
    if peep is not None:
        sigma = [slice(0, H2)]
    sl_o, sl_g = blk["o"], blk["g"]
    padding = None if mask is None else ~np.asarray(mask, dtype=bool)

    h = np.broadcast_to(params.h0, (B, P)).astype(dtype)
    c = np.broadcast_to(params.c0, (B, H)).astype(dtype)
    m = None if R is None else np.zeros((B, H), dtype)
    seen = h_seq if R is None else m_seq  # the "h" observers see
    with blas_threads_context(B, D, H):
        t0, h_start = 0, (h if R is None else m)
        for t in range(T):
            k = t - t0
            if direct:
                xw, rec, z = record["input_term"][t], record["recurrent_term"][t], record["preact"][t]
                act, actc = act_b[0], actc_b[0]
                pt = None if peep is None else record["peephole_term"][t]
            else:
                xw, rec, z, act, actc = xw_b[k], rec_b[k], z_b[k], act_b[k], actc_b[k]
                pt = None if pt_b is None else pt_b[k]
            if direct:
                np.matmul(h, U, out=rec)
                np.add(xw, rec, out=z)
            elif joint:
                xh[:, :D] = x[t]
                xh[:, D:] = h
                np.matmul(xh, WU, out=z)
            else:
                np.matmul(x[t], W, out=xw)
                np.matmul(h, U, out=rec)
                np.add(xw, rec, out=z)
            z += bias
            if peep is not None:
                # i and f peek at c_{t-1}; o peeks at c_t (added below).
                np.multiply(peep[0], c, out=pt[:, 0:H])
                np.multiply(peep[1], c, out=pt[:, H:H2])
                z[:, 0:H] += pt[:, 0:H]
                z[:, H:H2] += pt[:, H:H2]
                if clip is not None:
                    np.clip(z[:, :H2], -clip, clip, out=z[:, :H2])
                    np.clip(z[:, sl_g], -clip, clip, out=z[:, sl_g])
                if fused:
                    np.multiply(z[:, :H2], 0.5, out=act[:, :H2])
                    np.tanh(act[:, :H2], out=act[:, :H2])
                    act[:, :H2] *= 0.5
                    act[:, :H2] += 0.5
                    np.tanh(z[:, sl_g], out=act[:, sl_g])
                else:
                    _apply(gate_act, z[:, :H2], act[:, :H2])
                    _apply(cand_act, z[:, sl_g], act[:, sl_g])
            else:
                if clip is not None:
                    np.clip(z, -clip, clip, out=z)
                if fused:
                    np.multiply(z, scale, out=act)
                    np.tanh(act, out=act)
                    for cols in sigma:
                        a = act[:, cols]
                        a *= 0.5
                        a += 0.5
                else:
                    for cols in sigma:
                        _apply(gate_act, z[:, cols], act[:, cols])
                    _apply(cand_act, z[:, sl_g], act[:, sl_g])
            i, f, o, g = act[:, 0:H], act[:, H:H2], act[:, sl_o], act[:, sl_g]
            c_new = cells[k if steps > 1 else t % 2] if stats else c_seq[t]
            h_new = h_seq[t]
            np.multiply(f, c, out=c_new)
            np.multiply(i, g, out=tmp)
            c_new += tmp
            if peep is not None:
                z_o = z[:, sl_o]
                np.multiply(peep[2], c_new, out=pt[:, sl_o])
                z_o += pt[:, sl_o]
                if clip is not None:
                    np.clip(z_o, -clip, clip, out=z_o)
                _apply(gate_act, z_o, o)
            _apply(out_act, c_new, actc)
            if R is None:
                np.multiply(o, actc, out=h_new)
            else:  # h_t = (o ⊙ act(c_t))·R
                m_new = m_seq[t]
                np.multiply(o, actc, out=m_new)
                np.matmul(m_new, R, out=h_new)
            if padding is not None:
                pad = padding[t][:, None]
                np.copyto(c_new, c, where=pad)
                np.copyto(h_new, h, where=pad)  # m_t is not state: like the gates, not carried
            c, h = c_new, h_new
            if R is not None:
                m = m_new
            if direct:
                for name in "ifgo":
                    record[name][t] = act[:, blk[name]]
                continue
            if k + 1 < steps and t + 1 < T:
                continue
            # the block of steps t0 … t is complete
            n = k + 1
            ts = slice(t0, t + 1)
            if observer is not None:
                if steps > 1:
                    cs = cells[:n] if stats else c_seq[ts]
                    observer.block(
                        t0, x[ts], xw_b[:n], rec_b[:n], None if pt_b is None else pt_b[:n], z_b[:n],
                        act_b[:n], actc_b[:n], cs, seen[ts], h_start,
                    )
                else:
                    observer.step(t, x[t], xw, rec, pt, z, act, actc, c_new, seen[t], h_start)
            if rows:
                for name, buf in (("input_term", xw_b), ("recurrent_term", rec_b), ("preact", z_b), ("peephole_term", pt_b)):
                    if name in record:
                        _to_canonical(record[name][ts], buf[:n, :rows], H)
                for j, name in enumerate("ifog"):
                    if name in record:
                        record[name][ts] = act_b[:n, :rows, j * H : (j + 1) * H]
                if not full and "c" in record:
                    record["c"][ts] = cells[:n, :rows] if steps > 1 else c_new[None, :rows]
                if not full and "m" in record:
                    record["m"][ts] = m_seq[ts, :rows]
            t0, h_start = t + 1, (h if R is None else m)

    if full:
        return StepRecord(h=h_seq, c=c_seq, bias=params.b, m=m_seq, **record)
    out = StepRecord(h=h_seq, c=c_seq, bias=params.b, m=m_seq if capture == CAPTURE_HIDDEN else None)
    if keep:
        out.sample = StepRecord(h=h_seq[:, :keep].copy(), bias=params.b, **record)
    return out
