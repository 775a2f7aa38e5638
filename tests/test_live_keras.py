"""Live Keras 3 models (KERAS_BACKEND=numpy, set by conftest): recorded inputs and masks, parity,
the same findings as the saved ``.keras`` file, and broken twins."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import lstm_doctor  # noqa: E402

CREATED = "2026-01-01T00:00:00+00:00"


def tokens(n=16, T=12, vocab=30, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, (n, T))
    lengths = rng.integers(3, T + 1, n)
    lengths[0] = T
    for b in range(n):
        x[b, lengths[b]:] = 0
    return x, lengths


def embed_model():
    """Embedding(mask_zero) → LSTM → Dense."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), dtype="int32")
    e = keras.layers.Embedding(30, 10, mask_zero=True)(inp)
    h = keras.layers.LSTM(16, name="encoder")(e)
    return keras.Model(inp, keras.layers.Dense(3)(h)), "model.layers[2]"


def masked_bidirectional():
    """Masking → Bidirectional(LSTM) → Dense, on padded float features."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 6)),
            keras.layers.Masking(0.0),
            keras.layers.Bidirectional(keras.layers.LSTM(10, return_sequences=True), name="bi"),
            keras.layers.Dense(2),
        ]
    )
    return model, "model.layers[1]"


def conv_model():
    """Conv1D (channels last) → LSTM, full-length sequences."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((20, 4))
    c = keras.layers.Conv1D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.LSTM(12, return_sequences=True, name="rnn")(c)
    return keras.Model(inp, h), "model.layers[2]"


def batch_for(kind):
    if kind == "embed":
        x, lengths = tokens()
        return x, lengths
    rng = np.random.default_rng(1)
    if kind == "masked":
        x = rng.normal(size=(16, 12, 6)).astype("float32")
        lengths = rng.integers(3, 13, 16)
        lengths[0] = 12
        for b in range(16):
            x[b, lengths[b]:] = 0.0
        return x, lengths
    return rng.normal(size=(16, 20, 4)).astype("float32"), None


MAKERS = {"embed": embed_model, "masked": masked_bidirectional, "conv": conv_model}


def pin_gates(layer) -> None:
    """A positive weight mean scaled so that the recurrent term is ≈ 25 per gate (the seed case's mean 0.1
    at H = 256): every gate saturates."""
    rng = np.random.default_rng(1)
    subs = [layer.forward_layer, layer.backward_layer] if hasattr(layer, "forward_layer") else [layer]
    for sub in subs:
        weights = sub.get_weights()
        mean = 25.0 / sub.units
        sub.set_weights([mean + 0.05 * rng.standard_normal(w.shape).astype(w.dtype) for w in weights[:2]] + weights[2:])


def layer_at(model, path):
    return model.layers[int(path.rsplit("[", 1)[1].rstrip("]"))]


def comparable(findings):
    return [{k: v for k, v in f.items() if k != "module"} for f in findings]


@pytest.mark.parametrize("kind", list(MAKERS))
def test_parity_and_same_findings_as_the_keras_file(kind, tmp_path):
    model, path = MAKERS[kind]()
    x, lengths = batch_for(kind)
    report = lstm_doctor.diagnose(model, x, created=CREATED)
    assert report.modules == [path]
    check = report.parity[path]
    assert check["ok"] and check["max_abs_diff"] <= 1e-5 and check["values"] > 0
    live = report.reports[path]
    assert live["inputs"]["lengths_given"] == (lengths is not None)
    # the file route: the saved .keras file, the LSTM's input computed by a sub-model here
    layer = layer_at(model, path)
    model.save(tmp_path / "model.keras")
    front = keras.Model(model.inputs, layer.input)(x)
    front = np.asarray(front[0] if isinstance(front, (list, tuple)) else front)
    saved = lstm_doctor.diagnose(
        str(tmp_path / "model.keras"), inputs=front, lengths=lengths, layout="btd", created=CREATED
    )
    assert comparable(report.findings) == comparable(saved.findings)
    assert live["summary"]["headline"] == next(iter(saved.reports.values()))["summary"]["headline"]


@pytest.mark.parametrize("kind", list(MAKERS))
def test_broken_twin_is_flagged(kind):
    model, path = MAKERS[kind]()
    x, _ = batch_for(kind)
    healthy = lstm_doctor.diagnose(model, x)
    assert healthy.exit_code == 0, [f["code"] for f in healthy.findings if f["severity"] == "error"]
    pin_gates(layer_at(model, path))
    broken = lstm_doctor.diagnose(model, x)
    assert broken.exit_code == 1
    assert "W101" in {f["code"] for f in broken.findings}
    assert {f["module"] for f in broken.findings} == {path}
    sat = broken.metrics()[f"{path}/saturated_f"]
    assert sat > 0.2 and sat > 5 * healthy.metrics()[f"{path}/saturated_f"]
    assert broken.parity[path]["ok"]


def test_mask_becomes_lengths_and_holes_are_compacted():
    model, path = masked_bidirectional()
    x, lengths = batch_for("masked")
    report = lstm_doctor.diagnose(model, x)
    assert report.reports[path]["model"]["layers"][0]["directions"] == ["fwd", "rev"]
    x_holes = x.copy()
    x_holes[3, 1] = 0.0  # a masked step inside a sequence
    holes = lstm_doctor.diagnose(model, x_holes)
    assert holes.parity[path]["ok"]
    assert any("holes" in n for n in holes.reports[path]["model"]["notes"])


def test_nested_model_layers_are_named_by_path():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8, 3)), keras.layers.LSTM(5, return_sequences=True), keras.layers.LSTM(4)])
    outer = keras.Sequential([keras.Input((8, 3)), inner, keras.layers.Dense(1)])
    x = np.random.default_rng(0).normal(size=(6, 8, 3)).astype("float32")
    report = lstm_doctor.diagnose(outer, x)
    assert report.modules == ["model.layers[0].layers[0]", "model.layers[0].layers[1]"]
    assert all(p["ok"] for p in report.parity.values())
    assert lstm_doctor.diagnose(outer, x, layers="*layers[1]").modules == ["model.layers[0].layers[1]"]


def test_recording_leaves_the_layers_as_they_were():
    model, path = embed_model()
    layer = layer_at(model, path)
    before = layer.call
    x, _ = batch_for("embed")
    expected = np.asarray(model(x))
    lstm_doctor.diagnose(model, x)
    assert "call" not in vars(layer) and layer.call == before
    np.testing.assert_array_equal(np.asarray(model(x)), expected)
