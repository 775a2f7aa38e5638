/* The fused engine's kernels: one pass per step over the B rows of an LSTM
 * step for the gates, the state and every streaming statistic, and one pass
 * over a chunk's inputs for their moments.
 *
 * A tiny CPython extension with a plain C ABI: arguments are objects with
 * the buffer protocol (NumPy arrays), checked for their size, item size and
 * C-contiguity before anything is read or written. No NumPy headers.
 *
 * Precision. Built without -ffast-math and with -ffp-contract=off (setup.py):
 * no fused multiply-adds, so c and h round as NumPy's ufuncs do, and NaN and
 * Inf propagate so that the non-finite checks see them. sigma and tanh are
 * Cephes' float32 polynomials written with selects only, which gcc -O3
 * vectorises (AVX-512 or AVX2 where the CPU has it, through target_clones on
 * x86-64 Linux); within 2 ulp of NumPy's. The clones give the same results to
 * the bit: without -ffast-math the compiler keeps every sum in the order the
 * source writes it, whatever the vector width (the AVX-512 clone is 2-5%
 * faster on the capture, benchmarks/RESULTS.md).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && !defined(LSTM_DOCTOR_NO_CLONES)
#define HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOT
#endif

#define INLINE static inline __attribute__((always_inline))

/* columns of the per-step integer table ``counts`` (T, N_COUNTS) */
enum {
    COUNT_G_BOUND, COUNT_ACTC_BOUND, COUNT_H_BOUND, COUNT_C_NEG, COUNT_C_POS,
    COUNT_TRANSITIONS, COUNT_VALID_ROWS, COUNT_NONFINITE, COUNT_NONFINITE_STEP, N_COUNTS
};

/* tanh: Cephes tanhf */
#define TANH_SMALL 0.625f
#define TANH_ONE 9.5f
#define T1 -5.70498872745e-3f
#define T2 2.06390887954e-2f
#define T3 -5.37397155531e-2f
#define T4 1.33314422036e-1f
#define T5 -3.33332819422e-1f
/* exp: Cephes expf */
#define LOG2E 1.44269504088896341f
#define EXP_C1 0.693359375f
#define EXP_C2 -2.12194440e-4f
#define E1 1.9875691500e-4f
#define E2 1.3981999507e-3f
#define E3 8.3334519073e-3f
#define E4 4.1665795894e-2f
#define E5 1.6666665459e-1f
#define E6 5.0000001201e-1f
#define EXP_HIGH 88.3f
#define EXP_LOW -87.3f
#define ROUND 12582912.0f /* 1.5*2^23: x + ROUND - ROUND rounds x to an integer */

/* e^y within 1 ulp: Q(r)*2^n, n = round(y*log2 e), r = y - n*ln 2, for y in
 * [-87.3, 88.3]; 0 below, +Inf above; NaN stays NaN. */
INLINE float exp32(float y) {
    float yc = y < EXP_HIGH ? y : EXP_HIGH; /* NaN -> EXP_HIGH, restored below */
    yc = yc > EXP_LOW ? yc : EXP_LOW;
    float nf = (yc * LOG2E + ROUND) - ROUND;
    float r = yc - nf * EXP_C1 - nf * EXP_C2;
    float q = (((((E1 * r + E2) * r + E3) * r + E4) * r + E5) * r + E6) * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)nf + 127) << 23; /* 2^n: the float with exponent bits n + 127 */
    float p2;
    memcpy(&p2, &bits, sizeof p2);
    float e = q * p2;
    e = y > EXP_HIGH ? INFINITY : e;
    e = y < EXP_LOW ? 0.0f : e;
    return y == y ? e : y;
}

/* tanh within 2 ulp: x + x*z*P(z) (z = x^2) below 0.625, else
 * +-(1 - 2/(e^{2|x|} + 1)), +-1 beyond 9.5. NaN stays NaN. */
INLINE float tanh32(float x) {
    float ax = fabsf(x);
    float z = x * x;
    float small = ((((T1 * z + T2) * z + T3) * z + T4) * z + T5) * z * x + x;
    float big = 1.0f - 2.0f / (exp32(2.0f * ax) + 1.0f);
    big = ax > TANH_ONE ? 1.0f : big;
    big = x < 0.0f ? -big : big;
    return ax < TANH_SMALL ? small : big;
}

/* sigma(x) = 1/(1 + e^{-x}): keeps the relative precision of small sigma */
INLINE float sigmoid32(float x) { return 1.0f / (1.0f + exp32(-x)); }

/* dst[j] = act(src[j]) for the activation ``code`` (engine.ACTIVATION_CODES) */
INLINE void activate(long code, const float *restrict src, float *restrict dst, Py_ssize_t n) {
    Py_ssize_t j;
    switch (code) {
    case 0:
        for (j = 0; j < n; j++) dst[j] = sigmoid32(src[j]);
        break;
    case 1: /* hard_sigmoid: clip(0.2x + 0.5, 0, 1) */
        for (j = 0; j < n; j++) {
            float v = 0.2f * src[j] + 0.5f;
            v = v < 0.0f ? 0.0f : v;
            dst[j] = v > 1.0f ? 1.0f : v;
        }
        break;
    case 2: /* hard_sigmoid6: clip(x/6 + 0.5, 0, 1) */
        for (j = 0; j < n; j++) {
            float v = src[j] / 6.0f + 0.5f;
            v = v < 0.0f ? 0.0f : v;
            dst[j] = v > 1.0f ? 1.0f : v;
        }
        break;
    case 3:
        for (j = 0; j < n; j++) dst[j] = tanh32(src[j]);
        break;
    case 4: /* softsign */
        for (j = 0; j < n; j++) dst[j] = src[j] / (1.0f + fabsf(src[j]));
        break;
    case 5:
        for (j = 0; j < n; j++) dst[j] = src[j];
        break;
    case 6: /* relu, NaN kept as np.maximum keeps it */
        for (j = 0; j < n; j++) dst[j] = src[j] < 0.0f ? 0.0f : src[j];
        break;
    default: /* softplus = log(1 + e^x), stably, in double */
        for (j = 0; j < n; j++) {
            double v = (double)src[j];
            double m = v > 0.0 ? v : 0.0;
            m = v == v ? m : v;
            dst[j] = (float)(m + log1p(exp(-fabs(v))));
        }
    }
}

