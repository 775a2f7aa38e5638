"""Differential diagnosis: which configuration reproduces a trace the user observed?

The user's own code printed something for the same inputs (case study, docs/case-study.md: the per-step
hidden values .26, .73, .88, …). ``load_observation`` reads it and ``search``
re-runs the model's weights under every plausible configuration and ranks them
by how well each reproduces it. Rule A204 (``analyzers/differential.py``) turns
the ranking into a finding.

The observation (``--observed FILE``):

- ``.npy`` of rank 3: per-step hidden states, (B, T, H) or (T, B, H);
- ``.npy`` of rank 2: final encodings (B, H);
- ``.npz`` with ``h`` (one of the above) and optionally ``c`` (same shape as
  ``h``), ``units`` (the unit indices the columns hold) and ``layout``
  (``"btd"`` or ``"tbd"``, for a rank-3 ``h``).

It may cover only the first k steps (per-step), the first B sequences of the
inputs, and a subset of units: the first H_obs units unless ``units`` says
which. The batch axis of a rank-3 array is the one that fits the inputs
(B ≤ sequences, T ≤ steps); when both readings fit, the one whose batch equals
the number of input sequences wins, then (B, T, H).

What is compared: the hidden state of layer 0's first direction (for a
single-layer unidirectional model, the model's output; what a user prints
from the first scan of a stack). Only layer 0's configuration is searched.

The configuration space (``Config``), relative to the declared model:

- cell-output activation: tanh, sigmoid, identity, hard_sigmoid (h = o·act(c));
- gate activation: sigmoid, hard_sigmoid;
- the stacked gate order the user's code reads the stored blocks in
  (``GATE_ORDERS``): the stored arrays (the canonical weights in the declared
  stored order) are read back in another order;
- the time axis as given or swapped with the feature axis (only when T == D
  and no lengths are given: otherwise the weights cannot take the swap);
- peepholes on or off (only when the model has them);
- a runtime forget bias of +1 added to z_f (TF1 ``BasicLSTMCell``);
- the initial state: the model's h0, c0 or zeros (only when they differ).

Cost: one input projection x·W per axis reading is shared by every candidate
(a gate order only permutes its columns); all candidates step together (one
recurrent GEMM per step for all of them, h·U with the stored U, whose columns
each candidate then reads in its own order); with a per-step observation every candidate
runs the first ``PRUNE_STEPS`` steps, and only the best ``KEEP`` (plus the
declared one) run the rest; with final states only, every candidate runs on
the first ``PRUNE_SEQUENCES`` sequences and the best ``KEEP`` on all of them.
"""

from __future__ import annotations

import itertools
import time
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from lstm_doctor.capture import budget
from lstm_doctor.errors import UserError
from lstm_doctor.load import check_readable_file
from lstm_doctor.load.npyfile import load_npy, load_npz
from lstm_doctor.model import GATES, LSTMModel, normalise_gate_order
from lstm_doctor.model.activations import get_activation

CELL_OUTPUTS = ("tanh", "sigmoid", "identity", "hard_sigmoid")
GATE_ACTIVATIONS = ("sigmoid", "hard_sigmoid")
# Stacked gate orders real frameworks use, and who uses them.
GATE_ORDERS = {
    "ifgo": "PyTorch i, f, g, o / Keras and cuDNN i, f, c, o",
    "igfo": "TF1 BasicLSTMCell i, j, f, o",
    "iofg": "ONNX i, o, f, c",
    "ifog": "Caffe / char-rnn i, f, o, g",
}
PRUNE_STEPS = 3
PRUNE_SEQUENCES = 4  # final-state observations: candidates pruned on this many sequences
KEEP = 8


@dataclass
class Observation:
    """What the user's code produced. ``h`` is (T_obs, B_obs, H_obs) time-major, or
    (B_obs, H_obs) when ``final``; ``c`` likewise or None; ``units`` the unit
    index of each column."""

    h: np.ndarray
    final: bool
    units: np.ndarray
    c: np.ndarray | None = None
    path: str | None = None
    layout: str | None = None  # how a rank-3 file was read (btd/tbd)

    @property
    def B(self) -> int:
        return int(self.h.shape[0] if self.final else self.h.shape[1])

    @property
    def steps(self) -> int | None:
        return None if self.final else int(self.h.shape[0])


