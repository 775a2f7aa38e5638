"""Importers: each framework's own output is reproduced from the loaded weights.

Models are built with the real frameworks (PyTorch, Keras 3 on its NumPy
backend, ONNX's reference evaluator), saved in their own formats into
``tmp_path`` and loaded with ``load_model``; ``run_chunk`` (NumPy engine)
must give the framework's hidden sequence within 1e-5 (float32). Tweet2Vec and
Lasagne files (no framework to run) are built from their documented formats
by ``fixtures/make_fixtures.py`` and checked for structure and behaviour.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lstm_doctor.capture.engines import run_chunk, to_time_order  # noqa: E402
from lstm_doctor.errors import ConfigError, ModelError  # noqa: E402
from lstm_doctor.jobs.inspect import describe, render_text  # noqa: E402
from lstm_doctor.load import LoadOptions, detect_format, load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_fixtures  # noqa: E402

TOL = 1e-5
FIXTURES = Path(__file__).parent / "fixtures"


def hidden(model, x_tbd, time_order=True):
    """The last layer's h (T, B, H_out): directions concatenated, as frameworks do."""
    records = run_chunk(model, x_tbd, engine="numpy")
    k = len(model.layers) - 1
    parts = []
    for direction, _ in model.layers[k].directions():
        h = records[(k, direction)].h
        parts.append(to_time_order(h, direction, None) if time_order else h)
    return np.concatenate(parts, axis=-1)


def check_inspect(model, fmt):
    """``describe`` is strict JSON and names what was loaded; the text shows it."""
    desc = describe(model)
    json.dumps(desc, allow_nan=False)
    assert desc["format"] == fmt
    assert desc["layers"][0]["H"] == model.layers[0].H
    for layer in desc["layers"]:
        for info in layer["directions"].values():
            assert {"W", "U", "b", "h0", "c0"} <= set(info["arrays"])
            assert set(info["arrays"]["W"]["gates"]) == {"i", "f", "g", "o"}
    text = render_text(desc)
    assert fmt in text and "W[f]" in text
    return desc


MAX_DIFFS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report_max_diffs():
    """Print the largest difference seen per framework (visible with ``pytest -s``)."""
    yield
    print("\nmax |diff| per framework:", {k: f"{v:.2g}" for k, v in sorted(MAX_DIFFS.items())})


def record(name, diff):
    MAX_DIFFS[name] = max(MAX_DIFFS.get(name, 0.0), float(diff))
    assert diff <= TOL, f"{name}: max |diff| {diff:.3g}"


# ---------------------------------------------------------------------------
# PyTorch



def _torch_lstm(**kwargs):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(**{"input_size": 3, "hidden_size": 5, **kwargs})
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias"):
                p.uniform_(-1, 1)  # non-zero biases: their sum must be right
    return lstm


def _torch_out(lstm, x):
    with torch.no_grad():
        return lstm(torch.from_numpy(x))[0].numpy()


X_TBD = np.random.default_rng(0).normal(size=(7, 2, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"num_layers": 2}, {"bidirectional": True}, {"num_layers": 2, "bidirectional": True}],
    ids=["one-layer", "two-layers", "bidirectional", "two-layer-bidirectional"],
)
def test_torch_state_dict(tmp_path, kwargs):
    lstm = _torch_lstm(**kwargs)
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    assert detect_format(tmp_path / "lstm.pt") == "torch"
    model = load_model(tmp_path / "lstm.pt")
    assert len(model.layers) == kwargs.get("num_layers", 1)
    assert model.layers[0].bidirectional == kwargs.get("bidirectional", False)
    diff = np.abs(hidden(model, X_TBD) - _torch_out(lstm, X_TBD)).max()
    record("torch", diff)
    check_inspect(model, "torch")


