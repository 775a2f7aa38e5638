"""Lasagne ``LSTMLayer`` parameters: named (dict, ``.npz``) or as an ordered list.

Lasagne (``lasagne/layers/recurrent.py``) names the parameters of an
``LSTMLayer`` by role, one set per gate ``ingate``, ``forgetgate``, ``cell``,
``outgate``::

    W_in_to_<gate>   (D, H)     W_hid_to_<gate>   (H, H)     b_<gate>   (H,)
    W_cell_to_ingate, W_cell_to_forgetgate, W_cell_to_outgate   (H,)  peepholes
    cell_init, hid_init   (1, H)

Accepted files:

- an ``.npz`` or a pickle (read with the restricted unpickler) of a dict of
  those names, optionally all with a common prefix (``"enc."``,
  ``"encoder_"``); with several prefixes ``--layer-prefix`` picks one;
- a pickled list of Theano shared variables (``lasagne.layers.get_all_params``),
  whose names are read from the pickle without Theano;
- the unnamed list of ``lasagne.layers.get_all_param_values(lstm_layer)``.
  Its order is the order in which ``LSTMLayer.__init__`` registers its
  parameters (``add_param``), verified against Lasagne's ``recurrent.py``::

      W_in_to_ingate, W_hid_to_ingate, b_ingate,
      W_in_to_forgetgate, W_hid_to_forgetgate, b_forgetgate,
      W_in_to_cell, W_hid_to_cell, b_cell,
      W_in_to_outgate, W_hid_to_outgate, b_outgate,
      W_cell_to_ingate, W_cell_to_forgetgate, W_cell_to_outgate   (peepholes=True)
      cell_init, hid_init          (unless given as Theano expressions)

  i.e. 17, 15, 14 or 12 arrays. ``get_all_param_values`` also lists the
  parameters of the layers below the LSTM first; a longer list is accepted
  when its last arrays have this structure (the skipped count is noted).
- a pickled ``LSTMLayer`` object itself (or a network holding one), read as an
  inert stand-in: its parameters, nonlinearities and ``backwards`` flag are
  taken from it.

Lasagne's defaults apply otherwise: peepholes on (when stored), gates sigmoid,
candidate and cell output tanh. ``--preset tweet2vec`` declares the Tweet2Vec
code's ``h = o·σ(c)``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from lstm_doctor.capture.budget import BudgetError
from lstm_doctor.errors import ConfigError, ModelError
from lstm_doctor.load import safepickle
from lstm_doctor.load.npyfile import load_npz, npz_names
from lstm_doctor.load.tweet2vec import preset_activations
from lstm_doctor.model import Activations, Layer, LSTMModel, make_direction
from lstm_doctor.model.activations import get_activation

GATES = ("ingate", "forgetgate", "cell", "outgate")
PEEPHOLES = ("W_cell_to_ingate", "W_cell_to_forgetgate", "W_cell_to_outgate")
INITS = ("cell_init", "hid_init")
GATE_PARAMS = tuple(
    name for g in GATES for name in (f"W_in_to_{g}", f"W_hid_to_{g}", f"b_{g}")
)
LIST_ORDER = GATE_PARAMS + PEEPHOLES + INITS
# Lengths of get_all_param_values(lstm_layer) lists: with/without peepholes and inits.
LIST_LAYOUTS = {
    17: GATE_PARAMS + PEEPHOLES + INITS,
    15: GATE_PARAMS + PEEPHOLES,
    14: GATE_PARAMS + INITS,
    12: GATE_PARAMS,
}
ANCHOR = "W_in_to_ingate"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".p", ".joblib", ".npy", ".gz", ".z", ".bz2", ".xz")


# ---------------------------------------------------------------------------
# Reading the file into a named dict (or a positional list)


def _read(path: Path, trust: bool):
    if path.suffix == ".npz":
        return load_npz(path)  # each member's declared size checked before it is inflated
    return safepickle.load_file(path, trust=trust)


def _find_lstm_layers(obj, depth: int = 0, seen=None) -> list[safepickle.PickledObject]:
    """LSTMLayer stand-ins reachable from ``obj`` (a pickled layer or network)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 50:
        return []
    seen.add(id(obj))
    found = []
    if isinstance(obj, safepickle.PickledObject):
        if obj.pickled_as.endswith("LSTMLayer"):
            return [obj]
        children = [obj.state, *obj.args]
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    else:
        return []
    for child in children:
        found += _find_lstm_layers(child, depth + 1, seen)
    return found


def _named_from(obj) -> dict | list | None:
    """A name → array dict, a positional list of arrays, or None."""
    if isinstance(obj, dict):
        named = {}
        for key, value in obj.items():
            arr = safepickle.as_array(value)
            if isinstance(key, str) and arr is not None:
                named[key] = arr
        return named
    if isinstance(obj, (list, tuple)):
        arrays = [safepickle.as_array(a) for a in obj]
        if any(a is None for a in arrays):
            return None
        names = [getattr(a, "name", None) for a in obj]
        if all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
            return dict(zip(names, arrays))  # a list of named shared variables
        return arrays
    return None


