"""The Numba kernel of the fused engine before it was ported to C (candidate (d)
of ``bench_fastpath.py``; the engine no longer imports it). Same tables, same
order of operations as ``lstm_doctor/capture/fused/_kernels.c``.

Importing this module imports Numba. ``cache=True`` keeps the compiled
machine code on disk (next to this file, or in Numba's user cache when the
install is read-only), so the compile (several seconds) is paid once per
installation. No ``fastmath``: the element-wise arithmetic must round as
NumPy's does (no fused multiply-add, NaN and Inf kept), so that the fused
engine and the NumPy engine differ only by the few ulp of σ and tanh.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# columns of the per-step integer table ``counts`` (T, N_COUNTS)
COUNT_G_BOUND = 0  # candidate values with |g| beyond the bound tolerance
COUNT_ACTC_BOUND = 1  # act(c) values at the bound
COUNT_H_BOUND = 2  # h values at the bounds of its range
COUNT_C_NEG = 3
COUNT_C_POS = 4
COUNT_TRANSITIONS = 5  # (t-1, t) pairs of valid rows examined per unit
COUNT_VALID_ROWS = 6
COUNT_NONFINITE = 7  # non-finite c and h values, all rows
COUNT_NONFINITE_STEP = 8  # 1 when any gate, c or h value of the step is not finite
N_COUNTS = 9

_f = np.float32
HALF = _f(0.5)
ONE = _f(1.0)
TWO = _f(2.0)
ZERO = _f(0.0)
# tanh: Cephes tanhf
TANH_SMALL = _f(0.625)
TANH_ONE = _f(9.5)  # float32 tanh is exactly ±1 beyond |x| ≈ 9.01
T1 = _f(-5.70498872745e-3)
T2 = _f(2.06390887954e-2)
T3 = _f(-5.37397155531e-2)
T4 = _f(1.33314422036e-1)
T5 = _f(-3.33332819422e-1)
# exp: Cephes expf
LOG2E = _f(1.44269504088896341)
EXP_C1 = _f(0.693359375)
EXP_C2 = _f(-2.12194440e-4)
E1 = _f(1.9875691500e-4)
E2 = _f(1.3981999507e-3)
E3 = _f(8.3334519073e-3)
E4 = _f(4.1665795894e-2)
E5 = _f(1.6666665459e-1)
E6 = _f(5.0000001201e-1)
INF = _f(np.inf)
EXP_HIGH = _f(88.3)
EXP_LOW = _f(-87.3)
ROUND = _f(12582912.0)  # 1.5·2^23: x + ROUND − ROUND rounds x to an integer
HARD_SLOPE = _f(0.2)
SIX = _f(6.0)


@intrinsic
def _pow2(typingctx, n):
    """2^n for a float32 holding an integer −126 ≤ n ≤ 127: the float whose
    exponent bits are n + 127. Written in LLVM IR because Numba has no scalar
    bit cast, and it must stay a few vector instructions (AVX2)."""
    if n != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        exponent = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(exponent, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


@njit(cache=True, error_model="numpy", inline="always")
def exp32(y):
    """e^y for a float32, within 1 ulp (Cephes expf): e^y = Q(r)·2^n with
    n = round(y·log2 e) and r = y − n·ln 2, for y in [−87.3, 88.3] (n stays a
    normal exponent); 0 below, +Inf above (denormal results are flushed to
    0, e^88.3…e^88.7 overflow a little early); NaN stays NaN."""
    yc = y if y < EXP_HIGH else EXP_HIGH  # NaN → EXP_HIGH, restored below
    yc = yc if yc > EXP_LOW else EXP_LOW
    nf = (yc * LOG2E + ROUND) - ROUND  # round to the nearest integer, in float
    r = yc - nf * EXP_C1 - nf * EXP_C2
    q = (((((E1 * r + E2) * r + E3) * r + E4) * r + E5) * r + E6) * (r * r) + r + ONE
    e = q * _pow2(nf)
    e = INF if y > EXP_HIGH else e
    e = ZERO if y < EXP_LOW else e
    return e if y == y else y


@njit(cache=True, error_model="numpy", inline="always")
def tanh32(x):
    """tanh of a float32, within 2 ulp of NumPy's, with only vectorisable operations.

    |x| < 0.625: x + x·z·P(z), z = x² (Cephes tanhf); otherwise
    ±(1 − 2/(e^{2|x|} + 1)), and ±1 beyond |x| = 9.5 (float32 tanh is ±1
    from |x| ≈ 9.01). NaN stays NaN.
    """
    ax = abs(x)
    z = x * x
    small = ((((T1 * z + T2) * z + T3) * z + T4) * z + T5) * z * x + x
    big = ONE - TWO / (exp32(TWO * ax) + ONE)
    big = ONE if ax > TANH_ONE else big
    big = -big if x < ZERO else big
    return small if ax < TANH_SMALL else big


@njit(cache=True, error_model="numpy", inline="always")
def sigmoid32(x):
    """σ(x) = 1/(1 + e^{−x}) for a float32, within 2 ulp: no cancellation for
    negative x (0.5·tanh(x/2) + 0.5 loses the relative precision of small σ)."""
    return ONE / (ONE + exp32(-x))


@njit(cache=True, error_model="numpy")
def activate(code, src, dst, lo, hi):
    """dst[lo:hi] = act(src[lo:hi]) for the activation ``code`` (fused.ACTIVATION_CODES)."""
    if code == 0:
        for j in range(lo, hi):
            dst[j] = sigmoid32(src[j])
    elif code == 1:  # hard_sigmoid: clip(0.2·x + 0.5, 0, 1)
        for j in range(lo, hi):
            v = HARD_SLOPE * src[j] + HALF
            v = ZERO if v < ZERO else v
            dst[j] = ONE if v > ONE else v
    elif code == 2:  # hard_sigmoid6: clip(x/6 + 0.5, 0, 1)
        for j in range(lo, hi):
            v = src[j] / SIX + HALF
            v = ZERO if v < ZERO else v
            dst[j] = ONE if v > ONE else v
    elif code == 3:
        for j in range(lo, hi):
            dst[j] = tanh32(src[j])
    elif code == 4:  # softsign
        for j in range(lo, hi):
            dst[j] = src[j] / (ONE + abs(src[j]))
    elif code == 5:
        for j in range(lo, hi):
            dst[j] = src[j]
    elif code == 6:  # relu, NaN kept as np.maximum keeps it
        for j in range(lo, hi):
            dst[j] = ZERO if src[j] < ZERO else src[j]
    else:  # softplus = log(1 + e^x), stably
        for j in range(lo, hi):
            v = np.float64(src[j])
            dst[j] = np.float32(max(v, 0.0) + np.log1p(np.exp(-abs(v))))


@njit(cache=True, error_model="numpy")
def clip_range(z, lo, hi, limit):
    for j in range(lo, hi):
        v = z[j]
        v = limit if v > limit else v
        z[j] = -limit if v < -limit else v


# Row helpers. Each is one simple loop nest over a row (or a few), which
# LLVM vectorises reliably; inside one large function it gave up on several.
# Counters are int32 per step (B < 2^31 rows), added to the int64 tables after
# the step; sums of squares are float32 per step, as the NumPy engine's einsum.

_I1 = np.int32(1)
_I0 = np.int32(0)


@njit(cache=True, error_model="numpy")
def _nonfinite_row(acc, c, h):
    """acc[j] += how many of c[j], h[j] are NaN or ±Inf (x − x is 0 exactly when x is finite)."""
    for j in range(c.shape[0]):
        acc[j] += (_I1 if c[j] - c[j] != 0 else _I0) + (_I1 if h[j] - h[j] != 0 else _I0)


@njit(cache=True, error_model="numpy")
def _deviations_row(v, ref, ds, dq):
    """ds += v − ref, dq += (v − ref)² (float32, as the NumPy engine's deviation
    sums: v − ref is exact for v near ref)."""
    for j in range(v.shape[0]):
        d = v[j] - ref[j]
        ds[j] += d
        dq[j] += d * d


@njit(cache=True, error_model="numpy", inline="always")
def _squared_distance(a, b):
    """Σ_j (a_j − b_j)² in float32, with eight independent partial sums so the
    reduction vectorises (one running sum would wait on each add)."""
    n = a.shape[0]
    m = n - n % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = ZERO
    for j in range(0, m, 8):
        d0 = a[j] - b[j]
        d1 = a[j + 1] - b[j + 1]
        d2 = a[j + 2] - b[j + 2]
        d3 = a[j + 3] - b[j + 3]
        d4 = a[j + 4] - b[j + 4]
        d5 = a[j + 5] - b[j + 5]
        d6 = a[j + 6] - b[j + 6]
        d7 = a[j + 7] - b[j + 7]
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        s4 += d4 * d4
        s5 += d5 * d5
        s6 += d6 * d6
        s7 += d7 * d7
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(m, n):
        d = a[j] - b[j]
        total += d * d
    return total


@njit(cache=True, error_model="numpy")
def _saturation_row(act, sat_low, sat_high, lt, rt, state, switch, transition):
    """Counts of i, f, o below sat_low / above sat_high; the state −1/0/1 of
    each gate value, and (``transition``: the previous step was valid) how
    many changed since the previous step."""
    H3 = state.shape[0]
    for j in range(H3):
        a = act[j]
        lo = _I1 if a < sat_low else _I0
        hi = _I1 if a > sat_high else _I0
        lt[j] += lo
        rt[j] += hi
        s = np.int8(hi - lo)
        if transition:
            switch[j] += _I1 if s != state[j] else _I0
        state[j] = s


@njit(cache=True, error_model="numpy")
def _terms_row(xw, rec, z, pt, limit, sq, over, sums, has_peep, want_sums):
    """Σv² of x·W, h·U, z (and p·c) per column, counts of |x·W| and |z| > limit,
    and (``want_sums``) Σv of all four."""
    sq_in, sq_rec, sq_z, sq_pt = sq[0], sq[1], sq[2], sq[3]
    ov_in, ov_z = over[0], over[1]
    for j in range(z.shape[0]):
        vi = xw[j]
        vr = rec[j]
        vz = z[j]
        sq_in[j] += vi * vi
        sq_rec[j] += vr * vr
        sq_z[j] += vz * vz
        ov_in[j] += _I1 if (vi > limit) | (vi < -limit) else _I0
        ov_z[j] += _I1 if (vz > limit) | (vz < -limit) else _I0
    if has_peep:
        for j in range(z.shape[0]):
            sq_pt[j] += pt[j] * pt[j]
    if want_sums:
        s_in, s_rec, s_z, s_pt = sums[0], sums[1], sums[2], sums[3]
        for j in range(z.shape[0]):
            s_in[j] += xw[j]
            s_rec[j] += rec[j]
            s_z[j] += z[j]
            s_pt[j] += pt[j]


@njit(cache=True, error_model="numpy")
def _cell_row(cr, hr, h_prev, g, actc, g_limit, actc_limit, h_low, h_high, g_bounded, out_bounded, acc, cnt, ext):
    """The row's cell, candidate, act(c) and h statistics; returns ‖h_t − h_{t−1}‖².

    acc (3, H) float32: Σc, Σ|c|, max|c|; cnt (5, H) int32: c < 0, c > 0, g at
    its bound, act(c) at its bound, h at the bounds of its range; ext (2, H):
    min and max of h. NaN is skipped by the comparisons. One short loop per
    statistic: a loop over many arrays needs more run-time overlap checks
    than LLVM allows, and stays scalar.
    """
    H = cr.shape[0]
    c_sum, c_abs, c_max = acc[0], acc[1], acc[2]
    neg, pos, g_n, actc_n, h_n = cnt[0], cnt[1], cnt[2], cnt[3], cnt[4]
    h_min, h_max = ext[0], ext[1]
    for j in range(H):
        c_sum[j] += cr[j]
        c_abs[j] += abs(cr[j])
    for j in range(H):
        ac = abs(cr[j])
        c_max[j] = ac if ac > c_max[j] else c_max[j]
    for j in range(H):
        neg[j] += _I1 if cr[j] < ZERO else _I0
        pos[j] += _I1 if cr[j] > ZERO else _I0
    for j in range(H):
        hv = hr[j]
        h_min[j] = hv if hv < h_min[j] else h_min[j]
        h_max[j] = hv if hv > h_max[j] else h_max[j]
    if g_bounded:
        for j in range(H):
            g_n[j] += _I1 if (g[j] < -g_limit) | (g[j] > g_limit) else _I0
    if out_bounded:
        for j in range(H):
            actc_n[j] += _I1 if (actc[j] < -actc_limit) | (actc[j] > actc_limit) else _I0
        for j in range(H):
            h_n[j] += _I1 if (hr[j] < h_low) | (hr[j] > h_high) else _I0
    return _squared_distance(hr, h_prev)


@njit(cache=True, error_model="numpy")
def fused_step(
    t, xw, rec, bias, peep, codes, limits, flags, valid,
    c_prev, h_prev, c_out, h_out,
    ref, dev_sum, dev_sumsq, left, right, state, switch,
    term_sq, term_sum, over, counts, c_sums, extrema, dh2,
    keep, z_keep, act_keep, pt_keep, c_keep,
):
    """One LSTM step for B rows, and its statistics, in one pass per row.

    xw, rec (B, 4H) float32: x_t·W and h_{t-1}·U, gate blocks i, f, o, g.
    bias (4H,); peep (3, H) rows p_i, p_f, p_o; codes (3,): activation codes
    of the gates, the candidate and the cell output; limits (8,) float32:
    sat_low, sat_high, preact_limit, g_limit, actc_limit, h_low, h_high, clip;
    flags (6,): masked, peepholes, clip, g bounded, cell output bounded, term
    sums wanted; valid (T, B) bool.
    c_prev, h_prev → c_out, h_out (B, H): the state; padding rows carry it.

    Statistics of step t over the valid rows (tables of ``DirectionReducer``):
    ref[t] (4H,) the first valid row of i, f, o, h; dev_sum[t], dev_sumsq[t]
    Σ(v − ref) and Σ(v − ref)²; left[t], right[t] (3H,) gate counts below
    sat_low / above sat_high; state (B, 3H) int8 the saturation state (−1, 0,
    1) of the previous step, switch (3H,) its changes; term_sq, term_sum
    (4, 1, 4H) Σv² and Σv of x·W, h·U, z, p·c over the chunk's steps; over
    (2, 1, 4H) counts of |x·W| and |z| > preact_limit; counts (T, N_COUNTS); c_sums (T, 3) Σc,
    Σ|c|, max|c|; extrema (2,) min and max of h; dh2[t] (B,) ‖h_t − h_{t−1}‖².
    The sample: keep (4,) how many leading rows to record of z, the gates, p·c
    and c_t, into z_keep[t], act_keep[t], pt_keep[t] (T, ·, 4H) and c_keep[t]
    (T, ·, H), gate blocks in the kernel's order i, f, o, g.
    """
    B = xw.shape[0]
    H4 = xw.shape[1]
    H = H4 // 4
    H2 = 2 * H
    H3 = 3 * H
    masked, has_peep, has_clip, g_bounded, out_bounded, want_sums = (
        flags[0], flags[1], flags[2], flags[3], flags[4], flags[5],
    )
    sat_low, sat_high, limit = limits[0], limits[1], limits[2]
    g_limit, actc_limit, h_low, h_high, clip = limits[3], limits[4], limits[5], limits[6], limits[7]
    gate_code, cand_code, out_code = codes[0], codes[1], codes[2]

    z = np.empty(H4, np.float32)
    act = np.empty(H4, np.float32)
    pt = np.zeros(H4, np.float32)
    cr = np.empty(H, np.float32)
    actc = np.empty(H, np.float32)
    hr = np.empty(H, np.float32)
    # per-column accumulators of the step
    lt = np.zeros(H3, np.int32)
    rt = np.zeros(H3, np.int32)
    sw = np.zeros(H3, np.int32)
    sq = np.zeros((4, H4), np.float32)
    sums = np.zeros((4, H4), np.float32)
    ov = np.zeros((2, H4), np.int32)
    acc = np.zeros((3, H), np.float32)
    dev_s = np.zeros(H4, np.float32)
    dev_q = np.zeros(H4, np.float32)
    cnt = np.zeros((5, H), np.int32)
    ext = np.empty((2, H), np.float32)
    ext[0, :] = np.inf
    ext[1, :] = -np.inf
    bad = np.zeros(H4, np.float32)  # stays 0 while every gate value is finite
    bad_ch = np.zeros(H, np.int32)

    ref_t = ref[t]
    have_ref = False
    valid_rows = 0
    both_valid = 0
    for b in range(B):
        ok = valid[t, b] if masked else True
        xw_b = xw[b]
        rec_b = rec[b]
        cp = c_prev[b]
        # pre-activation: (x·W + h·U) + b, as the NumPy engine adds them
        for j in range(H4):
            z[j] = xw_b[j] + rec_b[j] + bias[j]
        if has_peep:  # i and f peek at c_{t-1}
            for j in range(H):
                pt[j] = peep[0, j] * cp[j]
                pt[H + j] = peep[1, j] * cp[j]
            for j in range(H2):
                z[j] += pt[j]
            if has_clip:
                clip_range(z, 0, H2, clip)
                clip_range(z, H3, H4, clip)
            activate(gate_code, z, act, 0, H2)
        else:
            if has_clip:
                clip_range(z, 0, H4, clip)
            activate(gate_code, z, act, 0, H3)
        activate(cand_code, z, act, H3, H4)
        for j in range(H):  # c_t = f·c_{t-1} + i·g
            cr[j] = act[H + j] * cp[j] + act[j] * act[H3 + j]
        if has_peep:  # o peeks at c_t
            for j in range(H):
                pt[H2 + j] = peep[2, j] * cr[j]
                z[H2 + j] += pt[H2 + j]
            if has_clip:
                clip_range(z, H2, H3, clip)
            activate(gate_code, z, act, H2, H3)
        activate(out_code, cr, actc, 0, H)
        for j in range(H):
            hr[j] = act[H2 + j] * actc[j]
        for j in range(H4):
            bad[j] += act[j] - act[j]
        if b < keep[0]:
            z_keep[t, b, :] = z
        if b < keep[1]:
            act_keep[t, b, :] = act
        if b < keep[2]:
            pt_keep[t, b, :] = pt
        if b < keep[3]:
            c_keep[t, b, :] = cr if ok else cp
        if not ok:  # padding: the state is carried, nothing is counted
            c_out[b, :] = cp
            h_out[b, :] = h_prev[b]
            state[b, :] = 0
            dh2[t, b] = 0.0
            _nonfinite_row(bad_ch, c_out[b], h_out[b])
            continue
        c_out[b, :] = cr
        h_out[b, :] = hr
        _nonfinite_row(bad_ch, cr, hr)
        valid_rows += 1
        if not have_ref:  # the step's first valid row: deviations are taken from it
            ref_t[:H3] = act[:H3]
            ref_t[H3:] = hr
            have_ref = True
        _deviations_row(act[:H3], ref_t[:H3], dev_s[:H3], dev_q[:H3])
        _deviations_row(hr, ref_t[H3:], dev_s[H3:], dev_q[H3:])
        transition = t > 0 and (valid[t - 1, b] if masked else True)
        both_valid += transition
        _saturation_row(act, sat_low, sat_high, lt, rt, state[b], sw, transition)
        _terms_row(xw_b, rec_b, z, pt, limit, sq, ov, sums, has_peep, want_sums)
        dh2[t, b] = _cell_row(
            cr, hr, h_prev[b], act[H3:], actc, g_limit, actc_limit, h_low, h_high, g_bounded, out_bounded, acc, cnt, ext
        )

    dev_sum[t, :] += dev_s
    dev_sumsq[t, :] += dev_q
    left[t, :] += lt
    right[t, :] += rt
    switch += sw
    for k in range(4):
        term_sq[k, 0, :] += sq[k]
        term_sum[k, 0, :] += sums[k]
    over[0, 0, :] += ov[0]
    over[1, 0, :] += ov[1]
    counts[t, COUNT_VALID_ROWS] = valid_rows
    counts[t, COUNT_TRANSITIONS] = both_valid
    counts[t, COUNT_C_NEG] = cnt[0].sum()
    counts[t, COUNT_C_POS] = cnt[1].sum()
    counts[t, COUNT_G_BOUND] = cnt[2].sum()
    counts[t, COUNT_ACTC_BOUND] = cnt[3].sum()
    counts[t, COUNT_H_BOUND] = cnt[4].sum()
    nonfinite = bad_ch.sum()
    counts[t, COUNT_NONFINITE] = nonfinite
    counts[t, COUNT_NONFINITE_STEP] = nonfinite > 0 or not np.isfinite(bad.sum())
    c_sums[t, 0] = acc[0].astype(np.float64).sum()
    c_sums[t, 1] = acc[1].astype(np.float64).sum()
    c_sums[t, 2] = acc[2].max() if H else 0.0
    if valid_rows:
        extrema[0] = min(extrema[0], ext[0].min())
        extrema[1] = max(extrema[1], ext[1].max())


@njit(cache=True, error_model="numpy")
def input_moments(rows, sums, sumsq, low, high):
    """One pass over the inputs ``rows`` (N, D) float32: per feature, the sum
    and sum of squares (float64) and the extrema of the finite values.
    Returns (how many values are exactly 0, how many are NaN or ±Inf)."""
    zeros = 0
    nonfinite = 0
    D = rows.shape[1]
    for n in range(rows.shape[0]):
        row = rows[n]
        for d in range(D):
            v = row[d]
            finite = v - v == 0
            w = np.float64(v) if finite else 0.0
            sums[d] += w
            sumsq[d] += w * w
            low[d] = v if finite and v < low[d] else low[d]
            high[d] = v if finite and v > high[d] else high[d]
            zeros += _I1 if v == 0 else _I0
            nonfinite += _I0 if finite else _I1
    return zeros, nonfinite