def test_torch_without_torch_reads_the_same_weights(tmp_path, monkeypatch):
    from lstm_doctor.load import torch as torch_importer

    lstm = _torch_lstm(num_layers=2, bidirectional=True)
    torch.save({"model": lstm.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    with_torch = load_model(tmp_path / "ckpt.pth")
    monkeypatch.setattr(torch_importer, "_torch", lambda: None)
    without = load_model(tmp_path / "ckpt.pth")
    assert with_torch.name == without.name == "model"
    for (_, _, _, a), (_, _, _, b) in zip(with_torch.units(), without.units()):
        for role in ("W", "U", "b"):
            assert np.array_equal(getattr(a, role), getattr(b, role))
    record("torch (zip read without torch)", np.abs(hidden(without, X_TBD) - _torch_out(lstm, X_TBD)).max())


def test_torch_bfloat16_weights(tmp_path, monkeypatch):
    from lstm_doctor.load import torch as torch_importer

    lstm = _torch_lstm().to(torch.bfloat16)
    torch.save(lstm.state_dict(), tmp_path / "bf16.pt")
    a = load_model(tmp_path / "bf16.pt")
    monkeypatch.setattr(torch_importer, "_torch", lambda: None)
    b = load_model(tmp_path / "bf16.pt")
    assert a.dtype == b.dtype == np.float32
    assert np.array_equal(a.layers[0].forward.W, b.layers[0].forward.W)
    expected = lstm.weight_ih_l0.float().detach().numpy().T
    assert np.array_equal(a.layers[0].forward.W, expected)


def test_torch_safetensors(tmp_path, monkeypatch):
    import safetensors.torch as safetensors_torch
    from lstm_doctor.load import torch as torch_importer

    lstm = _torch_lstm(bidirectional=True)
    safetensors_torch.save_file(lstm.state_dict(), str(tmp_path / "lstm.safetensors"))
    assert detect_format(tmp_path / "lstm.safetensors") == "torch"
    model = load_model(tmp_path / "lstm.safetensors")
    record("torch (safetensors)", np.abs(hidden(model, X_TBD) - _torch_out(lstm, X_TBD)).max())
    # The reader used when the safetensors package is missing gives the same arrays.
    here = torch_importer._read_safetensors_here(tmp_path / "lstm.safetensors")
    ref = torch_importer.read_safetensors(tmp_path / "lstm.safetensors")
    assert here.keys() == ref.keys()
    assert all(np.array_equal(here[k], ref[k]) for k in ref)


class _EncoderDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Module()
        self.encoder.embed = torch.nn.Linear(4, 3)
        self.encoder.lstm = _torch_lstm(num_layers=2)
        self.decoder = torch.nn.LSTM(5, 2)


def test_torch_prefixed_submodule(tmp_path):
    net = _EncoderDecoder()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    with pytest.raises(ModelError) as info:
        load_model(tmp_path / "net.pt")
    assert "'decoder.'" in str(info.value) and "'encoder.lstm.'" in str(info.value)
    assert "--layer-prefix" in str(info.value)
    for prefix in ("encoder.lstm.", "encoder.lstm"):
        model = load_model(tmp_path / "net.pt", options=LoadOptions(layer_prefix=prefix))
        assert model.name == "encoder.lstm" and len(model.layers) == 2
    diff = np.abs(hidden(model, X_TBD) - _torch_out(net.encoder.lstm, X_TBD)).max()
    record("torch", diff)
    with pytest.raises(ModelError, match="no LSTM under prefix 'nope'"):
        load_model(tmp_path / "net.pt", options=LoadOptions(layer_prefix="nope"))


def test_torch_proj_size_is_read_and_gru_is_rejected(tmp_path):
    lstm = torch.nn.LSTM(3, 5, proj_size=2)  # LSTMP (issue 15.8; tests/test_lstmp.py holds every engine to it)
    torch.save(lstm.state_dict(), tmp_path / "proj.pt")
    model = load_model(tmp_path / "proj.pt")  # hidden() runs on time-major x: the layout is not used
    assert (model.layers[0].H, model.layers[0].P, model.output_size) == (5, 2, 2)
    with torch.no_grad():
        expected = lstm(torch.from_numpy(X_TBD))[0].numpy()
    record("torch", np.abs(hidden(model, X_TBD) - expected).max())
    torch.save({f"{k}_l0": v for k, v in [("weight_ih", torch.zeros(15, 3)), ("weight_hh", torch.zeros(15, 5))]},
               tmp_path / "gru.pt")
    with pytest.raises(ModelError, match="GRU"):
        load_model(tmp_path / "gru.pt")


def test_torch_whole_module_needs_trust(tmp_path):
    lstm = _torch_lstm(batch_first=True)
    torch.save(lstm, tmp_path / "module.pt")
    with pytest.raises(ModelError, match="--trust-pickle"):
        load_model(tmp_path / "module.pt")
    model = load_model(tmp_path / "module.pt", options=LoadOptions(trust_pickle=True))
    assert model.input_layout == "btd"
    x_btd = X_TBD.transpose(1, 0, 2).copy()
    with torch.no_grad():
        expected = lstm(torch.from_numpy(x_btd))[0].numpy().transpose(1, 0, 2)
    record("torch", np.abs(hidden(model, X_TBD) - expected).max())


def test_torch_malformed_files(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError):
        load_model(tmp_path / "bad.pt", model_format="torch")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "none.pt")
    with pytest.raises(ModelError, match="no LSTM weights"):
        load_model(tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="preset"):
        load_model(tmp_path / "none.pt", options=LoadOptions(preset="tweet2vec"))


# ---------------------------------------------------------------------------
# Keras (NumPy backend)


@pytest.fixture(scope="module")
def keras():
    import keras

    return keras


X_BTD = np.random.default_rng(1).normal(size=(2, 6, 3)).astype(np.float32)


def _randomise_biases(model):
    rng = np.random.default_rng(2)
    for var in model.weights:
        if "bias" in var.path:
            var.assign(rng.normal(size=var.shape).astype("float32"))


def _keras_roundtrip(keras, tmp_path, model, time_order=True, name="m"):
    _randomise_biases(model)
    expected = model.predict(X_BTD, verbose=0)
    diffs = []
    for ext in (".keras", ".h5"):
        path = tmp_path / f"{name}{ext}"
        model.save(path)
        assert detect_format(path) == "keras"
        loaded = load_model(path)
        h = hidden(loaded, X_BTD.transpose(1, 0, 2), time_order=time_order)
        diffs.append(np.abs(h.transpose(1, 0, 2) - expected).max())
        record("keras", diffs[-1])
    return loaded


@pytest.mark.parametrize(
    "kwargs, gate, act",
    [
        ({}, "sigmoid", "tanh"),
        ({"activation": "sigmoid"}, "sigmoid", "sigmoid"),
        ({"recurrent_activation": "hard_sigmoid"}, "hard_sigmoid6", "tanh"),
    ],
    ids=["default", "activation-sigmoid", "hard-sigmoid"],
)
def test_keras_lstm(keras, tmp_path, kwargs, gate, act):
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True, **kwargs)])
    loaded = _keras_roundtrip(keras, tmp_path, model)
    assert loaded.layers[0].activations.gate == gate
    assert loaded.layers[0].activations.candidate == loaded.layers[0].activations.cell_output == act
    check_inspect(loaded, "keras")


