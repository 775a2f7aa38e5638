"""A204 (observed trace vs configuration), G701, G702 and H602 (gradient flow).

The data comes from two optional stages that ``run_diagnosis`` runs after the
capture and attaches to it: ``capture.observed`` (``lstm_doctor.experiments.observed.search``
on ``--observed FILE``) and ``capture.gradients``
(``lstm_doctor.experiments.gradients.analyze_gradients``, on by default; ``--no-gradients``
turns it off). Without them these rules record why they were not evaluated.
"""

from __future__ import annotations

from lstm_doctor.analyzers.registry import Context, Deferred, rule
from lstm_doctor.findings import Location, Severity

np = Deferred("numpy")

SHOW_CLOSEST = 3


def _observed(ctx: Context):
    return getattr(ctx.capture, "observed", None) if ctx.capture is not None else None


def _gradients(ctx: Context):
    return getattr(ctx.capture, "gradients", None) if ctx.capture is not None else None


def _fit_text(fit) -> str:
    return f"mean |diff| {fit.mean_abs:.3g}, max {fit.max_abs:.3g}"


@rule(
    "A204",
    "observed-config-mismatch",
    "error",
    "ranking of the configuration space (cell-output and gate activations, gate order, "
    "time axis, peepholes, runtime forget bias, initial state) by mean |diff| to the "
    "observed trace (--observed)",
    {"tolerance": 0.01},
    what="""
Compares a trace that the user's own code produced for the same inputs
(`--observed FILE`: per-step h as (B, T, H) or (T, B, H), final encodings
(B, H), or an .npz with `h`, optional `c`, `units`, `layout`) with the
declared model re-run under every plausible configuration: cell-output
activation (tanh, σ, identity, hard σ), gate activation (σ, hard σ), the order
the stored gate blocks are read in (PyTorch/Keras ifgo, TF1 igfo, ONNX iofg,
Caffe ifog), the time axis swapped with the features (when T = D), peepholes
on or off, a runtime forget bias of +1 (TF1) and a zero initial state. A
configuration fits when its mean |diff| is at most `tolerance` × the mean
|observed h|. Fires (error) when the declared configuration does not fit and
another does, naming the difference as the equation the user's code computes;
fires (warning) when no configuration fits, listing the closest ones.""",
    why="""
Case study (docs/case-study.md): the weights could not reveal that the user's code applied σ instead of
tanh to the cell; the printed per-step values could (σ(1..4) = .73, .88, .95,
.98). Any diagnosis of the declared model is about a different computation
than the user's when the two disagree. "No configuration fits" is a warning,
not an error: the code does something outside the known space, or the trace
was produced from other inputs or weights; either way the other findings
describe the declared model, not the code that printed the trace.""",
    example="""
A204 error  layer 0 fwd: the observed trace is reproduced by h_t = o_t · σ(c_t)
(declared tanh(c_t)): mean |diff| 1e-08 vs 0.26 for the declared configuration""",
    fix="""
Make the code match the configuration that reproduces the trace, or declare
that configuration (activations, gate_order, input_layout) so that the
diagnosis describes the code that actually runs.""",
)
def check_observed(ctx: Context):
    result = _observed(ctx)
    if result is None:
        ctx.skip("A204", "needs an observed trace (--observed FILE)")
        return
    from lstm_doctor.experiments.observed import describe_difference, equation, rank

    declared_cfg = result.declared.config
    limit = ctx.th("A204", "tolerance") * max(result.scale, 1e-12)
    ranking = rank(list(result.ranking), limit)
    best, declared = ranking[0], result.declared
    cand = result.candidate_activation
    location = Location(0, "fwd", "h", steps=None if result.steps is None else (0, max(result.steps - 1, 0)))
    cost = {
        "candidates": result.candidates,
        "candidates_full": result.candidates_full,
        "observed": result.observed,
        "scale": result.scale,
        "tolerance": ctx.th("A204", "tolerance"),
    }
    if declared.fits:
        return
    closest = [f.summary(declared_cfg, cand) for f in ranking[:SHOW_CLOSEST]]
    if best.fits:
        diffs = [describe_difference(n, best.config, declared_cfg) for n in best.differences]
        others = [f for f in ranking[1:] if f.fits and len(f.differences) == len(best.differences)]
        message = (
            f"the observed trace is reproduced by a configuration other than the declared one: "
            f"{'; '.join(diffs)}. The code computes {equation(best.config, cand)}. "
            f"Fit: {_fit_text(best)} for it against {_fit_text(declared)} for the declared "
            f"configuration (observed mean |h| {result.scale:.3g})."
        )
        if others:
            message += " Equally simple and also fitting: " + "; ".join(
                ", ".join(describe_difference(n, f.config, declared_cfg) for n in f.differences) for f in others[:2]
            ) + "."
        yield ctx.finding(
            "A204",
            message,
            location=location,
            evidence={
                "best": best.summary(declared_cfg, cand),
                "declared": declared.summary(declared_cfg, cand),
                "closest": closest,
                "per_step_mean_abs_diff": {
                    "best": None if best.per_step_mean is None else best.per_step_mean,
                    "declared": None if declared.per_step_mean is None else declared.per_step_mean,
                },
                **cost,
            },
        )
        return
    shown = "; ".join(
        f"{', '.join(describe_difference(n, f.config, declared_cfg) for n in f.differences) or 'the declared configuration'}"
        f" ({_fit_text(f)})"
        for f in ranking[:SHOW_CLOSEST]
    )
    yield ctx.finding(
        "A204",
        f"no known configuration reproduces the observed trace (best mean |diff| {best.mean_abs:.3g} against "
        f"a tolerance of {limit:.3g}, {ctx.th('A204', 'tolerance'):g} × mean |h| {result.scale:.3g}; "
        f"{result.candidates} configurations tried). Closest: {shown}. The code that printed the trace computes "
        "something else, or ran on other inputs or weights.",
        severity=Severity.warning,
        location=location,
        evidence={"best": best.summary(declared_cfg, cand), "declared": declared.summary(declared_cfg, cand),
                  "closest": closest, "no_fit": True, **cost},
        fix="Check that the trace comes from these inputs and weights; then compare the code's step "
        "function term by term with the closest configuration's equation.",
    )


