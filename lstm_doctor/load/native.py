"""The native format: an ``.npz`` of arrays plus a TOML spec (``lstm.toml``).

Example spec (all keys but ``weights`` are optional; defaults shown)::

    [model]
    name = "encoder"
    weights = "weights.npz"      # relative to the spec's folder
    gate_order = "ifgo"          # order of the 4 stacked blocks in W, U, b
    input_layout = "btd"         # btd | tbd | bct (channels-first conv output)
    dtype = "float32"            # optional: cast to float32 or float64
    notes = []                   # free text kept in reports (e.g. fixes applied)

    [activations]                # for every layer, unless a layer overrides
    gate = "sigmoid"
    candidate = "tanh"
    cell_output = "tanh"

    [[layers]]                   # one table per layer, bottom first
    W = "W"                      # array names in the .npz; defaults shown for
    U = "U"                      # a one-layer model: "W", "U", "b", and
    b = "b"                      # "peephole", "h0", "c0" when present
    # peephole = "peephole"      # (3, H): rows p_i, p_f, p_o
    # projection = "projection"  # (H, P): h_t = (o ⊙ tanh c_t)·R (LSTMP); U is then (P, 4H), h0 (P,)
    # clip = 3.0                 # clip pre-activations to [-clip, clip]
    # go_backwards = false       # one direction, run from the last step (reported "rev")
    # output_reversed = false    # go_backwards: outputs handed on last step first (Keras)
    # [layers.rev]               # backward direction of a bidirectional layer
    # W = "W_rev"  ...
    # [layers.activations]       # override for this layer

With several layers the default names are ``l{k}.W`` etc., and ``l{k}.rev.W``
for the backward direction.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from lstm_doctor.errors import ConfigError, ModelError
from lstm_doctor.load.npyfile import load_npz
from lstm_doctor.model import (
    Activations,
    Layer,
    LSTMModel,
    make_direction,
    reorder_gates,
)

SPEC_NAME = "lstm.toml"
ROLES = ("W", "U", "b", "peephole", "h0", "c0", "projection")
REQUIRED = ("W", "U")


def spec_path(path: Path) -> Path:
    return path / SPEC_NAME if path.is_dir() else path


def sniff(path: Path) -> bool:
    path = spec_path(path)
    return path.suffix == ".toml" and path.is_file()


def read_spec(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("spec is not UTF-8 text", path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path) from None


def _table(spec: dict, key: str, path: Path) -> dict:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table", path)
    return value


def _allowed(table: dict, allowed: set[str], where: str, path: Path):
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key {where}{unknown[0]!r}; allowed: {', '.join(sorted(allowed))}", path
        )


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The weights .npz, each member's declared size checked against the budget first."""
    if not path.is_file():
        raise ModelError("weights file not found", path)
    return load_npz(path)


