"""What-if: apply each proposed fix virtually, measure its effect, rank the root causes.

A list of findings leaves a user guessing which defect to fix first and whether
the fix will be enough. The case study's answer came from re-running the encoder with
each defect fixed, alone and cumulatively. This module runs that experiment.

**Fixes.** Each fix has a stable id, names the codes it addresses, and is a
pure transformation of the canonical model or of the inputs: the original
model (immutable, read-only arrays) and the input array are never modified;
new models are built with ``make_direction`` and ``dataclasses.replace``. A
fix never changes a weight's shape or meaning. ``swap-time-axis`` changes the
number of features D, so it runs only when the model's W already has the
shape the new layout needs, and otherwise is reported as "needs retraining".

========================  =============  ======  ===========================================
id                        addresses      acts on what it does
========================  =============  ======  ===========================================
``center-weights``        W101           model   subtract each gate block's mean from W and U
                                                 (and each peephole row's mean); spreads kept
``rescale-recurrent``     W102           model   scale each gate block U_g so that its spectral
                                                 norm × the cell output's bound is ≤ 1
                                                 (``RECURRENT_TARGET``); blocks already under it
                                                 are left alone
``forget-bias-1``         W103           model   set every forget bias b_f to +1
``tanh-cell-output``      A201           model   h = o·tanh(c)
``sigmoid-gates``         A202           model   i, f, o = σ(·)
``tanh-candidate``        A203           model   g = tanh(·)
``mask-padding``          I506           inputs  lengths from trailing all-zero steps
``swap-time-axis``        I504           inputs  read the array with time and features swapped
                                                 (btd ↔ bct; tbd → bct of its transpose)
``standardize-inputs``    I501, I503     inputs  per-feature (x − mean)/std, statistics from
                                                 the sample (valid steps only)
``rescale-inputs``        I502           inputs  divide by the inputs' RMS
========================  =============  ======  ===========================================

Several fixes compose in the fixed order of the table (``FIXES``), whatever the
order they were chosen in: padding is masked before the inputs are
standardised, for instance.

**Experiment.** The runs share one bounded sample of sequences (default 256,
evenly spaced over the file, ``WhatIfOptions.sample_size``). A fix is
*applicable* when one of its codes is reported at warning level or above on
that sample (or when it is named in ``WhatIfOptions.fixes``). Runs:

1. the model as loaded (``baseline``);
2. each applicable fix alone;
3. the cumulative path: greedily, at each step, add the fix (among those
   applicable at the start or on the current state) that most improves the
   objective, root causes first (below); stop when none improves it. A fix
   that would leave the model and the inputs unchanged on the current state
   (e.g. ``rescale-recurrent`` once the weights are centred, because U's norm
   is already under the target) is not re-run.

Every run re-captures the sample and re-runs ``analyze``; it reports the
headline metrics (``pipeline.headline_metrics`` plus the saturated share per
gate and the mean |encoding|) and the error and warning codes that remain.

**Objective** (lower is better), compared lexicographically:

1. the number of distinct error codes that remain;
2. the number of distinct warning codes that remain;
3. the *worst metric*: the largest of five badness scores in [0, 1] —
   saturated gate share, hidden share at a bound, cell growth
   min(1, log10(max|c|)/2) (|c| ≤ 1 → 0, |c| ≥ 100 → 1), collapse
   max(0, mean pairwise cosine), and input deafness 1 − input variance share
   (NaN counts as 1);
4. the mean of the five scores.

Scores 3 and 4 must improve by more than ``SCORE_TOLERANCE`` to count, so
numerical noise never adds a fix to the path.

**Root causes first.** Fix A *explains* fix B when A's run removes every code
of B that is present, while B's run leaves one of A's codes. In docs/case-study.md, the
large spectral norm of U (W102) comes from its mean (W101): centering removes
W102, rescaling U leaves W101 (as a warning). By the objective alone,
rescaling U can look as good or better (on the bundled example it shrinks the
recurrent term enough to lift the input's share past I501's 1% threshold), but
it treats a symptom. So fixes are ordered by the objective, except that a fix
explained by another comes after it (``root_cause_order``); the ranking and
each greedy step use that order.

**Ranking.** Fixes are ranked by that order over their runs alone. A
lower-ranked fix is *made irrelevant* by a higher-ranked one when the
higher-ranked fix alone removes every code the lower one addresses; a fix left
off the cumulative path says why (no effect there, or no improvement).

Everything here is pure (no printing, no file writing); ``experiment_dict``
and ``add_what_if`` give the JSON-able ``what_if`` section, which
``lstm_doctor.report.whatif_text`` renders.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import numpy as np

from lstm_doctor.analyzers import RULES, AnalysisConfig, analyze
from lstm_doctor.capture import budget
from lstm_doctor.capture.engines import resolve_engine
from lstm_doctor.capture.pipeline import CaptureOptions, capture, headline_metrics
from lstm_doctor.errors import ConfigError, InputError
from lstm_doctor.findings import Finding, Severity
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import SIGMOID_GATES, Layer, LSTMModel, make_direction
from lstm_doctor.report.build import clean

DEFAULT_SAMPLE = 256  # sequences re-run for every fix
EXPECTED_CAPTURES = 8  # captures of the sample in a typical experiment (the bundled example's)
RECURRENT_TARGET = 1.0  # rescale-recurrent: spectral norm × cell-output bound per gate block
FORGET_BIAS = 1.0  # forget-bias-1 (Gers et al. 2000; Jozefowicz et al. 2015)
SCORE_TOLERANCE = 0.005  # a score must improve by more than this to count
# Harm (issue 14): on a model whose encodings do not collapse (no H601), a fix
# that raises the mean pairwise cosine by more than HARM_COSINE, or cuts the
# cross-input std of the encodings (relative to their mean |h_T|) below
# HARM_STD_RATIO of what it was, makes different inputs look alike. Measured
# on a trained character LM: rescale-recurrent took the cosine 0.048 → 0.596
# and the LM from 2.38 to 14.5 nats/char.
HARM_COSINE = 0.05
HARM_STD_RATIO = 0.5


# -- state and fixes ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class State:
    """What a run captures: a model and the inputs it reads."""

    model: LSTMModel
    source: InputSource


@dataclass(frozen=True)
class Outcome:
    """The result of applying one fix to a state.

    ``state`` is None when the fix cannot run (``needs`` says what it would
    need, e.g. retraining with another W shape). ``changed`` is False when the
    fix leaves the state as it was (nothing to re-run).
    """

    state: State | None
    description: str
    changed: bool = True
    needs: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fix:
    id: str
    codes: tuple[str, ...]
    target: str  # "model" or "inputs"
    summary: str
    transform: Callable[[State], Outcome] = field(repr=False, compare=False)

    def applies(self, findings: Iterable[Finding], min_severity: Severity = Severity.warning) -> bool:
        """True when one of this fix's codes is reported at ``min_severity`` or above."""
        return any(f.code in self.codes and f.severity >= min_severity for f in findings)

    def apply(self, state: State) -> Outcome:
        return self.transform(state)


