"""The stats stage: streaming, mergeable reducers over captured records.

A reducer sees one chunk of sequences at a time (a ``StepRecord`` with arrays
(T, B, ·), time-major) and keeps only sums, counts, extrema and small
(T, H)/(H, H) tables, so memory does not depend on the number of sequences.
Two reducers over disjoint sets of sequences ``merge`` into the reducer of
their union: every field is a sum, a count, a min or a max (all associative),
which is what lets a later multi-process or multi-machine run shard sequences
freely. Accumulation is in float64 whatever the model's dtype.

Notation: N sequences, T steps, H units, D features; "valid" values are those
whose step is within its sequence's length (all of them without lengths).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from dataclasses import replace as dataclass_replace

import numpy as np

from lstm_doctor.capture.numpy_loop import (
    STEP_ORDER,
    StepRecord,
    block_steps,
    step_permutation,
)
from lstm_doctor.model import SIGMOID_GATES, DirectionParams, Layer

# |z| beyond which σ(z) is within 0.01 of 0 or 1 (docs/rules.md).
LINEAR_RANGE = 4.6


@dataclass(frozen=True)
class StatsConfig:
    """Definitions the reducers need while streaming (not rule thresholds).

    sat_low / sat_high: a gate value is left- / right-saturated below / above
        these (Karpathy, Johnson & Fei-Fei 2015).
    bound_tol: a value is "at a bound" within this fraction of the range.
    preact_limit: |z| past which a sigmoid gate is pinned (σ(4.6) = 0.99).
    """

    sat_low: float = 0.1
    sat_high: float = 0.9
    bound_tol: float = 0.01
    preact_limit: float = LINEAR_RANGE


def _zeros(*shape, dtype=np.float64):
    return np.zeros(shape, dtype=dtype)


def _merge_field(name: str, a, b):
    if name.startswith("min_"):
        return np.minimum(a, b)
    if name.startswith("max_"):
        return np.maximum(a, b)
    if name.startswith("first_"):
        # -1 means "never"; keep the earliest real step.
        if a < 0:
            return b
        return a if b < 0 else min(a, b)
    return a + b


class Mergeable:
    """Reducers whose every numeric field merges by sum / min / max / first."""

    def merge(self, other):
        for f in fields(self):
            if f.metadata.get("static"):
                continue
            setattr(self, f.name, _merge_field(f.name, getattr(self, f.name), getattr(other, f.name)))
        return self


def _static(default=None):
    return field(default=default, metadata={"static": True})


@dataclass
class GateStats(Mergeable):
    """Saturation of one sigmoid-type gate (i, f or o) over units and steps.

    left_tu / right_tu (T, H): how many sequences had the gate below sat_low /
    above sat_high at step t for unit u. sum_tu / sumsq_tu (T, H): moments
    across sequences, so the cross-input std of each (step, unit) is known.
    switch_u (H): transitions between the left / middle / right states from
    one step to the next (a switching gate changes with its input).
    """

    left_tu: np.ndarray
    right_tu: np.ndarray
    sum_tu: np.ndarray
    sumsq_tu: np.ndarray
    switch_u: np.ndarray
    transitions: int = 0  # number of (t-1, t, sequence) pairs examined per unit

    @classmethod
    def empty(cls, T: int, H: int) -> "GateStats":
        return cls(
            _zeros(T, H, dtype=np.int64),
            _zeros(T, H, dtype=np.int64),
            _zeros(T, H),
            _zeros(T, H),
            _zeros(H, dtype=np.int64),
        )

@dataclass
class TermStats(Mergeable):
    """Moments of the pre-activation and its terms, per gate block (4,).

    input (x·W), recurrent (h·U), peephole (p·c) and total z; bias energy is
    known statically. ``over_input`` counts values where the input term alone
    has |x·W| > preact_limit; ``over_total`` where |z| does.
    """

    sum_input: np.ndarray = field(default_factory=lambda: _zeros(4))
    sumsq_input: np.ndarray = field(default_factory=lambda: _zeros(4))
    sum_recurrent: np.ndarray = field(default_factory=lambda: _zeros(4))
    sumsq_recurrent: np.ndarray = field(default_factory=lambda: _zeros(4))
    sum_peephole: np.ndarray = field(default_factory=lambda: _zeros(4))
    sumsq_peephole: np.ndarray = field(default_factory=lambda: _zeros(4))
    sum_total: np.ndarray = field(default_factory=lambda: _zeros(4))
    sumsq_total: np.ndarray = field(default_factory=lambda: _zeros(4))
    over_input: np.ndarray = field(default_factory=lambda: _zeros(4, dtype=np.int64))
    over_total: np.ndarray = field(default_factory=lambda: _zeros(4, dtype=np.int64))
    count: int = 0  # valid values per gate block (steps × sequences × H)

    def mean(self, term: str) -> np.ndarray:
        return getattr(self, f"sum_{term}") / max(self.count, 1)

    def mean_square(self, term: str) -> np.ndarray:
        return getattr(self, f"sumsq_{term}") / max(self.count, 1)

    def variance(self, term: str) -> np.ndarray:
        return np.maximum(self.mean_square(term) - self.mean(term) ** 2, 0.0)


@dataclass
class DirectionStats(Mergeable):
    """Everything the dynamic analyzers need about one (layer, direction)."""

    layer: int = _static(0)
    direction: str = _static("fwd")
    T: int = _static(0)
    H: int = _static(0)
    config: StatsConfig = _static(StatsConfig())
    n_sequences: int = 0
    valid_t: np.ndarray | None = None  # (T,) valid sequences per step
    gates: dict | None = _static(None)  # name -> GateStats (merged explicitly)
    terms: TermStats | None = _static(None)
    # candidate g and act(c) at their bounds, per step
    g_at_bound_t: np.ndarray | None = None
    actc_at_bound_t: np.ndarray | None = None
    h_at_bound_t: np.ndarray | None = None
    # hidden and cell moments
    sum_h_tu: np.ndarray | None = None  # (T, H) moments across sequences
    sumsq_h_tu: np.ndarray | None = None
    sum_c_t: np.ndarray | None = None
    sum_abs_c_t: np.ndarray | None = None
    max_abs_c_t: np.ndarray | None = None
    min_h: float = np.inf
    max_h: float = -np.inf
    c_negative: int = 0
    c_positive: int = 0
    # ‖h_t − h_{t−1}‖ per step: max and sum over sequences
    max_dh_t: np.ndarray | None = None
    sum_dh_t: np.ndarray | None = None
    # first step (processing order) with a NaN or Inf in a gate, c or h
    first_nonfinite_step: int = -1
    nonfinite_count: int = 0

    @classmethod
    def empty(cls, layer: int, direction: str, T: int, H: int, cfg: StatsConfig):
        return cls(
            layer=layer,
            direction=direction,
            T=T,
            H=H,
            config=cfg,
            valid_t=_zeros(T, dtype=np.int64),
            gates={g: GateStats.empty(T, H) for g in SIGMOID_GATES},
            terms=TermStats(),
            g_at_bound_t=_zeros(T, dtype=np.int64),
            actc_at_bound_t=_zeros(T, dtype=np.int64),
            h_at_bound_t=_zeros(T, dtype=np.int64),
            sum_h_tu=_zeros(T, H),
            sumsq_h_tu=_zeros(T, H),
            sum_c_t=_zeros(T),
            sum_abs_c_t=_zeros(T),
            max_abs_c_t=_zeros(T),
            max_dh_t=_zeros(T),
            sum_dh_t=_zeros(T),
        )

    def merge(self, other: "DirectionStats"):
        super().merge(other)
        for g in self.gates:
            self.gates[g].merge(other.gates[g])
        self.terms.merge(other.terms)
        return self

    # -- update -----------------------------------------------------------
    def reducer(
        self,
        B: int,
        mask: np.ndarray | None,
        layer: Layer,
        h0: np.ndarray,
        dtype=np.float32,
        params: DirectionParams | None = None,
    ) -> "DirectionReducer":
        """A step observer that folds one chunk of B sequences into these statistics.

        Feed it every step (``reference.run_direction(..., observer=...)`` does,
        or ``update`` from a finished record), then call ``finish()``. With
        ``params`` (the direction's weights) some sums follow by linearity.

        With a projection (LSTMP) the reducer's "h" is the H-wide cell output
        m_t before it (``numpy_loop.StepObserver``), with m_{-1} = 0; the sums
        by linearity (which read Σ h_{t−1}·U) are then not used.
        """
        if layer.projected:
            h0, params = np.zeros(layer.H), None
        return DirectionReducer(self, B, mask, layer, h0, dtype, params)

    def update(self, rec: StepRecord, mask: np.ndarray | None, layer: Layer, h0: np.ndarray):
        """Fold a full record (capture "full") of one chunk into the statistics."""
        T, B, H = rec.T, rec.B, self.H
        dtype = rec.h.dtype
        reducer = self.reducer(B, mask, layer, h0, dtype)
        if layer.projected:  # the per-unit "h" is the cell output before the projection
            h0, rec = np.zeros(H), dataclass_replace(rec, h=rec.m)
        perm = step_permutation(H)
        cell_output = layer.activations.get("cell_output").fn
        steps = block_steps(B, H, T, rec.peephole_term is not None)
        previous = np.broadcast_to(h0, (B, H)).astype(dtype)
        for t0 in range(0, T, steps):
            ts = slice(t0, min(t0 + steps, T))
            act = np.concatenate([rec.gate(name)[ts] for name in STEP_ORDER], axis=2)
            xw, rc, z, pt = (
                None if arr is None else np.take(arr[ts], perm, axis=2)
                for arr in (rec.input_term, rec.recurrent_term, rec.preact, rec.peephole_term)
            )
            c, h = rec.c[ts], rec.h[ts]
            reducer.block(t0, None, xw, rc, pt, z, act, cell_output(c), c, h, previous)
            previous = h[-1]
        reducer.finish()

    # -- derived statistics ---------------------------------------------
    @property
    def n_values(self) -> int:
        """Valid (step, sequence) pairs."""
        return int(self.valid_t.sum())

    def mean_h_t(self) -> np.ndarray:
        return self.sum_h_tu.sum(axis=1) / np.maximum(self.valid_t * self.H, 1)

    def mean_c_t(self) -> np.ndarray:
        return self.sum_c_t / np.maximum(self.valid_t * self.H, 1)

    def mean_abs_c_t(self) -> np.ndarray:
        return self.sum_abs_c_t / np.maximum(self.valid_t * self.H, 1)

    def std_h_u(self) -> np.ndarray:
        """(H,) std of each unit's h over all valid steps and sequences."""
        n = max(self.n_values, 1)
        mean = self.sum_h_tu.sum(axis=0) / n
        return np.sqrt(np.maximum(self.sumsq_h_tu.sum(axis=0) / n - mean**2, 0.0))

    def cross_input_std_h(self) -> np.ndarray:
        """(T, H) std of h across sequences at each step and unit."""
        return cross_input_std(self.sum_h_tu, self.sumsq_h_tu, self.valid_t)


def _count_dtype(B: int):
    """The narrowest unsigned integer that holds a count of B flags."""
    return np.uint8 if B <= 255 else np.uint16 if B <= 65535 else np.int64


class DirectionReducer:
    """Folds one chunk of B sequences into a ``DirectionStats``, a block of steps at a time.

    A ``reference.StepObserver``: the NumPy engine hands it its buffers every
    few steps (``block``), while they are still in cache, so no (T, B, ·)
    array is stored or read back; ``step`` is the same for one step. It writes
    a few (·H,)- or (B,)-sized rows per step into small (T, ·) chunk tables,
    and ``finish`` folds them into the statistics:

    - moments per (step, unit) of i, f, o and h: float32 sums of the
      deviations d = v − r from the step's first valid row r and of d², so
      that a large mean costs no precision (the case study's gates sit at 1 with a
      cross-input std of 1e-8); Σv = n·r + Σd and Σv² = n·r² + 2r·Σd + Σd²
      are assembled in float64;
    - counts per (step, unit) as sums of uint8 flags over the sequences, and
      transitions of the saturation state in a (B, 3H) uint8 table;
    - per gate block: sums of squares of the pre-activation terms (float32
      per step, float64 across steps); their sums by linearity when the
      weights are known and there is no mask (Σ x·W = (Σ x)·W,
      Σ h_{t−1}·U = (Σ h_{t−1})·U, z adds b); counts of |value| >
      preact_limit, skipped for blocks whose extremes are within the limit.

    Without a mask there is no masking work at all; with one, invalid rows are
    zeroed or excluded, with the same definitions as ``GateStats`` and
    ``TermStats``. Stacked arrays arrive in ``reference.STEP_ORDER`` (i, f, o, g).
    """

    def __init__(self, stats: DirectionStats, B: int, mask, layer: Layer, h0, dtype, params=None):
        self.stats = st = stats
        self.cfg = stats.config
        self.B = B
        self.dtype = dtype = np.dtype(dtype)
        T, H = stats.T, stats.H
        self.T, self.H = T, H
        H3, H4 = 3 * H, 4 * H
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        self.h0 = np.asarray(h0, dtype=np.float64)
        st.n_sequences += B
        if self.mask is None:
            st.valid_t += B
            st.terms.count += T * B * H
        else:
            per_step = self.mask.sum(axis=1)
            st.valid_t += per_step
            st.terms.count += int(per_step.sum()) * H
        # Sums by linearity need the weights and every row valid.
        self.params = params if self.mask is None else None
        self.count_dtype = _count_dtype(B)
        # chunk tables, one row per step
        self.ref = np.zeros((T, H4), dtype)  # first valid row of i, f, o, h
        self.dev_sum = np.zeros((T, H4))  # Σ_b (v − r)
        self.dev_sumsq = np.zeros((T, H4))  # Σ_b (v − r)²
        self.n_valid = np.full(T, B) if self.mask is None else self.mask.sum(axis=1)
        self.c_sum = np.zeros(T)
        self.c_abs_sum = np.zeros(T)
        self.max_abs_c = np.zeros(T)
        self.left = np.zeros((T, H3), np.int64)  # columns i, f, o
        self.right = np.zeros((T, H3), np.int64)
        self.terms = ["input", "recurrent", "total"]
        self.term_sumsq = {name: np.zeros((T, H4)) for name in self.terms}
        self.term_sum = {}
        if self.params is None:
            self.term_sum = {name: np.zeros((T, H4)) for name in self.terms}
        else:
            self.x_sum = np.zeros((T, params.D))
            if layer.clip is not None:
                self.term_sum["total"] = np.zeros((T, H4))
        self.over = {name: np.zeros((T, H4), np.int64) for name in ("input", "total")}
        self.over_seen = {name: False for name in self.over}
        self.dh2 = np.zeros((T, B))  # Σ_h (h_t − h_{t−1})² per sequence
        self.g_bound = np.zeros(T, np.int64)
        self.actc_bound = np.zeros(T, np.int64)
        self.h_bound = np.zeros(T, np.int64)
        self.c_negative = self.c_positive = 0
        self.min_h, self.max_h = np.inf, -np.inf
        self.seen_valid = False
        self.last_state = None  # saturation state (B, 3H) of the previous step
        self.switch_acc = np.zeros((B, H3), np.uint8)
        self.switch_steps = 0
        self.switch = np.zeros(H3, np.int64)
        self.transitions = 0
        self.limit = self.cfg.preact_limit
        # bounds of the bounded activations
        acts = layer.activations
        tol = self.cfg.bound_tol
        cand = acts.get("candidate")
        self.g_limit = (1 - tol) * max(abs(cand.low), abs(cand.high)) if cand.bounded else None
        out = acts.get("cell_output")
        self.out_bounded = out.bounded
        if out.bounded:
            self.actc_limit = (1 - tol) * max(abs(out.low), abs(out.high))
            lo, hi = min(out.low, 0.0), out.high
            span = hi - lo
            self.h_low, self.h_high = lo + tol * span, hi - tol * span
        self.first_nonfinite = -1
        self.nonfinite = 0
        self.work = None
        self.blocks = 0

    # -- steps ------------------------------------------------------------------
    def step(self, t, x, xw, rec, peep, z, act, actc, c, h, h_prev) -> None:
        """One step: the arrays of ``reference.StepObserver`` for step t."""
        one = (lambda a: None if a is None else a[None])  # noqa: E731
        self.block(t, one(x), one(xw), one(rec), one(peep), one(z), one(act), one(actc), one(c), one(h), h_prev)

    def block(self, t0, x, xw, rec, peep, z, act, actc, c, h, h_prev) -> None:
        """Steps t0 … t0+n−1: every array has a leading axis of n steps.

        ``h_prev`` (B, H) is h_{t0−1} (h0 for t0 = 0); the others follow from
        ``h``. ``x`` may be None when the weights were not given.
        """
        n = h.shape[0]
        H = self.H
        H3 = 3 * H
        cfg = self.cfg
        ts = slice(t0, t0 + n)
        buf = self._buffers(n)
        valid = None if self.mask is None else self.mask[ts]  # (n, B)
        raw_act, raw_c, raw_h = act, c, h
        v3 = None if valid is None else valid[:, :, None]
        if v3 is not None:  # zero the padding rows once, in copies
            act = np.where(v3, act, 0)
            actc, c, h = (np.where(v3, a, 0) for a in (actc, c, h))
            xw, rec, z = (np.where(v3, a, 0) for a in (xw, rec, z))
            if peep is not None:
                peep = np.where(v3, peep, 0)

        # moments per (step, unit) of i, f, o, h; the cell's sums
        self._moments(ts, act, h, valid)
        absc = np.abs(c, out=buf["absc"][:n])
        flat_c, flat_abs = c.reshape(n, -1), absc.reshape(n, -1)
        self.c_sum[ts] = np.add.reduce(flat_c, axis=1, dtype=np.float64)
        self.c_abs_sum[ts] = np.add.reduce(flat_abs, axis=1, dtype=np.float64)
        self.max_abs_c[ts] = flat_abs.max(axis=1)

        # Non-finite values. Without a mask a NaN or Inf in a gate reaches c
        # (and h), and the sums of i, f, o, h and c are finite exactly when
        # their values are; with one, padding rows are checked too.
        check = np.isfinite(self.dev_sum[ts]).all(axis=1) & np.isfinite(self.dev_sumsq[ts]).all(axis=1)
        check &= np.isfinite(self.c_sum[ts])
        if valid is not None:
            check[:] = False
        finite = np.ones(n, bool)
        for k in np.flatnonzero(~check):
            finite[k] = self._check_finite(t0 + int(k), raw_act[k], raw_c[k], raw_h[k])
            if finite[k] and valid is None:  # finite values whose float32 squares overflowed
                self._moments(slice(t0 + int(k), t0 + int(k) + 1), act[k : k + 1], h[k : k + 1], None, exact=True)

        # saturation of i, f, o per (step, unit), and their state transitions
        sig = act[:, :, :H3]
        low = np.less(sig, cfg.sat_low, out=buf["low"][:n])
        high = np.greater(sig, cfg.sat_high, out=buf["high"][:n])
        if v3 is not None:
            low &= v3
            high &= v3
        self.left[ts] = _counts_over_rows(low, self.count_dtype)
        self.right[ts] = _counts_over_rows(high, self.count_dtype)
        states = buf["state"]
        self.blocks += 1  # alternate the two state buffers: the previous block's last state stays valid
        state = np.subtract(high.view(np.int8), low.view(np.int8), out=states[self.blocks % 2][:n])  # (n, B, 3H)
        previous = self.last_state
        changed = buf["changed"]
        for k in range(n):
            t = t0 + k
            if t > 0 and previous is not None:
                np.not_equal(state[k], previous, out=changed)
                if valid is None:
                    self.transitions += self.B
                else:
                    both = valid[k] & self.mask[t - 1]
                    changed &= both[:, None]
                    self.transitions += int(np.count_nonzero(both))
                np.add(self.switch_acc, changed.view(np.uint8), out=self.switch_acc)
                self.switch_steps += 1
                if self.switch_steps == 255:
                    self._flush_switch()
            previous = state[k]
        self.last_state = state[n - 1]

        # the pre-activation terms, per gate block
        if self.params is not None:
            self.x_sum[ts] = np.add.reduce(x, axis=1)  # float32 per step, float64 across steps
        terms = [("input", xw), ("recurrent", rec), ("total", z)]
        if peep is not None:
            if "peephole" not in self.term_sumsq:
                self.terms.append("peephole")
                self.term_sumsq["peephole"] = np.zeros((self.T, 4 * H))
                self.term_sum["peephole"] = np.zeros((self.T, 4 * H))
            terms.append(("peephole", peep))
        for name, arr in terms:
            if name in self.term_sum:
                self.term_sum[name][ts] = arr.sum(axis=1)
            self.term_sumsq[name][ts] = np.einsum("tbj,tbj->tj", arr, arr)
            if name in self.over:
                self._over(name, arr, ts, buf["flags"][:n], buf["flags2"][:n])

        # the hidden range
        hv = raw_h if valid is None else raw_h[valid]
        lo, hi = -np.inf, np.inf
        if hv.size:
            if finite.all():
                lo, hi = hv.min(), hv.max()
            else:  # as nanmin / nanmax, without their all-NaN warning
                lo, hi = np.fmin.reduce(hv, axis=None), np.fmax.reduce(hv, axis=None)
            self.min_h = min(self.min_h, float(lo))
            self.max_h = max(self.max_h, float(hi))
            self.seen_valid = True

        # candidate and act(c) at their bounds, hidden at the bounds of its range
        fh, fh2 = buf["fh"][:n], buf["fh2"][:n]
        if self.g_limit is not None:
            self.g_bound[ts] = _count_beyond(act[:, :, H3:], -self.g_limit, self.g_limit, v3, fh, fh2)
        if self.out_bounded:
            self.actc_bound[ts] = _count_beyond(actc, -self.actc_limit, self.actc_limit, v3, fh, fh2)
            if not (finite.all() and lo >= self.h_low and hi <= self.h_high):
                self.h_bound[ts] = _count_beyond(h, self.h_low, self.h_high, v3, fh, fh2)

        # the cell's sign
        self.c_negative += _count(np.less(c, 0, out=fh), v3)
        self.c_positive += _count(np.greater(c, 0, out=fh), v3)

        # ‖h_t − h_{t−1}‖² per sequence
        diff = buf["diff"][:n]
        np.subtract(raw_h[0], h_prev, out=diff[0])
        np.subtract(raw_h[1:], raw_h[:-1], out=diff[1:])
        self.dh2[ts] = np.einsum("tbh,tbh->tb", diff, diff)
        if valid is not None:
            self.dh2[ts][~valid] = 0.0

    def _buffers(self, n: int) -> dict:
        """Work arrays for blocks of up to n steps, allocated once per chunk."""
        if self.work is None or self.work["n"] < n:
            B, H, dt = self.B, self.H, self.dtype
            self.work = {
                "n": n,
                "dev": np.empty((n, B, 4 * H), dt),
                "absc": np.empty((n, B, H), dt),
                "diff": np.empty((n, B, H), dt),
                "low": np.empty((n, B, 3 * H), bool),
                "high": np.empty((n, B, 3 * H), bool),
                "state": [np.empty((n, B, 3 * H), np.int8) for _ in range(2)],
                "changed": np.empty((B, 3 * H), bool),
                "flags": np.empty((n, B, 4 * H), bool),
                "flags2": np.empty((n, B, 4 * H), bool),
                "fh": np.empty((n, B, H), bool),
                "fh2": np.empty((n, B, H), bool),
            }
        return self.work

    def _moments(self, ts: slice, act, h, valid, exact: bool = False) -> None:
        """Deviation sums of [i, f, o, h] for the steps ``ts`` into the chunk tables.

        Σ over the valid rows of d = v − r and d², where r is the step's first
        valid row. ``exact``: in float64, for finite values whose float32
        squares overflow.
        """
        H3 = 3 * self.H
        n = h.shape[0]
        first = np.zeros(n, np.intp) if valid is None else np.argmax(valid, axis=1)
        rows = np.arange(n)
        ref = self.ref[ts]
        ref[:, :H3] = act[rows, first, :H3]
        ref[:, H3:] = h[rows, first]
        if valid is not None:
            ref[~valid.any(axis=1)] = 0  # no valid row: nothing to sum
        dev = np.empty((n, self.B, 4 * self.H)) if exact else self._buffers(n)["dev"][:n]
        np.subtract(act[:, :, :H3], ref[:, None, :H3], out=dev[:, :, :H3])
        np.subtract(h, ref[:, None, H3:], out=dev[:, :, H3:])
        if valid is not None:
            dev[~valid] = 0
        self.dev_sum[ts] = dev.sum(axis=1)
        self.dev_sumsq[ts] = np.einsum("tbj,tbj->tj", dev, dev)

    def _over(self, name: str, arr: np.ndarray, ts: slice, flags, flags2) -> None:
        """Per step and column, how many values have |value| > preact_limit.

        |v| > a is tested as v > a or v < −a (exact in any dtype). When the
        previous block of this term had none, the block's extremes are checked
        first and the count is skipped if they are within the limit.
        """
        limit = self.limit
        if not self.over_seen[name]:
            if arr.max() <= limit and arr.min() >= -limit:  # a NaN fails both
                return
        np.greater(arr, limit, out=flags)
        flags |= np.less(arr, -limit, out=flags2)
        self.over[name][ts] = _counts_over_rows(flags, self.count_dtype)
        self.over_seen[name] = bool(flags.any())

    def _check_finite(self, t, act, c, h) -> bool:
        """Whether every gate, c and h value of step t is finite (padding included)."""
        finite = bool(np.isfinite(act).all() and np.isfinite(c).all() and np.isfinite(h).all())
        if not finite:
            if self.first_nonfinite < 0:
                self.first_nonfinite = t
            self.nonfinite += int(h.size - np.count_nonzero(np.isfinite(h)))
            self.nonfinite += int(c.size - np.count_nonzero(np.isfinite(c)))
        return finite

    def _flush_switch(self) -> None:
        self.switch += self.switch_acc.sum(axis=0, dtype=np.int64)
        self.switch_acc[...] = 0
        self.switch_steps = 0

    # -- fold the chunk into the statistics ------------------------------------
    def finish(self) -> None:
        st, H, T = self.stats, self.H, self.T
        self._flush_switch()
        # Σv = n·r + Σd and Σv² = n·r² + 2r·Σd + Σd², in float64
        n = self.n_valid[:, None].astype(np.float64)
        ref = self.ref.astype(np.float64)
        dev_sum = self.dev_sum
        # in place where a temporary is not needed: each (T, 4H) float64 temporary is fresh
        # memory, ~0.3 ms of first touch per chunk; same operations in the same order
        m2 = n * ref
        m1 = m2 + dev_sum
        m2 *= ref  # n·r²
        ref *= 2.0
        ref *= dev_sum  # 2r·Σd
        m2 += ref
        m2 += self.dev_sumsq
        for k, name in enumerate(("i", "f", "o")):
            cols = slice(k * H, (k + 1) * H)
            gs = st.gates[name]
            gs.sum_tu += m1[:, cols]
            gs.sumsq_tu += m2[:, cols]
            gs.left_tu += self.left[:, cols]
            gs.right_tu += self.right[:, cols]
            gs.switch_u += self.switch[cols]
            gs.transitions += self.transitions
        st.sum_h_tu += m1[:, 3 * H :]
        st.sumsq_h_tu += m2[:, 3 * H :]
        st.sum_c_t += self.c_sum
        st.sum_abs_c_t += self.c_abs_sum
        st.max_abs_c_t = np.maximum(st.max_abs_c_t, np.nan_to_num(self.max_abs_c))

        # per gate block, back in the canonical order i, f, g, o
        def blocks(table, dtype=np.float64):
            per_col = table.sum(axis=0, dtype=dtype).reshape(4, H).sum(axis=1)
            return per_col[[0, 1, 3, 2]]

        terms = st.terms
        sums = {name: blocks(table) for name, table in self.term_sum.items()}
        if self.params is not None:
            p = self.params
            W = np.asarray(p.W, np.float64)
            U = np.asarray(p.U, np.float64)
            b = np.asarray(p.b, np.float64).reshape(4, H).sum(axis=1)
            x_sum = self.x_sum.sum(axis=0)
            h_prev_sum = self.B * self.h0 + m1[: T - 1, 3 * H :].sum(axis=0)
            sums["input"] = (x_sum @ W).reshape(4, H).sum(axis=1)
            sums["recurrent"] = (h_prev_sum @ U).reshape(4, H).sum(axis=1)
            if "total" not in sums:
                sums["total"] = sums["input"] + sums["recurrent"] + T * self.B * b
                if "peephole" in sums:
                    sums["total"] = sums["total"] + sums["peephole"]
        for name in self.terms:
            getattr(terms, f"sum_{name}")[:] += sums[name]
            getattr(terms, f"sumsq_{name}")[:] += blocks(self.term_sumsq[name])
        for name, table in self.over.items():
            getattr(terms, f"over_{name}")[:] += blocks(table, np.int64)
        st.g_at_bound_t += self.g_bound
        st.actc_at_bound_t += self.actc_bound
        st.h_at_bound_t += self.h_bound
        st.c_negative += self.c_negative
        st.c_positive += self.c_positive
        if self.seen_valid:
            st.min_h = min(st.min_h, self.min_h)
            st.max_h = max(st.max_h, self.max_h)
        dh = np.sqrt(self.dh2)
        st.max_dh_t = np.maximum(st.max_dh_t, np.nan_to_num(dh.max(axis=1)))
        st.sum_dh_t += dh.sum(axis=1)
        if self.first_nonfinite >= 0:
            st.first_nonfinite_step = _merge_field("first_", st.first_nonfinite_step, self.first_nonfinite)
            st.nonfinite_count += self.nonfinite


def _counts_over_rows(flags: np.ndarray, dtype) -> np.ndarray:
    """(n, B, m) bool -> (n, m): how many of the B rows are True, per step and column."""
    return np.add.reduce(flags.view(np.uint8), axis=1, dtype=dtype)


def _count(flags: np.ndarray, valid: np.ndarray | None) -> int:
    if valid is not None:
        flags &= valid
    return int(np.count_nonzero(flags))


def _count_beyond(values, low, high, valid, flags, flags2) -> np.ndarray:
    """Per step (axis 0), how many values are < low or > high (tested in their dtype)."""
    np.less(values, low, out=flags)
    flags |= np.greater(values, high, out=flags2)
    if valid is not None:
        flags &= valid
    n = flags.shape[0]
    return np.count_nonzero(flags.reshape(n, -1), axis=1)


def cross_input_std(sum_tu: np.ndarray, sumsq_tu: np.ndarray, valid_t: np.ndarray) -> np.ndarray:
    """(T, H) std across sequences from per-(step, unit) moments."""
    n = np.maximum(valid_t, 1)[:, None]
    mean = sum_tu / n
    return np.sqrt(np.maximum(sumsq_tu / n - mean**2, 0.0))


@dataclass
class EncodingStats(Mergeable):
    """The final encodings (N, E): the last layer's final h, directions concatenated.

    Mean pairwise cosine over all N(N−1) ordered pairs follows from the sum of
    unit vectors s = Σ u_n:  mean_{n≠m} u_n·u_m = (‖s‖² − N) / (N(N−1)).
    The Gram matrix Σ h hᵀ (E, E) gives the singular values of the N×E matrix
    (σ_k² = eigenvalues), hence its effective rank, without keeping the matrix.
    """

    E: int = _static(0)
    n: int = 0
    n_zero: int = 0  # encodings with norm 0 (cosine undefined)
    sum_e: np.ndarray | None = None
    sumsq_e: np.ndarray | None = None
    sum_abs: float = 0.0
    sum_unit: np.ndarray | None = None
    gram: np.ndarray | None = None

    @classmethod
    def empty(cls, E: int) -> "EncodingStats":
        return cls(E=E, sum_e=_zeros(E), sumsq_e=_zeros(E), sum_unit=_zeros(E), gram=_zeros(E, E))

    def update(self, enc: np.ndarray):
        enc = np.nan_to_num(enc.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        self.n += enc.shape[0]
        self.sum_e += enc.sum(axis=0)
        self.sumsq_e += (enc**2).sum(axis=0)
        self.sum_abs += float(np.abs(enc).sum())
        norms = np.linalg.norm(enc, axis=1)
        nonzero = norms > 0
        self.n_zero += int((~nonzero).sum())
        self.sum_unit += (enc[nonzero] / norms[nonzero, None]).sum(axis=0)
        self.gram += enc.T @ enc

    def mean_pairwise_cosine(self) -> float:
        n = self.n - self.n_zero
        if n < 2:
            return float("nan")
        return float((self.sum_unit @ self.sum_unit - n) / (n * (n - 1)))

    def cross_input_std(self) -> float:
        """Mean over units of the std of the encoding across inputs."""
        mean = self.sum_e / max(self.n, 1)
        var = np.maximum(self.sumsq_e / max(self.n, 1) - mean**2, 0.0)
        return float(np.sqrt(var).mean())

    def mean_abs(self) -> float:
        return self.sum_abs / max(self.n * self.E, 1)

    def singular_values(self) -> np.ndarray:
        eig = np.linalg.eigvalsh(self.gram)
        return np.sqrt(np.clip(eig, 0, None))[::-1]

    def effective_rank(self) -> float:
        """exp(entropy of σ_k / Σσ) (Roy & Vetterli 2007)."""
        s = self.singular_values()
        total = s.sum()
        if total <= 0:
            return 0.0
        p = s[s > 0] / total
        return float(np.exp(-(p * np.log(p)).sum()))


@dataclass
class InputStats(Mergeable):
    """The raw inputs, per feature (D) and per sequence.

    trailing_zero_steps: summed over sequences, the number of all-zero steps
    at the end of each sequence (padding that no mask removes).
    """

    D: int = _static(0)
    T: int = _static(0)
    n: int = 0
    count: int = 0  # finite values per feature
    sum_d: np.ndarray | None = None
    sumsq_d: np.ndarray | None = None
    min_d: np.ndarray | None = None
    max_d: np.ndarray | None = None
    zeros: int = 0
    nonfinite: int = 0
    trailing_zero_steps: int = 0
    sequences_with_padding: int = 0

    @classmethod
    def empty(cls, T: int, D: int) -> "InputStats":
        return cls(
            D=D,
            T=T,
            sum_d=_zeros(D),
            sumsq_d=_zeros(D),
            min_d=np.full(D, np.inf),
            max_d=np.full(D, -np.inf),
        )

    def update(self, x: np.ndarray, lengths: np.ndarray | None, kernels=None):
        """Fold a chunk x (T, B, D) in. ``kernels``: the fused engine's compiled
        module, which makes the moments one pass over x (float32 only)."""
        T, B, D = x.shape
        self.n += B
        self.count += T * B  # per feature (non-finite values count as 0)
        rows = x.reshape(T * B, D)
        if kernels is not None and x.dtype == np.float32:
            low, high = np.full(D, np.inf, np.float32), np.full(D, -np.inf, np.float32)
            zeros, nonfinite = kernels.input_moments(rows, self.sum_d, self.sumsq_d, low, high)
            self.min_d = np.minimum(self.min_d, low)
            self.max_d = np.maximum(self.max_d, high)
            self.zeros += int(zeros)
            self.nonfinite += int(nonfinite)
            self._trailing_zeros(x, lengths)
            return
        # float64 accumulators fed straight from the float32 values (no copy);
        # their sums are finite exactly when every value is.
        s = np.add.reduce(rows, axis=0, dtype=np.float64)
        q = np.einsum("nd,nd->d", rows, rows, dtype=np.float64)
        if np.isfinite(s).all() and np.isfinite(q).all():
            self.sum_d += s
            self.sumsq_d += q
            self.min_d = np.minimum(self.min_d, rows.min(axis=0))
            self.max_d = np.maximum(self.max_d, rows.max(axis=0))
        else:
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            xf = np.where(finite, x, 0).astype(np.float64)
            self.sum_d += xf.sum(axis=(0, 1))
            self.sumsq_d += np.einsum("tbd,tbd->d", xf, xf)
            self.min_d = np.minimum(self.min_d, np.where(finite, x, np.inf).min(axis=(0, 1)))
            self.max_d = np.maximum(self.max_d, np.where(finite, x, -np.inf).max(axis=(0, 1)))
        self.zeros += int(x.size - np.count_nonzero(x))
        self._trailing_zeros(x, lengths)

    def _trailing_zeros(self, x: np.ndarray, lengths: np.ndarray | None) -> None:
        T, B, _ = x.shape
        if lengths is None:
            # Trailing steps whose features are all exactly zero, found from the
            # end: most sequences stop at their last step.
            trailing = np.zeros(B, np.int64)
            open_ = np.arange(B)
            for t in range(T - 1, -1, -1):
                zero = ~(x[t, open_] != 0).any(axis=1)
                trailing[open_[zero]] += 1
                open_ = open_[zero]
                if open_.size == 0:
                    break
            trailing = np.where(trailing == T, 0, trailing)  # an all-zero sequence is not padding
            self.trailing_zero_steps += int(trailing.sum())
            self.sequences_with_padding += int((trailing > 0).sum())

    def mean(self) -> np.ndarray:
        return self.sum_d / max(self.count, 1)

    def std(self) -> np.ndarray:
        m = self.mean()
        return np.sqrt(np.maximum(self.sumsq_d / max(self.count, 1) - m**2, 0.0))


CORRELATION_BLOCK = 1 << 15  # float64 values per block of steps in axis_correlations (256 kB: stays in cache)


def axis_correlations(x: np.ndarray) -> tuple[float, float]:
    """Mean Pearson correlation between adjacent steps and between adjacent features.

    ``x`` is a sample (T, B, D). For step t the correlation is taken between
    x[t] and x[t+1] over (sequences, features); for feature d between
    x[..., d] and x[..., d+1] over (steps, sequences). Each slice is centred
    on its own mean, so a per-channel offset does not count as correlation.
    Non-finite values count as 0.

    Two passes over blocks of steps (the feature means, then the products), in
    float64 one block at a time: whole-sample float64 copies (20 MB each at 64
    sequences × 150 steps × 256 features) cost more than the arithmetic.
    """
    x = np.asarray(x)
    T, B, D = x.shape
    step_size = max(1, CORRELATION_BLOCK // max(1, B * D))

    def blocks():
        for s in range(0, T, step_size):
            block = np.array(x[s:s + step_size], dtype=np.float64)
            bad = ~np.isfinite(block)
            if bad.any():
                block[bad] = 0.0
            yield block

    feature_sum = np.zeros(D)
    for block in blocks():
        feature_sum += block.reshape(-1, D).sum(axis=0)
    feature_mean = feature_sum / max(T * B, 1)
    # per step: Σ c_t·c_{t+1} and Σ c_t² of the step-centred rows; per feature: the same over rows
    step_cross, step_norm2 = np.zeros(max(T - 1, 0)), np.zeros(T)
    feat_cross, feat_norm2 = np.zeros(max(D - 1, 0)), np.zeros(D)
    previous = None  # the last centred row of the previous block
    for k, block in enumerate(blocks()):
        s = k * step_size
        rows = block.reshape(len(block), B * D)
        c = rows - rows.mean(axis=1, keepdims=True)
        step_norm2[s:s + len(c)] = np.einsum("km,km->k", c, c)
        if len(c) > 1:
            step_cross[s:s + len(c) - 1] = np.einsum("km,km->k", c[:-1], c[1:])
        if previous is not None:
            step_cross[s - 1] = previous @ c[0]
        previous = c[-1]
        f = block.reshape(-1, D) - feature_mean
        feat_norm2 += np.einsum("nd,nd->d", f, f)
        if D > 1:
            feat_cross += np.einsum("nd,nd->d", f[:, :-1], f[:, 1:])

    def mean_corr(cross: np.ndarray, norm2: np.ndarray) -> float:
        denom = np.sqrt(norm2[:-1] * norm2[1:])
        ok = denom > 0
        return float((cross[ok] / denom[ok]).mean()) if ok.any() else float("nan")

    step = mean_corr(step_cross, step_norm2) if T > 1 else float("nan")
    feat = mean_corr(feat_cross, feat_norm2) if D > 1 else float("nan")
    return step, feat


def input_variance_share(terms) -> np.ndarray:
    """(4,) per gate block: Var(x·W) / (Var(x·W) + Var(h·U) + Var(p·c))."""
    parts = [terms.variance(t) for t in ("input", "recurrent", "peephole")]
    total = sum(parts)
    return np.where(total > 0, parts[0] / np.where(total > 0, total, 1), 1.0)


def input_energy_share(terms, bias: np.ndarray, H: int) -> np.ndarray:
    """(4,) per gate block: E[(x·W)²] / (E[(x·W)²] + E[(h·U)²] + E[(p·c)²] + mean b²)."""
    b2 = (np.asarray(bias, dtype=np.float64).reshape(4, H) ** 2).mean(axis=1)
    parts = [terms.mean_square(t) for t in ("input", "recurrent", "peephole")]
    total = sum(parts) + b2
    return np.where(total > 0, parts[0] / np.where(total > 0, total, 1), 1.0)
