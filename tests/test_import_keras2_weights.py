"""Keras 2 ``save_weights`` HDF5 files without their architecture JSON.

What the file leaves open (recurrent_activation, activation, go_backwards) is its
Keras version's default, or what ``--gate-activation``, ``--activation`` and
``--go-backwards`` state; the report says which (file, default, flag). A flag that
contradicts what a file states, and a flag for a format that states these itself,
are refused in one line.

The files are written by Keras' own legacy HDF5 writer
(``keras.src.legacy.saving.legacy_h5_format``) from a Keras 3 model whose
hard sigmoid is Keras 2's clip(0.2·x + 0.5, 0, 1), with the ``keras_version`` and
``backend`` attributes of a Keras 2 file; one is written with h5py in Keras 2's
own naming (``lstm_1/kernel:0``). The load must give that model's forward pass.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from lstm_doctor.capture.engines import final_hidden, run_chunk  # noqa: E402
from lstm_doctor.cli.main import cli  # noqa: E402
from lstm_doctor.load import LoadOptions, load_model  # noqa: E402

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
X = np.random.default_rng(41).normal(size=(3, 6, 3)).astype(np.float32)
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "tweet2vec_like", "broken")


@keras.saving.register_keras_serializable(package="lstm_doctor_tests")  # a Bidirectional clones its layer
def keras2_hard_sigmoid(x):
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def _keras_model(layer, seed=42):
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((6, 3)), layer])
    for var in model.weights:
        var.assign(rng.normal(0, 1.0, size=var.shape).astype("float32"))
    return model


def _keras2_weights(path, lstm, version):
    """Keras 2's own naming, written with h5py."""
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