def _rebuild(model: LSTMModel, direction_fn=None, activations_fn=None, note: str = "") -> LSTMModel:
    """A new model with every direction passed through ``direction_fn(k, d, params)``
    and every layer's activations through ``activations_fn``."""
    layers = []
    for k, layer in enumerate(model.layers):
        new = layer
        if direction_fn is not None:
            fwd = direction_fn(k, "rev" if layer.go_backwards else "fwd", layer, layer.forward)
            rev = None if layer.backward is None else direction_fn(k, "rev", layer, layer.backward)
            new = replace(new, forward=fwd, backward=rev)
        if activations_fn is not None:
            new = replace(new, activations=activations_fn(layer.activations))
        layers.append(new)
    out = replace(model, layers=tuple(layers))
    return out.with_notes(note) if note else out


def _direction(params, **arrays):
    current = {
        "W": params.W, "U": params.U, "b": params.b, "peephole": params.peephole,
        "h0": params.h0, "c0": params.c0, "projection": params.projection,
    }
    current.update(arrays)
    return make_direction(**current, dtype=params.dtype)


def _center_blocks(arr: np.ndarray, H: int) -> tuple[np.ndarray, float]:
    a = np.asarray(arr, dtype=np.float64)
    blocks = a.reshape(a.shape[0], 4, H)
    means = blocks.mean(axis=(0, 2))
    return (blocks - means[None, :, None]).reshape(a.shape), float(np.abs(means).max())


def center_weights(state: State) -> Outcome:
    largest: list[tuple[float, str]] = []

    def fix(k, d, layer: Layer, p):
        H = p.H
        W, mw = _center_blocks(p.W, H)
        U, mu = _center_blocks(p.U, H)
        largest.extend([(mw, f"W layer {k} {d}"), (mu, f"U layer {k} {d}")])
        peep = None
        if p.peephole is not None:
            pp = np.asarray(p.peephole, dtype=np.float64)
            means = pp.mean(axis=1, keepdims=True)
            largest.append((float(np.abs(means).max()), f"peephole layer {k} {d}"))
            peep = pp - means
        return _direction(p, W=W, U=U, peephole=peep)

    model = _rebuild(state.model, fix)
    top, where = max(largest)
    peepholes = any(p.peephole is not None for *_, p in state.model.units())
    desc = (
        "subtracted each gate block's mean from W and U"
        + (", and each peephole row's mean" if peepholes else "")
        + f" (largest |mean| removed {top:.3g}, {where}); spreads unchanged"
    )
    changed = top > 1e-7
    return Outcome(State(model.with_notes(f"what-if center-weights: {desc}"), state.source), desc, changed)


def rescale_recurrent(state: State) -> Outcome:
    factors: list[float] = []

    def fix(k, d, layer: Layer, p):
        out = layer.activations.get("cell_output")
        bound = max(abs(out.low), abs(out.high)) if out.bounded else 1.0
        U = np.array(p.U, dtype=np.float64)
        # with a projection R (LSTMP) the recurrence maps m_{t-1} to z_t through R·U
        R = None if p.projection is None else np.asarray(p.projection, np.float64)
        changed = False
        for j in range(4):
            block = U[:, j * p.H : (j + 1) * p.H]
            if not np.isfinite(block).all():
                continue
            norm = float(np.linalg.norm(block if R is None else R @ block, 2)) * bound
            if norm > RECURRENT_TARGET:
                factor = RECURRENT_TARGET / norm
                U[:, j * p.H : (j + 1) * p.H] = block * factor
                factors.append(factor)
                changed = True
        return _direction(p, U=U) if changed else p

    model = _rebuild(state.model, fix)
    if not factors:
        return Outcome(state, f"every U gate block already has spectral norm ≤ {RECURRENT_TARGET:g}", changed=False)
    desc = (
        f"scaled {len(factors)} gate block(s) of U by {min(factors):.3g}–{max(factors):.3g} so that "
        f"each spectral norm (× the cell output's bound) is ≤ {RECURRENT_TARGET:g}"
    )
    return Outcome(State(model.with_notes(f"what-if rescale-recurrent: {desc}"), state.source), desc)


def forget_bias_1(state: State) -> Outcome:
    before: list[float] = []

    def fix(k, d, layer, p):
        b = np.array(p.b, dtype=np.float64)
        before.append(float(np.median(b[p.H : 2 * p.H])))
        b[p.H : 2 * p.H] = FORGET_BIAS
        return _direction(p, b=b)

    model = _rebuild(state.model, fix)
    changed = not all(np.all(np.asarray(p.gate_block(p.b, "f")) == FORGET_BIAS) for *_, p in state.model.units())
    desc = f"set every forget bias b_f to {FORGET_BIAS:+g} (median was {np.median(before):.3g})"
    return Outcome(State(model.with_notes(f"what-if forget-bias-1: {desc}"), state.source), desc, changed)


def _set_activation(role: str, name: str, fix_id: str, what: str) -> Callable[[State], Outcome]:
    def transform(state: State) -> Outcome:
        was = sorted({getattr(L.activations, role) for L in state.model.layers})
        if was == [name]:
            return Outcome(state, f"{what} is already {name}", changed=False)
        model = _rebuild(state.model, activations_fn=lambda a: replace(a, **{role: name}))
        desc = f"{what}: {'/'.join(was)} → {name}"
        return Outcome(State(model.with_notes(f"what-if {fix_id}: {desc}"), state.source), desc)

    return transform


def _valid_mask(source: InputSource) -> np.ndarray | None:
    """(T, B) valid steps of the in-memory sample, or None when all are valid."""
    if source.lengths is None:
        return None
    return np.arange(source.T)[:, None] < np.asarray(source.lengths)[None, :]


def _time_major(source: InputSource) -> np.ndarray:
    return source.read(0, source.n_sequences, np.float64)


def _replace_values(source: InputSource, x_tbd: np.ndarray, note: str) -> InputSource:
    """A new in-memory source holding ``x_tbd`` (T, B, D) in the source's own layout.

    ``x_tbd`` is what ``source.read`` gave: a pre-padded or masked sequence already has its
    valid steps first, so the new source reads it as post-padded (no second compaction).
    """
    dtype = source.array.dtype if source.array.dtype.kind == "f" else np.dtype(np.float32)
    x = x_tbd.astype(dtype)
    stored = {"btd": x.transpose(1, 0, 2), "tbd": x, "bct": x.transpose(1, 2, 0)}[source.layout]
    return replace(source, array=np.ascontiguousarray(stored), notes=source.notes + (note,),
                   padding="post", mask_value=None)


def standardize_inputs(state: State) -> Outcome:
    """Per-feature standardisation over the valid steps. Without lengths, trailing
    all-zero steps (padding, as I506 detects it) are left at zero and not counted:
    standardising would hide the padding, not remove it."""
    src = state.source
    x = _time_major(src)
    mask = _valid_mask(src)
    padding_kept = False
    if mask is None:
        lengths = detected_padding(src)
        if lengths is not None:
            mask = np.arange(src.T)[:, None] < lengths[None, :]
            padding_kept = True
    values = x[mask] if mask is not None else x.reshape(-1, x.shape[-1])
    values = np.where(np.isfinite(values), values, np.nan)
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0)
    mean = np.nan_to_num(mean)
    scale = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    desc = (
        f"per-feature (x − mean)/std over {src.D} features, statistics from the {src.n_sequences}-sequence "
        f"sample (mean {float(np.mean(mean)):.3g}, std {float(np.mean(std)):.3g} on average"
        + (f"; {int((std <= 0).sum())} constant features only centred" if (std <= 0).any() else "")
        + ("; trailing all-zero steps left at zero" if padding_kept else "")
        + ")"
    )
    z = (x - mean) / scale
    if padding_kept:
        z = np.where(mask[:, :, None], z, 0.0)
    new = _replace_values(src, z, f"what-if standardize-inputs: {desc}")
    return Outcome(State(state.model, new), desc, data={"mean": mean, "std": scale})


