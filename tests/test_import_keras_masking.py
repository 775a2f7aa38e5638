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


def _seq_model(tmp_path, layer):
    rng = np.random.default_rng(33)
    model = keras.Sequential([keras.Input((T, D)), keras.layers.Masking(0.0), layer])
    for var in model.weights:
        var.assign(rng.normal(0, 0.6, size=var.shape).astype("float32"))
    model.save(tmp_path / "s.keras")
    return model


def _trace(tmp_path, args):
    from click.testing import CliRunner

    from lstm_doctor.cli.main import cli

    result = CliRunner().invoke(cli, ["trace", str(tmp_path / "s.keras"), "--out", str(tmp_path / "t.npz"),
                                      "--engine", "numpy", *args])
    assert result.exit_code == 0, result.output
    return dict(np.load(tmp_path / "t.npz"))


@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "go_backwards"])
def test_trace_positions_are_the_users_steps_under_mask(tmp_path, go_backwards):
    """trace with --mask (or --padding pre): step t of the trace is step t of the inputs, the
    state Keras carries over a masked step is there, and the gates of a masked step are NaN."""
    model = _seq_model(tmp_path, keras.layers.LSTM(H, return_sequences=True, go_backwards=go_backwards))
    x = _pre_padded()
    x[0, 3] = 0.0
    keras_h = model.predict(x, verbose=0)
    if go_backwards:  # Keras returns a go_backwards sequence in processing order
        keras_h = keras_h[:, ::-1]
    np.save(tmp_path / "x.npy", x)
    trace = _trace(tmp_path, ["--inputs", str(tmp_path / "x.npy"), "--mask"])
    key = "l0.rev." if go_backwards else ""  # a go_backwards layer is traced as a backward direction
    diff = np.abs(trace[key + "h"] - keras_h).max()
    print(f"keras Masking trace h (--mask, go_backwards={go_backwards}) max |diff| {diff:.2g}")
    assert diff <= 1e-5
    valid = np.any(x != 0, axis=-1)
    np.testing.assert_array_equal(trace["valid"], valid)
    assert np.isnan(trace[key + "f"][~valid]).all() and np.isfinite(trace[key + "f"][valid]).all()
    # --lengths --padding pre: the same positions (no inner masked step this time)
    x2 = _pre_padded()
    np.save(tmp_path / "x2.npy", x2)
    np.save(tmp_path / "L.npy", LENGTHS)
    pre = _trace(tmp_path, ["--inputs", str(tmp_path / "x2.npy"), "--lengths", str(tmp_path / "L.npy"),
                            "--padding", "pre", "--steps", "2:9"])
    keras_h2 = model.predict(x2, verbose=0)
    keras_h2 = keras_h2[:, ::-1] if go_backwards else keras_h2
    assert np.abs(pre[key + "h"] - keras_h2[:, 2:9]).max() <= 1e-5
    np.testing.assert_array_equal(pre["valid"], np.any(x2 != 0, axis=-1)[:, 2:9])


def test_trace_bidirectional_under_mask(tmp_path):
    """Both directions at the user's steps: Keras' Bidirectional outputs (zero at masked steps)
    equal the trace's h wherever the cell ran."""
    model = _seq_model(tmp_path, keras.layers.Bidirectional(keras.layers.LSTM(H, return_sequences=True)))
    x = _pre_padded()
    x[2, 5] = 0.0
    np.save(tmp_path / "x.npy", x)
    trace = _trace(tmp_path, ["--inputs", str(tmp_path / "x.npy"), "--mask"])
    keras_h = model.predict(x, verbose=0)
    valid = trace["valid"]
    both = np.concatenate([trace["l0.h"], trace["l0.rev.h"]], axis=-1)
    assert np.abs(both[valid] - keras_h[valid]).max() <= 1e-5


def test_what_if_mask_runs_diagnose_masking(tmp_path):
    """what-if --mask reads the inputs as diagnose --mask does: same lengths, the mask stated in
    the header, the same baseline findings."""
    import json

    from click.testing import CliRunner

    from lstm_doctor.cli.main import cli

    _model(tmp_path)
    np.save(tmp_path / "x.npy", _pre_padded())
    common = [str(tmp_path / "m.keras"), "--inputs", str(tmp_path / "x.npy"), "--mask", "--format", "json",
              "--exit-zero", "--engine", "numpy"]
    wi = CliRunner().invoke(cli, ["what-if", *common])
    assert wi.exit_code == 0, wi.output
    wi = json.loads(wi.output)
    dg = json.loads(CliRunner().invoke(cli, ["diagnose", *common, "--no-gradients"]).output)
    assert wi["inputs"]["lengths_given"] is True
    assert any(n.startswith("mask:") for n in wi["inputs"]["notes"])
    masking = [a for a in wi["model"]["layers"][0]["assumptions"] if a["item"] == "padding and masking"]
    assert masking and masking[0]["source"] == "flag" and "Keras mask" in masking[0]["value"]
    baseline = next(r for r in wi["what_if"] if r["fix"] == "none")
    assert sorted(baseline["remaining_codes"]) == sorted({f["code"] for f in dg["findings"]})


def test_what_if_input_fix_keeps_pre_padding(tmp_path):
    """An input fix on pre-padded inputs: the fixed inputs are Keras' model's inputs / RMS,
    still pre-padded (the masked steps stay skipped, not read as data)."""
    from lstm_doctor.experiments.whatif import State, rescale_inputs

    model = _model(tmp_path)
    x = _pre_padded()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "L.npy", LENGTHS)
    loaded = load_model(tmp_path / "m.keras")
    source = load_inputs(tmp_path / "x.npy", "btd", tmp_path / "L.npy", model=loaded, padding="pre")
    out = rescale_inputs(State(loaded, source))
    rms = out.data["rms"]
    diff = np.abs(_final(loaded, out.state.source) - model.predict(x / rms, verbose=0)).max()
    assert diff <= 1e-5


def test_observed_trace_at_the_users_steps_under_mask(tmp_path):
    """--observed with --mask: Keras' own per-step h (at the user's steps) is the declared
    model's, so A204 must not claim another configuration or no fit."""
    import json

    from click.testing import CliRunner

    from lstm_doctor.cli.main import cli

    model = _seq_model(tmp_path, keras.layers.LSTM(H, return_sequences=True))
    x = _pre_padded()
    x[0, 3] = 0.0
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "h.npy", model.predict(x, verbose=0))
    r = CliRunner().invoke(cli, ["diagnose", str(tmp_path / "s.keras"), "--inputs", str(tmp_path / "x.npy"), "--mask",
                                 "--observed", str(tmp_path / "h.npy"), "--format", "json", "--exit-zero",
                                 "--engine", "numpy", "--no-gradients"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert "A204" not in {f["code"] for f in report["findings"]}, [f["message"] for f in report["findings"]]
    declared = report["statistics"]["observed"]["declared"]
    assert declared["fits"] and declared["mean_abs_diff"] <= 1e-5
