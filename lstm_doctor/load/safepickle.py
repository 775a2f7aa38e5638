"""Restricted unpickling: read pickled weights without running the file's code.

A pickle is a small program: every ``GLOBAL`` it names is imported and called
while it loads, so ``pickle.load`` on an untrusted file can run anything
(``os.system``, ``subprocess``, ``eval``). Every pickle-based importer reads
through this module instead, whose ``find_class`` only hands out:

- NumPy's array and scalar reconstruction (``_reconstruct``, ``ndarray``,
  ``dtype``, ``scalar``, ``_frombuffer``), in their NumPy 1 and NumPy 2 paths;
- a few inert builtins (``set``, ``frozenset``, ``complex``, ``slice``,
  ``collections.OrderedDict``) and safe versions of ``copyreg._reconstructor``
  and ``_codecs.encode`` (which pickles written by Python 2 or with protocol < 3
  need);
- joblib's array wrappers (``NumpyArrayWrapper``; ``NDArrayWrapper`` and
  ``ZNDArrayWrapper`` of joblib < 0.10, whose data sits in companion files):
  the array bytes are read here, joblib itself is never imported;
- Theano, Aesara, PyTensor and Lasagne objects, as *inert stand-ins*
  (``PickledObject``): a stand-in stores its constructor arguments and its
  pickled state and has no other behaviour, so nothing of those libraries runs
  (and they need not be installed). Shared variables
  (``theano.tensor.sharedvar.TensorSharedVariable``, the CUDA and gpuarray
  ones, ``theano.compile.sharedvalue.SharedVariable``) become
  ``SharedVariableStandIn`` whose ``value`` is the stored array, and the GPU
  array unpicklers (``CudaNdarray_unpickler``, ``GpuArray_unpickler``) return
  the NumPy array they were given.

Any other global is refused with a ``ModelError`` that names it and points to
``--trust-pickle`` (``LoadOptions.trust_pickle``), which lets unknown globals
be imported as plain pickle would: only for files you trust. A pickle may not
set attributes on the classes and functions it is handed either (``BUILD`` on a
non-instance), so one load cannot tamper with the next.
"""

from __future__ import annotations

import _compat_pickle
import bz2
import io
import lzma
import math
import os
import pickle
import re
import reprlib
import struct
import types
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lstm_doctor.capture import budget
from lstm_doctor.capture.budget import declared_bytes, read_limit
from lstm_doctor.errors import ModelError
from lstm_doctor.load.npyfile import load_npy

# Every size a pickle declares (arrays, bytearrays, the bytes its opcodes read,
# decompressed data) is counted against the read budget (``--max-memory``,
# ``capture.budget.read_limit``) before it is allocated.
_CHUNK = 16 << 20

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def safe_repr(obj: Any) -> str:
    """A bounded repr for messages: a pickle can share one list 48 levels deep,
    whose full repr would be 2**48 characters long."""
    try:
        text = _REPR.repr(obj)
    except Exception:  # a stand-in or array whose repr fails: its type is enough
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= 120 else text[:117] + "..."

TRUST_HINT = "pass --trust-pickle only if you trust this file (loading it may run code)"


class UnsafePickleError(ModelError):
    """The pickle names a global that restricted loading does not provide."""


# ---------------------------------------------------------------------------
# Inert stand-ins


