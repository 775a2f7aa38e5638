"""Hostile files for the attack suites (tests/test_attack_*.py).

Each maker writes one crafted file into a folder and returns its path. The
pickles are written with ``pickle.dumps`` over small ``_Reduce`` records, so
each one is exactly the opcodes an attacker would write: a GLOBAL the
restricted unpickler allows, its arguments, and (optionally) a BUILD state.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

try:  # NumPy 2 / NumPy 1
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct


class _Reduce:
    """Pickles as ``func(*args)`` followed by ``BUILD state`` (when state is not None)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


def _global_opcode(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def crafted_dtype(offset: int) -> _Reduce:
    """np.dtype('V8') whose BUILD state puts its only field at ``offset`` inside an 8-byte item."""
    return _Reduce(np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("<f8"), offset)}, 8, 1, 16))


def crafted_array(offset: int) -> _Reduce:
    return _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (4,), crafted_dtype(offset), False, bytes(32)))


def dtype_state_pickle(folder: Path, name: str = "m.pkl", offset: int = 10**9) -> Path:
    """A Tweet2Vec/Lasagne-shaped list of 17 arrays, one with a field far outside its item."""
    arrays = [np.zeros((1, 4), np.float32)] * 16 + [crafted_array(offset)]
    path = folder / name
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    return path


def dtype_fields_dict(folder: Path, name: str = "m.pkl") -> Path:
    """A Lasagne dict whose kernel has a structured dtype (fields, offsets)."""
    struct_dt = np.dtype({"names": ["a"], "formats": ["<f8"], "offsets": [0], "itemsize": 8})
    path = folder / name
    path.write_bytes(pickle.dumps({"W_in_to_ingate": np.zeros(4, struct_dt)}, protocol=2))
    return path


def bytearray_bomb(folder: Path, name: str = "m.pkl", n: int = 6 * 10**9) -> Path:
    path = folder / name
    path.write_bytes(pickle.dumps(_Reduce(bytearray, (n,)), protocol=2))
    assert len(path.read_bytes()) < 64
    return path


def ndarray_bomb(folder: Path, name: str = "m.pkl", shape=(20000, 20000)) -> Path:
    """A 1 kB Lasagne dict whose kernel is ``numpy.ndarray(shape)``: 3.2 GB once touched."""
    named = {"W_in_to_ingate": _Reduce(np.ndarray, (shape,))}
    path = folder / name
    path.write_bytes(pickle.dumps(named, protocol=2))
    return path


def reconstruct_bomb(folder: Path, name: str = "m.pkl") -> Path:
    """``_reconstruct`` then BUILD with a huge shape and a few bytes of data."""
    arr = _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (50000, 50000), np.dtype("<f4"), False, b"\0" * 16))
    path = folder / name
    path.write_bytes(pickle.dumps({"W_in_to_ingate": arr}, protocol=2))
    return path


def shared_reference_bomb(folder: Path, name: str = "m.pkl", depth: int = 48) -> Path:
    """A few hundred bytes whose printed form would be 2**depth long."""
    a: list = []
    for _ in range(depth):
        a = [a, a]
    path = folder / name
    path.write_bytes(pickle.dumps({"W_in_to_ingate": a, "name": a}, protocol=2))
    assert len(path.read_bytes()) < 1000
    return path


def shared_reference_layer(folder: Path, name: str = "m.pkl", depth: int = 48) -> Path:
    """A pickled Lasagne LSTMLayer stand-in whose name is the 2**depth-long list."""
    a: list = []
    for _ in range(depth):
        a = [a, a]
    body = pickle.dumps(a, protocol=2)[2:-1]  # the list's opcodes, without PROTO and STOP
    data = (
        b"\x80\x02" + _global_opcode("lasagne.layers.recurrent", "LSTMLayer") + b")\x81"  # cls() via NEWOBJ
        + b"}" + b"X\x04\x00\x00\x00name" + body + b"s"  # {"name": a}
        + b"b."  # BUILD, STOP
    )
    path = folder / name
    path.write_bytes(data)
    return path


def shadowing_ordereddict(folder: Path, name: str = "m.pkl") -> Path:
    """An OrderedDict whose BUILD state sets ``items``: the instance shadows its own method."""
    data = (
        b"\x80\x02" + _global_opcode("collections", "OrderedDict") + b")R"
        + b"}" + b"X\x05\x00\x00\x00items" + b"K\x05" + b"s" + b"b."
    )
    path = folder / name
    path.write_bytes(data)
    return path


