"""Final-state sensitivities by the LSTM's backward recursion, in NumPy (no compile).

The same quantities ``capture.symbolic.scan.final_state_gradients`` returns for
L = Σ seed ⊙ h_T — ∂L/∂x_t (T, B, D) and ∂L/∂(x_t·W) (T, B, 4H) — computed by
hand-written reverse-mode differentiation of the step of ``capture/step.py``,
in float64, vectorised over the B = sequences × seeds rows.

Forward (one direction, processing order, mask (T, B) with False = padding)::

    a_i = z_i + p_i ⊙ c_{t-1}   i = σ(clip(a_i))      a_f likewise, f = σ(clip(a_f))
    g = cand(clip(z_g))          c_t = f ⊙ c_{t-1} + i ⊙ g
    a_o = z_o + p_o ⊙ c_t        o = σ(clip(a_o))     m_t = o ⊙ act(c_t)
    h_t = m_t, or h_t = m_t·R with a projection R (H, P) (LSTMP: h, ∂h have P units)

Backward, from ∂L/∂h_T = seed and ∂L/∂c_T = 0, for t = T−1 … 0 (valid step)::

    ∂m   = ∂h, or ∂h · Rᵀ with a projection                 (B, H)
    ∂a_o = ∂m ⊙ act(c_t) ⊙ σ'(o) ⊙ [|a_o| < clip]
    ∂c   = ∂c_t + ∂m ⊙ o ⊙ act'(c_t) + ∂a_o ⊙ p_o           (c_t total)
    ∂a_i = ∂c ⊙ g ⊙ σ'(i) ⊙ [.]   ∂a_f = ∂c ⊙ c_{t-1} ⊙ σ'(f) ⊙ [.]   ∂z_g = ∂c ⊙ i ⊙ cand'(g) ⊙ [.]
    ∂z   = [∂a_i, ∂a_f, ∂z_g, ∂a_o]                            (B, 4H) = ∂L/∂(x_t·W)
    ∂x_t = ∂z · Wᵀ      ∂h_{t-1} = ∂z · Uᵀ (U is (P, 4H))      ∂c_{t-1} = ∂c ⊙ f + ∂a_i ⊙ p_i + ∂a_f ⊙ p_f

A padding step carries (h, c) unchanged, so there ∂z = 0 and (∂h, ∂c) pass
through. Each activation's derivative is taken from its output value
(``gradients.activation_derivative``); a clipped pre-activation has derivative
0 (strictly outside the open interval (−clip, clip)).

The forward is recomputed here in float64 from the weights for the few
sequences the gradients run on (B/seeds sequences, typically 8): the capture's
recorded sample may be float32 (fused engine) and does not keep the
pre-activations that the clip's derivative needs. That costs one T-step
forward of those sequences, far less than the capture.
"""

from __future__ import annotations

import numpy as np

from lstm_doctor.model import DirectionParams, Layer


