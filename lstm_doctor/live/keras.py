"""A live Keras 3 model: its ``LSTM`` layers (also inside ``Bidirectional``) and their real inputs.

``capture_model(model, args, kwargs)`` finds every ``LSTM`` and
``Bidirectional(LSTM)`` layer, in nested models too, each named by its path
(``model.layers[2]``, ``model.layers[1].layers[0]``). It then calls
``model(*args, training=False)`` once with each found layer's ``call``
recorded: the tensors Keras hands to the layer, i.e. the layer's input and
mask exactly as the model's graph computes them (a ``Masking`` layer, an
``Embedding(mask_zero=True)``), and what the layer returned. The recording
is removed afterwards.

A mask becomes lengths: masked steps carry the LSTM's state unchanged, so
each sequence is its valid steps moved to the front (``live.compact``). The
weights become the canonical model with the converters of
``lstm_doctor.load.keras`` (gate order i, f, c, o; ``recurrent_activation``
for the gates, ``activation`` for candidate and cell output), so a live layer
and its ``.keras`` file give the same model. keras is imported only here.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from lstm_doctor.errors import ModelError, UserError
from lstm_doctor.live import ArrayInputs, LiveLSTM, Skipped, compact, is_prefix_mask
from lstm_doctor.load.keras import config_activations
from lstm_doctor.load.keras import direction_from_kernels as keras_direction
from lstm_doctor.model import Layer, LSTMModel


def is_model(obj: Any) -> bool:
    """True for a ``keras.Model`` (keras already imported by the caller's code)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def _is_lstm(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.LSTM)


def find_lstms(model, prefix: str = "model") -> list[tuple[str, Any]]:
    """(path, layer) of every LSTM and Bidirectional(LSTM), depth first."""
    import keras

    out = []
    for index, layer in enumerate(getattr(model, "layers", [])):
        path = f"{prefix}.layers[{index}]"
        if _is_lstm(layer):
            out.append((path, layer))
        elif isinstance(layer, keras.layers.Bidirectional) and _is_lstm(layer.forward_layer):
            out.append((path, layer))
        elif isinstance(layer, keras.Model):
            out.extend(find_lstms(layer, path))
    return out


def _np(value) -> np.ndarray | None:
    if value is None:
        return None
    from keras import ops

    return np.asarray(ops.convert_to_numpy(value))


class _Recorder:
    """Records each watched layer's ``call`` arguments and result (an instance attribute, removed after)."""

    def __init__(self, layers):
        self.calls: dict[int, list[dict]] = {}
        self.layers = layers
        for layer in layers:
            self.calls[id(layer)] = []
            object.__setattr__(layer, "call", self._wrap(layer, layer.call))

    def _wrap(self, layer, call):
        calls = self.calls[id(layer)]

        def recorded(*args, **kwargs):
            entry = {"args": args, "kwargs": kwargs}
            calls.append(entry)
            entry["output"] = call(*args, **kwargs)
            return entry["output"]

        return recorded

    def remove(self):
        for layer in self.layers:
            try:
                object.__delattr__(layer, "call")
            except AttributeError:
                pass


def capture_model(model, args: tuple, kwargs: dict | None = None) -> tuple[list[LiveLSTM], list[Skipped]]:
    """Call ``model`` once on ``args`` and return its LSTM layers with their recorded inputs."""
    import keras

    lstms = find_lstms(model)
    if not lstms:
        raise UserError(f"{type(model).__name__} has no keras LSTM layer (nor a Bidirectional LSTM)")
    watched = []
    for _, layer in lstms:
        watched.append(layer)
        if isinstance(layer, keras.layers.Bidirectional):
            watched += [layer.forward_layer, layer.backward_layer]
    recorder = _Recorder(watched)
    try:
        model(*args, training=False, **(kwargs or {}))
    finally:
        recorder.remove()
    found, skipped = [], []
    for path, layer in lstms:
        kind = "keras Bidirectional(LSTM)" if isinstance(layer, keras.layers.Bidirectional) else "keras LSTM"
        try:
            item = _convert(path, kind, layer, recorder.calls)
        except (ModelError, UserError) as exc:
            skipped.append(Skipped(path, kind, str(exc)))
            continue
        (skipped if isinstance(item, Skipped) else found).append(item)
    return found, skipped


def _direction(layer, where: str):
    weights = [np.asarray(w) for w in layer.get_weights()]
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if layer.use_bias and len(weights) > 2 else None
    return keras_direction(kernel, recurrent, bias, where)


def _sequence_output(entry) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(outputs (B, T, H) or None, final h (B, H) or None) of one recorded LSTM call, processing order."""
    out = entry["output"]
    states = []
    if isinstance(out, (list, tuple)):
        out, states = out[0], list(out[1:])
    out = _np(out)
    final = _np(states[0]) if states else None
    if out.ndim == 2:
        return None, out if final is None else final
    return out, final


def _convert(path: str, kind: str, layer, calls: dict) -> LiveLSTM | Skipped:
    import keras


    entries = calls[id(layer)]
    if not entries:
        return Skipped(path, kind, "not called by the model on this batch")
    entry = entries[0]
    x = _np(entry["args"][0] if entry["args"] else entry["kwargs"].get("sequences"))
    mask = _np(entry["kwargs"].get("mask"))
    if entry["kwargs"].get("initial_state") is not None:
        return Skipped(path, kind, "an initial_state is passed to the layer: not modelled by the live Keras route")
    bidirectional = isinstance(layer, keras.layers.Bidirectional)
    fwd_layer = layer.forward_layer if bidirectional else layer
    cfg = fwd_layer.get_config()
    where = f"layer {path}"
    acts = config_activations(cfg, 3, where)
    fwd = _direction(fwd_layer, where)
    rev = _direction(layer.backward_layer, where + " rev") if bidirectional else None
    go_backwards = bool(cfg.get("go_backwards")) and not bidirectional
    notes = [
        f"live Keras layer '{path}' ({kind}, name {layer.name!r}): its input and mask were recorded "
        "from the layer's call during the model's own call"
    ]
    if bidirectional and layer.merge_mode != "concat":
        notes.append(f"Bidirectional merge_mode={layer.merge_mode!r}: the two directions are reported separately")
    model = LSTMModel(
        layers=(Layer(fwd, rev, acts, go_backwards=go_backwards, output_reversed=go_backwards),),
        name=path,
        source_format="keras",
        stored_gate_order="ifco",
        input_layout="btd",
        notes=("Keras gate order i, f, c, o; unit_forget_bias is already in the stored bias", *notes),
    )
    # the module's own outputs, in input time order (a backward pass returns last step first)
    parts, finals = [], {}
    sub_layers = [(layer.forward_layer, "fwd"), (layer.backward_layer, "rev")] if bidirectional else [
        (layer, "rev" if go_backwards else "fwd")
    ]
    for sub, direction in sub_layers:
        sub_entries = calls.get(id(sub)) if bidirectional else [entry]
        if not sub_entries:
            return Skipped(path, kind, "its wrapped layers were not called")
        seq, final = _sequence_output(sub_entries[0])
        if seq is not None:
            parts.append(seq[:, ::-1] if direction == "rev" else seq)
        if final is not None:
            finals[(0, direction)] = final
    outputs = np.concatenate(parts, axis=-1) if len(parts) == len(sub_layers) and parts else None
    lengths = None
    if mask is not None:
        mask = mask.astype(bool)
        if mask.all():
            mask = None
        else:
            extra = ["the layer's mask gives each sequence's length"]
            if not is_prefix_mask(mask):
                extra.append("the mask has holes: each sequence's valid steps are diagnosed in order, padding after")
            if outputs is not None:
                outputs, _ = compact(outputs, mask)
            x, lengths = compact(x, mask)
            model = model.with_notes(*extra)
            notes += extra
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    source = ArrayInputs(array=x, layout="btd", lengths=lengths, description=f"input of {path} (recorded)")
    return LiveLSTM(path, kind, model, source, outputs, finals, {}, tuple(notes))
