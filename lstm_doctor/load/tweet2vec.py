"""Tweet2Vec encoder files: a joblib-pickled list of float32 arrays (see docs/case-study.md).

The file is named ``*.npy`` but is a pickle (``joblib.dump`` of a Python list),
so ``np.load`` fails on it. No names are stored: the order carries the meaning.

- 17 arrays: an encoder LSTM on its own, in this order::

      h_beg (1, H), cell_beg (1, H), W_pci, W_pcf, W_pco (H,),
      then for each gate input, forget, cell, output:
      W_i2<gate>_gate (D, H), U_h2<gate>_gate (H, H), b<gate>_gate (H,)

- 25 arrays (``encoding_<model>_<epoch>.npy``): the four conv layers' ``W, b``
  first, W (filters, in_channels, width) = (256, 75, 7), (256, 256, 7),
  (256, 256, 3), (256, 256, 3) and b (256,), then the same 17 LSTM arrays.
  ``conv_stack`` returns the conv arrays (the text front end uses them).

Beside it, ``<stem>_global.npy`` (when present) is a joblib tuple of
hyper-parameters whose last element is a pickled Theano shared variable; it is
read without Theano (``safepickle``) and recorded in ``LSTMModel.notes``.

Equations: the code computes ``h = o·σ(c)`` (defect 2 in docs/case-study.md), with
peepholes. ``--preset tweet2vec`` (``LoadOptions.preset``) declares exactly
that; without it the standard ``h = o·tanh(c)`` is assumed and a note says so.
Peepholes are part of the weights either way. ``h0 = h_beg``, ``c0 = cell_beg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstm_doctor.capture.budget import BudgetError, reading
from lstm_doctor.errors import ConfigError, ModelError
from lstm_doctor.load import LoadOptions, safepickle
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction

GATE_WORDS = ("input", "forget", "cell", "output")
LSTM_NAMES = ("h_beg", "cell_beg", "W_pci", "W_pcf", "W_pco") + tuple(
    name
    for gate in GATE_WORDS
    for name in (
        f"W_i2{gate}_gate",
        # The original code's spelling, typo included.
        "U_h2ouput_gate" if gate == "output" else f"U_h2{gate}_gate",
        f"b{gate}_gate",
    )
)
N_LSTM = len(LSTM_NAMES)  # 17
N_CONV = 8  # four conv layers, W and b each
CONV_NAMES = tuple(f"conv{k}.{p}" for k in range(1, 5) for p in ("W", "b"))
DOCUMENTED_CONV_SHAPES = ((256, 75, 7), (256, 256, 7), (256, 256, 3), (256, 256, 3))

PRESETS = {"tweet2vec": Activations(gate="sigmoid", candidate="tanh", cell_output="sigmoid")}
GLOBAL_NAMES = (
    "max_chars",
    "num_filters",
    "encoder_size",
    "decoder_size",
    "vocab_size",
    "grad_clip",
    "norm_constraint",
    "learning_rate",
)


def preset_activations(preset: str | None, default: Activations) -> Activations:
    """The activations a ``--preset`` declares (``default`` without one)."""
    if preset is None:
        return default
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def global_path(path: Path) -> Path:
    """``encoding_x_3.npy`` → ``encoding_x_3_global.npy``."""
    return path.with_name(f"{path.stem}_global{path.suffix}")


def _array_list(obj) -> list[np.ndarray] | None:
    if not isinstance(obj, (list, tuple)):
        return None
    arrays = [safepickle.as_array(a) for a in obj]
    if any(a is None for a in arrays):
        return None
    return arrays


def sniff(path: Path) -> bool:
    if path.suffix != ".npy" or not path.is_file():
        return False
    if not safepickle.looks_like_pickle(path):
        return False
    if path.stem.endswith("_global"):
        return True  # load() explains which file to load instead
    try:
        arrays = _array_list(safepickle.load_file(path))
    except safepickle.UnsafePickleError:
        return True  # let load() report the refusal and --trust-pickle
    except BudgetError:
        raise  # too big whatever its format: say so, not "unknown format"
    except ModelError:
        return False
    if arrays is None or len(arrays) not in (N_LSTM, N_LSTM + N_CONV):
        return False
    # h_beg and cell_beg open the LSTM part: two equal (1, H) or (H,) arrays.
    # (Lasagne's parameter list opens with W_in (D, H), W_hid (H, H) instead.)
    h_beg, cell_beg = arrays[-N_LSTM], arrays[-N_LSTM + 1]
    return (
        h_beg.shape == cell_beg.shape
        and (h_beg.ndim == 1 or (h_beg.ndim == 2 and h_beg.shape[0] == 1))
    )


def read_arrays(path: Path, trust: bool = False) -> list[np.ndarray]:
    """The file's list of arrays, checked to be 17 or 25 numeric arrays."""
    obj = safepickle.load_file(path, trust=trust)
    if not isinstance(obj, (list, tuple)):
        raise ModelError(
            f"expected a list of {N_LSTM} or {N_LSTM + N_CONV} arrays, found a "
            f"{type(obj).__name__}"
        )
    arrays = []
    for k, item in enumerate(obj):
        arr = safepickle.as_array(item)
        if arr is None:
            raise ModelError(f"item {k} of the list is a {type(item).__name__}, not an array")
        if arr.dtype.kind not in "fiu":
            raise ModelError(f"array {k} has dtype {arr.dtype}, expected floats")
        arrays.append(arr)
    if len(arrays) not in (N_LSTM, N_LSTM + N_CONV):
        raise ModelError(
            f"found {len(arrays)} arrays; a Tweet2Vec file holds {N_LSTM} (encoder LSTM) "
            f"or {N_LSTM + N_CONV} (4 conv layers, then the LSTM)"
        )
    return arrays


