"""W — rules on the weights alone (static: they need no inputs).

When a capture is available, "typical" magnitudes (mean |x|, mean |h|,
mean |c|) are taken from it; without one, the bound of the activation (1 for
tanh and σ) stands in, which is what a weight-only check can honestly say.
"""

from __future__ import annotations

from lstm_doctor.analyzers.cell import cell_keeps_growing
from lstm_doctor.analyzers.hidden import encodings_collapse, encodings_low_rank
from lstm_doctor.analyzers.inputs import input_negligible
from lstm_doctor.analyzers.registry import LINEAR_RANGE, Context, Deferred, rule
from lstm_doctor.analyzers.saturation import gate_saturation
from lstm_doctor.findings import Location, Severity

np = Deferred("numpy")  # imported by the first check that runs
# lstm_doctor.model.GATES and PEEPHOLE_GATES, without importing NumPy
GATES = ("i", "f", "g", "o")
PEEPHOLE_GATES = ("i", "f", "o")


def _typical_input(ctx: Context, layer: int) -> tuple[float, str]:
    cap = ctx.capture
    if cap is None:
        return 1.0, "assumed |x| ≈ 1 (no inputs given)"
    if layer == 0:
        stats = cap.inputs
        value = float(np.abs(stats.mean()).mean() + stats.std().mean())
        return value, "mean |x| of the inputs"
    below = [d for (k, _), d in cap.directions.items() if k == layer - 1]
    value = float(np.mean([np.abs(d.mean_h_t()).mean() for d in below]))
    return value, f"mean |h| of layer {layer - 1}"


def _typical_hidden(ctx: Context, layer: int, direction: str) -> tuple[float, str]:
    cap = ctx.capture
    if cap is None:
        return 1.0, "bound |h| ≤ 1"
    stats = cap.directions[(layer, direction)]
    return float(np.abs(stats.mean_h_t()).mean()), "observed mean |h|"


# -- the verdict: weights are a risk, the capture says whether it happens ----------


def evidence_mode(ctx: Context) -> str:
    """"inputs" (a capture of the user's inputs), "probe" (synthetic probe inputs) or "static"."""
    cap = ctx.capture
    if cap is None:
        return "static"
    return "probe" if cap.source.probe else "inputs"


def gate_verdicts(ctx: Context, layer: int, direction: str, gates) -> dict[str, dict]:
    """Per gate, how the capture saw it saturate (``saturation.gate_saturation``)."""
    if ctx.capture is None or (layer, direction) not in ctx.capture.directions:
        return {}
    st = ctx.capture.directions[(layer, direction)]
    out = {}
    for g in gates:
        v = gate_saturation(ctx, st, g)
        if v is not None:
            out[g] = {**v, "where": (layer, direction)}
    return out


def behaviour_broken(ctx: Context, layer: int, direction: str) -> list[str]:
    """The behavioural failures the capture shows for this direction (codes, in words):
    the encodings collapse (H601) or are low-rank (H604), the input term is
    negligible (I501), or the cell keeps growing (C401's growth test)."""
    out = []
    if encodings_collapse(ctx):
        out.append("the final encodings collapse (H601)")
    elif encodings_low_rank(ctx):
        out.append("the final encodings are low-rank (H604)")
    if input_negligible(ctx, layer, direction):
        out.append("the input term is negligible (I501)")
    if cell_keeps_growing(ctx, layer, direction):
        out.append("the cell keeps growing (C401)")
    return out


# With a behavioural failure, a gate counts as confirmed once this share of
# S301's `share` of its values saturate. Calibration: the corpus's broken twin
# charlm_saturated (Normal(0.1, 0.05) weights) saturates 48–51% of i, f, o with
# rank-1 encodings and a growing cell; its working original charlm saturates
# 41–86% with no behavioural failure.
BROKEN_SHARE = 0.5


