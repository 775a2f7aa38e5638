"""PyTorch ``nn.LSTM`` weights: a ``torch.save`` state_dict or a ``.safetensors`` file.

Parameters of an ``nn.LSTM`` (and of an ``nn.LSTMCell``, which has no ``_l{k}``
suffix), gate order i, f, g, o::

    weight_ih_l{k}  (4H, D)     weight_hh_l{k}  (4H, H)
    bias_ih_l{k}    (4H,)       bias_hh_l{k}    (4H,)
    ..._reverse                 the backward direction of a bidirectional LSTM

Canonical form: ``W = weight_ih.T``, ``U = weight_hh.T``, ``b = bias_ih + bias_hh``.

``proj_size = P > 0`` (LSTMP) adds ``weight_hr_l{k}`` (P, H) per direction:
h_t = W_hr·(o_t ⊙ tanh(c_t)) has P units, ``weight_hh_l{k}`` is (4H, P) and
layer k+1 reads the projected h (``weight_ih_l{k+1}`` (4H, P), or (4H, 2P)
bidirectional). Canonical form: ``projection = weight_hr.T`` (H, P).

Reading:

- ``.pt`` / ``.pth`` / ``.bin``: with torch installed, ``torch.load(...,
  weights_only=True)``; without torch, the zip checkpoint (``data.pkl`` plus
  ``data/<key>`` storages) is read with the restricted unpickler
  (``safepickle``), which only rebuilds tensors. Nested checkpoints
  (``{"model": state_dict, ...}``) are flattened with dotted keys. A whole
  pickled module needs ``--trust-pickle`` (``weights_only=False``) and torch.
- ``.safetensors``: with ``safetensors.numpy`` when installed, else read here
  (the format is an 8-byte header length, a JSON header and raw data).

Several LSTMs in one file (``encoder.lstm.``, ``decoder.lstm.``): choose one
with ``--layer-prefix``; without it the error lists the prefixes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lstm_doctor.capture import budget
from lstm_doctor.capture.budget import Allowance, declared_bytes
from lstm_doctor.errors import ConfigError, ModelError
from lstm_doctor.load import safepickle
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
MAX_SAFETENSORS_HEADER = 100 << 20
MAX_PICKLE_BYTES = 100 << 20  # data.pkl holds structure only; the data is in storages
KEY_RE = re.compile(r"^(?P<prefix>.*)weight_ih(?:_l(?P<k>\d+)(?P<rev>_reverse)?)?$")


def _torch():
    """The torch module, or None when it is not installed (tests patch this)."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch


# ---------------------------------------------------------------------------
# Sniffing


def _is_torch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return _data_pkl(zf) is not None
    except zipfile.BadZipFile:
        return False


def _data_pkl(zf: zipfile.ZipFile) -> str | None:
    names = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    names = [n for n in names if n.count("/") <= 1]
    return names[0] if len(names) == 1 else None


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def sniff(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        return _is_safetensors(path)
    if _is_torch_zip(path):
        return True
    # The legacy (torch < 1.6) format is a pickle sequence: claim it by name only.
    return path.suffix in (".pt", ".pth") and safepickle.looks_like_pickle(path)


# ---------------------------------------------------------------------------
# Reading tensors without torch


class _StorageType:
    """``torch.FloatStorage`` & co. as named in a checkpoint: a dtype tag."""

    def __init__(self, name: str, dtype: str):
        self.name = name
        self.dtype = dtype  # a NumPy dtype string, or "bfloat16"


class _TorchDtype(_StorageType):
    """``torch.float32`` & co. (``_rebuild_tensor_v3`` passes the dtype)."""


_STORAGES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}
_DTYPES = {
    "float32": "f4",
    "float": "f4",
    "float64": "f8",
    "double": "f8",
    "float16": "f2",
    "half": "f2",
    "bfloat16": "bfloat16",
    "int64": "i8",
    "long": "i8",
    "int32": "i4",
    "int": "i4",
    "int16": "i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _decode(raw: bytes, dtype: str, byteorder: str) -> np.ndarray:
    """Bytes of a storage as a flat array (bfloat16 widened to float32)."""
    order = "<" if byteorder == "little" else ">"
    if dtype == "bfloat16":
        return _bfloat16_to_float32(np.frombuffer(raw, dtype=order + "u2"))
    np_dtype = np.dtype(dtype)
    if np_dtype.itemsize > 1:
        np_dtype = np_dtype.newbyteorder(order)
    return np.frombuffer(raw, dtype=np_dtype).astype(np_dtype.newbyteorder("="))


def _strided(storage: np.ndarray, offset, size, stride) -> np.ndarray:
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    offset = int(offset)
    if len(size) != len(stride) or any(s < 0 for s in size) or offset < 0:
        raise ModelError(f"malformed tensor (size {size}, stride {stride}, offset {offset})")
    if math.prod(size) == 0:
        return np.zeros(size, storage.dtype)
    # The copy below allocates size × itemsize whatever the storage holds: a
    # stride of 0 makes one stored value a tensor of any declared size.
    budget.take(declared_bytes(size, storage.itemsize), f"a tensor of size {size}")
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if any(st < 0 for st in stride) or last >= storage.size:
        raise ModelError(
            f"a tensor of size {size} reaches past its storage of {storage.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=tuple(st * storage.itemsize for st in stride),
        writeable=False,
    )
    return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest):
    if not isinstance(storage, np.ndarray):
        raise ModelError("a tensor's storage is not a storage record")
    return _strided(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *_):
    if not isinstance(storage, np.ndarray) or not isinstance(dtype, _TorchDtype):
        raise ModelError("malformed tensor record")
    raw = storage.tobytes()
    return _strided(_decode(raw, dtype.dtype, "little"), storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_):
    return data


