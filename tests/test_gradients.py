"""Issue 5, gradient flow: autodiff sensitivities, memory horizon, G701, G702, H602.

The PyTensor gradient graph compiles once per configuration (several seconds),
so the captures here share a few graph keys.
"""

from __future__ import annotations

import numpy as np
import pytest
from factory import case_like, conv_like, model, normal_inputs, run, with_weights

from lstm_doctor.analyzers import AnalysisConfig, analyze
from lstm_doctor.capture import numpy_loop as reference
from lstm_doctor.experiments import gradients
from lstm_doctor.findings import Severity
from lstm_doctor.model import make_direction


def with_gradients(m, x, **kw):
    _, cap = run(m, x, **kw)
    cap.gradients = gradients.analyze_gradients(cap)
    return analyze(m, cap, AnalysisConfig()), cap


def found(analysis, code):
    return [f for f in analysis.findings if f.code == code]


@pytest.fixture(scope="module")
def case():
    return with_gradients(case_like(), conv_like(C=64)[:, :, :10])


@pytest.fixture(scope="module")
def healthy_fb1():
    return with_gradients(model(8, 16, init="glorot", forget_bias=1.0), normal_inputs(D=8, T=40))


def test_case_like_vanishes_with_a_horizon_of_a_few_steps(case):
    analysis, cap = case
    g = cap.gradients
    assert g.memory_horizon <= 3, g.memory_horizon
    g701 = found(analysis, "G701")
    assert len(g701) == 1 and g701[0].severity == Severity.error  # σ' < 0.01 on i, f and o
    ev = g701[0].evidence
    assert ev["memory_horizon"] == g.memory_horizon and len(ev["input_sensitivity_by_lag"]) == 64
    assert ev["vanishing_lag"] <= 5


def test_case_like_is_input_insensitive(case):
    analysis, cap = case
    h602 = found(analysis, "H602")
    assert len(h602) == 1 and h602[0].severity == Severity.error  # perturbation and gradients agree
    assert h602[0].evidence["perturbation_change"] < 1e-4
    assert "memory_horizon" in h602[0].evidence


def test_healthy_forget_bias_1_keeps_a_long_horizon(healthy_fb1):
    analysis, cap = healthy_fb1
    assert cap.gradients.memory_horizon > 10
    assert not found(analysis, "G701") and not found(analysis, "G702") and not found(analysis, "H602")


def test_rules_skip_without_gradients():
    analysis, _ = run(model(8, 16), normal_inputs(D=8))
    for code in ("G701", "G702", "H602"):
        assert "--gradients" in analysis.skipped[code]


def test_exploding_state_gradient_fires_g702():
    # Gates pinned open (i = f = o ≈ 1) and a candidate gain of 3 in its linear range:
    # h_t feeds c_{t+1} with gain 3 and c carries everything, so ‖∂h_T/∂h_t‖ grows.
    H, D = 16, 8
    rng = np.random.default_rng(0)
    U = np.zeros((H, 4 * H))
    U[:, 2 * H : 3 * H] = 3 * np.linalg.qr(rng.standard_normal((H, H)))[0]
    b = np.zeros(4 * H)
    b[:H] = b[H : 2 * H] = b[3 * H :] = 10.0
    W = rng.uniform(-0.1, 0.1, (D, 4 * H))
    m = model(D, H)
    m = with_weights(m, W=W, U=U, b=b)
    analysis, cap = with_gradients(m, normal_inputs(D=D, T=8, scale=1e-6))
    g702 = found(analysis, "G702")
    assert g702 and g702[0].evidence["growth"] > 10


def _h_final(params, layer, x):
    return reference.run_direction(params, layer, x, capture="h").h[-1]