class PickledObject:
    """Inert stand-in for an object of a library we do not import.

    It keeps what the pickle gave it: constructor ``args`` (when the pickle
    called the class) and ``state`` (the ``__setstate__`` / ``__dict__``
    payload), nothing else. ``pickled_as`` is the original ``module.name``.
    """

    pickled_as = "?"
    args: tuple = ()
    state: Any = None

    def __init__(self, *args, **kwargs):
        self.args = args
        if kwargs:
            self.state = dict(kwargs)

    def __setstate__(self, state):
        self.state = state

    def get(self, key, default=None):
        """An entry of a dict state (``state`` may also be ``(dict, slots)``)."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            merged = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            state = merged
        if isinstance(state, dict):
            return state.get(key, default)
        return default

    def __repr__(self):
        return f"<{self.pickled_as} (inert stand-in)>"


class SharedVariableStandIn(PickledObject):
    """A Theano/Aesara/PyTensor shared variable: ``value`` is its stored array."""

    @property
    def name(self):
        name = self.get("name")
        return name if isinstance(name, str) else None

    @property
    def value(self):
        container = self.get("container")
        if isinstance(container, PickledObject):
            storage = container.get("storage")
            if isinstance(storage, list) and storage:
                return as_array(storage[0])
        if self.args:  # theano.tensor.sharedvar.load_shared_variable(value)
            return as_array(self.args[0])
        for key in ("value", "data"):
            if self.get(key) is not None:
                return as_array(self.get(key))
        return None

    def get_value(self):
        return self.value


def _passthrough_array(npa, *rest):
    """``CudaNdarray_unpickler`` / ``GpuArray_unpickler``: keep the host array."""
    if not isinstance(npa, np.ndarray):
        raise UnsafePickleError(f"a GPU array unpickler got {type(npa).__name__}, not an array")
    return npa


def _load_shared_variable(value):
    obj = SharedVariableStandIn(value)
    obj.pickled_as = "theano.tensor.sharedvar.load_shared_variable"
    return obj


_SHARED_VARIABLE_PATHS = (
    "tensor.sharedvar.TensorSharedVariable",
    "tensor.sharedvar.ScalarSharedVariable",
    "compile.sharedvalue.SharedVariable",
    "sandbox.cuda.var.CudaNdarraySharedVariable",
    "gpuarray.type.GpuArraySharedVariable",
    "sandbox.gpuarray.type.GpuArraySharedVariable",
    "scalar.sharedvar.ScalarSharedVariable",
)
_ARRAY_UNPICKLERS = (
    "sandbox.cuda.type.CudaNdarray_unpickler",
    "gpuarray.type.GpuArray_unpickler",
    "sandbox.gpuarray.type.GpuArray_unpickler",
)
# Namespaces whose objects become inert stand-ins (never imported).
INERT_ROOTS = ("theano", "aesara", "pytensor", "lasagne")

_standin_cache: dict[str, type] = {}


def _standin_class(module: str, name: str) -> Any:
    qualified = f"{module}.{name}"
    root = module.split(".")[0]
    rel = qualified[len(root) + 1 :]
    if rel in _ARRAY_UNPICKLERS:
        return _passthrough_array
    if rel == "tensor.sharedvar.load_shared_variable":
        return _load_shared_variable
    # Classes and functions alike become a stand-in class: a reference keeps
    # its ``pickled_as`` name, and calling it builds an inert instance.
    if qualified not in _standin_cache:
        shared = rel in _SHARED_VARIABLE_PATHS or name.endswith("SharedVariable")
        base = SharedVariableStandIn if shared else PickledObject
        _standin_cache[qualified] = type(name, (base,), {"pickled_as": qualified})
    return _standin_cache[qualified]


def as_array(obj) -> np.ndarray | None:
    """The NumPy array an unpickled object holds (array, scalar or shared variable)."""
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, np.generic):
        return np.asarray(obj)
    if isinstance(obj, SharedVariableStandIn):
        return obj.value
    return None


# ---------------------------------------------------------------------------
# Safe replacements for the few callables pickles legitimately use


# Plain builtin dtypes only: a code such as '<f4' (bool, ints, floats, complex,
# or object for joblib's nested lists). A structured dtype can place a field at
# any offset inside (or far outside) its item, so copying such an array reads
# and writes outside its buffer: no fields, offsets or subarrays ever.
_DTYPE_CODE = re.compile(r"[<>|=]?(?:b1|\?|[iu][1248]|f[248]|c(?:8|16)|O[48]?|[bhilqBHILQefdgFD])")
_PLAIN_KINDS = "biufcO"


def check_dtype(dtype, what: str = "an array") -> np.dtype:
    """``dtype`` if it is a plain builtin dtype, else ``UnsafePickleError``."""
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"{what} has dtype {safe_repr(dtype)}, not a NumPy dtype")
    if (
        dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.kind not in _PLAIN_KINDS
        or dtype.itemsize != np.dtype(dtype.str).itemsize
        or dtype.metadata
    ):
        raise UnsafePickleError(
            f"{what} has dtype {safe_repr(dtype.descr if dtype.fields else dtype)}: only plain "
            "numeric dtypes (a code like '<f4', no fields, offsets or subarrays) are read"
        )
    return dtype


def check_array(array: np.ndarray, what: str = "an array") -> np.ndarray:
    """A loaded array's dtype, shape and strides: plain dtype, contiguous (C or F), its own memory."""
    check_dtype(array.dtype, what)
    if array.size and not (array.flags.c_contiguous or array.flags.f_contiguous):
        raise UnsafePickleError(f"{what} of shape {array.shape} has strides {array.strides}: not contiguous")
    return array


