"""C — the cell state: growth without bound, and non-finite values."""

from __future__ import annotations

from lstm_doctor.analyzers.registry import Context, Deferred, rule
from lstm_doctor.findings import Location

np = Deferred("numpy")  # imported by the first check that runs


MIN_STEP_SHARE = 0.1  # a step counts when at least this share of the sequences is still valid there


def weighty_steps(st, min_share: float = MIN_STEP_SHARE) -> np.ndarray:
    """Steps (processing order) where at least ``min_share`` of the sequences are valid.

    With lengths, the last steps of the longest sequences hold a handful of
    sequences: a mean over 1 of 40 sequences says nothing about the layer, so
    such steps carry no weight in the per-step statistics the rules compare.
    """
    need = max(1.0, min_share * max(int(st.n_sequences), 1))
    return np.flatnonzero(st.valid_t >= need)


def window_mean(st, steps: np.ndarray) -> float:
    """Mean |c| over the valid values of ``steps``: Σ|c| / (valid sequences × H)."""
    if steps.size == 0:
        return float("nan")
    n = float(st.valid_t[steps].sum()) * st.H
    return float(st.sum_abs_c_t[steps].sum() / n) if n > 0 else float("nan")


def cell_growth(st, min_share: float = MIN_STEP_SHARE) -> dict | None:
    """Mean |c| in the four quarters of the weighty steps, and whether the last still rises.

    Quarters q1..q4 of the steps that carry weight (``weighty_steps``); q1 holds
    the warm-up from c_0 = 0, which is not growth, so only q2 → q4 is compared:
    ``growth`` = mean(q4) / mean(q2); the cell is still rising, with no plateau,
    when the last quarter adds at least half as much as the third did:
    mean(q4) − mean(q3) ≥ ½ (mean(q3) − mean(q2)) > 0. A linear integrator
    (c_t ≈ t + 1) adds the same in each quarter; a counter that plateaus adds
    nothing in the last one. None with fewer than 8 weighty steps (too short to
    tell growth from warm-up).
    """
    steps = weighty_steps(st, min_share)
    if steps.size < 8:
        return None
    q = np.array_split(steps, 4)
    m = [window_mean(st, part) for part in q]
    if not all(np.isfinite(m)):
        return None
    rise3, rise4 = m[2] - m[1], m[3] - m[2]
    growth = m[3] / m[1] if m[1] > 0 else (float("inf") if m[3] > 0 else 1.0)
    rising = rise4 > 0 and rise3 > 0 and rise4 >= 0.5 * rise3
    later = np.concatenate(q[1:])
    mean_abs = st.mean_abs_c_t()
    slope = float(np.polyfit(later.astype(np.float64), mean_abs[later], 1, w=np.sqrt(st.valid_t[later]))[0])
    return {
        "steps": steps,
        "quarters": m,
        "quarter_steps": [(int(p[0]), int(p[-1])) for p in q],
        "growth": float(growth),
        "rising": bool(rising),
        "slope": slope,
    }


def gate_hold(st) -> np.ndarray:
    """(H,) what each unit's forget gate can hold: 1 / (1 − f̄_u), f̄_u its mean forget gate.

    c_t = f·c_{t−1} + i·g with |i·g| ≤ 1 and f constant stays within
    Σ_k f^k = 1/(1 − f) (× the candidate's bound). A unit whose |c| is far past
    that is integrating beyond its own forget gate's horizon.
    """
    n = max(int(st.valid_t.sum()), 1)
    f_mean = st.gates["f"].sum_tu.sum(axis=0) / n
    return 1.0 / np.maximum(1.0 - np.clip(f_mean, 0.0, 1.0), 1e-6)