# ---------------------------------------------------------------------------
# Gradient flow
# ---------------------------------------------------------------------------


def strip_evidence(g) -> dict:
    """The per-step sensitivity strip and horizon, as G701/H602 evidence."""
    s = np.asarray(g.input_sensitivity, dtype=float)
    peak = float(np.nanmax(s)) if np.isfinite(s).any() else 0.0
    rel = s / peak if peak > 0 else s
    return {
        "input_sensitivity_by_lag": s,
        "relative_by_lag": rel,
        "memory_horizon": g.memory_horizon,
        "T": g.T,
        "sequences": g.sequences,
    }


def horizon_text(g) -> str:
    """The memory horizon in words, the same in G701 and H602 (``gradients.memory_horizon``)."""
    k = int(g.memory_horizon)
    if k <= 0:
        return f"no step's input reaches h_T (every sensitivity of the {g.T} steps is 0 or underflows)"
    return f"the memory horizon is {k} step{'s' if k != 1 else ''} of {g.T}"


def vanishing_lag(sensitivity, ratio: float) -> int | None:
    """The first lag (0 = last step) whose ‖∂h_T/∂x_t‖ is below ``ratio`` × its largest value."""
    s = np.asarray(sensitivity, dtype=float)
    peak = np.nanmax(s) if np.isfinite(s).any() else 0.0
    if not peak > 0:
        return 0
    below = np.flatnonzero(np.nan_to_num(s, nan=np.inf) < ratio * peak)
    return int(below[0]) if below.size else None