def shadowing_joblib_wrapper(folder: Path, name: str = "m.pkl") -> Path:
    """A joblib NumpyArrayWrapper whose state replaces its ``read`` method."""
    data = (
        b"\x80\x02" + _global_opcode("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81"
        + b"}" + b"X\x04\x00\x00\x00read" + b"K\x05" + b"s" + b"b."
    )
    path = folder / name
    path.write_bytes(data)
    return path


def build_on_allowed_callable(folder: Path, name: str = "m.pkl") -> Path:
    """BUILD on a set instance (no __dict__): must be a one-line refusal."""
    data = b"\x80\x02" + _global_opcode("builtins", "set") + b")R" + b"}" + b"X\x01\x00\x00\x00aK\x01s" + b"b."
    path = folder / name
    path.write_bytes(data)
    return path


def code_payload(folder: Path, marker: Path, name: str = "m.pkl") -> Path:
    """os.system('touch MARKER'), the classic: refused, never run."""
    cmd = f"touch {marker}".encode()
    data = (
        b"\x80\x02" + _global_opcode("os", "system") + b"X" + struct.pack("<I", len(cmd)) + cmd + b"\x85R."
    )
    path = folder / name
    path.write_bytes(data)
    return path


def chained_payloads(folder: Path, marker: Path) -> list[Path]:
    """Allowed globals chained towards code: every one must be refused or inert."""
    out = []
    cmd = f"import pathlib; pathlib.Path({str(marker)!r}).touch()".encode()
    s = b"X" + struct.pack("<I", len(cmd)) + cmd
    cases = {
        "eval": b"\x80\x02" + _global_opcode("builtins", "eval") + s + b"\x85R.",
        "reconstructor": b"\x80\x02" + _global_opcode("copyreg", "_reconstructor")
        + _global_opcode("builtins", "eval") + _global_opcode("builtins", "object") + s + b"\x87R.",
        "getattr": b"\x80\x02" + _global_opcode("builtins", "getattr")
        + _global_opcode("builtins", "object") + b"X\x0e\x00\x00\x00__subclasses__\x86R.",
        "codecs": b"\x80\x02" + _global_opcode("_codecs", "encode") + s + b"X\x0b\x00\x00\x00hex_codec\x00\x86R.",
        "lasagne_call": b"\x80\x02" + _global_opcode("lasagne.layers", "LSTMLayer")
        + _global_opcode("os", "system") + b"\x85R.",
        "build_on_class": b"\x80\x02" + _global_opcode("collections", "OrderedDict")
        + b"}X\x08\x00\x00\x00__init__" + _global_opcode("builtins", "print") + b"sb.",
    }
    for key, data in cases.items():
        path = folder / f"chain_{key}.pkl"
        path.write_bytes(data)
        out.append(path)
    return out


# ---------------------------------------------------------------------------
# Containers


def npz_bomb(folder: Path, name: str = "m.npz", n: int = 6 * 10**9 // 4) -> Path:
    """A tiny deflated .npz whose member declares (and would inflate to) gigabytes.

    The member's npy header is real; its deflated body is zeros, written in
    pieces, so making the file costs no memory.
    """
    path = folder / name
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (n,)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("W_in_to_ingate.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            zero = bytes(1 << 24)
            left = n * 4
            while left > 0 and left > n * 4 - (64 << 20):  # only 64 MB really deflated: enough to lie
                fh.write(zero[: min(left, len(zero))])
                left -= len(zero)
    return path


def npz_declared_bomb(folder: Path, name: str = "x.npz", shape=(100000, 1000, 100)) -> Path:
    """An .npz whose npy header declares 40 GB over a few bytes of deflated data."""
    path = folder / name
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("x.npy", "w") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.write(bytes(4096))
    return path


def torch_zero_stride(folder: Path, name: str = "m.pt", sizes=((100000, 100000), (100000, 25000))) -> Path:
    """A torch zip checkpoint whose weights have stride 0 over a 1-element storage:
    weight_ih_l0 and weight_hh_l0 of ``sizes`` ((1e5, 1e5) and (1e5, 2.5e4) by default) declared."""
    # Written by hand: data.pkl is a dict of _rebuild_tensor_v2(persistent storage, 0, size, stride).
    def tensor(key: str, size, stride) -> bytes:
        sz = b"(" + b"".join(b"J" + struct.pack("<i", s) for s in size) + b"t"
        st = b"(" + b"".join(b"J" + struct.pack("<i", s) for s in stride) + b"t"
        pid = (
            b"(X\x07\x00\x00\x00storage" + _global_opcode("torch", "FloatStorage")
            + b"X" + struct.pack("<I", len(key)) + key.encode() + b"X\x03\x00\x00\x00cpuK\x01tQ"
        )
        return _global_opcode("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"K\x00" + sz + st + b"\x89tR"

    pkl = (
        b"\x80\x02}("
        + b"X\x0c\x00\x00\x00weight_ih_l0" + tensor("0", sizes[0], (0,) * len(sizes[0]))
        + b"X\x0c\x00\x00\x00weight_hh_l0" + tensor("0", sizes[1], (0,) * len(sizes[1]))
        + b"u."
    )
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", bytes(4))
        zf.writestr("archive/version", "3\n")
    return path


def safetensors_header_bomb(folder: Path, name: str = "m.safetensors") -> Path:
    """A safetensors header declaring a (1e5, 1e5) tensor over 16 bytes."""
    header = json.dumps({"weight_ih_l0": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4 * 10**10]}})
    data = header.encode()
    path = folder / name
    path.write_bytes(struct.pack("<Q", len(data)) + data + bytes(16))
    return path


def deep_json(depth: int = 100000) -> str:
    return "[" * depth + "]" * depth
