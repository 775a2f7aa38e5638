"""Writing what the user asked for, without ever losing what they had.

- **Never over an input.** While a job runs (``tracking()``), every file the
  process opens for reading is recorded, whichever reader opened it (a
  ``sys.addaudithook`` on the ``open`` event: ``open``, ``os.open``,
  ``io.open_code``, NumPy's ``np.load``, onnx's external data, ...). Readers that
  open files in C (h5py, safetensors) open the MODEL path, which ``declare_read``
  records. Before any write, the target is compared with that read-set by real
  path and by (device, inode), so a new reader cannot forget to protect its
  files. The jobs also check their outputs before the work, against the files
  they were given.
- **Atomically over regular files only.** A regular file (or a new path) is
  written to a temporary file beside its real target (a symlink is followed)
  and renamed over it only when complete (``os.replace`` is atomic on POSIX), so
  an interrupted run leaves the old file intact and no partial file behind. A
  device, a FIFO, ``-`` (stdout) and anything under ``/dev`` or ``/proc`` are
  written directly: renaming over them would replace the device or the
  symlink with a plain file.
- **One unit.** ``one_unit()`` defers the renames of every file written inside
  it (a report and its PNGs) until the block completes, and removes every
  temporary if it does not: never a folder of plots without their report.
- **One line.** An operating-system error while writing (read-only folder, full
  disk, name too long, a path under a file) is a ``UserError`` naming the file.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lstm_doctor.errors import UserError

# -- the read-set ------------------------------------------------------------------

class _Run:
    """One job's read-set (absolute paths opened for reading) and the outputs it checked."""

    def __init__(self):
        self.reads: set[str] = set()
        self.outputs: list[Path] = []


_ACTIVE: list[_Run] = []  # the jobs running now (nested: union)
_HOOKED = False
_NAME_MAX = 255  # bytes in one path component (Linux, macOS)
_TMP_EXTRA = len(".") + len(".") + 8 + len(".tmp")  # ".NAME.XXXXXXXX.tmp" around the name


def _audit(event: str, args: tuple) -> None:
    """Record the paths opened for reading while a read-set is active. Never raises."""
    if event != "open" or not _ACTIVE:
        return
    try:
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        if mode is not None:
            if "r" not in mode and "+" not in mode:
                return  # write-only: our own outputs and temporaries
        elif (flags & os.O_ACCMODE) == os.O_WRONLY or flags & os.O_EXCL:
            return  # write-only, or a new file (mkstemp)
        full = os.path.abspath(os.fsdecode(path))
        for run in _ACTIVE:
            run.reads.add(full)
    except Exception:  # an audit hook must not break the open it observes
        pass


