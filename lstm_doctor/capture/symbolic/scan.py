"""The symbolic LSTM engine (PyTensor, or legacy Theano): the engine of record.

The same instrumented step as ``lstm_doctor.capture.numpy_loop``, written as a graph
and run by ``scan``; it returns the same ``StepRecord``, and it is the engine
that differentiates (``final_state_gradients``). Shapes: T steps, B sequences,
D input features, H units; gate blocks stacked i, f, g, o (``lstm_doctor.model``).

The maths of one direction (σ = the gate activation)::

    input_term      = x·W                       (T, B, 4H)  one GEMM, outside the loop
    recurrent_term  = h_{t-1}·U                 (B, 4H)     per step
    z = input_term_t + recurrent_term + b
    z_i += p_i·c_{t-1}   z_f += p_f·c_{t-1}     (peepholes)
    z_i, z_f, z_g clipped to [-clip, clip]
    i = σ(z_i)  f = σ(z_f)  g = candidate(z_g)
    c_t = f·c_{t-1} + i·g
    z_o += p_o·c_t ; z_o clipped
    o = σ(z_o)  h_t = o·cell_output(c_t)
    masked step: c_t, h_t = c_{t-1}, h_{t-1}
    preact = [z_i, z_f, z_g, z_o] after clipping; peephole_term = [p_i·c_{t-1},
    p_f·c_{t-1}, 0, p_o·c_t] (what entered preact)

Weights, initial state, inputs, mask and clip are function *inputs*: one
compiled function per ``GraphKey`` (activations, clip or not, peepholes or
not, mask or not, capture, dtype), cached in ``_COMPILED`` for the process and
reused by every model, direction and size of that configuration.

Compile mode (``ENGINE_MODE``, built by ``backend.compile_mode()``): PyTensor's
VM linker with Python thunks (each op's NumPy ``perform``), the ``fast_run``
rewrites without element-wise fusion, plus one rewrite of ours that keeps
every element-wise node a single NumPy ufunc call (``backend._numpy_friendly``).
Never the library default (NUMBA in PyTensor 3).

Measured on this project's machine (2 cores, shared with other jobs while
measuring, load 3-5, so wall times were inflated: the run figures are CPU
seconds, median over runs; OpenBLAS single-threaded; PyTensor 3.0.7). One
direction, float32, T=150, B=256, D=H=256 (the workload of docs/engines.md):

====================================  ==========================  ==========  ==========
mode                                  compile per configuration   run, full   run, h
====================================  ==========================  ==========  ==========
NumPy reference (``engine="numpy"``)  none                        2.1-2.2 s   1.2-1.3 s
**Python VM, fast_run - fusion,**     1.5-1.8 s (full),           1.9-2.6 s   1.4-1.5 s
**+ NumPy-friendly rewrite (chosen)** 0.8-1.0 s (h); every process
same, without the NumPy-friendly      same                        T=20: 3.0 s wall vs 0.74 s
rewrite (3-input adds per element)
Python VM with fusion                 -                           > 300 s already at T=20
Python VM, fast_compile rewrites      0.8-1.0 s / 0.5-0.6 s       4.2-4.3 s   1.5-1.6 s
CVM (C thunks, C loop)                cold 33-58 s / 14-20 s wall 3.4-3.8 s   3.2-3.5 s
                                      (g++); warm disk cache
                                      4.7 s / 2.5 s wall
JAX                                   fails on dynamic shapes: needs fixed shapes, so a
                                      compile per input size; not pursued
NUMBA                                 not re-measured: 18-21 s JIT per graph (docs/engines.md)
====================================  ==========================  ==========  ==========

At the tests' size (T=12, B=5, D=4, H=6) a call takes 6-18 ms in the chosen
mode (Python overhead per step) against ~1 ms in CVM; compile dominates there.
The chosen mode wins on both counts that matter for a CLI: it runs at about the
NumPy reference's speed, 1.5-2x faster than CVM, and it compiles in about a
second with no C compiler, where CVM's first run costs 30-60 s of g++. Its
compile is graph rewriting only, so PyTensor's disk cache (C modules) does not
apply: every process pays it once per configuration (the forward and backward
directions of a layer share one function). With Python thunks an ``Elemwise``
whose input count differs from its NumPy ufunc's (a flattened ``a + b + c``),
a fused ``Composite``, or a scalar op without a NumPy function (``Softplus``,
``Sigmoid``, ``Clip``) runs element by element; hence fusion off, the rewrite,
σ written 0.5·tanh(0.5·x) + 0.5 and clip written as min(max(...)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from lstm_doctor.capture.numpy_loop import (
    CAPTURE_FULL,
    CAPTURE_HIDDEN,
    CAPTURE_STATS,
    StepRecord,
)
from lstm_doctor.capture.symbolic import backend
from lstm_doctor.model import Activations, DirectionParams, Layer

pt = backend.tensor

#: The library and compile mode every symbolic function is built with, for reports.
ENGINE_MODE = f"{backend.NAME} {backend.VERSION}, {backend.mode_name()}"


# ---------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------


def _const(value: float, dtype: str):
    """A scalar constant of ``dtype``, so float32 graphs never upcast to float64."""
    return pt.constant(np.asarray(value, dtype=dtype))


def _clip(x, low, high):
    # maximum/minimum run as NumPy ufuncs; the scalar Clip op has no NumPy
    # implementation and would run element by element with Python thunks.
    return pt.minimum(pt.maximum(x, low), high)


def sym_sigmoid(x, dtype):
    """σ(x) = 0.5·tanh(0.5·x) + 0.5: exact, overflow-free, NumPy's tanh (as activations.py)."""
    half = _const(0.5, dtype)
    return half * pt.tanh(half * x) + half


