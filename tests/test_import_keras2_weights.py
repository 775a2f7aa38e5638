"""A Keras 2 ``save_weights`` HDF5 without its architecture JSON: the version's defaults are assumed and said.

The file is written with h5py in Keras 2's layout (root ``layer_names``,
``keras_version``, ``backend``; ``<layer>/<layer>/kernel:0`` ...), from a
Keras 3 model whose gate is Keras 2's hard sigmoid clip(0.2·x + 0.5, 0, 1),
the default before Keras 2.3. The load must give that model's forward pass.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lstm_doctor.capture.engines import run_chunk  # noqa: E402
from lstm_doctor.load import load_model  # noqa: E402

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
X = np.random.default_rng(41).normal(size=(3, 6, 3)).astype(np.float32)


def _keras2_weights(path, lstm, version):
    kernel, recurrent, bias = (np.asarray(v) for v in lstm.get_weights())
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"lstm_1"]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = version.encode()
        g = f.create_group("lstm_1")
        names = [b"lstm_1/kernel:0", b"lstm_1/recurrent_kernel:0", b"lstm_1/bias:0"]
        g.attrs["weight_names"] = names
        for name, value in zip(names, (kernel, recurrent, bias)):
            g.create_dataset(name.decode(), data=value)


@pytest.mark.parametrize("version, gate", [("2.2.4", "hard_sigmoid"), ("2.4.0", "sigmoid")])
def test_keras2_weights_only_defaults(tmp_path, version, gate):
    rng = np.random.default_rng(42)
    recurrent_activation = (lambda x: keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)) if gate == "hard_sigmoid" else "sigmoid"
    lstm = keras.layers.LSTM(4, return_sequences=True, recurrent_activation=recurrent_activation)
    model = keras.Sequential([keras.Input((6, 3)), lstm])
    for var in model.weights:
        var.assign(rng.normal(0, 1.0, size=var.shape).astype("float32"))
    _keras2_weights(tmp_path / "w.h5", lstm, version)
    loaded = load_model(tmp_path / "w.h5")
    assert loaded.layers[0].activations.gate == gate
    assert ("direction", "forward (go_backwards=False assumed)", "default") in loaded.assumptions
    assert any("weights-only Keras" in n and "assumed" in n for n in loaded.notes)
    h = run_chunk(loaded, X.transpose(1, 0, 2), engine="numpy")[(0, "fwd")].h.transpose(1, 0, 2)
    diff = np.abs(h - model.predict(X, verbose=0)).max()
    print(f"keras 2 weights-only ({version}, {gate}) max |diff| {diff:.2g}")
    assert diff <= 1e-5
