"""``LSTM`` nodes of an ONNX graph (read with the ``onnx`` package, never run).

The ONNX ``LSTM`` operator stacks its gates in the order **i, o, f, c**::

    W  (dirs, 4H, D)    R  (dirs, 4H, H)    B  (dirs, 8H) = [Wb | Rb], summed
    P  (dirs, 3H)       peepholes in the order i, o, f (→ rows p_i, p_f, p_o)
    initial_h, initial_c  (dirs, batch, H)   when they are constants

Attributes: ``direction`` (forward, reverse — a go_backwards layer — or
bidirectional); ``activations`` (three per direction: f, g, h in ONNX terms,
i.e. gate, candidate and cell output; both directions must agree);
``activation_alpha`` / ``activation_beta`` (consumed, in order, by the
activations that take them; only parameters that make a modelled function are
accepted, e.g. ``HardSigmoid`` 0.2/0.5); ``clip`` → ``Layer.clip``;
``input_forget=1`` (coupled input and forget gates) is refused; ``layout=1``
(batch-first X) sets the model's input layout to btd (tbd otherwise), unless
the node's X is a graph input through ``Transpose`` (PyTorch's
``batch_first=True`` export): then it is the graph input's layout
(``graph_input_layout``). A constant ``sequence_lens`` becomes the model's
``sequence_lengths``, the run's lengths unless ``--lengths`` overrides it.

Weights must be initializers or ``Constant`` nodes. Initial states computed by
the graph are accepted when they are a constant broadcast by ``Expand`` (as
PyTorch's exporter writes zeros); otherwise zeros are assumed and noted.
External tensor data is read only from plain file names beside the model.

Several LSTM nodes: ``--layer-name`` picks one by node name (or output name).
Without it they are stacked when each node's X comes from the previous
node's Y through only ``Squeeze``/``Transpose``/``Reshape``/``Identity``/``Cast``
(the pattern exporters write to merge the direction axis) *and* those ops,
applied to Y's axes (T, dirs, B, H) symbolically, provably give the next node
(T, B, D) with D = [forward H | backward H] (``join_reason``). A Reshape of Y
straight to (T, B, 2H) mixes batch and direction: it is refused with the
reason, and each node can be diagnosed on its own with ``--layer-name``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from lstm_doctor.capture.budget import Allowance, declared_bytes
from lstm_doctor.choices import LAYOUTS
from lstm_doctor.errors import ConfigError, ModelError
from lstm_doctor.model import (
    Activations,
    Layer,
    LSTMModel,
    make_direction,
    reorder_gates,
)
from lstm_doctor.model.activations import get_activation
from lstm_doctor.output import declare_read

ONNX_ORDER = "iofc"
PASS_THROUGH = ("Squeeze", "Transpose", "Reshape", "Identity", "Cast")
MAX_TENSOR_BYTES = 2 << 30
# Activations that take alpha (and beta), as ONNX numbers them, with defaults.
_PARAMS = {
    "affine": (1.0, 0.0),
    "leakyrelu": (0.01, None),
    "thresholdedrelu": (1.0, None),
    "scaledtanh": (1.0, 1.0),
    "hardsigmoid": (0.2, 0.5),
    "elu": (1.0, None),
}


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ModelError("reading ONNX files needs the onnx package (pip install onnx)") from None
    return onnx


def sniff(path: Path) -> bool:
    return path.is_file() and path.suffix == ".onnx"


# ---------------------------------------------------------------------------
# Constants of the graph


class Graph:
    """Constant values and producers of a graph's tensors.

    Every tensor read is counted against one allowance for the whole graph (the read
    budget, ``--max-memory``): many tensors, each under the budget, cannot add up past it.
    """

    def __init__(self, model, folder: Path):
        onnx = _onnx()
        self.onnx = onnx
        self.folder = folder
        self.allowance = Allowance()
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer = {}
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node

    def _tensor(self, tensor) -> np.ndarray:
        from onnx import external_data_helper, helper, numpy_helper

        try:
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"tensor {tensor.name!r} has an unsupported data type") from None
        nbytes = declared_bytes(tensor.dims, itemsize)
        if nbytes > MAX_TENSOR_BYTES:
            raise ModelError(f"tensor {tensor.name!r} has {nbytes} bytes, over the {MAX_TENSOR_BYTES}-byte limit")
        # Counted before reading, with every tensor read so far (external tensors may all
        # point at the same bytes of one file: each read is a new copy).
        self.allowance.take(nbytes, f"tensor {tensor.name[:60]!r}")
        external, location = external_data_helper.uses_external_data(tensor), None
        if external:
            info = {e.key: e.value for e in tensor.external_data}
            location = info.get("location", "")
            if os.path.basename(location) != location or location in ("", ".", ".."):
                raise ModelError(
                    f"tensor {tensor.name!r} points to external data {location!r}, "
                    "not a plain file name beside the model"
                )
            self._check_external(tensor.name, self.folder / location)
            declare_read(self.folder / location)  # onnx opens it in C++, unseen by the output read-set's audit hook
        try:
            # With base_dir, recent onnx reads the external bytes into the array alone, not
            # also into the tensor: one copy, as the allowance counts it.
            return numpy_helper.to_array(tensor, str(self.folder) if external else "")
        except self.onnx.checker.ValidationError as exc:  # onnx's own refusal (a symlink, ...)
            text = str(exc).splitlines()[0][:160] if str(exc) else "refused"
            raise ModelError(f"tensor {tensor.name!r}: external data {location!r} refused ({text})") from None
        except (ValueError, TypeError) as exc:  # dims that do not match the data, an undefined type
            raise ModelError(f"tensor {tensor.name!r} cannot be read: {str(exc)[:160]}") from None

    @staticmethod
    def _check_external(name: str, ext: Path) -> None:
        """External data must be a regular file beside the model, not a link out of its folder."""
        try:
            st = os.lstat(ext)
        except FileNotFoundError:
            raise ModelError(f"tensor {name!r}: its external data file {ext.name} is missing") from None
        if stat.S_ISLNK(st.st_mode):
            raise ModelError(f"tensor {name!r}: its external data file {ext.name} is a symbolic link: refused")
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"tensor {name!r}: its external data file {ext.name} is not a regular file: refused")

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a tensor when the graph fixes it, else None."""
        if not name:
            return None
        if name in self.initializers:
            return self._tensor(self.initializers[name])
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return self._tensor(attr.t)
                if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    return np.asarray(self.onnx.helper.get_attribute_value(attr))
            return None
        if node.op_type == "Identity":
            return self.constant(node.input[0])
        return None

    def broadcast_constant(self, name: str) -> np.ndarray | None:
        """A constant, or a constant broadcast by ``Expand`` (its unexpanded value)."""
        value = self.constant(name)
        if value is not None:
            return value
        node = self.producer.get(name)
        if node is not None and node.op_type == "Expand":
            return self.constant(node.input[0])
        return None