def _torch_globals() -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }
    for name, dtype in _STORAGES.items():
        out[("torch", name)] = _StorageType(name, dtype)
        out[("torch.storage", name)] = out[("torch", name)]
    for name, dtype in _DTYPES.items():
        out[("torch", name)] = _TorchDtype(name, dtype)
    return out


def read_zip_checkpoint(path: Path, trust: bool = False) -> Any:
    """A ``torch.save`` zip checkpoint read without torch: tensors become arrays.

    Every storage's uncompressed size and every tensor's declared size are
    counted against the read budget (``--max-memory``) before they are read.
    """
    refuse_torchscript(path, trust)
    with budget.file_allowance():  # storages, tensor views and data.pkl's own arrays: one total
        return _read_zip_checkpoint(path, trust)


def _read_zip_checkpoint(path: Path, trust: bool) -> Any:
    with zipfile.ZipFile(path) as zf:
        pkl = _data_pkl(zf)
        if pkl is None:
            raise ModelError("a zip file without data.pkl: not a torch checkpoint")
        root = pkl[: -len("data.pkl")]
        names = set(zf.namelist())
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = zf.read(root + "byteorder").decode("ascii", "replace").strip()
        storages: dict[str, np.ndarray] = {}

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
                raise ModelError(f"unexpected persistent id {safepickle.safe_repr(pid)} in data.pkl")
            _, storage_type, key, _location, numel = pid
            if not isinstance(storage_type, _StorageType):
                raise ModelError(f"unknown storage type {safepickle.safe_repr(storage_type)}")
            key = str(key)
            if key not in storages:
                member = f"{root}data/{key}"
                if member not in names:
                    raise ModelError(f"storage {member} is missing from the checkpoint")
                info = zf.getinfo(member)
                budget.take(info.file_size, f"storage {member}")
                storages[key] = _decode(zf.read(member), storage_type.dtype, byteorder)
            return storages[key]

        info = zf.getinfo(pkl)
        if info.file_size > MAX_PICKLE_BYTES:
            raise ModelError(f"{pkl} has {info.file_size} bytes, over the limit")
        return safepickle.loads(
            zf.read(pkl),
            trust=trust,
            extra_globals=_torch_globals(),
            persistent_load=persistent_load,
        )


# ---------------------------------------------------------------------------
# safetensors