def share_beyond(ctx: Context, k: int, d: str, limit) -> float | None:
    """Share of the sample's valid |c| values above ``limit`` (a number, or (H,) per unit;
    None without a sample of c)."""
    sample = ctx.capture.sample.get((k, d), {}) if ctx.capture.sample else {}
    c = sample.get("c")
    if c is None or np.size(c) == 0:
        return None
    c = np.abs(np.asarray(c, dtype=np.float64))  # (T, b, H)
    beyond = c > np.broadcast_to(np.asarray(limit, dtype=np.float64), c.shape[-1:])
    ok = np.isfinite(c)
    lengths = ctx.capture.sample_lengths
    if lengths is not None:
        ok &= (np.arange(c.shape[0])[:, None] < np.asarray(lengths)[None, : c.shape[1]])[:, :, None]
    n = int(ok.sum())
    return float((beyond & ok).sum() / n) if n else None


def cell_keeps_growing(ctx: Context, layer: int, direction: str) -> bool:
    """C401's growth test (rising, no plateau, above `min_mean_abs` × the candidate's bound)."""
    cap = ctx.capture
    if cap is None or (layer, direction) not in cap.directions:
        return False
    st = cap.directions[(layer, direction)]
    cand = ctx.model.layers[layer].activations.get("candidate")
    bound = max(abs(cand.low), abs(cand.high)) if cand.bounded else 1.0
    g = cell_growth(st)
    return bool(
        g is not None
        and g["rising"]
        and g["growth"] > ctx.th("C401", "growth_ratio")
        and g["quarters"][3] > ctx.th("C401", "min_mean_abs") * bound
    )


