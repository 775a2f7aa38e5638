"""I — inputs: their share of the gates, their scale, layout and padding.

Rules that describe the user's data (I503–I506) are skipped for synthetic
probes; I501 and I502 describe the model's response at the probe's scale and
run on probes too.
"""

from __future__ import annotations

from lstm_doctor.analyzers.registry import Context, Deferred, rule
from lstm_doctor.findings import Location, Severity

np = Deferred("numpy")  # imported by the first check that runs
stats = Deferred("lstm_doctor.stats")
GATES = ("i", "f", "g", "o")  # lstm_doctor.model.GATES, without importing NumPy


def input_negligible(ctx: Context, layer: int, direction: str) -> bool:
    """I501's test for one direction: the input term's share of every gate is under `share`."""
    cap = ctx.capture
    if cap is None or (layer, direction) not in cap.directions:
        return False
    st = cap.directions[(layer, direction)]
    params = dict(ctx.model.layers[layer].directions())[direction]
    share = np.maximum(stats.input_variance_share(st.terms), stats.input_energy_share(st.terms, params.b, st.H))
    return bool(np.isfinite(share).all() and float(share.max()) < ctx.th("I501", "share"))


@rule(
    "I501",
    "input-negligible",
    "error",
    "per gate: the input term's share of the pre-activation variance, "
    "Var(x·W) / (Var(x·W) + Var(h·U) + Var(p·c)), and of its mean square (bias included)",
    {"share": 0.01},
    what="""
Splits every gate pre-activation z = x·W + h·U + b (+ p·c) into its terms and
measures the input term's share of the variance, and of the mean square
(where a constant bias also counts). Fires when, in every gate, both shares are
under `share`: the recurrent term and the bias dominate, so the output cannot
depend on the input.""",
    why="""
Case study (docs/case-study.md): x·W averaged |0.017| against ≈ 25 for the recurrent term; the final
encodings of different tweets differed by 4e-8 (cosine 0.999997), and the
gradient reaching W was ≈ 1e-6, so training could not repair it.""",
    example="I501 error  layer 0 fwd: the input term carries at most 0.0004% of any gate's variance",
    fix="""
Standardise the inputs (zero mean, unit variance per feature; `what-if` fix
`standardize-inputs`) and fix what inflates the recurrent term (W101, W102).""",
)
def check_input_negligible(ctx: Context):
    cap = ctx.capture
    for (k, d), st in cap.directions.items():
        params = dict(ctx.model.layers[k].directions())[d]
        var_share = stats.input_variance_share(st.terms)
        energy_share = stats.input_energy_share(st.terms, params.b, st.H)
        share = np.maximum(var_share, energy_share)
        if not np.isfinite(share).all():
            ctx.skip("I501", "non-finite pre-activations (see I505, W105, C402)")
            continue
        if float(share.max()) >= ctx.th("I501", "share"):
            continue
        best = int(np.argmax(share))
        rms_in = np.sqrt(st.terms.mean_square("input"))
        rms_rec = np.sqrt(st.terms.mean_square("recurrent"))
        yield ctx.finding(
            "I501",
            f"the input term x·W carries at most {float(share.max()):.2%} of any gate's "
            f"pre-activation (gate {GATES[best]}); RMS of x·W is {float(rms_in.mean()):.3g} "
            f"against {float(rms_rec.mean()):.3g} for h·U: the output cannot depend on the input"
            + (" (at the probe's scale)" if cap.source.probe else "")
            + ".",
            location=Location(k, d, None),
            evidence={
                "input_variance_share": {g: float(v) for g, v in zip(GATES, var_share)},
                "input_energy_share": {g: float(v) for g, v in zip(GATES, energy_share)},
                "rms_input_term": {g: float(v) for g, v in zip(GATES, rms_in)},
                "rms_recurrent_term": {g: float(v) for g, v in zip(GATES, rms_rec)},
            },
        )


