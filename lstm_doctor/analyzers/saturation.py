"""S — saturation, from the instrumented scan's streaming statistics.

Saturation is not always a defect: trained LSTMs use gates as switches that
flip with the input and right-saturated forget gates as integrators (Karpathy,
Johnson & Fei-Fei 2015). What docs/case-study.md shows is saturation that does not depend
on the input: the same units pinned the same way for every sequence and step.
These rules therefore measure, for the saturated values, the switching rate of
their units and their cross-input std, and escalate only input-independent
saturation; saturation that switches with the input is reported as info.
"""

from __future__ import annotations

from lstm_doctor.analyzers.cell import weighty_steps
from lstm_doctor.analyzers.registry import Context, Deferred, rule
from lstm_doctor.findings import Location, Severity

np = Deferred("numpy")  # imported by the first check that runs
SIGMOID_GATES = ("i", "f", "o")  # lstm_doctor.model.SIGMOID_GATES, without importing NumPy


def cross_input_std(sum_tu, sumsq_tu, valid_t):
    from lstm_doctor.stats import cross_input_std

    return cross_input_std(sum_tu, sumsq_tu, valid_t)


def _first_step_over(per_step: np.ndarray, share: float) -> int | None:
    over = np.flatnonzero(per_step > share)
    return int(over[0]) if over.size else None


def _unit_list(units: np.ndarray, limit: int = 32) -> list[int]:
    return [int(u) for u in units[:limit]]


def gate_saturation(ctx: Context, st, gate: str) -> dict | None:
    """How gate ``gate`` of one direction saturates in the capture, and whether the input drives it.

    For a sigmoid gate (i, f, o), with S301's definitions and thresholds:
    ``share`` of values < 0.1 or > 0.9, per unit the share of time saturated,
    the switching rate and the cross-input std; ``dependent_share`` is the
    share of the saturated values carried by units that switch with the input;
    ``independent`` when that is under one half. For the candidate g, S303's:
    the share beyond 0.99 of its bound, input-independent when the hidden state
    does not vary across inputs. None when there are no valid values.

    The static rules (W101, W102, W103) read this as their verdict: weights are
    a risk, the capture says whether it happens.
    """
    n_values = st.n_values
    if n_values == 0:
        return None
    total = n_values * st.H
    if gate == "g":
        share = float(st.g_at_bound_t.sum() / total)
        independent, cross = _input_independent(st, ctx, "S303")
        return {
            "gate": gate,
            "share": share,
            "independent": bool(independent),
            "harmful": bool(independent),
            "dependent_share": 0.0 if independent else 1.0,
            "mean_cross_input_std": cross,
            "values": total,
        }
    gs = st.gates[gate]
    left, right = int(gs.left_tu.sum()), int(gs.right_tu.sum())
    share = (left + right) / total
    sat_u = (gs.left_tu + gs.right_tu).sum(axis=0)  # (H,)
    unit_share = sat_u / n_values
    pinned = np.flatnonzero(unit_share >= ctx.th("S301", "unit_share"))
    switch = gs.switch_u / max(gs.transitions, 1)
    cross = _over_weighty_steps(st, cross_input_std(gs.sum_tu, gs.sumsq_tu, st.valid_t))
    dependent = (switch > ctx.th("S301", "switch_rate")) | (cross > ctx.th("S301", "cross_input_std"))
    dependent_share = float(sat_u[dependent].sum() / max(sat_u.sum(), 1))
    independent = dependent_share < 0.5
    h_independent, _ = _input_independent(st, ctx, "S302")
    return {
        # what S301 escalates: input-independent, and not an open gate on a
        # hidden state that still follows the input
        "harmful": bool(independent and (right <= left or h_independent)),
        "gate": gate,
        "share": share,
        "left": left,
        "right": right,
        "pinned": pinned,
        "switch": switch,
        "cross": cross,
        "dependent_share": dependent_share,
        "independent": independent,
        "mean_cross_input_std": float(cross.mean()),
        "values": total,
    }