def load_observation(path: str, model: LSTMModel, n_sequences: int, T: int, *, max_memory=None) -> Observation:
    """Read ``--observed FILE`` and orient it against the model and the inputs.

    The file is read like every input (``lstm_doctor.load.npyfile``): a regular
    file only, plain numeric arrays (``layout`` may be a string), and every
    declared size (an .npz member's, an .npy header's) checked against
    ``max_memory`` before anything is inflated.
    """
    p = Path(path)
    try:
        check_readable_file(p)
    except UserError as exc:
        raise UserError(f"--observed: {exc.problem}", path) from None
    c = units = layout = None
    try:
        with budget.reading(max_memory):
            if zipfile.is_zipfile(p):
                data = load_npz(p, ("h", "c", "units", "layout"), strings=("layout",))
                if "h" not in data:
                    raise UserError("--observed: the .npz has no array 'h'", path)
                h, c, units, layout = data["h"], data.get("c"), data.get("units"), data.get("layout")
            else:
                h = load_npy(p)
    except UserError as exc:
        if exc.problem.startswith("--observed"):
            raise
        raise UserError(f"--observed: {exc.problem}", path) from None
    if units is not None:
        if units.dtype.kind not in "iu":
            raise UserError(f"--observed: 'units' has dtype {units.dtype}; expected integer unit indices", path)
        units = units.astype(np.int64).reshape(-1)
    if layout is not None:
        if layout.dtype.kind not in "US" or layout.size != 1:
            raise UserError("--observed: 'layout' must be one string, btd or tbd", path)
        layout = str(layout.reshape(-1)[0])[:20]
    return make_observation(h, model, n_sequences, T, c=c, units=units, layout=layout, path=str(path))


def make_observation(
    h, model: LSTMModel, n_sequences: int, T: int, *, c=None, units=None, layout=None, path=None
) -> Observation:
    """Validate and orient an observed array (see the module docstring)."""
    h = np.asarray(h)
    if h.dtype.kind not in "fiu":
        raise UserError(f"--observed: dtype {h.dtype}, expected numbers", path)
    if model.layers[0].projected:
        # the configuration search steps its own H-wide h (U is (H, 4H)); a projected one is not modelled there
        raise UserError(
            "--observed: the first layer projects its hidden state (proj_size > 0, LSTMP), which the "
            "configuration search does not model; run without --observed", path,
        )
    H = model.layers[0].H
    if h.ndim not in (2, 3):
        raise UserError(f"--observed: shape {h.shape}; expected (B, T, H), (T, B, H) or (B, H)", path)
    H_obs = h.shape[-1]
    if units is None:
        if H_obs > H:
            raise UserError(f"--observed: {H_obs} units but the layer has H={H}", path)
        units = np.arange(H_obs)
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    if units.size != H_obs or units.min(initial=0) < 0 or units.max(initial=0) >= H:
        raise UserError(f"--observed: 'units' must list {H_obs} unit indices in 0..{H - 1}", path)
    if c is not None and np.shape(c) != h.shape:
        raise UserError(f"--observed: 'c' has shape {np.shape(c)}, 'h' has {h.shape}", path)
    h = h.astype(np.float64)
    c = None if c is None else np.asarray(c, dtype=np.float64)
    if h.ndim == 2:
        if h.shape[0] > n_sequences:
            raise UserError(f"--observed: {h.shape[0]} encodings but only {n_sequences} input sequences", path)
        return Observation(h, True, units, c, path)
    fits = {
        "btd": h.shape[0] <= n_sequences and h.shape[1] <= T,
        "tbd": h.shape[1] <= n_sequences and h.shape[0] <= T,
    }
    if layout is None:
        ok = [name for name, good in fits.items() if good]
        if not ok:
            raise UserError(
                f"--observed: shape {h.shape} fits neither (B, T, H) nor (T, B, H) for "
                f"{n_sequences} sequences of {T} steps",
                path,
            )
        exact = [name for name in ok if h.shape[0 if name == "btd" else 1] == n_sequences]
        layout = (exact or ok)[0]
    elif layout not in fits:
        raise UserError(f"--observed: layout {layout!r} must be btd or tbd", path)
    if layout == "btd":
        h = h.transpose(1, 0, 2)
        c = None if c is None else c.transpose(1, 0, 2)
    return Observation(np.ascontiguousarray(h), False, units, c, path, layout)