@rule(
    "I502",
    "input-overdriven",
    "warning",
    "per gate: share of values where the input term alone has |x·W| > 4.6",
    {"share": 0.5, "error_share": 0.9},
    what="""
Counts the gate values whose input term alone exceeds |z| = 4.6 (σ already
below 0.01 or above 0.99). Fires when that share exceeds `share` in any gate:
the inputs' scale saturates the gates whatever the recurrent state.""",
    why="""
Unscaled features (pixel values 0–255, counts, raw embeddings) make x·W huge;
the gates then act as step functions of the input and pass no gradient.""",
    example="I502 error  layer 0 fwd, gate i: |x·W| > 4.6 for 96% of values (RMS 31)",
    fix="Standardise or rescale the inputs (`what-if` fix `rescale-inputs`).",
)
def check_input_overdriven(ctx: Context):
    cap = ctx.capture
    for (k, d), st in cap.directions.items():
        count = max(st.terms.count, 1)
        over = st.terms.over_input / count
        j = int(np.argmax(over))
        if over[j] <= ctx.th("I502", "share"):
            continue
        severity = Severity.error if over[j] >= ctx.th("I502", "error_share") else Severity.warning
        yield ctx.finding(
            "I502",
            f"the input term alone has |x·W| > 4.6 for {over[j]:.0%} of gate {GATES[j]}'s values "
            f"(RMS {float(np.sqrt(st.terms.mean_square('input')[j])):.3g}): the inputs' scale "
            "saturates the gates.",
            severity=severity,
            location=Location(k, d, GATES[j]),
            evidence={"overdriven_share": {g: float(v) for g, v in zip(GATES, over)}},
        )


def input_kind(cap) -> str:
    """What produced the inputs, judged from the capture's sample of valid rows (T, b, D).

    - "one-hot": every value is 0 or 1 and every non-zero row holds exactly one 1
      (symbols, characters);
    - "bag-of-features": non-negative integers, mostly zeros (multi-hot
      indicators, counts);
    - "embedding": rows repeat exactly — few distinct rows among many (at most
      half), as vectors looked up from a table do (D ≥ 4);
    - "dense": anything else (conv outputs, measurements, raw signals).
    All-zero rows (padding) are ignored.
    """
    x = np.asarray(cap.sample_inputs)
    if x.size == 0:
        return "dense"
    T, b, D = x.shape
    rows = x.reshape(T * b, D) if cap.sample_lengths is None else x[
        np.arange(T)[:, None] < np.asarray(cap.sample_lengths)[None, :b]
    ]
    rows = rows[np.isfinite(rows).all(axis=1)]
    rows = rows[(rows != 0).any(axis=1)]
    if rows.shape[0] < 16:
        return "dense"
    binary = bool(np.all((rows == 0) | (rows == 1)))
    if binary and np.all((rows == 1).sum(axis=1) == 1):
        return "one-hot"
    if bool(np.all(rows >= 0)) and bool(np.all(rows == np.round(rows))) and float(np.mean(rows == 0)) > 0.5:
        return "bag-of-features"
    if D >= 4 and rows.shape[0] >= 50:
        # Rows that differ in one column differ: when a single column already has
        # more distinct values than half the rows, so do the rows, and sorting
        # the whole rows (75 ms at 9,600 × 256) is not needed.
        if np.unique(rows[:, 0]).shape[0] > 0.5 * rows.shape[0]:
            return "dense"
        distinct = np.unique(rows, axis=0).shape[0]
        if distinct <= 0.5 * rows.shape[0]:
            return "embedding"
    return "dense"


# What to say instead of "standardise", per input kind (none: no finding).
KIND_ADVICE = {
    "one-hot": None,
    "embedding": None,
    "bag-of-features": "scale counts in the front end (e.g. log(1 + x) or tf-idf), as the model was trained; do not standardise indicator columns",
}