def _prefixes(named: dict) -> list[str]:
    return sorted(key[: -len(ANCHOR)] for key in named if key.endswith(ANCHOR))


def sniff(path: Path) -> bool:
    if not path.is_file():
        return False
    if path.suffix == ".npz":
        try:
            return any(name.endswith(ANCHOR) for name in npz_names(path))
        except (ValueError, OSError, zipfile.BadZipFile, EOFError):
            return False
    if path.suffix not in PICKLE_SUFFIXES or not safepickle.looks_like_pickle(path):
        return False
    try:
        obj = safepickle.load_file(path)
    except safepickle.UnsafePickleError:
        return path.suffix != ".npy"  # a refused pickle: load() names the refusal
    except BudgetError:
        raise  # too big whatever its format: say so, not "unknown format"
    except ModelError:
        return False
    if _find_lstm_layers(obj):
        return True
    named = _named_from(obj)
    if isinstance(named, dict):
        return bool(_prefixes(named))
    if isinstance(named, list):
        try:
            _from_list(named)
        except ModelError:
            return False
        return True
    return False


# ---------------------------------------------------------------------------
# Building the model


def _from_list(arrays: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Name the arrays of a ``get_all_param_values`` list by the documented order."""
    notes = []
    if len(arrays) in LIST_LAYOUTS:
        names = LIST_LAYOUTS[len(arrays)]
        named = dict(zip(names, arrays))
        _check_shapes(named, "")
        return named, notes
    for n, names in LIST_LAYOUTS.items():  # the LSTM's parameters come last
        if len(arrays) > n:
            named = dict(zip(names, arrays[-n:]))
            try:
                _check_shapes(named, "")
            except ModelError:
                continue
            notes.append(
                f"the list holds {len(arrays)} arrays: the last {n} are the LSTMLayer's "
                f"parameters, the first {len(arrays) - n} (layers below it) are ignored"
            )
            return named, notes
    raise ModelError(
        f"a list of {len(arrays)} arrays does not match the LSTMLayer parameter order "
        f"(17, 15, 14 or 12 arrays: W_in_to_ingate, W_hid_to_ingate, b_ingate, ...)"
    )


def _check_shapes(named: dict[str, np.ndarray], prefix: str) -> tuple[int, int]:
    for name in (f"W_in_to_{g}" for g in GATES):
        if name not in named:
            raise ModelError(f"missing parameter {prefix}{name}")
    W_i = named["W_in_to_ingate"]
    if W_i.ndim != 2:
        raise ModelError(f"{prefix}W_in_to_ingate has shape {W_i.shape}, expected (D, H)")
    D, H = W_i.shape
    for name, arr in named.items():
        if name.startswith("W_in_to_"):
            want = [(D, H)]
        elif name.startswith("W_hid_to_"):
            want = [(H, H)]
        elif name.startswith("b_") or name.startswith("W_cell_to_"):
            want = [(H,)]
        elif name in INITS:
            want = [(1, H), (H,)]
        else:
            continue
        if arr.shape not in want:
            raise ModelError(
                f"{prefix}{name} has shape {arr.shape}, expected {want[0]} "
                f"(D={D}, H={H} from {prefix}W_in_to_ingate)"
            )
    return D, H


def _select_prefix(named: dict, options) -> str:
    prefixes = _prefixes(named)
    if not prefixes:
        raise ModelError(f"no parameter named *{ANCHOR} (not Lasagne LSTMLayer parameters)")
    chosen = options.layer_prefix
    if chosen is not None:
        if chosen not in prefixes:
            raise ModelError(
                f"no LSTM parameters with prefix {chosen!r}; found: "
                + ", ".join(repr(p) for p in prefixes)
            )
        return chosen
    if len(prefixes) > 1:
        raise ModelError(
            "several LSTM layers' parameters: prefixes "
            + ", ".join(repr(p) for p in prefixes)
            + "; choose one with --layer-prefix"
        )
    return prefixes[0]


def _nonlinearity(value, what: str) -> str | None:
    """Our activation name for a pickled Lasagne nonlinearity reference."""
    if value is None:
        return None
    qualified = getattr(value, "pickled_as", None)
    if not isinstance(qualified, str) or not qualified.startswith("lasagne.nonlinearities."):
        raise ModelError(f"{what} is {qualified or type(value).__name__}, not a Lasagne nonlinearity")
    name = qualified.rsplit(".", 1)[1]
    try:
        return get_activation(name).name
    except ConfigError:
        raise ModelError(f"{what} is lasagne.nonlinearities.{name}, which lstm_doctor does not model") from None


def _from_layer(layer: safepickle.PickledObject) -> tuple[dict, Activations, bool, list[str]]:
    """Parameters, activations and ``backwards`` of a pickled LSTMLayer stand-in."""
    named = {}
    for name in LIST_ORDER:
        arr = safepickle.as_array(layer.get(name))
        if arr is not None:
            named[name] = arr
    if not layer.get("peepholes", True):
        for name in PEEPHOLES:
            named.pop(name, None)
    gate_fns = {
        _nonlinearity(layer.get(f"nonlinearity_{g}"), f"nonlinearity_{g}")
        for g in ("ingate", "forgetgate", "outgate")
    } - {None}
    if len(gate_fns) > 1:
        raise ModelError(
            f"the gates use different nonlinearities ({', '.join(sorted(gate_fns))}); "
            "lstm_doctor models one gate activation"
        )
    acts = Activations(
        gate=gate_fns.pop() if gate_fns else "sigmoid",
        candidate=_nonlinearity(layer.get("nonlinearity_cell"), "nonlinearity_cell") or "tanh",
        cell_output=_nonlinearity(layer.get("nonlinearity"), "nonlinearity") or "tanh",
    )
    notes = ["activations read from the pickled LSTMLayer"]
    return named, acts, bool(layer.get("backwards", False)), notes


def load(path: Path, options) -> LSTMModel:
    obj = _read(path, options.trust_pickle)
    notes: list[str] = []
    acts = Activations()
    backwards = False
    name = path.stem
    layers = _find_lstm_layers(obj)
    if layers:
        if len(layers) > 1:
            names = [n if isinstance(n, str) else None for n in (layer.get("name") for layer in layers)]
            if options.layer_name is None or options.layer_name not in names:
                raise ModelError(
                    f"{len(layers)} LSTMLayers in the pickle ("
                    + ", ".join(safepickle.safe_repr(n) for n in names)
                    + "); choose one with --layer-name"
                )
            layers = [layers[names.index(options.layer_name)]]
        named, acts, backwards, notes = _from_layer(layers[0])
        stored = layers[0].get("name")
        name = stored if isinstance(stored, str) and stored else name  # a pickle may store anything here
        prefix = ""
    else:
        found = _named_from(obj)
        if found is None:
            raise ModelError(
                f"a {type(obj).__name__} is neither a dict of named parameters nor a list of arrays"
            )
        if isinstance(found, list):
            named, notes = _from_list(found)
            notes.append("unnamed arrays named by LSTMLayer's parameter order (see lstm_doctor.load.lasagne)")
            prefix = ""
        else:
            prefix = _select_prefix(found, options)
            named = {k[len(prefix):]: v for k, v in found.items() if k.startswith(prefix)}
            if prefix:
                name = prefix.rstrip("._-/") or name
    if not layers and options.preset is None:
        notes.append(
            "the file stores no nonlinearities: Lasagne's defaults assumed "
            "(gates sigmoid, candidate and cell output tanh)"
        )
    acts = preset_activations(options.preset, acts)
    _, H = _check_shapes(named, prefix)
    missing = [f"{prefix}W_hid_to_{g}" for g in GATES if f"W_hid_to_{g}" not in named]
    if missing:
        raise ModelError(f"missing parameter {missing[0]}")
    peep = [named.get(p) for p in PEEPHOLES]
    if any(p is not None for p in peep) and not all(p is not None for p in peep):
        absent = [prefix + p for p, v in zip(PEEPHOLES, peep) if v is None]
        raise ModelError(f"some peepholes are stored but not {', '.join(absent)}")
    if peep[0] is None:
        notes.append("no W_cell_to_* parameters: the layer has no peepholes (peepholes=False)")
    for init in INITS:
        if init not in named:
            notes.append(f"{prefix}{init} is not stored (a Theano expression?): zeros assumed")
    if options.preset is not None:
        notes.append(f"preset {options.preset}: activations {acts.equations()}")
    params = make_direction(
        W=np.concatenate([named[f"W_in_to_{g}"] for g in GATES], axis=1),
        U=np.concatenate([named[f"W_hid_to_{g}"] for g in GATES], axis=1),
        b=np.concatenate([named.get(f"b_{g}", np.zeros(H)) for g in GATES]),
        peephole=None if peep[0] is None else np.stack(peep),
        h0=named.get("hid_init"),
        c0=named.get("cell_init"),
        where=f"lasagne {prefix}".strip(),
    )
    if backwards:
        notes.append("backwards=True: the layer runs over the sequence from the end")
    return LSTMModel(
        layers=(Layer(params, None, acts, go_backwards=backwards),),
        name=str(name),
        source_format="lasagne",
        source_files=(str(path),),
        stored_gate_order="ifgo",
        notes=tuple(notes),
    )