INLINE void clip_range(float *restrict z, Py_ssize_t n, float limit) {
    for (Py_ssize_t j = 0; j < n; j++) {
        float v = z[j];
        v = v > limit ? limit : v;
        z[j] = v < -limit ? -limit : v;
    }
}

/* acc[j] += how many of c[j], h[j] are NaN or +-Inf (x - x is 0 exactly when x is finite) */
INLINE void nonfinite_row(int32_t *restrict acc, const float *restrict c, const float *restrict h, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++)
        acc[j] += (c[j] - c[j] != 0.0f) + (h[j] - h[j] != 0.0f);
}

/* ds += v - ref, dq += (v - ref)^2, in float32 (v - ref is exact for v near ref) */
INLINE void deviations_row(const float *restrict v, const float *restrict ref, float *restrict ds,
                           float *restrict dq, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) {
        float d = v[j] - ref[j];
        ds[j] += d;
        dq[j] += d * d;
    }
}

/* sum_j (a_j - b_j)^2 in float32 with eight partial sums (the order the
 * Numba kernel used, so the two agree exactly) */
INLINE float squared_distance(const float *restrict a, const float *restrict b, Py_ssize_t n) {
    Py_ssize_t m = n - n % 8, j;
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (j = 0; j < m; j += 8)
        for (int k = 0; k < 8; k++) {
            float d = a[j + k] - b[j + k];
            s[k] += d * d;
        }
    float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (j = m; j < n; j++) {
        float d = a[j] - b[j];
        total += d * d;
    }
    return total;
}

/* Everything a step reads and writes, resolved from the buffers once per call. */
typedef struct {
    Py_ssize_t t, T, B, H;
    const float *xw, *rec, *bias, *peep, *limits;
    const int64_t *codes;
    const uint8_t *flags, *valid;
    const float *c_prev, *h_prev;
    float *c_out, *h_out, *ref;
    double *dev_sum, *dev_sumsq;
    int64_t *left, *right;
    int8_t *state;
    int64_t *switch_;
    double *term_sq, *term_sum;
    int64_t *over, *counts;
    double *c_sums, *extrema, *dh2;
    const int64_t *keep;
    float *z_keep, *act_keep, *pt_keep, *c_keep;
    /* scratch, 4H and H floats */
    float *work;
    int32_t *iwork;
} Step;