@rule(
    "C401",
    "cell-growth",
    "error",
    "mean |c| over the valid values of each quarter of the steps that hold ≥ 10% of the "
    "sequences (warm-up quarter excluded), and the share of |c| values beyond the candidate's range",
    {"growth_ratio": 1.5, "min_mean_abs": 2.0, "range_multiple": 10.0, "value_share": 0.5},
    what="""
Flags a cell that integrates instead of remembering, in either of two ways:

- growth: over the steps where at least 10% of the sequences are still valid
  (with --lengths, a step holding 1 of 40 sequences carries no weight), split
  in quarters, mean |c| in the last quarter is more than `growth_ratio` × the
  second quarter's, is above `min_mean_abs` × the candidate's bound, and is
  still rising: the last quarter adds at least half of what the third added
  (no plateau). The first quarter, the warm-up from c₀ = 0, is not compared.
- magnitude: more than `value_share` of the cell values (the capture's sample)
  exceed both `range_multiple` × the candidate's bound and what their unit's
  forget gate can hold, 1/(1 − f̄) × the bound (f̄ the unit's mean forget gate:
  c_t = f·c_{t−1} + i·g stays within Σ f^k = 1/(1 − f) when |i·g| ≤ 1).

One large value, or a counter-like cell that rises and then plateaus, is not
growth.""",
    why="""
c_t = f·c_{t-1} + i·g with f ≈ 1, i ≈ 1 and g ≈ 1 adds one per step: c_t ≈ t + 1.
Without a working forget gate the cell state "may grow indefinitely and
eventually cause the network to break down" (Gers, Schmidhuber & Cummins 2000).
A healthy cell plateaus within a few multiples of the candidate's range;
trained character LSTMs keep counter-like cells that rise for tens of steps and
then plateau, and single units with |c| past 10 (Karpathy et al. 2015), which
is why one value, or a rise followed by a plateau, does not fire.
Calibration (corpus/, issue 14): on the working models mean |c| grows 0.98–1.95×
from the second to the last quarter and is rising only where it stays under
1.4 (classifier, keras_hardsig: under `min_mean_abs`); charlm's layer 1 levels
off at 17.7 (13.8 → 16.5 → 17.7) with 16% of its |c| beyond what its forget
gates hold; at most 16.5% of any working model's values are, against
`value_share` 50%. The twin charlm_saturated grows 3.1–3.3× with no plateau
(11.6 → 23.6 → 38.2), and the case study's encoder 2.3× (94.8 → 158 → 222, c_t ≈ t + 1):
both keep C401 as an error.""",
    example="""
C401 error  layer 0 fwd: mean |c| over the valid values goes 94.8 → 158 → 222 over
steps 64–255 (quarters 2–4 of the steps holding ≥ 10% of the sequences; slope
0.992 per step, no plateau); max |c| 255""",
    fix="""
Stop the gates from saturating at 1 (see W101, W102) and check the forget bias
(W103); a forget gate that works keeps |c| bounded.""",
)
def check_cell_growth(ctx: Context):
    for (k, d), st in ctx.capture.directions.items():
        layer = ctx.model.layers[k]
        cand = layer.activations.get("candidate")
        bound = max(abs(cand.low), abs(cand.high)) if cand.bounded else 1.0
        if st.n_values == 0:
            continue
        g = cell_growth(st)
        growing = cell_keeps_growing(ctx, k, d)
        multiple = ctx.th("C401", "range_multiple")
        limit = multiple * bound
        hold = gate_hold(st)
        per_unit = np.maximum(multiple, hold) * bound  # beyond the range and what the forget gate holds
        beyond = share_beyond(ctx, k, d, per_unit)
        if beyond is None:  # no sample kept: the per-step means stand in
            steps = weighty_steps(st)
            beyond = float(window_mean(st, steps) > max(limit, float(np.median(hold)) * bound)) if steps.size else 0.0
        too_big = beyond > ctx.th("C401", "value_share")
        if not (growing or too_big):
            continue
        max_abs = float(st.max_abs_c_t.max())
        parts = []
        if g is not None:
            (a, _), _, _, (_, z) = g["quarter_steps"]
            q = g["quarters"]
            trend = "no plateau" if g["rising"] else "levelling off"
            parts.append(
                f"mean |c| over the valid values goes {q[1]:.3g} → {q[2]:.3g} → {q[3]:.3g} over steps "
                f"{g['quarter_steps'][1][0]}–{z} (quarters 2–4 of the steps holding ≥ 10% of the sequences; "
                f"slope {g['slope']:.3g} per step, {trend})"
            )
        if not too_big:
            parts.append(f"max |c| {max_abs:.3g}")
        else:
            parts.append(
            f"{beyond:.0%} of |c| values exceed both {limit:g} ({multiple:g}× the candidate's bound {bound:g}) "
            f"and what their unit's forget gate holds, 1/(1 − f̄) (median {float(np.median(hold)):.3g}); max |c| {max_abs:.3g}"
            )
        steps = None if g is None else (g["quarter_steps"][1][0], g["quarter_steps"][3][1])
        yield ctx.finding(
            "C401",
            "; ".join(parts) + ": the cell integrates instead of remembering.",
            location=Location(k, d, "c", steps=steps),
            evidence={
                "quarter_means": None if g is None else g["quarters"],
                "quarter_steps": None if g is None else g["quarter_steps"],
                "growth_ratio": None if g is None else g["growth"],
                "still_rising": None if g is None else g["rising"],
                "slope": None if g is None else g["slope"],
                "share_beyond_range": beyond,
                "max_abs_c": max_abs,
                "candidate_bound": bound,
                "growing": bool(growing),
                "too_big": bool(too_big),
            },
        )


@rule(
    "C402",
    "nonfinite-state",
    "error",
    "first step with a NaN or Inf in any gate, cell or hidden value",
    {},
    what="Reports the first step at which a NaN or Inf appears in a gate, the cell or the hidden state.",
    why="""
Once non-finite, a state stays non-finite for the rest of the sequence and
poisons every layer above. NanGuardMode would stop here too, but without
saying which step and which quantity started it.""",
    example="C402 error  layer 0 fwd: NaN/Inf from step 12 on (3,072 values)",
    fix="Check W105 (weights) and I505 (inputs); with an unbounded activation, bound it (tanh).",
)
def check_nonfinite_state(ctx: Context):
    for (k, d), st in ctx.capture.directions.items():
        if st.first_nonfinite_step >= 0:
            yield ctx.finding(
                "C402",
                f"NaN or Inf appears at step {st.first_nonfinite_step} "
                f"({st.nonfinite_count} non-finite cell and hidden values in all).",
                location=Location(k, d, "c", steps=(st.first_nonfinite_step, st.T - 1)),
                evidence={"first_step": st.first_nonfinite_step, "count": st.nonfinite_count},
            )
