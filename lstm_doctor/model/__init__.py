"""The canonical LSTM model: what every importer produces.

Per layer and direction (``DirectionParams``)::

    W   (D, 4H)   input weights, gate blocks stacked in the canonical order i, f, g, o
    U   (P, 4H)   recurrent weights, same order (P = H without a projection)
    b   (4H,)     bias, same order (two framework biases are summed; a runtime
                  forget bias such as TF1's +1 is folded in and recorded in ``notes``)
    peephole (3, H) or None   rows p_i, p_f, p_o
    projection (H, P) or None   R = W_hr^T of PyTorch's ``proj_size > 0`` (LSTMP)
    h0 (P,), c0 (H,)  initial state

The equations every engine computes (``Activations`` names gate, candidate and
cell-output functions; σ below is the gate activation)::

    z_t = x_t·W + h_{t-1}·U + b   (+ peephole terms)        (4H,)
    i = σ(z_i + p_i·c_{t-1})      f = σ(z_f + p_f·c_{t-1})
    g = act_candidate(z_g)
    c_t = f·c_{t-1} + i·g
    o = σ(z_o + p_o·c_t)
    m_t = o · act_cell_output(c_t)                          (H,)
    h_t = m_t                  without a projection          (H,)
    h_t = m_t·R                with a projection R (H, P)    (P,)

With a projection (LSTMP, Sak et al. 2014) the hidden state h has P units
while the cell and the gates have H: the recurrence reads the projected h
(U is (P, 4H)), and so does the next layer (2P values for a bidirectional
layer). The per-unit statistics describe the H cell outputs m_t.

Arrays are stored read-only, so a model is immutable once built; "what-if"
fixes build new models with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np

from lstm_doctor.choices import LAYOUTS
from lstm_doctor.errors import ModelError
from lstm_doctor.model.activations import Activation, get_activation

GATES = ("i", "f", "g", "o")  # canonical stacking order
SIGMOID_GATES = ("i", "f", "o")
PEEPHOLE_GATES = ("i", "f", "o")
DIRECTIONS = ("fwd", "rev")
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def reorder_gates(array: np.ndarray, stored_order: str, axis: int = -1) -> np.ndarray:
    """Reorder the 4 stacked gate blocks of ``array`` from ``stored_order`` to i, f, g, o.

    ``stored_order`` is a 4-letter string over {i, f, g, o}; ``c`` and ``j`` are
    accepted for the candidate (Keras and TF1 spell it so).
    """
    order = normalise_gate_order(stored_order)
    size = array.shape[axis]
    if size % 4:
        raise ModelError(f"stacked gate axis has length {size}, not divisible by 4")
    blocks = np.split(array, 4, axis=axis)
    by_gate = dict(zip(order, blocks))
    return np.concatenate([by_gate[g] for g in GATES], axis=axis)


def normalise_gate_order(order: str) -> str:
    spelled = str(order).lower().replace("c", "g").replace("j", "g")
    if sorted(spelled) != sorted(GATES):
        raise ModelError(
            f"gate order {order!r} must be a permutation of i, f, g (or c), o"
        )
    return spelled


@dataclass(frozen=True)
class Activations:
    gate: str = "sigmoid"
    candidate: str = "tanh"
    cell_output: str = "tanh"

    def __post_init__(self):
        for role in ("gate", "candidate", "cell_output"):
            # Validate and store the canonical spelling.
            object.__setattr__(self, role, get_activation(getattr(self, role)).name)

    def get(self, role: str) -> Activation:
        return get_activation(getattr(self, role))

    def equations(self) -> str:
        """The hidden-state equation these activations compute, as a finding spells it."""
        gate = self.get("gate").equation
        out = self.get("cell_output").equation
        return f"o_t = {gate}(z_o), h_t = o_t · {out}(c_t)"


def _frozen_array(name: str, value, dtype: np.dtype) -> np.ndarray:
    arr = np.array(value, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class DirectionParams:
    """Weights of one direction of one layer, canonical gate order i, f, g, o."""

    W: np.ndarray
    U: np.ndarray
    b: np.ndarray
    peephole: np.ndarray | None = None
    h0: np.ndarray | None = None
    c0: np.ndarray | None = None
    projection: np.ndarray | None = None  # (H, P): h_t = m_t·R (LSTMP)

    @property
    def D(self) -> int:
        return int(self.W.shape[0])

    @property
    def H(self) -> int:
        """Cell units (the width of c and of every gate)."""
        return int(self.W.shape[1] // 4)

    @property
    def P(self) -> int:
        """Hidden-state units: the projection's width, H without one."""
        return self.H if self.projection is None else int(self.projection.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.W.dtype

    def gate_block(self, array: np.ndarray, gate: str) -> np.ndarray:
        """The columns (or entries) of a stacked (…, 4H) array that belong to ``gate``."""
        k = GATES.index(gate)
        return array[..., k * self.H : (k + 1) * self.H]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"W": self.W, "U": self.U, "b": self.b, "h0": self.h0, "c0": self.c0}
        if self.peephole is not None:
            out["peephole"] = self.peephole
        if self.projection is not None:
            out["projection"] = self.projection
        return out


