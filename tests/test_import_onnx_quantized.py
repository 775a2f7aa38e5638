"""Quantized ONNX LSTMs (``com.microsoft::DynamicQuantizeLSTM``) against onnxruntime.

onnxruntime's kernel does two things to the float LSTM: its weights are 8-bit
(W stored (dirs, D, 4H), R (dirs, H, 4H), each column j, a gate row in iofc
order, with its own scale when per-channel), and at run time it rounds the
activations too: X (all steps at once) and each step's h are quantized to
uint8, per tensor, asymmetric, before each GEMM. lstm_doctor dequantizes the
weights and diagnoses the float model. So the checks are:

1. ``ort_arithmetic`` below re-computes onnxruntime's output from the file
   (weights dequantized per the contrib-op spec, activations rounded as the
   kernel does): it matches onnxruntime to float rounding, so the weights'
   layout and scale axis are the kernel's;
2. lstm_doctor's hidden states equal the same dequantized float model;
3. lstm_doctor against onnxruntime directly differs only by the activation
   rounding (a few 1e-3 here).

onnxruntime quantizes h per block of sequences its threads take, so its
output depends on the thread count; the sessions here use one thread.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lstm_doctor.capture.engines import run_chunk, to_time_order
from lstm_doctor.cli.main import cli
from lstm_doctor.errors import ModelError
from lstm_doctor.load import load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

T, B, D, H = 7, 3, 5, 4
X = np.random.default_rng(11).normal(size=(T, B, D)).astype(np.float32)
f32 = np.float32


def hidden(model, x_tbd):
    records = run_chunk(model, x_tbd, None, engine="numpy")
    return np.stack([to_time_order(records[(0, d)].h, d, None) for d, _ in model.layers[0].directions()], axis=1)


def run_ort(path, x=X):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one block of sequences: h is quantized over the whole batch
    options.log_severity_level = 4  # the refusals below are expected
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]  # Y: (T, dirs, B, H)


def dequantize(q, scale, zero):
    """(dirs, K, 4H) 8-bit → float (dirs, 4H, K): (q − zp)·scale, per column j when per channel."""
    q = q.astype(np.float64)
    if scale.ndim == 1:
        w = (q - zero[:, None, None]) * scale[:, None, None]
    else:
        w = (q - zero[:, None, :].astype(np.float64)) * scale[:, None, :]
    return w.astype(f32).transpose(0, 2, 1)


def _uint8_dynamic(a):
    """onnxruntime's dynamic quantization of a GEMM's A (DynamicQuantizeLinear): the range
    includes 0, scale = (max − min)/255, zp = round(−min/scale), q = clip(round(a/scale) + zp).
    Returns (q − zp, scale), so that a ≈ (q − zp)·scale."""
    lo, hi = min(f32(a.min()), f32(0)), max(f32(a.max()), f32(0))
    scale = f32(1) if hi == lo else f32((hi - lo) / f32(255))
    zp = np.rint(np.clip(f32(0) - lo / scale, 0, 255))
    return np.clip(np.rint(a / scale) + zp, 0, 255) - zp, scale


def ort_arithmetic(x, W, R, bias, quantize=True):
    """One direction of the LSTM, W (4H, D), R (4H, H) float, iofc; with ``quantize``, X
    and each h are rounded to uint8 before their GEMM as onnxruntime's kernel does."""

    def gemm(a, w):
        if not quantize:
            return (a @ w.T).astype(f32)
        q, s = _uint8_dynamic(a)
        return ((q @ w.T.astype(np.float64)) * np.float64(s)).astype(f32)

    steps = x.shape[0]
    pre = gemm(x.reshape(steps * x.shape[1], -1), W).reshape(steps, x.shape[1], -1)
    h = np.zeros((x.shape[1], R.shape[1]), f32)
    c = np.zeros_like(h)
    b = (bias[: 4 * H] + bias[4 * H :]).astype(f32)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out = []
    for t in range(steps):
        i, o, f, g = np.split((pre[t] + gemm(h, R) + b).astype(np.float64), 4, axis=1)
        c = (sig(f) * c + sig(i) * np.tanh(g)).astype(f32)
        h = (sig(o) * np.tanh(c)).astype(f32)
        out.append(h)
    return np.stack(out)


