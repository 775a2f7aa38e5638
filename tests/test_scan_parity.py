"""Parity of the symbolic engine (PyTensor scan) with the NumPy reference.

Both engines run through ``lstm_doctor.capture.engines.run_chunk`` and must agree on every
field of every ``StepRecord``: max |diff| <= 1e-5 in float32 and <= 1e-10 in
float64. Sizes are small (T <= 12, B <= 5, H <= 6); compiled functions are
cached per graph configuration for the process, so each configuration below
compiles once. Every field is compared at every step, padding steps included.
"""

from __future__ import annotations

import numpy as np
import pytest

from lstm_doctor.capture.engines import run_chunk
from lstm_doctor.capture.numpy_loop import (
    CAPTURE_FULL,
    CAPTURE_HIDDEN,
    CAPTURE_STATS,
    StepRecord,
)
from lstm_doctor.capture.numpy_loop import run_direction as reference_run_direction
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction
from lstm_doctor.model.activations import ACTIVATIONS

# PyTensor, or Theano where only that is installed (LSTM_DOCTOR_BACKEND=theano).
import lstm_doctor.capture.symbolic.backend  # noqa: F401 (PyTensor, or Theano in the legacy job: a runtime dependency, never skipped)

from lstm_doctor.capture.symbolic import scan as symbolic  # noqa: E402

FIELDS = (
    "h",
    "c",
    "bias",
    "input_term",
    "recurrent_term",
    "peephole_term",
    "preact",
    "i",
    "f",
    "g",
    "o",
)
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
T, B, D, H = 12, 5, 4, 6
LENGTHS = np.array([12, 7, 1, 0, 4])


def direction(rng, D, H, *, peephole=True, dtype=np.float32, scale=0.6):
    """Random weights large enough to reach both the linear and saturated regimes."""
    return make_direction(
        rng.normal(0.0, scale, (D, 4 * H)),
        rng.normal(0.0, scale, (H, 4 * H)),
        rng.normal(0.0, scale, 4 * H),
        rng.normal(0.0, scale, (3, H)) if peephole else None,
        rng.normal(0.0, 0.5, H),
        rng.normal(0.0, 0.5, H),
        dtype=dtype,
    )


def single_layer_model(
    seed=0,
    *,
    peephole=True,
    dtype=np.float32,
    activations=Activations(),
    clip=None,
    bidirectional=False,
):
    rng = np.random.default_rng(seed)
    forward = direction(rng, D, H, peephole=peephole, dtype=dtype)
    backward = direction(rng, D, H, peephole=peephole, dtype=dtype) if bidirectional else None
    layer = Layer(forward, backward, activations=activations, clip=clip)
    return LSTMModel((layer,))


def inputs(seed=1, dtype=np.float32, T=T, B=B, D=D):
    return np.random.default_rng(seed).normal(0.0, 1.0, (T, B, D)).astype(dtype)


def max_abs_diff(a, b) -> float:
    """max |a - b|; NaN and ±inf must sit at the same places with the same value."""
    finite = np.isfinite(b)
    if not np.array_equal(np.isfinite(a), finite) or not np.array_equal(
        a[~finite], b[~finite], equal_nan=True
    ):
        return float("inf")
    return float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))


def assert_parity(model, x, lengths=None, capture=CAPTURE_FULL):
    expected = run_chunk(model, x, lengths, engine="numpy", capture=capture)
    actual = run_chunk(model, x, lengths, engine="pytensor", capture=capture)
    assert actual.keys() == expected.keys()
    tol = TOLERANCE[model.dtype]
    for unit, want in expected.items():
        got = actual[unit]
        assert isinstance(got, StepRecord)
        for name in FIELDS:
            a, b = getattr(got, name), getattr(want, name)
            where = f"{unit} {name}"
            if b is None:
                assert a is None, f"{where}: expected None"
                continue
            assert a is not None, f"{where}: missing"
            assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
            assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
            diff = max_abs_diff(a, b)
            assert diff <= tol, f"{where}: max |diff| {diff:.3g} > {tol:g}"
    return actual, expected


@pytest.mark.parametrize(
    "peephole, dtype",
    [(True, np.float32), (True, np.float64), (False, np.float32)],
    ids=["peephole-float32", "peephole-float64", "no-peephole-float32"],
)
def test_single_direction(peephole, dtype):
    model = single_layer_model(peephole=peephole, dtype=dtype)
    actual, _ = assert_parity(model, inputs(dtype=dtype))
    record = actual[(0, "fwd")]
    assert (record.peephole_term is None) == (not peephole)
    # Sanity: the run is not trivial (gates move, the cell changes).
    assert np.ptp(record.i) > 0.1 and np.ptp(record.c) > 0.1