def confirmed_gates(ctx: Context, verdicts: dict[str, dict]) -> list[str]:
    """Gates whose saturation the capture confirms as harm: those S301 (S303 for g)
    escalates (saturated identically for every input, not an open gate on a
    hidden state that follows the input), or, when the direction's behaviour is
    broken (``behaviour_broken``), those with at least BROKEN_SHARE × S301's
    `share` of their values saturated."""
    if not verdicts:
        return []
    share = ctx.th("S301", "share")
    where = next(iter(verdicts.values()))["where"]
    if behaviour_broken(ctx, *where):
        return [g for g, v in verdicts.items() if v["share"] > BROKEN_SHARE * share]
    return [g for g, v in verdicts.items() if v["share"] > share and v["harmful"]]


def _how_confirmed(ctx: Context, verdicts: dict[str, dict], confirmed: list[str]) -> str:
    shares = ", ".join(f"{g} {verdicts[g]['share']:.0%}" for g in confirmed)
    broken = behaviour_broken(ctx, *verdicts[confirmed[0]]["where"])
    if all(verdicts[g]["harmful"] for g in confirmed) and not broken:
        return f"saturate identically for every input ({shares}; S301)."
    return f"saturate ({shares}) and " + " and ".join(broken) + "."


def describe_verdicts(verdicts: dict[str, dict], gates) -> str:
    """"gate i 4% saturated, f 31% (84% of it from units that switch with the input)"."""
    parts = []
    for g in gates:
        v = verdicts.get(g)
        if v is None:
            continue
        how = (
            "identically for every input"
            if v["independent"] and v["share"] > 0
            else f"{v['dependent_share']:.0%} of it switching with the input"
            if v["share"] > 0
            else "none"
        )
        parts.append(f"{g} {v['share']:.0%} ({how})")
    return "saturated share " + ", ".join(parts) if parts else "no valid values"


def verdict_evidence(verdicts: dict[str, dict]) -> dict:
    return {
        g: {
            "saturated_share": v["share"],
            "input_dependent_share": v["dependent_share"],
            "input_independent": bool(v["independent"]),
        }
        for g, v in verdicts.items()
    }


def probe_name(ctx: Context) -> str:
    src = ctx.capture.source
    return f"the synthetic '{src.probe}' probe ({src.n_sequences} sequences × {src.T} steps)"