def forward_states(params: DirectionParams, layer: Layer, x: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Float64 forward over x (T, n, D) in processing order → the arrays the backward needs.

    Returns i, f, g, o, c_prev, c, co = act(c) (T, n, H) and, with a clip, the
    clip indicators ki, kf, kg, ko (T, n, H) (1 where the pre-activation is strictly
    inside (−clip, clip)); ``valid`` (T, n) bool.
    """
    acts = layer.activations
    gate, cand, cell = (acts.get(r) for r in ("gate", "candidate", "cell_output"))
    W, U, b = (np.asarray(a, np.float64) for a in (params.W, params.U, params.b))
    H = params.H
    R = None if params.projection is None else np.asarray(params.projection, np.float64)
    x = np.asarray(x, np.float64)
    T, n, _ = x.shape
    peep = None if params.peephole is None else np.asarray(params.peephole, np.float64)
    clip = layer.clip
    valid = np.ones((T, n), bool) if mask is None else np.asarray(mask, bool)
    h = np.broadcast_to(np.asarray(params.h0, np.float64), (n, params.P)).copy()
    c = np.broadcast_to(np.asarray(params.c0, np.float64), (n, H)).copy()
    names = ("i", "f", "g", "o", "c_prev", "c", "co") + (("ki", "kf", "kg", "ko") if clip is not None else ())
    out = {k: np.empty((T, n, H)) for k in names}
    xw = (x.reshape(T * n, -1) @ W + b).reshape(T, n, 4 * H)  # every step's input term in one GEMM
    for t in range(T):
        z = xw[t] + h @ U
        a_i, a_f, z_g, a_o = (z[:, k * H:(k + 1) * H] for k in range(4))
        if peep is not None:
            a_i = a_i + peep[0] * c
            a_f = a_f + peep[1] * c
        if clip is not None:
            out["ki"][t] = np.abs(a_i) < clip
            out["kf"][t] = np.abs(a_f) < clip
            out["kg"][t] = np.abs(z_g) < clip
            a_i, a_f, z_g = (np.clip(a, -clip, clip) for a in (a_i, a_f, z_g))
        i, f, g = gate.fn(a_i), gate.fn(a_f), cand.fn(z_g)
        c_new = f * c + i * g
        if peep is not None:
            a_o = a_o + peep[2] * c_new
        if clip is not None:
            out["ko"][t] = np.abs(a_o) < clip
            a_o = np.clip(a_o, -clip, clip)
        o = gate.fn(a_o)
        co = cell.fn(c_new)
        h_new = o * co if R is None else (o * co) @ R
        out["i"][t], out["f"][t], out["g"][t], out["o"][t] = i, f, g, o
        out["c_prev"][t], out["c"][t], out["co"][t] = c, c_new, co
        pad = ~valid[t][:, None]
        h = np.where(pad, h, h_new)
        c = np.where(pad, c, c_new)
    out["valid"] = valid
    return out


def final_state_gradients(
    params: DirectionParams, layer: Layer, x: np.ndarray, mask: np.ndarray | None, seeds: np.ndarray
) -> dict[str, np.ndarray]:
    """∂L/∂x_t and ∂L/∂(x_t·W) for L = Σ seed ⊙ h_T, for every (sequence, seed) pair.

    x (T, n, D) in processing order, mask (T, n) or None, seeds (P, H') with H'
    the hidden state's width (``params.P``: H, or the projection's width). Rows of
    the results are sequence-major, row j·P + p = sequence j, seed p (the layout
    ``gradients.analyze_gradients`` builds for the PyTensor call). Returns
    ``{"x": (T, n·P, D), "input_term": (T, n·P, 4H)}``, float64.
    """
    from lstm_doctor.experiments.gradients import activation_derivative

    acts = layer.activations
    fw = forward_states(params, layer, x, mask)
    T, n, _ = np.shape(x)
    H = params.H
    seeds = np.asarray(seeds, np.float64)
    P = len(seeds)
    W, U = np.asarray(params.W, np.float64), np.asarray(params.U, np.float64)
    UT = np.ascontiguousarray(U.T)
    peep = None if params.peephole is None else np.asarray(params.peephole, np.float64)
    RT = None if params.projection is None else np.ascontiguousarray(np.asarray(params.projection, np.float64).T)
    # Local derivatives per (step, sequence), from the output values; clipped: 0.
    d_i = activation_derivative(acts.gate, fw["i"])
    d_f = activation_derivative(acts.gate, fw["f"])
    d_g = activation_derivative(acts.candidate, fw["g"])
    d_o = activation_derivative(acts.gate, fw["o"])
    d_co = activation_derivative(acts.cell_output, fw["co"])
    if layer.clip is not None:
        d_i, d_f, d_g, d_o = d_i * fw["ki"], d_f * fw["kf"], d_g * fw["kg"], d_o * fw["ko"]

    def rows(a):  # (n, H) per sequence -> (n, P, H) broadcast over the seeds
        return a[:, None, :]

    dh = np.broadcast_to(seeds[None], (n, P, seeds.shape[1])).copy()
    dc = np.zeros((n, P, H))
    gz = np.zeros((T, n, P, 4 * H))
    valid = fw["valid"]
    for t in range(T - 1, -1, -1):
        i, f, g, o = (rows(fw[k][t]) for k in ("i", "f", "g", "o"))
        c_prev, co = rows(fw["c_prev"][t]), rows(fw["co"][t])
        dm = dh if RT is None else (dh.reshape(n * P, -1) @ RT).reshape(n, P, H)  # through h = m·R
        da_o = dm * co * rows(d_o[t])
        dct = dc + dm * o * rows(d_co[t])
        if peep is not None:
            dct = dct + da_o * peep[2]
        da_i = dct * g * rows(d_i[t])
        da_f = dct * c_prev * rows(d_f[t])
        dz_g = dct * i * rows(d_g[t])
        dz = np.concatenate([da_i, da_f, dz_g, da_o], axis=-1)  # (n, P, 4H)
        # 2-D products (a stacked 3-D matmul does not reach the BLAS GEMM)
        dh_prev = (dz.reshape(n * P, 4 * H) @ UT).reshape(n, P, -1)
        dc_prev = dct * f
        if peep is not None:
            dc_prev = dc_prev + da_i * peep[0] + da_f * peep[1]
        v = valid[t][:, None, None]
        if v.all():
            gz[t] = dz
            dh, dc = dh_prev, dc_prev
        else:
            # padding: the step carried (h, c), so the gradient passes through untouched
            gz[t] = np.where(v, dz, 0.0)
            dh = np.where(v, dh_prev, dh)
            dc = np.where(v, dc_prev, dc)
    gz = gz.reshape(T * n * P, 4 * H)
    gx = (gz @ np.ascontiguousarray(W.T)).reshape(T, n * P, -1)
    return {"x": gx, "input_term": gz.reshape(T, n * P, 4 * H)}