def _shape(shape, what: str) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise UnsafePickleError(f"{what} has shape {safe_repr(shape)}, not a tuple of integers")
    if len(shape) > 32 or any(s < 0 for s in shape):
        raise UnsafePickleError(f"{what} has shape {safe_repr(shape)}")
    return shape


def _safe_dtype(obj, align=False, copy=True):
    """``numpy.dtype(code, align, copy)`` for a plain code; always a fresh copy.

    (``copy=True`` matters: a later BUILD sets the state of the object made
    here, which must never be NumPy's shared builtin dtype.)
    """
    if isinstance(obj, bytes):
        obj = obj.decode("latin1")
    if not isinstance(obj, str) or not _DTYPE_CODE.fullmatch(obj):
        raise UnsafePickleError(
            f"the pickle builds numpy.dtype({safe_repr(obj)}): only plain numeric dtype codes such as '<f4' are read"
        )
    return check_dtype(np.dtype(obj, align=False, copy=True), "a dtype")


def _set_dtype_state(dtype: np.dtype, state) -> None:
    """BUILD of a dtype: only its byte order may be set, the rest must be NumPy's own."""
    ok = (
        isinstance(state, tuple)
        and len(state) in (8, 9)
        and state[0] in (2, 3, 4)
        and state[1] in ("<", ">", "|", "=")
        and state[2] is None and state[3] is None and state[4] is None
        and state[5] == -1 and state[6] == -1
        and (len(state) == 8 or state[8] is None)
    )
    if not ok:
        raise UnsafePickleError(
            f"the pickle sets a dtype's state to {safe_repr(state)}: only plain dtypes "
            "(no fields, offsets, subarrays or item sizes) are read"
        )
    order = state[1]
    if dtype.itemsize == 1 or dtype.kind == "O":
        order = "|"
    elif order == "|":
        raise UnsafePickleError(f"the pickle gives a {dtype.itemsize}-byte dtype no byte order")
    dtype.__setstate__((3, order, None, None, None, -1, -1, dtype.flags))


def _set_array_state(array: np.ndarray, state) -> None:
    """BUILD of an ndarray: shape, plain dtype and data checked, size counted first."""
    if not (isinstance(state, tuple) and len(state) in (4, 5)):
        raise UnsafePickleError(f"malformed array state {safe_repr(state)}")
    if len(state) == 5:
        version, shape, dtype, fortran, data = state
        if version != 1:
            raise UnsafePickleError(f"array state version {safe_repr(version)} is not read")
    else:
        shape, dtype, fortran, data = state
    shape = _shape(shape, "an array")
    check_dtype(dtype)
    nbytes = declared_bytes(shape, dtype.itemsize)
    budget.take(nbytes, f"an array of shape {shape}")
    count = math.prod(shape)
    if dtype.hasobject:
        if not (isinstance(data, list) and len(data) == count):
            raise UnsafePickleError(f"an object array of shape {shape} without its {count} items")
    elif not (isinstance(data, (bytes, bytearray)) and len(data) == nbytes):
        raise UnsafePickleError(f"an array of shape {shape} and dtype {dtype} without its {nbytes} bytes of data")
    array.__setstate__((1, shape, dtype, bool(fortran), data))


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray and subtype is not _safe_ndarray:
        raise UnsafePickleError(f"array reconstruction of a {safe_repr(subtype)} subclass is not allowed")
    shape = _shape(shape, "an array")
    dtype = np.dtype("b") if dtype in (b"b", "b") else check_dtype(dtype)
    budget.take(declared_bytes(shape, dtype.itemsize), f"an array of shape {shape}")
    return np.zeros(shape, dtype)