/* Column accumulators of one step, in the scratch. */
HOT static void fused_step(Step *s) {
    const Py_ssize_t t = s->t, B = s->B, H = s->H, H2 = 2 * H, H3 = 3 * H, H4 = 4 * H;
    const int masked = s->flags[0], has_peep = s->flags[1], has_clip = s->flags[2];
    const int g_bounded = s->flags[3], out_bounded = s->flags[4], want_sums = s->flags[5];
    const float sat_low = s->limits[0], sat_high = s->limits[1], limit = s->limits[2];
    const float g_limit = s->limits[3], actc_limit = s->limits[4], h_low = s->limits[5], h_high = s->limits[6];
    const float clip = s->limits[7];
    const long gate_code = (long)s->codes[0], cand_code = (long)s->codes[1], out_code = (long)s->codes[2];
    const Py_ssize_t keep_z = s->keep[0], keep_act = s->keep[1], keep_pt = s->keep[2], keep_c = s->keep[3];

    float *w = s->work;
    float *restrict z = w; w += H4;
    float *restrict act = w; w += H4;
    float *restrict pt = w; w += H4;
    float *restrict cr = w; w += H;
    float *restrict actc = w; w += H;
    float *restrict hr = w; w += H;
    float *restrict sq = w; w += 4 * H4;   /* sum v^2 of x.W, h.U, z, p.c */
    float *restrict sums = w; w += 4 * H4; /* sum v of the same */
    float *restrict acc = w; w += 3 * H;   /* sum c, sum |c|, max |c| */
    float *restrict dev_s = w; w += H4;
    float *restrict dev_q = w; w += H4;
    float *restrict ext = w; w += 2 * H;   /* min and max of h */
    float *restrict bad = w; w += H4;      /* stays 0 while every gate value is finite */
    int32_t *iw = s->iwork;
    int32_t *restrict lt = iw; iw += H3;
    int32_t *restrict rt = iw; iw += H3;
    int32_t *restrict sw = iw; iw += H3;
    int32_t *restrict ov = iw; iw += 2 * H4;
    int32_t *restrict cnt = iw; iw += 5 * H; /* c < 0, c > 0, g at bound, act(c) at bound, h at bound */
    int32_t *restrict bad_ch = iw; iw += H;

    Py_ssize_t j;
    memset(pt, 0, sizeof(float) * H4);
    memset(sq, 0, sizeof(float) * (8 * H4 + 3 * H + 2 * H4));
    memset(s->iwork, 0, sizeof(int32_t) * (9 * H + 2 * H4 + 6 * H));
    for (j = 0; j < H; j++) {
        ext[j] = INFINITY;
        ext[H + j] = -INFINITY;
    }
    memset(bad, 0, sizeof(float) * H4);

    float *restrict ref_t = s->ref + t * H4;
    int have_ref = 0;
    int64_t valid_rows = 0, both_valid = 0;
    const uint8_t *valid_t = s->valid + t * B;
    const uint8_t *valid_p = t > 0 ? s->valid + (t - 1) * B : NULL;

    for (Py_ssize_t b = 0; b < B; b++) {
        const int ok = masked ? valid_t[b] != 0 : 1;
        const float *restrict xw_b = s->xw + b * H4;
        const float *restrict rec_b = s->rec + b * H4;
        const float *restrict cp = s->c_prev + b * H;
        const float *restrict hp = s->h_prev + b * H;
        /* pre-activation: (x.W + h.U) + b, as the NumPy engine adds them */
        for (j = 0; j < H4; j++) z[j] = xw_b[j] + rec_b[j] + s->bias[j];
        if (has_peep) { /* i and f peek at c_{t-1} */
            for (j = 0; j < H; j++) {
                pt[j] = s->peep[j] * cp[j];
                pt[H + j] = s->peep[H + j] * cp[j];
            }
            for (j = 0; j < H2; j++) z[j] += pt[j];
            if (has_clip) {
                clip_range(z, H2, clip);
                clip_range(z + H3, H, clip);
            }
            activate(gate_code, z, act, H2);
        } else {
            if (has_clip) clip_range(z, H4, clip);
            activate(gate_code, z, act, H3);
        }
        activate(cand_code, z + H3, act + H3, H);
        for (j = 0; j < H; j++) /* c_t = f.c_{t-1} + i.g */
            cr[j] = act[H + j] * cp[j] + act[j] * act[H3 + j];
        if (has_peep) { /* o peeks at c_t */
            for (j = 0; j < H; j++) {
                pt[H2 + j] = s->peep[H2 + j] * cr[j];
                z[H2 + j] += pt[H2 + j];
            }
            if (has_clip) clip_range(z + H2, H, clip);
            activate(gate_code, z + H2, act + H2, H);
        }
        activate(out_code, cr, actc, H);
        for (j = 0; j < H; j++) hr[j] = act[H2 + j] * actc[j];
        for (j = 0; j < H4; j++) bad[j] += act[j] - act[j];
        if (b < keep_z) memcpy(s->z_keep + (t * keep_z + b) * H4, z, sizeof(float) * H4);
        if (b < keep_act) memcpy(s->act_keep + (t * keep_act + b) * H4, act, sizeof(float) * H4);
        if (b < keep_pt) memcpy(s->pt_keep + (t * keep_pt + b) * H4, pt, sizeof(float) * H4);
        if (b < keep_c) memcpy(s->c_keep + (t * keep_c + b) * H, ok ? cr : cp, sizeof(float) * H);
        float *restrict co = s->c_out + b * H;
        float *restrict ho = s->h_out + b * H;
        if (!ok) { /* padding: the state is carried, nothing is counted */
            memcpy(co, cp, sizeof(float) * H);
            memcpy(ho, hp, sizeof(float) * H);
            memset(s->state + b * H3, 0, H3);
            s->dh2[t * B + b] = 0.0;
            nonfinite_row(bad_ch, co, ho, H);
            continue;
        }
        memcpy(co, cr, sizeof(float) * H);
        memcpy(ho, hr, sizeof(float) * H);
        nonfinite_row(bad_ch, cr, hr, H);
        valid_rows++;
        if (!have_ref) { /* the step's first valid row: deviations are taken from it */
            memcpy(ref_t, act, sizeof(float) * H3);
            memcpy(ref_t + H3, hr, sizeof(float) * H);
            have_ref = 1;
        }
        deviations_row(act, ref_t, dev_s, dev_q, H3);
        deviations_row(hr, ref_t + H3, dev_s + H3, dev_q + H3, H);

        /* saturation of i, f, o and its state transitions */
        const int transition = t > 0 && (masked ? valid_p[b] != 0 : 1);
        both_valid += transition;
        int8_t *restrict st = s->state + b * H3;
        for (j = 0; j < H3; j++) {
            int32_t lo = act[j] < sat_low, hi = act[j] > sat_high;
            lt[j] += lo;
            rt[j] += hi;
        }
        if (transition)
            for (j = 0; j < H3; j++) {
                int8_t v = (int8_t)((act[j] > sat_high) - (act[j] < sat_low));
                sw[j] += v != st[j];
                st[j] = v;
            }
        else
            for (j = 0; j < H3; j++) st[j] = (int8_t)((act[j] > sat_high) - (act[j] < sat_low));

        /* the terms: sum v^2 of x.W, h.U, z (and p.c), |x.W| and |z| over the limit, sum v */
        {
            float *restrict sq_in = sq, *restrict sq_rec = sq + H4, *restrict sq_z = sq + 2 * H4;
            int32_t *restrict ov_in = ov, *restrict ov_z = ov + H4;
            for (j = 0; j < H4; j++) sq_in[j] += xw_b[j] * xw_b[j];
            for (j = 0; j < H4; j++) sq_rec[j] += rec_b[j] * rec_b[j];
            for (j = 0; j < H4; j++) sq_z[j] += z[j] * z[j];
            for (j = 0; j < H4; j++) { /* |v| > limit: false for NaN, as the two comparisons */
                int32_t oi = fabsf(xw_b[j]) > limit, oz = fabsf(z[j]) > limit;
                ov_in[j] += oi;
                ov_z[j] += oz;
            }
            if (has_peep) {
                float *restrict sq_pt = sq + 3 * H4;
                for (j = 0; j < H4; j++) sq_pt[j] += pt[j] * pt[j];
            }
            if (want_sums) {
                float *restrict s_in = sums, *restrict s_rec = sums + H4, *restrict s_z = sums + 2 * H4,
                                *restrict s_pt = sums + 3 * H4;
                for (j = 0; j < H4; j++) {
                    s_in[j] += xw_b[j];
                    s_rec[j] += rec_b[j];
                }
                for (j = 0; j < H4; j++) {
                    s_z[j] += z[j];
                    s_pt[j] += pt[j];
                }
            }
        }

        /* the cell, candidate, act(c) and h; NaN is skipped by the comparisons */
        {
            float *restrict c_sum = acc, *restrict c_abs = acc + H, *restrict c_max = acc + 2 * H;
            int32_t *restrict neg = cnt, *restrict pos = cnt + H, *restrict g_n = cnt + 2 * H;
            int32_t *restrict actc_n = cnt + 3 * H, *restrict h_n = cnt + 4 * H;
            float *restrict h_min = ext, *restrict h_max = ext + H;
            const float *restrict g = act + H3;
            for (j = 0; j < H; j++) {
                c_sum[j] += cr[j];
                c_abs[j] += fabsf(cr[j]);
            }
            for (j = 0; j < H; j++) {
                float ac = fabsf(cr[j]);
                c_max[j] = ac > c_max[j] ? ac : c_max[j];
            }
            for (j = 0; j < H; j++) {
                neg[j] += cr[j] < 0.0f;
                pos[j] += cr[j] > 0.0f;
            }
            for (j = 0; j < H; j++) {
                float hv = hr[j];
                h_min[j] = hv < h_min[j] ? hv : h_min[j];
                h_max[j] = hv > h_max[j] ? hv : h_max[j];
            }
            if (g_bounded)
                for (j = 0; j < H; j++) g_n[j] += (g[j] < -g_limit) | (g[j] > g_limit);
            if (out_bounded) {
                for (j = 0; j < H; j++) actc_n[j] += (actc[j] < -actc_limit) | (actc[j] > actc_limit);
                for (j = 0; j < H; j++) h_n[j] += (hr[j] < h_low) | (hr[j] > h_high);
            }
            s->dh2[t * B + b] = (double)squared_distance(hr, hp, H);
        }
    }

    /* fold the step's column accumulators into the chunk tables */
    double *ds = s->dev_sum + t * H4, *dq = s->dev_sumsq + t * H4;
    for (j = 0; j < H4; j++) {
        ds[j] += dev_s[j];
        dq[j] += dev_q[j];
    }
    int64_t *lft = s->left + t * H3, *rgt = s->right + t * H3;
    for (j = 0; j < H3; j++) {
        lft[j] += lt[j];
        rgt[j] += rt[j];
        s->switch_[j] += sw[j];
    }
    /* the terms' tables are totals over the chunk's steps, per column (4, 4H) and (2, 4H):
       the report sums them over steps anyway, and (T, 4H) tables were ~6 MB of fresh
       memory a chunk; only the tables that are read: the peephole row with peepholes,
       the sums when wanted */
    for (int k = 0; k < (has_peep ? 4 : 3); k++) {
        double *tq = s->term_sq + k * H4;
        for (j = 0; j < H4; j++) tq[j] += sq[k * H4 + j];
        if (want_sums) {
            double *ts = s->term_sum + k * H4;
            for (j = 0; j < H4; j++) ts[j] += sums[k * H4 + j];
        }
    }
    int64_t *o0 = s->over, *o1 = s->over + H4;
    for (j = 0; j < H4; j++) {
        o0[j] += ov[j];
        o1[j] += ov[H4 + j];
    }
    int64_t c_neg = 0, c_pos = 0, g_b = 0, actc_b = 0, h_b = 0, nonfinite = 0;
    for (j = 0; j < H; j++) {
        c_neg += cnt[j];
        c_pos += cnt[H + j];
        g_b += cnt[2 * H + j];
        actc_b += cnt[3 * H + j];
        h_b += cnt[4 * H + j];
        nonfinite += bad_ch[j];
    }
    int bad_gate = 0;
    for (j = 0; j < H4; j++) bad_gate |= bad[j] != 0.0f; /* NaN != 0 */
    int64_t *ct = s->counts + t * N_COUNTS;
    ct[COUNT_VALID_ROWS] = valid_rows;
    ct[COUNT_TRANSITIONS] = both_valid;
    ct[COUNT_C_NEG] = c_neg;
    ct[COUNT_C_POS] = c_pos;
    ct[COUNT_G_BOUND] = g_b;
    ct[COUNT_ACTC_BOUND] = actc_b;
    ct[COUNT_H_BOUND] = h_b;
    ct[COUNT_NONFINITE] = nonfinite;
    ct[COUNT_NONFINITE_STEP] = nonfinite > 0 || bad_gate;
    double c0 = 0.0, c1 = 0.0;
    float cm = 0.0f;
    for (j = 0; j < H; j++) {
        c0 += (double)acc[j];
        c1 += (double)acc[H + j];
    }
    if (H) {
        cm = acc[2 * H];
        for (j = 1; j < H; j++) cm = acc[2 * H + j] > cm ? acc[2 * H + j] : cm;
    }
    s->c_sums[t * 3 + 0] = c0;
    s->c_sums[t * 3 + 1] = c1;
    s->c_sums[t * 3 + 2] = (double)cm;
    if (valid_rows) {
        float lo = INFINITY, hi = -INFINITY;
        for (j = 0; j < H; j++) {
            lo = ext[j] < lo ? ext[j] : lo;
            hi = ext[H + j] > hi ? ext[H + j] : hi;
        }
        s->extrema[0] = (double)lo < s->extrema[0] ? (double)lo : s->extrema[0];
        s->extrema[1] = (double)hi > s->extrema[1] ? (double)hi : s->extrema[1];
    }
}