def make_direction(
    W,
    U,
    b=None,
    peephole=None,
    h0=None,
    c0=None,
    projection=None,
    *,
    dtype=None,
    where: str = "",
) -> DirectionParams:
    """Validate shapes and dtypes and build read-only ``DirectionParams``.

    With ``projection`` R (H, P), U must be (P, 4H) and h0 (P,): the
    recurrence reads the projected h_t = m_t·R.

    ``where`` prefixes error messages (e.g. ``"layer 0 rev"``) so that a user
    knows which array of which layer is wrong.
    """
    prefix = f"{where}: " if where else ""
    arrays = {"W": W, "U": U, "b": b, "peephole": peephole, "h0": h0, "c0": c0, "projection": projection}
    for name, value in arrays.items():
        if value is None:
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub":
            raise ModelError(f"{prefix}{name} has dtype {arr.dtype}, expected floats")
        arrays[name] = arr
    W, U = arrays["W"], arrays["U"]
    if dtype is None:
        dtype = W.dtype if W.dtype in SUPPORTED_DTYPES else np.dtype(np.float32)
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ModelError(f"{prefix}dtype {dtype} is not supported (float32 or float64)")
    if W.ndim != 2:
        raise ModelError(f"{prefix}W has shape {W.shape}, expected (D, 4H)")
    R = arrays["projection"]
    if U.ndim != 2:
        raise ModelError(f"{prefix}U has shape {U.shape}, expected ({'P' if R is not None else 'H'}, 4H)")
    if R is None:
        H = U.shape[0]
        if H == 0 or U.shape[1] != 4 * H:
            raise ModelError(f"{prefix}U has shape {U.shape}, expected (H, 4H) with 4H = 4·{H}")
        P = H
    else:
        if R.ndim != 2 or 0 in R.shape:
            raise ModelError(f"{prefix}projection has shape {R.shape}, expected (H, P)")
        H, P = R.shape
        if U.shape != (P, 4 * H):
            raise ModelError(
                f"{prefix}U has shape {U.shape} but the projection has shape {R.shape}: "
                f"with a projection U must be (P, 4H) = ({P}, {4 * H})"
            )
    if W.shape[1] != 4 * H:
        raise ModelError(
            f"{prefix}W has shape {W.shape} but U has shape {U.shape}: "
            f"W must be (D, {4 * H})"
        )
    if W.shape[0] == 0:
        raise ModelError(f"{prefix}W has shape {W.shape}: D must be at least 1")
    b = arrays["b"]
    if b is None:
        b = np.zeros(4 * H)
    b = np.asarray(b)
    if b.shape != (4 * H,):
        raise ModelError(f"{prefix}b has shape {b.shape}, expected ({4 * H},)")
    p = arrays["peephole"]
    if p is not None and p.shape != (3, H):
        raise ModelError(f"{prefix}peephole has shape {p.shape}, expected (3, {H})")
    state = {}
    for name, width in (("h0", P), ("c0", H)):
        v = arrays[name]
        v = np.zeros(width) if v is None else np.asarray(v).reshape(-1)
        if v.shape != (width,):
            raise ModelError(
                f"{prefix}{name} has shape {np.shape(arrays[name])}, expected ({width},)"
            )
        state[name] = v
    return DirectionParams(
        W=_frozen_array("W", W, dtype),
        U=_frozen_array("U", U, dtype),
        b=_frozen_array("b", b, dtype),
        peephole=None if p is None else _frozen_array("peephole", p, dtype),
        h0=_frozen_array("h0", state["h0"], dtype),
        c0=_frozen_array("c0", state["c0"], dtype),
        projection=None if R is None else _frozen_array("projection", R, dtype),
    )