def test_autodiff_sensitivities_agree_with_finite_differences():
    D, H, T, B = 3, 4, 6, 3
    m = model(D, H, init="torch", seed=5, dtype=np.float64)
    x = normal_inputs(n=B, T=T, D=D, seed=2).astype(np.float64)
    _, cap = run(m, x)
    g = gradients.analyze_gradients(cap)
    assert g.exact
    layer = m.layers[0]
    params = layer.forward
    xt = x.transpose(1, 0, 2).copy()  # (T, B, D)
    eps = 1e-6
    # ‖∂h_T/∂x_t‖_F per sequence by central differences, averaged over sequences, by lag
    fd_x = np.zeros(T)
    for t in range(T):
        for j in range(B):
            J = np.zeros((H, D))
            for d in range(D):
                xp, xm = xt.copy(), xt.copy()
                xp[t, j, d] += eps
                xm[t, j, d] -= eps
                J[:, d] = (_h_final(params, layer, xp)[j] - _h_final(params, layer, xm)[j]) / (2 * eps)
            fd_x[T - 1 - t] += np.linalg.norm(J) / B
    np.testing.assert_allclose(g.input_sensitivity, fd_x, rtol=1e-4)
    # ‖∂h_T/∂h_t‖_F with c_t held: restart from (h_t ± ε e_k, c_t) one sequence at a time
    full = reference.run_direction(params, layer, xt, capture="h")
    fd_h = np.zeros(T)
    for t in range(T - 1):
        for j in range(B):
            J = np.zeros((H, H))
            for k in range(H):
                outs = []
                for sign in (1, -1):
                    h0 = full.h[t, j].copy()
                    h0[k] += sign * eps
                    p2 = make_direction(params.W, params.U, params.b, None, h0, full.c[t, j], dtype=np.float64)
                    outs.append(_h_final(p2, layer, xt[t + 1 :, j : j + 1])[0])
                J[:, k] = (outs[0] - outs[1]) / (2 * eps)
            fd_h[T - 1 - t] += np.linalg.norm(J) / B
    fd_h[0] = np.sqrt(H)  # ∂h_T/∂h_T = I
    np.testing.assert_allclose(g.state_sensitivity, fd_h, rtol=1e-4)


def test_memory_horizon_definition():
    assert gradients.memory_horizon(np.array([1.0, 0.0, 0.0])) == 1
    assert gradients.memory_horizon(np.array([1.0, 1.0, 1.0, 1.0])) == 4
    assert gradients.memory_horizon(np.zeros(3)) == 0


HEALTHY = {
    "torch-uniform H16 T30": lambda: (model(8, 16, init="torch"), normal_inputs(D=8, T=30), {}),
    "glorot forget-bias-1 H64 T100": lambda: (
        model(12, 64, init="glorot", forget_bias=1.0, seed=4), normal_inputs(n=96, D=12, T=100), {}
    ),
    "2-layer bidirectional H24": lambda: (
        model(6, 24, layers=2, bidirectional=True, init="torch", seed=9), normal_inputs(D=6, T=25), {}
    ),
    "switching gates (trained-looking)": lambda: (
        with_weights(model(8, 16), W=model(8, 16).layers[0].forward.W * 9), normal_inputs(D=8), {}
    ),
    "with lengths": lambda: (
        model(8, 16, seed=2), normal_inputs(D=8, T=30), {"lengths": np.random.default_rng(0).integers(5, 31, 64)}
    ),
}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_gradient_rules_stay_quiet_on_the_healthy_set(name):
    m, x, kw = HEALTHY[name]()
    analysis, _ = with_gradients(m, x, **kw)
    bad = [f"{f.code}: {f.message}" for f in analysis.findings if f.code in ("G701", "G702", "H602")]
    assert not bad