def sym_hard_sigmoid(x, dtype):
    """clip(0.2·x + 0.5, 0, 1) (Theano / Keras 2 / ONNX)."""
    return _clip(_const(0.2, dtype) * x + _const(0.5, dtype), _const(0, dtype), _const(1, dtype))


def sym_hard_sigmoid6(x, dtype):
    """clip(x/6 + 0.5, 0, 1) = relu6(x + 3)/6 (Keras 3)."""
    return _clip(x / _const(6.0, dtype) + _const(0.5, dtype), _const(0, dtype), _const(1, dtype))


def sym_tanh(x, dtype):
    return pt.tanh(x)


def sym_softsign(x, dtype):
    """x / (1 + |x|)."""
    return x / (_const(1, dtype) + abs(x))


def sym_identity(x, dtype):
    return x


def sym_relu(x, dtype):
    """max(x, 0)."""
    return pt.maximum(x, _const(0, dtype))


def sym_softplus(x, dtype):
    """log(1 + eˣ) = max(x, 0) + log1p(e^-|x|), as NumPy's logaddexp(0, x) computes it."""
    return pt.maximum(x, _const(0, dtype)) + pt.log1p(pt.exp(-abs(x)))


SYMBOLIC_ACTIVATIONS: dict[str, Callable] = {
    "sigmoid": sym_sigmoid,
    "hard_sigmoid": sym_hard_sigmoid,
    "hard_sigmoid6": sym_hard_sigmoid6,
    "tanh": sym_tanh,
    "softsign": sym_softsign,
    "identity": sym_identity,
    "relu": sym_relu,
    "softplus": sym_softplus,
}


def symbolic_activation(name: str, dtype: str) -> Callable:
    """The symbolic version of ``lstm_doctor.model.activations.ACTIVATIONS[name]`` for ``dtype``."""
    fn = SYMBOLIC_ACTIVATIONS[name]
    return lambda x: fn(x, dtype)


# ---------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------


