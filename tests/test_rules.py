"""The scenario suite: every rule fires on its planted defect and stays quiet on healthy models.

Each scenario is a small synthetic LSTM plus inputs with one planted defect.
The healthy set (PyTorch-style uniform init, Glorot with forget bias 1, other
H/T, stacked bidirectional, and a trained-looking model whose gates switch with
the input) must report no warning and no error; the count of false positives
is printed in the test summary.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from factory import (
    case_like,
    codes,
    conv_like,
    model,
    normal_inputs,
    run,
    with_acts,
    with_weights,
)

from lstm_doctor.analyzers import RULES
from lstm_doctor.analyzers.registry import Context
from lstm_doctor.findings import Severity

H, D = 16, 8


def healthy():
    return model(D, H, init="torch", seed=0)


def scenario_W101():
    m = case_like()
    return run(m, conv_like(C=64).transpose(0, 1, 2)[:, :, :10])


def scenario_W102():
    m = healthy()
    return run(m.__class__(layers=(with_weights(m, U=m.layers[0].forward.U * 25).layers[0],)), normal_inputs(D=D))


def scenario_W103():
    m = healthy()
    b = m.layers[0].forward.b.copy()
    b[H : 2 * H] = -8
    return run(with_weights(m, b=b), normal_inputs(D=D))


def scenario_W104():
    m = healthy()
    return run(with_weights(m, peephole=np.full((3, H), 8.0)), normal_inputs(D=D))


def scenario_W105():
    m = healthy()
    U = m.layers[0].forward.U.copy()
    U[3, 17] = np.nan
    return run(with_weights(m, U=U), normal_inputs(D=D))


def scenario_W106():
    # Keras-style weights (forget bias +1) whose f and g blocks were swapped on import.
    m = model(D, H, init="glorot", forget_bias=1.0)
    p = m.layers[0].forward
    swap = lambda a: np.concatenate([a[..., :H], a[..., 2 * H : 3 * H], a[..., H : 2 * H], a[..., 3 * H :]], -1)  # noqa: E731
    return run(with_weights(m, W=swap(p.W), U=swap(p.U), b=swap(p.b)), normal_inputs(D=D))


def scenario_A201():
    return run(with_acts(healthy(), cell_output="sigmoid"), normal_inputs(D=D))


def scenario_A202():
    return run(with_acts(healthy(), gate="tanh"), normal_inputs(D=D))


def scenario_A203():
    return run(with_acts(healthy(), candidate="sigmoid"), normal_inputs(D=D))


def scenario_S301():
    return scenario_W102()


def _biased(m, **gates):
    """``m`` with ``value`` added to the bias of each named gate block."""
    p = m.layers[0].forward
    b = p.b.copy()
    for gate, value in gates.items():
        k = "ifgo".index(gate)
        b[k * p.H:(k + 1) * p.H] += value
    return with_weights(m, b=b)


def _gate_scaled(m, gate: str, factor: float):
    """``m`` with the input weights of one gate block scaled by ``factor``."""
    p = m.layers[0].forward
    W = p.W.copy()
    k = "ifgo".index(gate)
    W[:, k * p.H:(k + 1) * p.H] *= factor
    return with_weights(m, W=W)


def scenario_S302():
    # Planted: gates held open (i, f, o biases +6..+10) with a strong candidate,
    # so |c| is large and h = o·tanh(c) sits at ±1.
    return run(_gate_scaled(_biased(healthy(), o=10.0, f=8.0, i=6.0), "g", 40), normal_inputs(D=D, T=60))


def scenario_S303():
    # Planted: the candidate's input weights ×25, nothing else: tanh(z_g) at ±1.
    return run(_gate_scaled(healthy(), "g", 25), normal_inputs(D=D))


def scenario_S304():
    m = healthy()
    p = m.layers[0].forward
    dead = np.arange(4)  # units 0-3: no input, no recurrence, no bias in any gate
    cols = np.concatenate([dead + j * H for j in range(4)])
    W, U, b = p.W.copy(), p.U.copy(), p.b.copy()
    W[:, cols] = 0
    U[:, cols] = 0
    b[cols] = 0
    return run(with_weights(m, W=W, U=U, b=b), normal_inputs(D=D))


def scenario_C401():
    # Planted: a forget gate held at 1 (bias +12) and a positive candidate (bias
    # +1.5): the cell integrates c_t ≈ c_{t-1} + i·g, growing for all 60 steps.
    return run(_biased(healthy(), f=12.0, g=1.5), normal_inputs(D=D, T=60))


def scenario_C402():
    x = normal_inputs(D=D)
    x[3, 7, 2] = np.nan
    return run(healthy(), x)


def scenario_I501():
    return run(healthy(), normal_inputs(D=D, scale=1e-4))


def scenario_I502():
    return run(healthy(), normal_inputs(D=D, scale=40))


def scenario_I503():
    m = healthy()
    x = np.abs(normal_inputs(D=D)) * 0.05
    return run(with_weights(m, W=np.abs(m.layers[0].forward.W)), x)


def scenario_I504():
    m = model(10, H, init="torch")
    return run(m, conv_like(C=128), layout="btd")  # (B, 128 channels, 10 positions) read as time-first


def scenario_I505():
    x = normal_inputs(D=D)
    x[0, 0, 0] = np.nan
    return run(healthy(), x)


def scenario_I506():
    x = normal_inputs(D=D, T=40)
    x[:, 15:] = 0  # 25 trailing zero steps, no lengths given
    return run(healthy(), x)


def scenario_H601():
    # Planted: a healthy model fed sequences that differ only in their first two
    # steps, which it has forgotten 30 steps later: every encoding is the same.
    x = np.repeat(normal_inputs(n=1, D=D, T=30), 64, axis=0)
    x[:, :2] = normal_inputs(n=64, D=D, T=2, seed=5)
    return run(healthy(), x)


def scenario_H603():
    # W = 0: the input never reaches the state, which settles on one fixed point.
    m = healthy()
    return run(with_weights(m, W=np.zeros_like(m.layers[0].forward.W)), normal_inputs(D=D, T=60))


def scenario_H604():
    # Planted: 64 inputs that are one sequence scaled by 0.5 … 1.5: a healthy
    # H = 64 model maps them onto a curve, effective rank ≈ 1 of 64.
    scales = np.linspace(0.5, 1.5, 64, dtype=np.float32)[:, None, None]
    return run(model(D, 64, init="torch", seed=0), scales * normal_inputs(n=1, D=D))


def scenario_A205():
    # Planted: a Keras 2 weights-only file's importer statement, gate activation assumed.
    m = dataclasses.replace(
        healthy(), source_format="keras",
        assumptions=(("activations", "gate hard_sigmoid, candidate tanh, cell output tanh (Keras 2.2.4 defaults)",
                      "default"),),
    )
    return run(m, normal_inputs(D=D))


def scenario_I507():
    # Planted: a state_dict (no batch_first) fed smooth sequences stored (T, B, D), read as btd.
    t = np.arange(40)[None, :, None]
    rng = np.random.default_rng(3)
    x = np.sin(rng.uniform(0.05, 0.3, (48, 1, D)) * t + rng.uniform(0, 6.3, (48, 1, D))).astype(np.float32)
    return run(dataclasses.replace(healthy(), source_format="torch"), x.transpose(1, 0, 2).copy())


def scenario_I508():
    # Planted: a model that masks zero steps, fed zero-padded inputs without a mask.
    x = normal_inputs(D=D, T=40)
    x[:, 30:] = 0
    return run(dataclasses.replace(healthy(), masking="Masking(mask_value=0)", mask_value=0.0), x)


SCENARIOS = {name.split("_")[1]: fn for name, fn in globals().items() if name.startswith("scenario_")}
IN_SCOPE = sorted(c for c in RULES if c not in ("A204", "H602", "G701", "G702"))


def test_every_rule_in_scope_has_a_scenario():
    assert sorted(SCENARIOS) == IN_SCOPE


@pytest.mark.parametrize("code", IN_SCOPE)
def test_rule_fires_on_its_planted_defect(code):
    analysis, _ = SCENARIOS[code]()
    assert code in codes(analysis), [f"{f.code}: {f.message}" for f in analysis.findings]


def test_case_like_saturation_is_an_error_and_names_its_root_cause():
    analysis, _ = scenario_W101()
    by_code = {}
    for f in analysis.findings:
        by_code.setdefault(f.code, []).append(f)
    assert all(f.severity == Severity.error for f in by_code["S301"])
    root = [f for f in by_code["W101"] if "explains" in f.evidence]
    assert len(root) == 1 and root[0].evidence["matrix"] == "U"
    assert {"S301", "C401", "H601"} <= set(root[0].evidence["explains"])


def test_channels_first_read_correctly_is_not_a_time_axis_suspect():
    m = model(128, H, init="torch")
    analysis, cap = run(m, conv_like(C=128), layout="bct")
    assert "I504" not in codes(analysis)
    assert cap.T == 10


def test_padding_with_lengths_is_quiet():
    x = normal_inputs(D=D, T=40)
    x[:, 15:] = 0
    analysis, _ = run(healthy(), x, lengths=np.full(len(x), 15))
    assert "I506" not in codes(analysis)
    assert "H603" not in codes(analysis)


def test_a201_fires_from_behaviour_alone():
    """Declared tanh, but the hidden sequence (as a user's code produced it) is o·σ(c)."""
    m = healthy()
    analysis, cap = run(m, normal_inputs(D=D))
    assert "A201" not in codes(analysis)
    sample = cap.sample[(0, "fwd")]
    sample["h"] = sample["o"] / (1 + np.exp(-sample["c"]))
    ctx = Context(model=m, capture=cap)
    found = list(RULES["A201"].check(ctx))
    assert found and "σ(c)" in found[0].message and found[0].evidence["declared"] == "tanh"


def test_s301_switching_gates_are_info_not_warning():
    """Large but input-driven pre-activations: gates used as switches (healthy)."""
    m = healthy()
    analysis, _ = run(with_weights(m, W=m.layers[0].forward.W * 9), normal_inputs(D=D))
    s301 = [f for f in analysis.findings if f.code == "S301"]
    assert s301, "saturation above 50% should still be reported"
    assert all(f.severity == Severity.info for f in s301)


def test_h601_says_so_when_too_few_sequences():
    analysis, _ = run(case_like(), conv_like(n=4, C=64)[:, :, :10])
    assert "H601" not in codes(analysis)
    assert "8" in analysis.skipped["H601"]


def test_thresholds_change_the_decision():
    analysis, _ = scenario_W103()
    assert "W103" in codes(analysis)
    m = healthy()
    b = m.layers[0].forward.b.copy()
    b[H : 2 * H] = -8
    relaxed, _ = run(with_weights(m, b=b), normal_inputs(D=D), thresholds={"W103": {"min_timescale": 1.0}})
    assert "W103" not in codes(relaxed)


# -- the healthy set -----------------------------------------------------------
HEALTHY = {
    "torch-uniform H16 T30": lambda: run(model(8, 16, init="torch"), normal_inputs(D=8, T=30)),
    "glorot forget-bias-1 H64 T100": lambda: run(
        model(12, 64, init="glorot", forget_bias=1.0, seed=4), normal_inputs(n=96, D=12, T=100)
    ),
    "torch-uniform H128 T20 float64": lambda: run(
        model(32, 128, init="torch", seed=7, dtype=np.float64), normal_inputs(n=48, D=32, T=20).astype(np.float64)
    ),
    "2-layer bidirectional H24": lambda: run(
        model(6, 24, layers=2, bidirectional=True, init="torch", seed=9), normal_inputs(D=6, T=25)
    ),
    "switching gates (trained-looking)": lambda: run(
        with_weights(model(8, 16), W=model(8, 16).layers[0].forward.W * 9), normal_inputs(D=8)
    ),
    "with lengths": lambda: run(
        model(8, 16, seed=2), normal_inputs(D=8, T=30), lengths=np.random.default_rng(0).integers(5, 31, 64)
    ),
}

FALSE_POSITIVES: dict[str, list[str]] = {}


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_models_report_no_warning_or_error(name, record_property):
    analysis, _ = HEALTHY[name]()
    bad = [f"{f.code} {f.severity.name}: {f.message}" for f in analysis.findings if f.severity >= Severity.warning]
    FALSE_POSITIVES[name] = bad
    record_property("false_positives", len(bad))
    assert not bad


@pytest.mark.parametrize("scenario", ["healthy", "W101"])
def test_the_pytensor_engine_gives_the_same_findings(scenario):
    # The healthy model has no finding at all, so the CASE.md-like scenario
    # (many findings) is what shows the engines agree finding by finding.
    m = model(8, 16) if scenario == "healthy" else case_like(H=32, D=8)
    x = normal_inputs(D=8, T=12, n=16)
    a_np, _ = run(m, x)
    a_pt, _ = run(m, x, engine="pytensor")
    got = [(f.code, f.severity, f.location) for f in a_pt.findings]
    assert got == [(f.code, f.severity, f.location) for f in a_np.findings]
    assert bool(got) == (scenario == "W101")


@pytest.mark.parametrize("block", [7, 1 << 16])
def test_hidden_fit_in_blocks_gives_the_whole_sample_means(monkeypatch, block):
    """A201's behaviour check over blocks of steps (NaN entries left out) = the formulas on the whole sample."""
    from lstm_doctor.analyzers import activation

    monkeypatch.setattr(activation, "FIT_BLOCK", block)
    rng = np.random.default_rng(4)
    c = rng.standard_normal((30, 5, 6)).astype(np.float32)
    o = rng.random((30, 5, 6)).astype(np.float32)
    h = (o * np.tanh(c)).astype(np.float32)
    h[3, 1, 2], c[17, 0, 0] = np.nan, np.inf
    fit = activation.hidden_fit(h, o, c)
    ok = np.isfinite(h) & np.isfinite(o) & np.isfinite(c)
    h64, o64, c64 = (a[ok].astype(np.float64) for a in (h, o, c))
    want = {
        "residual_tanh": np.abs(h64 - o64 * np.tanh(c64)).mean(),
        "residual_sigmoid": np.abs(h64 - o64 / (1 + np.exp(-c64))).mean(),
        "min_h": h64.min(),
        "share_c_negative": (c64 < 0).mean(),
        "share_c_positive": (c64 > 0).mean(),
        "mean_abs_h": np.abs(h64).mean(),
    }
    assert set(fit) == set(want)
    for key, value in want.items():
        assert fit[key] == pytest.approx(value, rel=1e-9), key
    assert activation.hidden_fit(h[:0], o[:0], c[:0]) == {}