def split_lstm(arrays: list[np.ndarray], offset: int = 0) -> dict[str, np.ndarray]:
    """Name and check the 17 LSTM arrays (``offset`` = index of ``h_beg`` in the file)."""
    named = dict(zip(LSTM_NAMES, arrays))
    U_i, W_i = named["U_h2input_gate"], named["W_i2input_gate"]
    if U_i.ndim != 2 or U_i.shape[0] != U_i.shape[1]:
        raise ModelError(
            f"array {offset + LSTM_NAMES.index('U_h2input_gate')} (U_h2input_gate) has "
            f"shape {U_i.shape}, expected square (H, H)"
        )
    H = U_i.shape[0]
    if W_i.ndim != 2:
        raise ModelError(
            f"array {offset + LSTM_NAMES.index('W_i2input_gate')} (W_i2input_gate) has "
            f"shape {W_i.shape}, expected (D, {H})"
        )
    D = W_i.shape[0]
    expected = {"h_beg": [(1, H), (H,)], "cell_beg": [(1, H), (H,)]}
    for name in LSTM_NAMES:
        if name.startswith("W_pc") or name.startswith("b"):
            expected[name] = [(H,)]
        elif name.startswith("W_i2"):
            expected[name] = [(D, H)]
        elif name.startswith("U_h2"):
            expected[name] = [(H, H)]
    for k, name in enumerate(LSTM_NAMES):
        if named[name].shape not in expected[name]:
            want = " or ".join(str(s) for s in expected[name])
            raise ModelError(
                f"array {offset + k} ({name}) has shape {named[name].shape}, expected {want} "
                f"(H={H} from U_h2input_gate)"
            )
    return named