@rule(
    "W101",
    "weight-mean-offset",
    "error",
    "per gate block of W, U and the peepholes: mean, std and sign share; "
    "drift = fan_in × mean × typical activation",
    {"mean_std_ratio": 0.5, "sign_share": 0.8, "min_elements": 64, "error_drift": LINEAR_RANGE},
    needs_inputs=False,
    what="""
Flags a gate's input, recurrent or peephole weights whose mean is far from zero
relative to their spread (|mean| > mean_std_ratio·std, or more than sign_share of
the entries of one sign). Every unit then receives the same push: the
pre-activation drifts by about fan_in × mean × typical activation.""",
    why="""
Zero-mean initialisation is what keeps pre-activations near the linear range of
σ and tanh. In the Tweet2Vec case (docs/case-study.md) the weights were drawn from
Normal(mean=0.1, std=0.05) instead of Normal(0, 0.1): with H=256 the recurrent
term is ≈ 256 × 0.1 × h ≈ 25 per gate and every gate saturates after one step.
Sweeping only mean(U) there: 0 → no saturated units, 0.005 → 1%, 0.01 → 87%,
0.1 → 100%. The drift is an error when it alone exceeds |z| = 4.6 (σ(4.6) = 0.99).

Weights are the risk, the capture is the verdict. With the user's inputs the
rule follows the scan: an error (drift > 4.6) or a warning only when the scan
shows the offending gates saturated identically for every input (S301's
definitions); where the gates are unsaturated or switch with the input it is
info. Without inputs (a synthetic probe, or no capture) it is a warning worded
as a risk, with the probe's saturation as evidence.
Calibration (corpus/, issue 14): on the six working models the largest
|mean|/std of any gate block of W or U is 0.42 (under `mean_std_ratio` 0.5)
and W101 does not fire; the broken twin charlm_saturated (Normal(0.1, 0.05))
has |mean|/std up to 3.4 and keeps W101 as a warning, confirmed by rank-1
encodings (H604) and a growing cell (C401); the case study's encoder (≈ 2.0) keeps it
as an error, confirmed by S301 and H601.""",
    example="""
W101 error  layer 0 fwd, U gate f: mean 0.1001 vs std 0.0499 (100% positive);
drift ≈ 64 × 0.100 × 1.00 = 6.4 > 4.6""",
    fix="""
Re-initialise with a zero-mean distribution (e.g. uniform ±1/√H, Glorot, or
orthogonal for U) and retrain; `what-if` fix `center-weights` shows the effect.""",
)
def check_weight_mean(ctx: Context):
    """One finding per (layer, direction, matrix), listing the offending gates."""
    names = {"W": "W (input)", "U": "U (recurrent)", "peephole": "peephole"}
    for k, d, layer, params in ctx.model.units():
        for matrix in ("W", "U", "peephole"):
            arr = getattr(params, matrix)
            if arr is None:
                continue
            if matrix == "peephole":
                blocks = {g: arr[j] for j, g in enumerate(PEEPHOLE_GATES)}
                typical, basis = (1.0, "bound |c| ≈ 1")
                if ctx.capture is not None:
                    typical = float(ctx.capture.directions[(k, d)].mean_abs_c_t().mean())
                    basis = "observed mean |c|"
                fan_in = 1
            else:
                blocks = {g: params.gate_block(arr, g) for g in GATES}
                fan_in = arr.shape[0]
                typical, basis = (
                    _typical_input(ctx, k) if matrix == "W" else _typical_hidden(ctx, k, d)
                )
            per_gate = {}
            for gate, block in blocks.items():
                stats = _offset(ctx, np.asarray(block, dtype=np.float64))
                if stats is not None:
                    per_gate[gate] = {**stats, "drift": fan_in * stats["mean"] * typical}
            if not per_gate:
                continue
            drift = max((v["drift"] for v in per_gate.values()), key=abs)
            large = abs(drift) > ctx.th("W101", "error_drift")
            mode = evidence_mode(ctx)
            verdicts = gate_verdicts(ctx, k, d, list(per_gate))
            confirmed = confirmed_gates(ctx, verdicts)
            if mode == "inputs":
                if confirmed:
                    severity = Severity.error if large else Severity.warning
                    verdict = (
                        f" The scan confirms it: gate{'s' if len(confirmed) > 1 else ''} {', '.join(confirmed)} "
                        + _how_confirmed(ctx, verdicts, confirmed)
                    )
                else:
                    severity = Severity.info
                    verdict = (
                        " A risk the scan does not confirm on these inputs: "
                        + describe_verdicts(verdicts, per_gate)
                        + "."
                    )
            else:
                severity = Severity.warning
                verdict = (
                    " A risk, judged from the weights: no inputs were given"
                    + (f"; with {probe_name(ctx)}, {describe_verdicts(verdicts, per_gate)}." if mode == "probe" else ".")
                )
            means = [v["mean"] for v in per_gate.values()]
            stds = [v["std"] for v in per_gate.values()]
            share = min(v["sign_share"] for v in per_gate.values())
            sign = "positive" if np.mean(means) > 0 else "negative"
            yield ctx.finding(
                "W101",
                f"{names[matrix]} weights of gate{'s' if len(per_gate) > 1 else ''} "
                f"{', '.join(per_gate)} have mean {_span(means)} against std {_span(stds)} "
                f"(≥ {share:.0%} {sign}): every unit's pre-activation drifts by ≈ {fan_in} × "
                f"{np.mean(means):.3g} × {typical:.3g} = {fan_in * np.mean(means) * typical:.3g} ({basis})."
                + verdict,
                severity=severity,
                location=Location(k, d, matrix),
                evidence={
                    "matrix": matrix,
                    "gates": per_gate,
                    "fan_in": fan_in,
                    "typical_activation": typical,
                    "drift": drift,
                    "evidence_from": mode,
                    "confirmed_gates": confirmed,
                    "scan": verdict_evidence(verdicts),
                },
            )


