"""A live ``torch.nn.Module``: its ``nn.LSTM`` and ``nn.LSTMCell`` submodules and their real inputs.

``capture_model(module, args, kwargs)`` registers a forward pre-hook and a
forward hook on every LSTM submodule (``named_modules`` order, named by
module path), runs ``module(*args, **kwargs)`` once under ``torch.no_grad()``
in eval mode (dropout off, as at inference; the training flags are restored
after), removes the hooks and converts what they recorded:

- ``nn.LSTM``: the first call's input, (T, B, D) or (B, T, D) as
  ``batch_first`` says, or a ``PackedSequence`` unpacked to (B, T, D) plus
  lengths; ``h0``/``c0`` of shape (L·dirs, B, H) when given (they must be the
  same for every sequence: the canonical model has one initial state per
  direction); the output (B, T, dirs·H) and (h_n, c_n) for parity.
- ``nn.LSTMCell``: every call's input x_t (B, D) and state, stacked over
  time into (T, B, D), as long as each call's state is the previous call's
  output (a loop); the outputs (h_t, c_t) stacked for parity.

Parameters become the canonical model through the state-dict converter of
``lstm_doctor.load.torch`` (``W = weight_ih.T``, ``U = weight_hh.T``,
``b = bias_ih + bias_hh``), so a live module and its saved ``state_dict``
give the same model. torch is imported only by this module.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lstm_doctor.errors import ModelError, UserError
from lstm_doctor.live import ArrayInputs, LiveLSTM, Skipped
from lstm_doctor.load.torch import build_model, lstm_prefixes
from lstm_doctor.model import LSTMModel, make_direction


def is_module(obj: Any) -> bool:
    """True for a ``torch.nn.Module``, without importing torch unless it is already loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def find_lstms(module) -> list[tuple[str, Any]]:
    """(module path, submodule) of every ``nn.LSTM`` and ``nn.LSTMCell``, in ``named_modules`` order.

    The root module itself is named ``"model"`` when it is an LSTM.
    """
    import torch

    return [
        (name or "model", sub)
        for name, sub in module.named_modules()
        if isinstance(sub, (torch.nn.LSTM, torch.nn.LSTMCell))
    ]


def _numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    return tensor.numpy()


def _convert(sub, path: str, layout: str) -> LSTMModel:
    """The submodule's parameters → ``LSTMModel`` with the file importer's converter."""
    tensors = {name: _numpy(value) for name, value in sub.state_dict().items()}
    groups = lstm_prefixes(tensors)
    model = build_model(tensors, "", groups[""], Path(path), "torch", layout)
    return replace(model, name=path, source_files=())


def _with_state(model: LSTMModel, h0: np.ndarray | None, c0: np.ndarray | None) -> LSTMModel:
    """``model`` with initial states h0, c0 of shape (L·dirs, H) (PyTorch's order: layer-major)."""
    if h0 is None and c0 is None:
        return model
    layers = []
    n_dirs = 2 if model.layers[0].bidirectional else 1
    for k, layer in enumerate(model.layers):
        params = []
        for j, (_, p) in enumerate(layer.directions()):
            row = k * n_dirs + j
            params.append(
                make_direction(
                    W=p.W, U=p.U, b=p.b, peephole=p.peephole, projection=p.projection,
                    h0=None if h0 is None else h0[row], c0=None if c0 is None else c0[row], dtype=p.dtype,
                )
            )
        layers.append(replace(layer, forward=params[0], backward=params[1] if n_dirs == 2 else None))
    return replace(model, layers=tuple(layers))