@rule(
    "I503",
    "input-unnormalized",
    "info",
    "per feature: mean, std, min and max of the inputs; the sign of W's mean",
    {"mean_std_ratio": 1.0, "low_scale": 0.1, "high_scale": 10.0},
    what="""
Describes the input scale: features far from zero mean (|mean| > mean_std_ratio ×
std) or from unit scale (RMS under low_scale or over high_scale), constant
features, and all-non-negative features feeding positive-mean weights
(a warning: every unit then receives the same positive push).""",
    why="""
LSTMs are initialised for standardised inputs. The case study's conv output was ReLU,
0 to 0.07: tiny, non-negative, and fed into weights of mean 0.1 — the input
term was a small constant push, not information.

The advice fits the input. One-hot rows (every non-zero row a single 1),
embedding outputs (rows that repeat exactly, looked up from a table) and
bag-of-features columns (non-negative integers, mostly zero) come from a
trained front end whose scale the LSTM learned: they are never told to
standardise (one-hot and embedding rows get no finding; counts an info about
log or tf-idf scaling when their RMS passes `high_scale`). The positive-push
warning still applies to them, with re-centring W as its fix.
Calibration (corpus/, issue 14): classifier (one-hot, 88% zeros) and the
embedding outputs of charlm and tagger get no I503; adding's raw
(value, marker) pairs in [0, 1] get the info; the case study's conv output
(all ≥ 0, 68% zeros, W mean 0.1) keeps the warning.""",
    example="I503 warning  inputs: all 10 features are ≥ 0 (RMS 0.02) and W has mean 0.1 > 0",
    fix="Standardise per feature with statistics from the training data (`what-if` fix `standardize-inputs`).",
    real_inputs=True,
)
def check_input_unnormalized(ctx: Context):
    cap = ctx.capture
    st = cap.inputs
    mean, std = st.mean(), st.std()
    rms = float(np.sqrt(np.mean(st.sumsq_d / max(st.count, 1))))
    constant = np.flatnonzero(st.max_d == st.min_d)
    offset = np.flatnonzero(np.abs(mean) > ctx.th("I503", "mean_std_ratio") * np.maximum(std, 1e-30))
    nonneg = bool(np.all(st.min_d >= 0))
    W = np.asarray(ctx.model.layers[0].forward.W, dtype=np.float64)
    w_mean = float(W.mean()) if np.isfinite(W).all() else 0.0
    evidence = {
        "rms": rms,
        "features": st.D,
        "constant_features": [int(i) for i in constant[:50]],
        "offset_features": int(offset.size),
        "all_non_negative": nonneg,
        "zero_share": st.zeros / max(st.count * st.D, 1),
        "W_mean": w_mean,
    }
    loc = Location(0, None, "x")
    kind = input_kind(cap)
    evidence["input_kind"] = kind
    front_end = kind != "dense"
    if nonneg and w_mean > 0 and w_mean > 0.5 * float(W.std()):
        yield ctx.finding(
            "I503",
            f"all {st.D} input features are ≥ 0 ({evidence['zero_share']:.0%} exact zeros, RMS "
            f"{rms:.3g}) and feed weights of mean {w_mean:.3g} > 0: every unit receives the same "
            "positive push.",
            severity=Severity.warning,
            location=loc,
            evidence=evidence,
            fix=(
                f"The inputs are {kind} rows from a front end: keep them as they are, and re-centre "
                "W instead (zero-mean initialisation; `what-if` fix `center-weights`)."
                if front_end
                else None
            ),
        )
        return
    if front_end:
        # A trained front end's output (one-hot symbols, an embedding table,
        # indicator or count columns) has the scale the LSTM was trained on:
        # standardising it would break the model, whatever its mean and RMS.
        advice = KIND_ADVICE[kind]
        if advice is not None and rms > ctx.th("I503", "high_scale"):
            yield ctx.finding(
                "I503",
                f"the inputs look like {kind} columns (non-negative integers, {evidence['zero_share']:.0%} zeros) "
                f"with RMS {rms:.3g}.",
                location=loc,
                evidence=evidence,
                fix=advice[0].upper() + advice[1:] + ".",
            )
        return
    problems = []
    if rms < ctx.th("I503", "low_scale") or rms > ctx.th("I503", "high_scale"):
        problems.append(f"RMS {rms:.3g} is far from unit scale")
    if offset.size:
        problems.append(f"{offset.size}/{st.D} features have |mean| > std")
    if constant.size:
        problems.append(f"{constant.size} features are constant ({[int(i) for i in constant[:8]]})")
    if problems:
        yield ctx.finding(
            "I503",
            "inputs are not standardised: " + "; ".join(problems) + ".",
            location=loc,
            evidence=evidence,
        )


