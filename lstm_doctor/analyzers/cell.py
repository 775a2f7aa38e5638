"""C — the cell state: growth without bound, and non-finite values."""

from __future__ import annotations

from lstm_doctor.analyzers.registry import Context, Deferred, rule
from lstm_doctor.findings import Location

np = Deferred("numpy")  # imported by the first check that runs


@rule(
    "C401",
    "cell-growth",
    "error",
    "mean |c| per step (its growth over the second half of the sequence) and max |c| "
    "against the candidate's range",
    {"growth_ratio": 1.5, "min_mean_abs": 2.0, "range_multiple": 10.0},
    what="""
Flags a cell that integrates instead of remembering: mean |c| at the last step
is more than `growth_ratio` times its value at mid-sequence while above
`min_mean_abs` × the candidate's bound, or max |c| exceeds `range_multiple` ×
the candidate's bound.""",
    why="""
c_t = f·c_{t-1} + i·g with f ≈ 1, i ≈ 1 and g ≈ 1 adds one per step: c_t ≈ t + 1.
Without a working forget gate the cell state "may grow indefinitely and
eventually cause the network to break down" (Gers, Schmidhuber & Cummins 2000).
A healthy cell plateaus within a few multiples of the candidate's range.""",
    example="C401 error  layer 0 fwd: mean |c| grows from 128 at step 127 to 255 at step 255 (max |c| 256)",
    fix="""
Stop the gates from saturating at 1 (see W101, W102) and check the forget bias
(W103); a forget gate that works keeps |c| bounded.""",
)
def check_cell_growth(ctx: Context):
    for (k, d), st in ctx.capture.directions.items():
        layer = ctx.model.layers[k]
        cand = layer.activations.get("candidate")
        bound = max(abs(cand.low), abs(cand.high)) if cand.bounded else 1.0
        steps = np.flatnonzero(st.valid_t > 0)
        if steps.size < 2:
            continue
        mean_abs = st.mean_abs_c_t()
        last, mid = int(steps[-1]), int(steps[len(steps) // 2])
        max_abs = float(st.max_abs_c_t.max())
        growth = float(mean_abs[last] / mean_abs[mid]) if mean_abs[mid] > 0 else float("inf")
        growing = (
            growth > ctx.th("C401", "growth_ratio")
            and mean_abs[last] > ctx.th("C401", "min_mean_abs") * bound
        )
        too_big = max_abs > ctx.th("C401", "range_multiple") * bound
        if not (growing or too_big):
            continue
        slope = float(np.polyfit(steps[len(steps) // 2 :], mean_abs[steps[len(steps) // 2 :]], 1)[0]) if steps.size > 3 else float("nan")
        yield ctx.finding(
            "C401",
            f"mean |c| grows from {mean_abs[mid]:.3g} at step {mid} to {mean_abs[last]:.3g} at step "
            f"{last} (slope {slope:.3g} per step); max |c| = {max_abs:.3g}, "
            f"{max_abs / bound:.3g}× the candidate's bound {bound:g}: the cell integrates "
            "instead of remembering.",
            location=Location(k, d, "c", steps=(mid, last)),
            evidence={
                "mean_abs_c_mid": float(mean_abs[mid]),
                "mean_abs_c_last": float(mean_abs[last]),
                "growth_ratio": growth,
                "slope_second_half": slope,
                "max_abs_c": max_abs,
                "candidate_bound": bound,
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
