""".npy and .npz files read with every declared size checked before reading.

``np.load`` trusts the file: an ``.npz`` member deflated from 6.5 GB of zeros
to 10 MB is inflated in full, and an ``.npy`` header may declare any shape.
Here, before a byte of array data is read:

- each ``.npz`` member's uncompressed size (from the zip directory) and the
  shape × itemsize its ``.npy`` header declares are counted against the read
  budget (``capture.budget.read_limit``: ``--max-memory``); the two must
  agree, so a header cannot declare more than the member holds;
- an ``.npy`` header's declared size must fit in the file (a memory-mapped
  file is then read lazily, chunk by chunk, by its user);
- the dtype must be a plain numeric one (no fields, offsets, subarrays or
  Python objects: ``allow_pickle`` is never set).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from lstm_doctor.capture.budget import Allowance, current_allowance, declared_bytes
from lstm_doctor.errors import ModelError

_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10000  # NumPy's own default cap on header size


def _header(fh, what: str, strings: bool = False) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, declared bytes) of an .npy stream positioned at its start."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh, max_header_size=_MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh, max_header_size=_MAX_HEADER)
        else:
            raise ModelError(f"{what}: .npy format version {version} is not read")
    except ModelError:
        raise
    except (ValueError, SyntaxError, OverflowError, EOFError, TypeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{what}: not a readable .npy header ({text[:160]})") from None
    if dtype.hasobject:
        raise ModelError(f"{what} holds Python objects (a pickle), not a numeric array")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in ("biufcUS" if strings else "biufc"):
        raise ModelError(f"{what} has dtype {dtype.descr if dtype.fields else dtype}: expected plain numbers")
    return tuple(shape), bool(fortran), dtype, declared_bytes(shape, dtype.itemsize)


def _with_path(read):
    """Errors name the file they are about."""
    def wrapper(path, *args, **kwargs):
        try:
            return read(Path(path), *args, **kwargs)
        except ModelError as exc:
            if exc.path is None:
                raise ModelError(exc.problem, path) from None
            raise

    wrapper.__doc__, wrapper.__name__ = read.__doc__, read.__name__
    return wrapper


@_with_path
def load_npy(path: Path, *, mmap: bool = False, allowance: Allowance | None = None) -> np.ndarray:
    """An .npy file; with ``mmap`` memory-mapped (nothing read yet), else read after the budget check."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(6) != _NPY_MAGIC:
            raise ModelError("not an .npy file (no NUMPY magic)", path)
        fh.seek(0)
        shape, fortran, dtype, nbytes = _header(fh, path.name)
        offset = fh.tell()
        if offset + nbytes > size:
            raise ModelError(
                f"the header declares shape {shape} of {dtype} ({nbytes} bytes), but the file holds "
                f"{max(size - offset, 0)} bytes of data",
                path,
            )
        if mmap:
            if nbytes == 0:
                return np.zeros(shape, dtype, order="F" if fortran else "C")
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
        (allowance or current_allowance()).take(nbytes, f"{path.name} (shape {shape} of {dtype})")
        data = np.fromfile(fh, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)))
    return data.reshape(shape, order="F" if fortran else "C")


def npz_names(path: str | Path) -> list[str]:
    """The array names of an .npz (its ``.npy`` members, without the suffix)."""
    with zipfile.ZipFile(path) as zf:
        return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


@_with_path
def load_npz(
    path: Path, names=None, *, strings=(), allowance: Allowance | None = None
) -> dict[str, np.ndarray]:
    """The arrays of an .npz (all, or ``names``), each member's sizes checked before it is inflated.

    ``strings``: names whose array may hold text (dtype U or S) instead of numbers.
    """
    allowance = allowance or current_allowance()
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            wanted = list(members) if names is None else [n for n in names if n in members]
            for name in wanted:
                info = zf.getinfo(members[name])
                what = f"{path.name}[{name}]"
                allowance.take(info.file_size, f"{what} ({info.file_size} bytes uncompressed)")
                with zf.open(info) as fh:
                    shape, fortran, dtype, nbytes = _header(fh, what, strings=name in strings)
                    header_len = fh.tell()
                    fh.seek(0)
                    if header_len + nbytes != info.file_size:
                        raise ModelError(
                            f"{what}: the header declares shape {shape} of {dtype} ({nbytes} bytes), "
                            f"the member holds {info.file_size - header_len}",
                            path,
                        )
                    array = np.lib.format.read_array(fh, allow_pickle=False)
                out[name] = array
    except zipfile.BadZipFile as exc:
        raise ModelError(f"not a readable .npz: {exc}", path) from None
    except (ValueError, EOFError, OSError) as exc:  # truncated or corrupt member data (zlib, CRC)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"not a readable .npz: {type(exc).__name__}: {text[:160]}", path) from None
    return out