def _safe_ndarray(shape, dtype=float, buffer=None, offset=0, strides=None, order=None):
    """``numpy.ndarray(shape, dtype)`` called by a pickle: zeros, counted; no buffer or strides."""
    if buffer is not None or offset or strides is not None:
        raise UnsafePickleError("the pickle calls numpy.ndarray with a buffer, offset or strides")
    shape = _shape(shape, "numpy.ndarray")
    dtype = check_dtype(np.dtype(dtype) if dtype is float else dtype, "numpy.ndarray")
    budget.take(declared_bytes(shape, dtype.itemsize), f"numpy.ndarray of shape {shape}")
    return np.zeros(shape, dtype, order="F" if order == "F" else "C")


def _safe_scalar(dtype, obj=None):
    check_dtype(dtype, "a scalar")
    if dtype.hasobject:
        return obj
    if not (isinstance(obj, bytes) and len(obj) == dtype.itemsize):
        raise UnsafePickleError(f"a {dtype} scalar without its {dtype.itemsize} bytes")
    return np.frombuffer(obj, dtype=dtype, count=1)[0]


def _safe_frombuffer(buf, dtype, shape, order):
    """NumPy's protocol-5 array path: bytes, plain dtype, shape checked against the data."""
    check_dtype(dtype)
    shape = _shape(shape, "an array")
    nbytes = declared_bytes(shape, dtype.itemsize)
    data = memoryview(buf).cast("B") if not isinstance(buf, (bytes, bytearray)) else buf
    if len(data) != nbytes:
        raise UnsafePickleError(f"an array of shape {shape} and dtype {dtype} without its {nbytes} bytes of data")
    budget.take(nbytes, f"an array of shape {shape}")
    array = np.frombuffer(bytes(data), dtype=dtype)
    return array.reshape(shape, order="F" if order == "F" else "C").copy(order="K")


def _safe_bytearray(*args):
    """``bytearray(data)``; ``bytearray(n)`` only within the budget (bytearray(6e9) is 24 bytes of pickle)."""
    if args and isinstance(args[0], int):
        budget.take(max(args[0], 0), f"bytearray({args[0]})")
    if args and isinstance(args[0], str):
        budget.take(len(args[0]), "a bytearray")
    return bytearray(*args)


def _safe_copyreg_reconstructor(cls, base, state):
    # copyreg._reconstructor(cls, object, None) is how protocols 0 and 1 pickle
    # plain class instances; only our inert stand-ins may be built this way.
    if not (isinstance(cls, type) and issubclass(cls, PickledObject)) or base is not object:
        raise UnsafePickleError(
            f"copyreg._reconstructor({getattr(cls, '__name__', cls)!s}, "
            f"{getattr(base, '__name__', base)!s}) is not allowed"
        )
    obj = object.__new__(cls)
    if state is not None:
        obj.state = state
    return obj


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    if str(encoding).lower().replace("-", "") not in ("latin1", "utf8", "ascii"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode(encoding, errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # np._core in NumPy 2, np.core in NumPy 1 (legacy Theano environments): the
    # pickles of both name these paths; none of NumPy's own callables is handed out.
    out = {}
    for pkg in ("numpy.core", "numpy._core"):
        out[(f"{pkg}.multiarray", "_reconstruct")] = _safe_reconstruct
        out[(f"{pkg}.multiarray", "scalar")] = _safe_scalar
        out[(f"{pkg}.numeric", "_frombuffer")] = _safe_frombuffer
    out[("numpy", "ndarray")] = _safe_ndarray
    out[("numpy", "dtype")] = _safe_dtype
    out[("numpy", "memmap")] = _safe_ndarray  # only ever a subclass tag (joblib)
    out[("numpy.core.memmap", "memmap")] = _safe_ndarray
    out[("numpy._core.memmap", "memmap")] = _safe_ndarray
    return out


SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "bytearray"): _safe_bytearray,
    ("builtins", "object"): object,  # only usable through _safe_copyreg_reconstructor
    ("collections", "OrderedDict"): OrderedDict,
    ("copyreg", "_reconstructor"): _safe_copyreg_reconstructor,
    ("_codecs", "encode"): _safe_codecs_encode,
}