@contextmanager
def tracking() -> Iterator[set[str]]:
    """Record every file opened for reading inside the block (the job's read-set)."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed: it does nothing outside tracking()
        _HOOKED = True
    run = _Run()
    _ACTIVE.append(run)
    try:
        yield run.reads
    finally:
        _ACTIVE.remove(run)


def allow_replacing(path: str | Path) -> None:
    """Take ``path`` out of the read-set: an input the user asked to replace (check's
    ``--write-baseline`` over the baseline it was compared with)."""
    ident = _identity(os.fspath(path))
    for run in _ACTIVE:
        run.reads = {p for p in run.reads if _identity(p) != ident}


def same_file(a: str | Path, b: str | Path) -> bool:
    ia = _identity(os.fspath(a))
    return ia is not None and ia == _identity(os.fspath(b))


def recheck_outputs() -> None:
    """After loading (the model's own files are known now), refuse again every output
    that ``check_output_path`` accepted: before the work, not only when writing."""
    for run in _ACTIVE:
        for out in run.outputs:
            _refuse_inputs(out)


def declare_read(*paths: str | Path | None) -> None:
    """Add paths to the active read-sets (files given by the user, files opened in C)."""
    for p in paths:
        if p is None or p == "" or p == "-":
            continue
        full = os.path.abspath(os.fsdecode(os.fspath(p)))
        for run in _ACTIVE:
            run.reads.add(full)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _refuse_inputs(target: Path, extra: list[str | None] = ()) -> None:
    """UserError if writing ``target`` would overwrite a file the run reads (or was given):
    the same (device, inode) after following symlinks, so a hard link or an alias counts."""
    try:
        st = os.stat(target)
    except (OSError, ValueError):
        return  # a new path: it replaces nothing
    if not stat.S_ISREG(st.st_mode):
        return  # /dev/null, a FIFO, a terminal: writing there overwrites no file
    ident = (st.st_dev, st.st_ino)
    candidates = {os.fsdecode(os.fspath(p)) for p in extra if p not in (None, "", "-")}
    for run in _ACTIVE:
        candidates |= run.reads
    if any(_identity(c) == ident for c in candidates):
        raise UserError("refusing to overwrite an input file with the output", target)


# -- checks before the work ----------------------------------------------------------


def _direct(target: Path) -> bool:
    """Write ``target`` in place: ``-``, an existing device, FIFO or socket, or an
    existing path under /dev or /proc (``/dev/stdout``, ``/dev/fd/N``: symlinks to
    whatever the shell opened, which a rename would replace)."""
    if str(target) == "-":
        return True
    try:
        st = os.stat(target)
    except OSError:
        return False  # a new file
    if os.path.abspath(target).startswith(("/dev/", "/proc/")):
        return True
    return not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)


def os_error(exc: OSError, path) -> UserError:
    why = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the folder is on a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENAMETOOLONG: "file name too long",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "is a directory; give a file name",
        errno.ENOENT: "no such folder",
    }.get(exc.errno, exc.strerror or str(exc))
    return UserError(f"cannot write: {why}", path)


def _tmp_prefix(name: str) -> str:
    """``.NAME.`` shortened so that the temporary's name fits in one path component
    (a legal 250-byte name plus mkstemp's ``.XXXXXXXX.tmp`` would not)."""
    return "." + os.fsdecode(os.fsencode(name)[: _NAME_MAX - _TMP_EXTRA]) + "."


def _real_target(target: Path) -> Path:
    """The file a write to ``target`` must replace: a symlink's final target."""
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def _nearest_existing(folder: Path) -> Path:
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_output_path(output: str | Path, protected: list[str | None] = ()) -> Path:
    """Before the work: refuse an output that is an input, a folder, under a file, in a
    missing or unwritable folder, or whose temporary name would not fit. The given
    inputs join the read-set, so the check at write time covers them too."""
    out = Path(output)
    if str(output) == "-":
        return out
    declare_read(*protected)
    _refuse_inputs(out, list(protected))
    for run in _ACTIVE:
        run.outputs.append(out)
    if out.is_dir():
        raise UserError("is a directory; give a file name for the output", output)
    if _direct(out):
        return out
    real = _real_target(out)
    parent = real.parent
    if not parent.is_dir():
        nearest = _nearest_existing(parent)
        if nearest.exists() and not nearest.is_dir():
            raise UserError(f"cannot write: {nearest} is a file, not a folder", output)
        raise UserError(f"folder {parent} does not exist", output)
    try:  # create and remove the temporary: read-only, permission, name length, full inode table
        with signals_held():
            fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(real.name), suffix=".tmp", dir=parent)
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise os_error(exc, output) from None
    if len(os.fsencode(real.name)) > _NAME_MAX:
        raise UserError("cannot write: file name too long", output)
    return out


def check_output_folder(folder: str | Path) -> Path:
    """Before the work: ``folder`` (e.g. ``--plots``) is a folder, or can be made as one."""
    path = Path(folder)
    if path.exists():
        if not path.is_dir():
            raise UserError("not a folder", folder)
        probe = path
    else:
        probe = _nearest_existing(path.parent)
        if not probe.is_dir():
            raise UserError(f"cannot make the folder: {probe} is a file, not a folder", folder)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write: {probe} is not writable", folder)
    try:
        with signals_held():
            fd, tmp = tempfile.mkstemp(prefix=".lstm-doctor.", suffix=".tmp", dir=probe)
            os.close(fd)
            os.unlink(tmp)
    except OSError as exc:
        raise os_error(exc, folder) from None
    return path


# -- writing -------------------------------------------------------------------------


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for a few system calls (create a temporary and note its
    name; rename a set of files), so an interrupt cannot fall between them."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    # Blocking the signals in this thread is not enough: another thread (BLAS) can take
    # the signal and Python would then run the handler here anyway. So the handlers only
    # note a signal for the duration, and it is raised again once the calls are done.
    received: list[int] = []
    handlers = {s: signal.signal(s, lambda sig, _frame: received.append(sig)) for s in (signal.SIGINT, signal.SIGTERM)}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for sig in received[:1]:
            signal.raise_signal(sig)


def _give_mode(tmp: Path, target: Path) -> None:
    """mkstemp makes 0600 files: give the temporary the mode of the file it replaces,
    or for a new file the mode an ordinary ``open`` would give (0666 minus the umask)."""
    try:
        mode = target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        os.chmod(tmp, mode)
    except OSError:
        pass


_UNITS: list[list[tuple[Path, Path]]] = []  # deferred renames of the open one_unit() blocks


@contextmanager
def one_unit() -> Iterator[None]:
    """Every ``atomic_path`` inside the block is renamed into place only when the
    whole block completes (the report and its plots), or removed if it does not."""
    pending: list[tuple[Path, Path]] = []
    _UNITS.append(pending)
    try:
        yield
    except BaseException:
        _UNITS.remove(pending)
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    _UNITS.remove(pending)
    with signals_held():  # all the renames, or (an error) none of the rest
        try:
            for tmp, target in pending:
                _replace(tmp, target)
        except BaseException:
            for tmp, _ in pending:
                tmp.unlink(missing_ok=True)
            raise


def _replace(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(exc, target) from None


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (a regular file or a new path; a symlink
    is followed); rename it over the target on success. Refuses a file the run reads."""
    given = Path(target)
    _refuse_inputs(given)
    if _direct(given):
        raise UserError("cannot write this output atomically: not a regular file", target)
    real = _real_target(given)
    tmp_path = None
    try:
        with signals_held():  # a Ctrl-C lands after tmp_path is known, so the temporary is removed
            try:
                fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(real.name), suffix=".tmp", dir=real.parent)
            except OSError as exc:
                raise os_error(exc, target) from None
            tmp_path = Path(tmp)
            os.close(fd)
        _give_mode(tmp_path, real)
        try:
            yield tmp_path
        except OSError as exc:
            raise os_error(exc, target) from None
        if _UNITS:
            _UNITS[-1].append((tmp_path, real))
            return
        with signals_held():
            _replace(tmp_path, real)
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


def printable(text: str) -> str:
    """``text`` with any undecodable file-name bytes (lone surrogates) shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
# and the line breaks, for formats where every value stays on its line
_CONTROLS_AND_BREAKS = {**_CONTROLS, 0x0A: "\\x0a", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def escape_controls(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters (C0 but tab and newline, DEL, C1: ESC and its
    kin, which steer a terminal and are not XML) and undecodable file-name bytes shown
    as ``\\xNN``, so that a name from a model file prints as text. With ``newlines``,
    line breaks too (LF, U+2028, U+2029): a name with one cannot end a Markdown table
    row or a GitHub annotation early (no report string holds a line break of its own)."""
    return printable(text).translate(_CONTROLS_AND_BREAKS if newlines else _CONTROLS)


def escape_controls_in(obj, *, newlines: bool = False):
    """A copy of a JSON-like document with every string (keys too) ``escape_controls``-ed."""
    if isinstance(obj, str):
        return escape_controls(obj, newlines=newlines)
    if isinstance(obj, dict):
        return {escape_controls_in(k, newlines=newlines): escape_controls_in(v, newlines=newlines)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(escape_controls_in(v, newlines=newlines) for v in obj)
    return obj


def _encode(data: str | bytes) -> bytes:
    return printable(data).encode("utf-8") if isinstance(data, str) else data


def write_direct(target: str | Path, data: str | bytes) -> None:
    """Write to a device, FIFO or ``-`` in place (no temporary, no rename)."""
    if str(target) == "-":
        _to_stdout(data)
        return
    raw = _encode(data)
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        if stat.S_ISREG(os.stat(target).st_mode):
            flags |= os.O_APPEND  # /dev/stdout to a file the shell opened (`>` or `>>`): after what it holds
        fd = os.open(target, flags)
    except OSError as exc:
        raise os_error(exc, target) from None
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise os_error(exc, target) from None
    finally:
        os.close(fd)


@contextmanager
def output_file(target: str | Path) -> Iterator:
    """A binary file object for ``target``: a temporary renamed into place for a regular
    file or a new path, the target itself for a device, a FIFO or ``-``."""
    given = Path(target)
    _refuse_inputs(given)
    if str(target) == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if _direct(given):
        try:
            fh = open(given, "ab" if stat.S_ISREG(os.stat(given).st_mode) else "wb")
        except OSError as exc:
            raise os_error(exc, target) from None
        try:
            with fh:
                yield fh
        except OSError as exc:
            raise os_error(exc, target) from None
        return
    with atomic_path(given) as tmp:
        with open(tmp, "wb") as fh:
            yield fh


def write_output(target: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``target``: atomically over a regular file or a new path,
    directly to a device, FIFO or ``-``. Refuses a file the run reads."""
    given = Path(target)
    _refuse_inputs(given)
    if _direct(given):
        write_direct(target, data)
        return
    with atomic_path(given) as tmp:
        if isinstance(data, str):
            tmp.write_text(printable(data), encoding="utf-8")
        else:
            tmp.write_bytes(data)


def write_atomic(target: str | Path, data: str | bytes) -> None:
    """The name the report writers use: ``write_output``."""
    write_output(target, data)


def _to_stdout(data: str | bytes) -> None:
    try:
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(printable(data))
        sys.stdout.flush()
    except BrokenPipeError:
        # `lstm-doctor ... | head`: the reader left; not an error of ours
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass


def emit(data: str | bytes, output: str | None) -> None:
    """Write the report to ``output`` (see ``write_output``), or to stdout."""
    if output:
        write_output(output, data)
    else:
        _to_stdout(data)
