"""The canonical model's validation and the native format (lstm.toml + .npz)."""

from __future__ import annotations

import numpy as np
import pytest
from factory import direction, model, normal_inputs

from lstm_doctor.capture.engines import run_chunk
from lstm_doctor.errors import ConfigError, ModelError
from lstm_doctor.load import load_model, native
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"W": np.zeros((3, 8)), "U": np.zeros((2, 7))}, "U has shape (2, 7)"),
        ({"W": np.zeros((3, 12)), "U": np.zeros((2, 8))}, "W has shape (3, 12)"),
        ({"W": np.zeros((3, 8)), "U": np.zeros((2, 8)), "b": np.zeros(7)}, "b has shape (7,)"),
        ({"W": np.zeros((3, 8)), "U": np.zeros((2, 8)), "peephole": np.zeros(2)}, "peephole has shape"),
        ({"W": np.zeros(8), "U": np.zeros((2, 8))}, "expected (D, 4H)"),
        ({"W": np.array([["a"] * 8]), "U": np.zeros((2, 8))}, "dtype"),
        ({"W": np.zeros((3, 8)), "U": np.zeros((2, 8)), "dtype": np.float16}, "not supported"),
    ],
)
def test_validation_names_the_array_and_its_shape(kwargs, needle):
    with pytest.raises(ModelError, match=None) as err:
        make_direction(**kwargs, where="layer 0")
    assert needle in str(err.value) and "layer 0" in str(err.value)


def test_model_is_immutable_and_checks_stacking():
    d = direction(4, 3)
    with pytest.raises(ValueError):
        d.W[0, 0] = 1.0
    with pytest.raises(ModelError, match="layer 1: W expects D=4"):
        LSTMModel((Layer(d), Layer(d)))
    with pytest.raises(ConfigError, match="unknown activation 'nope'"):
        Activations(gate="nope")


def test_native_roundtrip_with_every_feature(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, 5))
    m = LSTMModel(
        (
            Layer(make_direction(rng.normal(size=(4, 20)), rng.normal(size=(5, 20)), peephole=p),
                  make_direction(rng.normal(size=(4, 20)), rng.normal(size=(5, 20)), peephole=p),
                  Activations(cell_output="sigmoid"), clip=3.0),
            Layer(make_direction(rng.normal(size=(10, 12)), rng.normal(size=(3, 12)))),
        ),
        name='a "quoted" name',
        input_layout="tbd",
    )
    native.save(m, tmp_path)
    back = load_model(tmp_path)
    assert back.name == m.name and back.input_layout == "tbd" and back.layers[0].clip == 3.0
    assert back.layers[0].activations.cell_output == "sigmoid"
    x = normal_inputs(n=3, T=5, D=4).transpose(1, 0, 2)
    a, b = run_chunk(m, x), run_chunk(back, x)
    for key in a:
        np.testing.assert_array_equal(a[key].h, b[key].h)


def test_native_reads_a_foreign_gate_order(tmp_path):
    m = model(3, 4)
    p = m.layers[0].forward
    # store as Keras-like i, f, c, o (same as canonical) and ONNX-like i, o, f, c
    H = 4
    to_iofc = lambda a: np.concatenate([a[..., :H], a[..., 3 * H :], a[..., H : 2 * H], a[..., 2 * H : 3 * H]], -1)  # noqa: E731
    np.savez(tmp_path / "w.npz", W=to_iofc(p.W), U=to_iofc(p.U), b=to_iofc(p.b))
    (tmp_path / "lstm.toml").write_text('[model]\nweights = "w.npz"\ngate_order = "iofc"\n')
    back = load_model(tmp_path / "lstm.toml")
    np.testing.assert_array_equal(back.layers[0].forward.U, p.U)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ('[model]\nweights = "w.npz"\n[activations]\ngate = "bogus"\n', "unknown activation"),
        ('[model]\nweights = "missing.npz"\n', "weights file not found"),
        ('[model]\n', "missing key model.weights"),
        ('[model]\nweights = "w.npz"\n[[layers]]\nW = "nope"\n', "array 'nope'"),
        ('[model]\nweights = "w.npz"\ngate_order = "ifgx"\n', "gate order"),
        ('model = 3\nweights = \n', "line 2"),
    ],
)
def test_spec_errors_name_the_key_or_line(tmp_path, spec, needle):
    m = model(3, 4)
    np.savez(tmp_path / "w.npz", W=m.layers[0].forward.W, U=m.layers[0].forward.U)
    (tmp_path / "lstm.toml").write_text(spec)
    with pytest.raises((ConfigError, ModelError)) as err:
        load_model(tmp_path)
    assert needle in str(err.value)


def test_native_format_keeps_go_backwards_and_output_order(tmp_path):
    from dataclasses import replace

    m = model(3, 4, layers=2)
    m = replace(m, layers=(replace(m.layers[0], go_backwards=True, output_reversed=True), m.layers[1]))
    native.save(m, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert [(layer.go_backwards, layer.output_reversed) for layer in back.layers] == [(True, True), (False, False)]
    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    want, got = run_chunk(m, x), run_chunk(back, x)
    for key in want:
        np.testing.assert_array_equal(got[key].h, want[key].h)
    # reading the outputs in processing order changes what the next layer sees
    plain = replace(m, layers=(replace(m.layers[0], output_reversed=False), m.layers[1]))
    assert not np.allclose(run_chunk(plain, x)[(1, "fwd")].h, want[(1, "fwd")].h)


@pytest.mark.parametrize(
    "line, message",
    [('go_backwards = "yes"', "must be true or false"), ("output_reversed = true", "only a go_backwards layer")],
)
def test_native_layer_flags_are_checked(tmp_path, line, message):
    native.save(model(3, 4), tmp_path / "m")
    spec = tmp_path / "m" / "lstm.toml"
    text = spec.read_text()
    spec.write_text(text.replace("[layers.activations]", line + "\n[layers.activations]", 1))
    with pytest.raises(ConfigError, match=message):
        load_model(tmp_path / "m")