def load(path: Path, options) -> LSTMModel:
    spec_file = spec_path(path)
    if not spec_file.is_file():
        raise ConfigError(f"no {SPEC_NAME} in this folder", path)
    spec = read_spec(spec_file)
    _allowed(spec, {"model", "activations", "layers"}, "", spec_file)
    meta = _table(spec, "model", spec_file)
    _allowed(
        meta,
        {"name", "weights", "gate_order", "input_layout", "dtype", "notes"},
        "model.",
        spec_file,
    )
    if "weights" not in meta:
        raise ConfigError("missing key model.weights (the .npz file)", spec_file)
    weights_path = spec_file.parent / str(meta["weights"])
    gate_order = str(meta.get("gate_order", "ifgo"))
    dtype = meta.get("dtype")
    if dtype is not None and dtype not in ("float32", "float64"):
        raise ConfigError(f"model.dtype = {dtype!r}; expected \"float32\" or \"float64\"", spec_file)
    try:
        default_acts = Activations(**_table(spec, "activations", spec_file))
    except TypeError as exc:
        raise ConfigError(f"[activations]: {exc}", spec_file) from None
    except ConfigError as exc:
        raise ConfigError(f"[activations]: {exc.problem}", spec_file) from None

    layer_specs = spec.get("layers", [{}])
    if not isinstance(layer_specs, list) or not layer_specs:
        raise ConfigError("[[layers]] must be a non-empty array of tables", spec_file)

    arrays = read_npz(weights_path)
    multi = len(layer_specs) > 1
    layers = []
    for k, lspec in enumerate(layer_specs):
        _allowed(
            lspec, set(ROLES) | {"rev", "activations", "clip", "go_backwards", "output_reversed"},
            f"layers[{k}].", spec_file,
        )
        acts = default_acts
        if "activations" in lspec:
            try:
                acts = Activations(**{**default_acts.__dict__, **lspec["activations"]})
            except (TypeError, ConfigError) as exc:
                raise ConfigError(f"layers[{k}].activations: {exc}", spec_file) from None
        prefix = f"l{k}." if multi else ""
        fwd = _direction(lspec, prefix, arrays, gate_order, dtype, f"layer {k}", weights_path)
        rev = None
        if "rev" in lspec:
            rspec = lspec["rev"]
            _allowed(rspec, set(ROLES), f"layers[{k}].rev.", spec_file)
            rev = _direction(
                rspec, f"l{k}.rev.", arrays, gate_order, dtype, f"layer {k} rev", weights_path
            )
        clip = lspec.get("clip")
        flags = {}
        for key in ("go_backwards", "output_reversed"):
            value = lspec.get(key, False)
            if not isinstance(value, bool):
                raise ConfigError(f"layers[{k}].{key} must be true or false, not {value!r}", spec_file)
            flags[key] = value
        try:
            layers.append(Layer(fwd, rev, acts, None if clip is None else float(clip), **flags))
        except ModelError as exc:
            raise ConfigError(f"layers[{k}]: {exc}", spec_file) from None
    notes = meta.get("notes", [])
    return LSTMModel(
        layers=tuple(layers),
        name=str(meta.get("name", spec_file.parent.name)),
        source_format="native",
        source_files=(str(spec_file), str(weights_path)),
        stored_gate_order=gate_order,
        input_layout=str(meta.get("input_layout", "btd")),
        notes=tuple(str(n) for n in notes),
    )


def _direction(spec, prefix, arrays, gate_order, dtype, where, weights_path):
    found = {}
    for role in ROLES:
        name = spec.get(role, prefix + role)
        if name in arrays:
            found[role] = arrays[name]
        elif role in REQUIRED or role in spec:
            raise ModelError(f"{where}: array {name!r} ({role}) not in the .npz", weights_path)
    for role in ("W", "U", "b"):
        if role in found:
            arr = found[role]
            if arr.ndim == 0 or arr.shape[-1] % 4:
                raise ModelError(
                    f"{where}: {role} has shape {arr.shape}; its last axis must stack 4 gates",
                    weights_path,
                )
            found[role] = reorder_gates(arr, gate_order, axis=-1)
    return make_direction(**found, dtype=dtype, where=where)


def save(model: LSTMModel, folder: Path, notes: tuple[str, ...] = ()) -> Path:
    """Write ``model`` in the native format (canonical gate order) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    lines = [
        "[model]",
        f"name = {_toml_str(model.name)}",
        'weights = "weights.npz"',
        'gate_order = "ifgo"',
        f'input_layout = "{model.input_layout}"',
        "notes = [" + ", ".join(_toml_str(n) for n in model.notes + tuple(notes)) + "]",
        "",
    ]
    for k, layer in enumerate(model.layers):
        lines.append("[[layers]]")
        # Plain keys first: a sub-table header ends the layer's own keys. The
        # weights of a go_backwards layer live in ``forward`` (its direction is
        # reported "rev"); [layers.rev] is a bidirectional layer's backward one.
        for table, params in (("fwd", layer.forward), ("rev", layer.backward)):
            if params is None:
                continue
            prefix = f"l{k}." + ("rev." if table == "rev" else "")
            role_lines = []
            for role, arr in params.arrays().items():
                arrays[prefix + role] = arr
                role_lines.append(f'{role} = "{prefix + role}"')
            if table == "fwd":
                lines += role_lines
                if layer.clip is not None:
                    lines.append(f"clip = {layer.clip}")
                if layer.go_backwards:
                    lines.append("go_backwards = true")
                if layer.output_reversed:
                    lines.append("output_reversed = true")
                lines.append("[layers.activations]")
                for role in ("gate", "candidate", "cell_output"):
                    lines.append(f'{role} = "{getattr(layer.activations, role)}"')
            else:
                lines += ["[layers.rev]"] + role_lines
        lines.append("")
    np.savez(folder / "weights.npz", **arrays)
    (folder / SPEC_NAME).write_text("\n".join(lines), encoding="utf-8")
    return folder / SPEC_NAME


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