def reference(path, quantize=True, x=X):
    """Y (T, dirs, B, H) of the file's DynamicQuantizeLSTM node, computed from its constants."""
    model = onnx.load(str(path))
    const = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    W = dequantize(const[node.input[1]], const[node.input[8]], const[node.input[9]])
    R = dequantize(const[node.input[2]], const[node.input[10]], const[node.input[11]])
    bias = const[node.input[3]]
    direction = next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")
    backward = [False, True] if direction == "bidirectional" else [direction == "reverse"]
    # a backward direction reads the reversed sequence (the same values: the same rounding of X)
    ys = [ort_arithmetic(x[::-1], W[d], R[d], bias[d], quantize)[::-1] if rev
          else ort_arithmetic(x, W[d], R[d], bias[d], quantize) for d, rev in enumerate(backward)]
    return np.stack(ys, axis=1)


def quantize_dynamic_model(tmp_path, per_channel):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(14)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (2, 4 * H, D)).astype(f32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, (2, 4 * H, H)).astype(f32), "R"),
        numpy_helper.from_array(rng.normal(0, 0.5, (2, 8 * H)).astype(f32), "B"),
    ]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], name="enc", hidden_size=H, direction="bidirectional")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, D])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8,
                     per_channel=per_channel)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.op_type for n in quantized.graph.node] == ["DynamicQuantizeLSTM"]
    scale = next(numpy_helper.to_array(i) for i in quantized.graph.initializer if i.name == "W_scale")
    assert scale.shape == ((2, 4 * H) if per_channel else (2,))
    return tmp_path / "q.onnx"


def check(path, label):
    """The three checks of the module docstring; returns lstm_doctor's max |diff| to onnxruntime."""
    expected = run_ort(path)
    exact = np.abs(reference(path) - expected).max()
    loaded = load_model(path)
    assert any("dequantized" in n for n in loaded.notes)
    ours = hidden(loaded, X)
    to_float = np.abs(ours - reference(path, quantize=False)).max()
    diff = np.abs(ours - expected).max()
    print(f"onnx DynamicQuantizeLSTM ({label}) vs onnxruntime max |diff| {diff:.2g} "
          f"(onnxruntime's arithmetic re-computed: {exact:.2g}; vs the dequantized float model {to_float:.2g})")
    assert exact <= 1e-5  # the weights as this module reads the spec are the kernel's, to float rounding
    assert to_float <= 1e-5  # lstm_doctor diagnoses exactly that dequantized model
    # Only the activation rounding is left: X's step here is (max − min)/255 ≈ 0.026 and h's
    # ≤ 2/255; its effect on h, measured by ``reference`` with and without it, is ≈ 0.004.
    rounding = np.abs(reference(path) - reference(path, quantize=False)).max()
    assert diff <= rounding + 1e-5 and diff <= 0.01
    return diff


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-direction", "per-channel"])
def test_quantize_dynamic_lstm_matches_onnxruntime(tmp_path, per_channel):
    path = quantize_dynamic_model(tmp_path, per_channel)
    check(path, "int8 per-channel" if per_channel else "int8 per-direction")
    items = {(a["item"], a["value"], a["source"]) for a in _report(path, tmp_path)["model"]["layers"][0]["assumptions"]}
    kind = "per-channel" if per_channel else "per-direction"
    assert ("weights", f"dequantized from int8, {kind} scales: (q − zero_point)·scale", "file") in items