@rule(
    "I504",
    "time-axis-suspect",
    "warning",
    "T/D, and the mean correlation between adjacent steps versus between adjacent features",
    {"steps_per_feature": 4.0, "margin": 0.2},
    what="""
Suspects that the axis used as time is a feature or channel axis: there are
many more steps than features (T ≥ steps_per_feature × D) and adjacent steps
are less correlated than adjacent features (by more than `margin`), as happens
when a channels-first conv output (batch, channels, length) is read as
(batch, time, features).""",
    why="""
Case study (docs/case-study.md): the conv stack produced (batch, 256 channels, 10 positions) and the
LSTM stepped over the 256 filters with the 10 positions as features. A sequence
length equal to a channel count, with very few features, is the smell; the
correlation test confirms it, since neighbouring positions of a conv output
overlap while neighbouring filters are unrelated.""",
    example="""
I504 warning  inputs: 256 steps of 10 features; adjacent steps correlate 0.02,
adjacent features 0.71: the time axis looks like a channel axis""",
    fix="Read the input as channels-first: --layout bct (time = length), and give W the channel count as D.",
    real_inputs=True,
)
def check_time_axis(ctx: Context):
    cap = ctx.capture
    T, D = cap.T, cap.source.D
    step, feat = cap.step_correlation, cap.feature_correlation
    if T < ctx.th("I504", "steps_per_feature") * D or not np.isfinite(step) or not np.isfinite(feat):
        return
    if feat - step <= ctx.th("I504", "margin"):
        return
    hint = " (--layout bct)" if cap.source.layout == "btd" else ""
    yield ctx.finding(
        "I504",
        f"the input is read as {T} steps of {D} features (layout {cap.source.layout}); adjacent "
        f"steps correlate {step:.2f} but adjacent features {feat:.2f}: the time axis looks "
        f"like a channel axis{hint}.",
        location=Location(0, None, "x"),
        evidence={"T": T, "D": D, "step_correlation": step, "feature_correlation": feat, "layout": cap.source.layout},
    )


@rule(
    "I505",
    "input-nonfinite",
    "error",
    "count of NaN and ±Inf values in the inputs",
    {},
    what="Flags NaN or Inf values in the inputs.",
    why="A single non-finite input makes that sequence's state non-finite from that step on (C402).",
    example="I505 error  inputs: 12 NaN/Inf values",
    fix="Clean or impute the inputs before encoding them.",
)
def check_input_nonfinite(ctx: Context):
    st = ctx.capture.inputs
    if st.nonfinite:
        yield ctx.finding(
            "I505",
            f"the inputs hold {st.nonfinite} NaN or Inf values.",
            location=Location(0, None, "x"),
            evidence={"count": st.nonfinite},
        )


@rule(
    "I506",
    "padding-dominated",
    "warning",
    "trailing all-zero steps per sequence when no lengths are given",
    {"sequence_share": 0.1, "step_share": 0.1},
    what="""
Without --lengths, detects trailing all-zero steps (padding). Fires when at
least `sequence_share` of the sequences are padded and the padded ones end
with, on average, at least `step_share` × T zero steps: their final state is
taken after those padding steps, with no mask applied.""",
    why="""
An LSTM keeps stepping through padding: every zero step decays or drives the
state, so the "final" encoding describes the padding as much as the sequence.""",
    example="I506 warning  inputs: 80% of sequences end with 41 zero steps on average (of 60); no lengths given",
    fix="Pass --lengths (the true length of each sequence) so the state is taken at the last real step.",
    real_inputs=True,
)
def check_padding(ctx: Context):
    cap = ctx.capture
    if cap.source.lengths is not None:
        return
    if ctx.model.masking and masked_steps(cap)[0]:
        return  # I508 says it with the model's own mask, and its fix is --mask
    st = cap.inputs
    padded = st.sequences_with_padding
    if padded == 0:
        return
    seq_share = padded / max(st.n, 1)
    mean_steps = st.trailing_zero_steps / padded
    if seq_share >= ctx.th("I506", "sequence_share") and mean_steps >= ctx.th("I506", "step_share") * cap.T:
        yield ctx.finding(
            "I506",
            f"{seq_share:.0%} of sequences end with {mean_steps:.3g} all-zero steps on average "
            f"(of {cap.T}) and no lengths were given: their final state is taken after the padding.",
            location=Location(0, None, "x"),
            evidence={"padded_share": seq_share, "mean_padding_steps": mean_steps, "T": cap.T},
        )