/* One pass over rows (N, D) float32: per feature the sum and sum of squares
 * (float64) and the extrema of the finite values; counts of zeros and of
 * non-finite values. */
HOT static void input_moments(const float *restrict rows, Py_ssize_t N, Py_ssize_t D, double *restrict sums,
                              double *restrict sumsq, float *restrict low, float *restrict high, int64_t *zeros,
                              int64_t *nonfinite) {
    int64_t nz = 0, nf = 0;
    for (Py_ssize_t n = 0; n < N; n++) {
        const float *restrict row = rows + n * D;
        for (Py_ssize_t d = 0; d < D; d++) {
            float v = row[d];
            int finite = v - v == 0.0f;
            double w = finite ? (double)v : 0.0;
            sums[d] += w;
            sumsq[d] += w * w;
            low[d] = finite && v < low[d] ? v : low[d];
            high[d] = finite && v > high[d] ? v : high[d];
            nz += v == 0.0f;
            nf += !finite;
        }
    }
    *zeros = nz;
    *nonfinite = nf;
}

/* sum_u v_u^2 in double with eight partial sums: one running sum is a chain of
 * dependent scalar adds that gcc may not reorder (no -ffast-math), which took
 * a third of backward_step's time */
INLINE double squared_norm(const float *restrict v, Py_ssize_t n) {
    Py_ssize_t m = n - n % 8, j;
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (j = 0; j < m; j += 8)
        for (int k = 0; k < 8; k++) s[k] += (double)v[j + k] * (double)v[j + k];
    double total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (j = m; j < n; j++) total += (double)v[j] * (double)v[j];
    return total;
}