def _report(path, tmp_path):
    np.save(tmp_path / "x.npy", X)
    result = CliRunner().invoke(cli, ["diagnose", str(path), "--inputs", str(tmp_path / "x.npy"), "--layout", "tbd",
                                      "--format", "json", "--exit-zero", "--engine", "numpy"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert any("dequantized" in n for n in report["model"]["notes"])
    return report


def hand_node(path, w_dtype, w_zero, r_zero=None, direction="bidirectional"):
    """A DynamicQuantizeLSTM written with onnx.helper: random 8-bit W, R, per-channel scales."""
    rng = np.random.default_rng(15)
    dirs = 2 if direction == "bidirectional" else 1
    lo, hi = (0, 256) if w_dtype == np.uint8 else (-127, 128)
    r_zero = w_zero if r_zero is None else r_zero
    arrays = {
        "Wq": rng.integers(lo, hi, (dirs, D, 4 * H)).astype(w_dtype),
        "Rq": rng.integers(lo, hi, (dirs, H, 4 * H)).astype(w_dtype),
        "B": rng.normal(0, 0.5, (dirs, 8 * H)).astype(f32),
        "Ws": rng.uniform(0.002, 0.01, (dirs, 4 * H)).astype(f32),
        "Wz": np.broadcast_to(np.asarray(w_zero, w_dtype), (dirs, 4 * H)).copy(),
        "Rs": rng.uniform(0.002, 0.01, (dirs, 4 * H)).astype(f32),
        "Rz": np.broadcast_to(np.asarray(r_zero, w_dtype), (dirs, 4 * H)).copy(),
    }
    node = helper.make_node("DynamicQuantizeLSTM", ["X", "Wq", "Rq", "B", "", "", "", "", "Ws", "Wz", "Rs", "Rz"],
                            ["Y"], name="q", domain="com.microsoft", hidden_size=H, direction=direction)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, D])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("direction", ["bidirectional", "reverse"])
def test_uint8_per_channel_weights_subtract_their_zero_point(tmp_path, direction):
    # onnxruntime's quantizer writes int8 with zero points 0; uint8 weights need the zero point
    path = hand_node(tmp_path / "u8.onnx", np.uint8, 128, direction=direction)
    check(path, f"uint8 per-channel, zero point 128, {direction}")


@pytest.mark.parametrize(("dtype", "w_zero", "message"), [
    (np.uint8, np.arange(4 * H) % 3 + 127, "differs between channels"),
    (np.int8, 1, "is not all 0"),
])
def test_zero_points_onnxruntime_refuses_are_refused(tmp_path, dtype, w_zero, message):
    path = hand_node(tmp_path / "bad.onnx", dtype, w_zero, r_zero=128 if dtype == np.uint8 else 0)
    with pytest.raises(Exception, match="point must be"):  # onnxruntime: "…Weight (zero) point must be …"
        run_ort(path)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_stacked_quantized_nodes_are_dequantized_layer_by_layer(tmp_path):
    # as the quantized BiLSTM taggers ship: bidirectional node → Transpose → Reshape → node
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(16)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(f32), name) for name, shape in (
        ("aW", (2, 4 * H, D)), ("aR", (2, 4 * H, H)), ("aB", (2, 8 * H)),
        ("bW", (1, 4 * H, 2 * H)), ("bR", (1, 4 * H, H)), ("bB", (1, 8 * H)))]
    inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape"))
    nodes = [
        helper.make_node("LSTM", ["X", "aW", "aR", "aB"], ["Ya"], name="a", hidden_size=H, direction="bidirectional"),
        helper.make_node("Transpose", ["Ya"], ["Yt"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["Yt", "shape"], ["Xb"]),
        helper.make_node("LSTM", ["Xb", "bW", "bR", "bB"], ["Y"], name="b", hidden_size=H),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, D])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    loaded = load_model(tmp_path / "q.onnx")
    assert [item for item, _, _ in loaded.assumptions] == ["l0:weights", "l1:weights"]
    records = run_chunk(loaded, X, None, engine="numpy")
    diff = np.abs(to_time_order(records[(1, "fwd")].h, "fwd", None) - run_ort(tmp_path / "q.onnx")[:, 0]).max()
    print(f"onnx stacked DynamicQuantizeLSTM (int8 per-channel) vs onnxruntime max |diff| {diff:.2g}")
    assert diff <= 0.01  # the activation rounding of both nodes, as in check()
