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
import struct
import types
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lstm_doctor.errors import ModelError

# Refuse single arrays and decompressed streams beyond these sizes (bytes): a
# malformed or hostile header must not make us allocate without bound.
MAX_ARRAY_BYTES = 4 << 30
MAX_DECOMPRESSED_BYTES = 8 << 30
_CHUNK = 16 << 20

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


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"array reconstruction of a {subtype!r} subclass is not allowed")
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
        raise ModelError(f"an array of shape {tuple(shape)} exceeds the size limit")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


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
    # np._core in NumPy 2, np.core in NumPy 1 (legacy Theano environments); the
    # paths below cover the pickles of both.
    package = getattr(np, "_core", None)
    if package is None or not hasattr(package, "multiarray"):
        package = np.core
    core = package.multiarray
    numeric = package.numeric
    out = {}
    for pkg in ("numpy.core", "numpy._core"):
        out[(f"{pkg}.multiarray", "_reconstruct")] = _safe_reconstruct
        out[(f"{pkg}.multiarray", "scalar")] = core.scalar
        out[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    out[("numpy", "memmap")] = np.ndarray  # only ever a subclass tag (joblib)
    out[("numpy.core.memmap", "memmap")] = np.ndarray
    out[("numpy._core.memmap", "memmap")] = np.ndarray
    return out


SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    **_numpy_globals(),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "object"): object,  # only usable through _safe_copyreg_reconstructor
    ("collections", "OrderedDict"): OrderedDict,
    ("copyreg", "_reconstructor"): _safe_copyreg_reconstructor,
    ("_codecs", "encode"): _safe_codecs_encode,
}


# ---------------------------------------------------------------------------
# joblib's array wrappers


class _JoblibArrayWrapper:
    """joblib >= 0.10 ``NumpyArrayWrapper``: the array bytes follow in the stream."""

    subclass = np.ndarray
    shape: tuple = ()
    order = "C"
    dtype = None
    numpy_array_alignment_bytes = None  # absent in joblib <= 1.1 files

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ModelError("malformed joblib array wrapper")
        self.__dict__.update(state)

    def read(self, unpickler: "RestrictedUnpickler") -> np.ndarray:
        dtype = self.dtype
        if not isinstance(dtype, np.dtype):
            raise ModelError(f"joblib array wrapper has dtype {dtype!r}")
        shape = tuple(int(s) for s in self.shape)
        if any(s < 0 for s in shape):
            raise ModelError(f"joblib array has negative shape {shape}")
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
        data = _read_exact(fh, count * dtype.itemsize)
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
        if not isinstance(state, dict):
            raise ModelError("malformed joblib array wrapper")
        self.__dict__.update(state)

    def companion(self, unpickler: "RestrictedUnpickler") -> Path:
        name = self.filename
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ModelError(f"joblib companion file name {name!r} is not a plain file name")
        if unpickler.context.folder is None:
            raise ModelError("this joblib file keeps its arrays in companion files; load it by path")
        return unpickler.context.folder / name

    def read(self, unpickler: "RestrictedUnpickler") -> np.ndarray:
        path = self.companion(unpickler)
        try:
            array = np.load(path, allow_pickle=False)
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
        array.__setstate__(self.state + (data,))
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


class RestrictedUnpickler(pickle._Unpickler):
    """``pickle``'s unpickler with a restricted ``find_class`` and two hooks.

    It is the pure-Python ``pickle._Unpickler`` (which joblib's own loader
    also subclasses) rather than the C one, because ``BUILD`` needs a hook:

    - joblib writes each array's raw bytes into the stream right after the
      ``BUILD`` of its wrapper; the hook reads them (as joblib's
      ``NumpyUnpickler`` does) instead of letting joblib run;
    - ``BUILD`` may only set the state of instances: a pickle must not set
      attributes on the classes and functions ``find_class`` hands out.
    """

    dispatch = pickle._Unpickler.dispatch.copy()

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
        target = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(target, (type, types.FunctionType, types.BuiltinFunctionType)) and not (
            self.context.trust
        ):
            raise UnsafePickleError(
                f"the pickle sets attributes of {getattr(target, '__name__', target)!s}, "
                f"not of an instance; {TRUST_HINT}"
            )
        pickle._Unpickler.load_build(self)
        top = self.stack[-1]
        if isinstance(top, (_JoblibArrayWrapper, _JoblibLegacyWrapper)):
            self.stack[-1] = top.read(self)

    dispatch[pickle.BUILD[0]] = load_build


def _read_exact(fh, nbytes: int) -> bytes:
    if nbytes > MAX_ARRAY_BYTES:
        raise ModelError(f"an array of {nbytes} bytes exceeds the {MAX_ARRAY_BYTES}-byte limit")
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
    if length > MAX_DECOMPRESSED_BYTES:
        raise ModelError(f"compressed data claims {length} bytes, over the limit")
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
        if self._total > MAX_DECOMPRESSED_BYTES:
            raise ModelError("decompressed data exceeds the size limit")
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
        if self._total > MAX_DECOMPRESSED_BYTES:
            raise ModelError("decompressed data exceeds the size limit")
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
    try:
        return loader()
    except ModelError:
        raise
    except _READ_ERRORS as exc:
        raise ModelError(f"not a readable pickle: {type(exc).__name__}: {exc}") from None


def load_file(path: str | Path, *, trust: bool = False) -> Any:
    """Load a pickle or joblib file (any compression joblib writes), restricted.

    ``trust=True`` lets unknown globals be imported (plain pickle behaviour).
    joblib is not needed and never imported.
    """
    path = Path(path)
    context = _Context(trust=trust, folder=path.parent)

    def loader():
        with open(path, "rb") as raw:
            stream = _open_stream(raw)
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
        lambda: RestrictedUnpickler(io.BytesIO(data), context, persistent_load).load()
    )