def step(
    input_term_t,
    mask_t,
    h_prev,
    c_prev,
    U,
    b,
    peephole,
    clip,
    projection=None,
    *,
    gate: Callable,
    candidate: Callable,
    cell_output: Callable,
    full: bool = True,
):
    """One LSTM step, Lasagne-style, returning every intermediate.

    Shapes (B sequences, H units; gate blocks stacked i, f, g, o)::

        input_term_t  (B, 4H)  x_t·W, precomputed outside the loop
        mask_t        (B,) bool, or None: False = padding, the state is carried
        h_prev (B, P), c_prev (B, H)     (P = H without a projection)
        U (P, 4H)   b (4H,)   peephole (3, H) or None   clip scalar or None
        projection R (H, P) or None

    The maths (σ = ``gate``)::

        r   = h_{t-1}·U                                    recurrent term (B, 4H)
        z   = x_t·W + r + b
        z_i += p_i·c_{t-1}    z_f += p_f·c_{t-1}           (peepholes)
        z_i, z_f, z_g clipped to [-clip, clip]
        i = σ(z_i)   f = σ(z_f)   g = candidate(z_g)
        c_t = f·c_{t-1} + i·g
        z_o += p_o·c_t ; z_o clipped
        o = σ(z_o)   m_t = o·cell_output(c_t)
        h_t = m_t, or m_t·R with a projection
        masked:  c_t, h_t = c_{t-1}, h_{t-1} where mask_t is False

    Returns ``[h, c, (m,)]`` when ``full`` is False, else ``[h, c, (m,)
    recurrent_term, (peephole_term,) preact, i, f, g, o]``; ``m`` (B, H), the
    cell output before the projection, exists only with a projection (at a
    padding step it is computed but meaningless, like the gates); the peephole term (B, 4H) holds
    p_i·c_{t-1}, p_f·c_{t-1}, 0, p_o·c_t (c_t before masking: what entered
    z_o) and exists only when ``peephole`` is given. ``preact`` is z after
    clipping.
    """
    H = U.shape[1] // 4
    recurrent_term = pt.dot(h_prev, U)
    z = input_term_t + recurrent_term
    z = z + b
    z_i = z[:, 0:H]
    z_f = z[:, H : 2 * H]
    z_g = z[:, 2 * H : 3 * H]
    z_o = z[:, 3 * H :]
    if peephole is not None:
        peep_i = peephole[0] * c_prev
        peep_f = peephole[1] * c_prev
        z_i = z_i + peep_i
        z_f = z_f + peep_f
    if clip is not None:
        z_i = _clip(z_i, -clip, clip)
        z_f = _clip(z_f, -clip, clip)
        z_g = _clip(z_g, -clip, clip)
    i = gate(z_i)
    f = gate(z_f)
    g = candidate(z_g)
    c_new = f * c_prev + i * g
    if peephole is not None:
        peep_o = peephole[2] * c_new
        z_o = z_o + peep_o
    if clip is not None:
        z_o = _clip(z_o, -clip, clip)
    o = gate(z_o)
    m_new = o * cell_output(c_new)
    h_new = m_new if projection is None else pt.dot(m_new, projection)
    if mask_t is not None:
        valid = mask_t.dimshuffle(0, "x")  # (B, 1)
        c = pt.switch(valid, c_new, c_prev)
        h = pt.switch(valid, h_new, h_prev)
    else:
        c, h = c_new, h_new
    state = [h, c] + ([m_new] if projection is not None else [])
    if not full:
        return state
    outputs = state + [recurrent_term]
    if peephole is not None:
        outputs.append(
            pt.concatenate([peep_i, peep_f, pt.zeros_like(peep_i), peep_o], axis=1)
        )
    outputs.append(pt.concatenate([z_i, z_f, z_g, z_o], axis=1))
    outputs += [i, f, g, o]
    return outputs


# ---------------------------------------------------------------------------
# Graph, compiled function and cache
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphKey:
    """Everything that changes the graph; sizes and weight values do not."""

    gate: str
    candidate: str
    cell_output: str
    has_clip: bool
    has_peephole: bool
    has_mask: bool
    capture: str
    dtype: str
    has_projection: bool = False


@dataclass
class CompiledDirection:
    key: GraphKey
    fn: Callable
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    compile_seconds: float


# The one cache of compiled functions for the process: (what, graph key, mode) -> CompiledDirection,
# where "what" is "direction" (the capture) or "gradient" (its vector-Jacobian product).
_COMPILED: dict[tuple[str, GraphKey, str | int], CompiledDirection] = {}


