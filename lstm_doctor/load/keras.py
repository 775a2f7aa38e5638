"""Keras ``LSTM`` layers from ``.keras``, legacy ``.h5`` and ``.weights.h5`` files.

Only ``zipfile``, ``json`` and ``h5py`` are used: layers are never
deserialised, so ``Lambda`` layers and custom objects in the file never run,
and Keras need not be installed.

Files:

- ``.keras`` (Keras 3 and tf.keras ≥ 2.13): a zip with ``config.json``,
  ``metadata.json`` (``keras_version``) and ``model.weights.h5``; an unzipped
  folder with the same files is accepted too. In the weights file each layer
  of a model sits at ``layers/<snake_case(class name)>[_<n>]`` (Keras'
  ``saving_lib`` naming, counted per class within each model), an LSTM's
  variables at ``<layer>/cell/vars/0, 1, 2`` (kernel, recurrent kernel, bias)
  and a ``Bidirectional``'s under ``forward_layer/`` and ``backward_layer/``.
  The ``vars`` groups carry the layer name as an attribute, used to check the
  match (and to find the layer when the naming differs).
- legacy ``.h5`` (``model.save("x.h5")``): the JSON ``model_config`` and
  ``keras_version`` attributes, weights under ``model_weights/<layer>/`` as
  listed by each group's ``weight_names`` attribute (``.../kernel:0`` etc.).
- weights only (``.weights.h5`` of Keras 3, or a legacy ``save_weights``
  ``.h5``): the layout above, with the architecture read from a JSON file
  beside it (``<stem>.json``, ``<stem>.config.json`` or ``config.json``, as
  written by ``model.to_json()``). Without one, a legacy (Keras 2) file's
  LSTM layers are found from their weight names, and what the file leaves open
  (``recurrent_activation``, ``activation``, ``go_backwards``) is its
  ``keras_version``'s default or what ``--gate-activation``, ``--activation``
  and ``--go-backwards`` state (``_settings``); a Keras 3 ``.weights.h5``
  without one is refused, naming the files tried. A flag that contradicts a
  setting the file states is refused.

Semantics: gate order i, f, c, o, one bias (``unit_forget_bias`` is already in
the stored bias), ``recurrent_activation`` for the gates and ``activation`` for
both the candidate and the cell output. ``hard_sigmoid`` is Keras 3's
``relu6(x + 3) / 6`` (``hard_sigmoid6``) in files of Keras ≥ 3, and the
older ``clip(0.2·x + 0.5, 0, 1)`` (``hard_sigmoid``) before; the version comes
from the file (or, when absent, from the style of the config, noted).
``go_backwards`` layers become ``Layer(go_backwards=True, output_reversed=True)``
(Keras hands their sequence on last step first); ``Bidirectional``
wrappers a two-direction layer (``merge_mode="concat"`` when another LSTM
follows). Several LSTM layers are stacked when each feeds the next directly
(only inference-time identities such as ``Dropout`` between them); otherwise
``--layer-name`` selects one. Sizes are guarded: no dataset over
``MAX_DATASET_BYTES`` is read, no zip member over ``MAX_MEMBER_BYTES`` or
compressed more than ``MAX_COMPRESSION_RATIO`` times is opened.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_doctor.capture import budget
from lstm_doctor.capture.budget import declared_bytes
from lstm_doctor.errors import ConfigError, ModelError
from lstm_doctor.load import LoadOptions
from lstm_doctor.model import (
    Activations,
    Layer,
    LSTMModel,
    make_direction,
    reorder_gates,
)
from lstm_doctor.model.activations import get_activation

MAX_DATASET_BYTES = 2 << 30
MAX_MEMBER_BYTES = 16 << 30
MAX_CONFIG_BYTES = 64 << 20
MAX_COMPRESSION_RATIO = 200
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
LSTM_CLASSES = ("LSTM", "CuDNNLSTM")
MODEL_CLASSES = ("Sequential", "Functional", "Model")
# Layers that are the identity at inference: an LSTM behind one still feeds
# the next LSTM directly.
IDENTITY_CLASSES = (
    "Dropout",
    "SpatialDropout1D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ModelError("reading Keras files needs h5py (pip install h5py)") from None
    return h5py


# ---------------------------------------------------------------------------
# Sniffing


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_MAGIC


def sniff(path: Path) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file() and (path / "model.weights.h5").is_file()
    if not path.is_file():
        return False
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile:
            return False
        return "config.json" in names and "model.weights.h5" in names
    if not _is_hdf5(path):
        return False
    try:
        h5py = _h5py()
        with h5py.File(path, "r") as f:
            return (
                "model_config" in f.attrs
                or "layer_names" in f.attrs
                or "model_weights" in f
                or ("layers" in f and "vars" in f)
            )
    except (ModelError, OSError):
        return False


# ---------------------------------------------------------------------------
# Opening the file: config, version and a weights reader


@dataclass
class Source:
    config: dict
    keras_version: str | None
    weights: Any  # an h5py Group: the root (v3) or model_weights (legacy)
    layout: str  # "v3" or "legacy"
    files: list[str]
    notes: list[str] = field(default_factory=list)
    closers: list = field(default_factory=list)
    # An architecture inferred for a weights-only file: which Keras version's defaults
    # fill what the file leaves open (None: the file, or a JSON beside it, states it all)
    inferred: str | None = None

    def close(self):
        for closer in reversed(self.closers):
            closer.close()


def _json(text: bytes | str, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ModelError(f"{what} is JSON nested too deeply to be a model config") from None


def _member(zf: zipfile.ZipFile, name: str, limit: int) -> zipfile.ZipInfo:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ModelError(f"the archive has no {name}") from None
    if info.file_size > limit:
        raise ModelError(f"{name} is {info.file_size} bytes uncompressed, over the {limit}-byte limit")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_COMPRESSION_RATIO * max(
        info.compress_size, 1
    ) and info.file_size > (1 << 20):
        raise ModelError(f"{name} expands {info.file_size // max(info.compress_size, 1)}× (zip bomb?)")
    return info


def _open_keras_zip(path: Path) -> Source:
    h5py = _h5py()
    zf = zipfile.ZipFile(path)
    closers = [zf]
    try:
        names = set(zf.namelist())
        config = _json(zf.read(_member(zf, "config.json", MAX_CONFIG_BYTES)), "config.json")
        version = None
        if "metadata.json" in names:
            meta = _json(zf.read(_member(zf, "metadata.json", MAX_CONFIG_BYTES)), "metadata.json")
            version = meta.get("keras_version") if isinstance(meta, dict) else None
        if "model.weights.h5" not in names:
            other = sorted(n for n in names if "weights" in n)
            raise ModelError(
                "the archive has no model.weights.h5"
                + (f" (found {', '.join(other)}: only HDF5 weights are supported)" if other else "")
            )
        _member(zf, "model.weights.h5", MAX_MEMBER_BYTES)
        fh = zf.open("model.weights.h5")
        closers.append(fh)
        h5 = h5py.File(fh, "r")
        closers.append(h5)
    except BaseException:
        for c in reversed(closers):
            c.close()
        raise
    return Source(config, version, h5, "v3", [str(path)], closers=closers)


def _open_keras_dir(path: Path) -> Source:
    h5py = _h5py()
    config = _json(_read_limited(path / "config.json"), "config.json")
    version = None
    if (path / "metadata.json").is_file():
        meta = _json(_read_limited(path / "metadata.json"), "metadata.json")
        version = meta.get("keras_version") if isinstance(meta, dict) else None
    h5 = h5py.File(path / "model.weights.h5", "r")
    return Source(config, version, h5, "v3", [str(path)], closers=[h5])


def _read_limited(path: Path) -> bytes:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelError(f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes")
    return path.read_bytes()


def _attr_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def config_candidates(path: Path) -> list[Path]:
    """Where the architecture JSON of a weights-only file may be."""
    name = path.name
    stem = name[: -len(".weights.h5")] if name.endswith(".weights.h5") else path.stem
    return [
        path.with_name(f"{stem}.json"),
        path.with_name(f"{stem}.config.json"),
        path.with_name("config.json"),
    ]


def _open_h5(path: Path) -> Source:
    h5py = _h5py()
    h5 = h5py.File(path, "r")
    try:
        version = _attr_str(h5.attrs["keras_version"]) if "keras_version" in h5.attrs else None
        files = [str(path)]
        if "model_config" in h5.attrs:
            config = _json(_attr_str(h5.attrs["model_config"]), "the model_config attribute")
            if "model_weights" not in h5:
                raise ModelError("the file has a model_config but no model_weights group")
            weights, layout = h5["model_weights"], "legacy"
            version = version or (
                _attr_str(weights.attrs["keras_version"])
                if "keras_version" in weights.attrs
                else None
            )
        else:
            if "layer_names" in h5.attrs:
                weights, layout = h5, "legacy"
            elif "layers" in h5:
                weights, layout = h5, "v3"
            else:
                raise ModelError("an HDF5 file without Keras model or weights groups")
            for candidate in config_candidates(path):
                if candidate.is_file():
                    config = _json(_read_limited(candidate), candidate.name)
                    files.append(str(candidate))
                    break
            else:
                inferred = infer_keras2_config(h5, version) if layout == "legacy" else None
                if inferred is not None:
                    config, notes = inferred
                    return Source(config, version, weights, layout, files, notes=notes, closers=[h5],
                                  inferred=version or "unknown")
                raise ModelError(
                    "a weights-only Keras file: the architecture (activations, go_backwards) "
                    "is needed; save model.to_json() as "
                    + " or ".join(c.name for c in config_candidates(path))
                    + " beside it"
                )
    except BaseException:
        h5.close()
        raise
    return Source(config, version, weights, layout, files, closers=[h5])


def infer_keras2_config(h5, version: str | None):
    """The architecture of a legacy ``save_weights`` file without its JSON, where it can
    be inferred: LSTM layers from their weight names (``<layer>/kernel:0``,
    ``recurrent_kernel:0``, ``bias:0``; ``forward_*``/``backward_*`` under a
    Bidirectional), every other setting left to the version's defaults (``default_settings``)
    or to the command line (``_settings``). Returns (config, notes), or None when the file is
    not a Keras 2 or 3 legacy weights file with an LSTM. A file without ``keras_version``
    gives a config whose ``recurrent_activation`` is None: the default is not known.
    """
    m = re.match(r"(\d+)\.(\d+)", version or "")
    if version is not None and (m is None or int(m.group(1)) not in (2, 3)):
        return None
    gate = default_settings(version)["recurrent_activation"]
    layers = []
    for name in [_attr_str(n) for n in h5.attrs.get("layer_names", [])]:
        group = h5.get(name)
        wnames = [_attr_str(n) for n in group.attrs.get("weight_names", [])] if group is not None else []
        roles = {w.split("/")[-1].split(":")[0] for w in wnames}
        if not {"kernel", "recurrent_kernel"} <= roles:
            continue
        rec = [w for w in wnames if w.split("/")[-1].startswith("recurrent_kernel")]
        shape = group[rec[0]].shape if rec[0] in group else ()
        if len(shape) != 2 or shape[1] != 4 * shape[0]:
            continue  # a GRU or SimpleRNN
        inner = {"name": name, "activation": "tanh", "recurrent_activation": gate, "go_backwards": False,
                 "return_sequences": False, "use_bias": "bias" in roles}
        if any(p.startswith("forward") for w in wnames for p in w.split("/")):
            layers.append({"class_name": "Bidirectional", "config": {
                "name": name, "layer": {"class_name": "LSTM", "config": dict(inner)}, "merge_mode": "concat",
                "backward_layer": {"class_name": "LSTM", "config": {**inner, "go_backwards": True}}}})
        else:
            layers.append({"class_name": "LSTM", "config": inner})
    if not layers:
        return None
    backend = _attr_str(h5.attrs["backend"]) if "backend" in h5.attrs else "unknown"
    notes = [
        f"weights-only Keras {version or '(version not recorded)'} file (backend {backend}) without its "
        "architecture JSON: the settings it leaves open (recurrent_activation, activation, go_backwards) are "
        "the version's defaults unless --gate-activation, --activation or --go-backwards give them (see the "
        "assumptions); if the model set them otherwise, pass those flags or save model.to_json() beside the file"
    ]
    return {"class_name": "Sequential", "config": {"name": "model", "layers": layers}}, notes


def default_settings(version: str | None) -> dict:
    """Keras' ``LSTM`` defaults in ``version``: ``recurrent_activation`` 'hard_sigmoid'
    before Keras 2.3 and 'sigmoid' from 2.3 (None when the version is unknown),
    ``activation`` 'tanh', ``go_backwards`` False."""
    m = re.match(r"(\d+)\.(\d+)", version or "")
    gate = None if m is None else "hard_sigmoid" if (int(m.group(1)), int(m.group(2))) < (2, 3) else "sigmoid"
    return {"recurrent_activation": gate, "activation": "tanh", "go_backwards": False}


# (config key, option field, flag) of the settings a user may state
SETTINGS = (
    ("recurrent_activation", "gate_activation", "--gate-activation"),
    ("activation", "activation", "--activation"),
    ("go_backwards", "go_backwards", "--go-backwards"),
)


def _settings(entry: "Entry", source: Source, options: LoadOptions, major, where: str) -> tuple[dict, list[tuple]]:
    """The entry's config with the command line's settings, and where each came from.

    A file that states a setting (its config, or the JSON beside it) keeps it, and a flag
    that contradicts it is refused: overriding the file would diagnose another model. In an
    inferred architecture (``Source.inferred``) a flag replaces the version's default.
    Returns (config, [(item, value, source)]) with source ∈ {file, default, flag}.
    """
    cfg = dict(entry.config)
    bidirectional = entry.class_name == "Bidirectional"
    given = {key: getattr(options, field) for key, field, _ in SETTINGS if getattr(options, field) is not None}
    flag_of = {key: flag for key, _, flag in SETTINGS}
    if bidirectional and given.get("go_backwards"):
        raise ConfigError(f"{where} is a Bidirectional: its directions are fixed, --go-backwards does not apply")
    if entry.class_name == "CuDNNLSTM":  # fixed by cuDNN
        cfg.update(recurrent_activation="sigmoid", activation="tanh")
    origin = {}
    for key, value in given.items():
        if source.inferred is not None and not (bidirectional and key == "go_backwards"):
            cfg[key] = value
            origin[key] = "flag"
            continue
        stated = cfg.get(key, cfg.get("inner_activation") if key == "recurrent_activation" else None)
        stated = {"recurrent_activation": "sigmoid", "activation": "tanh", "go_backwards": False}[key] \
            if stated is None else stated
        if key == "go_backwards":
            same = bool(stated) == value
            shown = "--go-backwards" if value else "--no-go-backwards"
        else:
            same = _activation(stated, major, where) == _activation(value, major, where)
            shown = f"{flag_of[key]} {value}"
        if not same:
            raise ConfigError(
                f"{where}: the file states {key}={stated!r}, {shown} contradicts it; drop the flag "
                "(or correct the file's architecture)"
            )
    if source.inferred is not None and cfg.get("recurrent_activation") is None:
        raise ModelError(
            f"{where}: the file does not record keras_version, so the default recurrent_activation is not known "
            "(hard_sigmoid before Keras 2.3, sigmoid from 2.3): pass --gate-activation"
        )

    def src(key):
        if source.inferred is None or (bidirectional and key == "go_backwards"):
            return "file"
        return origin.get(key, "default")

    def why(key):
        return f", Keras {source.inferred}'s default" if src(key) == "default" else ""

    acts = Activations() if entry.class_name == "CuDNNLSTM" else config_activations(cfg, major, where)
    if bidirectional:
        direction = "both (Bidirectional: forward, and backward from the last step)"
    elif cfg.get("go_backwards"):
        direction = f"from the last step (go_backwards=True{why('go_backwards')})"
    else:
        direction = f"forward (go_backwards=False{why('go_backwards')})"
    stated = [
        ("gate activation", f"{acts.gate} (recurrent_activation{why('recurrent_activation')})",
         src("recurrent_activation")),
        ("activation", f"{acts.candidate} (candidate and cell output{why('activation')})", src("activation")),
        ("direction", direction, src("go_backwards")),
    ]
    return cfg, stated


def open_source(path: Path) -> Source:
    if path.is_dir():
        return _open_keras_dir(path)
    if zipfile.is_zipfile(path):
        return _open_keras_zip(path)
    if _is_hdf5(path):
        return _open_h5(path)
    raise ModelError("not a .keras archive or an HDF5 file")


# ---------------------------------------------------------------------------
# Walking the config


@dataclass
class Entry:
    """One LSTM (or Bidirectional LSTM) layer found in the config."""

    name: str
    class_name: str
    config: dict  # the LSTM's config (the forward one of a Bidirectional)
    backward_config: dict | None
    merge_mode: str | None
    v3_path: str  # where Keras 3 saves its variables
    container: int  # id of the model config that holds it
    index: int  # position in that model's layer list
    inbound: str | None  # the layer feeding it (None when unknown)


def _layer_name(cfg: dict) -> str:
    inner = cfg.get("config") if isinstance(cfg.get("config"), dict) else {}
    return str(inner.get("name") or cfg.get("name") or "?")


def _snake(name: str) -> str:
    # keras.src.utils.naming.to_snake_case
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _inbound(cfg: dict) -> str | None:
    nodes = cfg.get("inbound_nodes")
    if not isinstance(nodes, list) or len(nodes) != 1:
        return None
    node = nodes[0]
    try:
        if isinstance(node, dict):  # Keras 3
            args = node.get("args", [])
            return str(args[0]["config"]["keras_history"][0]) if len(args) == 1 else None
        if isinstance(node, list) and len(node) == 1:  # Keras 2: [[name, 0, 0, {}]]
            return str(node[0][0])
    except (KeyError, IndexError, TypeError):
        return None
    return None


def _is_lstm_rnn(cfg: dict) -> bool:
    """A generic ``RNN`` layer wrapping an ``LSTMCell``."""
    cell = cfg.get("config", {}).get("cell")
    return cfg.get("class_name") == "RNN" and isinstance(cell, dict) and cell.get("class_name") == "LSTMCell"


def _rnn_config(cfg: dict) -> dict:
    """The effective LSTM config of an LSTM layer, or of an RNN(LSTMCell)."""
    inner = dict(cfg.get("config", {}))
    if _is_lstm_rnn(cfg):
        inner = {**inner.get("cell", {}).get("config", {}), **{
            k: v for k, v in inner.items() if k in ("go_backwards", "return_sequences", "time_major", "name")
        }}
    return inner


def walk(config: dict) -> tuple[list[Entry], dict[int, list[dict]]]:
    """Every LSTM entry of the (possibly nested) model config, in order."""
    entries: list[Entry] = []
    containers: dict[int, list[dict]] = {}

    def visit(model_cfg: dict, prefix: str):
        inner = model_cfg.get("config", model_cfg)
        layers = inner.get("layers", []) if isinstance(inner, dict) else inner
        if not isinstance(layers, list):
            raise ModelError("the model config has no list of layers")
        containers[id(layers)] = layers
        used: dict[str, int] = {}
        for index, cfg in enumerate(layers):
            if not isinstance(cfg, dict):
                raise ModelError("a layer entry of the model config is not an object")
            cls = str(cfg.get("class_name", "?"))
            snake = _snake(cls)
            if snake in used:
                used[snake] += 1
                snake = f"{snake}_{used[snake]}"
            else:
                used[snake] = 0
            path = f"{prefix}layers/{snake}"
            if cls in MODEL_CLASSES:
                visit(cfg, path + "/")
                continue
            lstm_cfg = backward = merge = None
            if cls in LSTM_CLASSES or _is_lstm_rnn(cfg):
                lstm_cfg = _rnn_config(cfg)
            elif cls == "Bidirectional":
                inner_cfg = cfg.get("config", {})
                wrapped = inner_cfg.get("layer", {})
                if wrapped.get("class_name") in LSTM_CLASSES or _is_lstm_rnn(wrapped):
                    lstm_cfg = _rnn_config(wrapped)
                    back = inner_cfg.get("backward_layer")
                    backward = _rnn_config(back) if isinstance(back, dict) else None
                    merge = inner_cfg.get("merge_mode", "concat")
            if lstm_cfg is not None:
                entries.append(
                    Entry(
                        name=_layer_name(cfg),
                        class_name=cls,
                        config=lstm_cfg,
                        backward_config=backward,
                        merge_mode=merge,
                        v3_path=path,
                        container=id(layers),
                        index=index,
                        inbound=_inbound(cfg),
                    )
                )

    if not isinstance(config, dict):
        if isinstance(config, list):  # Keras 1 Sequential: a bare list of layers
            visit({"layers": config}, "")
            return entries, containers
        raise ModelError("the model config is not a JSON object")
    if config.get("class_name") not in MODEL_CLASSES:
        # A single layer saved on its own.
        visit({"layers": [config]}, "")
    else:
        visit(config, "")
    return entries, containers


# ---------------------------------------------------------------------------
# Activations and versions


def keras_major(source: Source) -> tuple[int | None, str | None]:
    """(major version, a note when it had to be inferred)."""
    if source.keras_version:
        m = re.match(r"(\d+)", source.keras_version)
        if m:
            return int(m.group(1)), None
    # Keras 3 configs carry "module" keys and DTypePolicy objects; Keras 2 do not.
    text = json.dumps(source.config)[:200000]
    major = 3 if '"module": "keras' in text or "DTypePolicy" in text else 2
    return major, f"the file does not record keras_version; its config reads as Keras {major}"


def _activation(value, major: int | None, where: str) -> str:
    if isinstance(value, dict):  # a serialised function
        value = value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
    name = str(value).lower()
    if name == "hard_sigmoid":
        return "hard_sigmoid6" if (major or 3) >= 3 else "hard_sigmoid"
    try:
        return get_activation(name).name
    except ConfigError:
        raise ModelError(f"{where}: activation {value!r} is not one lstm_doctor models") from None


def config_activations(cfg: dict, major, where: str) -> Activations:
    """The activations a Keras LSTM config declares (``activation``, ``recurrent_activation``)."""
    act = _activation(cfg.get("activation", "tanh"), major, where)
    rec = _activation(
        cfg.get("recurrent_activation", cfg.get("inner_activation", "sigmoid")), major, where
    )
    return Activations(gate=rec, candidate=act, cell_output=act)


# ---------------------------------------------------------------------------
# Reading the weights


def _dataset(obj, what: str) -> np.ndarray:
    h5py = _h5py()
    if not isinstance(obj, h5py.Dataset):
        raise ModelError(f"{what} is not a dataset")
    # Reading outside the model: an HDF5 dataset may keep its bytes in external
    # files or map other files' datasets (virtual): either could read any file
    # on the machine (/etc/passwd as a recurrent kernel). Refused, as the ONNX
    # reader refuses external data outside its folder.
    if obj.external:
        raise ModelError(f"{what} keeps its data in external files ({obj.external[0][0]!s:.80}): refused")
    if obj.is_virtual:
        raise ModelError(f"{what} is a virtual dataset (its data lives in other files): refused")
    nbytes = declared_bytes(obj.shape, obj.dtype.itemsize)
    if nbytes > MAX_DATASET_BYTES:
        raise ModelError(f"{what} has {nbytes} bytes, over the {MAX_DATASET_BYTES}-byte limit")
    # Counted before reading, with every dataset this load has read: an unwritten
    # dataset (fill value only) costs no disk but reads as its full declared size.
    budget.take(nbytes, what)
    if obj.dtype.kind not in "fiu":
        raise ModelError(f"{what} has dtype {obj.dtype}, expected floats")
    return np.asarray(obj[()])


def _vars_v3(root, path: str, name: str | None, where: str) -> list[np.ndarray]:
    """The cell variables of a Keras 3 LSTM at ``path`` (checked against ``name``)."""
    group = root.get(path)
    vars_group = group.get("cell/vars") if group is not None else None
    owner = group.get("vars") if group is not None else None
    stored = _attr_str(owner.attrs["name"]) if owner is not None and "name" in owner.attrs else None
    if vars_group is None or (stored is not None and name and stored != name):
        found = _find_by_name(root, name) if name else None
        if found is None:
            raise ModelError(f"{where}: no weights for layer {name!r} (looked at {path}/cell/vars)")
        vars_group = found
    keys = sorted(vars_group.keys(), key=lambda k: int(k) if k.isdigit() else 1 << 30)
    return [_dataset(vars_group[k], f"{where} variable {k}") for k in keys]


def _find_by_name(root, name: str):
    hits = []

    def visit(group_name, obj):
        if group_name.endswith("/vars") and obj.attrs.get("name") is not None:
            if _attr_str(obj.attrs["name"]) == name:
                parent = group_name[: -len("/vars")]
                if parent + "/cell/vars" in root:
                    hits.append(root[parent + "/cell/vars"])

    root.visititems(visit)
    return hits[0] if len(hits) == 1 else None


def _vars_legacy(weights, name: str, where: str) -> list[tuple[str, np.ndarray]]:
    """(weight name, array) of the layer ``name`` in a legacy ``model_weights`` group.

    A top-level layer has its own group, named after it, whose ``weight_names``
    list its weights (prefixed by the model's name in some Keras versions); a
    layer of a nested model is found by its name among the path components.
    """
    def listed(group):
        names = group.attrs.get("weight_names") if hasattr(group, "attrs") else None
        return [] if names is None else [_attr_str(n) for n in names]

    own = weights.get(name)
    if own is not None and listed(own):
        chosen = [(own, wname) for wname in listed(own)]
    else:
        chosen = [
            (weights[key], wname)
            for key in weights.keys()
            for wname in listed(weights[key])
            if name in wname.split("/")[:-1]
        ]
    if not chosen:
        raise ModelError(f"{where}: no weights for layer {name!r} in model_weights")
    out = []
    for group, wname in chosen:
        if wname not in group:
            raise ModelError(f"{where}: weight {wname} is listed but missing")
        out.append((wname, _dataset(group[wname], f"{where} {wname}")))
    return out


def _triple(arrays: list[np.ndarray], use_bias: bool, where: str):
    want = 3 if use_bias else 2
    if len(arrays) != want:
        raise ModelError(f"{where}: {len(arrays)} weight arrays, expected {want}")
    return arrays[0], arrays[1], arrays[2] if use_bias else None


def _split_legacy(named: list[tuple[str, np.ndarray]], bidirectional: bool, use_bias: bool, where):
    def role(wname):
        return wname.split("/")[-1].split(":")[0]

    if not bidirectional:
        return [_by_role(named, role, use_bias, where)]
    fwd = [(n, a) for n, a in named if any(p.startswith("forward") for p in n.split("/"))]
    bwd = [(n, a) for n, a in named if any(p.startswith("backward") for p in n.split("/"))]
    if not fwd or not bwd:
        half = len(named) // 2
        fwd, bwd = named[:half], named[half:]
    return [_by_role(fwd, role, use_bias, where), _by_role(bwd, role, use_bias, where + " rev")]


def _by_role(named, role, use_bias, where):
    by = {role(n): a for n, a in named}
    try:
        kernel, recurrent = by["kernel"], by["recurrent_kernel"]
    except KeyError:
        raise ModelError(
            f"{where}: weights {', '.join(n for n, _ in named)} are not kernel, "
            "recurrent_kernel, bias (Keras 1 files are not supported)"
        ) from None
    return kernel, recurrent, by.get("bias") if use_bias else None


def cudnn_to_keras(kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray):
    """CuDNNLSTM weights → the plain ``LSTM`` layout, as Keras converts them on load.

    CuDNNLSTM hands each gate's (D, H) kernel block to cuDNN flattened in C
    order, and cuDNN reads that buffer as a row-major (H, D) matrix W_g with
    z_g = W_g·x. In the plain layout z_g = x·K_g, so K_g = W_g.T, i.e. the
    block transposed and reshaped back to (D, H) in Fortran order. The (H, H)
    recurrent block is read as R_g with z_g = R_g·h: K_g = R_g.T, a transpose.
    The 8H bias is [input biases | recurrent biases] (each i, f, c, o): summed.
    """
    H = recurrent.shape[0]
    kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, 4)])
    recurrent = np.hstack([k.T for k in np.hsplit(recurrent, 4)])
    return kernel, recurrent, bias[: 4 * H] + bias[4 * H :]


def direction_from_kernels(kernel, recurrent, bias, where: str, notes: list[str] | None = None):
    """One direction from Keras' kernel (D, 4H), recurrent kernel (H, 4H) and bias (4H,)
    (or CuDNN's (8H,), folded), gates in Keras' order i, f, c, o; also the live route's."""
    if recurrent.ndim != 2 or kernel.ndim != 2:
        raise ModelError(f"{where}: kernel {kernel.shape} and recurrent kernel {recurrent.shape} must be matrices")
    H = recurrent.shape[0]
    if bias is not None and bias.shape == (8 * H,) and kernel.shape[-1] == 4 * H and recurrent.shape[-1] == 4 * H:
        # cuDNN layout (CuDNNLSTM, or an LSTM saved from one): Keras decides it
        # from the 8H bias alone and converts kernels and biases together.
        kernel, recurrent, bias = cudnn_to_keras(kernel, recurrent, bias)
        if notes is not None:
            notes.append(("assumption", "bias layout", "cuDNN (8H bias): biases summed, kernels converted", "file"))
            notes.append(
                f"{where}: cuDNN weight layout (8H bias): kernels converted per gate "
                "(input kernel transposed in Fortran order, recurrent kernel transposed) "
                "and the two biases summed, as Keras does when it loads them"
            )
    for role, arr, axis_len in (("kernel", kernel, 4 * H), ("recurrent kernel", recurrent, 4 * H)):
        if arr.shape[-1] != axis_len:
            raise ModelError(f"{where}: {role} has shape {arr.shape}, expected (…, {axis_len}) for H={H}")
    if bias is not None and bias.shape != (4 * H,):
        raise ModelError(f"{where}: bias has shape {bias.shape}, expected ({4 * H},)")
    return make_direction(
        W=reorder_gates(kernel, "ifco"),
        U=reorder_gates(recurrent, "ifco"),
        b=None if bias is None else reorder_gates(bias, "ifco"),
        where=where,
    )


def _layer(entry: Entry, source: Source, major, notes: list, options=None) -> tuple[Layer, list[tuple]]:
    """The layer of ``entry``, and what it assumed: (item, value, source) items."""
    where = f"layer {entry.name!r}"
    cfg, stated = _settings(entry, source, options, major, where)
    if cfg.get("time_major"):
        raise ModelError(f"{where}: time_major=True is not supported")
    if entry.class_name == "CuDNNLSTM":
        acts = Activations()
    else:
        acts = config_activations(cfg, major, where)
    use_bias = bool(cfg.get("use_bias", True))
    bidirectional = entry.class_name == "Bidirectional"
    if bidirectional:
        back = entry.backward_config or cfg
        if source.inferred is not None:  # the flags set both directions
            back = {**back, **{k: cfg[k] for k in ("recurrent_activation", "activation")}}
        if entry.backward_config is not None and config_activations(back, major, where) != acts:
            raise ModelError(f"{where}: the backward layer's activations differ from the forward's")
        if bool(cfg.get("go_backwards")) or (
            entry.backward_config is not None and not entry.backward_config.get("go_backwards", True)
        ):
            raise ModelError(f"{where}: a Bidirectional whose forward layer runs backwards")
    if source.layout == "v3":
        if bidirectional:
            parts = [
                _triple(_vars_v3(source.weights, f"{entry.v3_path}/{side}", sub_name, where), use_bias, where)
                for side, sub_name in (
                    ("forward_layer", cfg.get("name")),
                    ("backward_layer", (entry.backward_config or {}).get("name")),
                )
            ]
        else:
            parts = [_triple(_vars_v3(source.weights, entry.v3_path, entry.name, where), use_bias, where)]
    else:
        parts = _split_legacy(_vars_legacy(source.weights, entry.name, where), bidirectional, use_bias, where)
    fwd = direction_from_kernels(*parts[0], where, notes)
    rev = direction_from_kernels(*parts[1], where + " rev", notes) if bidirectional else None
    go_backwards = bool(cfg.get("go_backwards")) and not bidirectional
    if go_backwards:
        notes.append(
            f"{entry.name}: go_backwards=True, the layer runs over the sequence from the end "
            "(Keras returns its outputs in that reversed order)"
        )
    if bidirectional and entry.merge_mode != "concat":
        notes.append(
            f"{entry.name}: Bidirectional merge_mode={entry.merge_mode!r}; lstm_doctor reports "
            "the two directions separately (their concatenation as the encoding)"
        )
    # Keras returns a go_backwards layer's sequence in processing order
    return Layer(fwd, rev, acts, go_backwards=go_backwards, output_reversed=go_backwards), stated


def _stackable(entries: list[Entry], containers: dict[int, list[dict]]) -> bool:
    for prev, nxt in zip(entries, entries[1:]):
        if prev.container != nxt.container or nxt.index <= prev.index:
            return False
        layers = containers[prev.container]
        between = layers[prev.index + 1 : nxt.index]
        if any(cfg.get("class_name") not in IDENTITY_CLASSES for cfg in between):
            return False
        if nxt.inbound is not None:
            expected = _layer_name(between[-1]) if between else prev.name
            if nxt.inbound != expected:
                return False
        if not prev.config.get("return_sequences", False):
            return False
    return True


def declared_masking(entry: Entry, containers: dict[int, list[dict]]) -> tuple[str | None, float | None]:
    """A ``Masking`` or ``Embedding(mask_zero=True)`` before the first LSTM, in its model."""
    for cfg in containers[entry.container][: entry.index]:
        cls, inner = cfg.get("class_name"), cfg.get("config", {}) or {}
        if cls == "Masking":
            value = float(inner.get("mask_value", 0.0))
            return f"Masking(mask_value={value:g})", value
        if cls == "Embedding" and inner.get("mask_zero"):
            return "Embedding(mask_zero=True)", None
    return None, None


def _select(entries: list[Entry], containers, options) -> list[Entry]:
    if not entries:
        raise ModelError("no LSTM layer in the model config")
    if options.layer_name is not None:
        chosen = [e for e in entries if options.layer_name in (e.name, e.config.get("name"))]
        if not chosen:
            raise ModelError(
                f"no LSTM layer named {options.layer_name!r}; found: "
                + ", ".join(repr(e.name) for e in entries)
            )
        return chosen[:1]
    if len(entries) == 1 or _stackable(entries, containers):
        return entries
    raise ModelError(
        f"{len(entries)} LSTM layers that do not feed each other directly ("
        + ", ".join(repr(e.name) for e in entries)
        + "); choose one with --layer-name"
    )


def load(path: Path, options) -> LSTMModel:
    if options.preset is not None:
        raise ConfigError(f"--preset {options.preset} does not apply to Keras files")
    try:
        with budget.file_allowance():  # every dataset of this load: one running total
            return _load(path, options)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"a damaged .keras archive: {exc}") from None
    except RecursionError:  # a RuntimeError too, but the cause is the JSON, not the HDF5
        raise ModelError("the Keras config is nested too deeply to be a model") from None
    except RuntimeError as exc:  # h5py reports damaged HDF5 structures so
        raise ModelError(f"damaged HDF5 data: {str(exc).splitlines()[0][:200]}") from None


def _check_config_shape(config: Any) -> None:
    """Every ``"config"`` in the architecture is an object (or a legacy list of layers).

    Walked without recursion, so a deeply nested file cannot exhaust the stack.
    """
    stack, seen = [(config, "the config")], 0
    while stack:
        node, where = stack.pop()
        seen += 1
        if seen > 1_000_000:
            raise ModelError("the Keras config has over a million entries")
        if isinstance(node, dict):
            if "config" in node and not isinstance(node["config"], (dict, list)):
                kind = "null" if node["config"] is None else type(node["config"]).__name__
                name = node.get("class_name")
                name = name[:60] if isinstance(name, str) else "a layer"
                raise ModelError(f'the "config" of {name} is {kind}, expected an object')
            stack.extend((v, where) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, where) for v in node)
    if not isinstance(config, dict):
        raise ModelError(f"the Keras config is a {type(config).__name__}, expected an object")