def _offset(ctx: Context, block: np.ndarray) -> dict | None:
    """Mean, std and sign share of a gate block when its mean is far from zero."""
    if block.size < ctx.th("W101", "min_elements") or not np.isfinite(block).all():
        return None
    mean, std = float(block.mean()), float(block.std())
    positive, negative = float((block > 0).mean()), float((block < 0).mean())
    offset = abs(mean) > ctx.th("W101", "mean_std_ratio") * std
    one_sign = max(positive, negative) > ctx.th("W101", "sign_share")
    if mean == 0 or not (offset or one_sign):
        return None
    return {"mean": mean, "std": std, "sign_share": max(positive, negative)}


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.3g}" if f"{lo:.3g}" == f"{hi:.3g}" else f"{lo:.3g}–{hi:.3g}"


@rule(
    "W102",
    "recurrent-gain",
    "error",
    "spectral norm of each gate's recurrent block U_g (H×H): the largest RMS over "
    "units of h·U_g for |h| ≤ 1",
    {"limit": LINEAR_RANGE},
    needs_inputs=False,
    what="""
Bounds the recurrent term h·U of each gate with |h| ≤ 1: for any hidden state the
RMS over units of h·U_g is at most σ_max(U_g), the spectral norm of the gate's
block. When that bound exceeds |z| = 4.6, the recurrent term alone can pin the
gate at 0 or 1.""",
    why="""
σ(4.6) = 0.99: past it, a gate no longer responds to its input and its gradient
σ' is below 0.01. A standard init (uniform ±1/√H) gives σ_max ≈ 2/√3 ≈ 1.15 for
any H; the case study's Normal(0.1, 0.05) gives ≈ 0.1·H = 25.6 for H = 256. The max
row sum Σ_k |U_kj| (shown as evidence) is the per-unit worst case.

The norm is a bound, not a measurement: trained LSTMs routinely have
‖U_g‖ of 5 to 50 and use the gain to switch gates with the input, and shrinking
U to norm 1 destroys them (issue 14: a character LM went from 2.38 to 14.5
nats/char). So the bound is the risk and the scan is the verdict: with the
user's inputs, W102 is an error only for the gates the scan shows saturated
identically for every input (S301's definitions: over `share` of the values,
mostly from units that do not switch); where the gates stay unsaturated or
switch with the input it is info. Without inputs it is a warning worded as a
risk, with the probe's saturation as evidence. When the direction's behaviour
is broken (collapsed or low-rank encodings, a negligible input term, a growing
cell), a gate with at least half of S301's `share` saturated confirms it.
Calibration (corpus/, issue 14): the six working models have ‖U_g‖ from 2.0 to
11.7 (charlm 3.6–7.9, tagger 4.1–7.7, classifier up to 11.7) with 1% to 85% of
their i, f, o values saturated, and no behavioural failure: W102 is info on
every one. The twin charlm_saturated (‖U_g‖ 9.6–9.9, 48–51% saturated,
encodings of effective rank 1.2, cell growing 3.1–3.3× with no plateau) and
the case study's encoder (6.4, 98–99% saturated identically for every input) keep it
as an error.""",
    example="""
W102 error  layer 0 fwd, U gate i: spectral norm 6.43 > 4.6 (max row sum 6.5)""",
    fix="""
Rescale or re-initialise U (orthogonal or uniform ±1/√H) so that its spectral
norm per gate is ≲ 1; `what-if` fix `rescale-recurrent` shows the effect.""",
)
def check_recurrent_gain(ctx: Context):
    limit = ctx.th("W102", "limit")
    for k, d, layer, params in ctx.model.units():
        U = np.asarray(params.U, dtype=np.float64)
        if not np.isfinite(U).all():
            continue
        if params.projection is not None:
            # LSTMP: the bounded cell output m_{t-1} reaches z_t through h = m·R, so the gain is R·U (H, 4H)
            U = np.asarray(params.projection, np.float64) @ U
        out = layer.activations.get("cell_output")
        bound = max(abs(out.low), abs(out.high)) if out.bounded else 1.0
        per_gate = {}
        for gate in GATES:
            block = params.gate_block(U, gate)
            norm = float(np.linalg.norm(block, 2)) * bound
            if norm > limit:
                per_gate[gate] = {
                    "spectral_norm": norm,
                    "max_row_sum": float(np.abs(block).sum(axis=0).max()) * bound,
                }
        if not per_gate:
            continue
        mode = evidence_mode(ctx)
        verdicts = gate_verdicts(ctx, k, d, list(per_gate))
        confirmed = confirmed_gates(ctx, verdicts)
        if mode == "inputs" and confirmed:
            severity = Severity.error
            verdict = (
                f" The scan confirms it: gate{'s' if len(confirmed) > 1 else ''} {', '.join(confirmed)} "
                + _how_confirmed(ctx, verdicts, confirmed)
            )
            shown = {g: per_gate[g] for g in confirmed}
        elif mode == "inputs":
            severity = Severity.info
            verdict = (
                " A bound, not a measurement, and the scan does not confirm it: "
                + describe_verdicts(verdicts, per_gate)
                + ". Keep U: a trained model uses this gain."
            )
            shown = per_gate
        else:
            severity = Severity.warning
            verdict = (
                " A risk, judged from the weights: no inputs were given"
                + (f"; with {probe_name(ctx)}, {describe_verdicts(verdicts, per_gate)}." if mode == "probe" else ".")
                + " Run with --inputs to see whether it happens."
            )
            shown = per_gate
        norms = [v["spectral_norm"] for v in shown.values()]
        rows = [v["max_row_sum"] for v in shown.values()]
        yield ctx.finding(
            "W102",
            f"U of gate{'s' if len(shown) > 1 else ''} {', '.join(shown)}: spectral norm "
            f"{_span(norms)} > {limit:g}: the recurrent term alone can drive the pre-activations "
            f"past |z| = {limit:g} (worst unit's row sum {max(rows):.3g})." + verdict,
            severity=severity,
            location=Location(k, d, "U"),
            evidence={
                "gates": per_gate,
                "spectral_norm": max(v["spectral_norm"] for v in per_gate.values()),
                "limit": limit,
                "evidence_from": mode,
                "confirmed_gates": confirmed,
                "scan": verdict_evidence(verdicts),
            },
            fix=None if severity != Severity.info else (
                "None needed while the gates switch with the input; if they do saturate on other "
                "data, re-initialise and retrain rather than rescale a trained U."
            ),
        )