def check_conv(arrays: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The conv stack's (W, b) pairs, W (filters, in_channels, width), checked."""
    pairs = []
    channels = None
    for k in range(0, N_CONV, 2):
        W, b = arrays[k], arrays[k + 1]
        layer = k // 2 + 1
        if W.ndim != 3:
            raise ModelError(
                f"array {k} (conv{layer}.W) has shape {W.shape}, expected "
                f"(filters, in_channels, width) such as {DOCUMENTED_CONV_SHAPES[k // 2]}"
            )
        if b.shape != (W.shape[0],):
            raise ModelError(
                f"array {k + 1} (conv{layer}.b) has shape {b.shape}, expected ({W.shape[0]},)"
            )
        if channels is not None and W.shape[1] != channels:
            raise ModelError(
                f"array {k} (conv{layer}.W) has shape {W.shape}: it reads {W.shape[1]} "
                f"channels but conv{layer - 1} writes {channels}"
            )
        channels = W.shape[0]
        pairs.append((W, b))
    return pairs


def conv_stack(path: str | Path, options: LoadOptions | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The four conv layers' (W, b) of a 25-array file, W (filters, in_channels, width)."""
    path = Path(path)
    options = options or LoadOptions()
    with reading(options.max_memory):  # read again, under the model's budget
        arrays = read_arrays(path, trust=options.trust_pickle)
    if len(arrays) != N_LSTM + N_CONV:
        raise ModelError(
            f"this file holds {len(arrays)} arrays (an LSTM alone); the conv stack is in "
            f"the {N_LSTM + N_CONV}-array encoding_<model>_<epoch>.npy",
            path,
        )
    try:
        return check_conv(arrays[:N_CONV])
    except ModelError as exc:
        raise ModelError(exc.problem, path) from None


def read_global(path: Path, H: int, trust: bool = False) -> tuple[list[str], list[str]]:
    """Notes from ``<stem>_global.npy``: (notes, files read). Never fails the load."""
    gpath = global_path(path)
    if not gpath.is_file():
        return [], []
    try:
        obj = safepickle.load_file(gpath, trust=trust)
    except ModelError as exc:
        return [f"ignored {gpath.name}: {exc.problem}"], []
    if not isinstance(obj, (list, tuple)):
        return [f"ignored {gpath.name}: a {type(obj).__name__}, not a tuple"], []
    values = []
    for item in obj:
        arr = safepickle.as_array(item)
        if isinstance(item, safepickle.SharedVariableStandIn) and arr is not None:
            values.append((arr.item() if arr.size == 1 else arr.shape, "a Theano shared variable"))
        elif arr is not None:
            values.append((arr.item() if arr.size == 1 else arr.shape, None))
        else:
            values.append((item, None))
    names = GLOBAL_NAMES if len(values) == len(GLOBAL_NAMES) else [
        f"item{k}" for k in range(len(values))
    ]
    parts = []
    for name, (value, how) in zip(names, values):
        shown = f"{value:.6g}" if isinstance(value, float) else repr(value)
        parts.append(f"{name}={shown}" + (f" ({how}, read without Theano)" if how else ""))
    notes = [f"hyper-parameters from {gpath.name}: " + ", ".join(parts)]
    if len(values) != len(GLOBAL_NAMES):
        notes.append(
            f"{gpath.name} holds {len(values)} items, not the documented {len(GLOBAL_NAMES)}"
        )
    else:
        encoder_size = values[2][0]
        if isinstance(encoder_size, (int, np.integer)) and int(encoder_size) != H:
            notes.append(f"{gpath.name} says encoder_size={encoder_size} but the LSTM has H={H}")
    return notes, [str(gpath)]


def load(path: Path, options) -> LSTMModel:
    activations = preset_activations(options.preset, Activations())
    if path.stem.endswith("_global"):
        weights = path.with_name(path.stem[: -len("_global")] + path.suffix)
        raise ModelError(
            f"this is a Tweet2Vec hyper-parameter file; load the weights, {weights.name}, "
            "which reads it too"
        )
    arrays = read_arrays(path, trust=options.trust_pickle)
    offset = len(arrays) - N_LSTM
    notes = []
    if offset:
        check_conv(arrays[:offset])
        shapes = ", ".join(str(arrays[k].shape) for k in range(0, N_CONV, 2))
        notes.append(
            f"the file also holds a 4-layer conv stack (W {shapes}); its output "
            "(batch, channels, positions) is what the original code feeds the LSTM, "
            "with axis 1 as time"
        )
    named = split_lstm(arrays[offset:], offset)
    params = make_direction(
        W=np.concatenate([named[f"W_i2{g}_gate"] for g in GATE_WORDS], axis=1),
        U=np.concatenate(
            [named["U_h2ouput_gate" if g == "output" else f"U_h2{g}_gate"] for g in GATE_WORDS],
            axis=1,
        ),
        b=np.concatenate([named[f"b{g}_gate"] for g in GATE_WORDS]),
        peephole=np.stack([named["W_pci"], named["W_pcf"], named["W_pco"]]),
        h0=named["h_beg"],
        c0=named["cell_beg"],
        where="tweet2vec LSTM",
    )
    if options.preset == "tweet2vec":
        notes.append(
            "preset tweet2vec: the original code's equations, with peepholes and "
            "h = o·σ(c) (cell output sigmoid)"
        )
    else:
        notes.append(
            "standard equations assumed (h = o·tanh(c)); the original Tweet2Vec code "
            "computes h = o·σ(c): pass --preset tweet2vec to reproduce it"
        )
    global_notes, global_files = read_global(path, params.H, trust=options.trust_pickle)
    return LSTMModel(
        layers=(Layer(params, None, activations),),
        name=path.stem,
        source_format="tweet2vec",
        source_files=(str(path), *global_files),
        stored_gate_order="ifgo",
        notes=tuple(notes + global_notes),
    )