def test_keras_bidirectional_stacked(keras, tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6, 3)),
            keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True)),
            keras.layers.Dropout(0.5),
            keras.layers.LSTM(2, return_sequences=True),
        ]
    )
    loaded = _keras_roundtrip(keras, tmp_path, model)
    assert [layer.bidirectional for layer in loaded.layers] == [True, False]


def test_keras_bidirectional_functional(keras, tmp_path):
    inp = keras.Input((6, 3))
    out = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True), name="bi")(inp)
    loaded = _keras_roundtrip(keras, tmp_path, keras.Model(inp, out))
    assert loaded.name == "bi" and loaded.layers[0].bidirectional


def test_keras_go_backwards(keras, tmp_path):
    # Keras returns a go_backwards layer's outputs in processing order, which
    # is the order run_chunk records a "rev" direction in.
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True, go_backwards=True)])
    loaded = _keras_roundtrip(keras, tmp_path, model, time_order=False)
    assert loaded.layers[0].go_backwards
    assert [d for d, _ in loaded.layers[0].directions()] == ["rev"]


def test_keras_go_backwards_feeding_another_lstm(keras, tmp_path):
    # Keras hands a go_backwards layer's sequence to the next layer last step
    # first; the stack must read it in that order to match Keras' outputs.
    model = keras.Sequential(
        [
            keras.Input((6, 3)),
            keras.layers.LSTM(4, return_sequences=True, go_backwards=True, name="back"),
            keras.layers.LSTM(2, return_sequences=True, name="top"),
        ]
    )
    loaded = _keras_roundtrip(keras, tmp_path, model, name="gb")
    assert loaded.layers[0].go_backwards and loaded.layers[0].output_reversed
    assert not loaded.layers[1].go_backwards
    one = load_model(tmp_path / "gb.keras", options=LoadOptions(layer_name="back"))
    assert one.layers[0].go_backwards and len(one.layers) == 1
    # with lengths Keras reverses the padding too: refused, not silently different
    x = X_BTD.transpose(1, 0, 2)
    with pytest.raises(ConfigError, match="hands its outputs on reversed"):
        run_chunk(loaded, x, np.full(x.shape[1], x.shape[0] - 1))


