"""Gradient flow: what the final encoding depends on, by reverse-mode differentiation.

Computed over the bounded sample only (the first ``GRADIENT_SEQUENCES``
sequences of the capture's sample), so the cost does not grow with the inputs.
For layer 0's first direction (the one whose inputs are the model's inputs)
and L = Σ seed ⊙ h_T, the LSTM's backward recursion on the gates the capture
recorded (``experiments.sensitivity``, the default, in the model's dtype) or
PyTensor's ``grad`` through the instrumented scan
(``symbolic.final_state_gradients``, the check) gives ∂L/∂x_t and ∂L/∂h_t;
from them:

- ``input_sensitivity[lag]``: the mean over sequences of ‖∂h_T/∂x_t‖_F, the
  Frobenius norm of the H × D Jacobian, indexed by lag = (last valid step) − t
  (lag 0 is the last step). With H ≤ ``EXACT_UNITS`` the Jacobian's rows are
  taken exactly (one one-hot seed per unit, the sample replicated H times in
  one call); above it, ``PROBES`` fixed ±1 (Rademacher) seeds v estimate
  ‖J‖²_F = E‖vᵀJ‖² (Hutchinson; see ``probes``).
- ``state_sensitivity[lag]``: the mean of ‖∂h_T/∂h_t‖_F, the path through the
  hidden state with c_t held fixed: ∂L/∂h_t = ∂L/∂z_{t+1} · Uᵀ, where ∂L/∂z_{t+1}
  is the gradient reaching step t+1's pre-activations (= ∂L/∂(x_{t+1}·W)). At lag
  0, each sequence's last valid step, it is the seed itself (‖I‖_F = √H).
- ``memory_horizon``: within the window from the end up to the first lag whose
  sensitivity is below 1e-3 of the peak (``HORIZON_GAP``, where G701 says it
  has vanished), the fewest final steps whose squared input sensitivities sum
  to 99% of the window's total (``HORIZON_SHARE``): the window that explains
  99% of the first-order variance of h_T under independent perturbations of
  the remembered steps (see ``memory_horizon``).
  Measured: 18 steps for a Glorot model with forget bias 1 (H=16, T=40); 1
  step for ``tests/factory.case_like`` (saturated gates, T=64).
- per gate, the mean local derivative of its actual activation at the
  captured values (σ' = σ(1−σ), hard σ: its slope inside (0, 1) and 0 outside,
  tanh' = 1 − tanh²), over the sequences the sensitivities are taken on
  (every layer and direction).
- ``perturbation``: how much the final encodings move when each sequence gets
  another sequence's input (the sample rolled by one along the batch), relative
  to the encodings' mean norm: ‖h_T(x_π) − h_T(x)‖ / ‖h_T(x)‖. Every sequence
  starts from the same (h0, c0) and sequences do not interact, so h_T(x_π(j))
  is sequence π(j)'s encoding, which the capture kept: no rerun.

Rules G701, G702 and H602 (``analyzers/differential.py``) read the result from
``capture.gradients``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lstm_doctor.capture.engines import reverse_padded
from lstm_doctor.capture.numpy_loop import blas_threads_context
from lstm_doctor.experiments import sensitivity
from lstm_doctor.model import GATES, LSTMModel
from lstm_doctor.model.activations import activation_derivative

GRADIENT_SEQUENCES = 8
EXACT_UNITS = 32
# Hutchinson probes per sequence above EXACT_UNITS. The backward's cost is its
# rows (sequences × probes) times the forward's per-row cost; 8 × 4 = 32 rows
# keep it within 15% of a 256-sequence capture (benchmarks/RESULTS.md), and at
# fixed rows more sequences and fewer probes give the lower variance (the
# between-sequence variation is averaged as well).
PROBES = 4
HORIZON_SHARE = 0.99
HORIZON_GAP = 1e-3  # G701's default ratio: below it, a step's sensitivity has vanished


@dataclass
class GradientResult:
    layer: int
    direction: str
    input_sensitivity: np.ndarray  # (T,) by lag, lag 0 = last step
    state_sensitivity: np.ndarray  # (T,) by lag
    memory_horizon: int
    gate_derivative: dict[tuple[int, str], dict[str, float]]  # (layer, dir) -> gate -> mean derivative
    perturbation: float  # relative change of the encodings when inputs are permuted across the batch
    input_scale: float  # rms of the inputs' deviation from their mean (per feature)
    encoding_scale: float  # mean ‖h_T‖
    sequences: int
    exact: bool
    probes: int
    seconds: float = 0.0
    compile_seconds: float = 0.0
    inputs_differ: bool = True  # whether the permutation changed any input (not with a constant probe)
    extra: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.input_sensitivity)

    def first_order_change(self) -> float:
        """Predicted relative change of h_T for an input change of one typical deviation per step:
        √(Σ_t ‖∂h_T/∂x_t‖²) · input_scale / ‖h_T‖ (inputs of different sequences differ by ~√2 that)."""
        total = float(np.sqrt(np.sum(np.square(self.input_sensitivity))))
        return total * self.input_scale / max(self.encoding_scale, 1e-30)


def memory_horizon(sensitivity: np.ndarray, share: float = HORIZON_SHARE, gap: float = HORIZON_GAP) -> int:
    """The memory horizon: how many final steps h_T remembers, counted from the end.

    ``sensitivity[lag]`` is ‖∂h_T/∂x_t‖_F with lag 0 the last step. The window
    runs from the end up to the first lag whose sensitivity is below ``gap`` ×
    the largest sensitivity (the lag at which G701 says it has vanished; 0 and
    underflowed values count as below); the horizon is the fewest final steps
    of that window that carry ``share`` of its Σ‖∂h_T/∂x_t‖². Squared norms:
    under independent unit perturbations of the steps, the first-order variance
    of h_T is the sum of the squared Jacobian norms.

    Why a window from the end and not the whole strip: with every gate pinned
    (f ≈ 1), the first steps, taken from h_0 = c_0 = 0 while the gates are still
    in their linear range, keep a sensitivity comparable to the last step's
    after a gap of many orders of magnitude; summing over the whole strip then
    called that "a horizon of T steps" while the sensitivity had vanished one
    step from the end. The horizon is at least 1 when any step's sensitivity is
    positive, and 0 when none is (every value zero, underflowed or non-finite).
    """
    s = np.nan_to_num(np.asarray(sensitivity, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    s = np.abs(s)
    if s.size == 0:
        return 0
    peak = float(s.max())
    if not peak > 0:
        return 0
    below = np.flatnonzero(s < gap * peak)
    end = int(below[0]) if below.size else s.size
    window = s[: max(end, 1)] ** 2
    total = float(window.sum())
    if not total > 0:
        # lag 0 itself vanished relative to a peak further back: the last step is
        # all the window there is
        return 1
    return int(min(np.searchsorted(np.cumsum(window), share * total - 1e-15 * total) + 1, window.size))


def _mean_derivative(name: str, values: np.ndarray, valid: np.ndarray | None) -> float:
    """The mean of ``activation_derivative(name, values)`` over the valid (step, sequence) rows
    of values (T, b, H), NaN entries left out (``np.nanmean``).

    σ and tanh, the common case, without a float64 copy of the sample: per row,
    Σ_u v(1−v) or Σ_u (1−v)(1+v) as an H-long dot product in the values' dtype
    (1−v and 1+v are exact where the derivative is small, so there is no
    cancellation), the rows summed in float64. A non-finite row sum (a NaN in
    the sample) takes the element-wise path, which drops the NaN entries.
    """
    if name in ("sigmoid", "tanh") and values.dtype in (np.float32, np.float64):
        v = values
        rows = np.einsum("tbh,tbh->tb", v, 1 - v) if name == "sigmoid" else np.einsum("tbh,tbh->tb", 1 - v, 1 + v)
        if valid is not None:
            rows = rows[valid]
        if np.isfinite(rows).all():
            count = rows.size * v.shape[-1]
            return float(rows.sum(dtype=np.float64) / count) if count else float("nan")
    deriv = activation_derivative(name, values)
    if valid is not None:
        deriv = deriv[valid]
    return float(np.nanmean(deriv)) if deriv.size else float("nan")


def gate_derivatives(capture, sequences: int | None = None, copies: dict | None = None
                     ) -> dict[tuple[int, str], dict[str, float]]:
    """Per (layer, direction), per gate, the mean local derivative over the valid steps of the
    sample's first ``sequences`` sequences (all of the sample's with None).

    ``copies`` ((layer, direction) -> {gate: (T, sequences, H)}) are contiguous
    copies of those sequences of the sample (``sensitivity.recorded_states``
    makes them): the same values, read ~3× faster than the strided sample."""
    out = {}
    lengths = capture.sample_lengths
    copies = copies or {}
    for (k, d), arrays in capture.sample.items():
        acts = capture.model.layers[k].activations
        res = {}
        for g in GATES:
            if g not in arrays:
                continue
            values = copies[(k, d)][g] if (k, d) in copies else np.asarray(arrays[g])[:, :sequences]  # (T, b, H)
            valid = None
            if lengths is not None:
                valid = np.arange(values.shape[0])[:, None] < np.asarray(lengths)[None, : values.shape[1]]
            res[g] = _mean_derivative(acts.candidate if g == "g" else acts.gate, values, valid)
        out[(k, d)] = res
    return out


def _seeds(H: int) -> tuple[np.ndarray, bool]:
    """(P, H) seed vectors: one-hot rows (exact) or Hutchinson probes."""
    if H <= EXACT_UNITS:
        return np.eye(H), True
    return probes(PROBES, H), False


def probes(P: int, H: int) -> np.ndarray:
    """(P, H) fixed Rademacher probes: v_pu = ±1, the sign from the top bit of
    splitmix64(p·H + u + 1), so E[vvᵀ] = I over the entries' signs.

    Why ±1 and not Gaussian: Hutchinson's estimate vᵀAv of tr A (A = JJᵀ) has
    variance 2(‖A‖²_F − Σ_i A_ii²) with Rademacher probes against 2‖A‖²_F with
    Gaussian ones, and a hash needs no random-number generator: importing
    ``numpy.random`` cost 6–9 ms, most of a small capture's gradient budget
    (nothing else in a diagnosis with an inputs file imports it).
    """
    z = np.arange(1, P * H + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # wraps modulo 2^64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return np.where(z >> np.uint64(63), -1.0, 1.0).reshape(P, H)


def analyze_gradients(capture, sequences: int = GRADIENT_SEQUENCES, method: str = "numpy") -> GradientResult:
    """Sensitivities of layer 0's first direction over the first ``sequences`` of the sample.

    ``method`` "numpy" (the default): the backward recursion of
    ``experiments.sensitivity`` on the gates the capture recorded for the
    sample (no PyTensor import, no compile, no forward rerun), in the model's
    dtype; "pytensor": PyTensor's ``grad`` through the instrumented scan
    (``--engine pytensor``), the check the recursion is tested against. Both
    give ‖∂L/∂x_t‖² and ‖∂L/∂h_t‖² per (step, sequence, seed), so everything
    below is shared.
    """
    if method not in ("numpy", "pytensor"):
        raise ValueError(f"unknown gradient method {method!r}")
    started = time.perf_counter()
    model: LSTMModel = capture.model
    layer = model.layers[0]
    direction, params = next(iter(layer.directions()))
    x_all = np.asarray(capture.sample_inputs)
    n = min(sequences, x_all.shape[1])
    x = np.asarray(x_all[:, :n], dtype=params.dtype)
    lengths = None if capture.sample_lengths is None else np.asarray(capture.sample_lengths)[:n]
    T, _, D = x.shape
    Hh = params.P  # h's units: H, or the projection's width (LSTMP), which seeds and ∂L/∂h_t have
    seeds, exact = _seeds(Hh)
    P = len(seeds)
    mask_n = None if lengths is None else np.arange(T)[:, None] < lengths[None, :]  # (T, n)
    compile_seconds = 0.0
    copies = {}  # the recorded gates of the n sequences, contiguous, for gate_derivatives
    t0 = time.perf_counter()
    if method == "numpy":
        fw = sensitivity.recorded_states(capture.sample.get((0, direction)), params, layer, n, mask_n)
        if fw is not None:
            copies[(0, direction)] = fw
        else:  # a clip, or a sample without the gates: recompute the forward (float64)
            fw = sensitivity.forward_states(params, layer, _processing_order(x, lengths, direction), mask_n)
        with blas_threads_context(n * P, D, params.H):  # small GEMMs: one BLAS thread (numpy_loop explains)
            sq_x, sq_h = sensitivity.sensitivity_norms(fw, params, layer, seeds, params.dtype)
    else:
        sq_x, sq_h, compile_seconds = _pytensor_norms(params, layer, x, lengths, direction, seeds)
    grad_seconds = time.perf_counter() - t0
    # Squared norms per (step, sequence), summed over the seeds (exact: the Jacobian's rows).
    sq_x, sq_h = sq_x.sum(-1), sq_h.sum(-1)
    if not exact:
        sq_x /= P
        sq_h /= P
    norm_x, norm_h = np.sqrt(sq_x), np.sqrt(sq_h)  # (T, n) in processing order
    # Index by lag from each sequence's last valid processed step.
    last = np.full(n, T - 1) if lengths is None else np.asarray(lengths) - 1
    sens_x = np.zeros(T)
    sens_h = np.zeros(T)
    counts = np.zeros(T)
    for j in range(n):
        L = int(last[j]) + 1
        if L <= 0:
            continue
        sens_x[:L] += norm_x[:L, j][::-1]
        sens_h[:L] += norm_h[:L, j][::-1]
        counts[:L] += 1
    sens_x = np.where(counts > 0, sens_x / np.maximum(counts, 1), np.nan)
    sens_h = np.where(counts > 0, sens_h / np.maximum(counts, 1), np.nan)

    # Perturbation: each sequence gets the next one's input. Every sequence
    # starts from the same (h0, c0) and sequences do not interact, so the
    # encoding of sequence j's position given sequence roll[j]'s input (and
    # length) is the encoding of sequence roll[j], which the capture kept: no
    # rerun.
    roll = np.roll(np.arange(n), -1)
    enc = np.asarray(capture.sample_encodings[:n], np.float64)
    enc_p = enc[roll]
    scale = float(np.mean(np.linalg.norm(enc, axis=1)))
    change = np.linalg.norm(enc_p - enc, axis=1)
    perturbation = float(np.mean(change)) / max(scale, 1e-30) if n > 1 else float("nan")
    full_x = np.asarray(x_all[:, :n])
    # whether the permutation changes any input at all (a constant probe: it does not)
    inputs_differ = bool(np.any(full_x[:, roll] != full_x)) or (lengths is not None and bool(np.any(lengths[roll] != lengths)))
    dev = full_x.astype(np.float64) - full_x.astype(np.float64).mean(axis=(0, 1), keepdims=True)
    input_scale = float(np.sqrt(np.mean(dev**2)))
    return GradientResult(
        layer=0,
        direction=direction,
        input_sensitivity=sens_x,
        state_sensitivity=sens_h,
        memory_horizon=memory_horizon(sens_x),
        gate_derivative=gate_derivatives(capture, n, copies),  # the sequences the sensitivities are taken on
        perturbation=perturbation,
        input_scale=input_scale,
        encoding_scale=scale,
        sequences=n,
        exact=exact,
        probes=P,
        seconds=time.perf_counter() - started,
        compile_seconds=compile_seconds,
        inputs_differ=inputs_differ,
        extra={"gradient_call_seconds": grad_seconds, "method": method},
    )


def _pytensor_norms(params, layer, x, lengths, direction, seeds) -> tuple[np.ndarray, np.ndarray, float]:
    """‖∂L/∂x_t‖² and ‖∂L/∂h_t‖² (T, n, P) by PyTensor's grad through the scan, and its compile time.

    ∂L/∂h_t = ∂L/∂z_{t+1} · Uᵀ before the last valid step, the seed at it
    (padding carries h_T = h_t back): ``sensitivity._backward``'s definition.
    """
    from lstm_doctor.capture.symbolic.scan import compile_seconds, final_state_gradients, graph_key

    T, n, _ = x.shape
    P, Hh = seeds.shape
    H = params.H
    # Replicate the sample once per seed: sequences are independent, so one call.
    lens = None if lengths is None else np.repeat(lengths, P)
    mask = None if lengths is None else np.arange(T)[:, None] < lens[None, :]  # (T, n·P)
    xr = np.repeat(x, P, axis=1)  # (T, n·P, D), sequence-major
    seed = np.tile(seeds, (n, 1))  # (n·P, H)
    xin = _processing_order(xr, lens, direction)
    key = graph_key(params, layer, mask is not None, "h")
    grads = final_state_gradients(params, layer, xin, mask, seed.astype(params.dtype))
    compiled = compile_seconds("gradient", key)
    gx = np.asarray(grads["x"], np.float64)  # (T, n·P, D), processing order
    gz = np.asarray(grads["input_term"], np.float64)  # (T, n·P, 4H)
    gh = np.empty((T, n * P, Hh))
    # ∂L/∂h_t through z_{t+1}; one 2-D GEMM (a stacked 3-D matmul does not reach BLAS: 8 s at H=256)
    UT = np.ascontiguousarray(np.asarray(params.U, np.float64).T)
    gh[:-1] = (gz[1:].reshape(-1, 4 * H) @ UT).reshape(T - 1, n * P, Hh)
    gh[-1] = seed
    if mask is not None:
        # a padded step t+1 carries h_t to h_T: there ∂L/∂h_t is the seed
        gh[:-1] = np.where(mask[1:, :, None], gh[:-1], seed[None])
    sq = [(a**2).sum(-1).reshape(T, n, P) for a in (gx, gh)]
    return sq[0], sq[1], compiled


def _processing_order(x: np.ndarray, lengths, direction: str) -> np.ndarray:
    """x (T, B, D) in the order the direction processes it: reversed for "rev"
    (each sequence's valid steps reversed in place when padded)."""
    if direction != "rev":
        return x
    if lengths is None:
        return x[::-1]

    return reverse_padded(x, lengths)


def statistics(result: GradientResult) -> dict:
    """The report's ``statistics.gradients`` section (deterministic: no timings)."""
    return {
        "layer": result.layer,
        "direction": result.direction,
        "sequences": result.sequences,
        "exact": result.exact,
        "probes": result.probes,
        "input_sensitivity_by_lag": result.input_sensitivity,
        "state_sensitivity_by_lag": result.state_sensitivity,
        "memory_horizon": result.memory_horizon,
        "horizon_share": HORIZON_SHARE,
        "perturbation_change": result.perturbation,
        "first_order_change": result.first_order_change(),
        "gate_derivative": [
            {"layer": k, "direction": d, "mean": dict(v)} for (k, d), v in sorted(result.gate_derivative.items())
        ],
    }