/* The derivative of the activation ``code`` at the output value v, as
 * model.activations.activation_derivative takes it in float32. */
INLINE float derivative_at(long code, float v) {
    switch (code) {
    case 0: return v * (1.0f - v);                             /* sigmoid */
    case 1: return v > 0.0f && v < 1.0f ? 0.2f : 0.0f;         /* hard_sigmoid */
    case 2: return v > 0.0f && v < 1.0f ? 1.0f / 6.0f : 0.0f;  /* hard_sigmoid6 */
    case 3: return 1.0f - v * v;                               /* tanh */
    case 4: { float a = 1.0f - fabsf(v); return a * a; }       /* softsign */
    case 5: return 1.0f;                                       /* identity */
    case 6: return v > 0.0f ? 1.0f : 0.0f;                     /* relu */
    default: return 1.0f - expf(-v);                           /* softplus */
    }
}

INLINE void derivatives(long code, const float *restrict v, float *restrict d, Py_ssize_t n) {
    switch (code) { /* one loop per code, so that each vectorises */
    case 0: for (Py_ssize_t u = 0; u < n; u++) d[u] = derivative_at(0, v[u]); break;
    case 3: for (Py_ssize_t u = 0; u < n; u++) d[u] = derivative_at(3, v[u]); break;
    default: for (Py_ssize_t u = 0; u < n; u++) d[u] = derivative_at(code, v[u]);
    }
}

/* One step t of the backward recursion of ``experiments.sensitivity`` (float32,
 * no projection, no clip), for R = n*P rows (row r: sequence r / P, probe r % P).
 * Per sequence, from the recorded i, f, g, o, c_{t-1} and act(c_t), the factors
 * of ``sensitivity._factors``:
 *
 *   A_o = act(c_t)*o'   G_i = g*i'   C_f = c_{t-1}*f'   I_g = i*g'
 *   B_c = o*act'(c_t) + A_o*p_o      F = f + G_i*p_i + C_f*p_f   (peepholes p, else 0 terms)
 *
 * (x' the activation's derivative at its output x); then per row
 *
 *   carry:  dm[r] = dm_prev[r] where sequence r/P is padding at step t+1
 *           (the step carried h, so the gradient passed through it)
 *   sq_h[t, r] = |dm[r]|^2                   (the gradient reaching h_t, in double)
 *   dz_o = dm*A_o      dct = dm*B_c + dc      dz_{i,f,g} = dct*[G_i, C_f, I_g]
 *   dc   = dct*F                             (c_{t-1}'s gradient, in place)
 *
 * and at a padding step of a sequence dz[r] = 0 with dc[r] unchanged. Each
 * product rounds once, in the order NumPy's ufuncs take in ``_factors`` and
 * ``_backward``, so dz and dc are the NumPy recursion's to the bit (softplus
 * aside, whose e^x is the C library's). ``work`` holds 7H floats. */
HOT static void backward_step(Py_ssize_t t, Py_ssize_t T, Py_ssize_t n, Py_ssize_t P, Py_ssize_t H,
                              const int64_t *codes, const float *restrict peep, int has_peep,
                              float *restrict dm, const float *restrict dm_prev, const float *restrict gi,
                              const float *restrict gf, const float *restrict gg, const float *restrict go,
                              const float *restrict c_prev, const float *restrict co,
                              const uint8_t *restrict valid, float *restrict dc, float *restrict dz,
                              double *restrict sq_h, float *restrict work) {
    const Py_ssize_t H4 = 4 * H;
    const long gate = (long)codes[0], cand = (long)codes[1], cell = (long)codes[2];
    const uint8_t *valid_t = valid + t * n, *valid_next = t + 1 < T ? valid + (t + 1) * n : NULL;
    float *restrict A_o = work, *restrict B_c = work + H, *restrict F = work + 2 * H;
    float *restrict G_i = work + 3 * H, *restrict C_f = work + 4 * H, *restrict I_g = work + 5 * H;
    float *restrict d = work + 6 * H;
    Py_ssize_t u;
    for (Py_ssize_t j = 0; j < n; j++) {
        const Py_ssize_t at = (t * n + j) * H;
        if (valid_t[j]) {
            derivatives(gate, go + at, d, H);
            for (u = 0; u < H; u++) A_o[u] = co[at + u] * d[u];
            derivatives(gate, gi + at, d, H);
            for (u = 0; u < H; u++) G_i[u] = gg[at + u] * d[u];
            derivatives(gate, gf + at, d, H);
            for (u = 0; u < H; u++) C_f[u] = c_prev[at + u] * d[u];
            derivatives(cand, gg + at, d, H);
            for (u = 0; u < H; u++) I_g[u] = gi[at + u] * d[u];
            derivatives(cell, co + at, d, H);
            for (u = 0; u < H; u++) B_c[u] = go[at + u] * d[u];
            memcpy(F, gf + at, sizeof(float) * H);
            if (has_peep)
                for (u = 0; u < H; u++) {
                    B_c[u] = B_c[u] + A_o[u] * peep[2 * H + u];
                    F[u] = (F[u] + G_i[u] * peep[u]) + C_f[u] * peep[H + u];
                }
        }
        for (Py_ssize_t p = 0; p < P; p++) {
            const Py_ssize_t r = j * P + p;
            float *restrict m = dm + r * H, *restrict c = dc + r * H, *restrict z = dz + r * H4;
            if (valid_next && !valid_next[j]) memcpy(m, dm_prev + r * H, sizeof(float) * H);
            sq_h[t * n * P + r] = squared_norm(m, H);
            if (!valid_t[j]) {
                memset(z, 0, sizeof(float) * H4);
                continue;
            }
            for (u = 0; u < H; u++) {
                float dct = m[u] * B_c[u];
                dct += c[u];
                z[3 * H + u] = m[u] * A_o[u];
                z[u] = dct * G_i[u];
                z[H + u] = dct * C_f[u];
                z[2 * H + u] = dct * I_g[u];
                c[u] = dct * F[u];
            }
        }
    }
}