_ST_DTYPES = {
    "F64": "f8",
    "F32": "f4",
    "F16": "f2",
    "BF16": "bfloat16",
    "I64": "i8",
    "I32": "i4",
    "I16": "i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file, read here (the format is simple; the
    ``safetensors`` package, when installed, is used only by the tests to check this).

    Every entry's offsets must lie in the file and match its declared shape,
    and its size is counted against the read budget before it is read.
    """
    return _read_safetensors_here(path)


def _read_safetensors_here(path: Path) -> dict[str, np.ndarray]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError("not a .safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ModelError(f"safetensors header of {n} bytes does not fit the file")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"safetensors header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise ModelError("safetensors header is not a JSON object")
        out = {}
        base = 8 + n
        allowance = Allowance()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _ST_DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(v) for v in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise ModelError(f"safetensors entry {safepickle.safe_repr(name)} is malformed") from None
            itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
            if (
                any(s < 0 for s in shape)
                or end - begin != math.prod(shape) * itemsize
                or begin < 0
                or base + end > size
            ):
                raise ModelError(f"safetensors entry {safepickle.safe_repr(name)} has inconsistent offsets")
            allowance.take(2 * (end - begin), f"safetensors entry {safepickle.safe_repr(name)}")
            fh.seek(base + begin)
            out[name] = _decode(fh.read(end - begin), dtype, "little").reshape(shape)
        return out


# ---------------------------------------------------------------------------
# From a loaded object to a flat name → array dict


def _flatten(obj, torch, prefix: str = "", out=None, depth: int = 0) -> dict[str, np.ndarray]:
    out = {} if out is None else out
    if depth > 20:
        return out
    if torch is not None and isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if torch is not None and isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[prefix.rstrip(".")] = tensor.numpy()
    elif isinstance(obj, np.ndarray):
        out[prefix.rstrip(".")] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, torch, f"{prefix}{key}.", out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for k, value in enumerate(obj):
            _flatten(value, torch, f"{prefix}{k}.", out, depth + 1)
    return out


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip whose members hold ``code/`` and ``constants.pkl``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) and any(
        "/code/" in n or n.startswith("code/") for n in names
    )


def refuse_torchscript(path: Path, trust: bool) -> None:
    """A TorchScript archive holds code, which runs when it loads: only with --trust-pickle."""
    if not trust and is_torchscript(path):
        raise ModelError(
            "a TorchScript archive (torch.jit.save): loading it runs its code; pass --trust-pickle "
            "if you trust the file, or save the module's state_dict() instead"
        )


def _torch_load(path: Path, torch, trust: bool):
    if is_torchscript(path):
        refuse_torchscript(path, trust)
        try:
            return torch.jit.load(str(path), map_location="cpu").state_dict()
        except (RuntimeError, ValueError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"not a readable TorchScript archive: {msg[:200]}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
        if not trust:
            raise ModelError(
                f"torch.load(weights_only=True) refused the file ({first[:160]}); "
                f"{safepickle.TRUST_HINT}"
            ) from None
        raise ModelError(f"not a readable torch file: {first[:200]}") from None
    except (RuntimeError, EOFError, ValueError, AttributeError, ImportError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"not a readable torch file: {msg[:200]}") from None


def read_tensors(path: Path, trust: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """(name → array, name prefix → batch_first) of a torch or safetensors file.

    ``batch_first`` is only known for a pickled module (``--trust-pickle``).
    """
    if path.suffix == ".safetensors":
        return read_safetensors(path), {}
    if not trust and _is_torch_zip(path):
        # The project's own reader: only tensors are rebuilt, nothing of torch is imported.
        try:
            return _flatten(read_zip_checkpoint(path, trust), None), {}
        except zipfile.BadZipFile as exc:
            raise ModelError(f"a damaged zip checkpoint: {exc}") from None
    # A legacy (torch < 1.6) file, or --trust-pickle (a pickled module needs torch's classes).
    torch = _torch()
    if torch is not None:
        obj = _torch_load(path, torch, trust)
        batch_first = {}
        if isinstance(obj, torch.nn.Module):
            for name, module in obj.named_modules():
                if isinstance(module, (torch.nn.LSTM,)):
                    batch_first[f"{name}." if name else ""] = bool(module.batch_first)
        return _flatten(obj, torch), batch_first
    if not _is_torch_zip(path):
        raise ModelError(
            "a legacy (torch < 1.6) or non-zip torch file: install torch to read it, "
            "or re-save with torch.save(state_dict, path)"
        )
    try:
        return _flatten(read_zip_checkpoint(path, trust), None), {}
    except zipfile.BadZipFile as exc:
        raise ModelError(f"a damaged zip checkpoint: {exc}") from None


# ---------------------------------------------------------------------------
# Grouping keys into LSTMs


def lstm_prefixes(tensors: dict[str, np.ndarray]) -> dict[str, list[tuple[int, bool, str]]]:
    """prefix → [(layer, reverse, key suffix)] for every ``weight_ih`` key."""
    groups: dict[str, list[tuple[int, bool, str]]] = {}
    for key in tensors:
        m = KEY_RE.match(key)
        if m:
            suffix = key[len(m["prefix"]) + len("weight_ih") :]
            groups.setdefault(m["prefix"], []).append(
                (int(m["k"] or 0), bool(m["rev"]), suffix)
            )
    return groups


def _show(prefix: str) -> str:
    return repr(prefix) if prefix else "'' (top level)"


def kind_of(tensors: dict[str, np.ndarray], prefix: str, entries) -> str:
    """'LSTM', 'GRU', 'RNN' or '?' from the rows of the first weight_hh (4H, 3H or H)."""
    suffix = sorted(entries)[0][2]
    w_hh = tensors.get(f"{prefix}weight_hh{suffix}")
    if w_hh is None or np.ndim(w_hh) != 2 or w_hh.shape[1] == 0:
        return "?"
    w_hr = tensors.get(f"{prefix}weight_hr{suffix}")  # proj_size > 0: weight_hh is (4H, P)
    if w_hr is not None and np.ndim(w_hr) == 2 and w_hh.shape[0] == 4 * w_hr.shape[1]:
        return "LSTM"
    return {4: "LSTM", 3: "GRU", 1: "RNN"}.get(w_hh.shape[0] // w_hh.shape[1] if w_hh.shape[0] % w_hh.shape[1] == 0 else 0, "?")


def _describe(tensors, groups) -> str:
    names = {"LSTM": "an LSTM", "GRU": "a GRU", "RNN": "a plain RNN", "?": "not an LSTM"}
    return ", ".join(f"{_show(p)} ({names[kind_of(tensors, p, groups[p])]})" for p in sorted(groups))


def _select(groups: dict, options, tensors: dict | None = None) -> str:
    """The prefix of the LSTM to load.

    ``--layer-prefix`` matches a prefix exactly (with or without its trailing
    dot) or, failing that, as the start of a unique prefix: ``encoder`` selects
    ``encoder.rnn.``. Without it, a file with one LSTM among other recurrent
    layers (a GRU, a plain RNN) loads that LSTM; several LSTMs are listed.
    """
    tensors = tensors or {}
    if not groups:
        raise ModelError("no LSTM weights (no key ending in weight_ih_l0 or weight_ih)")
    wanted = options.layer_prefix
    if wanted is not None:
        for candidate in (wanted, wanted.rstrip(".") + "." if wanted else ""):
            if candidate in groups:
                return candidate
        stem = wanted.rstrip(".")
        # whole name components first (encoder → encoder.rnn., not encoder2.rnn.), then any start
        matches = [p for p in groups if p.startswith(stem + ".")] or [p for p in groups if p.startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ModelError(
                f"prefix {wanted!r} matches {len(matches)} recurrent layers: "
                + _describe(tensors, {p: groups[p] for p in matches})
                + "; give a longer --layer-prefix"
            )
        raise ModelError(f"no LSTM under prefix {wanted!r}; found: " + _describe(tensors, groups))
    if len(groups) > 1:
        lstms = [p for p in groups if kind_of(tensors, p, groups[p]) == "LSTM"] if tensors else list(groups)
        if len(lstms) == 1:
            return lstms[0]
        raise ModelError(
            f"{len(groups)} recurrent layers in the file: "
            + _describe(tensors, groups)
            + "; choose one with --layer-prefix"
        )
    return next(iter(groups))


def _direction(tensors, prefix: str, suffix: str, where: str):
    def get(name):
        return tensors.get(f"{prefix}{name}{suffix}")

    w_ih, w_hh, w_hr = get("weight_ih"), get("weight_hh"), get("weight_hr")
    if w_hh is None:
        raise ModelError(f"{where}: {prefix}weight_ih{suffix} has no {prefix}weight_hh{suffix}")
    if w_ih.ndim != 2 or w_hh.ndim != 2:
        raise ModelError(
            f"{where}: weight_ih {w_ih.shape} and weight_hh {w_hh.shape} must be matrices"
        )
    if w_hr is not None:  # proj_size > 0: weight_hr (P, H), weight_hh (4H, P)
        if w_hr.ndim != 2 or 0 in w_hr.shape or w_hh.shape != (4 * w_hr.shape[1], w_hr.shape[0]):
            raise ModelError(
                f"{where}: {prefix}weight_hr{suffix} has shape {w_hr.shape} and "
                f"{prefix}weight_hh{suffix} {w_hh.shape}: with proj_size P an LSTM stores "
                "weight_hr (P, H) and weight_hh (4H, P)"
            )
        H = w_hr.shape[1]
    else:
        H = w_hh.shape[1]
    rows = w_hh.shape[0]
    if H == 0 or rows != 4 * H:
        kind = {3 * H: "a GRU (3 gate blocks)", H: "a plain RNN (1 block)"}.get(rows, "not an LSTM")
        raise ModelError(
            f"{where}: {prefix}weight_hh{suffix} has shape {w_hh.shape}: {kind}; "
            f"an LSTM stacks 4 gate blocks of H={H}"
        )
    if w_ih.shape[0] != 4 * H:
        raise ModelError(
            f"{where}: {prefix}weight_ih{suffix} has shape {w_ih.shape}, expected ({4 * H}, D)"
        )
    b = np.zeros(4 * H)
    for name in ("bias_ih", "bias_hh"):
        bias = get(name)
        if bias is not None:
            if bias.shape != (4 * H,):
                raise ModelError(
                    f"{where}: {prefix}{name}{suffix} has shape {bias.shape}, expected ({4 * H},)"
                )
            b = b + bias.astype(np.float64)
    dtype = w_ih.dtype if w_ih.dtype in (np.float32, np.float64) else np.float32
    projection = None if w_hr is None else w_hr.T
    return make_direction(W=w_ih.T, U=w_hh.T, b=b, projection=projection, dtype=dtype, where=where)


def build_model(tensors, prefix: str, entries, path: Path, fmt: str, layout: str | None):
    n_layers = max(k for k, _, _ in entries) + 1
    present = {(k, rev) for k, rev, _ in entries}
    bidirectional = any(rev for _, rev in present)
    layers = []
    for k in range(n_layers):
        if (k, False) not in present:
            raise ModelError(f"layer {k} of {_show(prefix)}: {prefix}weight_ih_l{k} is missing")
        if bidirectional and (k, True) not in present:
            raise ModelError(f"layer {k}: {prefix}weight_ih_l{k}_reverse is missing")
        suffix = next(s for kk, rev, s in entries if kk == k and not rev)
        fwd = _direction(tensors, prefix, suffix, f"layer {k}")
        rev = None
        if bidirectional:
            rsuffix = next(s for kk, r, s in entries if kk == k and r)
            rev = _direction(tensors, prefix, rsuffix, f"layer {k} rev")
        if rev is not None and (fwd.projection is None) != (rev.projection is None):
            raise ModelError(
                f"layer {k}: only one direction has {prefix}weight_hr_l{k}: "
                "proj_size applies to both directions of nn.LSTM"
            )
        layers.append(Layer(fwd, rev, Activations()))
    notes = ["PyTorch gate order i, f, g, o; b = bias_ih + bias_hh"]
    projected = [k for k, layer in enumerate(layers) if layer.projected]
    if projected:
        notes.append(
            f"proj_size={layers[projected[0]].P} (LSTMP): h_t = W_hr·(o_t ⊙ tanh(c_t)) has "
            f"{layers[projected[0]].P} units, the cell {layers[projected[0]].H}; per-unit hidden "
            "statistics describe o_t ⊙ tanh(c_t) before the projection"
        )
    if layout is None:
        notes.append(
            "a state_dict does not record batch_first: inputs are read as btd unless "
            "--layout says otherwise (nn.LSTM's default is tbd)"
        )
    return LSTMModel(
        layers=tuple(layers),
        name=prefix.rstrip(".") or path.stem,
        source_format=fmt,
        source_files=(str(path),),
        stored_gate_order="ifgo",
        input_layout=layout or "btd",
        notes=tuple(notes),
        assumptions=(
            ("input layout", "btd (the file does not record batch_first)", "default") if layout is None
            else ("input layout", layout, "file"),
        ) + tuple(
            (f"l{k}:projection", f"proj_size={layer.P}: h_t = W_hr·(o_t ⊙ tanh(c_t)), W_hr ({layer.P}, {layer.H})",
             "file")
            for k, layer in enumerate(layers) if layer.projected
        ),
    )


def load(path: Path, options) -> LSTMModel:
    if options.preset is not None:
        raise ConfigError(f"--preset {options.preset} does not apply to PyTorch weights")
    tensors, batch_first = read_tensors(path, options.trust_pickle)
    groups = lstm_prefixes(tensors)
    prefix = _select(groups, options, tensors)
    layout = None
    if prefix in batch_first:
        layout = "btd" if batch_first[prefix] else "tbd"
    model = build_model(tensors, prefix, groups[prefix], path, "torch", layout)
    others = {p: e for p, e in groups.items() if p != prefix}
    if others:
        model = model.with_notes(f"loaded {_show(prefix)}; the file also holds " + _describe(tensors, others))
    if path.suffix != ".safetensors" and (options.trust_pickle or not _is_torch_zip(path)):
        why = "--trust-pickle (a pickled module needs torch's classes)" if options.trust_pickle else (
            "a legacy (torch < 1.6) file, which the project's own reader does not read"
        )
        model = model.with_notes(f"read with torch.load: {why}")
    return model
