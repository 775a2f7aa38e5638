"""Input sequences: files, layouts, lengths and synthetic probes.

Layouts (the axes of the array as stored):

- ``btd``: (batch, time, features), as PyTorch ``batch_first`` and Keras.
- ``tbd``: (time, batch, features), as Theano scan and PyTorch's default.
- ``bct``: (batch, channels, length), a channels-first conv output: length is
  time and channels are features.

Internally everything is time-major (T, B, D). ``to_time_major`` is the one
place where a layout is converted. Files are memory-mapped and read one chunk
of sequences at a time, so memory does not grow with the number of sequences.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from lstm_doctor.capture import budget
from lstm_doctor.choices import LAYOUTS
from lstm_doctor.errors import InputError, UserError
from lstm_doctor.load import check_readable_file
from lstm_doctor.load.npyfile import load_npy, load_npz, npz_names

PROBES = ("normal", "uniform", "zeros")


def to_time_major(block: np.ndarray, layout: str) -> np.ndarray:
    """Convert a block of sequences in ``layout`` to (T, B, D).

    For ``btd`` and ``bct`` the block is a slice along batch (axis 0); for
    ``tbd`` along axis 1. This is the only layout conversion in lstm_doctor.
    """
    if layout == "btd":
        return block.transpose(1, 0, 2)
    if layout == "tbd":
        return block
    if layout == "bct":
        return block.transpose(2, 0, 1)
    raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def _batch_axis(layout: str) -> int:
    return 1 if layout == "tbd" else 0


@dataclass
class InputSource:
    """A set of input sequences, read lazily in chunks of sequences.

    ``array`` is in its stored ``layout`` (often a read-only memmap).
    ``lengths`` (B,) are valid lengths, or None when every step is valid.
    ``probe`` names the synthetic distribution when no file was given.
    ``notes`` records conversions a user should know of (e.g. int → float).
    """

    array: np.ndarray
    layout: str
    path: str | None = None
    lengths: np.ndarray | None = None
    probe: str | None = None
    notes: tuple[str, ...] = ()
    # Keras semantics of masked steps: they leave h and c unchanged, so a
    # sequence is equivalent to its valid steps moved to the front, in order
    # (``compact``). ``padding="pre"`` with lengths: the valid steps are the last
    # ``lengths``; ``mask_value``: a step is valid unless all its features equal it.
    padding: str = "post"
    mask_value: float | None = None
    layout_given: bool = False  # --layout was given; else the model's declared layout (or btd)

    def __post_init__(self):
        if self.array.ndim != 3:
            raise InputError(
                f"inputs have shape {self.array.shape} (rank {self.array.ndim}); "
                f"expected a rank-3 array in layout {self.layout}",
                self.path,
            )
        if self.n_sequences == 0 or self.T == 0 or self.D == 0:
            raise InputError(
                f"inputs have shape {self.array.shape}: no sequences, steps or features "
                f"(B={self.n_sequences}, T={self.T}, D={self.D} in layout {self.layout})",
                self.path,
            )

    @property
    def shape_tbd(self) -> tuple[int, int, int]:
        s = self.array.shape
        return {"btd": (s[1], s[0], s[2]), "tbd": s, "bct": (s[2], s[0], s[1])}[self.layout]

    @property
    def T(self) -> int:
        return self.shape_tbd[0]

    @property
    def n_sequences(self) -> int:
        return self.shape_tbd[1]

    @property
    def D(self) -> int:
        return self.shape_tbd[2]

    @property
    def label(self) -> str:
        return self.path or f"probe:{self.probe}"

    def read(self, start: int, stop: int, dtype) -> np.ndarray:
        """Sequences [start, stop) as a (T, b, D) array of ``dtype`` (valid steps first
        when the inputs are pre-padded or masked)."""
        x = self._block(start, stop)
        valid = self._valid(x, start, stop)
        if valid is not None:
            x = compact(x, valid)
        return np.ascontiguousarray(x, dtype=dtype)

    def valid_steps(self, start: int, stop: int) -> np.ndarray | None:
        """(T, b) bool of sequences [start, stop): True at the steps of the user's time axis
        that ``read`` keeps (moved to the front, in order); None when ``read`` moves nothing
        (no mask, post-padding or no lengths)."""
        return self._valid(self._block(start, stop), start, stop)

    def _block(self, start: int, stop: int) -> np.ndarray:
        block = self.array[start:stop] if _batch_axis(self.layout) == 0 else self.array[:, start:stop]
        return to_time_major(np.asarray(block), self.layout)

    def _valid(self, x: np.ndarray, start: int, stop: int) -> np.ndarray | None:
        if self.mask_value is not None:
            return step_mask(x, self.mask_value)
        if self.padding == "pre" and self.lengths is not None:
            return np.arange(x.shape[0])[:, None] >= (x.shape[0] - self.lengths[start:stop])[None, :]
        return None

    def chunks(
        self, size: int, dtype
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yield (start, x (T, b, D), lengths (b,) or None) over all sequences."""
        for start in range(0, self.n_sequences, size):
            stop = min(start + size, self.n_sequences)
            lengths = None if self.lengths is None else self.lengths[start:stop]
            yield start, self.read(start, stop, dtype), lengths