# ---------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One way the user's code may compute the layer (see the module docstring)."""

    cell_output: str
    gate: str
    order: str  # the order the user's code reads the stored gate blocks in
    axis: str = "given"  # or "swapped"
    peepholes: bool = False
    forget_bias: float = 0.0  # added at run time to z_f
    init: str = "model"  # or "zeros"

    def differences(self, declared: "Config") -> list[str]:
        return [name for name in FIELDS if getattr(self, name) != getattr(declared, name)]

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}


FIELDS = ("cell_output", "gate", "order", "axis", "peepholes", "forget_bias", "init")


def declared_config(model: LSTMModel) -> Config:
    layer = model.layers[0]
    params = layer.forward
    return Config(
        cell_output=layer.activations.cell_output,
        gate=layer.activations.gate,
        order=normalise_gate_order(model.stored_gate_order),
        axis="given",
        peepholes=params.peephole is not None,
        forget_bias=0.0,
        init="model",
    )


def equation(config: Config, candidate: str = "tanh") -> str:
    """The step the configuration computes, spelled as a finding shows it."""
    s = get_activation(config.gate).equation
    out = get_activation(config.cell_output).equation
    cand = get_activation(candidate).equation
    pi, pf, po = (" + p_i·c_{t-1}", " + p_f·c_{t-1}", " + p_o·c_t") if config.peepholes else ("", "", "")
    fb = " + 1" if config.forget_bias else ""
    order = ", ".join(config.order)
    parts = [
        f"[z_{order.replace(', ', ', z_')}] = x_t·W + h_{{t-1}}·U + b",
        f"i_t = {s}(z_i{pi})",
        f"f_t = {s}(z_f{pf}{fb})",
        f"g_t = {cand}(z_g)",
        f"o_t = {s}(z_o{po})",
        f"h_t = o_t · {out}(c_t)",
    ]
    if config.axis == "swapped":
        parts.insert(0, "time runs over the feature axis")
    if config.init == "zeros":
        parts.append("h_0 = c_0 = 0")
    return "; ".join(parts)


def describe_difference(name: str, config: Config, declared: Config) -> str:
    """One difference from the declared configuration, in words and symbols."""
    if name == "cell_output":
        return f"h_t = o_t · {get_activation(config.cell_output).equation}(c_t) (declared {get_activation(declared.cell_output).equation}(c_t))"
    if name == "gate":
        return f"gates i, f, o = {get_activation(config.gate).equation}(z) (declared {get_activation(declared.gate).equation})"
    if name == "order":
        who = GATE_ORDERS.get(config.order, "")
        return (
            f"the stored gate blocks are read in the order {', '.join(config.order)}"
            + (f" ({who})" if who else "")
            + f", not {', '.join(declared.order)}"
        )
    if name == "axis":
        return "the time and feature axes of the inputs are swapped"
    if name == "peepholes":
        return "peepholes are " + ("used" if config.peepholes else "not used (no p·c terms)")
    if name == "forget_bias":
        return f"a runtime forget bias of +{config.forget_bias:g} is added: f_t = σ(z_f + {config.forget_bias:g}) (TF1)"
    if name == "init":
        return "the initial state is h_0 = c_0 = 0" if config.init == "zeros" else "the initial state is the model's h0, c0"
    return name