def _attrs(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------
# One node → one Layer


def _activations(attrs: dict, dirs: int, where: str) -> Activations:
    names = [_text(a) for a in attrs.get("activations", [])]
    if not names:
        return Activations()
    if len(names) != 3 * dirs:
        raise ModelError(f"{where}: {len(names)} activations, expected {3 * dirs} (f, g, h per direction)")
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    resolved = []
    for name in names:
        key = name.lower()
        alpha = beta = None
        if key in _PARAMS:
            alpha, beta = _PARAMS[key]
            if alphas:
                alpha = alphas.pop(0)
            if beta is not None and betas:
                beta = betas.pop(0)
        resolved.append(_activation_name(name, key, alpha, beta, where))
    per_direction = [tuple(resolved[3 * d : 3 * d + 3]) for d in range(dirs)]
    if len(set(per_direction)) > 1:
        raise ModelError(
            f"{where}: the directions use different activations {per_direction}; "
            "lstm_doctor models one set per layer"
        )
    gate, candidate, cell_output = per_direction[0]
    return Activations(gate=gate, candidate=candidate, cell_output=cell_output)


def _activation_name(name: str, key: str, alpha, beta, where: str) -> str:
    def close(a, b):
        return abs(float(a) - b) < 1e-6

    if key == "hardsigmoid":
        if close(alpha, 0.2) and close(beta, 0.5):
            return "hard_sigmoid"
        if close(alpha, 1 / 6) and close(beta, 0.5):
            return "hard_sigmoid6"
    elif key == "affine":
        if close(alpha, 1.0) and close(beta, 0.0):
            return "identity"
    elif key == "scaledtanh":
        if close(alpha, 1.0) and close(beta, 1.0):
            return "tanh"
    elif key not in _PARAMS:
        try:
            return get_activation(key).name
        except ConfigError:
            pass
    params = "" if alpha is None else f" (alpha={alpha}" + ("" if beta is None else f", beta={beta}") + ")"
    raise ModelError(f"{where}: activation {name}{params} is not one lstm_doctor models")


def _state(graph: Graph, node, index: int, dirs: int, H: int, layout: int, where, notes):
    name = node.input[index] if len(node.input) > index else ""
    if not name:
        return [None] * dirs
    value = graph.broadcast_constant(name)
    role = "initial_h" if index == 5 else "initial_c"
    if value is None:
        notes.append(f"{where}: {role} is computed by the graph, not a constant: zeros assumed")
        return [None] * dirs
    value = np.asarray(value, dtype=np.float64)
    if layout and value.ndim == 3:  # layout=1: (batch, dirs, H)
        value = value.transpose(1, 0, 2)
    try:
        value = np.broadcast_to(value, (dirs, value.shape[1] if value.ndim == 3 else 1, H))
    except ValueError:
        raise ModelError(f"{where}: {role} has shape {value.shape}, expected ({dirs}, batch, {H})") from None
    if not np.all(value == value[:, :1, :]):
        raise ModelError(f"{where}: {role} differs between sequences of the batch; lstm_doctor models one initial state")
    return [value[d, 0] for d in range(dirs)]


def quantized(node) -> bool:
    return node.op_type == "DynamicQuantizeLSTM" and node.domain == "com.microsoft"


def _quant_operand(graph: Graph, node, index: int):
    name = node.input[index] if len(node.input) > index else ""
    return graph.constant(name) if name else None


def quantization(graph: Graph, node) -> str:
    """How a ``DynamicQuantizeLSTM`` stores W, in words: e.g. "int8, per-channel scales"."""
    q = graph.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    scale = _quant_operand(graph, node, 8)
    kind = "per-channel" if scale is not None and np.ndim(scale) == 2 else "per-direction"
    return f"{np.asarray(q).dtype if q is not None else '8-bit'}, {kind} scales"


def _dequantize(graph: Graph, node, role: str, q: np.ndarray, where: str, notes: list[str]) -> np.ndarray:
    """onnxruntime's ``com.microsoft::DynamicQuantizeLSTM`` weights as floats.

    W is stored (dirs, D, 4H) and R (dirs, H, 4H) as int8 or uint8: transposed
    against the float LSTM's (dirs, 4H, ·), so column j is gate row j (iofc).
    Scale and zero point (inputs 8, 9 for W; 10, 11 for R) are per direction,
    shape (dirs,), or per channel, shape (dirs, 4H): one per column j, taken
    over the input axis:

        value[d, j, k] = (q[d, k, j] − zp[d, j]) · scale[d, j]

    which is what onnxruntime's kernel computes: its quantized GEMM multiplies
    column j of the int32 product by a_scale·scale[d, j], and subtracts one zero
    point per matrix (the first), so per-channel zero points must be 0 (int8) or
    all equal (uint8); it refuses other files, and so does this. onnxruntime
    also quantizes X and h to uint8 at run time; that is not modelled: the float
    model is diagnosed. Returns the float LSTM layout (dirs, 4H, ·).
    """
    index = {"W": 8, "R": 10}[role]
    scale, zero = _quant_operand(graph, node, index), _quant_operand(graph, node, index + 1)
    if scale is None or zero is None:
        raise ModelError(f"{where}: quantized {role} needs constant {role}_scale and {role}_zero_point (inputs "
                         f"{index}, {index + 1})")
    if q.dtype not in (np.int8, np.uint8) or q.ndim != 3:
        raise ModelError(f"{where}: quantized {role} is {q.dtype} {q.shape}, expected int8 or uint8 (dirs, ·, 4H)")
    scale, zero = np.asarray(scale, dtype=np.float64), np.asarray(zero)
    dirs, N = q.shape[0], q.shape[2]
    if scale.shape not in ((dirs,), (dirs, N)) or zero.shape != scale.shape:
        raise ModelError(f"{where}: {role}_scale {scale.shape} and {role}_zero_point {zero.shape}: expected both "
                         f"({dirs},) (per direction) or both ({dirs}, {N}) (per channel)")
    if scale.ndim == 2:
        if q.dtype == np.int8 and np.any(zero != 0):
            raise ModelError(f"{where}: per-channel int8 {role}_zero_point is not all 0, which onnxruntime refuses "
                             "too; quantize the float model again (quantize_dynamic writes zero points 0)")
        if q.dtype == np.uint8 and np.any(zero != zero.flat[0]):
            raise ModelError(f"{where}: per-channel uint8 {role}_zero_point differs between channels, which "
                             "onnxruntime refuses too; quantize the float model again (quantize_dynamic writes int8)")
        scale, zero = scale[:, None, :], zero[:, None, :]  # over the columns of (dirs, ·, 4H)
    else:
        scale, zero = scale[:, None, None], zero[:, None, None]
    if role == "W":
        notes.append(f"{where}: a quantized DynamicQuantizeLSTM ({quantization(graph, node)}): W and R are "
                     "dequantized as (q − zero_point)·scale and the float model is diagnosed; onnxruntime also "
                     "rounds X and h to uint8 at run time, so its outputs differ from this model by that rounding")
    value = (q.astype(np.float64) - zero.astype(np.float64)) * scale
    return value.astype(np.float32).transpose(0, 2, 1)


def node_layer(graph: Graph, node, notes: list[str]) -> tuple[Layer, str]:
    """The Layer of one LSTM node, and its input layout (tbd or btd)."""
    where = f"LSTM node {node.name or node.output[0]!r}"
    attrs = _attrs(graph.onnx, node)
    if int(attrs.get("input_forget", 0)):
        raise ModelError(f"{where}: input_forget=1 (coupled input and forget gates) is not supported")
    direction = _text(attrs.get("direction", b"forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ModelError(f"{where}: unknown direction {direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    arrays = {}
    for index, role in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            continue
        value = graph.constant(name)
        if value is None:
            raise ModelError(f"{where}: {role} ({name!r}) is not a constant of the graph")
        value = np.asarray(value)
        if quantized(node) and role in ("W", "R"):
            value = _dequantize(graph, node, role, value, where, notes)
        if value.dtype not in (np.float32, np.float64):  # float16, bfloat16: widen
            value = value.astype(np.float32)
        arrays[role] = value
    if "W" not in arrays or "R" not in arrays:
        raise ModelError(f"{where}: W and R are required")
    W, R = arrays["W"], arrays["R"]
    if R.ndim != 3 or R.shape[0] != dirs or R.shape[1] != 4 * R.shape[2]:
        raise ModelError(f"{where}: R has shape {R.shape}, expected ({dirs}, 4H, H)")
    H = R.shape[2]
    if "hidden_size" in attrs and int(attrs["hidden_size"]) != H:
        raise ModelError(f"{where}: hidden_size={attrs['hidden_size']} but R has shape {R.shape}")
    if W.ndim != 3 or W.shape[:2] != (dirs, 4 * H):
        raise ModelError(f"{where}: W has shape {W.shape}, expected ({dirs}, {4 * H}, D)")
    B = arrays.get("B")
    if B is not None and B.shape != (dirs, 8 * H):
        raise ModelError(f"{where}: B has shape {B.shape}, expected ({dirs}, {8 * H})")
    P = arrays.get("P")
    if P is not None and P.shape != (dirs, 3 * H):
        raise ModelError(f"{where}: P has shape {P.shape}, expected ({dirs}, {3 * H})")
    batch_first = int(attrs.get("layout", 0))
    h0 = _state(graph, node, 5, dirs, H, batch_first, where, notes)
    c0 = _state(graph, node, 6, dirs, H, batch_first, where, notes)
    params = []
    for d in range(dirs):
        b = None
        if B is not None:
            b = reorder_gates(B[d, : 4 * H].astype(np.float64) + B[d, 4 * H :], ONNX_ORDER)
        peephole = None
        if P is not None:
            p_i, p_o, p_f = np.split(P[d], 3)
            peephole = np.stack([p_i, p_f, p_o])
        params.append(
            make_direction(
                W=reorder_gates(W[d].T, ONNX_ORDER),
                U=reorder_gates(R[d].T, ONNX_ORDER),
                b=b,
                peephole=peephole,
                h0=h0[d],
                c0=c0[d],
                dtype=W.dtype,
                where=f"{where}" + (" rev" if d else ""),
            )
        )
    clip = attrs.get("clip")
    layer = Layer(
        params[0],
        params[1] if dirs == 2 else None,
        _activations(attrs, dirs, where),
        clip=None if clip is None else float(clip),
        go_backwards=direction == "reverse",
    )
    layout = "btd" if batch_first else "tbd"
    if layout == "btd":
        notes.append(f"{where}: layout=1, X is (batch, time, features)")
    return layer, layout


# ---------------------------------------------------------------------------
# Choosing and stacking nodes


class _Unproven(Exception):
    """The ops between two LSTM nodes do not provably give (T, B, D) in order."""


def _y_axes(node, dirs: int, H: int) -> list[tuple[str, ...]]:
    """Y's axes as groups of atoms: layout 0 (T, dirs, B, H), layout 1 (B, T, dirs, H)."""
    return [("B",), ("T",), ("dir",), ("H",)] if _layout(node) else [("T",), ("dir",), ("B",), ("H",)]


def _layout(node) -> int:
    return int(next((a.i for a in node.attribute if a.name == "layout"), 0))


def _ints(graph: Graph, node, attr: str, index: int) -> list[int] | None:
    """An int-list operand: the attribute (older opsets) or a constant input (opset 13+)."""
    for a in node.attribute:
        if a.name == attr:
            return [int(v) for v in a.ints]
    if len(node.input) > index and node.input[index]:
        value = graph.constant(node.input[index])
        if value is None:
            raise _Unproven(f"{node.op_type} {node.name or node.output[0]!r} takes its {attr} from the graph, not a constant")
        return [int(v) for v in np.asarray(value).reshape(-1)]
    return None


def _apply(graph: Graph, node, axes: list[tuple[str, ...]], sizes: dict[str, int]) -> list[tuple[str, ...]]:
    """The axes after one pass-through op. Atoms (T, B, dir, H) keep their C order
    inside a group; T and B have unknown sizes, so an op whose effect depends on
    them (a Squeeze without axes, a Reshape to a literal T or B) is not provable."""
    op, label = node.op_type, f"{node.op_type} {node.name or node.output[0]!r}"

    def size(group):
        if any(a not in sizes for a in group):
            return None
        return int(np.prod([sizes[a] for a in group], dtype=np.int64))

    if op in ("Identity", "Cast"):
        return axes
    if op == "Transpose":
        perm = _ints(graph, node, "perm", 99)
        perm = list(range(len(axes)))[::-1] if perm is None else perm
        if sorted(perm) != list(range(len(axes))):
            raise _Unproven(f"{label}: perm {perm} does not fit rank {len(axes)}")
        return [axes[p] for p in perm]
    if op == "Squeeze":
        which = _ints(graph, node, "axes", 1)
        if which is None:
            raise _Unproven(f"{label}: a Squeeze without axes also drops a batch or time of 1")
        which = {w % len(axes) for w in which}
        for w in which:
            if size(axes[w]) != 1:
                raise _Unproven(f"{label}: squeezes axis {w} ({'·'.join(axes[w]) or '1'}), not a size-1 axis")
        return [a for k, a in enumerate(axes) if k not in which]
    if op == "Reshape":
        shape = _ints(graph, node, "shape", 1)
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if shape is None or allowzero:
            raise _Unproven(f"{label}: the target shape is not a constant")
        if shape.count(-1) > 1:
            raise _Unproven(f"{label}: shape {shape} has two -1")
        atoms = [a for group in axes for a in group]

        def take(dims: list[int], atoms: list[str], first: int) -> list[tuple[str, ...]]:
            """Groups of consecutive atoms for ``dims`` (axis indices from ``first``)."""
            groups, pos = [], 0
            for k, v in enumerate(dims):
                if v == 0:
                    if first + k >= len(axes):
                        raise _Unproven(f"{label}: shape {shape} copies an axis the input lacks")
                    group = list(axes[first + k])
                elif v > 0:
                    group = []
                    while (size(tuple(group)) or 1) < v and pos + len(group) < len(atoms):
                        if atoms[pos + len(group)] not in sizes:
                            raise _Unproven(f"{label}: shape {shape} fixes {v} where a time or batch size is unknown")
                        group.append(atoms[pos + len(group)])
                    if (size(tuple(group)) or 1) != v:
                        raise _Unproven(f"{label}: shape {shape} splits an axis")
                else:
                    raise _Unproven(f"{label}: shape {shape} has a negative size")
                if atoms[pos : pos + len(group)] != group:
                    raise _Unproven(f"{label}: shape {shape} copies axis {first + k} out of place")
                groups.append(tuple(group))
                pos += len(group)
            return groups, pos

        if -1 not in shape:
            out, used = take(shape, atoms, 0)
            if used != len(atoms):
                raise _Unproven(f"{label}: shape {shape} drops axes")
            return out
        k = shape.index(-1)
        head, used = take(shape[:k], atoms, 0)
        # the dims after -1, matched from the end (a 0 there copies the input axis of that index)
        tail_dims = shape[k + 1 :]
        tail_atoms = atoms[used:]
        tail: list[tuple[str, ...]] = []
        end = len(tail_atoms)
        for j in range(len(tail_dims) - 1, -1, -1):
            v = tail_dims[j]
            if v == 0:
                group = list(axes[k + 1 + j]) if k + 1 + j < len(axes) else None
                if group is None:
                    raise _Unproven(f"{label}: shape {shape} copies an axis the input lacks")
            elif v > 0:
                group = []
                while (size(tuple(group)) or 1) < v and end - len(group) > 0:
                    atom = tail_atoms[end - len(group) - 1]
                    if atom not in sizes:
                        raise _Unproven(f"{label}: shape {shape} fixes {v} where a time or batch size is unknown")
                    group.insert(0, atom)
                if (size(tuple(group)) or 1) != v:
                    raise _Unproven(f"{label}: shape {shape} splits an axis")
            else:
                raise _Unproven(f"{label}: shape {shape} has two -1")
            if end < len(group) or tail_atoms[end - len(group) : end] != group:
                raise _Unproven(f"{label}: shape {shape} copies axis {k + 1 + j} out of place")
            tail.insert(0, tuple(group))
            end -= len(group)
        return head + [tuple(tail_atoms[:end])] + tail
    raise _Unproven(f"{label} is not a pass-through op")


def join_reason(graph: Graph, prev, nxt) -> str | None:
    """None when ``nxt``'s X is provably ``prev``'s Y as (T, B, D) (or (B, T, D) for
    layout 1) with D = [forward H | backward H]; else why not.

    Every op on the path (``PASS_THROUGH``) is applied to Y's axes symbolically
    (one direction: its axis is an empty group, a size-1 axis that moves no data).
    """
    R = graph.constant(prev.input[2]) if len(prev.input) > 2 else None
    if R is None or np.ndim(R) != 3:
        return "the first node's R is not a constant"
    dirs, H = int(np.shape(R)[0]), int(np.shape(R)[2])
    sizes = {"dir": dirs, "H": H}
    path, name = [], nxt.input[0]
    for _ in range(16):
        if name == prev.output[0]:
            break
        node = graph.producer.get(name)
        if node is None or node.op_type not in PASS_THROUGH:
            return "its X does not come from the first node's Y"
        path.append(node)
        name = node.input[0]
    else:
        return "its X is more than 16 ops from the first node's Y"
    axes = _y_axes(prev, dirs, H)
    if dirs == 1:  # a size-1 axis: it moves no data
        axes = [tuple(a for a in g if a != "dir") for g in axes]
    try:
        for node in reversed(path):
            axes = _apply(graph, node, axes, sizes)
    except _Unproven as exc:
        return str(exc)
    want = [("B",), ("T",)] if _layout(nxt) else [("T",), ("B",)]
    feature = ("dir", "H") if dirs == 2 else ("H",)
    if axes != want + [feature]:
        got = "(" + ", ".join("·".join(g) or "1" for g in axes) + ")"
        return f"the ops between them give {got}, not ({', '.join(w[0] for w in want)}, {'·'.join(feature)})"
    return None


def _feeds(graph: Graph, prev, nxt) -> bool:
    """Whether ``nxt``'s X is provably ``prev``'s Y, in the order an LSTM reads it."""
    return join_reason(graph, prev, nxt) is None


def select_nodes(graph: Graph, options) -> list:
    nodes = [n for n in graph.graph.node if (n.op_type == "LSTM" and n.domain in ("", "ai.onnx")) or quantized(n)]
    if not nodes:
        raise ModelError("no LSTM node in the graph")
    names = [n.name or n.output[0] for n in nodes]
    if options.layer_name is not None:
        for node in nodes:
            if options.layer_name in (node.name, *node.output):
                return [node]
        raise ModelError(
            f"no LSTM node named {options.layer_name!r}; found: " + ", ".join(repr(n) for n in names)
        )
    if len(nodes) == 1:
        return nodes
    reasons = [(a, b, join_reason(graph, a, b)) for a, b in zip(nodes, nodes[1:])]
    if all(r is None for _, _, r in reasons):
        return nodes
    a, b, reason = next(t for t in reasons if t[2] is not None)
    if not reason.startswith("its X"):
        # Joined, but not provably in order: stacking would mix axes silently.
        raise ModelError(
            f"LSTM node {b.name or b.output[0]!r} reads {a.name or a.output[0]!r}'s output, "
            f"but not provably as (T, B, D): {reason}; diagnose the nodes separately with "
            "--layer-name (" + ", ".join(repr(n) for n in names) + ")"
        )
    raise ModelError(
        f"{len(nodes)} LSTM nodes that do not feed each other directly ("
        + ", ".join(repr(n) for n in names)
        + "); choose one with --layer-name"
    )


def graph_input_layout(graph: Graph, node, layout: str) -> tuple[str, str | None]:
    """The layout of the tensor the user feeds, traced back from the node's X.

    PyTorch's exporter writes ``batch_first=True`` as graph input (B, T, D) →
    Transpose(1, 0, 2) → an LSTM node with layout 0: the user's arrays are btd,
    not the node's tbd. Only ``Transpose``, ``Identity`` and ``Cast`` are
    traced; anything else keeps the node's own layout. Returns (layout, note).
    """
    axes = list(layout)  # the node's X: e.g. ["t", "b", "d"]
    name = node.input[0]
    for _ in range(16):
        producer = graph.producer.get(name)
        if producer is None or producer.op_type not in ("Transpose", "Identity", "Cast"):
            break
        if producer.op_type == "Transpose":
            perm = next((list(a.ints) for a in producer.attribute if a.name == "perm"), [2, 1, 0])
            if sorted(perm) != [0, 1, 2]:
                return layout, None
            before = [""] * 3
            for k, p in enumerate(perm):  # out[k] = in[perm[k]]
                before[p] = axes[k]
            axes = before
        name = producer.input[0]
    graph_inputs = {i.name for i in graph.graph.input} - set(graph.initializers)
    traced = "".join(axes)
    traced = {"bdt": "bct"}.get(traced, traced)
    if name not in graph_inputs or traced == layout or traced not in LAYOUTS:
        return layout, None
    return traced, (
        f"the graph input {name!r} is {traced} (transposed to the LSTM node's {layout}): "
        f"inputs are read as {traced}"
    )


def constant_lengths(graph: Graph, node, notes: list[str]) -> tuple[int, ...] | None:
    """``sequence_lens`` when the graph fixes it (an initializer or Constant)."""
    name = node.input[4] if len(node.input) > 4 else ""
    if not name:
        return None
    where = f"LSTM node {node.name or node.output[0]!r}"
    value = graph.constant(name)
    if value is None:
        notes.append(f"{where}: sequence_lens is computed by the graph; pass --lengths for the run")
        return None
    value = np.asarray(value).reshape(-1)
    if value.dtype.kind not in "iu" or value.size == 0 or value.min() < 1:
        raise ModelError(f"{where}: sequence_lens {value.tolist()[:8]} is not positive integers")
    notes.append(f"{where}: sequence_lens is a constant of the file ({value.size} sequences): "
                 "the run uses it as the lengths unless --lengths is given")
    return tuple(int(v) for v in value)


def load(path: Path, options) -> LSTMModel:
    if options.preset is not None:
        raise ConfigError(f"--preset {options.preset} does not apply to ONNX files")
    onnx = _onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"not a readable ONNX model: {type(exc).__name__}: {exc}") from None
    graph = Graph(model, path.parent)
    nodes = select_nodes(graph, options)
    notes = ["ONNX gate order i, o, f, c; peepholes i, o, f; B = Wb + Rb"]
    layers, layouts = [], set()
    for node in nodes:
        layer, layout = node_layer(graph, node, notes)
        layers.append(layer)
        layouts.add(layout)
    if len(layouts) > 1:
        raise ModelError("the stacked LSTM nodes disagree on layout")
    layout, note = graph_input_layout(graph, nodes[0], layouts.pop())
    if note:
        notes.append(note)
    lengths = constant_lengths(graph, nodes[0], notes)
    stated = tuple(
        (f"l{k}:weights", f"dequantized from {quantization(graph, node)}: (q − zero_point)·scale", "file")
        for k, node in enumerate(nodes) if quantized(node)
    )
    for node in nodes[1:]:
        if len(node.input) > 4 and node.input[4] and constant_lengths(graph, node, []) != lengths:
            raise ModelError("the stacked LSTM nodes take different sequence_lens; choose one with --layer-name")
    return LSTMModel(
        layers=tuple(layers),
        name=(nodes[0].name if len(nodes) == 1 else model.graph.name) or path.stem,
        source_format="onnx",
        source_files=(str(path),),
        stored_gate_order=ONNX_ORDER,
        input_layout=layout,
        notes=tuple(notes),
        assumptions=stated,
        sequence_lengths=lengths,
    )