def test_keras_weights_file_needs_its_config(keras, tmp_path):
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True, activation="relu")])
    _randomise_biases(model)
    model.save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(ModelError, match=r"m\.json"):
        load_model(tmp_path / "m.weights.h5")
    (tmp_path / "m.json").write_text(model.to_json())
    loaded = load_model(tmp_path / "m.weights.h5")
    assert loaded.layers[0].activations.cell_output == "relu"
    diff = np.abs(hidden(loaded, X_BTD.transpose(1, 0, 2)).transpose(1, 0, 2) - model.predict(X_BTD, verbose=0)).max()
    record("keras", diff)


def test_keras_unzipped_folder(keras, tmp_path):
    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True)])
    model.save(tmp_path / "folder", zipped=False)
    assert detect_format(tmp_path / "folder") == "keras"
    loaded = load_model(tmp_path / "folder")
    diff = np.abs(hidden(loaded, X_BTD.transpose(1, 0, 2)).transpose(1, 0, 2) - model.predict(X_BTD, verbose=0)).max()
    record("keras", diff)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Keras tracing the Lambda on empty arrays
def test_keras_lambda_never_runs(keras, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inp = keras.Input((6, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    out = keras.layers.LSTM(4, return_sequences=True)(x)
    model = keras.Model(inp, out)
    model.save(tmp_path / "lam.keras")
    # Plant code in the config: a loader that deserialised layers would run it.
    with zipfile.ZipFile(tmp_path / "lam.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["config"]["function"] = "__import__('os').system('touch MARKER')"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "lam.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    loaded = load_model(tmp_path / "lam.keras")
    assert loaded.layers[0].H == 4
    assert not (tmp_path / "MARKER").exists()


def test_keras_version_decides_hard_sigmoid(keras, tmp_path):
    import h5py

    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4, recurrent_activation="hard_sigmoid")])
    model.save(tmp_path / "k2.h5")
    with h5py.File(tmp_path / "k2.h5", "r+") as f:
        f.attrs["keras_version"] = "2.15.0"
    loaded = load_model(tmp_path / "k2.h5")
    assert loaded.layers[0].activations.gate == "hard_sigmoid"  # 0.2·x + 0.5


def test_keras_size_guards(keras, tmp_path, monkeypatch):
    from lstm_doctor.load import keras as keras_importer

    model = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4)])
    model.save(tmp_path / "g.keras")
    model.save(tmp_path / "g.h5")
    monkeypatch.setattr(keras_importer, "MAX_DATASET_BYTES", 100)
    for ext in (".keras", ".h5"):
        with pytest.raises(ModelError, match="over the 100-byte limit"):
            load_model(tmp_path / f"g{ext}")
    monkeypatch.setattr(keras_importer, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(ModelError, match="config.json is .* over the 100-byte limit"):
        load_model(tmp_path / "g.keras")


def test_keras_several_unconnected_lstms(keras, tmp_path):
    a, b = keras.Input((6, 3)), keras.Input((6, 3))
    out = keras.layers.Concatenate()([keras.layers.LSTM(2, name="left")(a), keras.layers.LSTM(3, name="right")(b)])
    keras.Model([a, b], out).save(tmp_path / "two.keras")
    with pytest.raises(ModelError, match="'left', 'right'.*--layer-name"):
        load_model(tmp_path / "two.keras")
    assert load_model(tmp_path / "two.keras", options=LoadOptions(layer_name="right")).layers[0].H == 3


# ---------------------------------------------------------------------------
# ONNX



def _reference_lstm_class():
    """ONNX's reference LSTM, with the f, g, h the node's ``activations`` name.

    The reference implementation computes the gate order, peepholes and biases
    but ignores ``activations``; only the three functions are swapped in here.
    """
    from onnx.reference.ops.op_lstm import LSTM as ReferenceLSTM

    functions = {"Sigmoid": lambda x: 1 / (1 + np.exp(-x)), "Tanh": np.tanh, "Relu": lambda x: np.maximum(x, 0)}

    class LSTM(ReferenceLSTM):
        op_domain = ""

        def __init__(self, onnx_node, run_params):
            super().__init__(onnx_node, run_params)
            names = [a.decode() if isinstance(a, bytes) else a for a in (self.activations or [])]
            if names:
                self.f, self.g, self.h = (functions[n] for n in names[:3])

    return LSTM


def _onnx_lstm(tmp_path, direction="forward", activations=None, extra=None, initial=False, layout=0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    dirs, H, D = (2 if direction == "bidirectional" else 1), 4, 3
    arrays = {
        "W": rng.normal(0, 0.5, (dirs, 4 * H, D)),
        "R": rng.normal(0, 0.5, (dirs, 4 * H, H)),
        "B": rng.normal(0, 0.5, (dirs, 8 * H)),
        "P": rng.normal(0, 0.5, (dirs, 3 * H)),
    }
    if initial:
        arrays["h0"] = np.repeat(rng.normal(0, 0.5, (dirs, 1, H)), 2, axis=1)
        arrays["c0"] = np.repeat(rng.normal(0, 0.5, (dirs, 1, H)), 2, axis=1)
        if layout:
            arrays["h0"], arrays["c0"] = arrays["h0"].transpose(1, 0, 2), arrays["c0"].transpose(1, 0, 2)
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    attrs = {"hidden_size": H, "direction": direction, "layout": layout, **(extra or {})}
    if activations:
        attrs["activations"] = activations * dirs
    inputs = ["X", "W", "R", "B", "", "h0" if initial else "", "c0" if initial else "", "P"]
    node = helper.make_node("LSTM", inputs, ["Y"], name="enc", **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.save(model, tmp_path / "lstm.onnx")
    return model


def _onnx_run(model, x):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[_reference_lstm_class()]).run(None, {"X": x})[0]


@pytest.mark.parametrize(
    "direction, activations",
    [
        ("forward", ["Sigmoid", "Tanh", "Sigmoid"]),
        ("bidirectional", ["Sigmoid", "Relu", "Tanh"]),
        ("reverse", None),
    ],
)
def test_onnx_lstm_node(tmp_path, direction, activations):
    model = _onnx_lstm(tmp_path, direction, activations, initial=True)
    assert detect_format(tmp_path / "lstm.onnx") == "onnx"
    loaded = load_model(tmp_path / "lstm.onnx")
    assert loaded.input_layout == "tbd" and loaded.stored_gate_order == "iofc"
    layer = loaded.layers[0]
    assert layer.forward.peephole is not None
    assert layer.go_backwards == (direction == "reverse")
    if activations:
        assert (layer.activations.gate, layer.activations.candidate, layer.activations.cell_output) == (
            "sigmoid", activations[1].lower(), activations[2].lower()
        )
    y = _onnx_run(model, X_TBD)  # (T, dirs, B, H)
    expected = np.concatenate([y[:, d] for d in range(y.shape[1])], axis=-1)
    record("onnx", np.abs(hidden(loaded, X_TBD) - expected).max())
    check_inspect(loaded, "onnx")


def test_onnx_layout_clip_and_refusals(tmp_path):
    model = _onnx_lstm(tmp_path, extra={"clip": 2.5}, initial=True, layout=1)
    loaded = load_model(tmp_path / "lstm.onnx")
    assert loaded.layers[0].clip == 2.5
    assert loaded.input_layout == "btd" and any("layout=1" in n for n in loaded.notes)
    y = _onnx_run(model, X_BTD)  # layout 1: (B, T, dirs, H); the reference ignores clip
    unclipped = replace(loaded, layers=(replace(loaded.layers[0], clip=None),))
    diff = np.abs(hidden(unclipped, X_BTD.transpose(1, 0, 2)) - y[:, :, 0].transpose(1, 0, 2)).max()
    record("onnx", diff)
    _onnx_lstm(tmp_path, extra={"input_forget": 1})
    with pytest.raises(ModelError, match="input_forget=1"):
        load_model(tmp_path / "lstm.onnx")
    _onnx_lstm(tmp_path, activations=["Sigmoid", "Elu", "Tanh"])
    with pytest.raises(ModelError, match="activation Elu"):
        load_model(tmp_path / "lstm.onnx")


def test_onnx_exported_from_torch_is_stacked(tmp_path):
    lstm = _torch_lstm(num_layers=2, bidirectional=True)
    torch.onnx.export(lstm, (torch.from_numpy(X_TBD),), str(tmp_path / "t.onnx"), dynamo=False)
    loaded = load_model(tmp_path / "t.onnx")
    assert len(loaded.layers) == 2 and loaded.layers[1].bidirectional
    record("onnx (torch export)", np.abs(hidden(loaded, X_TBD) - _torch_out(lstm, X_TBD)).max())
    names = [n.name for n in onnx.load(str(tmp_path / "t.onnx")).graph.node if n.op_type == "LSTM"]
    one = load_model(tmp_path / "t.onnx", options=LoadOptions(layer_name=names[1]))
    assert len(one.layers) == 1 and one.D == 10


# ---------------------------------------------------------------------------
# Tweet2Vec


def test_tweet2vec_preset_reproduces_the_case(tmp_path):
    """CASE.md: positive-mean weights saturate every gate; with h = o·σ(c) the
    mean hidden value walks 0.25, σ(1), σ(2), ... the same for every input."""
    path = make_fixtures.write_tweet2vec(tmp_path, D=10, H=256)
    assert detect_format(path) == "tweet2vec"
    model = load_model(path, options=LoadOptions(preset="tweet2vec"))
    assert model.layers[0].activations.cell_output == "sigmoid"
    assert model.layers[0].forward.peephole is not None
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 0.07, (16, 3, 10)) * (rng.random((16, 3, 10)) > 0.5)  # tiny ReLU-like inputs
    rec = run_chunk(model, x.astype(np.float32), engine="numpy")[(0, "fwd")]
    mean_h = rec.h.mean(axis=(1, 2))
    assert abs(mean_h[0] - 0.25) < 0.02
    steps = np.arange(1, 16)
    saturated = np.array([min(rec.i[t].min(), rec.f[t].min(), rec.o[t].min()) > 0.99 for t in steps])
    assert saturated.all()
    assert np.abs(mean_h[1:] - 1 / (1 + np.exp(-steps))).max() < 0.01
    # Without the preset the standard equations are assumed, and a note says so.
    standard = load_model(path)
    assert standard.layers[0].activations.cell_output == "tanh"
    assert any("--preset tweet2vec" in n for n in standard.notes)
    check_inspect(model, "tweet2vec")


def test_tweet2vec_25_arrays_and_conv_stack(tmp_path):
    from lstm_doctor.load import tweet2vec

    encoder = make_fixtures.write_tweet2vec(tmp_path, D=10, H=8)
    full = make_fixtures.write_tweet2vec(tmp_path, D=10, H=8, conv=True)
    assert detect_format(full) == "tweet2vec"
    a, b = load_model(encoder), load_model(full)
    for role in ("W", "U", "b", "peephole", "h0", "c0"):
        assert np.array_equal(getattr(a.layers[0].forward, role), getattr(b.layers[0].forward, role))
    assert any("conv stack" in n for n in b.notes)
    convs = tweet2vec.conv_stack(full)
    assert [w.shape for w, _ in convs] == list(make_fixtures.CONV_SHAPES)
    assert [bias.shape for _, bias in convs] == [(256,)] * 4
    with pytest.raises(ModelError, match="17"):
        tweet2vec.conv_stack(encoder)


def test_tweet2vec_maps_names_to_gates(tmp_path):
    arrays = make_fixtures.tweet2vec_lstm(D=2, H=3)
    for k in range(len(arrays)):
        arrays[k] = np.full_like(arrays[k], k)  # each array holds its own index
    path = make_fixtures.dump(arrays, tmp_path / "enc.npy")
    p = load_model(path).layers[0].forward
    for g, (w, u, b) in zip("ifgo", [(5, 6, 7), (8, 9, 10), (11, 12, 13), (14, 15, 16)]):
        assert (p.gate_block(p.W, g) == w).all() and (p.gate_block(p.U, g) == u).all()
        assert (p.gate_block(p.b, g) == b).all()
    assert p.peephole.tolist() == [[2.0] * 3, [3.0] * 3, [4.0] * 3]
    assert (p.h0 == 0).all() and (p.c0 == 1).all()


def test_tweet2vec_global_hyper_parameters(tmp_path):
    path = make_fixtures.write_tweet2vec(tmp_path, D=10, H=8)
    note = next(n for n in load_model(path).notes if n.startswith("hyper-parameters"))
    assert "max_chars=150" in note and "encoder_size=8" in note
    assert "learning_rate=0.01 (a Theano shared variable, read without Theano)" in note
    with pytest.raises(ModelError, match="hyper-parameter file; load the weights, encoder_tweet2vec_3.npy"):
        load_model(tmp_path / "encoder_tweet2vec_3_global.npy")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a[:-1], "found 16 arrays; a Tweet2Vec file holds 17"),
        (lambda a: a[:6] + [np.zeros((7, 8), np.float32)] + a[7:], r"array 6 \(U_h2input_gate\) has shape \(7, 8\)"),
        (lambda a: a[:15] + [np.zeros((8, 9), np.float32)] + a[16:], r"array 15 \(U_h2ouput_gate\) has shape \(8, 9\)"),
        (lambda a: a[:2] + [np.zeros(5, np.float32)] + a[3:], r"array 2 \(W_pci\) has shape \(5,\)"),
    ],
)
def test_tweet2vec_malformed_lists(tmp_path, mutate, message):
    arrays = mutate(make_fixtures.tweet2vec_lstm(D=10, H=8))
    path = make_fixtures.dump(arrays, tmp_path / "bad.npy")
    with pytest.raises(ModelError, match=message):
        load_model(path, model_format="tweet2vec")