def rescale_inputs(state: State) -> Outcome:
    src = state.source
    x = _time_major(src)
    mask = _valid_mask(src)
    values = x[mask] if mask is not None else x
    finite = values[np.isfinite(values)]
    rms = float(np.sqrt(np.mean(finite**2))) if finite.size else 0.0
    if rms == 0 or rms == 1:
        return Outcome(state, f"the inputs' RMS is {rms:g}: nothing to rescale", changed=False)
    desc = f"divided the inputs by their RMS {rms:.3g}"
    new = _replace_values(src, x / rms, f"what-if rescale-inputs: {desc}")
    return Outcome(State(state.model, new), desc, data={"rms": rms})


def swapped_layout(source: InputSource) -> tuple[np.ndarray, str]:
    """The stored array and layout that read ``source`` with time and features swapped."""
    if source.layout == "btd":
        return source.array, "bct"
    if source.layout == "bct":
        return source.array, "btd"
    return source.array.transpose(1, 0, 2), "bct"  # (T, B, D) → (B, T, D) read as (batch, channels, length)


def swap_time_axis(state: State) -> Outcome:
    src = state.source
    array, layout = swapped_layout(src)
    T_new, D_new = src.D, src.T
    what = f"read the inputs as {T_new} steps of {D_new} features (layout {layout}) instead of {src.T} × {src.D}"
    if D_new != state.model.D:
        H4 = state.model.layers[0].forward.W.shape[1]
        needs = (
            f"needs retraining: W would need shape ({D_new}, {H4}) but has "
            f"{tuple(state.model.layers[0].forward.W.shape)}"
        )
        return Outcome(None, what, changed=True, needs=needs)
    note = f"what-if swap-time-axis: {what}" + ("; lengths dropped (they counted the old time axis)" if src.lengths is not None else "")
    # the mask and the padding counted the old time axis too
    new = replace(src, array=array, layout=layout, lengths=None, notes=src.notes + (note,), padding="post",
                  mask_value=None)
    return Outcome(State(state.model, new), what)


def padding_lengths(source: InputSource) -> np.ndarray:
    """Per sequence: T minus its trailing all-zero steps (an all-zero sequence keeps T)."""
    x = _time_major(source)
    T = x.shape[0]
    zero_step = ~(x != 0).any(axis=2)  # (T, B)
    trailing = np.cumprod(zero_step[::-1], axis=0).sum(axis=0)
    trailing = np.where(trailing == T, 0, trailing)
    return (T - trailing).astype(np.int64)


def detected_padding(source: InputSource) -> np.ndarray | None:
    """``padding_lengths`` when the trailing zeros look like padding by I506's default
    thresholds (enough sequences padded, by enough steps), else None: a few
    incidental zero steps (a ReLU output) are data, not padding."""
    th = RULES["I506"].thresholds
    lengths = padding_lengths(source)
    padded = lengths < source.T
    if not padded.any():
        return None
    share = float(padded.mean())
    mean_steps = float((source.T - lengths[padded]).mean())
    if share >= th["sequence_share"] and mean_steps >= th["step_share"] * source.T:
        return lengths
    return None


def mask_padding(state: State) -> Outcome:
    src = state.source
    if src.lengths is not None:
        return Outcome(state, "lengths are already given", changed=False)
    lengths = padding_lengths(src)
    if np.all(lengths == src.T):
        return Outcome(state, "no sequence ends with all-zero steps", changed=False)
    desc = (
        f"lengths from trailing all-zero steps: {int((lengths < src.T).sum())}/{len(lengths)} sequences "
        f"padded, mean length {float(lengths.mean()):.3g} of {src.T}"
    )
    new = replace(src, lengths=lengths, notes=src.notes + (f"what-if mask-padding: {desc}",))
    return Outcome(State(state.model, new), desc, data={"lengths": lengths})


FIXES: dict[str, Fix] = {
    f.id: f
    for f in (
        Fix("center-weights", ("W101",), "model", "subtract each gate block's mean of W, U and peepholes", center_weights),
        Fix("rescale-recurrent", ("W102",), "model", f"scale each U gate block to spectral norm ≤ {RECURRENT_TARGET:g}", rescale_recurrent),
        Fix("forget-bias-1", ("W103",), "model", f"forget bias b_f = {FORGET_BIAS:+g}", forget_bias_1),
        Fix("tanh-cell-output", ("A201",), "model", "h = o·tanh(c)", _set_activation("cell_output", "tanh", "tanh-cell-output", "cell output")),
        Fix("sigmoid-gates", ("A202",), "model", "gates i, f, o = σ", _set_activation("gate", "sigmoid", "sigmoid-gates", "gate activation")),
        Fix("tanh-candidate", ("A203",), "model", "candidate g = tanh", _set_activation("candidate", "tanh", "tanh-candidate", "candidate activation")),
        Fix("mask-padding", ("I506",), "inputs", "lengths from trailing all-zero steps", mask_padding),
        Fix("swap-time-axis", ("I504",), "inputs", "swap the time and feature axes of the inputs", swap_time_axis),
        Fix("standardize-inputs", ("I501", "I503"), "inputs", "per-feature standardisation (sample statistics)", standardize_inputs),
        Fix("rescale-inputs", ("I502",), "inputs", "divide the inputs by their RMS", rescale_inputs),
    )
}
ORDER = {fid: n for n, fid in enumerate(FIXES)}


def parse_fix_ids(ids: Iterable[str] | None) -> tuple[str, ...] | None:
    """Validate fix ids (comma-separated strings accepted); None means all fixes."""
    if ids is None:
        return None
    out = []
    for item in ids:
        for fid in str(item).split(","):
            fid = fid.strip().lower()
            if not fid:
                continue
            if fid not in FIXES:
                raise ConfigError(f"unknown fix {fid!r}; fixes are: {', '.join(FIXES)}")
            if fid not in out:
                out.append(fid)
    return tuple(out) or None


def apply_fixes(state: State, fix_ids: Iterable[str]) -> tuple[State | None, list[Outcome]]:
    """Apply ``fix_ids`` in the canonical order; the state is None if one cannot run."""
    outcomes = []
    for fid in sorted(set(fix_ids), key=ORDER.__getitem__):
        out = FIXES[fid].apply(state)
        outcomes.append(out)
        if out.state is None:
            return None, outcomes
        state = out.state
    return state, outcomes