def neighbour_correlations(x) -> tuple[float, float, float]:
    """Adjacent-step and adjacent-sequence correlation of an input sample, and their noise.

    ``x`` (T, b, D) is centred per feature (over steps and sequences), so how often a
    feature is on (a symbol's frequency) does not count. Step: the Pearson correlation
    of x[t] with x[t+1] over (sequences, features), averaged over t; sequence: of
    x[:, j] with x[:, j+1] over (steps, features), averaged over j. The noise is the
    larger standard error 1/√(pairs × elements) of the two averages.
    """
    def mean_corr(rows):
        # rows (K, M): each row's correlation with the next, averaged
        norm2 = np.einsum("km,km->k", rows, rows)
        denom = np.sqrt(norm2[:-1] * norm2[1:])
        ok = denom > 0
        if not ok.any():
            return float("nan")
        return float((np.einsum("km,km->k", rows[:-1], rows[1:])[ok] / denom[ok]).mean())

    x = np.asarray(x, dtype=np.float64)
    T, b, D = x.shape
    if T < 3 or b < 3:
        return float("nan"), float("nan"), float("nan")
    x = np.where(np.isfinite(x), x, 0.0)
    x = x - x.mean(axis=(0, 1))
    step = mean_corr(x.reshape(T, b * D))
    sequence = mean_corr(x.transpose(1, 0, 2).reshape(b, T * D))
    noise = max(1 / np.sqrt((T - 1) * b * D), 1 / np.sqrt((b - 1) * T * D))
    return step, sequence, float(noise)


@rule(
    "I507",
    "layout-unconfirmed",
    "info",
    "|correlation| between adjacent steps versus between adjacent sequences (inputs centred per "
    "feature), when the file does not record which input axis is time",
    {"margin": 0.02, "swap_margin": 0.1},
    what="""
The model file does not record the input layout (a PyTorch state_dict has no
batch_first; a pickle has no layout), no --layout was given, and the inputs do
not confirm the assumed one: adjacent steps are not more correlated (in absolute
value) than adjacent sequences by `margin` (and by 4 standard errors of the
sample). Info when the inputs cannot tell; warning when adjacent sequences are
the more correlated by `swap_margin`, which is what a (T, B, D) array read as
(B, T, D) shows.""",
    why="""
nn.LSTM's default is (T, B, D) and most training code passes batch_first=True;
the saved weights work with either, so a swapped reading runs without an error
and diagnoses B "steps" of unrelated sequences. A real sequence depends on its
past, so neighbouring steps correlate (positively for smooth signals, negatively
for symbols that rarely repeat), while the sequences of a batch are independent
draws. Inputs without temporal correlation (noise, shuffled features) cannot
decide it. Calibration: on the corpus' one-hot character LM inputs adjacent steps
correlate −0.05 and adjacent sequences −0.002 (decided); on the adding task's
random inputs 0.013 and −0.014 (undecided, info).""",
    example="""
I507 info  inputs: read as btd (the file does not record batch_first); adjacent steps
correlate 0.01, adjacent sequences 0.02: the inputs do not confirm which axis is time""",
    fix="State the layout with --layout btd or --layout tbd (batch_first=True is btd).",
    real_inputs=True,
)
def check_layout_unconfirmed(ctx: Context):
    cap = ctx.capture
    if cap.source.layout_given or ctx.model.origin("input layout") != "default" or cap.source.layout == "bct":
        return
    step, sequence, noise = neighbour_correlations(cap.sample_inputs)
    lead = abs(step) - abs(sequence)  # NaN when the sample is too small to tell
    if lead > max(ctx.th("I507", "margin"), 4 * noise):
        return  # the axis read as time is the one with temporal structure
    other = "tbd" if cap.source.layout == "btd" else "btd"
    swapped = -lead > max(ctx.th("I507", "swap_margin"), 4 * noise)
    verdict = (
        f"adjacent sequences correlate more than adjacent steps: the axes look swapped (--layout {other})"
        if swapped
        else "the inputs do not confirm which axis is time"
    )
    yield ctx.finding(
        "I507",
        f"the model file does not record the input layout and none was given: the inputs are read as "
        f"{cap.source.layout} ({cap.source.n_sequences} sequences of {cap.T} steps); adjacent steps correlate "
        f"{step:.2f}, adjacent sequences {sequence:.2f}: {verdict}.",
        severity=Severity.warning if swapped else None,
        location=Location(0, None, "x"),
        evidence={"layout": cap.source.layout, "step_correlation": step, "sequence_correlation": sequence,
                  "standard_error": noise, "sequences": cap.source.n_sequences, "T": cap.T},
        fix=f"State the layout: --layout {cap.source.layout} if that is right, else --layout {other} "
        "(PyTorch: batch_first=True is btd, the default batch_first=False is tbd).",
    )


