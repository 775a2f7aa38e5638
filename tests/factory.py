"""Small synthetic LSTMs and inputs for tests: healthy ones and planted defects."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lstm_doctor.analyzers import AnalysisConfig, analyze
from lstm_doctor.capture.pipeline import CaptureOptions, capture
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction


def direction(D, H, *, init="torch", forget_bias=None, seed=0, peephole=None, dtype=np.float32):
    """Weights with a standard init: 'torch' (uniform ±1/√H everywhere) or 'glorot'."""
    rng = np.random.default_rng(seed)
    if init == "torch":
        k = 1 / np.sqrt(H)
        W = rng.uniform(-k, k, (D, 4 * H))
        U = rng.uniform(-k, k, (H, 4 * H))
        b = rng.uniform(-k, k, 4 * H) + rng.uniform(-k, k, 4 * H)  # bias_ih + bias_hh
    elif init == "glorot":
        lim_w = np.sqrt(6 / (D + 4 * H))
        W = rng.uniform(-lim_w, lim_w, (D, 4 * H))
        U = np.concatenate([np.linalg.qr(rng.standard_normal((H, H)))[0] for _ in range(4)], axis=1)
        b = np.zeros(4 * H)
    else:
        raise ValueError(init)
    if forget_bias is not None:
        b[H : 2 * H] = forget_bias
    return make_direction(W, U, b, peephole, dtype=dtype)


def model(D=8, H=16, *, layers=1, bidirectional=False, acts=None, seed=0, **kw) -> LSTMModel:
    out = []
    d_in = D
    for k in range(layers):
        fwd = direction(d_in, H, seed=seed + 10 * k, **kw)
        rev = direction(d_in, H, seed=seed + 10 * k + 5, **kw) if bidirectional else None
        out.append(Layer(fwd, rev, acts or Activations()))
        d_in = H * (2 if bidirectional else 1)
    return LSTMModel(tuple(out), name="test")


def with_weights(m: LSTMModel, layer=0, **arrays) -> LSTMModel:
    """A copy of ``m`` with some arrays of a layer's forward direction replaced."""
    L = m.layers[layer]
    p = L.forward
    current = {"W": p.W, "U": p.U, "b": p.b, "peephole": p.peephole, "h0": p.h0, "c0": p.c0}
    current.update(arrays)
    fwd = make_direction(**current, dtype=p.dtype)
    layers = list(m.layers)
    layers[layer] = replace(L, forward=fwd)
    return replace(m, layers=tuple(layers))


def with_acts(m: LSTMModel, **acts) -> LSTMModel:
    layers = tuple(replace(L, activations=replace(L.activations, **acts)) for L in m.layers)
    return replace(m, layers=layers)


def normal_inputs(n=64, T=30, D=8, seed=1, scale=1.0) -> np.ndarray:
    """Standardised inputs (n, T, D), layout btd."""
    return (np.random.default_rng(seed).standard_normal((n, T, D)) * scale).astype(np.float32)


def conv_like(n=48, C=128, L=10, seed=3) -> np.ndarray:
    """(n, C, L) non-negative conv-like output: smooth along L, unrelated across C."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, C, L + 4))
    kernel = np.array([1, 2, 3, 2, 1]) / 9.0
    smooth = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 2, noise)
    return np.maximum(smooth - 0.3, 0).astype(np.float32) * 0.07


def case_like(H=64, D=10, seed=0) -> LSTMModel:
    """CASE.md's encoder: Normal(0.1, 0.05) for W, U and peepholes; h = o·σ(c)."""
    rng = np.random.default_rng(seed)
    d = make_direction(
        rng.normal(0.1, 0.05, (D, 4 * H)),
        rng.normal(0.1, 0.05, (H, 4 * H)),
        np.zeros(4 * H),
        rng.normal(0.1, 0.05, (3, H)),
        dtype=np.float32,
    )
    return LSTMModel((Layer(d, None, Activations(cell_output="sigmoid")),), name="case")


def run(m: LSTMModel, x: np.ndarray, *, layout="btd", lengths=None, engine="numpy", thresholds=None, probe=None):
    """Capture and analyze in memory; returns (analysis, capture)."""
    source = InputSource(array=x, layout=layout, lengths=lengths, probe=probe)
    cap = capture(m, source, CaptureOptions(engine=engine, chunk_size=32, sample_size=32))
    return analyze(m, cap, AnalysisConfig(thresholds=thresholds or {})), cap


def pytensor_gradients(layer: Layer, x: np.ndarray, mask: np.ndarray | None, seeds: np.ndarray) -> dict:
    """PyTensor's grad of L = Σ seed ⊙ h_T for every (sequence, seed) pair of ``layer.forward``:
    x (T, n, D) and mask (T, n) replicated once per seed (rows sequence-major, as
    ``sensitivity.final_state_gradients`` lays them out), in one scan call."""
    from lstm_doctor.capture.symbolic.scan import final_state_gradients

    P, n = len(seeds), x.shape[1]
    return final_state_gradients(
        layer.forward, layer, np.repeat(x, P, axis=1), None if mask is None else np.repeat(mask, P, axis=1),
        np.tile(seeds, (n, 1)),
    )


def codes(analysis, min_severity=None) -> set[str]:
    return {
        f.code
        for f in analysis.findings
        if min_severity is None or f.severity >= min_severity
    }


def write_onnx_lstm(path, D: int, H: int, seed: int = 3) -> None:
    """A one-node ONNX LSTM (W, R, B from Normal(0, 0.5)) saved at ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
        for name, shape in (("W", (1, 4 * H, D)), ("R", (1, 4 * H, H)), ("B", (1, 8 * H)))
    ]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], name="enc", hidden_size=H)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)


def stat_fields(st) -> dict:
    """Every numeric field of a DirectionStats, its gates' and its terms', by name."""
    out = {}
    for name, value in vars(st).items():
        if isinstance(value, (np.ndarray, int, float)):
            out[name] = value
    for g, gs in st.gates.items():
        for name, value in vars(gs).items():
            out[f"{g}.{name}"] = value
    for name, value in vars(st.terms).items():
        out[f"terms.{name}"] = value
    return out