/* ---- argument checking ---------------------------------------------------- */

typedef struct {
    const char *name;
    char kind;          /* 'f' float32, 'd' float64, 'q' int64, 'b' int8, '?' bool */
    int writable;
    Py_ssize_t items;   /* expected number of items */
    Py_buffer view;
    int held;
} Arg;

static int kind_matches(const Py_buffer *v, char kind) {
    const char *fmt = v->format ? v->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    char c = fmt[0];
    if (fmt[1] != '\0') return 0;
    switch (kind) {
    case 'f': return c == 'f' && v->itemsize == 4;
    case 'd': return c == 'd' && v->itemsize == 8;
    case 'q': return (c == 'q' || c == 'l') && v->itemsize == 8;
    case 'b': return c == 'b' && v->itemsize == 1;
    case '?': return (c == '?' || c == 'B' || c == 'b') && v->itemsize == 1;
    }
    return 0;
}

static int get_args(PyObject *const *objs, Arg *args, int n) {
    for (int i = 0; i < n; i++) {
        Arg *a = &args[i];
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (a->writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objs[i], &a->view, flags) < 0) {
            PyErr_Format(PyExc_TypeError, "%s: a C-contiguous%s array is required", a->name,
                         a->writable ? " writable" : "");
            return -1;
        }
        a->held = 1;
        if (!kind_matches(&a->view, a->kind)) {
            PyErr_Format(PyExc_TypeError, "%s: wrong dtype (format %s)", a->name,
                         a->view.format ? a->view.format : "B");
            return -1;
        }
        if (a->view.len != a->items * a->view.itemsize) {
            PyErr_Format(PyExc_ValueError, "%s: %zd items, expected %zd", a->name, a->view.len / a->view.itemsize,
                         a->items);
            return -1;
        }
    }
    return 0;
}

static void release_args(Arg *args, int n) {
    for (int i = 0; i < n; i++)
        if (args[i].held) PyBuffer_Release(&args[i].view);
}

#define BUF(i, type) ((type)args[i].view.buf)

PyDoc_STRVAR(fused_step_doc,
"fused_step(t, T, B, H, keep_rows, xw, rec, bias, peep, codes, limits, flags, valid,\n"
"           c_prev, h_prev, c_out, h_out, ref, dev_sum, dev_sumsq, left, right, state, switch,\n"
"           term_sq, term_sum, over, counts, c_sums, extrema, dh2,\n"
"           keep, z_keep, act_keep, pt_keep, c_keep)\n\n"
"One LSTM step of B rows and its statistics (see lstm_doctor.capture.fused.engine).\n"
"term_sq, term_sum (4, 4H) and over (2, 4H): totals over the chunk's steps, added to in place.\n"
"keep_rows: the leading dimension of the sample buffers (0 when none is kept).");