NAMES = sorted(ACTIVATIONS)
# Each activation in each role, in len(NAMES) configurations instead of 3·len(NAMES):
# configuration k uses NAMES[k] as gate, NAMES[k+1] as candidate and NAMES[k+2]
# as cell output. The three roles always get different functions, so a role
# wired to the wrong function in either engine shows up as a mismatch.
ROTATIONS = [
    Activations(
        gate=NAMES[k], candidate=NAMES[(k + 1) % len(NAMES)], cell_output=NAMES[(k + 2) % len(NAMES)]
    )
    for k in range(len(NAMES))
]


def test_rotations_cover_every_activation_in_every_role():
    for role in ("gate", "candidate", "cell_output"):
        assert {getattr(a, role) for a in ROTATIONS} == set(ACTIVATIONS)


@pytest.mark.parametrize(
    "activations",
    ROTATIONS,
    ids=[f"{a.gate}-{a.candidate}-{a.cell_output}" for a in ROTATIONS],
)
def test_activation_options(activations):
    rng = np.random.default_rng(2)
    # Smaller weights: unbounded gates (identity, relu, softplus) with peepholes
    # make the cell grow fast; the run must stay finite to be a real check.
    params = direction(rng, D, H, scale=0.2)
    model = LSTMModel((Layer(params, activations=activations),))
    actual, _ = assert_parity(model, inputs(seed=3), LENGTHS)
    record = actual[(0, "fwd")]
    for name in ("h", "c", "preact"):
        assert np.isfinite(getattr(record, name)).all(), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bidirectional_with_lengths(dtype):
    model = single_layer_model(seed=4, dtype=dtype, bidirectional=True)
    actual, _ = assert_parity(model, inputs(seed=5, dtype=dtype), LENGTHS)
    assert set(actual) == {(0, "fwd"), (0, "rev")}


def test_masking_carries_state():
    model = single_layer_model(seed=6)
    actual, _ = assert_parity(model, inputs(seed=7), LENGTHS)
    record = actual[(0, "fwd")]
    # After its last valid step a sequence's state stays put; length 0 keeps h0, c0.
    params = model.layers[0].forward
    for b, length in enumerate(LENGTHS):
        for state, initial in ((record.h, params.h0), (record.c, params.c0)):
            last = state[length - 1, b] if length else initial
            after = state[length:, b]
            np.testing.assert_array_equal(after, np.broadcast_to(last, after.shape))


CLIP = 0.7


@pytest.mark.parametrize(
    "peephole, dtype",
    [(True, np.float32), (True, np.float64), (False, np.float32)],
    ids=["peephole-float32", "peephole-float64", "no-peephole-float32"],
)
def test_clip(peephole, dtype):
    model = single_layer_model(seed=8, peephole=peephole, dtype=dtype, clip=CLIP)
    actual, _ = assert_parity(model, inputs(seed=9, dtype=dtype), LENGTHS)
    preact = actual[(0, "fwd")].preact
    assert np.abs(preact).max() <= CLIP + 1e-7
    assert np.mean(np.abs(preact) == np.asarray(CLIP, dtype)) > 0.05  # clipping happened


def test_two_stacked_layers():
    rng = np.random.default_rng(10)
    first = Layer(direction(rng, D, H), direction(rng, D, H))
    second = Layer(direction(rng, 2 * H, 3, peephole=False), clip=CLIP, go_backwards=True)
    model = LSTMModel((first, second))
    actual, _ = assert_parity(model, inputs(seed=11), LENGTHS)
    assert set(actual) == {(0, "fwd"), (0, "rev"), (1, "rev")}
    assert actual[(1, "rev")].h.shape == (T, B, 3)


def test_capture_hidden_only():
    model = single_layer_model(seed=12, bidirectional=True)
    actual, _ = assert_parity(model, inputs(seed=13), LENGTHS, CAPTURE_HIDDEN)
    for record in actual.values():
        assert record.h is not None and record.c is not None
        assert record.i is None and record.preact is None and record.input_term is None


