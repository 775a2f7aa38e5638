"""Keras cuDNN-layout weights (CuDNNLSTM, saved by Keras 2) read as Keras reads them.

A Keras 3 model is saved with Keras' own legacy HDF5 writer; its LSTM weights
are then rewritten, with h5py, into the layout Keras 2's ``CuDNNLSTM`` stores
(each gate's kernel block is cuDNN's row-major (H, D) matrix, the recurrent
block cuDNN's (H, H) matrix, the bias [input | recurrent]), and the class is
renamed ``CuDNNLSTM`` as a Keras 2 file names it. The loaded model must give
Keras' own forward pass of the original model.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lstm_doctor.capture.engines import run_chunk, to_time_order  # noqa: E402
from lstm_doctor.load import load_model  # noqa: E402

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

X = np.random.default_rng(5).normal(size=(3, 7, 5)).astype(np.float32)  # D=5 != H=4


def _to_cudnn(kernel, recurrent, bias, rng):
    """The plain layout → cuDNN's, written from cuDNN's formula z_g = W_g·x + R_g·h + bW_g + bR_g."""
    H = recurrent.shape[0]
    # W_g = K_g.T (H, D), stored flat in C order in a (D, H) buffer
    k = np.hstack([kg.T.reshape(kg.shape) for kg in np.hsplit(kernel, 4)])
    r = np.hstack([rg.T for rg in np.hsplit(recurrent, 4)])
    split = rng.normal(size=4 * H).astype(bias.dtype)
    return k, r, np.concatenate([bias - split, split])


def _hidden(model, x_btd):
    records = run_chunk(model, x_btd.transpose(1, 0, 2), engine="numpy")
    parts = [to_time_order(records[(0, d)].h, d, None) for d, _ in model.layers[0].directions()]
    return np.concatenate(parts, axis=-1).transpose(1, 0, 2)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_cudnn_layout_is_converted(tmp_path, bidirectional):
    rng = np.random.default_rng(6)
    lstm = keras.layers.LSTM(4, return_sequences=True)
    layer = keras.layers.Bidirectional(lstm) if bidirectional else lstm
    model = keras.Sequential([keras.Input((7, 5)), layer])
    for var in model.weights:
        var.assign(rng.normal(0, 0.6, size=var.shape).astype("float32"))
    expected = model.predict(X, verbose=0)
    path = tmp_path / "cudnn.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        inner = config["config"]["layers"][1]
        if bidirectional:
            inner["config"]["layer"]["class_name"] = "CuDNNLSTM"
            if inner["config"].get("backward_layer"):
                inner["config"]["backward_layer"]["class_name"] = "CuDNNLSTM"
        else:
            inner["class_name"] = "CuDNNLSTM"
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.2.4"
        f.attrs["backend"] = "tensorflow"
        weights = f["model_weights"]
        weights.attrs["keras_version"] = "2.2.4"
        group = weights[layer.name]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        for start in range(0, len(names), 3):
            kn, rn, bn = names[start : start + 3]
            k, r, b = _to_cudnn(group[kn][()], group[rn][()], group[bn][()], rng)
            for name, value in ((kn, k), (rn, r), (bn, b)):
                del group[name]
                group.create_dataset(name, data=value)
    loaded = load_model(path)
    assert any("cuDNN weight layout" in n for n in loaded.notes)
    diff = np.abs(_hidden(loaded, X) - expected).max()
    print(f"keras CuDNNLSTM (bidirectional={bidirectional}) max |diff| {diff:.2g}")
    assert diff <= 1e-5