def _compiled(what: str, key: GraphKey, mode, build: Callable) -> CompiledDirection:
    """The cached function ``what`` of ``key``, else ``build(mode) -> (fn, input_names,
    output_names)`` timed and cached. ``mode`` None is ``backend.compile_mode()``;
    another mode (benchmarks only) is cached separately."""
    cache_key = (what, key, "default" if mode is None else id(mode))
    hit = _COMPILED.get(cache_key)
    if hit is not None:
        return hit
    start = time.perf_counter()
    fn, input_names, output_names = build(backend.compile_mode() if mode is None else mode)
    compiled = CompiledDirection(key, fn, tuple(input_names), tuple(output_names), time.perf_counter() - start)
    _COMPILED[cache_key] = compiled
    return compiled


def compile_seconds(what: str, key: GraphKey) -> float:
    """What compiling ``what`` ("direction" or "gradient") of ``key`` cost this process (0 if not compiled)."""
    if what == "gradient":
        key = replace(key, capture=CAPTURE_HIDDEN)
    hit = _COMPILED.get((what, key, "default"))
    return float(hit.compile_seconds) if hit is not None else 0.0


def graph_key(params: DirectionParams, layer: Layer, has_mask: bool, capture: str) -> GraphKey:
    acts: Activations = layer.activations
    return GraphKey(
        gate=acts.gate,
        candidate=acts.candidate,
        cell_output=acts.cell_output,
        has_clip=layer.clip is not None,
        has_peephole=params.peephole is not None,
        has_mask=has_mask,
        capture=capture,
        dtype=str(params.dtype),
        has_projection=params.projection is not None,
    )


def build_graph(key: GraphKey, mode=None):
    """The symbolic inputs and outputs of one direction over a chunk.

    Inputs (all function inputs, none constant)::

        x (T, B, D)   W (D, 4H)   U (P, 4H)   b (4H,)   h0 (P,)   c0 (H,)
        peephole (3, H)   mask (T, B) bool   clip ()   projection (H, P)
                                                       (when the key has them)

    Returns ``(inputs, outputs, input_term)``: two name -> variable dicts and
    the x·W variable (for gradients). Outputs: ``h`` (T, B, P), ``c`` (T, B, H)
    (and ``m`` (T, B, H) with a projection) for capture
    "h"; with capture "full" also ``input_term, recurrent_term,
    (peephole_term,) preact`` (T, B, 4H) and ``i, f, g, o`` (T, B, H).
    """
    dtype = key.dtype
    full = key.capture == CAPTURE_FULL
    x = pt.tensor3(name="x", dtype=dtype)
    W = pt.matrix(name="W", dtype=dtype)
    U = pt.matrix(name="U", dtype=dtype)
    b = pt.vector(name="b", dtype=dtype)
    h0 = pt.vector(name="h0", dtype=dtype)
    c0 = pt.vector(name="c0", dtype=dtype)
    inputs = {"x": x, "W": W, "U": U, "b": b, "h0": h0, "c0": c0}
    peephole = mask = clip = None
    if key.has_peephole:
        peephole = inputs["peephole"] = pt.matrix(name="peephole", dtype=dtype)
    if key.has_mask:
        mask = inputs["mask"] = pt.matrix(name="mask", dtype="bool")
    if key.has_clip:
        clip = inputs["clip"] = pt.scalar(name="clip", dtype=dtype)
    projection = None
    if key.has_projection:
        projection = inputs["projection"] = pt.matrix(name="projection", dtype=dtype)

    T, B, D = x.shape[0], x.shape[1], x.shape[2]
    H = W.shape[1] // 4
    # One GEMM for the input projection of every step, outside the loop.
    input_term = pt.dot(x.reshape((T * B, D)), W).reshape((T, B, 4 * H))
    h_init = pt.alloc(h0, B, h0.shape[0])  # P units
    c_init = pt.alloc(c0, B, H)

    acts = {
        role: symbolic_activation(getattr(key, role), dtype)
        for role in ("gate", "candidate", "cell_output")
    }
    n_extra = ((6 + key.has_peephole) if full else 0) + key.has_projection

    def scan_step(*args):
        args = list(args)
        input_term_t = args.pop(0)
        mask_t = args.pop(0) if key.has_mask else None
        h_prev, c_prev, U_, b_ = args[:4]
        rest = args[4:]
        peep_ = rest.pop(0) if key.has_peephole else None
        clip_ = rest.pop(0) if key.has_clip else None
        proj_ = rest.pop(0) if key.has_projection else None
        return step(
            input_term_t, mask_t, h_prev, c_prev, U_, b_, peep_, clip_, proj_, full=full, **acts
        )

    sequences = [input_term] + ([mask] if key.has_mask else [])
    non_sequences = [U, b] + [v for v in (peephole, clip, projection) if v is not None]
    outputs = backend.scan_outputs(
        scan_step,
        sequences=sequences,
        outputs_info=[h_init, c_init] + [None] * n_extra,
        non_sequences=non_sequences,
        strict=True,
        mode=mode,  # the inner step is compiled with this mode, not the outer one
        name="lstm_doctor_step",
    )
    names = ["h", "c"] + (["m"] if key.has_projection else [])
    if full:
        names += ["recurrent_term"]
        names += ["peephole_term"] if key.has_peephole else []
        names += ["preact", "i", "f", "g", "o"]
        outputs = list(outputs) + [input_term]
        names.append("input_term")
    return inputs, dict(zip(names, outputs)), input_term