# ---------------------------------------------------------------------------
# joblib's array wrappers


# The attributes joblib's wrappers pickle, and nothing else: a state that set
# ``read`` (or any other name) would shadow the wrapper's own methods.
_WRAPPER_FIELDS = {
    "subclass": object, "shape": (tuple, list), "order": str, "dtype": np.dtype, "allow_mmap": bool,
    "numpy_array_alignment_bytes": (int, type(None)), "filename": (str, bytes), "init_args": tuple,
    "state": tuple, "mmap_mode": (str, type(None)),
}


def _wrapper_state(state) -> dict:
    if not isinstance(state, dict):
        raise ModelError("malformed joblib array wrapper")
    for key, value in state.items():
        kind = _WRAPPER_FIELDS.get(key) if isinstance(key, str) else None
        if kind is None or not isinstance(value, kind):
            raise UnsafePickleError(
                f"a joblib array wrapper with field {safe_repr(key)} = {safe_repr(value)}, "
                "which joblib does not write"
            )
    return state


class _JoblibArrayWrapper:
    """joblib >= 0.10 ``NumpyArrayWrapper``: the array bytes follow in the stream."""

    subclass = np.ndarray
    shape: tuple = ()
    order = "C"
    dtype = None
    numpy_array_alignment_bytes = None  # absent in joblib <= 1.1 files

    def __setstate__(self, state):
        self.__dict__.update(_wrapper_state(state))

    def read(self, unpickler: "RestrictedUnpickler") -> np.ndarray:
        dtype = check_dtype(self.dtype, "a joblib array")
        shape = _shape(tuple(self.shape), "a joblib array")
        fh = unpickler.file_handle
        if dtype.hasobject:
            # joblib pickles object arrays as a nested pickle: same restrictions.
            return RestrictedUnpickler(fh, unpickler.context).load()
        if self.numpy_array_alignment_bytes is not None:
            padding = fh.read(1)
            if len(padding) != 1:
                raise ModelError("joblib array data is truncated")
            if padding[0]:
                fh.read(padding[0])
        count = math.prod(shape)
        nbytes = declared_bytes(shape, dtype.itemsize)
        budget.take(nbytes, f"a joblib array of shape {shape}")
        data = _read_exact(fh, nbytes)
        array = np.frombuffer(data, dtype=dtype, count=count).copy()
        if self.order == "F":
            array = array.reshape(shape[::-1]).transpose()
        else:
            array = array.reshape(shape)
        return _native(array)


class _JoblibLegacyWrapper:
    """joblib < 0.10 ``NDArrayWrapper``: the array is a companion ``.npy`` file."""

    filename = None
    subclass = np.ndarray

    def __setstate__(self, state):
        self.__dict__.update(_wrapper_state(state))

    def companion(self, unpickler: "RestrictedUnpickler") -> Path:
        name = self.filename
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ModelError(f"joblib companion file name {safe_repr(name)} is not a plain file name")
        if unpickler.context.folder is None:
            raise ModelError("this joblib file keeps its arrays in companion files; load it by path")
        return unpickler.context.folder / name

    def read(self, unpickler: "RestrictedUnpickler") -> np.ndarray:
        path = self.companion(unpickler)
        try:
            array = load_npy(path)
        except FileNotFoundError:
            raise ModelError(f"joblib companion file {path.name} is missing") from None
        except ValueError as exc:
            raise ModelError(f"joblib companion file {path.name}: {exc}") from None
        return _native(np.asarray(array))


