"""Writing what the user asked for, without ever losing what they had.

Files are written to a temporary file in the destination folder and renamed
over the target only when complete (``os.replace`` is atomic on POSIX), so an
interrupted run leaves the old file intact and no partial file behind. An
output path that is one of the inputs is refused.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lstm_doctor.errors import UserError


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(output: str, protected: list[str | None]) -> Path:
    """Refuse an output that would overwrite an input, or sits in a missing folder."""
    out = Path(output)
    for item in protected:
        if item is None:
            continue
        p = Path(item)
        candidates = [p] + (list(p.iterdir()) if p.is_dir() else [])
        for c in candidates:
            if _same_file(out, c) or out.resolve() == c.resolve():
                raise UserError("refusing to overwrite an input file with the output", output)
    if out.is_dir():
        raise UserError("is a directory; give a file name for the output", output)
    if not out.parent.exists():
        raise UserError(f"folder {out.parent} does not exist", output)
    return out


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


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _give_mode(tmp_path, target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def printable(text: str) -> str:
    """``text`` with any undecodable file-name bytes (lone surrogates) shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_atomic(target: str | Path, data: str | bytes) -> None:
    with atomic_path(target) as tmp:
        if isinstance(data, str):
            tmp.write_text(printable(data), encoding="utf-8")
        else:
            tmp.write_bytes(data)


def emit(data: str | bytes, output: str | None) -> None:
    """Write the report to ``output`` atomically, or to stdout."""
    if output:
        write_atomic(output, data)
    elif isinstance(data, bytes):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        sys.stdout.write(printable(data))
        sys.stdout.flush()