def test_committed_fixtures_load():
    model = load_model(FIXTURES / "encoder_tweet2vec_3.npy", options=LoadOptions(preset="tweet2vec"))
    assert model.layers[0].H == 8 and len(model.source_files) == 2
    assert load_model(FIXTURES / "lasagne_lstm.npz").name == "enc"
    assert load_model(FIXTURES / "lasagne_param_values.pkl").layers[0].forward.peephole is not None
    assert sum(p.stat().st_size for p in FIXTURES.iterdir() if p.is_file()) < 1 << 20


# ---------------------------------------------------------------------------
# Lasagne


def _lasagne_step_reference(params, x):
    """Lasagne's LSTMLayer.get_output_for step, transcribed (NumPy, one sequence set)."""
    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    gates = ("ingate", "forgetgate", "cell", "outgate")
    W_in = np.concatenate([params[f"W_in_to_{g}"] for g in gates], axis=1)
    W_hid = np.concatenate([params[f"W_hid_to_{g}"] for g in gates], axis=1)
    b = np.concatenate([params[f"b_{g}"] for g in gates])
    H = W_hid.shape[0]
    cell = np.repeat(params["cell_init"], x.shape[1], axis=0).astype(np.float64)
    hid = np.repeat(params["hid_init"], x.shape[1], axis=0).astype(np.float64)
    out = []
    for x_t in x:
        g = x_t @ W_in + b + hid @ W_hid
        ingate = g[:, :H] + cell * params["W_cell_to_ingate"]
        forgetgate = g[:, H:2 * H] + cell * params["W_cell_to_forgetgate"]
        cell = sigmoid(forgetgate) * cell + sigmoid(ingate) * np.tanh(g[:, 2 * H:3 * H])
        outgate = g[:, 3 * H:] + cell * params["W_cell_to_outgate"]
        hid = sigmoid(outgate) * np.tanh(cell)
        out.append(hid)
    return np.stack(out)