@rule(
    "W103",
    "forget-bias",
    "warning",
    "resting forget gate f = σ(b_f) per unit and its memory timescale τ = 1/(1 − f)",
    {"min_timescale": 1.5},
    needs_inputs=False,
    what="""
Computes the forget gate's resting value f = σ(b_f) (with the configured gate
activation) and the memory timescale τ = 1/(1 − f). Warns when the median τ is
under min_timescale steps: the cell is wiped at every step. Reports info when
every b_f is exactly 0, where +1 is the standard recommendation.""",
    why="""
Gers et al. (2000) introduced the forget gate; Jozefowicz et al. (2015) showed
that a forget bias of 1 helps almost every task; Tallec & Ollivier (2018)
relate b_f to the timescale τ = 1/(1 − f). τ < 1.5 means f < 1/3.

The resting value is a risk; the forget gate the scan measures is the verdict.
With the user's inputs the warning stands only when the observed mean forget
gate also gives τ < min_timescale (trained models often have a negative b_f
that the input and the recurrent term lift); otherwise it is info. Without
inputs it is a warning worded as a risk, with the probe's mean f as evidence.
Calibration (corpus/, issue 14): the working models' observed mean forget
gate is 0.48–0.89 (τ 1.9–9 steps) per direction and W103 never fires on them;
the case study's zero forget bias stays the info it was.""",
    example="""
W103 warning  layer 0 fwd, gate f: median forget bias −8.0 gives f = 0.0003 and
τ = 1.0 steps: memory is wiped every step""",
    fix="""
Initialise the forget bias at +1 (Keras `unit_forget_bias=True`; in PyTorch set
bias_ih[H:2H] = 1) or use chrono initialisation for long dependencies.""",
)
def check_forget_bias(ctx: Context):
    for k, d, layer, params in ctx.model.units():
        b_f = np.asarray(params.gate_block(params.b, "f"), dtype=np.float64)
        if not np.isfinite(b_f).all():
            continue
        f = layer.activations.get("gate").fn(b_f)
        tau = 1.0 / np.maximum(1.0 - f, 1e-12)
        median_tau = float(np.median(tau))
        loc = Location(k, d, "f")
        if median_tau < ctx.th("W103", "min_timescale"):
            mode = evidence_mode(ctx)
            observed = _observed_forget(ctx, k, d)
            severity = Severity.warning
            if observed is None:
                verdict = " A risk, judged from the bias: no inputs were given."
            else:
                tau_obs = 1.0 / max(1.0 - observed, 1e-12)
                wiped = tau_obs < ctx.th("W103", "min_timescale")
                if mode == "inputs":
                    severity = Severity.warning if wiped else Severity.info
                    verdict = (
                        f" The scan confirms it: the forget gate averages {observed:.3g} (τ = {tau_obs:.3g})."
                        if wiped
                        else f" The scan does not confirm it: on these inputs the forget gate averages "
                        f"{observed:.3g} (τ = {tau_obs:.3g} steps)."
                    )
                else:
                    verdict = (
                        f" A risk, judged from the bias: no inputs were given; with {probe_name(ctx)} the "
                        f"forget gate averages {observed:.3g} (τ = {tau_obs:.3g})."
                    )
            yield ctx.finding(
                "W103",
                f"median forget bias {np.median(b_f):.3g} gives a resting forget gate "
                f"f = {np.median(f):.3g} and a memory timescale τ = {median_tau:.3g} steps: "
                "the cell is wiped at every step." + verdict,
                severity=severity,
                location=loc,
                evidence={
                    "median_bias": float(np.median(b_f)),
                    "median_forget": float(np.median(f)),
                    "median_timescale": median_tau,
                    "units_below": int((tau < ctx.th("W103", "min_timescale")).sum()),
                    "evidence_from": mode,
                    "observed_mean_forget": observed,
                },
            )
        elif np.all(b_f == 0):
            yield ctx.finding(
                "W103",
                "every forget bias is exactly 0 (f = 0.5 at rest, τ = 2 steps); "
                "+1 is the standard recommendation.",
                severity=Severity.info,
                location=loc,
                evidence={"median_bias": 0.0, "median_timescale": median_tau},
                fix="Initialise the forget bias at +1 (Jozefowicz et al. 2015).",
            )


