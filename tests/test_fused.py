"""The fused engine computes what the NumPy engine computes.

Every statistic of ``DirectionStats`` and the sample must agree between the two
engines for every configuration the kernel handles (activations, peepholes,
clip, lengths, two layers, bidirectional, non-finite values); integer fields
exactly, float fields to float32 rounding (the kernel's σ and tanh are within
2 ulp of NumPy's, its moments are summed in float64).
"""

from __future__ import annotations

import numpy as np
import pytest
from factory import model, normal_inputs, stat_fields, with_acts

from lstm_doctor.capture.engines import resolve_engine
from lstm_doctor.capture.fused import engine as fused
from lstm_doctor.capture.pipeline import SAMPLE_FIELDS, CaptureOptions, capture
from lstm_doctor.load.inputs import InputSource


def _both(m, x, lengths=None, **options):
    assert fused.available(), f"the C kernel is not built ({fused.unavailable_reason()}): run `pip install -e .`"
    source = lambda: InputSource(x, "btd", lengths=lengths)  # noqa: E731
    a = capture(m, source(), CaptureOptions(engine="numpy", **options))
    b = capture(m, source(), CaptureOptions(engine="fused", **options))
    assert (a.engine, b.engine) == ("numpy", "fused")
    return a, b


def _assert_same(a, b, rtol=2e-5, atol=2e-6):
    """Integer statistics equal (up to ±1 per 1,000 for counts on a threshold,
    where 2 ulp can tip a value over), floats to float32 rounding."""
    for key in a.directions:
        fa, fb = stat_fields(a.directions[key]), stat_fields(b.directions[key])
        assert fa.keys() == fb.keys()
        for name in fa:
            va, vb = np.asarray(fa[name]), np.asarray(fb[name])
            if va.dtype.kind in "iub":
                np.testing.assert_allclose(vb, va, rtol=1e-3, atol=1, err_msg=f"{key} {name}")
            else:
                # second moments of values near 1 are the sums of squares of tiny deviations
                np.testing.assert_allclose(vb, va, rtol=rtol, atol=atol * max(1.0, np.nanmax(np.abs(va), initial=0)),
                                           err_msg=f"{key} {name}")
        for name in a.sample[key]:
            np.testing.assert_allclose(b.sample[key][name], a.sample[key][name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(b.sample_encodings, a.sample_encodings, rtol=1e-5, atol=1e-6)


CONFIGS = {
    "plain": dict(),
    "two layers, bidirectional": dict(layers=2, bidirectional=True),
    "peepholes": dict(peephole=True),
    "hard sigmoid gates, sigmoid cell output": dict(acts=dict(gate="hard_sigmoid", cell_output="sigmoid")),
    "keras 3 hard sigmoid, relu": dict(acts=dict(gate="hard_sigmoid6", candidate="relu", cell_output="relu")),
    "identity cell output, softsign": dict(acts=dict(candidate="softsign", cell_output="identity")),
    "softplus, tanh gates": dict(acts=dict(gate="tanh", cell_output="softplus")),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_statistics_match_the_numpy_engine(name):
    kw = dict(CONFIGS[name])
    acts = kw.pop("acts", None)
    peephole = kw.pop("peephole", False)
    m = model(7, 13, seed=4, peephole=np.full((3, 13), 0.3, np.float32) if peephole else None, **kw)
    if acts:
        m = with_acts(m, **acts)
    x = normal_inputs(n=45, T=11, D=7, seed=2, scale=2.0)
    a, b = _both(m, x, chunk_size=20, sample_size=9)
    _assert_same(a, b)


def test_input_projections_in_blocks_of_steps_change_nothing(monkeypatch):
    # x·W is computed 4 steps at a time here (11 steps: blocks of 4, 4, 3); BLAS may
    # round a GEMM of other rows differently, so to float32 rounding as the others
    m = model(7, 13, layers=2, bidirectional=True, seed=4)
    x = normal_inputs(n=20, T=11, D=7, seed=2, scale=2.0)
    monkeypatch.setattr(fused, "INPUT_BLOCK_BYTES", 4 * 20 * 4 * 13 * 4)
    assert fused.input_block_steps(20, 13, 11) == 4
    blocks = capture(m, InputSource(x, "btd"), CaptureOptions(engine="fused", chunk_size=20, sample_size=5))
    a, _ = _both(m, x, chunk_size=20, sample_size=5)
    _assert_same(a, blocks)


def test_fused_statistics_with_lengths_clip_and_the_sample():
    m = model(5, 9, layers=2, bidirectional=True, seed=1)
    from dataclasses import replace

    m = replace(m, layers=tuple(replace(layer, clip=1.5) for layer in m.layers))
    x = normal_inputs(n=40, T=12, D=5, seed=3, scale=3.0)
    lengths = np.random.default_rng(5).integers(1, 13, 40)
    a, b = _both(m, x, lengths, chunk_size=16, sample_size=7, sample_fields=SAMPLE_FIELDS)
    _assert_same(a, b)
    assert {"input_term", "recurrent_term", "preact", "c"} <= set(b.sample[(1, "rev")])


def test_the_sample_record_of_a_peephole_model_keeps_every_term():
    from lstm_doctor.capture.numpy_loop import CAPTURE_STATS
    from lstm_doctor.capture.numpy_loop import run_direction as numpy_run
    from lstm_doctor.stats import DirectionStats, StatsConfig

    m = model(5, 6, seed=3, peephole=np.full((3, 6), -0.4, np.float32))
    layer, params = m.layers[0], m.layers[0].forward
    x = normal_inputs(n=12, T=7, D=5, seed=4).transpose(1, 0, 2).copy()
    records = []
    for run in (numpy_run, fused.run_direction):
        stats = DirectionStats.empty(0, "fwd", 7, 6, StatsConfig())
        reducer = stats.reducer(12, None, layer, params.h0, np.float32, params)
        records.append(run(params, layer, x, None, CAPTURE_STATS, observer=reducer, keep=5).sample)
    want, got = records
    for name in ("input_term", "recurrent_term", "peephole_term", "preact", "i", "f", "g", "o", "c", "h"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.abs(got.peephole_term).max() > 0


def test_saturated_gates_keep_their_tiny_cross_input_spread():
    # CASE.md: gates pinned near 1 that differ across inputs by ~1e-8
    m = model(6, 8, seed=2, forget_bias=12.0)
    x = normal_inputs(n=30, T=10, D=6, seed=1, scale=0.01)
    a, b = _both(m, x)
    _assert_same(a, b)
    sa, sb = a.directions[(0, "fwd")], b.directions[(0, "fwd")]
    np.testing.assert_allclose(sb.gates["f"].right_tu, sa.gates["f"].right_tu)


def test_non_finite_values_are_found_at_the_same_step():
    m = model(4, 6, seed=0)
    x = normal_inputs(n=10, T=8, D=4, seed=0)
    x[5, 3, 1] = np.nan  # sequence 5, step 3
    a, b = _both(m, x)
    sa, sb = a.directions[(0, "fwd")], b.directions[(0, "fwd")]
    assert sa.first_nonfinite_step == sb.first_nonfinite_step == 3
    assert sa.nonfinite_count == sb.nonfinite_count > 0


def test_the_compiled_kernel_is_built():
    # Every parity test here runs the C kernel only if it imports; without it
    # they would compare the NumPy engine with itself.
    assert fused.available(), (
        f"the fused engine's C extension is not built ({fused.unavailable_reason()}): "
        "run `pip install -e .` (or `python setup.py build_ext --inplace`)"
    )


def _ulp_errors(code, x, want):
    out = np.empty_like(x)
    fused.kernels().apply(code, x, out)
    finite = np.isfinite(want)
    err = np.abs(out[finite].astype(np.float64) - want[finite]) / np.spacing(np.abs(want[finite]))
    return out, err


def test_tanh_is_within_two_ulp_of_numpy_everywhere():
    x = np.concatenate([np.linspace(-20, 20, 400_001, dtype=np.float32), np.float32([np.nan, np.inf, -np.inf, 1e-30])])
    out, err = _ulp_errors(fused.ACTIVATION_CODES["tanh"], x, np.tanh(x))
    assert err.max() <= 2
    assert np.isnan(out[-4]) and out[-3] == 1.0 and out[-2] == -1.0 and out[-1] == np.float32(1e-30)


def test_sigmoid_is_within_two_ulp_of_the_exact_value():
    x = np.concatenate([np.linspace(-30, 30, 300_001, dtype=np.float32), np.float32([np.nan, np.inf, -np.inf])])
    exact = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))  # float64, then rounded to float32
    out, err = _ulp_errors(fused.ACTIVATION_CODES["sigmoid"], x, exact.astype(np.float32))
    assert err.max() <= 2
    assert np.isnan(out[-3]) and out[-2] == 1.0 and out[-1] == 0.0


def test_auto_picks_fused_for_every_float32_capture():
    big, small = model(64, 256), model(8, 16)
    assert resolve_engine("auto", small, T=30, n_sequences=4) == "fused"
    assert resolve_engine("auto", big, T=150, n_sequences=32) == "fused"
    assert resolve_engine("auto", model(8, 16, dtype=np.float64), T=30, n_sequences=64) == "numpy"
    assert resolve_engine("pytensor", small, T=30, n_sequences=64) == "pytensor"
    assert resolve_engine("fused", model(8, 16, dtype=np.float64), T=30, n_sequences=64) == "numpy"


def test_without_the_compiled_kernel_auto_runs_numpy_with_a_note(monkeypatch, capsys):
    import sys

    # as on a machine where the install found no C compiler: the module does not import
    monkeypatch.setitem(sys.modules, "lstm_doctor.capture.fused._kernels", None)
    monkeypatch.setattr(fused, "_KERNELS", None)
    monkeypatch.setattr(fused, "_NOTED", False)
    assert not fused.available()
    m = model(4, 6, seed=0)
    x = normal_inputs(n=10, T=5, D=4)
    for engine in ("auto", "fused"):
        result = capture(m, InputSource(x, "btd"), CaptureOptions(engine=engine))
        assert result.engine == "numpy"
    err = capsys.readouterr().err
    assert err.count("note: the fused engine's compiled kernel is not available") == 1  # once per process
    want = capture(m, InputSource(x, "btd"), CaptureOptions(engine="numpy"))
    for key in want.directions:
        fa, fb = stat_fields(want.directions[key]), stat_fields(result.directions[key])
        for name in fa:
            np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


def test_the_kernel_refuses_buffers_of_the_wrong_type_or_size():
    k = fused.kernels()
    D = 3
    good = [np.zeros((4, D), np.float32), np.zeros(D), np.zeros(D), np.zeros(D, np.float32), np.zeros(D, np.float32)]
    assert k.input_moments(*good) == (12, 0)
    with pytest.raises(TypeError):  # float64 rows
        k.input_moments(np.zeros((4, D)), *good[1:])
    with pytest.raises(ValueError):  # sums of the wrong length
        k.input_moments(good[0], np.zeros(D + 1), *good[2:])
    with pytest.raises(TypeError):  # a read-only output
        ro = np.zeros(D)
        ro.flags.writeable = False
        k.input_moments(good[0], ro, *good[2:])
    with pytest.raises((TypeError, ValueError)):  # not contiguous
        k.input_moments(np.zeros((4, 2 * D), np.float32)[:, ::2], *good[1:])
    with pytest.raises(TypeError):
        k.fused_step(0, 1, 2, 3)


def test_float64_models_fall_back_to_the_numpy_loop():
    m = model(4, 6, dtype=np.float64)
    x = normal_inputs(n=10, T=5, D=4).astype(np.float64)
    a = capture(m, InputSource(x, "btd"), CaptureOptions(engine="numpy"))
    b = capture(m, InputSource(x, "btd"), CaptureOptions(engine="fused"))
    assert b.engine == "numpy"  # the report names the engine that ran
    for key in a.directions:
        fa, fb = stat_fields(a.directions[key]), stat_fields(b.directions[key])
        for name in fa:
            np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


def test_input_statistics_match_with_the_compiled_pass():
    from lstm_doctor.stats import InputStats

    x = normal_inputs(n=20, T=9, D=5, seed=7).transpose(1, 0, 2).copy()
    x[2, 3, 1] = 0.0
    x[4, 5, 2] = np.nan
    x[6, 7, 3] = -np.inf
    a, b = InputStats.empty(9, 5), InputStats.empty(9, 5)
    a.update(x, None)
    b.update(x, None, fused.kernels())
    for name in ("sum_d", "sumsq_d", "min_d", "max_d"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, err_msg=name)
    assert (a.zeros, a.nonfinite, a.count, a.n) == (b.zeros, b.nonfinite, b.count, b.n) and b.nonfinite == 2


def test_the_bundled_case_gives_the_same_findings_on_both_engines():
    # CASE.md's encoder: every finding, its location and its severity agree;
    # messages may differ in the last digits of float statistics only.
    from pathlib import Path

    from factory import run

    from lstm_doctor.load import load_model

    folder = Path(__file__).resolve().parents[1] / "examples" / "tweet2vec_like"
    m = load_model(str(folder / "broken"))
    x = np.load(folder / "conv_output.npy")
    found = {}
    for engine in ("numpy", "fused"):
        analysis, cap = run(m, x, engine=engine)
        assert cap.engine == engine
        found[engine] = sorted((f.code, f.severity, str(f.location)) for f in analysis.findings)
    assert found["fused"] == found["numpy"]
    assert {"S301", "A201", "C401", "H601"} <= {code for code, _, _ in found["fused"]}


def test_the_last_layer_keeps_only_its_final_h_and_the_same_values():
    """run_chunk(final_h_only=True), as the pipeline streams: the fused engine returns the last
    layer's h as its final step alone (no (T, B, H) array) with the values of the full run,
    the sample keeps h in full, and the earlier layer still hands its whole sequence on."""
    from lstm_doctor.capture.engines import final_hidden, run_chunk
    from lstm_doctor.capture.numpy_loop import CAPTURE_STATS
    from lstm_doctor.stats import DirectionStats, StatsConfig

    m = model(5, 9, layers=2, bidirectional=True, seed=1)
    x = np.ascontiguousarray(normal_inputs(n=12, T=10, D=5, seed=3, scale=2.0).transpose(1, 0, 2))  # (T, B, D)
    lengths = np.array([10, 3, 7, 10, 1, 9, 10, 4, 10, 2, 8, 6])
    mask = np.arange(10)[:, None] < lengths[None, :]

    def run(final_h_only):
        reducers = {(k, d): DirectionStats.empty(k, d, 10, 9, StatsConfig()).reducer(12, mask, layer, p.h0,
                                                                                    np.float32, p)
                    for k, d, layer, p in m.units()}
        records = run_chunk(m, x, lengths, "fused", CAPTURE_STATS, observers=reducers, keep=4,
                            keep_fields=("i", "c", "h"), final_h_only=final_h_only)
        return records, final_hidden(m, records)

    short, enc_short = run(True)
    full, enc_full = run(False)
    for d in ("fwd", "rev"):
        assert short[(1, d)].h.shape == (1, 12, 9) and full[(1, d)].h.shape == (10, 12, 9)
        np.testing.assert_array_equal(short[(1, d)].h[0], full[(1, d)].h[-1])
        np.testing.assert_array_equal(short[(1, d)].sample.h, full[(1, d)].sample.h)
        assert short[(1, d)].sample.h.shape == (10, 4, 9)
        assert short[(0, d)].h.shape == (10, 12, 9)  # layer 0 feeds layer 1
    np.testing.assert_array_equal(enc_short, enc_full)
