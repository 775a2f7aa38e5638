"""Issue 18.3: the NumPy backward recursion (experiments.sensitivity) against PyTensor's grad and finite differences.

Float64 models, so both paths are exact to rounding: the recursion must match
``capture.symbolic.scan.final_state_gradients`` to 1e-6 relative, and central
differences of Σ seed ⊙ h_T (the step of ``capture/step.py``) to 1e-5.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from factory import model, normal_inputs, pytensor_gradients, run, with_acts

from lstm_doctor.analyzers import AnalysisConfig, analyze
from lstm_doctor.capture import step as oracle
from lstm_doctor.experiments import gradients, sensitivity
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction

T, N, D, H = 12, 3, 4, 5


def _layer_model(layer: Layer) -> LSTMModel:
    return LSTMModel((layer,), name="t")


def _standard():
    return model(D, H, init="torch", seed=3, dtype=np.float64)


def _peephole():
    p = np.random.default_rng(4).normal(0, 0.5, (3, H))
    return model(D, H, init="torch", seed=4, dtype=np.float64, peephole=p)


def _clip():
    m = model(D, H, init="torch", seed=5, dtype=np.float64, peephole=np.full((3, H), 0.3))
    return replace(m, layers=(replace(m.layers[0], clip=0.4),))


def _hard_sigmoid():
    return with_acts(model(D, H, init="glorot", seed=6, dtype=np.float64), gate="hard_sigmoid")


def _case_like():
    """CASE.md-like: Normal(0.1, 0.05) weights and peepholes, h = o·σ(c), gates pinned by large inputs."""
    rng = np.random.default_rng(7)
    d = make_direction(
        rng.normal(0.1, 0.05, (D, 4 * H)), rng.normal(0.1, 0.05, (H, 4 * H)), np.zeros(4 * H),
        rng.normal(0.1, 0.05, (3, H)), dtype=np.float64,
    )
    return _layer_model(Layer(d, None, Activations(cell_output="sigmoid")))


def _backwards():
    m = _peephole()
    return replace(m, layers=(replace(m.layers[0], go_backwards=True),))


CASES = {
    "standard": (_standard, 1.0, None),
    "peephole": (_peephole, 1.0, None),
    "clip": (_clip, 2.0, None),
    "hard_sigmoid": (_hard_sigmoid, 2.0, None),
    "case_like": (_case_like, 30.0, None),
    "lengths": (_peephole, 1.0, np.array([T, 7, 1])),
}


def _inputs(scale, seed=11):
    return np.random.default_rng(seed).standard_normal((T, N, D)) * scale


def _seeds():
    return np.random.default_rng(12).standard_normal((2, H))


def _mask(lengths):
    return None if lengths is None else np.arange(T)[:, None] < lengths[None, :]


def _final_h(m, x, mask):
    layer = m.layers[0]
    return oracle.run(layer.forward, layer, x, mask)["h"][-1]  # (n, H): padding carries h_T


@pytest.mark.parametrize("name", sorted(CASES))
def test_recursion_matches_pytensor_grad(name):
    make, scale, lengths = CASES[name]
    m = make()
    layer = m.layers[0]
    x, seeds, mask = _inputs(scale), _seeds(), _mask(lengths)
    P = len(seeds)
    ours = sensitivity.final_state_gradients(layer.forward, layer, x, mask, seeds)
    theirs = pytensor_gradients(layer, x, mask, seeds)
    for key in ("x", "input_term"):
        a, b = ours[key], np.asarray(theirs[key], np.float64)
        assert a.shape == b.shape
        # per step: the gradient decays by orders of magnitude along the lags, so compare step by step
        scale_t = np.abs(b).reshape(T, -1).max(axis=1)
        err_t = np.abs(a - b).reshape(T, -1).max(axis=1)
        assert np.all(err_t <= 1e-6 * scale_t + 1e-300), (key, err_t / np.maximum(scale_t, 1e-300))
        assert np.any(scale_t > 0)
    if lengths is not None:  # padding steps receive nothing
        assert np.all(ours["x"][~np.repeat(mask, P, axis=1)] == 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_recursion_matches_central_differences(name):
    make, scale, lengths = CASES[name]
    m = make()
    layer = m.layers[0]
    x, seeds, mask = _inputs(scale), _seeds(), _mask(lengths)
    P = len(seeds)
    gx = sensitivity.final_state_gradients(layer.forward, layer, x, mask, seeds)["x"].reshape(T, N, P, D)
    rng = np.random.default_rng(13)
    eps = 1e-6
    checked = 0
    for t in (0, T // 2, T - 1):
        delta = np.zeros_like(x)
        delta[t] = rng.standard_normal((N, D))
        up, down = _final_h(m, x + eps * delta, mask), _final_h(m, x - eps * delta, mask)
        fd = np.einsum("nh,ph->np", up - down, seeds) / (2 * eps)  # (N, P)
        an = np.einsum("npd,nd->np", gx[t], delta[t])
        tol = 1e-5 * max(np.abs(an).max(), np.abs(fd).max()) + 1e-9
        assert np.allclose(an, fd, rtol=0, atol=tol), (t, an, fd)
        checked += int(np.abs(fd).max() > 1e-6)
    assert checked >= 1  # at least the last step has a measurable effect


def test_case_like_sensitivities_underflow_and_still_agree():
    """Pinned gates: the sensitivity falls by many orders of magnitude; both paths agree lag by lag."""
    m = _case_like()
    x = np.abs(np.random.default_rng(2).standard_normal((16, 40, D))) * 30  # (n, T, D) btd
    _, cap = run(m, x)
    a = gradients.analyze_gradients(cap, method="numpy")
    b = gradients.analyze_gradients(cap, method="pytensor")
    sa, sb = a.input_sensitivity, b.input_sensitivity
    assert sa[0] > 0 and sa[1] < 1e-3 * sa[0] and sa.min() < 1e-4 * sa[0]  # vanished one step from the end
    assert np.all(np.abs(sa - sb) <= 1e-6 * np.abs(sb) + 1e-300)
    assert np.allclose(a.state_sensitivity, b.state_sensitivity, rtol=1e-6, atol=1e-300)
    assert a.memory_horizon == b.memory_horizon


@pytest.mark.parametrize("backwards,lengths", [(False, None), (True, None), (True, "padded"), (False, "padded")])
def test_analyze_gradients_paths_agree(backwards, lengths):
    m = _backwards() if backwards else _peephole()
    x = normal_inputs(n=6, T=T, D=D).astype(np.float64)
    lens = None if lengths is None else np.array([T, 9, 4, T, 2, 7])
    _, cap = run(m, x, lengths=lens)
    a = gradients.analyze_gradients(cap, method="numpy")
    b = gradients.analyze_gradients(cap, method="pytensor")
    assert a.direction == b.direction == ("rev" if backwards else "fwd")
    np.testing.assert_allclose(a.input_sensitivity, b.input_sensitivity, rtol=1e-6, atol=1e-300)
    np.testing.assert_allclose(a.state_sensitivity, b.state_sensitivity, rtol=1e-6, atol=1e-300)
    assert (a.memory_horizon, a.exact, a.probes, a.sequences) == (b.memory_horizon, b.exact, b.probes, b.sequences)
    assert a.compile_seconds == 0.0 and a.extra["method"] == "numpy"


def test_hutchinson_probes_above_exact_units():
    """H > EXACT_UNITS: the same Rademacher probes on both paths (a float32 model: both run in float32)."""
    m = model(6, gradients.EXACT_UNITS + 8, init="glorot", forget_bias=1.0, seed=8)
    _, cap = run(m, normal_inputs(n=10, T=15, D=6))
    a = gradients.analyze_gradients(cap, method="numpy")
    b = gradients.analyze_gradients(cap, method="pytensor")
    assert not a.exact and a.probes == gradients.PROBES
    np.testing.assert_allclose(a.input_sensitivity, b.input_sensitivity, rtol=1e-4)
    np.testing.assert_allclose(a.state_sensitivity, b.state_sensitivity, rtol=1e-4)


def _gradient_findings(m, cap, method):
    cap.gradients = gradients.analyze_gradients(cap, method=method)
    analysis = analyze(m, cap, AnalysisConfig())
    return sorted(
        (f.code, str(f.severity), f.message)
        for f in analysis.findings
        if f.code in ("G701", "G702", "H602")
    )


def _bundled_example():
    from lstm_doctor.example import example_folder
    from lstm_doctor.load import load_model

    folder = example_folder()
    m = load_model(folder / "broken")
    x = np.load(folder / "conv_output.npy")
    return m, x


@pytest.mark.parametrize("which", ["bundled_example", "healthy"])
def test_rules_give_identical_findings_on_both_paths(which):
    if which == "bundled_example":
        m, x = _bundled_example()
    else:
        m, x = model(8, 16, init="glorot", forget_bias=1.0), normal_inputs(D=8, T=40)
    _, cap = run(m, x)
    ours = _gradient_findings(m, cap, "numpy")
    theirs = _gradient_findings(m, cap, "pytensor")
    assert ours == theirs
    codes = {c for c, _, _ in ours}
    if which == "bundled_example":
        assert {"G701", "H602"} <= codes  # CASE.md's encoder: vanished gradients, input-insensitive
    else:
        assert not codes


def test_default_diagnosis_runs_gradients_without_pytensor(tmp_path):
    """``diagnose`` computes the gradient rules by default (no compile): G701 is not skipped."""
    import json

    from click.testing import CliRunner

    from lstm_doctor.cli.main import cli
    from lstm_doctor.example import example_folder

    folder = example_folder()
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        cli, ["diagnose", str(folder / "broken"), "--inputs", str(folder / "conv_output.npy"), "--engine", "numpy",
              "--format", "json", "--output", str(out), "--exit-zero", "--color", "never"],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    g = report["statistics"]["gradients"]
    assert g["memory_horizon"] >= 1 and len(g["input_sensitivity_by_lag"]) == 256
    assert "G701" in {f["code"] for f in report["findings"]}


def test_mixed_lengths_sensitivities_match_finite_differences_per_sequence():
    """--lengths: lags count from each sequence's own last step, and ‖∂h_T/∂h_t‖ is √H there (∂h_T/∂h_{L−1} = I).

    The reference runs each sequence alone, unpadded (x[:L]), and takes central
    differences: ‖∂h_L/∂x_t‖_F, and ‖∂h_L/∂h_t‖_F with c_t held (restart from
    (h_t ± ε e_k, c_t)); averaged by lag over the sequences that reach it.
    """
    from lstm_doctor.capture import numpy_loop

    Tm, B, Dm, Hm = 7, 3, 3, 4
    m = model(Dm, Hm, init="torch", seed=5, dtype=np.float64)
    params, layer = m.layers[0].forward, m.layers[0]
    lens = np.array([Tm, 4, 2])
    x = normal_inputs(n=B, T=Tm, D=Dm, seed=2).astype(np.float64)  # btd; steps past a length are padding
    _, cap = run(m, x, lengths=lens)
    ours = gradients.analyze_gradients(cap, method="numpy")
    theirs = gradients.analyze_gradients(cap, method="pytensor")
    assert ours.exact

    def h_last(p, xs):  # xs (L, 1, D) -> h_L (H,)
        return numpy_loop.run_direction(p, layer, xs, capture="h").h[-1, 0]

    eps = 1e-6
    fd_x, fd_h, count = np.zeros(Tm), np.zeros(Tm), np.zeros(Tm)
    for j, L in enumerate(lens):
        xs = x[j, :L][:, None, :].copy()  # (L, 1, D)
        full = numpy_loop.run_direction(params, layer, xs, capture="full")
        for t in range(L):
            lag = L - 1 - t
            J = np.zeros((Hm, Dm))
            for d in range(Dm):
                up, down = xs.copy(), xs.copy()
                up[t, 0, d] += eps
                down[t, 0, d] -= eps
                J[:, d] = (h_last(params, up) - h_last(params, down)) / (2 * eps)
            fd_x[lag] += np.linalg.norm(J)
            if lag == 0:
                fd_h[lag] += np.sqrt(Hm)
            else:
                Jh = np.zeros((Hm, Hm))
                for k in range(Hm):
                    outs = []
                    for sign in (1, -1):
                        h0 = full.h[t, 0].copy()
                        h0[k] += sign * eps
                        p2 = make_direction(params.W, params.U, params.b, None, h0, full.c[t, 0], dtype=np.float64)
                        outs.append(h_last(p2, xs[t + 1 :]))
                    Jh[:, k] = (outs[0] - outs[1]) / (2 * eps)
                fd_h[lag] += np.linalg.norm(Jh)
            count[lag] += 1
    fd_x, fd_h = fd_x / count, fd_h / count
    for g in (ours, theirs):
        assert g.state_sensitivity[0] == pytest.approx(np.sqrt(Hm), rel=1e-6)  # every sequence: lag 0 is I
        np.testing.assert_allclose(g.input_sensitivity, fd_x, rtol=1e-5)
        np.testing.assert_allclose(g.state_sensitivity, fd_h, rtol=1e-5)


def test_hutchinson_probes_are_fixed_signs_and_need_no_random_generator():
    """±1 entries, E[vvᵀ] ≈ I over many probes, the same on every call, and no numpy.random import
    on the gradient path (it cost 6–9 ms of a small capture's budget)."""
    import subprocess
    import sys

    v = gradients.probes(4000, 64)
    assert set(np.unique(v)) == {-1.0, 1.0}
    assert np.abs(v.T @ v / len(v) - np.eye(64)).max() < 0.1
    np.testing.assert_array_equal(gradients.probes(4, 64), gradients.probes(4, 64))  # deterministic
    code = (
        "import sys, numpy as np\n"
        "from lstm_doctor.capture.pipeline import CaptureOptions, capture\n"
        "from lstm_doctor.experiments.gradients import analyze_gradients, EXACT_UNITS\n"
        "from lstm_doctor.load.inputs import InputSource\n"
        "from lstm_doctor.model import Layer, LSTMModel, make_direction\n"
        "D, H = 3, EXACT_UNITS + 8\n"
        "k = np.arange(D * 4 * H + H * 4 * H, dtype=np.float32)\n"
        "W = (np.sin(k[: D * 4 * H]) * 0.3).reshape(D, 4 * H)\n"
        "U = (np.cos(k[D * 4 * H :]) * 0.1).reshape(H, 4 * H)\n"
        "m = LSTMModel((Layer(make_direction(W, U, np.zeros(4 * H), dtype=np.float32)),), name='t')\n"
        "x = np.sin(np.arange(10 * 12 * D, dtype=np.float32)).reshape(10, 12, D)\n"
        "cap = capture(m, InputSource(array=x, layout='btd'), CaptureOptions(engine='numpy'))\n"
        "g = analyze_gradients(cap)\n"
        "assert not g.exact and g.input_sensitivity[0] > 0\n"
        "print('numpy.random' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


# The compiled recursion (``_kernels.backward_step``) against the NumPy one it replaces in float32.
COMPILED_ACTS = {
    "sigmoid-tanh": {},
    "hard_sigmoid-softsign-sigmoid": {"gate": "hard_sigmoid", "candidate": "softsign", "cell_output": "sigmoid"},
    "hard_sigmoid6-relu-identity": {"gate": "hard_sigmoid6", "candidate": "relu", "cell_output": "identity"},
    "sigmoid-tanh-softplus": {"cell_output": "softplus"},
}


def _float32_states(acts, peephole, lengths):
    rng = np.random.default_rng(21)
    Tn, n, Dn, Hn = 14, 4, 3, 9
    d = make_direction(rng.uniform(-0.6, 0.6, (Dn, 4 * Hn)), rng.uniform(-0.6, 0.6, (Hn, 4 * Hn)),
                       rng.uniform(-0.3, 0.3, 4 * Hn), rng.uniform(-0.5, 0.5, (3, Hn)) if peephole else None,
                       dtype=np.float32)
    layer = Layer(d, None, Activations(**acts))
    mask = None if lengths is None else np.arange(Tn)[:, None] < np.asarray(lengths)[None, :]
    fw = sensitivity.forward_states(d, layer, rng.standard_normal((Tn, n, Dn)) * 1.5, mask)
    # the dtype the capture's sample has (recorded_states keeps it)
    fw = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in fw.items()}
    return d, layer, fw, np.where(rng.standard_normal((4, Hn)) > 0, 1.0, -1.0)


@pytest.mark.parametrize("peephole,lengths", [(False, None), (True, None), (True, [14, 9, 1, 5])])
@pytest.mark.parametrize("acts", sorted(COMPILED_ACTS))
def test_compiled_recursion_is_the_numpy_recursion_to_the_bit(acts, peephole, lengths, monkeypatch):
    d, layer, fw, seeds = _float32_states(COMPILED_ACTS[acts], peephole, lengths)
    assert sensitivity.compiled_recursion(d, layer, np.float32)  # else this compares NumPy with itself
    sq_x, sq_h = sensitivity.sensitivity_norms(fw, d, layer, seeds, np.float32)
    monkeypatch.setattr(sensitivity, "compiled_recursion", lambda *a: False)
    ref_x, ref_h = sensitivity.sensitivity_norms(fw, d, layer, seeds, np.float32)
    assert np.all(np.isfinite(sq_x)) and sq_x.max() > 0
    if COMPILED_ACTS[acts].get("cell_output") == "softplus":  # e^x: the C library's against NumPy's
        np.testing.assert_allclose(sq_x, ref_x, rtol=1e-5, atol=1e-12)
    else:  # each product rounds once in NumPy's order: ∂z, hence ∂x, is the same to the bit
        np.testing.assert_array_equal(sq_x, ref_x)
    # ‖∂L/∂h_t‖²: summed in double by the kernel, in float32 by NumPy's einsum
    np.testing.assert_allclose(sq_h, ref_h, rtol=1e-6)
    if lengths is not None:  # a padding step receives nothing; the seed reaches the last valid step
        pad = ~(np.arange(14)[:, None] < np.asarray(lengths)[None, :])
        assert np.all(sq_x[pad] == 0)
        assert sq_h[0, 2] == pytest.approx(9.0)  # length 1: ∂L/∂h_0 is the seed, |±1|² · 9 units


def test_compiled_recursion_only_where_the_kernel_computes_it():
    d, layer, _, _ = _float32_states({}, False, None)
    assert sensitivity.compiled_recursion(d, layer, np.float32)
    assert not sensitivity.compiled_recursion(d, layer, np.float64)  # float64: the NumPy recursion
    assert not sensitivity.compiled_recursion(d, replace(layer, clip=3.0), np.float32)  # clip: needs z
    rng = np.random.default_rng(0)
    lstmp = make_direction(rng.normal(size=(3, 4 * H)), rng.normal(size=(2, 4 * H)), projection=rng.normal(size=(H, 2)),
                           dtype=np.float32)
    assert not sensitivity.compiled_recursion(lstmp, Layer(lstmp), np.float32)  # LSTMP: h = m·R


def test_gate_derivatives_from_the_recorded_copies_equal_the_samples():
    """analyze_gradients hands gate_derivatives its contiguous copies of the sample's gates: same means."""
    m = model(6, 12, init="glorot", forget_bias=1.0, seed=9)
    _, cap = run(m, normal_inputs(n=20, T=15, D=6), lengths=np.array([15, 3, 9, 15] * 5))
    ours = gradients.analyze_gradients(cap).gate_derivative
    direct = gradients.gate_derivatives(cap, gradients.GRADIENT_SEQUENCES)
    assert ours.keys() == direct.keys() and set(ours[(0, "fwd")]) == set("ifgo")
    for key in ours:
        for gate, value in ours[key].items():
            assert value == pytest.approx(direct[key][gate], rel=1e-6), (key, gate)