def test_capture_stats_keeps_a_sample():
    """Capture "stats" without an observer: the fields the NumPy engine fills
    (h), plus the full record of the first ``keep`` sequences."""
    model = single_layer_model(seed=20)
    params, layer = model.layers[0].forward, model.layers[0]
    x = inputs(seed=21)
    mask = np.arange(T)[:, None] < LENGTHS[None, :]
    want = reference_run_direction(params, layer, x, mask, CAPTURE_STATS, keep=2)
    got = symbolic.run_direction(params, layer, x, mask, CAPTURE_STATS, keep=2)
    assert got.i is None and got.sample is not None and want.sample is not None
    for name in FIELDS:
        for a, b in ((got, want), (got.sample, want.sample)):
            if getattr(b, name) is None:
                assert getattr(a, name) is None, name
            else:
                assert max_abs_diff(getattr(a, name), getattr(b, name)) <= 1e-5, name
    with pytest.raises(ValueError, match="observer"):
        symbolic.run_direction(params, layer, x, mask, CAPTURE_STATS, observer=object())


def test_compiled_function_is_reused_across_models():
    """Weights are function inputs: a second model of the same configuration and
    other sizes reuses the compiled function."""
    first = single_layer_model(seed=14)
    assert_parity(first, inputs(seed=15))
    n_compiled = len(symbolic._COMPILED)
    rng = np.random.default_rng(16)
    second = LSTMModel((Layer(direction(rng, 3, 2)),))
    assert_parity(second, inputs(seed=17, T=5, B=2, D=3))
    assert len(symbolic._COMPILED) == n_compiled


def test_empty_sequence():
    model = single_layer_model(seed=18, bidirectional=True)
    assert_parity(model, inputs(seed=19, T=0))


def test_symbolic_activations_match_numpy():
    values = np.concatenate([np.linspace(-40, 40, 161), [-3, -2.5, 0, 2.5, 3, 1e-4, -1e-4]])
    backend = symbolic.backend
    for dtype in (np.float32, np.float64):
        dtype_name = np.dtype(dtype).name
        x = backend.tensor.vector(name="x", dtype=dtype_name)
        outputs = [symbolic.symbolic_activation(name, dtype_name)(x) for name in NAMES]
        fn = backend.function([x], outputs, mode=backend.compile_mode())
        arr = values.astype(dtype)
        for name, got in zip(NAMES, fn(arr)):
            want = ACTIVATIONS[name].fn(arr)
            assert got.dtype == arr.dtype, name
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE[np.dtype(dtype)], err_msg=name)


def test_engine_mode_is_named():
    assert symbolic.ENGINE_MODE
    assert "numba" not in symbolic.ENGINE_MODE.lower()


def test_final_state_gradients_match_finite_differences():
    """Autodiff through the scan (float64, peepholes, lengths) against central
    differences of the NumPy reference."""
    rng = np.random.default_rng(22)
    Tg, Bg, Dg, Hg = 4, 2, 3, 2
    params = direction(rng, Dg, Hg, dtype=np.float64)
    layer = Layer(params)
    x = rng.normal(0.0, 1.0, (Tg, Bg, Dg))
    mask = np.arange(Tg)[:, None] < np.array([4, 2])[None, :]
    seed = rng.normal(0.0, 1.0, (Bg, Hg))
    grads = symbolic.final_state_gradients(params, layer, x, mask, seed)

    def loss(xx, p=params):
        record = reference_run_direction(p, Layer(p), xx, mask, CAPTURE_HIDDEN)
        return float(np.sum(seed * record.h[-1]))

    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (loss(up) - loss(down)) / (2 * eps)
    np.testing.assert_allclose(grads["x"], numeric, rtol=0, atol=1e-8)
    # ∂L/∂x = ∂L/∂(x·W) · Wᵀ, and padding steps receive no gradient.
    np.testing.assert_allclose(grads["input_term"] @ params.W.T, grads["x"], rtol=0, atol=1e-12)
    assert not grads["x"][2:, 1].any()
    # One weight entry of each of U and the forget-gate bias, numerically.
    for name, index in (("U", (1, 3)), ("b", (2,))):
        arrays = params.arrays()
        up, down = (arrays[name].copy() for _ in range(2))
        up[index] += eps
        down[index] -= eps
        numeric = (
            loss(x, make_direction(**{**arrays, name: up}))
            - loss(x, make_direction(**{**arrays, name: down}))
        ) / (2 * eps)
        assert abs(grads[name][index] - numeric) < 1e-8, name
    want_h = reference_run_direction(params, layer, x, mask, CAPTURE_HIDDEN).h[-1]
    np.testing.assert_allclose(grads["h_T"], want_h, rtol=0, atol=1e-10)
