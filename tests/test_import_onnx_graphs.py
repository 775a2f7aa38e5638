"""ONNX graphs as exporters and tools write them, checked against onnxruntime.

Each graph is built with ``onnx.helper`` (or ``torch.onnx.export``) and run by
onnxruntime; the loaded model (NumPy engine) must give the same hidden states,
or the load must refuse with one line that says what to do.
"""

from __future__ import annotations

import numpy as np
import pytest

from lstm_doctor.capture.engines import run_chunk, to_time_order
from lstm_doctor.errors import ModelError
from lstm_doctor.load import LoadOptions, load_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

T, B, D, H = 7, 3, 5, 4
X = np.random.default_rng(11).normal(size=(T, B, D)).astype(np.float32)


def hidden(model, x_tbd, lengths=None):
    records = run_chunk(model, x_tbd, lengths, engine="numpy")
    k = len(model.layers) - 1
    return np.concatenate(
        [to_time_order(records[(k, d)].h, d, lengths) for d, _ in model.layers[k].directions()], axis=-1
    )


def run_ort(path, feeds, output=0):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[output]


def lstm_weights(rng, dirs, d_in, prefix):
    return [
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 4 * H, d_in)).astype(np.float32), f"{prefix}W"),
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 4 * H, H)).astype(np.float32), f"{prefix}R"),
        numpy_helper.from_array(rng.normal(0, 0.5, (dirs, 8 * H)).astype(np.float32), f"{prefix}B"),
    ]


def two_nodes(path, between, d2):
    """Bidirectional node a → ``between`` ops → forward node b (input D = d2)."""
    rng = np.random.default_rng(12)
    inits = lstm_weights(rng, 2, D, "a") + lstm_weights(rng, 1, d2, "b")
    nodes = [helper.make_node("LSTM", ["X", "aW", "aR", "aB"], ["Ya"], name="a", hidden_size=H,
                              direction="bidirectional")]
    prev = "Ya"
    for k, (op, attrs, const) in enumerate(between):
        inputs = [prev]
        if const is not None:
            inits.append(numpy_helper.from_array(np.array(const, np.int64), f"c{k}"))
            inputs.append(f"c{k}")
        nodes.append(helper.make_node(op, inputs, [f"j{k}"], **attrs))
        prev = f"j{k}"
    nodes.append(helper.make_node("LSTM", [prev, "bW", "bR", "bB"], ["Yb"], name="b", hidden_size=H))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, D])],
                              [helper.make_tensor_value_info("Yb", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)


def test_standard_join_is_stacked(tmp_path):
    path = tmp_path / "std.onnx"
    two_nodes(path, [("Transpose", {"perm": [0, 2, 1, 3]}, None), ("Reshape", {}, [0, 0, -1])], 2 * H)
    loaded = load_model(path)
    assert len(loaded.layers) == 2
    expected = run_ort(path, {"X": X})[:, 0]
    diff = np.abs(hidden(loaded, X) - expected).max()
    print(f"onnx stacked (Transpose+Reshape) max |diff| {diff:.2g}")
    assert diff <= 1e-5


def test_reshape_that_mixes_batch_and_direction_is_refused(tmp_path):
    # Y (T, 2, B, H) reshaped straight to (T, B, 2H): onnxruntime runs it, but
    # the second node reads a mix of directions and sequences.
    path = tmp_path / "mixed.onnx"
    two_nodes(path, [("Reshape", {}, [T, B, 2 * H])], 2 * H)
    run_ort(path, {"X": X})  # a valid graph
    with pytest.raises(ModelError, match=r"not provably as \(T, B, D\).*--layer-name"):
        load_model(path)
    # each node can still be diagnosed on its own
    first = load_model(path, options=LoadOptions(layer_name="a"))
    assert len(first.layers) == 1 and first.layers[0].bidirectional
    two_nodes(path, [("Reshape", {}, [0, 0, -1])], B * H)  # (T, 2, B·H): direction read as time... of B·H features
    with pytest.raises(ModelError, match="not provably"):
        load_model(path)


def test_constant_sequence_lens_are_the_lengths(tmp_path):
    from lstm_doctor.load.inputs import load_inputs

    rng = np.random.default_rng(13)
    lens = np.array([7, 3, 5], np.int32)
    inits = lstm_weights(rng, 2, D, "") + [numpy_helper.from_array(lens, "L")]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "L"], ["Y", "Yh", "Yc"], name="enc", hidden_size=H,
                            direction="bidirectional")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, D])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Yh", "Yc")],
                              inits)
    path = tmp_path / "lens.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), path)
    y, y_h = (run_ort(path, {"X": X}, k) for k in (0, 1))
    loaded = load_model(path)
    assert loaded.sequence_lengths == (7, 3, 5)
    np.save(tmp_path / "x.npy", X)
    source = load_inputs(tmp_path / "x.npy", loaded.input_layout, model=loaded)
    assert source.lengths.tolist() == [7, 3, 5]
    records = run_chunk(loaded, X, source.lengths, engine="numpy")
    # Y_h: the forward state at each sequence's last valid step, the backward state at step 0
    fwd = to_time_order(records[(0, "fwd")].h, "fwd", source.lengths)
    rev = to_time_order(records[(0, "rev")].h, "rev", source.lengths)
    last = np.stack([fwd[lens[b] - 1, b] for b in range(B)])
    diff = max(np.abs(last - y_h[0]).max(), np.abs(rev[0] - y_h[1]).max())
    valid = np.arange(T)[:, None] < lens[None, :]
    diff = max(diff, np.abs(np.where(valid[..., None], fwd - y[:, 0], 0)).max(),
               np.abs(np.where(valid[..., None], rev - y[:, 1], 0)).max())
    print(f"onnx constant sequence_lens max |diff| {diff:.2g}")
    assert diff <= 1e-5
    # --lengths overrides the file's
    np.save(tmp_path / "L.npy", np.array([2, 2, 2]))
    assert load_inputs(tmp_path / "x.npy", "tbd", tmp_path / "L.npy", model=loaded).lengths.tolist() == [2, 2, 2]


def test_torch_batch_first_export_reads_the_graph_input_layout(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(D, H, batch_first=True, num_layers=2)
    x_btd = np.ascontiguousarray(X.transpose(1, 0, 2))
    path = tmp_path / "bf.onnx"
    torch.onnx.export(lstm, (torch.from_numpy(x_btd),), str(path), dynamo=False)
    loaded = load_model(path)
    assert loaded.input_layout == "btd"
    assert any("graph input" in n for n in loaded.notes)
    with torch.no_grad():
        expected = lstm(torch.from_numpy(x_btd))[0].numpy()
    diff = np.abs(hidden(loaded, X).transpose(1, 0, 2) - expected).max()
    print(f"onnx torch batch_first export max |diff| {diff:.2g}")
    assert diff <= 1e-5