def fixed_model(model: LSTMModel, fix_ids: Iterable[str]) -> LSTMModel:
    """``model`` with the model-level fixes among ``fix_ids`` applied (input fixes ignored)."""
    dummy = InputSource(array=np.zeros((1, 1, model.D), dtype=np.float32), layout="btd", probe="none")
    state, _ = apply_fixes(State(model, dummy), [f for f in fix_ids if FIXES[f].target == "model"])
    return state.model


# -- the sample ----------------------------------------------------------------------------------


def sample_source(source: InputSource, n: int) -> InputSource:
    """An in-memory source of at most ``n`` sequences, evenly spaced over ``source``.

    The same sample is re-used by every run, so differences between runs come
    from the fixes only.
    """
    total = source.n_sequences
    if n < 1:
        raise ConfigError(f"the what-if sample must hold at least 1 sequence (got {n})")
    idx = np.arange(total) if total <= n else np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))
    axis = 1 if source.layout == "tbd" else 0
    array = np.ascontiguousarray(np.take(np.asarray(source.array), idx, axis=axis))
    lengths = None if source.lengths is None else np.asarray(source.lengths)[idx]
    note = () if len(idx) == total else (f"what-if sample: {len(idx)} of {total} sequences, evenly spaced",)
    return InputSource(
        array=array, layout=source.layout, path=source.path, lengths=lengths, probe=source.probe, notes=source.notes + note,
        padding=source.padding, mask_value=source.mask_value,
    )


# -- runs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhatIfOptions:
    """How the experiment runs.

    ``fixes``: only these fix ids are considered, and each runs even when its
    finding is absent; None: every fix whose finding is present.
    ``min_severity``: the level a finding must reach to make its fix applicable.
    """

    sample_size: int = DEFAULT_SAMPLE
    fixes: tuple[str, ...] | None = None
    engine: str = "auto"
    chunk_size: int | None = None  # None: as large as budget.FULL_RECORD_CHUNK_BYTES allows
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    min_severity: Severity = Severity.warning


@dataclass
class Run:
    """One capture of the sample with a set of fixes applied."""

    fixes: tuple[str, ...]  # canonical order
    descriptions: tuple[str, ...]
    metrics: dict[str, Any]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    state: State = field(repr=False)
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list, repr=False)  # for applicability; not serialised
    risks: tuple[str, ...] = ()  # weight codes (W1xx) reported at any severity: the static risk is still there
    encodings: np.ndarray | None = field(default=None, repr=False)  # (n, E) final encodings of the sample

    @property
    def badness(self) -> dict[str, float]:
        return badness(self.metrics)

    @property
    def objective(self) -> tuple[int, int, float, float]:
        b = self.badness
        return (len(self.errors), len(self.warnings), max(b.values()), float(np.mean(list(b.values()))))


def badness(metrics: dict[str, Any]) -> dict[str, float]:
    """Five scores in [0, 1], higher is worse (see the module docstring)."""
    def num(key, default=math.nan):
        v = metrics.get(key, default)
        return math.nan if v is None else float(v)

    def clip01(v):
        return 1.0 if not math.isfinite(v) else min(1.0, max(0.0, v))

    cell = num("max_abs_cell")
    return {
        "saturation": clip01(num("saturated_fraction")),
        "hidden_at_bound": clip01(num("hidden_at_bound_fraction")),
        "cell_growth": clip01(math.log10(max(cell, 1.0)) / 2.0) if math.isfinite(cell) else 1.0,
        "collapse": clip01(num("mean_pairwise_cosine")),
        "input_deafness": clip01(1.0 - num("input_variance_share")),
    }


def better(a: Run, b: Run) -> bool:
    """True when ``a``'s objective is strictly better than ``b``'s (lexicographic, with tolerance)."""
    oa, ob = a.objective, b.objective
    if oa[:2] != ob[:2]:
        return oa[:2] < ob[:2]
    if oa[2] < ob[2] - SCORE_TOLERANCE:
        return True
    if oa[2] > ob[2] + SCORE_TOLERANCE:
        return False
    return oa[3] < ob[3] - SCORE_TOLERANCE


def _sort_key(run: Run):
    o = run.objective
    return (o[0], o[1], round(o[2] / SCORE_TOLERANCE), round(o[3] / SCORE_TOLERANCE))


def run_metrics(cap) -> dict[str, Any]:
    metrics = dict(headline_metrics(cap))
    per_gate = {}
    for g in SIGMOID_GATES:
        sat = total = 0
        for st in cap.directions.values():
            gs = st.gates[g]
            sat += int(gs.left_tu.sum() + gs.right_tu.sum())
            total += st.n_values * st.H
        per_gate[g] = sat / max(total, 1)
    metrics["saturated_per_gate"] = per_gate
    metrics["encoding_mean_abs"] = cap.encoding.mean_abs()
    return metrics


def _full_record_chunk(model, T: int, n: int) -> int:
    """Sequences per chunk of full records (every step's intermediates) within the chunk budget."""
    per_sequence = budget.sequence_bytes(model, T, budget.FULL_RECORD_VALUES_PER_H)
    return budget.sequences_within(budget.FULL_RECORD_CHUNK_BYTES, per_sequence, n)


def _chunk_size(state: State, options: WhatIfOptions) -> int:
    return options.chunk_size or _full_record_chunk(state.model, state.source.T, state.source.n_sequences)


def check_budget(model, source, sample_size: int, max_memory=None) -> int:
    """Refuse, before the first run, an experiment whose capture would pass ``--max-memory``.

    Each run captures the evenly spaced sample (at most ``sample_size`` sequences) in
    chunks of full records (``_chunk_size``), keeping 64 sequences in full: the estimate
    of ``diagnose`` (``budget.check_capture``) with the chunk the experiment will use.
    """
    n = min(sample_size, source.n_sequences)
    return budget.check_capture(model, source, _full_record_chunk(model, source.T, n), min(64, n), max_memory)


def measure(state: State, fixes: tuple[str, ...], descriptions: tuple[str, ...], options: WhatIfOptions) -> Run:
    """Capture ``state``'s sample and analyze it."""
    started = time.perf_counter()
    n = state.source.n_sequences
    cap = capture(
        state.model,
        state.source,
        CaptureOptions(engine=options.engine, chunk_size=_chunk_size(state, options), sample_size=min(64, n), encoding_sample=n),
    )
    analysis = analyze(state.model, cap, options.analysis)
    errors = sorted({f.code for f in analysis.findings if f.severity == Severity.error})
    warnings = sorted({f.code for f in analysis.findings if f.severity == Severity.warning} - set(errors))
    metrics = run_metrics(cap)
    risks = tuple(sorted({f.code for f in analysis.findings if f.code.startswith("W")}))
    return Run(
        fixes, descriptions, metrics, tuple(errors), tuple(warnings), state, time.perf_counter() - started,
        analysis.findings, risks, np.asarray(cap.sample_encodings, dtype=np.float64),
    )


def output_change(run: Run, base: Run) -> float:
    """How far a fix moves the outputs on the sample: mean ‖e_fix − e_base‖ / mean ‖e_base‖
    over the final encodings of the same sequences (0 for the baseline itself)."""
    a, b = run.encodings, base.encodings
    if a is None or b is None or a.shape != b.shape or a.size == 0:
        return math.nan
    scale = float(np.mean(np.linalg.norm(b, axis=1)))
    return float(np.mean(np.linalg.norm(a - b, axis=1))) / max(scale, 1e-30)