@pytest.mark.parametrize("form", ["npz-prefixed", "dict-pickle", "value-list", "shared-list", "layer"])
def test_lasagne_forms(tmp_path, form):
    params = make_fixtures.lasagne_params(D=3, H=4)
    theano = make_fixtures.TheanoLookAlikes()
    path = tmp_path / "params.pkl"
    if form == "npz-prefixed":
        path = tmp_path / "params.npz"
        np.savez(path, **{f"enc.{k}": v for k, v in params.items()})
    elif form == "dict-pickle":
        make_fixtures.dump(dict(params), path)
    elif form == "value-list":  # conv params of layers below come first
        make_fixtures.dump(make_fixtures.tweet2vec_conv(shapes=((5, 2, 3),)) + list(params.values()), path)
    elif form == "shared-list":
        make_fixtures.dump([theano.shared(v, k) for k, v in params.items()], path, theano.modules(),
                           use_joblib=False)
    else:
        make_fixtures.lasagne_layer_pickle(params, path)
    assert detect_format(path) == "lasagne"
    model = load_model(path)
    expected = _lasagne_step_reference(params, X_TBD.astype(np.float64))
    record("lasagne (transcribed step)", np.abs(hidden(model, X_TBD) - expected).max())
    check_inspect(model, "lasagne")