@rule(
    "S301",
    "gate-saturation",
    "warning",
    "per gate: share of values < 0.1 (left) or > 0.9 (right) over steps, sequences "
    "and units; per unit: share of time saturated, switching rate and cross-input std",
    {
        "share": 0.5,
        "error_share": 0.9,
        "unit_share": 0.9,
        "switch_rate": 0.05,
        "cross_input_std": 0.05,
    },
    what="""
Measures, for each sigmoid gate (i, f, o), the share of its values that are
left-saturated (< 0.1) or right-saturated (> 0.9), and the units saturated at
least `unit_share` of the time. It fires when the share exceeds `share`. For the
saturated values it then asks whether they depend on the input: a unit
"switches" when its saturation state changes between steps more often than
`switch_rate`, or when its value varies across inputs by more than
`cross_input_std`. Input-independent saturation is a warning (error above
`error_share`); saturation carried by switching units is info, and so is a
gate held open (right-saturated) for every input while the hidden state still
varies with the input (S302's cross-input std above its threshold): an
integrator or an ungated write, which trained LSTMs use.
Calibration (corpus/, issue 14): on the working models 1% to 85% of the i, f,
o values are saturated; the highest, charlm's layer-1 input gate (85%, 84%
right, mostly identical across inputs while h keeps a cross-input std of
0.37), is the open-gate case and stays info, as does every other saturated
gate there (units that switch with the input). The case study's 98–99%, identical for
every input with h's cross-input std 1.4e-05, stays an error.""",
    why="""
The 0.1 / 0.9 bounds and the left/right split are those of Karpathy, Johnson &
Fei-Fei (2015), "Visualizing and Understanding Recurrent Networks". A gate
pinned at 0 or 1 for every input has σ' ≈ 0: it passes no gradient and no
information. In docs/case-study.md every gate of every unit sat at 1 from step 1 on, for
every tweet.""",
    example="""
S301 error  layer 0 fwd, gate f: 100% saturated (0% left, 100% right); 64/64 units
saturated ≥ 90% of the time; switching rate 0.000, cross-input std 2e-08""",
    fix="""
Find what drives the pre-activations (see W101, W102, I502 and the
input/recurrent/bias split) and bring them back into |z| < 4.6.""",
)
def check_gate_saturation(ctx: Context):
    cap = ctx.capture
    for (k, d), st in cap.directions.items():
        if st.n_values == 0:
            continue
        # Steps holding under 10% of the sequences (the tails of the longest
        # ones, with --lengths) do not decide where saturation starts.

        steps = weighty_steps(st)
        for gate in SIGMOID_GATES:
            v = gate_saturation(ctx, st, gate)
            gs = st.gates[gate]
            share, left, right, total = v["share"], v["left"], v["right"], v["values"]
            if share <= ctx.th("S301", "share"):
                continue
            pinned, switch, cross = v["pinned"], v["switch"], v["cross"]
            dependent_share = v["dependent_share"]
            per_step = (gs.left_tu + gs.right_tu).sum(axis=1) / np.maximum(st.valid_t * st.H, 1)
            over = steps[per_step[steps] > ctx.th("S301", "error_share")]
            first = int(over[0]) if over.size else None
            independent = v["independent"]
            h_independent, h_cross = _input_independent(st, ctx, "S302")
            if not independent:
                severity = Severity.info
                how = (
                    f"{dependent_share:.0%} of the saturated values come from units that switch "
                    "with the input (gates used as switches, usually healthy)"
                )
            elif right > left and not h_independent:
                # Held open for every input while the hidden state still follows
                # the input: an integrator (f ≈ 1) or an ungated write/read
                # (i, o ≈ 1). Trained character LMs do this (corpus/charlm,
                # layer 1: 84% of i right-saturated, h cross-input std 0.37).
                severity = Severity.info
                how = (
                    "held open identically for every input, while the hidden state varies with the "
                    f"input (cross-input std {h_cross:.2g}): an always-open gate, not a defect by itself"
                )
            else:
                severity = (
                    Severity.error if share >= ctx.th("S301", "error_share") else Severity.warning
                )
                how = (
                    "identically for every input "
                    f"(switching rate {float(switch[pinned].mean()) if pinned.size else float(switch.mean()):.3f}, "
                    f"cross-input std {float(cross[pinned].mean()) if pinned.size else float(cross.mean()):.2g})"
                )
            when = f"; from step {first} on, over 90% of values are saturated" if first is not None else ""
            yield ctx.finding(
                "S301",
                f"gate {gate}: {share:.0%} of values saturated ({left / total:.0%} left < 0.1, "
                f"{right / total:.0%} right > 0.9); {pinned.size}/{st.H} units saturated ≥ 90% "
                f"of the time, {how}{when}.",
                severity=severity,
                location=Location(
                    k, d, gate, units=tuple(_unit_list(pinned)), steps=(first, st.T - 1) if first is not None else None
                ),
                evidence={
                    "share": share,
                    "left_share": left / total,
                    "right_share": right / total,
                    "pinned_units": int(pinned.size),
                    "units": st.H,
                    "input_dependent_share": dependent_share,
                    "mean_switching_rate": float(switch.mean()),
                    "mean_cross_input_std": float(cross.mean()),
                    "first_step_over_90pct": first,
                    "values": total,
                },
            )


def _over_weighty_steps(st, per_step_unit: np.ndarray) -> np.ndarray:
    """(H,) mean over the steps that hold ≥ 10% of the sequences of a (T, H) table.

    A cross-input std is 0 at a step with one valid sequence; averaging such
    steps in would make any layer look input-independent under --lengths.
    """
    steps = weighty_steps(st)
    if steps.size == 0:
        steps = np.flatnonzero(st.valid_t > 0)
    if steps.size == 0:
        return np.zeros(per_step_unit.shape[1])
    return per_step_unit[steps].mean(axis=0)


def _input_independent(st, ctx: Context, code: str) -> tuple[bool, float]:
    cross = float(_over_weighty_steps(st, st.cross_input_std_h()).mean())
    return cross < ctx.th(code, "cross_input_std"), cross