@dataclass(frozen=True, eq=False)
class Layer:
    """One LSTM layer: a forward direction and, if bidirectional, a backward one.

    ``clip`` (ONNX's ``clip`` attribute) bounds every pre-activation to
    [-clip, clip] before its activation is applied.

    ``go_backwards`` (Keras' flag, ONNX ``direction="reverse"``): the layer has
    one direction, and it runs over the sequence from the end. It is then
    reported as direction "rev" and its weights live in ``forward``.

    ``output_reversed`` (with ``go_backwards``): the layer hands its outputs to
    the next layer in processing order, last input step first, as Keras does
    for ``go_backwards=True``. Without it (ONNX, Lasagne) they are handed on in
    input time order.
    """

    forward: DirectionParams
    backward: DirectionParams | None = None
    activations: Activations = field(default_factory=Activations)
    clip: float | None = None
    go_backwards: bool = False
    output_reversed: bool = False

    def __post_init__(self):
        if self.go_backwards and self.backward is not None:
            raise ModelError("a bidirectional layer cannot also be go_backwards")
        if self.output_reversed and not self.go_backwards:
            raise ModelError("only a go_backwards layer can hand its outputs on reversed")

    @property
    def bidirectional(self) -> bool:
        return self.backward is not None

    def directions(self) -> Iterator[tuple[str, DirectionParams]]:
        yield ("rev" if self.go_backwards else "fwd"), self.forward
        if self.backward is not None:
            yield "rev", self.backward

    @property
    def D(self) -> int:
        return self.forward.D

    @property
    def H(self) -> int:
        return self.forward.H

    @property
    def P(self) -> int:
        """Hidden-state units per direction (H without a projection)."""
        return self.forward.P

    @property
    def projected(self) -> bool:
        return self.forward.projection is not None

    def equations(self) -> str:
        """The hidden-state equation of this layer (``Activations.equations``,
        with the projection W_hr (P, H) when the layer has one)."""
        eq = self.activations.equations()
        if not self.projected:
            return eq
        head, _, tail = eq.partition("h_t = ")
        return f"{head}h_t = W_hr·({tail}), W_hr ({self.P}, {self.H})"

    @property
    def output_size(self) -> int:
        return self.P * (2 if self.bidirectional else 1)


# What each format's file fixes by itself (the format defines gate order, bias
# layout and activations); anything else is a default unless an importer says so.
FORMAT_FIXES = {
    "torch": {"gate order", "activations", "bias layout"},
    "onnx": {"gate order", "activations", "bias layout", "input layout"},
    "keras": {"gate order", "activations", "bias layout", "input layout"},
    "native": {"gate order", "activations", "bias layout", "input layout"},
    "tweet2vec": {"gate order", "bias layout"},
    "lasagne": {"gate order", "bias layout"},
}