def masked_steps(cap) -> tuple[int, int]:
    """(masked steps, sequences with one) in the input sample under the model's mask.

    A step is masked, as Keras' ``Masking`` computes it, when every feature equals
    the mask value (0 for ``Embedding(mask_zero=True)`` read as features).
    """
    value = mask_value_of(cap.model)
    masked = np.all(cap.sample_inputs == value, axis=2)  # (T, b)
    return int(masked.sum()), int(masked.any(axis=0).sum())


def mask_value_of(model) -> float:
    return float(model.mask_value) if model.mask_value is not None else 0.0


@rule(
    "I508",
    "mask-not-applied",
    "warning",
    "steps of the input sample whose features all equal the model's mask value, when no mask was given",
    {},
    what="""
The model declares masking in front of the LSTM (a Keras `Masking` layer or an
`Embedding(mask_zero=True)`), no --mask, --lengths or file lengths were given,
and the inputs hold steps that the model's mask would skip (every feature equal
to the mask value). The diagnosis runs them as data, as the model never does.""",
    why="""
Keras skips masked steps: h and c carry over them unchanged. Run as data, zero
steps decay or drive the state, so the encodings, the saturation and the
per-step statistics describe padding the model never sees. Keras' pad_sequences
pads at the front by default, so the padding sits exactly where the final state
is least affected by it and the report shows no obvious sign.""",
    example="I508 warning  inputs: the model masks (Masking(mask_value=0)); 412 steps in 37 of the 64 sampled sequences are all 0 and were run as data",
    fix="Pass --mask, so masked steps are skipped as Keras skips them.",
    real_inputs=True,
)
def check_mask_not_applied(ctx: Context):
    cap = ctx.capture
    if not ctx.model.masking or cap.source.lengths is not None or cap.source.mask_value is not None:
        return
    steps, sequences = masked_steps(cap)
    if steps == 0:
        return  # nothing the mask would skip: the run equals the masked one
    b = cap.sample_inputs.shape[1]
    value = mask_value_of(ctx.model)
    yield ctx.finding(
        "I508",
        f"the model masks its inputs ({ctx.model.masking}) but no mask was given: {steps} steps in "
        f"{sequences} of the {b} sampled sequences have every feature equal to {value:g} and were run as "
        "data; the model skips them.",
        location=Location(0, None, "x"),
        evidence={"masking": ctx.model.masking, "mask_value": value, "masked_steps": steps,
                  "sequences_with_masked_steps": sequences, "sampled_sequences": b},
    )
