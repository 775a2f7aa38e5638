"""Streaming reducers: chunked + merged equals all-at-once; closed forms match brute force."""

from __future__ import annotations

import numpy as np
import pytest
from factory import model, normal_inputs, stat_fields

from lstm_doctor.capture.pipeline import CaptureOptions, capture
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import reorder_gates
from lstm_doctor.stats import EncodingStats, axis_correlations


def test_chunk_size_does_not_change_the_statistics():
    # float64: BLAS may sum in another order for another batch size, and
    # float32 rounding would then differ at 1e-7.
    m = model(6, 12, layers=2, bidirectional=True, dtype=np.float64)
    x = normal_inputs(n=37, T=9, D=6).astype(np.float64)
    lengths = np.random.default_rng(0).integers(1, 10, 37)
    one = capture(m, InputSource(x, "btd", lengths=lengths), CaptureOptions(chunk_size=37))
    many = capture(m, InputSource(x, "btd", lengths=lengths), CaptureOptions(chunk_size=5))
    for key in one.directions:
        a, b = stat_fields(one.directions[key]), stat_fields(many.directions[key])
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-9, err_msg=f"{key} {name}")
    assert one.encoding.mean_pairwise_cosine() == np.float64(many.encoding.mean_pairwise_cosine()) or np.isclose(
        one.encoding.mean_pairwise_cosine(), many.encoding.mean_pairwise_cosine()
    )
    assert one.inputs.trailing_zero_steps == many.inputs.trailing_zero_steps


def test_encoding_closed_forms_match_brute_force():
    rng = np.random.default_rng(0)
    enc = rng.standard_normal((50, 7)) + 0.5
    st = EncodingStats.empty(7)
    st.update(enc[:20])
    st.update(enc[20:])
    unit = enc / np.linalg.norm(enc, axis=1, keepdims=True)
    cos = unit @ unit.T
    brute = (cos.sum() - 50) / (50 * 49)
    assert np.isclose(st.mean_pairwise_cosine(), brute)
    s = np.linalg.svd(enc, compute_uv=False)
    p = s / s.sum()
    assert np.isclose(st.effective_rank(), np.exp(-(p * np.log(p)).sum()))
    assert np.isclose(st.cross_input_std(), enc.std(axis=0).mean())


def test_axis_correlations_tell_channels_from_time():
    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.standard_normal((40, 8, 16)), axis=0)  # (T, B, D): smooth in time
    step, feat = axis_correlations(smooth)
    assert step > 0.8 and abs(feat) < 0.3


@pytest.mark.parametrize("block", [1, 7, 1 << 15])
def test_axis_correlations_in_blocks_are_the_whole_sample_pearson_means(monkeypatch, block):
    """Blocks of steps (one step, a block boundary inside the sample, one block) give the
    definition on the whole sample: centred per step / per feature, non-finite values as 0."""
    from lstm_doctor import stats

    monkeypatch.setattr(stats, "CORRELATION_BLOCK", block)
    rng = np.random.default_rng(2)
    x = np.cumsum(rng.standard_normal((23, 3, 5)), axis=0) + np.arange(5)  # (T, B, D)
    x[4, 1, 2], x[9, 0, 0] = np.nan, -np.inf
    z = np.where(np.isfinite(x), x, 0.0)

    def pearson_next(rows):  # rows (K, M): each row with the next
        c = rows - rows.mean(axis=1, keepdims=True)
        return np.mean([c[k] @ c[k + 1] / np.sqrt((c[k] @ c[k]) * (c[k + 1] @ c[k + 1])) for k in range(len(c) - 1)])

    columns = z.reshape(-1, 5)
    columns = columns - columns.mean(axis=0)
    want_feat = np.mean([columns[:, d] @ columns[:, d + 1] / np.sqrt((columns[:, d] @ columns[:, d])
                                                                      * (columns[:, d + 1] @ columns[:, d + 1]))
                         for d in range(4)])
    step, feat = stats.axis_correlations(x)
    assert step == pytest.approx(pearson_next(z.reshape(23, -1)), rel=1e-12)
    assert feat == pytest.approx(want_feat, rel=1e-12)
    assert np.isnan(stats.axis_correlations(x[:1])[0]) and np.isnan(stats.axis_correlations(x[..., :1])[1])


def test_reorder_gates_from_every_framework_order():
    H = 3
    blocks = {g: np.full(H, k) for k, g in enumerate("ifgo")}
    for order in ("ifgo", "ifco", "iofc", "igfo", "ijfo"):
        stored = np.concatenate([blocks[{"c": "g", "j": "g"}.get(g, g)] for g in order])
        np.testing.assert_array_equal(reorder_gates(stored, order), np.repeat(np.arange(4), H))