@dataclass(frozen=True, eq=False)
class LSTMModel:
    """A stack of LSTM layers with everything downstream needs to know.

    ``source`` names where the weights came from (path and format), ``notes``
    records what an importer did that a user should know (a folded runtime
    forget bias, the gate order the file stored, a preset applied), and
    ``input_layout`` is the declared layout of the inputs (btd, tbd or bct).
    """

    layers: tuple[Layer, ...]
    name: str = "lstm"
    source_format: str = "native"
    source_files: tuple[str, ...] = ()
    stored_gate_order: str = "ifgo"
    input_layout: str = "btd"
    notes: tuple[str, ...] = ()
    # Valid length of each sequence when the file fixes them (an ONNX constant
    # ``sequence_lens``): the run's lengths unless the user gives --lengths.
    sequence_lengths: tuple[int, ...] | None = None
    # The masking the file declares in front of the LSTM (Keras ``Masking`` or an
    # ``Embedding(mask_zero=True)``), e.g. "Masking(mask_value=0)"; None when none.
    masking: str | None = None
    mask_value: float | None = None  # Masking's mask_value (inputs are features, not token ids)
    # (item, value, source) an importer states about what it read, source ∈
    # {"file", "default", "flag"}: e.g. ("bias layout", "cuDNN 8H, halves summed", "file").
    # The report completes them (``report.build.assumptions``).
    assumptions: tuple[tuple[str, str, str], ...] = ()

    def origin(self, item: str, layer: int = 0) -> str:
        """Where ``item`` of ``layer`` came from: "file", "default" or "flag".

        An importer's own statement (``assumptions``, for one layer as ``l{k}:item``)
        wins over what the format fixes (``FORMAT_FIXES``).
        """
        for name, _value, source in self.assumptions:
            if name in (item, f"l{layer}:{item}"):
                return source
        return "file" if item in FORMAT_FIXES.get(self.source_format, ()) else "default"

    def __post_init__(self):
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ModelError("the model has no LSTM layer")
        dtype = layers[0].forward.dtype
        for k, layer in enumerate(layers):
            for direction, params in layer.directions():
                if params.dtype != dtype:
                    raise ModelError(
                        f"layer {k} {direction}: dtype {params.dtype} differs from "
                        f"layer 0's {dtype}"
                    )
                if params.H != layer.H:
                    raise ModelError(
                        f"layer {k} {direction}: H={params.H} differs from the forward H={layer.H}"
                    )
                if params.P != layer.P:
                    raise ModelError(
                        f"layer {k} {direction}: the projection gives P={params.P} units, "
                        f"the forward direction P={layer.P}"
                    )
                if params.D != layer.D:
                    raise ModelError(
                        f"layer {k} {direction}: D={params.D} differs from the forward D={layer.D}"
                    )
            if k > 0 and layer.D != layers[k - 1].output_size:
                raise ModelError(
                    f"layer {k}: W expects D={layer.D} inputs but layer {k - 1} "
                    f"outputs {layers[k - 1].output_size} values"
                )
        if self.input_layout not in LAYOUTS:
            raise ModelError(f"input layout {self.input_layout!r} is not btd, tbd or bct")

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].forward.dtype

    @property
    def D(self) -> int:
        return self.layers[0].D

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    def units(self) -> Iterator[tuple[int, str, Layer, DirectionParams]]:
        """Every (layer index, direction, layer, params) in run order."""
        for k, layer in enumerate(self.layers):
            for direction, params in layer.directions():
                yield k, direction, layer, params

    @property
    def projected(self) -> bool:
        """Whether any layer projects its hidden state (LSTMP)."""
        return any(params.projection is not None for *_, params in self.units())

    def with_notes(self, *notes: str) -> "LSTMModel":
        return replace(self, notes=self.notes + tuple(notes))


def location_name(layer: int, direction: str, n_layers: int, bidirectional: bool) -> str:
    """Key prefix for a (layer, direction): '' for a plain single-layer model,
    else 'l{k}.' plus 'rev.' for the backward direction (as ``trace`` writes)."""
    if n_layers == 1 and not bidirectional:
        return ""
    return f"l{layer}." + ("rev." if direction == "rev" else "")
