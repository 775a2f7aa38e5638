"""The load stage: model files of every supported format → ``LSTMModel``.

Each importer is one module with a ``load(path, options) -> LSTMModel`` and a
``sniff(path) -> bool`` that recognises its files from extension and content.
``load_model`` picks the importer (or takes ``model_format``); importers raise
``UserError`` for a bad file, and ``load_model`` adds the file's name. Any other
exception is a bug and surfaces as one. Nothing downstream knows
which format the weights came from.
"""

from __future__ import annotations

import importlib
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lstm_doctor.capture import budget
from lstm_doctor.choices import ARCHITECTURE_FLAGS, MODEL_FORMATS
from lstm_doctor.errors import ConfigError, ModelError, UserError
from lstm_doctor.model import LSTMModel
from lstm_doctor.output import declare_read, recheck_outputs

# Detection order matters: the most specific content checks first.



@dataclass(frozen=True)
class LoadOptions:
    """What a user can tell an importer beyond the path."""

    preset: str | None = None  # e.g. "tweet2vec": the equations that code computes
    layer_prefix: str | None = None  # torch: which submodule's LSTM
    trust_pickle: bool = False  # allow arbitrary pickles (executes code!)
    layer_name: str | None = None  # keras/onnx: which LSTM layer or node
    max_memory: str | int | None = None  # --max-memory: declared sizes are checked against it before reading
    # Keras settings a file may leave open (--gate-activation, --activation, --go-backwards):
    # None means "the file's, else the default"
    gate_activation: str | None = None
    activation: str | None = None
    go_backwards: bool | None = None

    def architecture_flags(self) -> list[str]:
        """The command-line names of the Keras settings given."""
        return [flag for name, flag in ARCHITECTURE_FLAGS.items() if getattr(self, name) is not None]


def _importer(fmt: str):
    return importlib.import_module(f".{fmt}", __name__)


def available_formats() -> list[str]:
    """Formats whose importer module exists in this installation."""
    out = []
    for fmt in MODEL_FORMATS:
        try:
            _importer(fmt)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"load.{fmt}"):
                continue
            raise
        out.append(fmt)
    return out


def check_readable_file(path: Path, *, allow_dir: bool = False) -> Path:
    """Fail with a one-line ``UserError`` unless ``path`` is a readable regular file (or folder).

    Anything else is refused before it is opened: opening a FIFO blocks until a
    writer appears (forever), and a device can stream without end.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except OSError as exc:  # symlink loop, name too long, permission ...
        raise UserError(f"cannot access: {exc.strerror or exc}", path) from None
    if stat.S_ISDIR(st.st_mode):
        if not allow_dir:
            raise UserError("is a directory, expected a file", path)
        return path
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise UserError(f"is {kind}, not a regular file (refused: reading it could block or never end)", path)
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UserError(f"cannot read: {exc.strerror or exc}", path) from None
    return path


def detect_format(path: Path) -> str:
    for fmt in available_formats():
        try:
            if _importer(fmt).sniff(path):
                return fmt
        except UserError as exc:  # e.g. a declared size over --max-memory: too big whatever the format
            if exc.path is None:
                raise type(exc)(exc.problem, path) from None
            raise
        except (OSError, ValueError, RuntimeError, OverflowError, SyntaxError, zipfile.BadZipFile):
            # a sniffer choking on a damaged file (h5py raises RuntimeError): not this format
            continue
    raise ModelError(
        "cannot tell the model format from the name or content; "
        f"pass --model-format ({', '.join(available_formats())})",
        path,
    )


def load_model(
    path: str | Path,
    model_format: str | None = None,
    options: LoadOptions | None = None,
) -> LSTMModel:
    """Load any supported model file (or native directory) as an ``LSTMModel``."""
    path = check_readable_file(Path(path), allow_dir=True)
    options = options or LoadOptions()
    with budget.reading(options.max_memory):
        return _load(path, model_format, options)


def _load(path: Path, model_format: str | None, options: LoadOptions) -> LSTMModel:
    fmt = model_format or detect_format(path)
    if fmt not in available_formats():
        raise UserError(
            f"unknown model format {fmt!r}; choose one of {', '.join(available_formats())}"
        )
    flags = options.architecture_flags()
    if flags and fmt != "keras":
        raise ConfigError(
            f"{'/'.join(flags)} states a Keras layer's settings; a {fmt} model states its own, so drop "
            + ("it" if len(flags) == 1 else "them"),
            path,
        )
    declare_read(path)  # h5py and safetensors open it in C, unseen by the read-set's audit hook
    try:
        model = _importer(fmt).load(path, options)
    except UserError as exc:
        if exc.path is None:
            raise type(exc)(exc.problem, path) from None
        raise
    except MemoryError:
        raise ModelError("not enough memory to load this file", path) from None
    except (OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        # The file itself cannot be read (an I/O error, a truncated file or archive, bytes
        # that should be text: zipfile decodes a damaged member header's name).
        # Anything else that escapes an importer is a bug, reported as one (exit 3).
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ModelError(f"cannot read as {fmt}: {detail}", path) from None
    declare_read(*model.source_files)
    recheck_outputs()  # an output over the model's own files is refused now, before the work
    return model