class _JoblibZLegacyWrapper(_JoblibLegacyWrapper):
    """joblib < 0.10 ``ZNDArrayWrapper``: a zlib-compressed companion file."""

    init_args = None
    state = None

    def read(self, unpickler: "RestrictedUnpickler") -> np.ndarray:
        path = self.companion(unpickler)
        if not (isinstance(self.init_args, tuple) and isinstance(self.state, tuple)):
            raise ModelError("malformed joblib compressed array wrapper")
        array = _safe_reconstruct(*self.init_args)
        try:
            with open(path, "rb") as fh:
                data = _read_zfile(fh)
        except FileNotFoundError:
            raise ModelError(f"joblib companion file {path.name} is missing") from None
        _set_array_state(array, self.state + (data,))
        return _native(array)


_JOBLIB_MODULES = ("joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle")
_JOBLIB_GLOBALS = {}
for _mod in _JOBLIB_MODULES:
    _JOBLIB_GLOBALS[(_mod, "NumpyArrayWrapper")] = _JoblibArrayWrapper
    _JOBLIB_GLOBALS[(_mod, "NDArrayWrapper")] = _JoblibLegacyWrapper
    _JOBLIB_GLOBALS[(_mod, "ZNDArrayWrapper")] = _JoblibZLegacyWrapper
    _compat = _mod.replace("numpy_pickle", "numpy_pickle_compat")
    _JOBLIB_GLOBALS[(_compat, "NDArrayWrapper")] = _JoblibLegacyWrapper
    _JOBLIB_GLOBALS[(_compat, "ZNDArrayWrapper")] = _JoblibZLegacyWrapper
SAFE_GLOBALS.update(_JOBLIB_GLOBALS)


def _native(array: np.ndarray) -> np.ndarray:
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


# ---------------------------------------------------------------------------
# The unpicklers


class _Context:
    """What a load needs besides the stream: trust, extra globals, limits."""

    def __init__(self, trust=False, extra_globals=None, folder=None):
        self.trust = trust
        self.extra_globals = extra_globals or {}
        self.folder = folder


def _find_class(context: _Context, module: str, name: str, fallback: Callable):
    # Python 2 spellings (``__builtin__``, ``copy_reg``), as ``fix_imports`` maps them.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    key = (module, name)
    if key in context.extra_globals:
        return context.extra_globals[key]
    if key in SAFE_GLOBALS:
        return SAFE_GLOBALS[key]
    if module.split(".")[0] in INERT_ROOTS:
        return _standin_class(module, name)
    if context.trust:
        return fallback(module, name)
    raise UnsafePickleError(
        f"the pickle asks for {module}.{name}, which restricted loading refuses; {TRUST_HINT}"
    )


# The one use of pickle's private API, kept here and tested by
# tests/test_attack_pickles.py::test_the_pickle_adapter_still_intercepts_build:
# the pure-Python unpickler (which joblib's own loader also subclasses), whose
# dispatch table lets BUILD be replaced. The C unpickler has no such hook.
_PurePythonUnpickler = pickle._Unpickler
_BUILD = pickle.BUILD[0]


def _dispatch_with_build(load_build: Callable) -> dict:
    """A copy of the pure-Python unpickler's opcode table, with BUILD replaced."""
    dispatch = _PurePythonUnpickler.dispatch.copy()
    if _BUILD not in dispatch:  # pragma: no cover - a Python whose pickle changed shape
        raise RuntimeError("pickle._Unpickler has no BUILD handler: safepickle needs updating")
    dispatch[_BUILD] = load_build
    return dispatch


