"""W — rules on the weights alone (static: they need no inputs).

When a capture is available, "typical" magnitudes (mean |x|, mean |h|,
mean |c|) are taken from it; without one, the bound of the activation (1 for
tanh and σ) stands in, which is what a weight-only check can honestly say.
"""

from __future__ import annotations

from lstm_doctor.analyzers.registry import LINEAR_RANGE, Context, Deferred, rule
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
σ and tanh. In the Tweet2Vec case (CASE.md) the weights were drawn from
Normal(mean=0.1, std=0.05) instead of Normal(0, 0.1): with H=256 the recurrent
term is ≈ 256 × 0.1 × h ≈ 25 per gate and every gate saturates after one step.
Sweeping only mean(U) there: 0 → no saturated units, 0.005 → 1%, 0.01 → 87%,
0.1 → 100%. The drift is an error when it alone exceeds |z| = 4.6 (σ(4.6) = 0.99).""",
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
            severity = Severity.error if abs(drift) > ctx.th("W101", "error_drift") else Severity.warning
            means = [v["mean"] for v in per_gate.values()]
            stds = [v["std"] for v in per_gate.values()]
            share = min(v["sign_share"] for v in per_gate.values())
            sign = "positive" if np.mean(means) > 0 else "negative"
            yield ctx.finding(
                "W101",
                f"{names[matrix]} weights of gate{'s' if len(per_gate) > 1 else ''} "
                f"{', '.join(per_gate)} have mean {_span(means)} against std {_span(stds)} "
                f"(≥ {share:.0%} {sign}): every unit's pre-activation drifts by ≈ {fan_in} × "
                f"{np.mean(means):.3g} × {typical:.3g} = {fan_in * np.mean(means) * typical:.3g} ({basis}).",
                severity=severity,
                location=Location(k, d, matrix),
                evidence={
                    "matrix": matrix,
                    "gates": per_gate,
                    "fan_in": fan_in,
                    "typical_activation": typical,
                    "drift": drift,
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
any H; CASE.md's Normal(0.1, 0.05) gives ≈ 0.1·H = 25.6 for H = 256. The max
row sum Σ_k |U_kj| (shown as evidence) is the per-unit worst case.""",
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
        norms = [v["spectral_norm"] for v in per_gate.values()]
        rows = [v["max_row_sum"] for v in per_gate.values()]
        yield ctx.finding(
            "W102",
            f"U of gate{'s' if len(per_gate) > 1 else ''} {', '.join(per_gate)}: spectral norm "
            f"{_span(norms)} > {limit:g}: the recurrent term alone can drive the pre-activations "
            f"past |z| = {limit:g} (worst unit's row sum {max(rows):.3g}).",
            location=Location(k, d, "U"),
            evidence={"gates": per_gate, "spectral_norm": max(norms), "limit": limit},
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
relate b_f to the timescale τ = 1/(1 − f). τ < 1.5 means f < 1/3.""",
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
            yield ctx.finding(
                "W103",
                f"median forget bias {np.median(b_f):.3g} gives a resting forget gate "
                f"f = {np.median(f):.3g} and a memory timescale τ = {median_tau:.3g} steps: "
                "the cell is wiped at every step.",
                location=loc,
                evidence={
                    "median_bias": float(np.median(b_f)),
                    "median_forget": float(np.median(f)),
                    "median_timescale": median_tau,
                    "units_below": int((tau < ctx.th("W103", "min_timescale")).sum()),
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
cannot break (CASE.md's peepholes had mean 0.1 with c growing to ~256).""",
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