@rule(
    "G701",
    "vanishing-gradient",
    "warning",
    "‖∂h_T/∂x_t‖ by distance from the end (reverse-mode differentiation, bounded sample) and the "
    "mean local derivative of each gate's activation at the captured values",
    {"ratio": 1e-3, "steps": 5, "derivative": 0.01},
    what="""
Measures how much the final state h_T depends on each step's input: the
mean over the sample of ‖∂h_T/∂x_t‖ (Frobenius), by lag from the end, by the
LSTM's backward recursion on the gates the capture recorded (on by default;
`--engine pytensor` takes PyTensor's grad through the instrumented scan, the
check it is tested against). Fires when it falls
below `ratio` × its largest value within `steps` steps of the end, or when a
gate's mean local derivative (σ' = σ(1−σ), hard σ's slope, tanh' = 1 − tanh²)
is below `derivative`. Error when the derivative of every σ gate (i, f, o) is
below `derivative`: no training signal passes any gate. The evidence holds
the per-step sensitivity strip and the memory horizon: the fewest final steps
that explain 99% of Σ‖∂h_T/∂x_t‖².""",
    why="""
Gradients reaching the weights are these derivatives times the errors: when
they vanish, training cannot move the weights that would fix the layer (Case study (docs/case-study.md):
gradients reaching the input weights were ~1e-6 against ~1.6 with a zero-mean
init, which is why the defect survived training). Measured: a Glorot model
with forget bias 1 keeps 1e-3 of its sensitivity beyond 40 steps (horizon 18
of 40); PyTorch's default init drops below it after ~12 steps; the CASE-like
encoder after 2 steps, with σ' ≈ 0.007 on every gate.""",
    example="""
G701 error  layer 0 fwd: ‖∂h_T/∂x_t‖ falls below 1e-3 of its peak 2 steps from
the end; memory horizon 1 step of 64; mean σ' i 0.0069, f 0.0068, o 0.0066""",
    fix="""
Remove the saturation that kills the derivatives (zero-mean weights, a smaller
recurrent gain, standardised inputs); set the forget bias to 1 for a longer
memory (Jozefowicz et al. 2015).""",
)
def check_vanishing(ctx: Context):
    g = _gradients(ctx)
    if g is None:
        ctx.skip("G701", "needs gradient analysis (--gradients)")
        return
    ratio, steps, dmin = ctx.th("G701", "ratio"), int(ctx.th("G701", "steps")), ctx.th("G701", "derivative")
    lag = vanishing_lag(g.input_sensitivity, ratio)
    decays = lag is not None and lag <= steps and lag < g.T - 1
    gates_low = {}
    every = True
    for (k, d), derivs in sorted(g.gate_derivative.items()):
        low = {name: v for name, v in derivs.items() if name in "ifo" and v is not None and v < dmin}
        if low:
            gates_low[f"{k} {d}"] = low
        if len(low) < 3:
            every = False
    every = every and bool(gates_low)
    if not (decays or gates_low):
        return
    parts = []
    if decays:
        parts.append(
            f"‖∂h_T/∂x_t‖ falls below {ratio:g} of its peak {lag} step{'s' if lag != 1 else ''} from the end: "
            f"{horizon_text(g)}"
        )
    for where, low in gates_low.items():
        parts.append(
            f"layer {where}: mean gate derivative "
            + ", ".join(f"{name} {v:.2g}" for name, v in low.items())
            + f" (below {dmin:g})"
        )
    yield ctx.finding(
        "G701",
        "; ".join(parts) + ": training signal cannot reach the inputs and the weights through these paths.",
        severity=Severity.error if every else Severity.warning,
        location=Location(g.layer, g.direction),
        evidence={
            **strip_evidence(g),
            "vanishing_lag": lag,
            "gate_derivative": {f"{k} {d}": v for (k, d), v in sorted(g.gate_derivative.items())},
            "every_gate_below": every,
        },
    )