def _load(path: Path, options) -> LSTMModel:
    source = open_source(path)
    try:
        _check_config_shape(source.config)
        entries, containers = walk(source.config)
        chosen = _select(entries, containers, options)
        major, version_note = keras_major(source)
        notes = ["Keras gate order i, f, c, o; unit_forget_bias is already in the stored bias"]
        if version_note:
            notes.append(version_note)
        layers, per_layer = [], []
        for k, entry in enumerate(chosen):
            layer, stated = _layer(entry, source, major, notes, options)
            per_layer += [(f"l{k}:{item}", value, src) for item, value, src in stated]
            if k < len(chosen) - 1:
                if entry.merge_mode not in (None, "concat"):
                    raise ModelError(
                        f"layer {entry.name!r} merges its directions with {entry.merge_mode!r} "
                        "and feeds another LSTM; only merge_mode='concat' can be stacked"
                    )
            layers.append(layer)
    finally:
        source.close()
    if source.keras_version:
        notes.append(f"saved by Keras {source.keras_version}")
    stated = tuple(dict.fromkeys(n[1:] for n in notes if isinstance(n, tuple))) + tuple(per_layer)
    notes = [n for n in notes if not isinstance(n, tuple)] + source.notes
    masking, mask_value = declared_masking(chosen[0], containers)
    if masking:
        notes.append(
            f"the model masks its inputs ({masking}): Keras skips masked steps, carrying h and c over them; "
            "pass --mask (steps whose features all equal the mask value) or --lengths with --padding pre|post"
        )
    return LSTMModel(
        layers=tuple(layers),
        name=chosen[0].name if len(chosen) == 1 else _layer_name(source.config),
        source_format="keras",
        source_files=tuple(source.files),
        stored_gate_order="ifco",
        input_layout="btd",
        notes=tuple(notes),
        masking=masking,
        mask_value=mask_value,
        assumptions=stated,
    )