def _legacy_weights(path, model, version: str | None):
    """Keras' legacy ``save_weights`` writer, with a Keras 2 file's attributes (or none)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
        if version is None:
            del f.attrs["keras_version"]
        else:
            f.attrs["keras_version"] = version.encode()
        f.attrs["backend"] = b"tensorflow"
    return path


def _h(model, x=X):
    return run_chunk(model, x.transpose(1, 0, 2), engine="numpy")


def _stated(model, item, k=0):
    return next((v, s) for i, v, s in model.assumptions if i == f"l{k}:{item}")


@pytest.mark.parametrize("version, gate", [("2.2.4", "hard_sigmoid"), ("2.4.0", "sigmoid")])
def test_keras2_weights_only_defaults(tmp_path, version, gate):
    lstm = keras.layers.LSTM(4, return_sequences=True,
                             recurrent_activation=keras2_hard_sigmoid if gate == "hard_sigmoid" else "sigmoid")
    model = _keras_model(lstm)
    _keras2_weights(tmp_path / "w.h5", lstm, version)
    loaded = load_model(tmp_path / "w.h5")
    assert loaded.layers[0].activations.gate == gate
    assert _stated(loaded, "gate activation") == (f"{gate} (recurrent_activation, Keras {version}'s default)",
                                                  "default")
    assert _stated(loaded, "direction")[1] == "default"
    assert any("weights-only Keras" in n and "--gate-activation" in n for n in loaded.notes)
    h = _h(loaded)[(0, "fwd")].h.transpose(1, 0, 2)
    diff = np.abs(h - model.predict(X, verbose=0)).max()
    print(f"keras 2 weights-only ({version}, {gate}) max |diff| {diff:.2g}")
    assert diff <= 1e-5


# (what the model set, the flags that state it, the LoadOptions of the same)
STATED = {
    "hard_sigmoid gate in a 2.4 file": (
        {"recurrent_activation": keras2_hard_sigmoid},
        ["--gate-activation", "hard_sigmoid"], {"gate_activation": "hard_sigmoid"},
    ),
    "go_backwards, relu": (
        {"go_backwards": True, "activation": "relu"},
        ["--go-backwards", "--activation", "relu"], {"go_backwards": True, "activation": "relu"},
    ),
}


@pytest.mark.parametrize("case", list(STATED))
def test_flags_state_what_the_file_leaves_open(tmp_path, case):
    kwargs, flags, options = STATED[case]
    model = _keras_model(keras.layers.LSTM(4, **kwargs))
    path = _legacy_weights(tmp_path / "w.h5", model, "2.4.0")
    expected = model.predict(X, verbose=0)
    loaded = load_model(path, options=LoadOptions(**options))
    diff = np.abs(final_hidden(loaded, _h(loaded)) - expected).max()
    print(f"keras 2 weights-only with {' '.join(flags)} max |diff| {diff:.2g}")
    assert diff <= 1e-5
    # without the flags the version's defaults are a different model
    plain = load_model(path)
    assert np.abs(final_hidden(plain, _h(plain)) - expected).max() > 1e-2
    # the report header: each setting, and where it came from
    np.save(tmp_path / "x.npy", X)
    result = CliRunner().invoke(cli, ["diagnose", str(path), "--inputs", str(tmp_path / "x.npy"), *flags,
                                      "--format", "json", "--exit-zero", "--engine", "numpy", "--no-gradients"])
    assert result.exit_code == 0, result.output
    stated = {a["item"]: a for a in json.loads(result.output)["model"]["layers"][0]["assumptions"]}
    assert "activations" not in stated  # one item per setting instead
    given = {"recurrent_activation": "gate activation", "activation": "activation", "go_backwards": "direction"}
    for key, item in given.items():
        assert stated[item]["source"] == ("flag" if key in kwargs else "default"), (item, stated[item])
    if "go_backwards" in kwargs:
        assert "go_backwards=True" in stated["direction"]["value"]


def test_every_model_command_takes_the_flags(tmp_path):
    """trace, inspect, what-if, compare and check read the file as diagnose does."""
    model = _keras_model(keras.layers.LSTM(4, return_sequences=True, recurrent_activation=keras2_hard_sigmoid))
    path = str(_legacy_weights(tmp_path / "w.h5", model, "2.4.0"))
    np.save(tmp_path / "x.npy", X)
    x = str(tmp_path / "x.npy")
    flag = ["--gate-activation", "hard_sigmoid"]
    run = CliRunner().invoke

    r = run(cli, ["trace", path, "--inputs", x, "--out", str(tmp_path / "t.npz"), "--engine", "numpy", *flag])
    assert r.exit_code == 0, r.output
    assert np.abs(np.load(tmp_path / "t.npz")["h"] - model.predict(X, verbose=0)).max() <= 1e-5
    r = run(cli, ["inspect", path, "--format", "json", *flag])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["layers"][0]["activations"]["gate"] == "hard_sigmoid"
    r = run(cli, ["what-if", path, "--inputs", x, "--format", "json", "--exit-zero", "--engine", "numpy", *flag])
    assert r.exit_code == 0, r.output
    stated = {a["item"]: a for a in json.loads(r.output)["model"]["layers"][0]["assumptions"]}
    assert stated["gate activation"]["source"] == "flag"
    # compare: a file without keras_version needs the gate; the flag reaches both models
    bare = str(_legacy_weights(tmp_path / "bare.h5", model, None))
    r = run(cli, ["compare", bare, bare, "--inputs", x, "--engine", "numpy", "--format", "json"])
    assert r.exit_code == 2 and "--gate-activation" in r.output
    r = run(cli, ["compare", bare, bare, "--inputs", x, "--engine", "numpy", "--format", "json", *flag])
    assert r.exit_code == 0, r.output
    # check: the same settings as keys of a model entry
    (tmp_path / "lstm-doctor.toml").write_text(
        f'[[models]]\nmodel = "{bare}"\ninputs = "{x}"\ngate-activation = "hard_sigmoid"\n')
    r = run(cli, ["check", "--config", str(tmp_path / "lstm-doctor.toml"), "--format", "json", "--exit-zero",
                  "--engine", "numpy"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)["models"][0]["report"]
    stated = {a["item"]: a for a in report["model"]["layers"][0]["assumptions"]}
    assert stated["gate activation"]["source"] == "flag"


def test_a_file_without_keras_version_needs_the_gate(tmp_path):
    model = _keras_model(keras.layers.LSTM(4, recurrent_activation=keras2_hard_sigmoid))
    path = _legacy_weights(tmp_path / "w.h5", model, None)
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 2
    assert len(r.output.strip().splitlines()) == 1 and "--gate-activation" in r.output
    loaded = load_model(path, options=LoadOptions(gate_activation="hard_sigmoid"))
    diff = np.abs(final_hidden(loaded, _h(loaded)) - model.predict(X, verbose=0)).max()
    print(f"keras weights-only without keras_version, --gate-activation hard_sigmoid max |diff| {diff:.2g}")
    assert diff <= 1e-5
    assert _stated(loaded, "gate activation")[1] == "flag"


def test_a_flag_that_contradicts_the_file_is_refused(tmp_path):
    model = _keras_model(keras.layers.LSTM(4))
    model.save(tmp_path / "m.keras")
    m = str(tmp_path / "m.keras")
    for flags in (["--gate-activation", "hard_sigmoid"], ["--go-backwards"], ["--activation", "relu"]):
        r = CliRunner().invoke(cli, ["inspect", m, *flags])
        assert r.exit_code == 2, (flags, r.output)
        assert len(r.output.strip().splitlines()) == 1 and "contradicts" in r.output
    # a flag that agrees with the file is accepted, and the setting stays the file's
    loaded = load_model(m, options=LoadOptions(gate_activation="sigmoid", go_backwards=False))
    assert _stated(loaded, "gate activation")[1] == "file" and _stated(loaded, "direction")[1] == "file"
    # a Bidirectional's directions are fixed
    bi = _keras_model(keras.layers.Bidirectional(keras.layers.LSTM(4)))
    path = _legacy_weights(tmp_path / "bi.h5", bi, "2.4.0")
    r = CliRunner().invoke(cli, ["inspect", str(path), "--go-backwards"])
    assert r.exit_code == 2 and "Bidirectional" in r.output


def test_bidirectional_weights_only_with_a_flag(tmp_path):
    bi = _keras_model(keras.layers.Bidirectional(keras.layers.LSTM(4, recurrent_activation=keras2_hard_sigmoid)))
    path = _legacy_weights(tmp_path / "bi.h5", bi, "2.4.0")
    loaded = load_model(path, options=LoadOptions(gate_activation="hard_sigmoid"))
    diff = np.abs(final_hidden(loaded, _h(loaded)) - bi.predict(X, verbose=0)).max()
    print(f"keras 2 weights-only Bidirectional, --gate-activation hard_sigmoid max |diff| {diff:.2g}")
    assert diff <= 1e-5
    assert _stated(loaded, "direction")[1] == "file"


@pytest.mark.parametrize("command", ["inspect", "featurize", "trace", "diagnose"])
def test_the_flags_on_another_format_are_refused(tmp_path, command):
    args = {"featurize": ["--inputs", "t.txt", "--out", str(tmp_path / "f.npy")],
            "trace": ["--inputs", "x.npy", "--out", str(tmp_path / "t.npz")], "diagnose": [], "inspect": []}
    (tmp_path / "t.txt").write_text("a text\n")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 10), np.float32))
    with CliRunner().isolated_filesystem(temp_dir=tmp_path) as here:
        os.chdir(tmp_path)
        r = CliRunner().invoke(cli, [command, os.path.abspath(EXAMPLE), *args[command], "--gate-activation",
                                     "sigmoid"])
        os.chdir(here)
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and "--gate-activation" in r.output and "native" in r.output


def test_a205_names_only_what_no_flag_stated(tmp_path):
    model = _keras_model(keras.layers.LSTM(4))
    path = str(_legacy_weights(tmp_path / "w.h5", model, "2.2.4"))
    np.save(tmp_path / "x.npy", X)

    def a205(*flags):
        r = CliRunner().invoke(cli, ["diagnose", path, "--inputs", str(tmp_path / "x.npy"), *flags, "--format",
                                     "json", "--exit-zero", "--engine", "numpy", "--no-gradients"])
        assert r.exit_code == 0, r.output
        return [f for f in json.loads(r.output)["findings"] if f["code"] == "A205"]

    (partial,) = a205("--gate-activation", "sigmoid")
    assert sorted(partial["evidence"]["assumed"]) == ["activation", "direction"]
    assert a205("--gate-activation", "sigmoid", "--activation", "tanh", "--no-go-backwards") == []