def _relative_std(run: Run) -> float:
    m = run.metrics
    std, mean_abs = m.get("cross_input_std"), m.get("encoding_mean_abs")
    if std is None or mean_abs is None or not mean_abs > 0:
        return math.nan
    return float(std) / float(mean_abs)


def harm(run: Run, reference: Run) -> str | None:
    """Why ``run`` (a fix applied on ``reference``'s state) is harmful, or None.

    Harmful: on a model whose encodings do not collapse (no H601 on
    ``reference``), a fix that removes no error or warning about the
    behaviour, the inputs or the configuration makes the encodings less input-dependent (mean pairwise
    cosine up by more than ``HARM_COSINE``, or the cross-input std relative to
    mean |h_T| below ``HARM_STD_RATIO`` of its value); or the fix removes only
    findings about the weights (W1xx) while the behaviour gets worse (a
    behavioural code appears, or the mean badness rises).
    """
    reasons = []
    before = set(reference.errors) | set(reference.warnings)
    after = set(run.errors) | set(run.warnings)
    removed = before - after
    # A fix that removes an error or warning about the behaviour, the inputs or
    # the configuration (A2xx, C4xx, I5xx, S3xx, H6xx) has a measured benefit;
    # its cost is shown as output_change. The harm test is for fixes that buy
    # nothing but a quieter weight rule.
    behaviour_fixed = any(not c.startswith("W") for c in removed)
    if "H601" not in reference.errors and not behaviour_fixed:
        c0, c1 = reference.metrics.get("mean_pairwise_cosine"), run.metrics.get("mean_pairwise_cosine")
        s0, s1 = _relative_std(reference), _relative_std(run)
        cos_up = c0 is not None and c1 is not None and math.isfinite(c0) and math.isfinite(c1) and c1 - c0 > HARM_COSINE
        std_down = math.isfinite(s0) and math.isfinite(s1) and s0 > 0 and s1 < HARM_STD_RATIO * s0
        if cos_up or std_down:
            reasons.append(
                "the encodings become less input-dependent: mean pairwise cosine "
                f"{_fmt_metric('mean_pairwise_cosine', c0)} → {_fmt_metric('mean_pairwise_cosine', c1)}, "
                f"cross-input std {s0:.3g} → {s1:.3g} of mean |h_T|"
            )
    appeared = sorted(c for c in after - before if not c.startswith("W"))
    worse = run.objective[3] > reference.objective[3] + SCORE_TOLERANCE
    if removed and all(c.startswith("W") for c in removed) and (appeared or worse):
        reasons.append(
            f"it removes only findings about the weights ({', '.join(sorted(removed))}) while the behaviour gets worse"
            + (f" ({', '.join(appeared)} appear{'s' if len(appeared) == 1 else ''})" if appeared else
               f" (mean badness {reference.objective[3]:.3g} → {run.objective[3]:.3g})")
        )
    return "; ".join(reasons) or None


# -- the experiment ------------------------------------------------------------------------------


@dataclass
class Experiment:
    baseline: Run
    sample: dict[str, Any]
    considered: tuple[str, ...]  # fix ids applicable (or requested)
    alone: dict[str, Run]  # fix id -> run with that fix alone
    order: list[str]  # the root-cause ranking of ``alone`` (see ``root_cause_order``)
    not_run: dict[str, Outcome]  # fix id -> why it did not run (needs retraining, no effect)
    path: list[Run]  # cumulative runs, in order
    path_skipped: dict[str, str]  # fix id -> why it is not on the path
    ranking: list[dict[str, Any]]
    findings: list[dict[str, Any]]
    conclusions: list[str]
    seconds: float  # wall time (not in the JSON, which stays deterministic)
    captures: int = 0  # how many runs were captured (candidates included)
    harmful: dict[str, str] = field(default_factory=dict)  # fix id -> why it is harmful alone
    requested: tuple[str, ...] | None = None  # --fixes, if given

    @property
    def final(self) -> Run:
        return self.path[-1] if self.path else self.baseline

    def model_fixes(self) -> tuple[str, ...]:
        """The model-level fixes of the cumulative path (what ``--write-fixed`` writes)."""
        return tuple(f for f in self.final.fixes if FIXES[f].target == "model")

    def input_fixes(self) -> tuple[str, ...]:
        return tuple(f for f in self.final.fixes if FIXES[f].target == "inputs")


