"""The LSTM step, written to be read: the definition every engine is tested against.

One direction of one layer, in plain NumPy, with nothing optimised away.
Shapes: B sequences, D input features, H units, P hidden-state units (P = H
without a projection); the four gate blocks of W (D, 4H), U (P, 4H) and b
(4H,) are stacked in the order i, f, g, o::

    z_t = x_t·W + h_{t-1}·U + b                          (B, 4H)
    i_t = gate(z_i + p_i ⊙ c_{t-1})                      (B, H)
    f_t = gate(z_f + p_f ⊙ c_{t-1})
    g_t = candidate(z_g)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    o_t = gate(z_o + p_o ⊙ c_t)
    m_t = o_t ⊙ cell_output(c_t)                          (B, H)
    h_t = m_t                 (no projection)             (B, H)
    h_t = m_t · R             (projection R (H, P))       (B, P)

``gate``, ``candidate`` and ``cell_output`` are the layer's activations
(sigmoid, tanh, tanh for a standard LSTM); ``p`` are the optional peepholes.
With ``layer.clip`` every pre-activation is clipped to [-clip, clip] before
its activation (ONNX). A padding step (mask False) carries the state
unchanged. The engines in ``lstm_doctor.capture`` compute exactly this,
faster; ``tests/test_step_oracle.py`` holds each of them to it.
"""

from __future__ import annotations

import numpy as np

from lstm_doctor.model import DirectionParams, Layer


def step(p: DirectionParams, layer: Layer, x_t, h_prev, c_prev) -> dict[str, np.ndarray]:
    """One time step: x_t (B, D), h_prev (B, P) and c_prev (B, H) → every intermediate
    (``m`` is the cell output before the projection; it is ``h`` without one)."""
    gate, candidate, cell_output = (layer.activations.get(r) for r in ("gate", "candidate", "cell_output"))
    H = p.H
    peep = p.peephole if p.peephole is not None else np.zeros((3, H), p.dtype)
    clip = (lambda z: np.clip(z, -layer.clip, layer.clip)) if layer.clip is not None else (lambda z: z)
    z = x_t @ p.W + h_prev @ p.U + p.b
    z_i, z_f, z_g, z_o = (z[:, k * H:(k + 1) * H] for k in range(4))
    i = gate.fn(clip(z_i + peep[0] * c_prev))
    f = gate.fn(clip(z_f + peep[1] * c_prev))
    g = candidate.fn(clip(z_g))
    c = f * c_prev + i * g
    o = gate.fn(clip(z_o + peep[2] * c))
    m = o * cell_output.fn(c)
    h = m if p.projection is None else m @ p.projection
    return {"i": i, "f": f, "g": g, "o": o, "c": c, "m": m, "h": h}


def run(p: DirectionParams, layer: Layer, x, mask=None) -> dict[str, np.ndarray]:
    """Every step over x (T, B, D), forward in time → arrays shaped (T, B, H)
    ((T, B, P) for h).

    ``mask`` (T, B) bool: False marks padding, where h and c are carried over."""
    x = np.asarray(x, p.dtype)
    T, B, _ = x.shape
    h = np.broadcast_to(p.h0, (B, p.P)).astype(p.dtype)
    c = np.broadcast_to(p.c0, (B, p.H)).astype(p.dtype)
    steps = []
    for t in range(T):
        out = step(p, layer, x[t], h, c)
        if mask is not None:
            pad = ~np.asarray(mask[t], bool)[:, None]
            out["h"], out["c"] = np.where(pad, h, out["h"]), np.where(pad, c, out["c"])
        h, c = out["h"], out["c"]
        steps.append(out)
    return {name: np.stack([s[name] for s in steps]) for name in steps[0]}