def test_memory_horizon_stops_where_the_sensitivity_vanishes():
    """Issue 14: every gate pinned, T = 256. The sensitivity falls by 1e4 one step from
    the end, and the first steps (taken from h_0 = 0, gates not yet pinned) rise again to
    the last step's level: the horizon is 1 step, not 256."""
    T = 256
    s = np.full(T, 1e-12)
    s[0] = 1e-8
    s[-8:] = np.geomspace(1e-10, 2e-8, 8)  # the warm-up steps, the largest at the far end
    assert gradients.memory_horizon(s) == 1
    # tiny everywhere (all below any absolute scale) but decaying smoothly: the horizon
    # depends on the shape, not on the scale
    decay = 1e-30 * 0.5 ** np.arange(T)
    assert gradients.memory_horizon(decay) == gradients.memory_horizon(decay * 1e30) == 4
    # underflow: lag 0 is positive, every other lag is 0 → 1; everything 0 or NaN → 0
    under = np.zeros(T)
    under[0] = 1e-300
    assert gradients.memory_horizon(under) == 1
    assert gradients.memory_horizon(np.zeros(T)) == 0
    assert gradients.memory_horizon(np.full(T, np.nan)) == 0
    # lag 0 vanished relative to a peak further back: at least the last step
    back = np.zeros(T)
    back[-1] = 1.0
    assert gradients.memory_horizon(back) == 1


def test_g701_and_h602_state_the_same_horizon_as_the_statistic():
    from lstm_doctor.analyzers.differential import horizon_text, vanishing_lag

    T = 256
    s = np.full(T, 1e-12)
    s[0] = 1e-8
    s[-4:] = 1e-8
    g = gradients.GradientResult(
        layer=0, direction="fwd", input_sensitivity=s, state_sensitivity=np.ones(T), memory_horizon=gradients.memory_horizon(s),
        gate_derivative={(0, "fwd"): {"i": 0.001, "f": 0.001, "o": 0.001, "g": 0.001}}, perturbation=0.0,
        input_scale=0.01, encoding_scale=8.0, sequences=8, exact=True, probes=16,
    )
    _, cap = run(case_like(), conv_like(C=64)[:, :, :10])
    cap.gradients = g
    analysis = analyze(case_like(), cap, AnalysisConfig())
    g701, h602 = found(analysis, "G701"), found(analysis, "H602")
    assert vanishing_lag(s, 1e-3) == 1
    assert g701 and h602
    for f in g701 + h602:
        assert "memory horizon is 1 step of 256" in f.message, f.message
        assert "256 steps" not in f.message
    zero = gradients.GradientResult(**{**g.__dict__, "input_sensitivity": np.zeros(T), "memory_horizon": 0})
    assert "no step's input reaches h_T" in horizon_text(zero)



def test_zeros_probe_on_a_healthy_model_is_not_input_insensitive(tmp_path):
    """--probe zeros: every sequence is the same, so equal encodings say nothing about the model: no H602."""
    import json

    from click.testing import CliRunner
    from factory import direction

    from lstm_doctor.cli.main import cli
    from lstm_doctor.load import native
    from lstm_doctor.model import Activations, Layer, LSTMModel

    # the healthy model of tests/test_cli.py: torch init, forget bias 1
    m = LSTMModel((Layer(direction(8, 32, init="torch", forget_bias=1.0, seed=3), None, Activations()),), name="healthy")
    native.save(m, tmp_path / "m")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        cli, ["diagnose", str(tmp_path / "m"), "--probe", "zeros", "--format", "json", "--output", str(out),
              "--color", "never"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert "H602" not in {f["code"] for f in report["findings"]}
    assert "identical" in report["not_evaluated"]["H602"]
    assert report["statistics"]["gradients"]["perturbation_change"] == 0.0  # what used to fire the error


def test_h602_needs_the_gradient_sample_to_differ():
    """The first sequences (the gradient sample) identical, later ones not: H602 is skipped, not an error."""
    m = model(8, 16, init="torch", forget_bias=1.0, seed=3)
    x = normal_inputs(n=40, T=20, D=8)
    x[: gradients.GRADIENT_SEQUENCES] = x[0]
    analysis, cap = with_gradients(m, x)
    assert cap.gradients.perturbation == 0.0 and not cap.gradients.inputs_differ
    assert not found(analysis, "H602")
    assert "identical inputs" in analysis.skipped["H602"]
    # the same model on varied inputs computes the rule and stays quiet (it is healthy)
    analysis, cap = with_gradients(m, normal_inputs(n=40, T=20, D=8))
    assert cap.gradients.inputs_differ and cap.gradients.perturbation > 1e-2
    assert "H602" not in analysis.skipped and not found(analysis, "H602")