def configurations(model: LSTMModel, T: int, D: int, has_lengths: bool) -> list[Config]:
    """Every configuration of the space that the model and the inputs allow."""
    declared = declared_config(model)
    params = model.layers[0].forward
    cells = list(dict.fromkeys((declared.cell_output, *CELL_OUTPUTS)))
    gates = list(dict.fromkeys((declared.gate, *GATE_ACTIVATIONS)))
    orders = list(dict.fromkeys((declared.order, *GATE_ORDERS)))
    axes = ["given"] + (["swapped"] if T == D and not has_lengths and model.layers[0].D == T else [])
    peeps = [True, False] if params.peephole is not None else [False]
    nonzero_init = bool(np.any(params.h0) or np.any(params.c0))
    inits = ["model", "zeros"] if nonzero_init else ["model"]
    out = [
        Config(cell, gate, order, axis, peep, fb, init)
        for cell, gate, order, axis, peep, fb, init in itertools.product(
            cells, gates, orders, axes, peeps, (0.0, 1.0), inits
        )
    ]
    out.sort(key=lambda cfg: len(cfg.differences(declared)))  # the declared one first
    return out


def order_permutation(H: int, stored: str, read_as: str) -> np.ndarray:
    """Columns of the canonical (i, f, g, o) arrays that code reading blocks stored
    in ``stored`` order as if they were in ``read_as`` order uses, per gate i, f, g, o."""
    stored, read_as = normalise_gate_order(stored), normalise_gate_order(read_as)
    blocks = {g: np.arange(k * H, (k + 1) * H) for k, g in enumerate(GATES)}
    stored_cols = np.concatenate([blocks[g] for g in stored])  # the stored array's columns
    by_read_gate = dict(zip(read_as, np.split(stored_cols, 4)))
    return np.concatenate([by_read_gate[g] for g in GATES])


# ---------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------


@dataclass
class Fit:
    config: Config
    differences: list[str]
    mean_abs: float  # mean over steps of the per-step mean |diff|
    max_abs: float
    per_step_mean: np.ndarray | None = None  # (T_obs,) for per-step observations
    per_step_max: np.ndarray | None = None
    fits: bool = False

    def summary(self, declared: Config, candidate: str) -> dict:
        return {
            "config": self.config.as_dict(),
            "differences": [describe_difference(n, self.config, declared) for n in self.differences],
            "equation": equation(self.config, candidate),
            "mean_abs_diff": self.mean_abs,
            "max_abs_diff": self.max_abs,
            "fits": self.fits,
        }


@dataclass
class SearchResult:
    declared: Fit
    ranking: list[Fit]  # best first
    scale: float  # mean |observed h|: what the tolerance is relative to
    tolerance: float
    candidates: int
    candidates_full: int  # candidates that ran every step
    steps: int  # steps run by the candidates that ran in full
    observed: dict = field(default_factory=dict)  # what was compared (shape, units, kind)
    seconds: float = 0.0
    candidate_activation: str = "tanh"

    @property
    def best(self) -> Fit:
        return self.ranking[0]


def rank(fits: list[Fit], limit: float) -> list[Fit]:
    """Mark the fits whose mean |diff| ≤ ``limit`` and sort: fitting configurations
    first, the fewest differences from the declared one among them (equally good
    explanations: the simplest), then by mean and max |diff|."""
    for fit in fits:
        fit.fits = bool(np.isfinite(fit.mean_abs) and fit.mean_abs <= limit)
    return sorted(
        fits,
        key=lambda f: (
            not f.fits,
            len(f.differences) if f.fits else 0,
            f.mean_abs if np.isfinite(f.mean_abs) else np.inf,
            f.max_abs if np.isfinite(f.max_abs) else np.inf,
        ),
    )