static PyObject *py_fused_step(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    (void)self;
    if (argc != 36) {
        PyErr_Format(PyExc_TypeError, "fused_step takes 36 arguments (%zd given)", argc);
        return NULL;
    }
    Py_ssize_t t = PyLong_AsSsize_t(argv[0]), T = PyLong_AsSsize_t(argv[1]);
    Py_ssize_t B = PyLong_AsSsize_t(argv[2]), H = PyLong_AsSsize_t(argv[3]);
    Py_ssize_t K = PyLong_AsSsize_t(argv[4]);
    if (PyErr_Occurred()) return NULL;
    if (T < 1 || t < 0 || t >= T || B < 0 || H < 0 || K < 0 || K > B) {
        PyErr_SetString(PyExc_ValueError, "fused_step: bad t, T, B, H or keep_rows");
        return NULL;
    }
    const Py_ssize_t H4 = 4 * H, H3 = 3 * H;
    Arg args[31] = {
        {"xw", 'f', 0, B * H4}, {"rec", 'f', 0, B * H4}, {"bias", 'f', 0, H4}, {"peep", 'f', 0, 3 * H},
        {"codes", 'q', 0, 3}, {"limits", 'f', 0, 8}, {"flags", '?', 0, 6}, {"valid", '?', 0, T * B},
        {"c_prev", 'f', 0, B * H}, {"h_prev", 'f', 0, B * H}, {"c_out", 'f', 1, B * H}, {"h_out", 'f', 1, B * H},
        {"ref", 'f', 1, T * H4}, {"dev_sum", 'd', 1, T * H4}, {"dev_sumsq", 'd', 1, T * H4},
        {"left", 'q', 1, T * H3}, {"right", 'q', 1, T * H3}, {"state", 'b', 1, B * H3}, {"switch", 'q', 1, H3},
        {"term_sq", 'd', 1, 4 * H4}, {"term_sum", 'd', 1, 4 * H4}, {"over", 'q', 1, 2 * H4},
        {"counts", 'q', 1, T * N_COUNTS}, {"c_sums", 'd', 1, T * 3}, {"extrema", 'd', 1, 2}, {"dh2", 'd', 1, T * B},
        {"keep", 'q', 0, 4}, {"z_keep", 'f', 1, -1}, {"act_keep", 'f', 1, -1}, {"pt_keep", 'f', 1, -1},
        {"c_keep", 'f', 1, -1},
    };
    /* the sample buffers: (T, K, 4H) or (T, K, H) when kept, anything else ignored */
    PyObject *keep_obj = argv[5 + 26];
    Py_buffer kv;
    if (PyObject_GetBuffer(keep_obj, &kv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    int64_t keep[4] = {0, 0, 0, 0};
    int keep_ok = kind_matches(&kv, 'q') && kv.len == 4 * 8;
    if (keep_ok) memcpy(keep, kv.buf, sizeof keep);
    PyBuffer_Release(&kv);
    if (!keep_ok) {
        PyErr_SetString(PyExc_TypeError, "keep: 4 int64 required");
        return NULL;
    }
    for (int k = 0; k < 4; k++) {
        if (keep[k] != 0 && keep[k] != K) {
            PyErr_SetString(PyExc_ValueError, "keep: each count is 0 or keep_rows");
            return NULL;
        }
        args[27 + k].items = keep[k] ? T * K * (k == 3 ? H : H4) : -1;
    }
    /* sample buffers that are not kept are not read: check only the kept ones */
    int n = 31;
    PyObject *const *objs = argv + 5;
    PyObject *result = NULL;
    float *work = NULL;
    int32_t *iwork = NULL;
    for (int i = 0; i < n; i++) {
        if (args[i].items < 0) { /* unused: borrow nothing */
            args[i].held = 0;
            continue;
        }
        if (get_args(objs + i, &args[i], 1) < 0) goto done;
    }
    work = PyMem_Malloc(sizeof(float) * (size_t)(3 * H4 + 3 * H + 8 * H4 + 3 * H + 2 * H4 + 2 * H + H4 + 1));
    iwork = PyMem_Malloc(sizeof(int32_t) * (size_t)(9 * H + 2 * H4 + 6 * H + 1));
    if (!work || !iwork) {
        PyErr_NoMemory();
        goto done;
    }
    {
        Step s = {
            .t = t, .T = T, .B = B, .H = H,
            .xw = BUF(0, const float *), .rec = BUF(1, const float *), .bias = BUF(2, const float *),
            .peep = BUF(3, const float *), .codes = BUF(4, const int64_t *), .limits = BUF(5, const float *),
            .flags = BUF(6, const uint8_t *), .valid = BUF(7, const uint8_t *),
            .c_prev = BUF(8, const float *), .h_prev = BUF(9, const float *),
            .c_out = BUF(10, float *), .h_out = BUF(11, float *), .ref = BUF(12, float *),
            .dev_sum = BUF(13, double *), .dev_sumsq = BUF(14, double *),
            .left = BUF(15, int64_t *), .right = BUF(16, int64_t *), .state = BUF(17, int8_t *),
            .switch_ = BUF(18, int64_t *), .term_sq = BUF(19, double *), .term_sum = BUF(20, double *),
            .over = BUF(21, int64_t *), .counts = BUF(22, int64_t *), .c_sums = BUF(23, double *),
            .extrema = BUF(24, double *), .dh2 = BUF(25, double *), .keep = keep,
            .z_keep = args[27].held ? BUF(27, float *) : NULL, .act_keep = args[28].held ? BUF(28, float *) : NULL,
            .pt_keep = args[29].held ? BUF(29, float *) : NULL, .c_keep = args[30].held ? BUF(30, float *) : NULL,
            .work = work, .iwork = iwork,
        };
        /* the outputs must not be the inputs (the row loop reads c_prev after writing c_out) */
        if (s.c_out == s.c_prev || s.h_out == s.h_prev) {
            PyErr_SetString(PyExc_ValueError, "c_out and h_out must not be c_prev and h_prev");
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        fused_step(&s);
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(work);
    PyMem_Free(iwork);
    release_args(args, n);
    return result;
}

PyDoc_STRVAR(input_moments_doc,
"input_moments(rows, sums, sumsq, low, high) -> (zeros, nonfinite)\n\n"
"rows (N, D) float32; sums, sumsq (D,) float64 and low, high (D,) float32 updated in place.");

static PyObject *py_input_moments(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    (void)self;
    if (argc != 5) {
        PyErr_SetString(PyExc_TypeError, "input_moments takes 5 arguments");
        return NULL;
    }
    Py_buffer rv;
    if (PyObject_GetBuffer(argv[0], &rv, PyBUF_ND | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (rv.ndim != 2 || !kind_matches(&rv, 'f')) {
        PyBuffer_Release(&rv);
        PyErr_SetString(PyExc_TypeError, "rows: a C-contiguous (N, D) float32 array is required");
        return NULL;
    }
    Py_ssize_t N = rv.shape[0], D = rv.shape[1];
    Arg args[4] = {{"sums", 'd', 1, D}, {"sumsq", 'd', 1, D}, {"low", 'f', 1, D}, {"high", 'f', 1, D}};
    PyObject *result = NULL;
    if (get_args(argv + 1, args, 4) == 0) {
        int64_t zeros = 0, nonfinite = 0;
        Py_BEGIN_ALLOW_THREADS
        input_moments(rv.buf, N, D, BUF(0, double *), BUF(1, double *), BUF(2, float *), BUF(3, float *), &zeros,
                      &nonfinite);
        Py_END_ALLOW_THREADS
        result = Py_BuildValue("(LL)", (long long)zeros, (long long)nonfinite);
    }
    release_args(args, 4);
    PyBuffer_Release(&rv);
    return result;
}

PyDoc_STRVAR(backward_step_doc,
"backward_step(t, T, n, P, H, codes, peep, has_peep, dm, dm_prev, i, f, g, o, c_prev, co, valid, dc, dz, sq_h)\n\n"
"Step t of the sensitivities' backward recursion (see lstm_doctor.experiments.sensitivity).\n"
"codes (3,) int64: the gate, candidate and cell-output activations (engine.ACTIVATION_CODES);\n"
"peep (3H,) float32, read when has_peep; dm, dm_prev, dc (n*P, H) and dz (n*P, 4H) float32;\n"
"i, f, g, o, c_prev, co (T, n, H) float32; valid (T, n) bool; sq_h (T, n, P) float64.\n"
"dm, dc, dz and sq_h[t] are written.");

static PyObject *py_backward_step(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    (void)self;
    if (argc != 20) {
        PyErr_Format(PyExc_TypeError, "backward_step takes 20 arguments (%zd given)", argc);
        return NULL;
    }
    Py_ssize_t t = PyLong_AsSsize_t(argv[0]), T = PyLong_AsSsize_t(argv[1]), n = PyLong_AsSsize_t(argv[2]);
    Py_ssize_t P = PyLong_AsSsize_t(argv[3]), H = PyLong_AsSsize_t(argv[4]);
    int has_peep = PyObject_IsTrue(argv[7]);
    if (PyErr_Occurred() || has_peep < 0) return NULL;
    if (T < 1 || t < 0 || t >= T || n < 0 || P < 0 || H < 0) {
        PyErr_SetString(PyExc_ValueError, "backward_step: bad t, T, n, P or H");
        return NULL;
    }
    const Py_ssize_t R = n * P, THn = T * n * H;
    /* argv[7] (has_peep) is not a buffer: the arguments after it are checked in a second list */
    Arg head[2] = {{"codes", 'q', 0, 3}, {"peep", 'f', 0, 3 * H}};
    Arg args[12] = {
        {"dm", 'f', 1, R * H}, {"dm_prev", 'f', 0, R * H}, {"i", 'f', 0, THn}, {"f", 'f', 0, THn},
        {"g", 'f', 0, THn}, {"o", 'f', 0, THn}, {"c_prev", 'f', 0, THn}, {"co", 'f', 0, THn},
        {"valid", '?', 0, T * n}, {"dc", 'f', 1, R * H}, {"dz", 'f', 1, R * 4 * H}, {"sq_h", 'd', 1, T * R},
    };
    PyObject *result = NULL;
    float *work = NULL;
    if (get_args(argv + 5, head, 2) < 0 || get_args(argv + 8, args, 12) < 0) goto done;
    const int64_t *codes = (const int64_t *)head[0].view.buf;
    for (int k = 0; k < 3; k++)
        if (codes[k] < 0 || codes[k] > 7) {
            PyErr_SetString(PyExc_ValueError, "codes: an activation code of engine.ACTIVATION_CODES is required");
            goto done;
        }
    if (args[0].view.buf == args[1].view.buf) {
        PyErr_SetString(PyExc_ValueError, "dm and dm_prev must be two arrays");
        goto done;
    }
    work = PyMem_Malloc(sizeof(float) * (size_t)(7 * H + 1));
    if (!work) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    backward_step(t, T, n, P, H, codes, (const float *)head[1].view.buf, has_peep, BUF(0, float *),
                  BUF(1, const float *), BUF(2, const float *), BUF(3, const float *), BUF(4, const float *),
                  BUF(5, const float *), BUF(6, const float *), BUF(7, const float *), BUF(8, const uint8_t *),
                  BUF(9, float *), BUF(10, float *), BUF(11, double *), work);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(work);
    release_args(head, 2);
    release_args(args, 12);
    return result;
}

PyDoc_STRVAR(apply_doc,
"apply(code, src, dst)\n\n"
"dst = act(src) element-wise with the kernel's activation ``code``; src, dst float32 of one size.\n"
"For the tests of the kernel's sigma and tanh.");

static PyObject *py_apply(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    (void)self;
    if (argc != 3) {
        PyErr_SetString(PyExc_TypeError, "apply takes 3 arguments");
        return NULL;
    }
    long code = PyLong_AsLong(argv[0]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer sv, dv;
    if (PyObject_GetBuffer(argv[1], &sv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    if (PyObject_GetBuffer(argv[2], &dv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&sv);
        return NULL;
    }
    PyObject *result = NULL;
    if (!kind_matches(&sv, 'f') || !kind_matches(&dv, 'f') || sv.len != dv.len || sv.buf == dv.buf)
        PyErr_SetString(PyExc_TypeError, "src, dst: two distinct float32 arrays of one size");
    else {
        activate(code, sv.buf, dv.buf, sv.len / 4);
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&sv);
    PyBuffer_Release(&dv);
    return result;
}

static PyMethodDef methods[] = {
    {"fused_step", (PyCFunction)(void (*)(void))py_fused_step, METH_FASTCALL, fused_step_doc},
    {"input_moments", (PyCFunction)(void (*)(void))py_input_moments, METH_FASTCALL, input_moments_doc},
    {"backward_step", (PyCFunction)(void (*)(void))py_backward_step, METH_FASTCALL, backward_step_doc},
    {"apply", (PyCFunction)(void (*)(void))py_apply, METH_FASTCALL, apply_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "The fused engine's compiled kernels (C): one pass per LSTM step for the gates, the state and "
    "every streaming statistic.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "N_COUNTS", N_COUNTS) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_G_BOUND", COUNT_G_BOUND) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_ACTC_BOUND", COUNT_ACTC_BOUND) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_H_BOUND", COUNT_H_BOUND) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_C_NEG", COUNT_C_NEG) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_C_POS", COUNT_C_POS) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_TRANSITIONS", COUNT_TRANSITIONS) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_VALID_ROWS", COUNT_VALID_ROWS) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_NONFINITE", COUNT_NONFINITE) < 0 ||
        PyModule_AddIntConstant(m, "COUNT_NONFINITE_STEP", COUNT_NONFINITE_STEP) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
