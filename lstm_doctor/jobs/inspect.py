"""``lstm-doctor inspect MODEL``: what was loaded, before anything is run.

``describe(model)`` returns a JSON-able dict: where the weights came from, every
layer and direction with D, H, activations, peepholes, clip and dtype, the
gate order the file stored, the importer's notes, and statistics of every
array (shape, mean, std, min, max, fraction positive) — for W, U and b also
per gate block, in the canonical order i, f, g, o. ``render_text`` lays the
same data out as plain text with one compact table per direction. It formats
only; every number comes from ``describe``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from lstm_doctor.jobs.selection import ModelSelection, open_model
from lstm_doctor.model import GATES, PEEPHOLE_GATES, DirectionParams, LSTMModel
from lstm_doctor.output import escape_controls_in
from lstm_doctor.report.build import assumptions

ROLES = ("W", "U", "b", "peephole", "projection", "h0", "c0")


def array_stats(array: np.ndarray) -> dict:
    """Shape and summary statistics of the finite values (JSON-able)."""
    a = np.asarray(array, dtype=np.float64)
    finite = a[np.isfinite(a)]
    out = {"shape": list(a.shape), "size": int(a.size), "nonfinite": int(a.size - finite.size)}
    if finite.size:
        out.update(
            mean=float(finite.mean()),
            std=float(finite.std()),
            min=float(finite.min()),
            max=float(finite.max()),
            frac_positive=float((finite > 0).mean()),
        )
    else:
        out.update(mean=None, std=None, min=None, max=None, frac_positive=None)
    return out


def _direction(params: DirectionParams) -> dict:
    arrays = {}
    for role in ROLES:
        arr = params.arrays().get(role)
        if arr is None:
            continue
        entry = array_stats(arr)
        if role in ("W", "U", "b"):
            entry["gates"] = {g: array_stats(params.gate_block(arr, g)) for g in GATES}
        elif role == "peephole":
            entry["gates"] = {g: array_stats(arr[k]) for k, g in enumerate(PEEPHOLE_GATES)}
        arrays[role] = entry
    return {
        "D": params.D,
        "H": params.H,
        "dtype": str(params.dtype),
        "peepholes": params.peephole is not None,
        "arrays": arrays,
    }


def describe(model: LSTMModel) -> dict:
    """Everything ``inspect`` reports about ``model``, as plain JSON-able data."""
    layers = []
    for k, layer in enumerate(model.layers):
        layers.append(
            {
                "index": k,
                "D": layer.D,
                "H": layer.H,
                **({"P": layer.P} if layer.projected else {}),  # proj_size (LSTMP)
                "bidirectional": layer.bidirectional,
                "go_backwards": layer.go_backwards,
                "output_reversed": layer.output_reversed,
                "activations": {
                    "gate": layer.activations.gate,
                    "candidate": layer.activations.candidate,
                    "cell_output": layer.activations.cell_output,
                    "equations": layer.equations(),
                },
                "clip": layer.clip,
                "peepholes": any(p.peephole is not None for _, p in layer.directions()),
                "directions": {name: _direction(params) for name, params in layer.directions()},
                # what the file leaves open and lstm_doctor supplied (a run's inputs may settle
                # padding and masking, so those are the report's to say)
                "assumed": {
                    a["item"]: a["value"]
                    for a in assumptions(model, k)
                    if a["source"] == "default" and a["item"] != "padding and masking"
                },
            }
        )
    return {
        "name": model.name,
        "format": model.source_format,
        "files": list(model.source_files),
        "stored_gate_order": model.stored_gate_order,
        "canonical_gate_order": "".join(GATES),
        "input_layout": model.input_layout,
        "dtype": str(model.dtype),
        "D": model.D,
        "output_size": model.output_size,
        "n_layers": len(model.layers),
        "layers": layers,
        "notes": list(model.notes),
    }


def _num(value, width: int = 9) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:{width}.3g}"


_HEADER = f"    {'array':<12} {'shape':>12} " + " ".join(
    f"{k:>9}" for k in ("mean", "std", "min", "max")
) + f" {'>0':>7}"


def _row(label: str, shape, stats: dict) -> str:
    return (
        f"    {label:<12} {shape:>12} "
        + " ".join(_num(stats[k]) for k in ("mean", "std", "min", "max"))
        + f" {_num(None if stats['frac_positive'] is None else 100 * stats['frac_positive'], 6)}%"
        + (f"  ({stats['nonfinite']} non-finite)" if stats["nonfinite"] else "")
    )


def render_text(description: dict) -> str:
    """Plain text for a terminal: a header, one table per (layer, direction), notes."""
    d = description
    lines = [
        f"{d['name']}  ({d['format']}: {', '.join(d['files']) or '-'})",
        f"  {d['n_layers']} layer(s), input D={d['D']}, output {d['output_size']}, "
        f"dtype {d['dtype']}, input layout {d['input_layout']}",
        f"  gate order stored {d['stored_gate_order']} -> canonical {d['canonical_gate_order']}",
    ]
    for layer in d["layers"]:
        acts = layer["activations"]
        kind = "bidirectional" if layer["bidirectional"] else (
            "go_backwards" if layer["go_backwards"] else "forward"
        )
        if layer.get("output_reversed"):
            kind += " (outputs handed on last step first)"
        lines.append("")
        lines.append(
            f"layer {layer['index']}: D={layer['D']} H={layer['H']}"
            + (f" P={layer['P']} (projection)" if layer.get("P") else "") + f" {kind}; "
            f"gate {acts['gate']}, candidate {acts['candidate']}, cell output {acts['cell_output']}"
            f"; peepholes {'yes' if layer['peepholes'] else 'no'}"
            + (f"; clip {layer['clip']:g}" if layer["clip"] is not None else "")
        )
        if layer.get("assumed"):
            lines.append("  assumed (the file does not say): "
                         + "; ".join(f"{item} {value}" for item, value in layer["assumed"].items()))
        for direction, info in layer["directions"].items():
            lines.append(f"  {direction}:")
            lines.append(_HEADER)
            for role, stats in info["arrays"].items():
                shape = "x".join(str(s) for s in stats["shape"])
                if "gates" in stats:
                    for gate, gstats in stats["gates"].items():
                        gshape = "x".join(str(s) for s in gstats["shape"])
                        lines.append(_row(f"{role}[{gate}]", gshape, gstats))
                else:
                    lines.append(_row(role, shape, stats))
    if d["notes"]:
        lines.append("")
        lines.append("notes:")
        lines += [f"  - {note}" for note in d["notes"]]
    return "\n".join(lines) + "\n"


@dataclass(kw_only=True)
class InspectOptions(ModelSelection):
    format: str = "text"  # text | json


def execute(options: InspectOptions) -> int:
    description = describe(open_model(options))
    if options.format == "json":
        print(json.dumps(description, indent=2, ensure_ascii=False))
    else:
        print(render_text(escape_controls_in(description)))  # names from the file: no raw ESC to the terminal
    return 0