def compile_direction(key: GraphKey, mode=None) -> CompiledDirection:
    """The compiled function for ``key`` (cached for the process).

    ``mode`` defaults to ``backend.compile_mode()``; another mode is for
    benchmarks only and is cached separately.
    """
    def build(mode):
        inputs, outputs, _ = build_graph(key, mode)
        fn = backend.function(
            list(inputs.values()),
            list(outputs.values()),
            mode=mode,
            on_unused_input="ignore",
            name="lstm_doctor_direction",
        )
        return fn, inputs, outputs

    return _compiled("direction", key, mode, build)


def run_direction(
    params: DirectionParams,
    layer: Layer,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    capture: str = CAPTURE_FULL,
    *,
    observer=None,
    keep: int = 0,
    mode=None,
) -> StepRecord:
    """Run one direction forward in time over ``x`` (T, B, D): the contract of
    ``lstm_doctor.capture.numpy_loop.run_direction``.

    ``mask`` (T, B) bool: where False the step is padding and the state is
    carried (h_t = h_{t-1}, c_t = c_{t-1}). Capture "full" fills every field of
    the ``StepRecord``; "h" only ``h`` and ``c``; "stats" only ``h`` plus, with
    ``keep`` > 0, ``sample``: the full record of the first ``keep`` sequences.
    A step ``observer`` (streaming reducers) needs the NumPy engine: the
    compiled scan does not hand steps back to Python. ``mode`` overrides the
    compile mode (benchmarks only).
    """
    if capture not in (CAPTURE_FULL, CAPTURE_HIDDEN, CAPTURE_STATS):
        raise ValueError(f"unknown capture mode {capture!r}")
    if observer is not None:
        raise ValueError("the symbolic engine does not stream steps to an observer; use the numpy engine")
    dtype = params.dtype
    x = np.asarray(x, dtype=dtype)
    T, B, _ = x.shape
    full = capture == CAPTURE_FULL
    if T == 0:
        record = _empty_record(params, B, full)
    else:
        key = graph_key(params, layer, mask is not None, CAPTURE_FULL if full else CAPTURE_HIDDEN)
        compiled = compile_direction(key, mode)
        values = _input_values(key, params, layer, x, mask)
        results = compiled.fn(*(values[name] for name in compiled.input_names))
        record = StepRecord(bias=params.b, **dict(zip(compiled.output_names, results)))
    if capture == CAPTURE_STATS:
        record.c = None  # "stats" keeps h only (as the NumPy engine)
    keep = min(int(keep), B) if capture == CAPTURE_STATS else 0
    if keep:
        # Sequences are independent: the first ``keep`` of them, run alone.
        sample_mask = None if mask is None else np.asarray(mask)[:, :keep]
        record.sample = run_direction(
            params, layer, x[:, :keep], sample_mask, CAPTURE_FULL, mode=mode
        )
    return record


def _empty_record(params: DirectionParams, B: int, full: bool) -> StepRecord:
    dtype, H = params.dtype, params.H
    state = {"h": np.empty((0, B, params.P), dtype), "c": np.empty((0, B, H), dtype)}
    if params.projection is not None:
        state["m"] = np.empty((0, B, H), dtype)
    if not full:
        return StepRecord(bias=params.b, **state)
    stacked = {
        name: np.empty((0, B, 4 * H), dtype)
        for name in ("input_term", "recurrent_term", "preact")
    }
    if params.peephole is not None:
        stacked["peephole_term"] = np.empty((0, B, 4 * H), dtype)
    gates = {name: np.empty((0, B, H), dtype) for name in "ifgo"}
    return StepRecord(bias=params.b, **state, **stacked, **gates)


