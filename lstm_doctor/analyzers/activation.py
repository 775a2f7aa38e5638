"""A — activation configuration, from the declared config and from behaviour."""

from __future__ import annotations

from lstm_doctor.analyzers.registry import Context, Deferred, rule
from lstm_doctor.findings import Location

np = Deferred("numpy")  # imported by the first check that runs


FIT_BLOCK = 1 << 16  # values per block in hidden_fit (three float64 blocks of 0.5 MB stay in cache)


def hidden_fit(h: np.ndarray, o: np.ndarray, c: np.ndarray) -> dict[str, float]:
    """How well h/o follows tanh(c) versus σ(c), on arrays of equal shape.

    Returns the mean |h − o·act(c)| for both, h's minimum and the shares of
    negative and positive c. A hidden sequence that some code produced (the
    scan's own, or one a user observed) is compared with both hypotheses.
    Non-finite entries (in any of the three) are left out. Blocks along the
    first axis: float64 copies of whole samples (20 MB each at 64 sequences ×
    150 steps × 256 units) cost more in page faults than the arithmetic.
    """
    from lstm_doctor.model.activations import get_activation

    sigmoid = get_activation("sigmoid").fn
    h, o, c = (np.asarray(a) for a in (h, o, c))
    if h.ndim == 0:
        h, o, c = (a.reshape(1) for a in (h, o, c))
    step = max(1, FIT_BLOCK // max(1, int(np.prod(h.shape[1:]))))
    n = negative = positive = 0
    residual_tanh = residual_sigmoid = abs_h = 0.0
    min_h = np.inf

    def residual(act_c: np.ndarray, h: np.ndarray, o: np.ndarray) -> float:
        # Σ |h − o·act(c)|, in place in act(c)'s array
        act_c *= o
        np.subtract(h, act_c, out=act_c)
        return float(np.abs(act_c, out=act_c).sum())

    for s in range(0, len(h), step):
        hb, ob, cb = (np.asarray(a[s:s + step], dtype=np.float64) for a in (h, o, c))
        ok = np.isfinite(hb) & np.isfinite(ob) & np.isfinite(cb)
        if not ok.all():
            hb, ob, cb = hb[ok], ob[ok], cb[ok]
        if hb.size == 0:
            continue
        n += hb.size
        residual_tanh += residual(np.tanh(cb), hb, ob)
        residual_sigmoid += residual(sigmoid(cb), hb, ob)
        min_h = min(min_h, float(hb.min()))
        negative += int(np.count_nonzero(cb < 0))
        positive += int(np.count_nonzero(cb > 0))
        abs_h += float(np.abs(hb).sum())
    if n == 0:
        return {}
    return {
        "residual_tanh": residual_tanh / n,
        "residual_sigmoid": residual_sigmoid / n,
        "min_h": min_h,
        "share_c_negative": negative / n,
        "share_c_positive": positive / n,
        "mean_abs_h": abs_h / n,
    }


@rule(
    "A201",
    "hidden-activation",
    "error",
    "declared cell-output activation; behaviour: min h, sign of c, and the fit of "
    "h/o to tanh(c) versus σ(c) over the sample",
    {"sign_share": 0.01, "fit_ratio": 0.5},
    needs_inputs=False,
    what="""
Flags a cell output h = o·act(c) whose act is not a zero-centred, bounded
squashing function like tanh: sigmoid (h never negative, a 0.25 offset), relu
or softplus (one-signed, unbounded), identity (unbounded). It checks the
declared configuration and, independently, the behaviour of the hidden
sequence: h ≥ 0 everywhere while c takes both signs (each sign in at least
`sign_share` of values), or h/o fitting σ(c) with less than `fit_ratio` of the
residual of tanh(c). The behavioural check catches code that differs from its
declared configuration (e.g. an observed trace, `--observed`).""",
    why="""
Case study (docs/case-study.md): the Tweet2Vec encoder computed h = o·σ(c). With saturated gates h_t ≈
σ(t+1): .73, .88, .95, .98 — exactly the numbers the user printed. Even with
everything else fixed, σ(c) keeps h non-negative and offset by ≈ 0.25, so the
encodings cannot use half their space. Nothing in the weights reveals this.""",
    example="""
A201 error  layer 0 fwd: h_t = o_t · σ(c_t) (declared cell_output = sigmoid);
h is never negative (min 0.12) and h/o fits σ(c) (residual 0) not tanh(c) (0.21)""",
    fix="Use tanh for the cell output: h_t = o_t · tanh(c_t) (`what-if` fix `tanh-cell-output`).",
)
def check_hidden_activation(ctx: Context):
    for k, layer in enumerate(ctx.model.layers):
        act = layer.activations.get("cell_output")
        declared_bad = not (act.bounded and act.zero_centred)
        for d, _params in layer.directions():
            fit = _behaviour(ctx, k, d)
            behaviour = _behaviour_says_not_tanh(ctx, fit)
            if not (declared_bad or behaviour):
                continue
            parts = []
            if declared_bad:
                parts.append(
                    f"the declared cell output is h_t = o_t · {act.equation}(c_t) "
                    f"({act.name}: range [{act.low:g}, {act.high:g}], "
                    f"{'not zero-centred' if not act.zero_centred else 'unbounded'})"
                )
            if behaviour:
                parts.append(behaviour)
            yield ctx.finding(
                "A201",
                "; ".join(parts) + ".",
                location=Location(k, d, "h"),
                evidence={"declared": act.name, "behaviour": fit or None},
            )


def _behaviour(ctx: Context, k: int, d: str) -> dict[str, float]:
    cap = ctx.capture
    if cap is None:
        return {}
    sample = cap.sample.get((k, d), {})
    if not all(name in sample for name in ("h", "o", "c")):
        return {}
    # with a projection (LSTMP) o·act(c) is m, the cell output before it, not h
    return hidden_fit(sample.get("m", sample["h"]), sample["o"], sample["c"])


def _behaviour_says_not_tanh(ctx: Context, fit: dict[str, float]) -> str:
    if not fit:
        return ""
    share = ctx.th("A201", "sign_share")
    said = []
    if fit["min_h"] >= 0 and fit["share_c_negative"] >= share and fit["share_c_positive"] >= share:
        said.append(
            f"h is never negative (min {fit['min_h']:.3g}) while c takes both signs "
            f"({fit['share_c_negative']:.0%} negative)"
        )
    if fit["residual_sigmoid"] < ctx.th("A201", "fit_ratio") * fit["residual_tanh"]:
        said.append(
            f"h/o follows σ(c) (mean residual {fit['residual_sigmoid']:.2g}) rather than "
            f"tanh(c) ({fit['residual_tanh']:.2g})"
        )
    return "; ".join(said)


@rule(
    "A202",
    "gate-activation-range",
    "error",
    "declared gate activation and its range",
    {},
    needs_inputs=False,
    what="Flags gates i, f, o whose activation's range is not within [0, 1] (tanh, relu, identity).",
    why="""
A gate multiplies: values outside [0, 1] flip signs (tanh) or amplify without
bound (relu, identity), so the cell can oscillate or explode instead of being
remembered or forgotten.""",
    example="A202 error  layer 0: gate activation tanh has range [-1, 1], not within [0, 1]",
    fix="Use sigmoid (or hard sigmoid) for the gates (`what-if` fix `sigmoid-gates`).",
)
def check_gate_activation(ctx: Context):
    for k, layer in enumerate(ctx.model.layers):
        act = layer.activations.get("gate")
        if not act.gate_like:
            yield ctx.finding(
                "A202",
                f"the gate activation {act.name} has range [{act.low:g}, {act.high:g}], "
                "not within [0, 1]: i, f and o cannot act as gates.",
                location=Location(k, None, "gates"),
                evidence={"declared": act.name, "range": [act.low, act.high]},
            )


@rule(
    "A203",
    "candidate-activation",
    "error",
    "declared candidate activation and the symmetry of its range",
    {},
    needs_inputs=False,
    what="Flags a candidate g whose activation is not symmetric around 0 (sigmoid, relu, softplus).",
    why="""
c_t = f·c_{t-1} + i·g: with g ≥ 0 the cell can only grow, never be pushed back
down by the input, so it integrates until it saturates everything it feeds.""",
    example="A203 error  layer 0: candidate activation sigmoid has range [0, 1]: c can only grow",
    fix="Use tanh for the candidate (`what-if` fix `tanh-candidate`).",
)
def check_candidate_activation(ctx: Context):
    for k, layer in enumerate(ctx.model.layers):
        act = layer.activations.get("candidate")
        if not act.symmetric:
            yield ctx.finding(
                "A203",
                f"the candidate activation {act.name} has range [{act.low:g}, {act.high:g}], "
                "not symmetric around 0: the cell can only grow.",
                location=Location(k, None, "g"),
                evidence={"declared": act.name, "range": [act.low, act.high]},
            )


# Settings a file can leave open that change the forward pass: (assumption item, the flag that states it).
# A Keras importer states each activation apart (gate activation: recurrent_activation; activation:
# the candidate's and the cell output's); "activations" is the item of one stated together.
ASSUMABLE = (("activations", "--gate-activation"), ("gate activation", "--gate-activation"),
             ("activation", "--activation"), ("direction", "--go-backwards"))


@rule(
    "A205",
    "configuration-assumed",
    "info",
    "the settings the model file leaves open (activations, direction) that the diagnosis assumed",
    {},
    needs_inputs=False,
    what="""
The model file does not state a setting that changes the forward pass, and
lstm_doctor assumed it: e.g. a Keras 2 weights-only HDF5 file (no architecture)
stores neither `recurrent_activation` nor `go_backwards`, so the defaults of the
Keras version that wrote it are used (hard_sigmoid gates before Keras 2.3).
Nothing in the weights decides these settings; only a trace of the model's own
hidden values does (--observed, A204).""",
    why="""
A wrong gate activation or direction runs without any error: sigmoid instead of
hard_sigmoid moves every gate value, and a backward layer run forward reads the
sequence in the wrong order, so every number in the report is the wrong model's.""",
    example="A205 info  layer 0: the model file does not state the gate activation, the activation, the direction; "
    "assumed gate activation hard_sigmoid (recurrent_activation, Keras 2.2.4's default); activation tanh (candidate "
    "and cell output, Keras 2.2.4's default); direction forward (go_backwards=False, Keras 2.2.4's default).",
    fix="State the settings (--gate-activation, --activation, --go-backwards) or save the architecture (model.to_json()) "
    "beside the weights; --observed with the model's own hidden values checks them (A204).",
)
def check_configuration_assumed(ctx: Context):
    # Only what an importer states it assumed counts: a format that fixes a setting
    # (PyTorch's activations, an ONNX node's direction) leaves nothing open.
    flags = dict(ASSUMABLE)
    for k in range(len(ctx.model.layers)):
        assumed = {}
        for name, value, source in ctx.model.assumptions:
            scope, _, item = name.rpartition(":")
            if source == "default" and item in flags and scope in ("", f"l{k}"):
                assumed[item] = value
        if not assumed:
            continue
        yield ctx.finding(
            "A205",
            f"the model file does not state the {', the '.join(assumed)}; assumed "
            + "; ".join(f"{item} {value}" for item, value in assumed.items())
            + ".",
            location=Location(k, None, None),
            evidence={"assumed": assumed},
            fix=f"State them ({', '.join(dict.fromkeys(flags[i] for i in assumed))}) or save the architecture (model.to_json()) "
            "beside the weights; --observed with the model's own hidden values checks them (A204).",
        )