def step_mask(x_tbd: np.ndarray, mask_value: float) -> np.ndarray:
    """(T, B) True where a step is valid: Keras' ``Masking`` keeps a step unless
    every feature equals ``mask_value``."""
    return np.any(x_tbd != mask_value, axis=-1)


def compact(x_tbd: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each sequence's valid steps moved to the front in order, zeros after them.

    Keras skips a masked step by carrying h and c over it, so the states at the
    valid steps are those of an LSTM run over the valid steps alone: the
    compacted sequence with lengths = the number of valid steps.
    """
    order = np.argsort(~valid, axis=0, kind="stable")  # (T, B): valid steps first
    out = np.take_along_axis(np.asarray(x_tbd), order[..., None], axis=0)
    keep = np.take_along_axis(valid, order, axis=0)
    return np.where(keep[..., None], out, 0).astype(out.dtype, copy=False)


def expand(values_tbd: np.ndarray, valid: np.ndarray, carry: str = "none", backward: bool = False) -> np.ndarray:
    """The inverse of ``compact``: values of the compacted steps put back at the user's steps.

    ``values_tbd`` (T, B, ...) holds, at compacted step j of sequence b, the value of its j-th
    valid step (``valid`` (T, B), in time order). A masked step gets, with ``carry="state"``,
    the state Keras carries over it: that of the last valid step before it (``backward``: the
    first valid step after it, the one the backward pass ran just before), zeros where there is
    none; with ``carry="none"``, NaN: the cell did not run there.
    """
    T, B = valid.shape
    rank = np.cumsum(valid, axis=0) - 1  # (T, B): index of the last valid step at or before t
    n = valid.sum(axis=0)
    if backward:
        rank = np.where(valid, rank, rank + 1)  # the first valid step at or after t
        has = rank < n[None, :]
    else:
        has = rank >= 0
    index = np.clip(rank, 0, T - 1)
    out = values_tbd[index, np.arange(B)[None, :]]
    keep = valid if carry == "none" else has
    fill = np.nan if carry == "none" else 0.0
    shape = keep.shape + (1,) * (out.ndim - 2)
    return np.where(keep.reshape(shape), out, fill).astype(np.result_type(out.dtype, np.float32), copy=False)


def _mask_lengths(source: "InputSource", chunk: int = 1024) -> np.ndarray:
    """Valid steps per sequence under ``source.mask_value``, streamed over chunks."""
    counts = []
    for start in range(0, source.n_sequences, chunk):
        stop = min(start + chunk, source.n_sequences)
        block = source.array[start:stop] if _batch_axis(source.layout) == 0 else source.array[:, start:stop]
        counts.append(step_mask(to_time_major(np.asarray(block), source.layout), source.mask_value).sum(axis=0))
    return np.concatenate(counts).astype(np.int64)


def _load_array(path: Path, what: str) -> np.ndarray:
    """An .npy (memory-mapped, its header checked against the file's size) or one array of an .npz.

    Every declared size is checked before reading (``lstm_doctor.load.npyfile``):
    an .npz member is inflated only when its size fits the budget.
    """
    check_readable_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            keys = npz_names(path)
            if not keys:
                raise InputError(f"the .npz holds no array (expected the {what})", path)
            key = next((k for k in ("x", "inputs", "X", what) if k in keys), None)
            if key is None:
                if len(keys) != 1:
                    shown = ", ".join(k[:40] for k in keys[:6])
                    raise InputError(f"the .npz holds {len(keys)} arrays ({shown}); name the inputs 'x'", path)
                key = keys[0]
            return load_npz(path, [key])[key]
        return load_npy(path, mmap=True)
    except UserError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"not a readable {what} array: {exc.problem}", path) from None
    except (OSError, EOFError, OverflowError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"not a readable {what} array: {type(exc).__name__}: {exc}", path) from None


def _check_numeric(array: np.ndarray, path) -> tuple[np.ndarray, tuple[str, ...]]:
    kind = array.dtype.kind
    if kind == "f":
        return array, ()
    if kind in "iub":
        return array, (f"inputs of dtype {array.dtype} are converted to floats",)
    raise InputError(
        f"inputs have dtype {array.dtype}; expected real numbers (float or int)", path
    )


def load_inputs(
    path: str | Path, layout: str | None = None, lengths_path: str | Path | None = None, model=None,
    padding: str | None = None, mask: bool = False, *, max_memory=None,
) -> InputSource:
    """Open an input file (.npy memory-mapped, or .npz) in ``layout``.

    ``layout`` None: the model's declared layout (btd without a model), and
    ``InputSource.layout_given`` is False, so the report says it was not given.

    Without ``lengths_path``, a ``model`` whose file fixes the lengths
    (``LSTMModel.sequence_lengths``, an ONNX constant ``sequence_lens``) gives them.
    ``padding="pre"`` (Keras ``pad_sequences``' default): the lengths count the
    *last* steps. ``mask``: the lengths and valid steps are Keras' mask, every
    step whose features are all the model's ``mask_value`` (0 by default) being
    masked; masked steps may be anywhere.
    Sizes the files declare are checked against ``max_memory`` (``--max-memory``) before reading.
    """
    with budget.reading(max_memory):
        source = _load_inputs(
            path, layout or (model.input_layout if model is not None else "btd"), lengths_path, model, padding, mask
        )
    source.layout_given = layout is not None
    return source


def _load_inputs(path, layout: str, lengths_path, model, padding, mask) -> InputSource:
    if padding not in (None, "pre", "post"):
        raise InputError(f"unknown padding {padding!r}; choose pre or post")
    if mask and lengths_path is not None:
        raise InputError("--mask derives the lengths from the inputs' masked steps; drop --lengths", lengths_path)
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    path = Path(path)
    array = _load_array(path, "inputs")
    array, notes = _check_numeric(array, str(path))
    source = InputSource(array=array, layout=layout, path=str(path), notes=notes)
    if lengths_path is not None:
        source.lengths = load_lengths(Path(lengths_path), source.n_sequences, source.T)
    elif model is not None and getattr(model, "sequence_lengths", None) is not None:
        fixed = np.asarray(model.sequence_lengths, dtype=np.int64)
        if fixed.shape != (source.n_sequences,) or fixed.max() > source.T:
            raise InputError(
                f"the model file fixes sequence_lens for {fixed.size} sequences of up to {fixed.max()} steps, "
                f"but the inputs hold {source.n_sequences} of {source.T}; pass --lengths",
                path,
            )
        source.lengths = fixed
        source.notes = source.notes + ("lengths: the model file's sequence_lens (--lengths overrides them)",)
    masking = getattr(model, "masking", None)
    if mask:
        source.mask_value = float(getattr(model, "mask_value", None) or 0.0)
        lengths = _mask_lengths(source)
        empty = int((lengths == 0).sum())
        source.lengths = np.maximum(lengths, 1)
        source.notes = source.notes + (
            f"mask: steps whose features all equal {source.mask_value:g} are masked, as Keras' Masking does; "
            "each sequence's valid steps are moved to the front (Keras carries h and c over masked steps)"
            + (f"; {empty} sequences are fully masked (one zero step kept)" if empty else ""),
        )
    elif padding == "pre":
        source.padding = "pre"
        if source.lengths is None:
            raise InputError("--padding pre needs --lengths (or --mask): which steps are padding", path)
        source.notes = source.notes + ("padding pre: each sequence's last `lengths` steps are its valid steps",)
    if masking and not mask and source.lengths is None:
        source.notes = source.notes + (
            f"the model declares masking ({masking}) but no mask was given: padded steps are run as data; "
            "pass --mask (or --lengths with --padding pre|post)",
        )
    return source


def load_lengths(path: Path, n: int, T: int) -> np.ndarray:
    lengths = np.asarray(_load_array(path, "lengths"))
    if lengths.ndim != 1 or lengths.shape[0] != n:
        raise InputError(f"lengths have shape {lengths.shape}; expected ({n},)", path)
    if lengths.dtype.kind not in "iu":
        if lengths.dtype.kind == "f" and np.all(np.isfinite(lengths)) and np.all(
            lengths == np.round(lengths)
        ):
            lengths = lengths.astype(np.int64)
        else:
            raise InputError(f"lengths have dtype {lengths.dtype}; expected integers", path)
    if lengths.min() < 1 or lengths.max() > T:
        raise InputError(
            f"lengths range {lengths.min()}..{lengths.max()}; each must be in 1..{T}", path
        )
    return lengths.astype(np.int64)


def make_probe(
    kind: str, n: int, T: int, D: int, scale: float = 1.0, seed: int = 0
) -> InputSource:
    """Synthetic inputs (n, T, D) for a run without real data."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((n, T, D)) * scale
    elif kind == "uniform":
        x = rng.uniform(-scale, scale, (n, T, D))
    elif kind == "zeros":
        x = np.zeros((n, T, D))
    else:
        raise InputError(f"unknown probe {kind!r}; choose one of {', '.join(PROBES)}")
    return InputSource(array=x, layout="btd", probe=kind)


def check_against_model(source: InputSource, D: int) -> None:
    """Fail in one line when the inputs' feature size is not the model's D."""
    if source.D != D:
        hint = ""
        s = source.array.shape
        for other in LAYOUTS:
            if other != source.layout:
                alt = {"btd": s[2], "tbd": s[2], "bct": s[1]}[other]
                if alt == D:
                    hint = f" (layout {other} would give D={D}: pass --layout {other})"
                    break
        raise InputError(
            f"inputs of shape {s} in layout {source.layout} have D={source.D} features, "
            f"but the model's W expects D={D}{hint}",
            source.path,
        )