def _initial_state(hx, n_rows: int, batched: bool, path: str) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(h0, c0) as (rows, H) arrays, or a reason why they cannot be modelled."""
    if hx is None:
        return None, None, ""
    out = []
    for name, tensor in zip(("h0", "c0"), hx):
        arr = _numpy(tensor).astype(np.float64)
        if not batched:  # (rows, H) for an unbatched input
            arr = arr.reshape(arr.shape[0], 1, -1)
        # (rows, B, H): one initial state per direction is what the canonical model holds
        if arr.shape[1] > 1 and not np.array_equal(arr, np.broadcast_to(arr[:, :1], arr.shape)):
            return None, None, (
                f"{name} differs between the sequences of the batch; the canonical model has one initial "
                "state per direction (diagnose a batch that starts from one state, e.g. zeros)"
            )
        out.append(arr[:, 0])
    h0, c0 = out
    if not h0.any() and not c0.any():
        return None, None, ""
    return h0, c0, ""


class _Recorder:
    """Forward pre-hooks and forward hooks on the LSTM submodules; each call's inputs and outputs."""

    def __init__(self, lstms):
        self.calls: dict[str, list[dict]] = {path: [] for path, _ in lstms}
        self.handles = []
        for path, sub in lstms:
            self.handles.append(sub.register_forward_pre_hook(self._pre(path), with_kwargs=True))
            self.handles.append(sub.register_forward_hook(self._post(path), with_kwargs=True))

    def _pre(self, path):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input")
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            self.calls[path].append({"input": x, "hx": hx})

        return hook

    def _post(self, path):
        def hook(module, args, kwargs, output):
            self.calls[path][-1]["output"] = output

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def capture_model(module, args: tuple, kwargs: dict | None = None) -> tuple[list[LiveLSTM], list[Skipped]]:
    """Run ``module(*args, **kwargs)`` once and return its LSTMs with their recorded inputs.

    Raises ``UserError`` when the module has no ``nn.LSTM`` or ``nn.LSTMCell``.
    """
    import torch

    lstms = find_lstms(module)
    if not lstms:
        raise UserError(f"{type(module).__name__} has no nn.LSTM or nn.LSTMCell submodule")
    recorder = _Recorder(lstms)
    modes = {sub: sub.training for sub in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            module(*args, **(kwargs or {}))
    finally:
        recorder.remove()
        for sub, training in modes.items():
            sub.training = training
    found: list[LiveLSTM] = []
    skipped: list[Skipped] = []
    for path, sub in lstms:
        calls = [c for c in recorder.calls[path] if "output" in c]
        kind = f"nn.{type(sub).__name__}" if isinstance(sub, (torch.nn.LSTM, torch.nn.LSTMCell)) else type(sub).__name__
        if not calls:
            skipped.append(Skipped(path, kind, "not called by the model's forward on this batch"))
            continue
        try:
            if isinstance(sub, torch.nn.LSTM):
                item = _from_lstm(sub, path, calls)
            else:
                item = _from_cell(sub, path, calls)
        except (ModelError, UserError) as exc:
            skipped.append(Skipped(path, kind, str(exc)))
            continue
        if isinstance(item, Skipped):
            skipped.append(item)
        else:
            found.append(item)
    return found, skipped


def _from_lstm(sub, path: str, calls: list[dict]) -> LiveLSTM | Skipped:
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

    call = calls[0]
    notes = [f"live PyTorch module '{path}' (nn.LSTM, batch_first={sub.batch_first}): "
             "its input was recorded by a forward pre-hook during the model's own forward"]
    if len(calls) > 1:
        notes.append(f"'{path}' ran {len(calls)} times in one forward; its first call is diagnosed")
    x, out = call["input"], call["output"]
    output, (h_n, c_n) = out
    lengths = None
    if isinstance(x, PackedSequence):
        padded, lens = pad_packed_sequence(x, batch_first=True)
        x_np, lengths = _numpy(padded), lens.numpy().astype(np.int64)
        layout = "btd"
        outputs = _numpy(pad_packed_sequence(output, batch_first=True, total_length=x_np.shape[1])[0])
        notes.append("a PackedSequence: unpacked to (batch, time, features) with its lengths")
        batched = True
    else:
        x_np = _numpy(x)
        batched = x_np.ndim == 3
        if not batched:  # unbatched (T, D): one sequence
            x_np = x_np[None] if sub.batch_first else x_np[:, None, :]
        layout = "btd" if sub.batch_first else "tbd"
        out_np = _numpy(output)
        if not batched:
            out_np = out_np[None] if sub.batch_first else out_np[:, None]
        outputs = out_np if sub.batch_first else out_np.transpose(1, 0, 2)
    n_dirs = 2 if sub.bidirectional else 1
    h0, c0, why = _initial_state(call["hx"], sub.num_layers * n_dirs, batched, path)
    if why:
        return Skipped(path, "nn.LSTM", why)
    model = _with_state(_convert(sub, path, layout), h0, c0)
    if h0 is not None:
        notes.append("h0 and c0 given to the module (the same for every sequence) are the initial state")
    model = model.with_notes(*notes)
    source = ArrayInputs(array=x_np, layout=layout, lengths=lengths, description=f"input of {path} (recorded)")
    # h has proj_size units when the module projects it (LSTMP), c always hidden_size
    hn = _numpy(h_n).reshape(sub.num_layers * n_dirs, -1, getattr(sub, "proj_size", 0) or sub.hidden_size)
    cn = _numpy(c_n).reshape(sub.num_layers * n_dirs, -1, sub.hidden_size)
    final_h, final_c = {}, {}
    for k in range(sub.num_layers):
        for j, d in enumerate(("fwd", "rev")[:n_dirs]):
            final_h[(k, d)] = hn[k * n_dirs + j]
            final_c[(k, d)] = cn[k * n_dirs + j]
    return LiveLSTM(path, "nn.LSTM", model, source, outputs, final_h, final_c, tuple(notes))


def _from_cell(sub, path: str, calls: list[dict]) -> LiveLSTM | Skipped:
    """Consecutive calls whose state is the previous call's output form one sequence."""
    xs, hs, cs = [], [], []
    first = calls[0]
    for t, call in enumerate(calls):
        x = _numpy(call["input"])
        h, c = (_numpy(v) for v in call["output"])
        if x.ndim == 1:
            x, h, c = x[None], h[None], c[None]
        if t > 0:
            hx = call["hx"]
            prev_h, prev_c = hs[-1], cs[-1]
            if hx is None or not (
                np.array_equal(_numpy(hx[0]).reshape(prev_h.shape), prev_h)
                and np.array_equal(_numpy(hx[1]).reshape(prev_c.shape), prev_c)
            ):
                break  # a new loop starts (or the state was changed between calls)
        xs.append(x)
        hs.append(h)
        cs.append(c)
    notes = [
        f"live PyTorch module '{path}' (nn.LSTMCell): {len(xs)} calls of the model's own loop, "
        "each call's input recorded by a forward pre-hook and stacked over time"
    ]
    if len(xs) < len(calls):
        notes.append(
            f"'{path}' was called {len(calls)} times; the first {len(xs)} calls pass their state on "
            "and are diagnosed as one sequence"
        )
    hx = first["hx"]
    h0 = c0 = None
    if hx is not None:
        state = [_numpy(v).reshape(1, -1, sub.hidden_size) for v in hx]  # (1, B, H)
        h0, c0, why = _cell_state(state)
        if why:
            return Skipped(path, "nn.LSTMCell", why)
    model = _with_state(_convert(sub, path, "tbd"), h0, c0).with_notes(*notes)
    x = np.stack(xs)  # (T, B, D)
    source = ArrayInputs(array=x, layout="tbd", description=f"inputs of {path} (recorded, {len(xs)} calls)")
    outputs = np.stack(hs).transpose(1, 0, 2)  # (B, T, H)
    return LiveLSTM(
        path, "nn.LSTMCell", model, source, outputs, {(0, "fwd"): hs[-1]}, {(0, "fwd"): cs[-1]}, tuple(notes)
    )


def _cell_state(state: list[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    out = []
    for name, arr in zip(("h0", "c0"), state):
        arr = arr.astype(np.float64)  # (1, B, H)
        if arr.shape[1] > 1 and not np.array_equal(arr, np.broadcast_to(arr[:, :1], arr.shape)):
            return None, None, f"the loop's initial {name} differs between the sequences of the batch"
        out.append(arr[:, 0])
    if not out[0].any() and not out[1].any():
        return None, None, ""
    return out[0], out[1], ""
