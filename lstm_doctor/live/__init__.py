"""Live models: find the LSTMs of a framework model, record what reaches them, convert them.

``lstm_doctor.live.torch`` (``torch.nn.Module``) and ``lstm_doctor.live.keras``
(``keras.Model``) each run the user's model once on the user's batch and
return one ``LiveLSTM`` per LSTM module: the canonical ``LSTMModel`` (built by
the file importers' converters, ``lstm_doctor.load.torch`` and
``lstm_doctor.load.keras``), the input the framework handed to that module as
an ``InputSource``, and the module's own outputs, which ``parity`` compares
with the capture. Neither framework is imported here.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from lstm_doctor.capture.engines import to_time_order
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import LSTMModel

PARITY_TOLERANCE = 1e-5


@dataclass
class ArrayInputs(InputSource):
    """Inputs held in memory (a live model's recorded input, or an array given to the API).

    ``description`` is what the report names as their source (there is no file).
    """

    description: str = "array"

    @property
    def label(self) -> str:
        return self.description


@dataclass
class LiveLSTM:
    """One LSTM module of a live model, with what the framework computed.

    ``path``: the module path (``encoder.rnn``, ``model.layers[2]``).
    ``outputs``: (B, T, H_out) the top layer's h in input time order, directions
    concatenated, as the module returned it (None when it returned only the last step).
    ``final_h`` / ``final_c``: (layer, direction) → (B, H) the state after the last
    valid step of each direction, when the module returned it.
    ``valid``: (B, T) bool, the steps the module really processed (lengths or mask).
    """

    path: str
    kind: str
    model: LSTMModel
    source: InputSource
    outputs: np.ndarray | None = None
    final_h: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    final_c: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def valid(self) -> np.ndarray:
        B, T = self.source.n_sequences, self.source.T
        if self.source.lengths is None:
            return np.ones((B, T), bool)
        return np.arange(T)[None, :] < self.source.lengths[:, None]


@dataclass
class Skipped:
    """An LSTM module that was found but cannot be diagnosed, and why."""

    path: str
    kind: str
    reason: str


def parity(live: LiveLSTM, capture) -> dict:
    """max |capture − framework| over every value the module returned.

    Compares the capture's sample (which the API sizes to hold the whole batch)
    with the module's own outputs: the top layer's h at every valid step
    (``outputs``) and each direction's final h and c. Returns
    ``{"max_abs_diff": float, "values": int, "sequences": int, "tolerance": float, "ok": bool}``.
    """
    lengths = live.source.lengths
    b = None
    worst = 0.0
    count = 0

    def compare(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray | None = None):
        nonlocal worst, count
        theirs = np.asarray(theirs, np.float64)[: ours.shape[0]]
        diff = np.abs(np.asarray(ours, np.float64) - theirs)
        if mask is not None:
            diff = diff[mask[: ours.shape[0]]]
        if diff.size:
            worst = max(worst, float(np.nanmax(diff)) if np.isfinite(diff).all() else float("inf"))
        count += int(diff.size)

    model = live.model
    top = len(model.layers) - 1
    if live.outputs is not None:
        parts = []
        for direction, _ in model.layers[top].directions():
            h = capture.sample[(top, direction)]["h"]  # (T, b, H) processing order
            b = h.shape[1]
            parts.append(to_time_order(h, direction, None if lengths is None else lengths[:b]))
        ours = np.concatenate(parts, axis=-1).transpose(1, 0, 2)  # (b, T, H_out)
        compare(ours, live.outputs, live.valid)
    for store, name in ((live.final_h, "h"), (live.final_c, "c")):
        for key, theirs in store.items():
            arr = capture.sample[key].get(name)
            if arr is None:
                continue
            b = arr.shape[1]
            compare(arr[-1], theirs)  # masked steps carry the state: index T-1 is the final one
    return {
        "max_abs_diff": worst,
        "values": count,
        "sequences": int(b or 0),
        "tolerance": PARITY_TOLERANCE,
        "ok": bool(count > 0 and worst <= PARITY_TOLERANCE),
    }


def parity_note(live: LiveLSTM, result: dict, engine: str) -> str:
    """The sentence the report carries about parity."""
    verdict = "within" if result["ok"] else "OUTSIDE"
    return (
        f"capture parity with {live.kind} '{live.path}': max |Δ| = {result['max_abs_diff']:.3g} over "
        f"{result['values']} values of its own outputs ({result['sequences']} sequences, engine {engine}), "
        f"{verdict} the {result['tolerance']:g} tolerance"
    )


def compact(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move each sequence's valid steps to the front: (B, T, D), (B, T) bool → (B, T, D), lengths (B,).

    A masked step carries the LSTM state unchanged (Keras, and PyTorch's packed
    sequences), so a sequence with holes runs as the sequence of its valid
    steps followed by its masked ones (their values kept, as the input statistics
    count padding as the file route does). A prefix mask leaves ``x`` as it is.
    """
    lengths = mask.sum(axis=1).astype(np.int64)
    order = np.argsort(~mask, axis=1, kind="stable")  # valid steps first, each group in order
    out = np.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
    return out, lengths


def match(path: str, pattern: str) -> bool:
    """A module path against a shell pattern (``*``, ``?``); brackets are literal (``layers[2]``)."""
    return fnmatch.fnmatchcase(path, pattern.replace("[", "[[]"))


def is_prefix_mask(mask: np.ndarray) -> bool:
    lengths = mask.sum(axis=1)
    return bool(np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]))
