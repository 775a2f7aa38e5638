"""Property-based tests (hypothesis) and a short, fixed-budget fuzzing run of the loaders.

- Random valid models and inputs never crash the in-process pipeline
  (``pipeline.capture`` + ``analyzers.analyze``), whatever the sizes, activations,
  peepholes, clipping, dtype, lengths and input scale.
- Findings are deterministic: the same model and inputs give the same findings.
- Random byte mutations (replace, insert, delete, truncate) of valid files of
  every format either load cleanly or raise ``UserError``, never another
  exception and never a hang (hypothesis' ``deadline`` bounds each case).

The budget (``max_examples``) keeps the whole file at ~15-25 s; ``derandomize``
makes CI runs repeatable. Set ``LSTM_DOCTOR_FUZZ_EXAMPLES`` for a longer local run.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from factory import write_onnx_lstm  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lstm_doctor.analyzers import AnalysisConfig, analyze  # noqa: E402
from lstm_doctor.capture.pipeline import CaptureOptions, capture  # noqa: E402
from lstm_doctor.errors import UserError  # noqa: E402
from lstm_doctor.load import LoadOptions, load_model, native  # noqa: E402
from lstm_doctor.load.inputs import InputSource, load_inputs  # noqa: E402
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_fixtures  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("LSTM_DOCTOR_FUZZ_EXAMPLES", "40"))
COMMON = dict(derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ACTS = ("sigmoid", "hard_sigmoid", "hard_sigmoid6", "tanh", "relu", "identity", "softsign", "softplus")


# ---------------------------------------------------------------------------
# Random valid models and inputs


@st.composite
def models_and_inputs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    D = draw(st.integers(1, 5))
    H = draw(st.integers(1, 6))
    n_layers = draw(st.integers(1, 2))
    bidirectional = draw(st.booleans())
    weight_scale = draw(st.sampled_from([0.0, 0.01, 0.3, 1.0, 5.0]))
    weight_mean = draw(st.sampled_from([0.0, 0.1, -0.5]))
    layers = []
    d_in = D
    for _ in range(n_layers):
        acts = Activations(*(draw(st.sampled_from(ACTS)) for _ in range(3)))
        peephole = draw(st.booleans())
        clip = draw(st.sampled_from([None, None, 1.0, 10.0]))

        def one():
            return make_direction(
                rng.normal(weight_mean, weight_scale, (d_in, 4 * H)),
                rng.normal(weight_mean, weight_scale, (H, 4 * H)),
                rng.normal(0, max(weight_scale, 0.1), 4 * H),
                rng.normal(0, 0.2, (3, H)) if peephole else None,
                dtype=dtype,
            )

        layers.append(Layer(one(), one() if bidirectional else None, acts, clip))
        d_in = H * (2 if bidirectional else 1)
    model = LSTMModel(tuple(layers), name="random")
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, 8))
    kind = draw(st.sampled_from(["normal", "constant", "zeros", "positive", "huge", "tiny"]))
    x = {
        "normal": lambda: rng.standard_normal((B, T, D)),
        "constant": lambda: np.full((B, T, D), 0.7),
        "zeros": lambda: np.zeros((B, T, D)),
        "positive": lambda: np.abs(rng.standard_normal((B, T, D))) * 0.01,
        "huge": lambda: rng.standard_normal((B, T, D)) * 1e4,
        "tiny": lambda: rng.standard_normal((B, T, D)) * 1e-6,
    }[kind]().astype(draw(st.sampled_from([np.float32, np.float64])))
    lengths = None
    if draw(st.booleans()):
        lengths = rng.integers(1, T + 1, B)
    layout = draw(st.sampled_from(["btd", "tbd", "bct"]))
    stored = {"btd": x, "tbd": x.transpose(1, 0, 2), "bct": x.transpose(0, 2, 1)}[layout]
    chunk = draw(st.integers(1, 4))
    sample = draw(st.integers(1, 4))
    return model, np.ascontiguousarray(stored), layout, lengths, chunk, sample


def _findings(model, x, layout, lengths, chunk, sample):
    source = InputSource(array=x, layout=layout, lengths=lengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in deliberately huge runs
        cap = capture(model, source, CaptureOptions(chunk_size=chunk, sample_size=sample))
        analysis = analyze(model, cap, AnalysisConfig())
    return [(f.code, int(f.severity), f.message, str(f.location)) for f in analysis.findings]


@settings(max_examples=30, deadline=None, **COMMON)
@given(models_and_inputs())
def test_random_valid_models_and_inputs_never_crash(case):
    found = _findings(*case)
    assert all(code[:1] in "WASCIHG" and len(code) == 4 for code, *_ in found)


@settings(max_examples=8, deadline=None, **COMMON)
@given(models_and_inputs())
def test_findings_are_deterministic(case):
    assert _findings(*case) == _findings(*case)


def test_a_fixed_seed_gives_the_same_findings_across_chunkings():
    """The chunk size is an implementation detail: the findings do not depend on it."""
    rng = np.random.default_rng(7)
    d = make_direction(rng.normal(0.1, 0.05, (4, 24)), rng.normal(0.1, 0.05, (6, 24)), np.zeros(24), dtype=np.float32)
    model = LSTMModel((Layer(d, None, Activations(cell_output="sigmoid")),))
    x = (rng.standard_normal((20, 9, 4)) * 0.01).astype(np.float32)
    codes = [{c for c, *_ in _findings(model, x, "btd", None, chunk, 8)} for chunk in (1, 3, 20)]
    assert codes[0] == codes[1] == codes[2] and codes[0]


# ---------------------------------------------------------------------------
# Byte mutations of valid files of every format


def _onnx_file(path: Path):
    import onnx  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)
    write_onnx_lstm(path, 3, 2)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, tuple[Path, bytes, str]]:
    """name -> (path to overwrite with mutated bytes, the valid bytes, what to call)."""
    root = tmp_path_factory.mktemp("seeds")
    out: dict[str, tuple[Path, bytes, str]] = {}

    def add(name, path, kind="model"):
        work = root / "work" / name
        work.mkdir(parents=True)
        target = work / path.name
        out[name] = (target, path.read_bytes(), kind)

    rng = np.random.default_rng(0)
    m = LSTMModel((Layer(make_direction(rng.normal(size=(3, 8)), rng.normal(size=(2, 8)), np.zeros(8),
                                        dtype=np.float32), None, Activations()),))
    native.save(m, root / "native")
    add("native-npz", root / "native" / "weights.npz", "native")
    add("native-toml", root / "native" / "lstm.toml", "native")
    np.save(root / "x.npy", rng.standard_normal((3, 4, 3)).astype(np.float32))
    np.savez(root / "x.npz", x=rng.standard_normal((3, 4, 3)).astype(np.float32))
    add("inputs-npy", root / "x.npy", "inputs")
    add("inputs-npz", root / "x.npz", "inputs")
    add("tweet2vec", make_fixtures.write_tweet2vec(root, D=3, H=2, with_global=False))
    add("lasagne-pickle", make_fixtures.dump(dict(make_fixtures.lasagne_params(D=3, H=2)), root / "l.pkl",
                                             use_joblib=False))
    np.savez(root / "l.npz", **make_fixtures.lasagne_params(D=3, H=2))
    add("lasagne-npz", root / "l.npz")
    import torch
    torch.save(torch.nn.LSTM(3, 2).state_dict(), root / "m.pt")
    add("torch", root / "m.pt")
    import keras
    km = keras.Sequential([keras.Input((4, 3)), keras.layers.LSTM(2)])
    km.save(root / "m.keras")
    km.save(root / "m.h5")
    add("keras", root / "m.keras")
    add("keras-h5", root / "m.h5")
    _onnx_file(root / "m.onnx")
    add("onnx", root / "m.onnx")
    # the native spec's companion (a mutated weights file needs its spec, and vice versa)
    for name in ("native-npz", "native-toml"):
        folder = out[name][0].parent
        for f in (root / "native").iterdir():
            if not (folder / f.name).exists():
                (folder / f.name).write_bytes(f.read_bytes())
    return out


@st.composite
def mutations(draw, size: int):
    """A list of edits: (op, position, byte); ops replace, insert, delete, truncate."""
    n = draw(st.integers(1, 8))
    edits = []
    for _ in range(n):
        op = draw(st.sampled_from(["replace", "replace", "replace", "insert", "delete", "truncate"]))
        # Bias positions to the start (headers) half of the time.
        pos = draw(st.one_of(st.integers(0, min(size, 256)), st.integers(0, max(size - 1, 0))))
        edits.append((op, pos, draw(st.integers(0, 255))))
    return edits


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for op, pos, byte in edits:
        pos = min(pos, len(buf))
        if op == "replace" and pos < len(buf):
            buf[pos] = byte if buf[pos] != byte else (byte + 1) % 256
        elif op == "insert":
            buf.insert(pos, byte)
        elif op == "delete" and pos < len(buf):
            del buf[pos]
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf)


def _load(target: Path, kind: str):
    if kind == "inputs":
        source = load_inputs(target, "btd")
        source.read(0, source.n_sequences, np.float32)  # read the data, not just the header
        return source
    path = target.parent if kind == "native" else target
    model = load_model(path, options=LoadOptions())
    assert model.layers and all(layer.H > 0 for layer in model.layers)
    return model


FORMATS = ("native-npz", "native-toml", "inputs-npy", "inputs-npz", "tweet2vec", "lasagne-pickle", "lasagne-npz",
           "torch", "keras", "keras-h5", "onnx")


def test_the_seed_files_load(seeds):
    for name in FORMATS:
        target, data, kind = seeds[name]
        target.write_bytes(data)
        _load(target, kind)


@pytest.mark.parametrize("name", FORMATS)
def test_byte_mutations_load_cleanly_or_raise_a_user_error(seeds, name):
    target, data, kind = seeds[name]

    @settings(max_examples=FUZZ_EXAMPLES, deadline=2000, **COMMON)
    @given(mutations(len(data)))
    def run(edits):
        target.write_bytes(mutate(data, edits))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _load(target, kind)
        except UserError as exc:
            assert str(exc) and "\n" not in str(exc).strip()

    try:
        run()
    finally:
        target.write_bytes(data)