@rule(
    "G702",
    "exploding-gradient",
    "warning",
    "‖∂h_T/∂h_t‖ (through the hidden state, c_t held) by distance from the end",
    {"growth": 10.0},
    what="""
With gradient flow (on by default), fires when ‖∂h_T/∂h_t‖ grows with the distance T − t: its
largest value beyond one step from the end exceeds `growth` × its value one
step from the end (the recurrent Jacobian's product expands instead of
contracting).""",
    why="""
Exploding products make training unstable (gradient norms of 1e10 and NaN
updates) and make h_T hypersensitive to the first steps. An LSTM normally
contracts: its saturating gates and the forget gate keep ‖∂h_T/∂h_t‖ from
growing; growth points at a large recurrent gain in the linear range
(e.g. identity activations, forget gates at 1 and a large candidate gain).""",
    example="G702 warning  layer 0 fwd: ‖∂h_T/∂h_t‖ grows 3.2e+03× from 1 to 11 steps from the end",
    fix="Reduce the recurrent gain (orthogonal init, smaller U), or clip gradients while training.",
)
def check_exploding(ctx: Context):
    g = _gradients(ctx)
    if g is None:
        ctx.skip("G702", "needs gradient analysis (--gradients)")
        return
    s = np.asarray(g.state_sensitivity, dtype=float)
    if len(s) < 3 or not np.isfinite(s[1]) or s[1] <= 0:
        return
    far = np.nan_to_num(s[2:], nan=0.0)
    lag = int(np.argmax(far)) + 2
    growth = float(far.max() / s[1])
    if growth <= ctx.th("G702", "growth"):
        return
    yield ctx.finding(
        "G702",
        f"‖∂h_T/∂h_t‖ grows {growth:.3g}× from 1 to {lag} steps from the end (of {g.T}): "
        "the recurrent Jacobians expand instead of contracting.",
        location=Location(g.layer, g.direction),
        evidence={"state_sensitivity_by_lag": s, "growth": growth, "lag": lag},
    )


@rule(
    "H602",
    "input-insensitive",
    "error",
    "relative change of the final encodings when each sequence gets another sequence's input, "
    "cross-checked by the first-order change from ‖∂h_T/∂x‖",
    {"change": 1e-3},
    what="""
Permutes the sample's inputs across the batch (each sequence gets another
one's input) and measures how far the final encodings move, relative to their
mean norm; every sequence starts from the same state, so these are the other
sequences' encodings, which the capture has. Fires when that is below
`change`. The gradients cross-check it: the first-order change
√(Σ_t‖∂h_T/∂x_t‖²) × input deviation / ‖h_T‖ must agree (below 10 × `change`);
if it does not, the finding is a warning (a flat region the gradients do not
see, or the reverse). Skipped when the permutation changes no input (every
input identical, as with `--probe zeros`): an encoding that does not move then
says nothing about the model.""",
    why="""
Case study (docs/case-study.md): the final encoding did not depend on the tweet (cross-tweet std 4e-8)
because the recurrent term (~25) drowned the input term (~0.02) and every gate
saturated. An encoder whose output does not depend on its input is a constant,
whatever its loss says.""",
    example="H602 error  layer 0 fwd: encodings move by 2.5e-06 of their norm when the inputs are swapped",
    fix="""
Bring the input term to the scale of the recurrent term (standardise the inputs,
zero-mean weights) and remove the saturation (W101, W102, I501).""",
)
def check_input_insensitive(ctx: Context):
    g = _gradients(ctx)
    if g is None:
        ctx.skip("H602", "needs gradient analysis (--gradients)")
        return
    thr = ctx.th("H602", "change")
    if not np.isfinite(g.perturbation):
        ctx.skip("H602", "needs at least 2 sequences")
        return
    if not g.inputs_differ:
        # identical inputs give identical encodings whatever the model: nothing to conclude
        ctx.skip("H602", "the gradient sample's sequences have identical inputs (e.g. --probe zeros): nothing to swap")
        return
    if g.perturbation >= thr:
        return
    first = g.first_order_change()
    agrees = first < 10 * thr
    yield ctx.finding(
        "H602",
        f"the final encodings move by {g.perturbation:.2g} of their norm when each sequence gets another "
        f"sequence's input (threshold {thr:g}); "
        + (
            f"the gradients agree: first-order change {first:.2g}, {horizon_text(g)}"
            if agrees
            else f"the gradients disagree (first-order change {first:.2g}): the insensitivity is not local"
        )
        + ".",
        severity=Severity.error if agrees else Severity.warning,
        location=Location(g.layer, g.direction, "h"),
        evidence={**strip_evidence(g), "perturbation_change": g.perturbation, "first_order_change": first},
    )
