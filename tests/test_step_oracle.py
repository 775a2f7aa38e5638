"""Every engine computes the readable step of ``lstm_doctor.capture.step``.

The oracle is the definition: a short NumPy step with the equations in its
docstring. Each engine — the NumPy loop (all three capture modes), the fused
engine, the symbolic scan and the differential-diagnosis runner — is run on
the same direction and held to it at every step: max |diff| ≤ 2e-6 in float32
(σ written as 0.5·tanh(0.5x)+0.5, or as a polynomial in the fused kernel,
rounds differently) and ≤ 1e-12 in float64.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from factory import model, normal_inputs, with_acts

from lstm_doctor.capture import step as oracle
from lstm_doctor.capture.fused import engine as fused
from lstm_doctor.capture.numpy_loop import CAPTURE_FULL, CAPTURE_HIDDEN, CAPTURE_STATS
from lstm_doctor.capture.numpy_loop import run_direction as numpy_run
from lstm_doctor.experiments.observed import _Runner, declared_config
from lstm_doctor.stats import DirectionStats, StatsConfig

T, B, D, H = 9, 6, 5, 7
FIELDS = ("i", "f", "g", "o", "c", "h")

CONFIGS = {
    "standard": dict(),
    "peepholes": dict(peephole=True),
    "clip": dict(clip=0.8),
    "hard sigmoid gates, sigmoid cell output": dict(acts=dict(gate="hard_sigmoid", cell_output="sigmoid")),
    "relu candidate, identity cell output": dict(acts=dict(candidate="relu", cell_output="identity")),
    "padding": dict(mask=True),
}


def _case(name: str, dtype=np.float32):
    kw = dict(CONFIGS[name])
    peep = np.random.default_rng(9).normal(0, 0.5, (3, H)).astype(dtype) if kw.get("peephole") else None
    m = model(D, H, seed=3, dtype=dtype, peephole=peep)
    if "acts" in kw:
        m = with_acts(m, **kw["acts"])
    if "clip" in kw:
        m = replace(m, layers=(replace(m.layers[0], clip=kw["clip"]),))
    x = normal_inputs(n=B, T=T, D=D, seed=5, scale=2.0).astype(dtype).transpose(1, 0, 2).copy()  # (T, B, D)
    mask = None
    if kw.get("mask"):
        lengths = np.array([9, 1, 4, 9, 6, 2])
        mask = np.arange(T)[:, None] < lengths[None, :]
    layer = m.layers[0]
    return m, layer, layer.forward, x, mask


def _tol(dtype):
    return dict(rtol=0, atol=2e-6) if dtype == np.float32 else dict(rtol=0, atol=1e-12)


def _check(got: dict, want: dict, dtype, fields=FIELDS):
    for name in fields:
        np.testing.assert_allclose(got[name], want[name], err_msg=name, **_tol(dtype))


def test_the_oracle_is_the_equations():
    # one step by hand, H = 1: z = x·W + h·U + b, standard activations
    m, layer, p, _, _ = _case("standard", np.float64)
    x_t = np.ones((1, D))
    h_prev, c_prev = np.full((1, H), 0.5), np.full((1, H), -0.25)
    out = oracle.step(p, layer, x_t, h_prev, c_prev)
    z = x_t @ p.W + h_prev @ p.U + p.b
    s = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = s(z[:, :H]), s(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), s(z[:, 3 * H:])
    c = f * c_prev + i * g
    np.testing.assert_allclose(out["c"], c)
    np.testing.assert_allclose(out["h"], o * np.tanh(c))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_numpy_loop_computes_the_oracle_in_every_mode(name, dtype):
    m, layer, p, x, mask = _case(name, dtype)
    want = oracle.run(p, layer, x, mask)
    full = numpy_run(p, layer, x, mask, CAPTURE_FULL)
    _check({f: getattr(full, f) for f in FIELDS}, want, dtype)
    hidden = numpy_run(p, layer, x, mask, CAPTURE_HIDDEN)
    _check({"h": hidden.h, "c": hidden.c}, want, dtype, ("h", "c"))
    stats = DirectionStats.empty(0, "fwd", T, H, StatsConfig())
    reducer = stats.reducer(B, mask, layer, p.h0, dtype, p)
    sample = numpy_run(p, layer, x, mask, CAPTURE_STATS, observer=reducer, keep=B).sample
    _check({f: getattr(sample, f) for f in FIELDS}, want, dtype)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_fused_engine_computes_the_oracle(name):
    m, layer, p, x, mask = _case(name)
    assert fused.supports(p.dtype) and fused.available()
    want = oracle.run(p, layer, x, mask)
    stats = DirectionStats.empty(0, "fwd", T, H, StatsConfig())
    reducer = stats.reducer(B, mask, layer, p.h0, np.float32, p)
    record = fused.run_direction(p, layer, x, mask, CAPTURE_STATS, observer=reducer, keep=B)
    _check({f: getattr(record.sample, f) for f in FIELDS}, want, np.float32)
    _check({"h": record.h}, want, np.float32, ("h",))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_symbolic_scan_computes_the_oracle(name):
    from lstm_doctor.capture.symbolic import scan as symbolic

    m, layer, p, x, mask = _case(name, np.float64)
    want = oracle.run(p, layer, x, mask)
    record = symbolic.run_direction(p, layer, x, mask, CAPTURE_FULL)
    _check({f: getattr(record, f) for f in FIELDS}, want, np.float64)


@pytest.mark.parametrize("name", ["standard", "peepholes", "clip", "hard sigmoid gates, sigmoid cell output", "padding"])
def test_the_differential_runner_computes_the_oracle(name):
    # The --observed search steps every candidate configuration at once; its
    # declared configuration must be the model's own step.
    m, layer, p, x, mask = _case(name, np.float64)
    want = oracle.run(p, layer, x, mask)
    lengths = None if mask is None else mask.sum(0)
    runner = _Runner(m, x, lengths, [declared_config(m)], np.arange(H))
    for t in range(T):
        runner.run(1)
        np.testing.assert_allclose(runner.h[0], want["h"][t], atol=1e-12, err_msg=f"h at step {t}")
        np.testing.assert_allclose(runner.c[0], want["c"][t], atol=1e-12, err_msg=f"c at step {t}")