# ---------------------------------------------------------------------------
# Gradients (autodiff through the scan)
# ---------------------------------------------------------------------------


def gradient_function(key: GraphKey, mode=None) -> CompiledDirection:
    """The compiled vector-Jacobian product of the final hidden state (cached).

    With a cotangent ``seed`` (B, P) the scalar is L = Σ seed ⊙ h_T, where h_T
    = h[T-1] (B, P) is the state after the last step (masked steps carry it).
    Inputs: those of ``build_graph(key)`` (capture "h") and then ``seed``.
    Outputs, in this order::

        h_T         (B, H)
        x           (T, B, D)    ∂L/∂x
        input_term  (T, B, 4H)   ∂L/∂(x_t·W): the gradient reaching the
                                 pre-activations of step t through the input
        W (D, 4H)   U (P, 4H)   b (4H,)   h0 (P,)   c0 (H,)   (peephole (3, H))
        (projection (H, P))

    A one-hot ``seed`` gives one row of the Jacobian ∂h_T/∂x (issue G701's
    ‖∂h_T/∂x_t‖); ``seed`` = 1 gives the gradient of Σ h_T.
    """
    key = replace(key, capture=CAPTURE_HIDDEN)

    def build(mode):
        inputs, outputs, input_term = build_graph(key, mode)
        seed = inputs["seed"] = pt.matrix(name="seed", dtype=key.dtype)
        h_last = outputs["h"][-1]
        loss = (seed * h_last).sum()
        wrt_names = ["x", "input_term", "W", "U", "b", "h0", "c0"]
        wrt_names += ["peephole"] if key.has_peephole else []
        wrt_names += ["projection"] if key.has_projection else []
        wrt = [input_term if name == "input_term" else inputs[name] for name in wrt_names]
        grads = backend.grad(loss, wrt)
        fn = backend.function(
            list(inputs.values()),
            [h_last, *grads],
            mode=mode,
            on_unused_input="ignore",
            name="lstm_doctor_direction_grad",
        )
        return fn, inputs, ("h_T", *wrt_names)

    return _compiled("gradient", key, mode, build)


def final_state_gradients(
    params: DirectionParams,
    layer: Layer,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    seed: np.ndarray | None = None,
    *,
    mode=None,
) -> dict[str, np.ndarray]:
    """∂L/∂(x, x·W, W, U, b, h0, c0, peephole) for L = Σ seed ⊙ h_T, over ``x`` (T, B, D).

    ``seed`` (B, P) defaults to ones. Returns a dict keyed as the outputs of
    ``gradient_function`` (``h_T`` included). T must be at least 1.
    """
    dtype = params.dtype
    x = np.asarray(x, dtype=dtype)
    T, B, _ = x.shape
    if T == 0:
        raise ValueError("gradients need at least one step")
    key = graph_key(params, layer, mask is not None, CAPTURE_HIDDEN)
    compiled = gradient_function(key, mode)
    values = _input_values(key, params, layer, x, mask)
    values["seed"] = np.ones((B, params.P), dtype) if seed is None else np.asarray(seed, dtype)
    results = compiled.fn(*(values[name] for name in compiled.input_names))
    return dict(zip(compiled.output_names, results))


def _input_values(key: GraphKey, params: DirectionParams, layer: Layer, x, mask) -> dict:
    """Name -> value for the inputs of ``build_graph(key)``."""
    values = {
        "x": x,
        "W": params.W,
        "U": params.U,
        "b": params.b,
        "h0": params.h0,
        "c0": params.c0,
    }
    if key.has_peephole:
        values["peephole"] = params.peephole
    if key.has_mask:
        values["mask"] = np.asarray(mask, dtype=bool)
    if key.has_clip:
        values["clip"] = np.asarray(layer.clip, dtype=params.dtype)
    if key.has_projection:
        values["projection"] = params.projection
    return values
