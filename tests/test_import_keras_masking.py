"""Keras masking and pre-padding, compared with Keras 3's own forward pass (NumPy backend).

``pad_sequences`` pads at the front by default, and a ``Masking`` layer makes
the LSTM carry h and c over every all-zero step. ``--mask`` and
``--lengths`` with ``--padding pre`` must give Keras' final states.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lstm_doctor.capture.engines import final_hidden, run_chunk  # noqa: E402
from lstm_doctor.load import load_model  # noqa: E402
from lstm_doctor.load.inputs import load_inputs  # noqa: E402

keras = pytest.importorskip("keras")
T, D, H = 9, 3, 5
LENGTHS = np.array([9, 4, 6, 1, 7])


def _pre_padded():
    rng = np.random.default_rng(31)
    x = np.zeros((len(LENGTHS), T, D), np.float32)
    for b, n in enumerate(LENGTHS):
        x[b, T - n :] = rng.normal(size=(n, D))
    return x


def _model(tmp_path, go_backwards=False):
    rng = np.random.default_rng(32)
    model = keras.Sequential([keras.Input((T, D)), keras.layers.Masking(0.0),
                              keras.layers.LSTM(H, go_backwards=go_backwards)])
    for var in model.weights:
        var.assign(rng.normal(0, 0.6, size=var.shape).astype("float32"))
    model.save(tmp_path / "m.keras")
    return model


def _final(model, source):
    x = source.read(0, source.n_sequences, model.dtype)
    return final_hidden(model, run_chunk(model, x, source.lengths, engine="numpy"))


@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "go_backwards"])
def test_pre_padding_and_mask_match_keras(tmp_path, go_backwards):
    model = _model(tmp_path, go_backwards)
    x = _pre_padded()
    x[0, 3] = 0.0  # a masked step inside a sequence: Keras carries the state over it too
    expected = model.predict(x, verbose=0)
    np.save(tmp_path / "x.npy", x)
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.masking == "Masking(mask_value=0)"
    masked = load_inputs(tmp_path / "x.npy", "btd", model=loaded, mask=True)
    assert masked.lengths.tolist() == [8, 4, 6, 1, 7]
    diff = np.abs(_final(loaded, masked) - expected).max()
    print(f"keras Masking + pre-padding (--mask, go_backwards={go_backwards}) max |diff| {diff:.2g}")
    assert diff <= 1e-5
    # --lengths --padding pre, on inputs without the inner zero step
    x2 = _pre_padded()
    np.save(tmp_path / "x2.npy", x2)
    np.save(tmp_path / "L.npy", LENGTHS)
    pre = load_inputs(tmp_path / "x2.npy", "btd", tmp_path / "L.npy", model=loaded, padding="pre")
    diff = np.abs(_final(loaded, pre) - model.predict(x2, verbose=0)).max()
    print(f"keras Masking + pre-padding (--padding pre, go_backwards={go_backwards}) max |diff| {diff:.2g}")
    assert diff <= 1e-5
    # --lengths alone reads the padding as data at the front: wrong, and visibly so
    post = load_inputs(tmp_path / "x2.npy", "btd", tmp_path / "L.npy", model=loaded)
    assert np.abs(_final(loaded, post) - model.predict(x2, verbose=0)).max() > 1e-2


def test_declared_masking_without_a_mask_is_said(tmp_path):
    _model(tmp_path)
    np.save(tmp_path / "x.npy", _pre_padded())
    loaded = load_model(tmp_path / "m.keras")
    source = load_inputs(tmp_path / "x.npy", "btd", model=loaded)
    assert any("declares masking" in n and "--mask" in n for n in source.notes)
    assert source.lengths is None


def test_cli_mask_flag(tmp_path):
    from click.testing import CliRunner

    from lstm_doctor.cli.main import cli

    _model(tmp_path)
    np.save(tmp_path / "x.npy", _pre_padded())
    result = CliRunner().invoke(cli, ["diagnose", str(tmp_path / "m.keras"), "--inputs", str(tmp_path / "x.npy"),
                                      "--mask", "--format", "json", "--exit-zero", "--engine", "numpy"])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.output)
    assert report["inputs"]["lengths_given"] is True
    assert any("mask:" in n for n in report["inputs"]["notes"])