def search(
    model: LSTMModel,
    x: np.ndarray,
    observation: Observation,
    *,
    lengths: np.ndarray | None = None,
    tolerance: float = 0.01,
    prune_steps: int = PRUNE_STEPS,
    keep: int = KEEP,
) -> SearchResult:
    """Rank the configurations by how well each reproduces ``observation``.

    ``x`` (T, b, D) are the inputs (time-major), the observation's sequences
    being the first ones. A configuration fits when its mean |diff| is at most
    ``tolerance`` × mean |observed h|.
    """
    started = time.perf_counter()
    layer = model.layers[0]
    x = np.asarray(x, dtype=np.float64)
    T, b, D = x.shape
    n = min(observation.B, b)
    if n == 0:
        raise UserError("--observed: no sequence to compare", observation.path)
    x = x[:, :n]
    lengths = None if lengths is None else np.asarray(lengths)[:n]
    declared = declared_config(model)
    configs = configurations(model, T, D, lengths is not None)
    n_candidates = len(configs)
    target_h = observation.h[..., :n, :] if not observation.final else observation.h[:n]
    target_c = None
    if observation.c is not None:
        target_c = observation.c[..., :n, :] if not observation.final else observation.c[:n]
    scale = float(np.nanmean(np.abs(target_h))) if np.isfinite(target_h).any() else 0.0

    if observation.final:
        steps_total = T
        full = len(configs)
        if len(configs) > keep + 1 and n > PRUNE_SEQUENCES:
            # Final states only: every candidate on the first few sequences,
            # then the best few (and the declared one) on all of them.
            m = PRUNE_SEQUENCES
            first = _Runner(model, x[:, :m], None if lengths is None else lengths[:m], configs, observation.units)
            first.run(T)
            score = first.final_diff(target_h[:m], None if target_c is None else target_c[:m])[0]
            chosen = sorted(set(np.argsort(score, kind="stable")[:keep].tolist()) | {0})
            configs = [configs[i] for i in chosen]
            full = len(configs)
        runner = _Runner(model, x, lengths, configs, observation.units)
        runner.run(T)
        diffs = runner.final_diff(target_h, target_c)  # (C,) mean, max
        fits = [
            Fit(cfg, cfg.differences(declared), float(m), float(mx))
            for cfg, m, mx in zip(runner.configs, *diffs)
        ]
    else:
        runner = _Runner(model, x, lengths, configs, observation.units)
        t_obs = min(observation.steps, T)
        steps_total = t_obs
        first = min(prune_steps, t_obs)
        runner.run(first, target_h, target_c)
        if first < t_obs and len(configs) > keep + 1:
            score = runner.mean_so_far()
            order = np.argsort(score, kind="stable")
            chosen = set(order[:keep].tolist()) | {0}  # index 0 is the declared configuration
            runner.select(sorted(chosen))
        runner.run(t_obs - first, target_h, target_c)
        full = len(runner.configs)
        means, maxes = runner.per_step()
        fits = [
            Fit(cfg, cfg.differences(declared), float(np.nanmean(m)), float(np.nanmax(mx)), m, mx)
            for cfg, m, mx in zip(runner.configs, means, maxes)
        ]
    ranking = rank(fits, tolerance * max(scale, 1e-12))
    declared_fit = next(f for f in fits if f.config == declared)
    return SearchResult(
        declared=declared_fit,
        ranking=ranking,
        scale=scale,
        tolerance=tolerance,
        candidates=n_candidates,
        candidates_full=full,
        steps=steps_total,
        observed={
            "kind": "final" if observation.final else "per-step",
            "sequences": n,
            "steps": None if observation.final else steps_total,
            "units": int(len(observation.units)),
            "layout": observation.layout,
            "has_c": observation.c is not None,
        },
        seconds=time.perf_counter() - started,
        candidate_activation=layer.activations.candidate,
    )