def run_experiment(
    model: LSTMModel,
    source: InputSource,
    options: WhatIfOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Experiment:
    """Baseline, each applicable fix alone, then the greedy cumulative path.

    ``progress(label)``, if given, is called before each capture (e.g. to show
    a status line); nothing is printed here.
    """
    options = options or WhatIfOptions()
    started = time.perf_counter()
    if source.D != model.D:
        raise InputError(f"inputs have D={source.D} features but the model's W expects D={model.D}", source.path)
    sample = sample_source(source, options.sample_size)
    base_state = State(model, sample)
    # One engine for every run: "auto" weighs the whole experiment (a baseline,
    # each fix alone and the cumulative path, about EXPECTED_CAPTURES captures
    # of the sample), not one capture, against the cost of loading a kernel.

    engine = resolve_engine(options.engine, model, sample.T, sample.n_sequences * EXPECTED_CAPTURES)
    options = replace(options, engine=engine)
    cache: dict[frozenset, Run | Outcome] = {}

    def run_set(fix_ids: Iterable[str]) -> Run | Outcome:
        key = frozenset(fix_ids)
        if key in cache:
            return cache[key]
        ordered = tuple(sorted(key, key=ORDER.__getitem__))
        state, outcomes = apply_fixes(base_state, ordered)
        if state is None:
            result: Run | Outcome = outcomes[-1]
        else:
            if progress is not None:
                progress(" + ".join(ordered) or "the model as loaded")
            result = measure(state, ordered, tuple(o.description for o in outcomes), options)
            base = cache.get(frozenset())
            result.metrics["output_change"] = 0.0 if base is None else output_change(result, base)
        cache[key] = result
        return result

    baseline = run_set(())
    requested = options.fixes
    candidates = tuple(requested) if requested is not None else tuple(FIXES)
    considered = tuple(
        fid for fid in candidates if requested is not None or FIXES[fid].applies(baseline.findings, options.min_severity)
    )

    alone: dict[str, Run] = {}
    not_run: dict[str, Outcome] = {}
    for fid in considered:
        out = FIXES[fid].apply(base_state)
        if out.state is None or not out.changed:
            not_run[fid] = out
            continue
        alone[fid] = run_set((fid,))

    harmful = {fid: why for fid, run in alone.items() if (why := harm(run, baseline))}
    order = root_cause_order(alone, baseline, harmful)

    # Greedy cumulative path: root causes first, then the best objective.
    path: list[Run] = []
    path_skipped: dict[str, str] = {}
    current = baseline
    applied: list[str] = []
    while True:
        pool = [
            fid
            for fid in FIXES
            if fid not in applied
            and fid not in not_run
            and (fid in alone or (requested is None and FIXES[fid].applies(current.findings, options.min_severity)))
        ]
        runs: dict[str, Run] = {}
        for fid in pool:
            out = FIXES[fid].apply(current.state)
            if out.state is None:
                not_run.setdefault(fid, out)
                continue
            if not out.changed:
                path_skipped.setdefault(fid, f"no effect once {' + '.join(applied)} is applied: {out.description}")
                continue
            run = run_set(applied + [fid])
            if isinstance(run, Run):
                why = harmful.get(fid) or harm(run, current)
                if why:  # never on the path: it would be sold as progress
                    path_skipped[fid] = "harmful: " + why
                    continue
                runs[fid] = run
        step = next((f for f in root_cause_order(runs, current) if better(runs[f], current)), None)
        if step is None:
            break
        applied.append(step)
        path.append(runs[step])
        current = runs[step]
        path_skipped.pop(step, None)
    for fid in alone:
        if fid not in applied and fid not in path_skipped:
            path_skipped[fid] = "does not improve the objective once " + (" + ".join(applied) or "nothing") + " is applied"

    exp = Experiment(
        baseline=baseline,
        sample={
            "sequences": sample.n_sequences,
            "of": source.n_sequences,
            "selection": "all" if sample.n_sequences == source.n_sequences else "evenly spaced",
            "T": sample.T,
            "D": sample.D,
            "layout": sample.layout,
        },
        considered=considered,
        alone=alone,
        order=order,
        not_run=not_run,
        path=path,
        path_skipped=path_skipped,
        ranking=[],
        findings=[],
        conclusions=[],
        seconds=0.0,
    )
    exp.harmful = harmful
    exp.requested = requested
    exp.ranking = rank(exp)
    exp.findings = resolved_findings(exp)
    exp.conclusions = conclusions(exp)
    exp.seconds = time.perf_counter() - started
    exp.captures = sum(isinstance(r, Run) for r in cache.values())
    return exp


def explains(a: str, b: str, runs: dict[str, Run], current: Run) -> bool:
    """Fix ``a`` explains fix ``b`` (on the state of ``current``): ``a``'s run removes every
    code of ``b`` present on ``current``, while ``b``'s run leaves one of ``a``'s codes.

    Case study (docs/case-study.md): centering removes W102 (U's norm came from its mean), but rescaling U
    leaves W101, so the recurrent gain is a symptom of the mean offset.
    """
    pa = _present(FIXES[a].codes, current)
    pb = _present(FIXES[b].codes, current)
    if not pa or not pb:
        return False
    # b leaves a's codes if they are still reported at any severity: a weight
    # finding that b's run turns into info (the scan no longer confirms it) is
    # still b's run's risk, so centering still explains rescaling on docs/case-study.md.
    return not _present(pb, runs[a]) and bool(_present(pa, runs[b], risks=True))


def root_cause_order(runs: dict[str, Run], current: Run, harmful: dict[str, str] | None = None) -> list[str]:
    """Fix ids by the objective of their run (best first), except that a fix
    explained by another one comes after it (root causes first), and harmful
    fixes (``harm``) come last: never a root cause."""
    harmful = harmful or {}
    remaining = sorted(runs, key=lambda f: (f in harmful, _sort_key(runs[f]), ORDER[f]))
    out = []
    while remaining:
        useful = [f for f in remaining if f not in harmful]
        pool = useful or remaining
        free = [f for f in pool if not any(explains(g, f, runs, current) for g in pool if g != f and g not in harmful)]
        pick = (free or pool)[0]
        out.append(pick)
        remaining.remove(pick)
    return out


def _present(codes: Iterable[str], run: Run, risks: bool = False) -> list[str]:
    remaining = set(run.errors) | set(run.warnings) | (set(run.risks) if risks else set())
    return [c for c in codes if c in remaining]


def path_steps(exp: Experiment) -> list[dict[str, Any]]:
    """Per cumulative step: the fix added and the error/warning codes that step removed."""
    out = []
    before = exp.baseline
    for n, run in enumerate(exp.path):
        added = [f for f in run.fixes if f not in before.fixes]
        gone = sorted((set(before.errors) | set(before.warnings)) - (set(run.errors) | set(run.warnings)))
        out.append({"step": n + 1, "fix": added[0], "fixes": list(run.fixes), "removes": gone})
        before = run
    return out


def rank(exp: Experiment) -> list[dict[str, Any]]:
    """The root-cause ranking: fixes by the improvement of their run alone (``exp.order``).

    Each entry says what the fix removes alone, which lower-ranked fixes it
    explains, whether a higher-ranked fix makes its findings irrelevant, and
    what it removes on the cumulative path.
    """
    base = exp.baseline
    base_codes = set(base.errors) | set(base.warnings)
    ordered = exp.order
    steps = {s["fix"]: s for s in path_steps(exp)}
    out = []
    for n, fid in enumerate(ordered):
        run = exp.alone[fid]
        codes = set(run.errors) | set(run.warnings)
        addressed = _present(FIXES[fid].codes, base)
        notes = []
        entry: dict[str, Any] = {
            "rank": None if fid in exp.harmful else n + 1 - sum(g in exp.harmful for g in ordered[:n]),
            "fix": fid,
            "codes": list(FIXES[fid].codes),
            "present": addressed,
            "removes": sorted(base_codes - codes),
            "removes_errors": sorted(set(base.errors) - codes),
            "downgrades": sorted(set(base.errors) & set(run.warnings)),
            "introduces": sorted(codes - base_codes),
            "errors_left": len(run.errors),
            "warnings_left": len(run.warnings),
            "worst_metric": _worst(run),
            "improves": better(run, base) and fid not in exp.harmful,
            "harmful": fid in exp.harmful,
            "harm": exp.harmful.get(fid),
            "output_change": run.metrics.get("output_change"),
            "explains": [] if fid in exp.harmful else [
                g for g in ordered if g != fid and g not in exp.harmful and explains(fid, g, exp.alone, base)
            ],
            "irrelevant_after": None,
            "on_path": fid in exp.final.fixes,
            "path_step": steps[fid]["step"] if fid in steps else None,
            "path_removes": steps[fid]["removes"] if fid in steps else [],
            "note": "",
        }
        if fid in exp.harmful:
            notes.append(f"HARMFUL, not a root cause: {exp.harmful[fid]}")
        for higher in ordered[:n]:
            if higher in exp.harmful:
                continue
            if addressed and not _present(addressed, exp.alone[higher]):
                entry["irrelevant_after"] = higher
                notes.append(f"{', '.join(addressed)} disappear{'s' if len(addressed) == 1 else ''} when {higher} is applied alone")
                break
        if fid in steps:
            step = steps[fid]
            prior = exp.path[step["step"] - 2] if step["step"] > 1 else base
            if addressed and not _present(addressed, prior):
                notes.append(
                    f"{', '.join(addressed)} already gone after {' + '.join(prior.fixes)}; "
                    "on the path because it still improves the objective"
                )
            extra = [c for c in step["removes"] if c not in entry["removes"]]
            if extra and step["step"] > 1:
                notes.append(f"after {' + '.join(prior.fixes)} it also removes {', '.join(extra)}")
        elif fid in exp.path_skipped and fid not in exp.harmful:
            end = exp.final
            if addressed and not _present(addressed, end) and entry["irrelevant_after"] is None:
                entry["irrelevant_after"] = " + ".join(end.fixes)
            notes.append("not on the cumulative path: " + exp.path_skipped[fid])
        if not entry["improves"] and fid not in exp.harmful:
            notes.append("does not improve the objective alone")
        change = run.metrics.get("output_change")
        if change is not None and math.isfinite(change):
            notes.append(f"moves the final encodings by {change:.2g} of their norm")
        entry["note"] = "; ".join(notes)
        out.append(entry)
    for fid, why in exp.not_run.items():
        out.append(
            {
                "rank": None,
                "fix": fid,
                "codes": list(FIXES[fid].codes),
                "present": _present(FIXES[fid].codes, base),
                "removes": [],
                "removes_errors": [],
                "downgrades": [],
                "introduces": [],
                "errors_left": None,
                "warnings_left": None,
                "worst_metric": None,
                "improves": None,
                "harmful": False,
                "harm": None,
                "output_change": None,
                "explains": [],
                "irrelevant_after": None,
                "on_path": False,
                "path_step": None,
                "path_removes": [],
                "note": why.needs or f"not run: {why.description}",
            }
        )
    return out


def _worst(run: Run) -> dict[str, Any]:
    b = run.badness
    name = max(b, key=b.get)
    return {"name": name, "score": b[name]}


def resolved_findings(exp: Experiment) -> list[dict[str, Any]]:
    """For each error or warning code of the baseline: which fix removes it alone, and where on the path it goes."""
    base = exp.baseline
    out = []
    for severity, codes in (("error", base.errors), ("warning", base.warnings)):
        for code in codes:
            alone = [fid for fid, run in exp.alone.items() if fid not in exp.harmful and not _present([code], run)]
            alone.sort(key=exp.order.index)
            step = next((i for i, r in enumerate(exp.path) if not _present([code], r)), None)
            fixers = [fid for fid, fx in FIXES.items() if code in fx.codes]
            needs = [exp.not_run[f].needs for f in fixers if f in exp.not_run and exp.not_run[f].needs]
            out.append(
                {
                    "code": code,
                    "severity": severity,
                    "removed_alone_by": alone,
                    "removed_on_path_by": None if step is None else list(exp.path[step].fixes),
                    "remains": step is None,
                    "needs": needs[0] if needs else None,
                }
            )
    return out


def _fmt_metric(key: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if key in ("saturated_fraction", "hidden_at_bound_fraction"):
        return f"{value:.1%}"
    if key == "input_variance_share":
        return f"{value:.2%}"
    if key == "mean_pairwise_cosine":
        return f"{value:.4f}" if value < 0.9995 else f"{value:.6f}"
    return f"{value:.3g}"


SYMPTOM_METRICS = {
    "S301": "saturated_fraction",
    "S302": "hidden_at_bound_fraction",
    "S303": "saturated_fraction",
    "C401": "max_abs_cell",
    "H601": "mean_pairwise_cosine",
    "H603": "mean_pairwise_cosine",
    "H604": "mean_pairwise_cosine",
    "I501": "input_variance_share",
}


METRIC_LABELS = {
    "saturated_fraction": "saturated gate values",
    "max_abs_cell": "max |c|",
    "hidden_at_bound_fraction": "hidden values at a bound",
    "mean_pairwise_cosine": "mean pairwise cosine",
    "cross_input_std": "cross-input std",
    "input_variance_share": "input share of variance",
}


def conclusions(exp: Experiment) -> list[str]:
    """Measured statements, root causes first: which change removes which error
    code (alone, or only in combination), what cannot be run, and the end state."""
    def names(codes):
        return ", ".join(f"{c} ({RULES[c].name})" if c in RULES else c for c in codes)

    base = exp.baseline
    alone: dict[str, list[dict]] = {}
    path: dict[tuple, list[str]] = {}
    remains: dict[str, list[str]] = {}
    for item in exp.findings:
        if item["severity"] != "error":
            continue
        if item["removed_alone_by"]:
            alone.setdefault(item["removed_alone_by"][0], []).append(item)
        elif item["removed_on_path_by"]:
            path.setdefault(tuple(item["removed_on_path_by"]), []).append(item["code"])
        else:
            remains.setdefault(item["needs"] or "", []).append(item["code"])
    out = []
    for fid, why in exp.harmful.items():
        change = exp.alone[fid].metrics.get("output_change")
        out.append(
            f"{fid} is harmful here: {why}"
            + (f"; it moves the final encodings by {change:.2g} of their norm" if change is not None and math.isfinite(change) else "")
            + ". It is not a root cause; do not apply it to a model that works."
        )
    for fid in sorted(alone, key=exp.order.index):
        items = alone[fid]
        codes = [i["code"] for i in items]
        run = exp.alone[fid]
        also: dict[str, list[str]] = {}
        for i in items:
            for other in i["removed_alone_by"][1:]:
                also.setdefault(other, []).append(i["code"])
        text = f"{fid} alone removes {names(codes)}{_evidence(codes, base, run)}"
        if also:
            text += " (" + "; ".join(f"{other} alone also removes {', '.join(c)}" for other, c in also.items()) + ")"
        if run.errors:
            text += f"; errors left: {', '.join(run.errors)}"
            if "H601" in run.errors:
                m = run.metrics
                text += (
                    f" (encodings still collapse: mean pairwise cosine "
                    f"{_fmt_metric('mean_pairwise_cosine', m['mean_pairwise_cosine'])}, mean |h_T| "
                    f"{_fmt_metric('encoding_mean_abs', m.get('encoding_mean_abs'))})"
                )
        out.append(text + ".")
    for fixes, codes in sorted(path.items(), key=lambda kv: len(kv[0])):
        run = next(r for r in exp.path if r.fixes == fixes)
        out.append(f"No single fix removes {names(codes)}; {' + '.join(fixes)} does{_evidence(codes, base, run)}.")
    for needs, codes in remains.items():
        verb = "remains" if len(codes) == 1 else "remain"
        out.append(f"{names(codes)} {verb} after every fix that could run" + (f" ({needs})." if needs else "."))
    if exp.path:
        end = exp.final
        m = end.metrics
        left = list(end.errors) + list(end.warnings)
        out.append(
            f"With {' + '.join(step['fix'] for step in path_steps(exp))}: "
            + ", ".join(f"{METRIC_LABELS[k]} {_fmt_metric(k, m[k])}" for k in METRIC_LABELS)
            + "; "
            + (f"still reported: {', '.join(left)}." if left else "no error or warning remains.")
        )
    for fid, why in exp.not_run.items():
        if why.needs:
            out.append(f"{fid} ({', '.join(FIXES[fid].codes)}) was not run: {why.needs}.")
    return out


def _evidence(codes: list[str], base: Run, run: Run) -> str:
    keys = []
    for c in codes:
        k = SYMPTOM_METRICS.get(c)
        if k and k not in keys:
            keys.append(k)
    if not keys:
        return ""
    return ": " + ", ".join(
        f"{METRIC_LABELS[k]} {_fmt_metric(k, base.metrics[k])} → {_fmt_metric(k, run.metrics[k])}" for k in keys
    )


def harmful_requested(exp: Experiment) -> list[str]:
    """Model-level fixes named with --fixes that the experiment found harmful (kept off the path)."""
    return [f for f in (exp.requested or ()) if f in exp.harmful and FIXES[f].target == "model"]


def write_plan(
    exp: Experiment, origin: str = "", force: Iterable[str] = ()
) -> tuple[LSTMModel, tuple[str, ...], dict[str, np.ndarray]]:
    """What ``--write-fixed`` writes: the model with the path's model-level fixes
    applied, the notes for its spec, and the parameters of the path's input fixes
    (which belong to the data pipeline, not to the weights).

    Raises ``ConfigError`` when the cumulative path holds no model-level fix.
    """
    force = tuple(f for f in force if f not in exp.final.fixes)
    fixes = tuple(sorted(set(exp.model_fixes()) | set(force), key=ORDER.__getitem__))
    if not fixes:
        raise ConfigError(
            "no model-level fix is on the cumulative path (nothing to write); "
            + ("the path holds only input fixes: " + ", ".join(exp.input_fixes()) if exp.input_fixes() else "no fix improved the model")
        )
    base = exp.baseline.state
    applied = tuple(sorted(set(exp.final.fixes) | set(force), key=ORDER.__getitem__))
    state, outcomes = apply_fixes(base, applied)
    model = state.model  # its notes name each model-level fix (input fixes note the source)
    notes = [
        f"written by lstm-doctor what-if{' from ' + origin if origin else ''}: "
        f"{' + '.join(fixes)} applied to the weights; a starting point for retraining, not a trained model",
    ]
    for fid in force:
        notes.append(f"WARNING: {fid} was measured harmful on the what-if sample ({exp.harmful.get(fid)}); written because --fixes named it")
    arrays: dict[str, np.ndarray] = {}
    for fid, out in zip(applied, outcomes):
        if FIXES[fid].target != "inputs":
            continue
        if fid == "standardize-inputs":
            arrays["mean"] = np.asarray(out.data["mean"], dtype=np.float64)
            arrays["std"] = np.asarray(out.data["std"], dtype=np.float64)
            notes.append(
                "the what-if path also standardised the inputs (standardize-inputs): feed this model "
                "(x − mean)/std per feature, with mean and std from input_fixes.npz (what-if sample statistics)"
            )
        elif fid == "rescale-inputs":
            arrays["rms"] = np.asarray(out.data["rms"], dtype=np.float64)
            notes.append("the what-if path also divided the inputs by their RMS (rescale-inputs; rms in input_fixes.npz)")
        elif fid == "mask-padding":
            notes.append("the what-if path also masked trailing all-zero steps (mask-padding): pass the true lengths")
        elif fid == "swap-time-axis":
            notes.append(f"the what-if path read the inputs with time and features swapped (layout {state.source.layout})")
    return model, tuple(notes), arrays


# -- JSON ------------------------------------------------------------------------------------------


def _run_entry(run: Run, fix: str, cumulative: bool, step: int | None = None) -> dict[str, Any]:
    return {
        "fix": fix,
        "fixes": list(run.fixes),
        "codes": list(FIXES[fix].codes) if fix in FIXES else [],
        "cumulative": cumulative,
        "step": step,
        "status": "baseline" if fix == "none" else "measured",
        "applied": "; ".join(run.descriptions) if run.descriptions else "nothing: the model and inputs as given",
        "metrics": run.metrics,
        "remaining_codes": sorted(set(run.errors) | set(run.warnings)),
        "remaining_errors": list(run.errors),
        "remaining_warnings": list(run.warnings),
        "harm": None,
        "objective": {
            "errors": len(run.errors),
            "warnings": len(run.warnings),
            "worst": _worst(run),
            "mean_badness": run.objective[3],
            "badness": run.badness,
        },
    }


def experiment_dict(exp: Experiment) -> dict[str, Any]:
    """``{"what_if": [...runs...], "what_if_ranking": {...}}``, JSON-able (see ``report.build.clean``).

    ``what_if`` lists the baseline (``fix`` "none"), every fix alone
    (``cumulative`` false), the fixes that could not run (``status``
    "needs-retraining" or "no-effect", no metrics), then the cumulative path
    (``cumulative`` true; ``fix`` is the fix added at that step and ``fixes``
    all fixes applied so far).
    """
    rows = [_run_entry(exp.baseline, "none", False)]
    for fid in exp.order:
        row = _run_entry(exp.alone[fid], fid, False)
        row["harm"] = exp.harmful.get(fid)
        rows.append(row)
    for fid, out in exp.not_run.items():
        rows.append(
            {
                "fix": fid,
                "fixes": [fid],
                "codes": list(FIXES[fid].codes),
                "cumulative": False,
                "step": None,
                "status": "needs-retraining" if out.needs else "no-effect",
                "applied": out.description,
                "needs": out.needs,
                "metrics": None,
                "remaining_codes": None,
                "remaining_errors": None,
                "remaining_warnings": None,
            }
        )
    added = []
    for n, run in enumerate(exp.path):
        new = [f for f in run.fixes if f not in added]
        added.extend(new)
        rows.append(_run_entry(run, new[0], True, n + 1))
    summary = {
        "sample": exp.sample,
        "harmful": dict(exp.harmful),
        "objective": (
            "harmful fixes first set apart (on a model without H601: mean pairwise cosine up by more than "
            f"{HARM_COSINE}, or cross-input std / mean |h_T| below {HARM_STD_RATIO} of its value; or only weight "
            "findings removed while the behaviour gets worse): never ranked as a root cause nor on the path; then "
            "lexicographic: (1) error codes remaining, (2) warning codes remaining, (3) the worst of the "
            "badness scores saturation, hidden_at_bound, cell_growth = min(1, log10(max|c|)/2), collapse = "
            "mean pairwise cosine, input_deafness = 1 − input variance share, (4) their mean; scores must "
            f"improve by more than {SCORE_TOLERANCE} to count. Root causes first: a fix whose findings another "
            "candidate removes (while it does not remove that candidate's findings) ranks, and is chosen, after it"
        ),
        "considered": list(exp.considered),
        "ranking": exp.ranking,
        "findings": exp.findings,
        "path": path_steps(exp),
        "path_skipped": exp.path_skipped,
        "model_fixes": list(exp.model_fixes()),
        "input_fixes": list(exp.input_fixes()),
        "conclusions": exp.conclusions,
        "captures": exp.captures,
    }
    return clean({"what_if": rows, "what_if_ranking": summary})



def add_what_if(report: dict, model: LSTMModel, source: InputSource, options: WhatIfOptions | None = None) -> dict:
    """A copy of ``report`` (from ``build_report``) with the ``what_if`` and
    ``what_if_ranking`` sections added."""
    exp = run_experiment(model, source, options or WhatIfOptions())
    return {**report, **experiment_dict(exp)}


__all__ = [
    "FIXES",
    "Fix",
    "State",
    "Outcome",
    "WhatIfOptions",
    "Experiment",
    "Run",
    "run_experiment",
    "experiment_dict",
    "add_what_if",
    "apply_fixes",
    "fixed_model",
    "sample_source",
    "parse_fix_ids",
    "badness",
    "better",
]