@rule(
    "S302",
    "hidden-saturation",
    "warning",
    "share of hidden values within 1% of the bounds of the range of o·act(c)",
    {"share": 0.5, "error_share": 0.9, "cross_input_std": 0.01},
    what="""
Measures the share of hidden values within 1% (of the range) of the bounds of
h = o·act(c): ±1 for tanh, 0 and 1 for σ. Fires above `share`, as an error
above `error_share`, when the hidden values do not vary across inputs (mean
cross-input std below `cross_input_std`); otherwise info.""",
    why="""
A hidden state at its bound carries one bit at most, and the same bit for every
input when it does not vary across inputs. Case study (docs/case-study.md): h reached 1.0 from step 15
on for every tweet.""",
    example="S302 error  layer 0 fwd: 94% of hidden values at a bound of [0, 1]; cross-input std 3e-08",
    fix="Fix what saturates the gates and the cell first (S301, C401); then re-check.",
)
def check_hidden_saturation(ctx: Context):
    cap = ctx.capture
    for (k, d), st in cap.directions.items():
        layer = ctx.model.layers[k]
        out = layer.activations.get("cell_output")
        n = st.n_values * st.H
        if not out.bounded or n == 0:
            continue
        share = float(st.h_at_bound_t.sum() / n)
        if share < ctx.th("S302", "share"):
            continue
        independent, cross = _input_independent(st, ctx, "S302")
        if independent:
            severity = Severity.error if share >= ctx.th("S302", "error_share") else Severity.warning
        else:
            severity = Severity.info
        lo, hi = min(out.low, 0.0), out.high
        yield ctx.finding(
            "S302",
            f"{share:.0%} of hidden values are within 1% of the bounds of [{lo:g}, {hi:g}]"
            + (
                f", the same for every input (cross-input std {cross:.2g})."
                if independent
                else f"; they vary with the input (cross-input std {cross:.2g})."
            ),
            severity=severity,
            location=Location(k, d, "h"),
            evidence={"share": share, "mean_cross_input_std": cross, "range": [lo, hi]},
        )


@rule(
    "S303",
    "candidate-saturation",
    "warning",
    "share of candidate g values and of act(c) values with |value| > 0.99 of the bound",
    {"share": 0.5, "cross_input_std": 0.01},
    what="""
Measures the share of candidate values g, and of cell outputs act(c), beyond
0.99 of their activation's bound. Fires above `share` (warning when the hidden
state does not vary across inputs, else info).""",
    why="""
A candidate at ±1 writes the same value into the cell at every step, so the
cell counts steps instead of storing content; act(c) at its bound makes h
independent of c. Case study (docs/case-study.md): g sat at +1 and c grew as t + 1.""",
    example="S303 warning  layer 0 fwd: 100% of g and 97% of act(c) at |value| > 0.99",
    fix="Bring the candidate's pre-activation back into range (W101, W102, I502).",
)
def check_candidate_saturation(ctx: Context):
    cap = ctx.capture
    for (k, d), st in cap.directions.items():
        n = st.n_values * st.H
        if n == 0:
            continue
        share_g = float(st.g_at_bound_t.sum() / n)
        share_c = float(st.actc_at_bound_t.sum() / n)
        if max(share_g, share_c) < ctx.th("S303", "share"):
            continue
        independent, cross = _input_independent(st, ctx, "S303")
        yield ctx.finding(
            "S303",
            f"{share_g:.0%} of candidate values g and {share_c:.0%} of cell outputs act(c) are "
            f"beyond 0.99 of their bound"
            + (" for every input." if independent else f"; they vary with the input (std {cross:.2g})."),
            severity=Severity.warning if independent else Severity.info,
            location=Location(k, d, "g" if share_g >= share_c else "c"),
            evidence={"candidate_share": share_g, "cell_output_share": share_c, "mean_cross_input_std": cross},
        )


@rule(
    "S304",
    "dead-units",
    "warning",
    "per unit: std of h over all steps and sequences",
    {"tolerance": 1e-4, "min_units": 1},
    what="""
Lists units whose hidden value varies by less than `tolerance` (std over all
steps and sequences): they output a constant whatever the input.""",
    why="""
A dead unit wastes capacity and often signals a block of zeroed or diverged
weights. A few dead units are tolerable; many mean the encoding's effective
width is smaller than H.""",
    example="S304 warning  layer 0 fwd: 8/64 units are constant (std < 1e-4): units 0–7",
    fix="Re-initialise the dead units' rows of W and U (and their biases) and retrain.",
)
def check_dead_units(ctx: Context):
    cap = ctx.capture
    for (k, d), st in cap.directions.items():
        if st.n_values < 2:
            continue
        std = st.std_h_u()
        dead = np.flatnonzero(std < ctx.th("S304", "tolerance"))
        if dead.size >= ctx.th("S304", "min_units"):
            yield ctx.finding(
                "S304",
                f"{dead.size}/{st.H} units have a constant hidden value (std < "
                f"{ctx.th('S304', 'tolerance'):g} over all steps and sequences): units "
                f"{_unit_list(dead, 20)}{' …' if dead.size > 20 else ''}.",
                location=Location(k, d, "h", units=tuple(_unit_list(dead, 1000))),
                evidence={"dead_units": int(dead.size), "units": st.H, "indices": _unit_list(dead, 1000)},
            )