def _observed_forget(ctx: Context, layer: int, direction: str) -> float | None:
    """Mean forget gate value over the capture's valid values (None without a capture)."""
    cap = ctx.capture
    if cap is None or (layer, direction) not in cap.directions:
        return None
    st = cap.directions[(layer, direction)]
    n = st.n_values * st.H
    if n == 0:
        return None
    return float(st.gates["f"].sum_tu.sum() / n)


@rule(
    "W104",
    "peephole-magnitude",
    "warning",
    "share of the peephole term p·c in the energy (mean square) of the gate "
    "pre-activations; without inputs, |p| at |c| = 1",
    {"share": 0.5, "static_limit": LINEAR_RANGE},
    needs_inputs=False,
    what="""
Flags peephole weights large enough that p·c dominates the gate: with inputs,
when the peephole term carries more than `share` of the mean square of the
gate's pre-activation; from the weights alone, when the median |p| alone would
push |z| past 4.6 at |c| = 1.""",
    why="""
Peepholes (Gers & Schmidhuber 2000) let gates see the cell; when they dominate,
a growing cell drives its own gates into saturation, a feedback loop the inputs
cannot break (the case study's peepholes had mean 0.1 with c growing to ~256).""",
    example="""
W104 warning  layer 0 fwd, gate f: the peephole term carries 62% of the
pre-activation energy (mean |c| 120)""",
    fix="Initialise peepholes near 0 (Lasagne: Normal(0, 0.1)) or disable them.",
)
def check_peepholes(ctx: Context):
    for k, d, layer, params in ctx.model.units():
        p = params.peephole
        if p is None or not np.isfinite(p).all():
            continue
        if ctx.capture is not None:
            terms = ctx.capture.directions[(k, d)].terms
            shares = {}
            for gate in PEEPHOLE_GATES:
                j = GATES.index(gate)
                b2 = float(np.mean(np.asarray(params.gate_block(params.b, gate), np.float64) ** 2))
                energy = sum(terms.mean_square(t)[j] for t in ("input", "recurrent", "peephole")) + b2
                share = float(terms.mean_square("peephole")[j] / energy) if energy > 0 else 0.0
                if share > ctx.th("W104", "share"):
                    shares[gate] = share
            if shares:
                yield ctx.finding(
                    "W104",
                    "the peephole term p·c carries "
                    + ", ".join(f"{v:.0%} of gate {g}'s" for g, v in shares.items())
                    + " pre-activation energy (mean square): the cell drives its own gates.",
                    location=Location(k, d, "peephole"),
                    evidence={"peephole_share": shares},
                )
        else:
            for j, gate in enumerate(PEEPHOLE_GATES):
                median = float(np.median(np.abs(p[j])))
                if median > ctx.th("W104", "static_limit"):
                    yield ctx.finding(
                        "W104",
                        f"median |p_{gate}| = {median:.3g}: at |c| = 1 the peephole alone "
                        f"pushes |z| past {ctx.th('W104', 'static_limit'):g}.",
                        location=Location(k, d, gate),
                        evidence={"median_abs_peephole": median},
                    )