def test_lasagne_pickled_layer_declares_its_nonlinearity(tmp_path):
    params = make_fixtures.lasagne_params(D=3, H=4)
    make_fixtures.lasagne_layer_pickle(params, tmp_path / "layer.pkl", nonlinearity="rectify", backwards=True)
    model = load_model(tmp_path / "layer.pkl")
    assert model.name == "encoder"
    assert model.layers[0].activations.cell_output == "relu"
    assert model.layers[0].go_backwards


def test_lasagne_lists_without_peepholes_or_inits(tmp_path):
    for peepholes, inits, n in ((True, False, 15), (False, True, 14), (False, False, 12)):
        params = make_fixtures.lasagne_params(D=3, H=4, peepholes=peepholes, inits=inits)
        assert len(params) == n
        make_fixtures.dump(list(params.values()), tmp_path / f"p{n}.pkl")
        model = load_model(tmp_path / f"p{n}.pkl")
        assert (model.layers[0].forward.peephole is not None) == peepholes
        if inits:
            assert np.array_equal(model.layers[0].forward.h0, params["hid_init"][0])


def test_lasagne_prefixes_and_preset(tmp_path):
    a, b = make_fixtures.lasagne_params(3, 4), make_fixtures.lasagne_params(4, 2, seed=5)
    np.savez(tmp_path / "two.npz", **{f"enc_{k}": v for k, v in a.items()}, **{f"dec_{k}": v for k, v in b.items()})
    with pytest.raises(ModelError, match="'dec_', 'enc_'.*--layer-prefix"):
        load_model(tmp_path / "two.npz")
    model = load_model(tmp_path / "two.npz", options=LoadOptions(layer_prefix="dec_", preset="tweet2vec"))
    assert model.layers[0].H == 2 and model.layers[0].activations.cell_output == "sigmoid"
    np.savez(tmp_path / "bad.npz", **{**a, "W_hid_to_cell": np.zeros((3, 3), np.float32)})
    with pytest.raises(ModelError, match=r"W_hid_to_cell has shape \(3, 3\), expected \(4, 4\)"):
        load_model(tmp_path / "bad.npz")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_model(tmp_path / "two.npz", options=LoadOptions(layer_prefix="dec_", preset="nope"))