class _Runner:
    """All candidates stepping together (float64), vectorised over candidates."""

    def __init__(self, model: LSTMModel, x, lengths, configs: list[Config], units: np.ndarray):
        layer = model.layers[0]
        p = layer.forward
        H = p.H
        self.H = H
        self.units = units
        self.clip = layer.clip
        self.cand = get_activation(layer.activations.candidate).fn
        W = np.asarray(p.W, np.float64)
        U = np.asarray(p.U, np.float64)
        b = np.asarray(p.b, np.float64)
        # One input projection per axis reading, shared by every candidate.
        self.xw = {"given": x @ W}
        if any(cfg.axis == "swapped" for cfg in configs):
            self.xw["swapped"] = x.transpose(2, 1, 0) @ W
        T, B = x.shape[0], x.shape[1]
        self.B = B
        self.mask = None if lengths is None else (np.arange(T)[:, None] < np.asarray(lengths)[None, :])
        self.t = 0
        self.configs = list(configs)
        stored = model.stored_gate_order
        perms = {o: order_permutation(H, stored, o) for o in {cfg.order for cfg in configs}}
        C = len(configs)
        self.perm = np.stack([perms[cfg.order] for cfg in configs])  # (C, 4H)
        self.U0 = U
        bias = np.stack([b[perms[cfg.order]] for cfg in configs])
        bias[:, H : 2 * H] += np.array([cfg.forget_bias for cfg in configs])[:, None]
        self.bias = bias
        peep = np.zeros((C, 3, H))
        if p.peephole is not None:
            use = np.array([cfg.peepholes for cfg in configs])
            peep[use] = np.asarray(p.peephole, np.float64)
        self.peep = peep
        zeros = np.array([cfg.init == "zeros" for cfg in configs])
        h0 = np.where(zeros[:, None], 0.0, np.asarray(p.h0, np.float64)[None, :])
        c0 = np.where(zeros[:, None], 0.0, np.asarray(p.c0, np.float64)[None, :])
        self.h = np.repeat(h0[:, None, :], B, axis=1)
        self.c = np.repeat(c0[:, None, :], B, axis=1)
        self.axis = np.array([cfg.axis for cfg in configs])
        self.gate = np.array([cfg.gate for cfg in configs])
        self.cell = np.array([cfg.cell_output for cfg in configs])
        self.sum_diff: list[np.ndarray] = []  # per step (C,) mean |diff|
        self.max_diff: list[np.ndarray] = []

    def select(self, idx: list[int]) -> None:
        idx = np.asarray(idx)
        self.configs = [self.configs[i] for i in idx]
        for name in ("perm", "bias", "peep", "h", "c", "axis", "gate", "cell"):
            setattr(self, name, getattr(self, name)[idx])
        self.sum_diff = [d[idx] for d in self.sum_diff]
        self.max_diff = [d[idx] for d in self.max_diff]

    def _act(self, names: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.empty_like(z)
        for name in np.unique(names):
            sel = names == name
            out[sel] = get_activation(str(name)).fn(z[sel])
        return out

    def run(self, steps: int, target_h=None, target_c=None) -> None:
        H, H2, H3 = self.H, 2 * self.H, 3 * self.H
        C = len(self.configs)
        for _ in range(steps):
            t = self.t
            # A gate order permutes the columns of x·W and h·U alike: one GEMM of
            # every candidate's h with the stored U, then each candidate's columns.
            pre = (self.h.reshape(C * self.B, H) @ self.U0).reshape(C, self.B, 4 * H)
            for axis, proj in self.xw.items():
                sel = self.axis == axis
                if sel.all():
                    pre += proj[t][None]
                elif sel.any():
                    pre[sel] += proj[t][None]
            z = np.take_along_axis(pre, self.perm[:, None, :], axis=2)
            z += self.bias[:, None, :]
            z[..., :H] += self.peep[:, None, 0] * self.c
            z[..., H:H2] += self.peep[:, None, 1] * self.c
            if self.clip is not None:
                np.clip(z[..., :H3], -self.clip, self.clip, out=z[..., :H3])
            i = self._act(self.gate, z[..., :H])
            f = self._act(self.gate, z[..., H:H2])
            g = self.cand(z[..., H2:H3])
            c = f * self.c + i * g
            z_o = z[..., H3:] + self.peep[:, None, 2] * c
            if self.clip is not None:
                np.clip(z_o, -self.clip, self.clip, out=z_o)
            o = self._act(self.gate, z_o)
            h = o * self._act(self.cell, c)
            if self.mask is not None:
                valid = self.mask[t][None, :, None]
                c = np.where(valid, c, self.c)
                h = np.where(valid, h, self.h)
            self.h, self.c = h, c
            if target_h is not None:
                err = np.abs(h[..., self.units] - target_h[t][None])
                if target_c is not None:
                    err = np.concatenate([err, np.abs(c[..., self.units] - target_c[t][None])], axis=-1)
                err = err.reshape(C, -1)
                with np.errstate(invalid="ignore"):
                    finite = np.isfinite(err)
                    err = np.where(finite, err, np.nan)
                    # a candidate that blows up (nonfinite) where the observation is finite: inf
                    blown = ~np.isfinite(h[..., self.units]).reshape(C, -1) & np.isfinite(target_h[t]).reshape(1, -1)
                    err[blown] = np.inf
                self.sum_diff.append(_nanmean(err))
                self.max_diff.append(_nanmax(err))
            self.t += 1

    def mean_so_far(self) -> np.ndarray:
        return _nanmean(np.stack(self.sum_diff, axis=1))

    def per_step(self) -> tuple[np.ndarray, np.ndarray]:
        return np.stack(self.sum_diff, axis=1), np.stack(self.max_diff, axis=1)

    def final_diff(self, target_h, target_c):
        C = len(self.configs)
        err = np.abs(self.h[..., self.units] - target_h[None])
        if target_c is not None:
            err = np.concatenate([err, np.abs(self.c[..., self.units] - target_c[None])], axis=-1)
        err = err.reshape(C, -1)
        err = np.where(np.isfinite(err), err, np.inf)
        return _nanmean(err), _nanmax(err)


def _nanmean(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN
        return np.nanmean(a, axis=-1)


def _nanmax(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(a, axis=-1)


def search_capture(capture, observation: Observation, tolerance: float = 0.01) -> SearchResult:
    """``search`` over a capture's sample (the first ``sample_size`` sequences).

    With ``--mask`` or ``--padding pre`` the capture runs each sequence's valid steps
    moved to the front (``InputSource.read``), while the observed values sit at the
    user's steps: they are moved the same way (``on_run_steps``) before comparing.
    """
    n = min(observation.B, capture.sample_inputs.shape[1])
    valid = capture.source.valid_steps(0, n) if not observation.final else None
    if valid is not None:
        observation = on_run_steps(observation, valid)
    return search(
        capture.model,
        capture.sample_inputs,
        observation,
        lengths=capture.sample_lengths,
        tolerance=tolerance,
    )


def on_run_steps(observation: Observation, valid: np.ndarray) -> Observation:
    """A per-step observation (T_obs, B_obs, H) at the user's steps, put on the steps
    the capture ran: each sequence's valid steps (``valid`` (T, n), the first n
    sequences) first, in order, then NaN (not compared) where the run only carries
    its state over padding or masked steps."""
    t_obs, n = min(observation.h.shape[0], valid.shape[0]), valid.shape[1]
    v = valid[:t_obs]
    order = np.argsort(~v, axis=0, kind="stable")
    keep = np.take_along_axis(v, order, axis=0)[..., None]

    def move(a):
        if a is None:
            return None
        a = np.asarray(a, dtype=np.float64)[:t_obs, :n]
        return np.where(keep, np.take_along_axis(a, order[..., None], axis=0), np.nan)

    return replace(observation, h=move(observation.h), c=move(observation.c))


def simulate(model: LSTMModel, x: np.ndarray, config: Config, lengths=None) -> tuple[np.ndarray, np.ndarray]:
    """h and c (T, B, H) of ``model`` run under ``config`` over ``x`` (T, B, D): how a
    user's misconfigured code would compute it (tests, and what-if reproductions)."""
    x = np.asarray(x, np.float64)
    T = x.shape[2] if config.axis == "swapped" else x.shape[0]
    runner = _Runner(model, x, lengths, [config], np.arange(model.layers[0].H))
    hs, cs = [], []
    for _ in range(T):
        runner.run(1)
        hs.append(runner.h[0])
        cs.append(runner.c[0])
    return np.stack(hs), np.stack(cs)


__all__ = [
    "Config",
    "Fit",
    "Observation",
    "SearchResult",
    "configurations",
    "declared_config",
    "equation",
    "load_observation",
    "make_observation",
    "search",
    "search_capture",
    "simulate",
]