class RestrictedUnpickler(_PurePythonUnpickler):
    """``pickle``'s unpickler with a restricted ``find_class`` and its own BUILD.

    BUILD (set an object's state) is where a pickle reaches inside the objects
    ``find_class`` handed out, so it only applies to:

    - inert stand-ins (their ``__setstate__`` stores the state, nothing else);
    - arrays and dtypes, with the state validated first (plain dtype, shape,
      exactly the data's bytes, the size counted against the budget);
    - joblib's wrappers, with only the fields joblib writes; the array's raw
      bytes follow in the stream and are read here, as joblib's own
      ``NumpyUnpickler`` does, instead of letting joblib run.

    Anything else (a class, a function, an ``OrderedDict`` whose state would
    shadow its methods) is refused unless the file is trusted.
    """

    def __init__(self, file, context: _Context | None = None, persistent_load=None):
        super().__init__(file, encoding="latin1")
        self.file_handle = file
        self.context = context or _Context()
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        return _find_class(self.context, module, name, super().find_class)

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise ModelError("the pickle uses persistent ids (not a joblib or plain pickle file)")
        return self._persistent_load(pid)

    def load_build(self):
        if len(self.stack) < 2:
            raise ModelError("malformed pickle: BUILD with nothing to build")
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, (PickledObject, _JoblibArrayWrapper, _JoblibLegacyWrapper)) or self.context.trust:
            _PurePythonUnpickler.load_build(self)  # their __setstate__ validates or stores
        elif type(target) is np.ndarray:
            self.stack.pop()
            _set_array_state(target, state)
        elif isinstance(target, np.dtype):
            self.stack.pop()
            _set_dtype_state(target, state)
        elif type(target) is OrderedDict and _plain_attributes(OrderedDict, state):
            self.stack.pop()  # torch's state_dict carries ``_metadata`` this way
            target.__dict__.update(state)
        else:
            what = getattr(target, "__name__", None) if isinstance(target, (type, types.FunctionType)) else None
            kind = f"of {what}, not of an instance" if what else f"of a {type(target).__name__}"
            raise UnsafePickleError(f"the pickle sets attributes {kind}, which restricted loading refuses; {TRUST_HINT}")
        top = self.stack[-1]
        if isinstance(top, (_JoblibArrayWrapper, _JoblibLegacyWrapper)):
            self.stack[-1] = top.read(self)

    dispatch = _dispatch_with_build(load_build)


def _plain_attributes(cls: type, state) -> bool:
    """A dict of new attribute names: none of them shadows something ``cls`` defines."""
    return isinstance(state, dict) and all(
        isinstance(k, str) and not k.startswith("__") and not hasattr(cls, k) for k in state
    )


