"""Issue 14: rules judged by behaviour, not by one number — on small synthetic models.

The trained corpus (tests/test_corpus_findings.py) is the calibration set; these
tests pin each refinement on a model built to show it: a static W rule follows
the capture, C401 needs growth (not one large value, not a plateau, not the
last step of one long sequence), and messages stay finite on tiny inputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from factory import case_like, conv_like, model, normal_inputs, run, with_weights

from lstm_doctor.analyzers.cell import cell_growth, weighty_steps
from lstm_doctor.choices import REPORT_FORMATS
from lstm_doctor.cli.main import cli
from lstm_doctor.findings import Severity
from lstm_doctor.model import GATES
from lstm_doctor.stats import DirectionStats, StatsConfig

H, D = 16, 8
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tweet2vec_like" / "broken"


def found(analysis, code):
    return [f for f in analysis.findings if f.code == code]


def col(gate, unit=None):
    j = GATES.index(gate)
    return slice(j * H, (j + 1) * H) if unit is None else j * H + unit


# -- W1xx: weights are the risk, the capture is the verdict -------------------------------


def switching_large_gain():
    """‖U_g‖ ≈ 7 (> 4.6) but the input drives the gates (W × 9): gates used as switches."""
    m = model(D, H, init="torch", seed=0)
    p = m.layers[0].forward
    return with_weights(m, W=p.W * 9, U=p.U * 6)


def test_w102_is_info_where_the_gates_switch_with_the_input():
    analysis, _ = run(switching_large_gain(), normal_inputs(D=D))
    w102 = found(analysis, "W102")
    assert w102 and all(f.severity == Severity.info for f in w102), [f.message for f in w102]
    assert w102[0].evidence["spectral_norm"] > 4.6 and w102[0].evidence["evidence_from"] == "inputs"
    assert "does not confirm" in w102[0].message
    assert not [f for f in analysis.findings if f.severity >= Severity.warning]


def test_w102_without_inputs_is_a_warning_worded_as_a_risk_with_the_probe():
    analysis, _ = run(switching_large_gain(), normal_inputs(D=D), probe="normal")
    (w102,) = found(analysis, "W102")
    assert w102.severity == Severity.warning
    assert "A risk" in w102.message and "probe" in w102.message and w102.evidence["evidence_from"] == "probe"
    assert set(w102.evidence["scan"]) == set(w102.evidence["gates"])  # the probe's saturation per flagged gate


def test_case_like_w101_w102_are_errors_confirmed_by_the_scan():
    analysis, _ = run(case_like(), conv_like(C=64)[:, :, :10])
    for code in ("W101", "W102"):
        errors = [f for f in found(analysis, code) if f.severity == Severity.error]
        assert errors, code
        assert all("confirms" in f.message and f.evidence["confirmed_gates"] for f in errors)
    assert {"S301", "H601"} <= {f.code for f in analysis.findings if f.severity == Severity.error}


def test_w103_follows_the_observed_forget_gate():
    m = model(D, H, init="torch", seed=0)
    p = m.layers[0].forward
    b = np.array(p.b)
    b[col("f")] = -3.0  # resting f = 0.047: τ = 1.05 steps from the bias alone
    W = np.array(p.W)
    W[:, col("f")] = 0.0
    W[0, col("f")] = 2.0  # ... but feature 0 (mean 3) opens the forget gate: z_f ≈ +3
    x = normal_inputs(D=D)
    x[..., 0] += 3.0
    lifted, _ = run(with_weights(m, W=W, b=b), x)
    (w103,) = found(lifted, "W103")
    assert w103.severity == Severity.info and w103.evidence["observed_mean_forget"] > 0.8
    wiped, _ = run(with_weights(m, b=b), normal_inputs(D=D))  # nothing lifts it: confirmed
    (w103,) = found(wiped, "W103")
    assert w103.severity == Severity.warning and w103.evidence["observed_mean_forget"] < 1 / 3


# -- C401: growth, not one value, not a plateau ----------------------------------------------


def counters(b_f: float, units, T: int):
    """Units whose i and g are pinned at 1 (input-independent) with forget bias b_f:
    c_t → 1/(1 − σ(b_f)) with time constant 1/(1 − σ(b_f))."""
    m = model(D, H, init="torch", seed=0)
    p = m.layers[0].forward
    W, U, b = np.array(p.W), np.array(p.U), np.array(p.b)
    for u in units:
        for g in ("i", "f", "g"):
            W[:, col(g, u)] = 0.0
            U[:, col(g, u)] = 0.0
        b[col("i", u)] = b[col("g", u)] = 10.0
        b[col("f", u)] = b_f
    return with_weights(m, W=W, U=U, b=b), normal_inputs(D=D, T=T)


def test_c401_quiet_on_one_large_unit():
    m, x = counters(3.0, [0], T=150)  # unit 0 counts up to 1/(1 − 0.953) ≈ 21
    analysis, cap = run(m, x)
    assert cap.directions[(0, "fwd")].max_abs_c_t.max() > 10  # the old rule fired on this
    assert not found(analysis, "C401")


def test_c401_quiet_on_counters_that_plateau():
    m, x = counters(3.5, range(H), T=300)  # every unit: warm-up over ~30 steps, then |c| ≈ 34
    analysis, cap = run(m, x)
    g = cell_growth(cap.directions[(0, "fwd")])
    assert g is not None and not g["rising"] and g["quarters"][3] > 10
    assert not found(analysis, "C401")


def test_c401_fires_on_an_integrator():
    m, x = counters(12.0, range(H), T=120)  # f ≈ 1: c_t ≈ t + 1
    (c401,) = found(run(m, x)[0], "C401")
    assert c401.evidence["still_rising"] and c401.evidence["growth_ratio"] > 1.5
    assert "no plateau" in c401.message


def test_steps_with_few_valid_sequences_carry_no_weight():
    st = DirectionStats.empty(0, "fwd", 80, 4, StatsConfig())
    st.n_sequences = 40
    st.valid_t[:40] = 40
    st.valid_t[40:] = 1  # the longest sequence alone
    st.sum_abs_c_t[:40] = 0.85 * 40 * 4  # plateau at 0.85
    st.sum_abs_c_t[40:] = 30.0 * 4  # its own |c| = 30
    assert weighty_steps(st).tolist() == list(range(40))
    g = cell_growth(st)
    assert g["quarter_steps"][-1][1] == 39
    assert np.allclose(g["quarters"], 0.85) and not g["rising"]


def test_lengths_with_one_long_sequence_stay_quiet_and_finite():
    lengths = np.full(64, 30)
    lengths[0] = 200
    x = normal_inputs(D=D, T=200)
    x[0, 30:] *= 40  # the long one is driven hard after step 30
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        analysis, _ = run(model(D, H, init="torch"), x, lengths=lengths)
    assert not [f for f in analysis.findings if f.severity >= Severity.warning], [f.message for f in analysis.findings]


def test_one_sequence_or_three_steps_give_no_nan_and_no_runtime_warning(tmp_path):
    for n, T in ((1, 30), (64, 3), (1, 3)):
        x = tmp_path / f"x{n}_{T}.npy"
        np.save(x, conv_like(n=n, C=T)[:, :, :10])
        out = tmp_path / f"r{n}_{T}.json"
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            result = CliRunner().invoke(
                cli,
                ["diagnose", str(EXAMPLE), "--inputs", str(x), "--format", "json",
                 "--output", str(out), "--exit-zero"],
                catch_exceptions=False,
            )
        assert result.exit_code == 0, result.output
        text = out.read_text()
        assert "slope nan" not in text and "All-NaN" not in result.output


@pytest.mark.parametrize("fmt", REPORT_FORMATS)
def test_the_smallest_samples_render_in_every_format(tmp_path, fmt):
    # One sequence has no partner for the gradient section's input swap; one step has no
    # trend. Every renderer must say so instead of formatting a missing number.
    for n, T in ((1, 3), (1, 1), (2, 1)):
        x = tmp_path / f"x{n}_{T}.npy"
        np.save(x, conv_like(n=n, C=T)[:, :, :10])
        out = tmp_path / f"r{n}_{T}.{fmt}"
        result = CliRunner().invoke(
            cli,
            ["diagnose", str(EXAMPLE), "--inputs", str(x), "--format", fmt, "--output", str(out),
             "--exit-zero"],
        )
        assert result.exit_code == 0, (n, T, result.output)
        assert out.stat().st_size > 0
        if n == 1 and fmt in ("text", "markdown", "html"):  # the inputs line counts in English
            content = out.read_text(encoding="utf-8")
            assert "1 sequence ×" in content and "1 sequences" not in content


# -- I503: advice that fits the input ------------------------------------------------------


def i503(x, **kw):
    return found(run(model(x.shape[-1], H, init="torch"), x, **kw)[0], "I503")


def test_i503_never_tells_one_hot_or_embedding_inputs_to_standardise():
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, 12, (64, 30))
    one_hot = np.eye(12, dtype=np.float32)[symbols]  # mean 1/12 ≫ its std per column? RMS 0.29: "not standardised"
    table = (rng.standard_normal((12, 8)) * 3 + 2).astype(np.float32)  # an embedding table far from unit scale
    embedded = table[symbols]
    dense = (rng.standard_normal((64, 30, 8)) * 3 + 6).astype(np.float32)  # the same scale, not from a table
    assert not i503(one_hot) and not i503(embedded)
    (f,) = i503(dense)
    assert f.evidence["input_kind"] == "dense" and "Standardise" in f.fix


def test_input_kind_tells_repeated_rows_from_a_repeated_first_column():
    """The shortcut on column 0 (many distinct values: dense) must not decide when only column 0 repeats."""
    from types import SimpleNamespace

    from lstm_doctor.analyzers.inputs import input_kind

    rng = np.random.default_rng(2)

    def kind(x):  # x (n, T, D) -> the capture's time-major sample
        return input_kind(SimpleNamespace(sample_inputs=np.swapaxes(x, 0, 1), sample_lengths=None))

    table = (rng.standard_normal((12, 8)) * 3 + 2).astype(np.float32)
    embedded = table[rng.integers(0, 12, (64, 30))]
    dense = rng.standard_normal((64, 30, 8)).astype(np.float32)
    first_constant = dense.copy()
    first_constant[..., 0] = 1.5  # one distinct value in column 0, every row still distinct
    first_from_table = embedded.copy()
    first_from_table[..., 1:] = dense[..., 1:]  # column 0 repeats as in a table, the rows do not
    assert kind(embedded) == "embedding"
    assert kind(dense) == kind(first_constant) == kind(first_from_table) == "dense"


def test_i503_counts_get_their_own_advice():
    rng = np.random.default_rng(1)
    counts = (rng.poisson(0.3, (64, 30, 8)) * rng.integers(1, 60, (1, 1, 8))).astype(np.float32)
    (f,) = i503(counts)
    assert f.evidence["input_kind"] == "bag-of-features"
    assert "log(1 + x)" in f.fix and "standardise indicator" in f.fix and "Standardise per feature" not in f.fix


def test_h603_ignores_the_tail_of_one_long_sequence():
    lengths = np.full(64, 40)
    lengths[0] = 160
    x = normal_inputs(D=D, T=160)
    x[0, 40:] = 0.0  # the long one is fed zeros: it settles on a fixed point on its own
    x[1:, 40:] = 0.0  # (padding)
    analysis, cap = run(model(D, H, init="torch"), x, lengths=lengths)
    st = cap.directions[(0, "fwd")]
    assert st.max_dh_t[120:].max() / np.sqrt(H) < 1e-4  # the old H603 read "fixed from step ~100 for every sequence"
    assert not found(analysis, "H603")
