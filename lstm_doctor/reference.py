"""Plain NumPy implementation of the instrumented LSTM step: the reference.

It computes exactly the equations of ``lstm_doctor.model`` and returns every
intermediate, time-major. The PyTensor scan (``lstm_doctor.scan``) is tested
against it, and it doubles as the fast capture engine ("numpy"), because
NumPy's vectorised ufuncs beat compiled scalar loops on the element-wise part
of the step (see ENGINE.md).

Shapes: T steps, B sequences, D input features, H units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import DirectionParams, Layer

CAPTURE_FULL = "full"
CAPTURE_HIDDEN = "h"


@dataclass
class StepRecord:
    """Everything one direction computed over one chunk, time-major.

    input_term      (T, B, 4H)  x_t·W
    recurrent_term  (T, B, 4H)  h_{t-1}·U
    peephole_term   (T, B, 4H) or None   p·c (zero in the g block)
    bias            (4H,)
    preact          (T, B, 4H)  the sum of the terms, after ``clip``
    i, f, g, o, c, h  (T, B, H)

    With capture "h" only ``h`` and ``c`` are filled (the others are None).
    """

    h: np.ndarray
    c: np.ndarray
    bias: np.ndarray
    input_term: np.ndarray | None = None
    recurrent_term: np.ndarray | None = None
    peephole_term: np.ndarray | None = None
    preact: np.ndarray | None = None
    i: np.ndarray | None = None
    f: np.ndarray | None = None
    g: np.ndarray | None = None
    o: np.ndarray | None = None

    @property
    def T(self) -> int:
        return self.h.shape[0]

    @property
    def B(self) -> int:
        return self.h.shape[1]

    def gate(self, name: str) -> np.ndarray:
        return getattr(self, name)


def run_direction(
    params: DirectionParams,
    layer: Layer,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    capture: str = CAPTURE_FULL,
) -> StepRecord:
    """Run one direction forward in time over ``x`` (T, B, D).

    ``mask`` (T, B) bool: where False the step is padding and the state is
    carried unchanged (h_t = h_{t-1}, c_t = c_{t-1}); gate values there are
    computed but meaningless, and statistics skip them. The backward direction
    is run by the caller on per-sequence reversed inputs.
    """
    dtype = params.dtype
    x = np.asarray(x, dtype=dtype)
    T, B, D = x.shape
    H = params.H
    acts = layer.activations
    gate_act = acts.get("gate").fn
    cand_act = acts.get("candidate").fn
    out_act = acts.get("cell_output").fn
    clip = layer.clip
    full = capture == CAPTURE_FULL

    # One GEMM for the input projection of every step (Lasagne precomputes it too).
    input_term = (x.reshape(T * B, D) @ params.W).reshape(T, B, 4 * H)
    bias = params.b
    peep = params.peephole

    h_seq = np.empty((T, B, H), dtype)
    c_seq = np.empty((T, B, H), dtype)
    if full:
        recurrent_term = np.empty((T, B, 4 * H), dtype)
        preact = np.empty((T, B, 4 * H), dtype)
        gates = {name: np.empty((T, B, H), dtype) for name in "ifgo"}
        peephole_term = np.zeros((T, B, 4 * H), dtype) if peep is not None else None

    h = np.broadcast_to(params.h0, (B, H)).astype(dtype)
    c = np.broadcast_to(params.c0, (B, H)).astype(dtype)
    for t in range(T):
        rec = h @ params.U
        z = input_term[t] + rec
        z += bias
        if peep is not None:
            # i and f peek at c_{t-1}; o peeks at c_t (added below).
            z[:, 0:H] += peep[0] * c
            z[:, H : 2 * H] += peep[1] * c
        if clip is not None:
            np.clip(z[:, : 3 * H], -clip, clip, out=z[:, : 3 * H])
        i = gate_act(z[:, 0:H])
        f = gate_act(z[:, H : 2 * H])
        g = cand_act(z[:, 2 * H : 3 * H])
        c_new = f * c + i * g
        z_o = z[:, 3 * H :]
        if peep is not None:
            z_o += peep[2] * c_new
        if clip is not None:
            np.clip(z_o, -clip, clip, out=z_o)
        o = gate_act(z_o)
        h_new = o * out_act(c_new)
        if mask is not None:
            keep = mask[t][:, None]
            c_new = np.where(keep, c_new, c)
            h_new = np.where(keep, h_new, h)
        if full:
            if peep is not None:
                peephole_term[t, :, 0:H] = peep[0] * c
                peephole_term[t, :, H : 2 * H] = peep[1] * c
                peephole_term[t, :, 3 * H :] = peep[2] * c_new
            recurrent_term[t] = rec
            preact[t] = z
            gates["i"][t], gates["f"][t], gates["g"][t], gates["o"][t] = i, f, g, o
        c, h = c_new, h_new
        h_seq[t] = h
        c_seq[t] = c

    if not full:
        return StepRecord(h=h_seq, c=c_seq, bias=bias)
    return StepRecord(
        h=h_seq,
        c=c_seq,
        bias=bias,
        input_term=input_term,
        recurrent_term=recurrent_term,
        peephole_term=peephole_term,
        preact=preact,
        **gates,
    )