class _BoundedStream:
    """The pickle stream, read in pieces of at most ``_CHUNK`` bytes.

    A pickle opcode may declare a length (BINBYTES8 of 6e9): the unpickler
    then asks for that many bytes at once, and a buffered file object would
    allocate them all before finding that the file is short. Served in pieces,
    a read allocates no more than the data that is really there (and a
    decompressed stream is capped at the budget).
    """

    def __init__(self, inner):
        self._inner = inner

    def read(self, n=-1):
        if n is None or n < 0:
            n = read_limit() + 1
        if n <= _CHUNK:
            return self._inner.read(n)
        parts, left = [], n
        while left > 0:
            chunk = self._inner.read(min(left, _CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def readline(self, size=-1):
        return self._inner.readline(_CHUNK if size is None or size < 0 else min(size, _CHUNK))


def _read_exact(fh, nbytes: int) -> bytes:
    parts, remaining = [], nbytes
    while remaining:
        chunk = fh.read(min(remaining, _CHUNK))
        if not chunk:
            raise ModelError("array data is truncated (the file ends early)")
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------------------
# Compression (the formats joblib.dump writes)

_ZFILE_PREFIX = b"ZF"  # joblib < 0.10 compressed pickles and companion files
_ZFILE_HEADER = 2 + len(f"{2**64:#x}")


def _read_zfile(fh) -> bytes:
    header = fh.read(_ZFILE_HEADER)
    if not header.startswith(_ZFILE_PREFIX):
        raise ModelError("not a joblib z-file")
    try:
        length = int(header[2:], 16)
    except ValueError:
        raise ModelError("malformed joblib z-file header") from None
    budget.take(length, "joblib z-file data")
    rest = fh.read()
    if rest[:1] == b" ":  # joblib <= 0.8.4 wrote one more header byte
        rest = rest[1:]
    d = zlib.decompressobj(15)
    data = d.decompress(rest, length + 1)
    if len(data) != length:
        raise ModelError("joblib z-file length does not match its data")
    return data


class _DecompressReader(io.RawIOBase):
    """A read-only stream over zlib/gzip data with a cap on the output size."""

    def __init__(self, raw, wbits: int):
        self._raw = raw
        self._d = zlib.decompressobj(wbits)
        self._buf = b""
        self._total = 0

    def readable(self):
        return True

    def readinto(self, b):
        while not self._buf:
            if self._d.eof:
                return 0
            data = self._d.unconsumed_tail or self._raw.read(1 << 16)
            if not data:
                raise ModelError("compressed stream is truncated")
            self._buf = self._d.decompress(data, 1 << 20)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self._total += n
        if self._total > read_limit():
            raise ModelError(f"decompressed data exceeds the {read_limit()}-byte --max-memory")
        return n


class _CappedReader(io.RawIOBase):
    def __init__(self, inner):
        self._inner = inner
        self._total = 0

    def readable(self):
        return True

    def readinto(self, b):
        data = self._inner.read(len(b))
        b[: len(data)] = data
        self._total += len(data)
        if self._total > read_limit():
            raise ModelError(f"decompressed data exceeds the {read_limit()}-byte --max-memory")
        return len(data)


def _open_stream(fh):
    """The decompressed stream of a (possibly joblib-compressed) pickle file."""
    head = fh.read(6)
    fh.seek(0)
    if head.startswith(_ZFILE_PREFIX):
        return io.BytesIO(_read_zfile(fh))
    if head[:1] == b"\x78" and len(head) >= 2 and (head[0] * 256 + head[1]) % 31 == 0:
        return io.BufferedReader(_DecompressReader(fh, 15))
    if head.startswith(b"\x1f\x8b"):
        return io.BufferedReader(_DecompressReader(fh, 31))
    if head.startswith(b"BZh"):
        return io.BufferedReader(_CappedReader(bz2.BZ2File(fh)))
    if head.startswith(b"\xfd7zXZ") or head.startswith(b"\x5d\x00"):
        return io.BufferedReader(_CappedReader(lzma.LZMAFile(fh)))
    if head.startswith(b"\x04\x22\x4d\x18"):
        raise ModelError("lz4-compressed joblib files are not supported; re-save with zlib or none")
    return fh


def looks_like_pickle(path: Path) -> bool:
    """Cheap check of the first bytes: a pickle or a joblib-compressed pickle."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return True
    if head.startswith((_ZFILE_PREFIX, b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00")):
        return True
    if head[:1] == b"\x78" and len(head) >= 2 and (head[0] * 256 + head[1]) % 31 == 0:
        return True
    # Protocols 0 and 1 start with MARK, an empty list/dict or a GLOBAL.
    return head[:1] in (b"(", b"]", b"}", b"c") and not head.startswith(b"\x93NUMPY")


_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    struct.error,
    UnicodeDecodeError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    MemoryError,
    RecursionError,
    ImportError,  # a trusted pickle that needs a module not installed
)


def _run(loader: Callable[[], Any]):
    """Run one load under the file's allowance (a pickle inside a ``.pt`` adds to the
    checkpoint's); any reading error becomes one line."""
    try:
        with budget.file_allowance(join=True):
            return loader()
    except ModelError:
        raise
    except RecursionError:
        raise ModelError("not a readable pickle: nested too deeply") from None
    except _READ_ERRORS as exc:
        text = str(exc)
        text = text if len(text) <= 200 else text[:197] + "..."
        raise ModelError(f"not a readable pickle: {type(exc).__name__}: {text}") from None


def load_file(path: str | Path, *, trust: bool = False) -> Any:
    """Load a pickle or joblib file (any compression joblib writes), restricted.

    ``trust=True`` lets unknown globals be imported (plain pickle behaviour).
    joblib is not needed and never imported.
    """
    path = Path(path)
    context = _Context(trust=trust, folder=path.parent)

    def loader():
        with open(path, "rb") as raw:
            stream = _BoundedStream(_open_stream(raw))
            return RestrictedUnpickler(stream, context).load()

    return _run(loader)


def loads(
    data: bytes,
    *,
    trust: bool = False,
    extra_globals: dict[tuple[str, str], Any] | None = None,
    persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
    """Unpickle ``data`` with the restrictions, plus ``extra_globals``."""
    context = _Context(trust=trust, extra_globals=extra_globals)
    return _run(
        lambda: RestrictedUnpickler(
            _BoundedStream(io.BytesIO(data)), context, persistent_load
        ).load()
    )
