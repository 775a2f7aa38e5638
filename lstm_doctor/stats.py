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

import numpy as np

from .activations import get_activation
from .model import GATES, SIGMOID_GATES, Layer
from .reference import StepRecord

# |z| beyond which σ(z) is within 0.01 of 0 or 1 (RULES.md).
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


def _valid3(mask: np.ndarray | None, T: int, B: int) -> np.ndarray:
    """(T, B, 1) bool of valid steps."""
    if mask is None:
        return np.ones((T, B, 1), bool)
    return mask[:, :, None]


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

    def update(self, values: np.ndarray, valid: np.ndarray, cfg: StatsConfig):
        left = (values < cfg.sat_low) & valid
        right = (values > cfg.sat_high) & valid
        self.left_tu += left.sum(axis=1)
        self.right_tu += right.sum(axis=1)
        v = np.where(valid, values, 0).astype(np.float64)
        self.sum_tu += v.sum(axis=1)
        self.sumsq_tu += np.einsum("tbh,tbh->th", v, v)
        if values.shape[0] > 1:
            state = right.astype(np.int8) - left.astype(np.int8)
            both = valid[1:] & valid[:-1]
            changed = (state[1:] != state[:-1]) & both
            self.switch_u += changed.sum(axis=(0, 1))
            self.transitions += int(both[..., 0].sum())


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

    def update(self, rec: StepRecord, valid: np.ndarray, H: int, cfg: StatsConfig):
        T, B = rec.T, rec.B
        self.count += int(valid.sum()) * H
        for term in ("input", "recurrent", "peephole", "total"):
            arr = {
                "input": rec.input_term,
                "recurrent": rec.recurrent_term,
                "peephole": rec.peephole_term,
                "total": rec.preact,
            }[term]
            if arr is None:
                continue
            blocks = np.where(valid, arr, 0).reshape(T, B, 4, H)
            getattr(self, f"sum_{term}")[:] += blocks.sum(axis=(0, 1, 3), dtype=np.float64)
            getattr(self, f"sumsq_{term}")[:] += np.einsum(
                "tbkh,tbkh->k", blocks, blocks, dtype=np.float64
            )
            if term in ("input", "total"):
                over = (np.abs(blocks) > cfg.preact_limit).sum(axis=(0, 1, 3))
                getattr(self, f"over_{term}")[:] += over

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
    def update(self, rec: StepRecord, mask: np.ndarray | None, layer: Layer, h0: np.ndarray):
        cfg = self.config
        T, B, H = rec.T, rec.B, self.H
        valid = _valid3(mask, T, B)
        self.n_sequences += B
        self.valid_t += valid[..., 0].sum(axis=1)

        finite = np.isfinite(rec.h).all(axis=(1, 2)) & np.isfinite(rec.c).all(axis=(1, 2))
        for name in GATES:
            gate = rec.gate(name)
            if gate is not None:
                finite &= np.isfinite(gate).all(axis=(1, 2))
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            self.first_nonfinite_step = _merge_field("first_", self.first_nonfinite_step, bad)
            self.nonfinite_count += int(
                sum((~np.isfinite(getattr(rec, a))).sum() for a in ("h", "c"))
            )

        for name in SIGMOID_GATES:
            self.gates[name].update(rec.gate(name), valid, cfg)
        self.terms.update(rec, valid, H, cfg)

        acts = layer.activations
        tol = cfg.bound_tol
        cand = acts.get("candidate")
        if cand.bounded:
            near = np.abs(rec.g) > (1 - tol) * max(abs(cand.low), abs(cand.high))
            self.g_at_bound_t += (near & valid).sum(axis=(1, 2))
        out = acts.get("cell_output")
        if out.bounded:
            actc = out.fn(rec.c)
            near = np.abs(actc) > (1 - tol) * max(abs(out.low), abs(out.high))
            self.actc_at_bound_t += (near & valid).sum(axis=(1, 2))
            # h = o·act(c) lives in [min(low, 0), high]
            lo, hi = min(out.low, 0.0), out.high
            span = hi - lo
            at_bound = (rec.h < lo + tol * span) | (rec.h > hi - tol * span)
            self.h_at_bound_t += (at_bound & valid).sum(axis=(1, 2))

        h = np.where(valid, rec.h, 0).astype(np.float64)
        c = np.where(valid, rec.c, 0).astype(np.float64)
        self.sum_h_tu += h.sum(axis=1)
        self.sumsq_h_tu += np.einsum("tbh,tbh->th", h, h)
        self.sum_c_t += c.sum(axis=(1, 2))
        abs_c = np.abs(c)
        self.sum_abs_c_t += abs_c.sum(axis=(1, 2))
        self.max_abs_c_t = np.maximum(self.max_abs_c_t, np.nan_to_num(abs_c.max(axis=(1, 2))))
        hv = rec.h[valid[..., 0]]
        if hv.size:
            self.min_h = min(self.min_h, float(np.nanmin(hv)))
            self.max_h = max(self.max_h, float(np.nanmax(hv)))
        cv = rec.c[valid[..., 0]]
        self.c_negative += int((cv < 0).sum())
        self.c_positive += int((cv > 0).sum())

        previous = np.concatenate(
            [np.broadcast_to(h0, (1, B, H)).astype(rec.h.dtype), rec.h[:-1]], axis=0
        )
        dh = np.sqrt(np.einsum("tbh,tbh->tb", rec.h - previous, rec.h - previous, dtype=np.float64))
        dh = np.where(valid[..., 0], dh, 0.0)
        self.max_dh_t = np.maximum(self.max_dh_t, np.nan_to_num(dh.max(axis=1)))
        self.sum_dh_t += dh.sum(axis=1)

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

    def update(self, x: np.ndarray, lengths: np.ndarray | None):
        T, B, D = x.shape
        self.n += B
        finite = np.isfinite(x)
        self.nonfinite += int(x.size - finite.sum())
        xf = np.where(finite, x, 0).astype(np.float64)
        self.count += T * B  # per feature (non-finite values count as 0)
        self.sum_d += xf.sum(axis=(0, 1))
        self.sumsq_d += np.einsum("tbd,tbd->d", xf, xf)
        self.min_d = np.minimum(self.min_d, np.where(finite, x, np.inf).min(axis=(0, 1)))
        self.max_d = np.maximum(self.max_d, np.where(finite, x, -np.inf).max(axis=(0, 1)))
        self.zeros += int((x == 0).sum())
        if lengths is None:
            # Trailing steps whose features are all exactly zero.
            zero_step = ~(x != 0).any(axis=2)  # (T, B)
            trailing = np.cumprod(zero_step[::-1], axis=0).sum(axis=0)
            trailing = np.where(trailing == T, 0, trailing)  # an all-zero sequence is not padding
            self.trailing_zero_steps += int(trailing.sum())
            self.sequences_with_padding += int((trailing > 0).sum())

    def mean(self) -> np.ndarray:
        return self.sum_d / max(self.count, 1)

    def std(self) -> np.ndarray:
        m = self.mean()
        return np.sqrt(np.maximum(self.sumsq_d / max(self.count, 1) - m**2, 0.0))


def axis_correlations(x: np.ndarray) -> tuple[float, float]:
    """Mean Pearson correlation between adjacent steps and between adjacent features.

    ``x`` is a sample (T, B, D). For step t the correlation is taken between
    x[t] and x[t+1] over (sequences, features); for feature d between
    x[..., d] and x[..., d+1] over (steps, sequences). Each slice is centred
    on its own mean, so a per-channel offset does not count as correlation.
    """

    def mean_corr(a: np.ndarray, b: np.ndarray) -> float:
        # a, b: (K, M) slices to correlate row by row
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        ok = denom > 0
        if not ok.any():
            return float("nan")
        return float(((a * b).sum(axis=1)[ok] / denom[ok]).mean())

    x = np.asarray(x, dtype=np.float64)
    x = np.where(np.isfinite(x), x, 0.0)
    T, B, D = x.shape
    step = float("nan")
    feat = float("nan")
    if T > 1:
        flat = x.reshape(T, B * D)
        step = mean_corr(flat[:-1], flat[1:])
    if D > 1:
        flat = x.transpose(2, 0, 1).reshape(D, T * B)
        feat = mean_corr(flat[:-1], flat[1:])
    return step, feat