@rule(
    "W105",
    "nonfinite-weights",
    "error",
    "count of NaN and ±Inf entries in every parameter array",
    {},
    needs_inputs=False,
    what="Flags any NaN or Inf in W, U, b, peepholes or the initial state.",
    why="""
One non-finite weight makes every value it touches non-finite after one step;
training diverged or the file is corrupt. Nothing downstream is meaningful.""",
    example="W105 error  layer 0 fwd: U has 1 NaN (first at [3, 17])",
    fix="Restore the weights from an earlier checkpoint; lower the learning rate or clip gradients.",
)
def check_nonfinite_weights(ctx: Context):
    for k, d, layer, params in ctx.model.units():
        for name, arr in params.arrays().items():
            bad = ~np.isfinite(arr)
            if bad.any():
                first = [int(i) for i in np.argwhere(bad)[0]]
                yield ctx.finding(
                    "W105",
                    f"{name} has {int(bad.sum())} NaN/Inf values (first at {first}).",
                    location=Location(k, d, name),
                    evidence={"array": name, "count": int(bad.sum()), "first_index": first},
                )


@rule(
    "W106",
    "gate-order-suspect",
    "warning",
    "mean bias per gate block: a block sitting near +1 (a forget-bias signature) "
    "in a slot not declared as forget",
    {"margin": 0.5},
    needs_inputs=False,
    what="""
Checks that the stacked blocks agree with the declared gate order: the block
with a clearly larger mean bias (Keras' `unit_forget_bias` stores +1, and
trained forget biases stay positive) should be the forget slot. Warns when such
a block sits in another slot.""",
    why="""
Frameworks stack gates differently (PyTorch i,f,g,o; Keras i,f,c,o; TF1 i,j,f,o;
ONNX i,o,f,c). Reading one order as another silently swaps the forget gate with
another gate: the LSTM still runs but computes a different function.""",
    example="""
W106 warning  layer 0 fwd: the block in slot g has mean bias 1.00 (others ≤ 0.01):
it looks like the forget gate; is the stored order i,f,c,o read as i,c,f,o?""",
    fix="Declare the gate order the file really uses (`gate_order` in lstm.toml, or --model-format).",
)
def check_gate_order(ctx: Context):
    margin = ctx.th("W106", "margin")
    for k, d, layer, params in ctx.model.units():
        b = np.asarray(params.b, dtype=np.float64)
        if not np.isfinite(b).all():
            continue
        means = {g: float(params.gate_block(b, g).mean()) for g in GATES}
        top = max(means, key=means.get)
        others = [m for g, m in means.items() if g != top]
        if top != "f" and means[top] >= margin and means[top] - max(others) >= margin:
            yield ctx.finding(
                "W106",
                f"the bias block in slot {top} has mean {means[top]:.3g} (the others ≤ "
                f"{max(others):.3g}): it looks like a forget-gate bias, but slot {top} is "
                f"declared as {'the candidate' if top == 'g' else 'gate ' + top} "
                f"(stored order {ctx.model.stored_gate_order}).",
                location=Location(k, d, top),
                evidence={"block_means": means, "stored_gate_order": ctx.model.stored_gate_order},
            )
