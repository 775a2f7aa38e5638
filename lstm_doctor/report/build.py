"""Build the report: one JSON-able dict that every formatter reads.

The dict is built from data (model, capture statistics, findings), never from
rendered text. Floats are rounded to 6 significant digits and NaN/Inf become
null, so reports are deterministic and valid JSON; only ``created`` and the
optional ``timings`` (wall-clock seconds of timed stages, e.g. the
``--observed`` search) differ between two runs on the same inputs and
configuration. ``report/schema.json`` (JSON Schema 2020-12) describes the
dict; ``to_json`` writes it.

The statistics hold everything the plots draw (renderers compute nothing):
per (layer, direction) the per-gate saturation heatmap (units × steps, binned
to at most HEATMAP_UNITS × HEATMAP_STEPS), each unit's left / right saturated
share, per-step means and sample percentiles of h and c, and each term's share
of the pre-activation energy; for the encodings, the cosine matrix of the
first COSINE_SEQUENCES sequences.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lstm_doctor import __version__
from lstm_doctor.analyzers import RULES, Analysis, AnalysisConfig
from lstm_doctor.capture.pipeline import headline_metrics
from lstm_doctor.errors import UserError
from lstm_doctor.experiments.gradients import statistics
from lstm_doctor.findings import Severity
from lstm_doctor.frontend import frontend_stats
from lstm_doctor.model import FORMAT_FIXES, GATES, SIGMOID_GATES, LSTMModel
from lstm_doctor.report.diagnosis import add_diagnosis
from lstm_doctor.stats import input_energy_share, input_variance_share

SCHEMA_VERSION = "1.1"  # 1.1: ``diagnosis``, ``summary.failing`` and ``summary.exit_forced``


def envelope(created: str | None = "now", **head: Any) -> dict[str, Any]:
    """The head every JSON document of lstm-doctor starts with: ``head`` (e.g. its
    ``kind`` or ``command``), the schema version, the tool, and when it was made
    (``created``: an ISO timestamp, "now", or None for a document without one)."""
    doc = {**head, "schema_version": SCHEMA_VERSION, "tool": {"name": "lstm-doctor", "version": __version__}}
    if created is not None:
        doc["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds") if created == "now" else created
    return doc
PER_STEP_LIMIT = 512  # per-step series longer than this are not stored in full
HEATMAP_UNITS = 64  # saturation heatmaps: at most this many unit bins ...
HEATMAP_STEPS = 128  # ... and step bins (bins average adjacent units / steps)
COSINE_SEQUENCES = 64  # the cosine matrix covers the first sequences of the sample
PERCENTILES = (5, 25, 50, 75, 95)


def clean(value: Any) -> Any:
    """Make ``value`` JSON-able and deterministic (numpy → Python, 6 significant digits)."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean_array(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _round6(float(value))
    if isinstance(value, Severity):
        return value.name
    return value


def _round6(v: float) -> float | None:
    return float(f"{v:.6g}") if math.isfinite(v) else None


def _clean_array(value: np.ndarray) -> list:
    """``clean`` of an array, without a recursive call per element (reports hold
    per-step tables of thousands of values)."""
    if value.ndim > 1:
        return [_clean_array(row) for row in value]
    if value.dtype.kind == "f":
        if np.isfinite(value).all():  # _round6 inlined: 57,000 calls per report at B = 256, T = 150
            return [float(f"{v:.6g}") for v in value.tolist()]
        return [_round6(v) for v in value.tolist()]
    if value.dtype.kind in "iub":
        return value.tolist()
    return [clean(v) for v in value.tolist()]


def read_json(path: str, missing: str, unreadable: str) -> Any:
    """The JSON document in ``path`` (a report, a check output, a baseline), or a
    ``UserError`` naming the file: ``missing`` when there is none, ``unreadable:
    why`` when it cannot be read or parsed (nesting too deep included)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(missing, path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{unreadable}: {exc}", path) from None
    except RecursionError:
        raise UserError(f"{unreadable}: JSON nested too deeply", path) from None


def to_json(value: Any, indent: int = 2) -> str:
    """JSON text of a cleaned report, as ``json.dumps(indent=2)`` but with every
    list of scalars on one line (per-step series, matrix rows), so that a
    report stays readable and small. Deterministic for a given value."""
    def scalars(v: list) -> bool:
        # isinstance on the distinct types, not on every item (series of thousands of floats)
        return not any(issubclass(t, (dict, list)) for t in set(map(type, v)))

    def enc(v: Any, level: int) -> str:
        pad, inner = " " * (indent * level), " " * (indent * (level + 1))
        if isinstance(v, dict):
            if not v:
                return "{}"
            items = (f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {enc(x, level + 1)}" for k, x in v.items())
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(v, list):
            if scalars(v):
                # one C-encoder call: the same text as joining json.dumps of each item with ", "
                return json.dumps(v, ensure_ascii=False)
            return "[\n" + ",\n".join(inner + enc(x, level + 1) for x in v) + "\n" + pad + "]"
        return json.dumps(v, ensure_ascii=False, allow_nan=False)

    return enc(value, 0) + "\n"


def file_identity(path: str) -> dict[str, Any]:
    p = Path(path)
    digest = hashlib.sha256()
    try:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return {"path": str(path), "sha256": digest.hexdigest(), "bytes": p.stat().st_size}
    except OSError:
        return {"path": str(path), "sha256": None, "bytes": None}


def assumptions(model: LSTMModel, k: int, source=None) -> list[dict[str, str]]:
    """What the diagnosis of layer ``k`` assumed, and where each item came from.

    ``source`` ∈ {file, default, flag}: read from the model file, a default
    lstm_doctor (or the format) supplies, or given on the command line. The
    importers' own statements (``LSTMModel.assumptions``) win over the generic
    ones; the input layout, padding and masking come from the run's inputs.
    """
    layer = model.layers[k]
    preset = any("preset" in n for n in model.notes)
    fixes = FORMAT_FIXES.get(model.source_format, set())

    def origin(item):
        return "file" if item in fixes else "default"

    acts = layer.activations
    bias = "one bias per gate" if model.source_format in ("keras", "native") else "two biases summed"
    items = {
        "gate order": (model.stored_gate_order, origin("gate order")),
        "activations": (
            f"gate {acts.gate}, candidate {acts.candidate}, cell output {acts.cell_output}",
            "flag" if preset else origin("activations"),
        ),
        "bias layout": (bias, origin("bias layout")),
        "input layout": (model.input_layout, origin("input layout")),
        "padding and masking": ("none: every step is valid", "default"),
    }
    if layer.go_backwards:
        items["direction"] = ("runs from the last step (go_backwards / reverse)", "file")
    for item, value, src in model.assumptions:
        if item.startswith(f"l{k}:"):
            item = item[len(f"l{k}:"):]
        elif item[:1] == "l" and ":" in item:
            continue  # another layer's
        items[item] = (value, src)
    if "gate activation" in items:  # the importer said where each activation came from
        items.pop("activations", None)
    if source is not None:
        if source.layout_given:
            items["input layout"] = (source.layout, "flag")
        if getattr(source, "mask_value", None) is not None:
            items["padding and masking"] = (f"Keras mask: steps whose features all equal {source.mask_value:g}", "flag")
        elif source.lengths is not None:
            fixed = model.sequence_lengths is not None and any("sequence_lens" in n for n in source.notes)
            where = "pre" if getattr(source, "padding", "post") == "pre" else "post"
            items["padding and masking"] = (
                f"lengths given, padding {where}" if not fixed else "lengths: the file's sequence_lens",
                "file" if fixed else "flag",
            )
        elif model.masking:
            items["padding and masking"] = (f"none, although the model declares {model.masking}", "default")
    return [{"item": i, "value": v, "source": src} for i, (v, src) in items.items()]


def describe_model(model: LSTMModel, source=None) -> dict[str, Any]:
    return {
        "name": model.name,
        "format": model.source_format,
        "files": [file_identity(f) for f in model.source_files],
        "dtype": str(model.dtype),
        "stored_gate_order": model.stored_gate_order,
        "input_layout": model.input_layout,
        "layers": [
            {
                "index": k,
                "D": layer.D,
                "H": layer.H,
                "directions": [d for d, _ in layer.directions()],
                "peepholes": layer.forward.peephole is not None,
                "clip": layer.clip,
                "activations": {
                    "gate": layer.activations.gate,
                    "candidate": layer.activations.candidate,
                    "cell_output": layer.activations.cell_output,
                },
                "equation": layer.equations(),
                "assumptions": assumptions(model, k, source),
                # P, the projected hidden state's units (PyTorch proj_size): only for LSTMP layers
                **({"projection": layer.P} if layer.projected else {}),
            }
            for k, layer in enumerate(model.layers)
        ],
        "notes": list(model.notes),
    }


def describe_inputs(capture) -> dict[str, Any]:
    src = capture.source
    st = capture.inputs
    return {
        "frontend": frontend_stats(src),
        "source": src.label,
        "file": file_identity(src.path) if src.path else None,
        "probe": src.probe,
        "layout": src.layout,
        "stored_shape": list(src.array.shape),
        "sequences": src.n_sequences,
        "T": src.T,
        "D": src.D,
        "lengths_given": src.lengths is not None,
        "notes": list(src.notes),
        "summary": {
            "mean": float(st.mean().mean()),
            "rms": float(np.sqrt(np.mean(st.sumsq_d / max(st.count, 1)))),
            "min": float(st.min_d.min()),
            "max": float(st.max_d.max()),
            "zero_share": st.zeros / max(st.count * st.D, 1),
            "nonfinite": st.nonfinite,
            "step_correlation": capture.step_correlation,
            "feature_correlation": capture.feature_correlation,
            # the sample sizes behind these statistics
            "values": int(st.count),
            "correlation_sample_sequences": int(capture.sample_inputs.shape[1]),
        },
    }


def _series(values: np.ndarray) -> list:
    return list(values[:PER_STEP_LIMIT])


def bin_edges(n: int, limit: int) -> np.ndarray:
    """``min(n, limit) + 1`` increasing edges that split ``range(n)`` into near-equal bins."""
    k = max(min(n, limit), 1)
    return np.linspace(0, n, k + 1).round().astype(np.int64)


def saturation_heatmap(gates: dict, valid_t: np.ndarray, H: int) -> dict[str, Any]:
    """Per gate, the share of sequences left- and right-saturated, (unit bins × step bins).

    A bin's value is its count of saturated (step, unit, sequence) values over
    its number of valid ones, so binning never changes the overall share.
    Rounded to 3 decimals to keep the report small.
    """
    T = len(valid_t)
    step_edges = bin_edges(T, HEATMAP_STEPS)
    unit_edges = bin_edges(H, HEATMAP_UNITS)
    den = np.add.reduceat(np.asarray(valid_t, np.float64), step_edges[:-1])[:, None] * np.diff(unit_edges)[None, :]

    def share(counts_tu: np.ndarray) -> np.ndarray:
        s = np.add.reduceat(np.asarray(counts_tu, np.float64), step_edges[:-1], axis=0)
        s = np.add.reduceat(s, unit_edges[:-1], axis=1)
        return np.round((s / np.maximum(den, 1)).T, 3)  # units × steps

    return {
        "unit_edges": unit_edges,
        "step_edges": step_edges,
        "gates": {g: {"left": share(gs.left_tu), "right": share(gs.right_tu)} for g, gs in gates.items()},
    }


def energy_shares(terms, bias: np.ndarray, H: int) -> dict[str, dict[str, float]]:
    """Per gate block, each term's share of the pre-activation energy (mean square).

    E[(x·W)²], E[(h·U)²], E[(p·c)²] and mean b², each over their sum (cross
    terms left out), as in ``analyzers.inputs.input_energy_share``.
    """
    parts = {
        "input": terms.mean_square("input"),
        "recurrent": terms.mean_square("recurrent"),
        "peephole": terms.mean_square("peephole"),
        "bias": (np.asarray(bias, dtype=np.float64).reshape(4, H) ** 2).mean(axis=1),
    }
    total = sum(parts.values())
    safe = np.where(total > 0, total, 1)
    return {
        g: {name: float(v[k] / safe[k]) if total[k] > 0 else None for name, v in parts.items()}
        for k, g in enumerate(GATES)
    }


def row_percentiles(rows: np.ndarray, percentiles) -> np.ndarray:
    """``np.nanpercentile(rows, percentiles, axis=1)``, the same numbers, faster: (len(percentiles), rows)."""
    if np.isnan(rows).any():
        return np.nanpercentile(rows, percentiles, axis=1)
    # without NaN, percentile is the same numbers (nanpercentile goes row by row in Python: 0.1 s here)
    if _mixed_zeros(rows):
        return np.percentile(rows, percentiles, axis=1)
    # the same order statistics, so the same numbers: NumPy's SIMD sort and a partition
    # of sorted rows take 35 ms at 150 × 16,384, a partition of the raw rows 100 ms
    return np.percentile(np.sort(rows, axis=1), percentiles, axis=1, overwrite_input=True)


def _mixed_zeros(a: np.ndarray) -> bool:
    """Whether ``a`` holds both 0.0 and −0.0: which of two equal keys a sort and a
    partition put first differs, and a percentile on a zero would change sign."""
    zeros = a[a == 0]
    if zeros.size == 0:
        return False
    negative = np.signbit(zeros)
    return bool(negative.any() and not negative.all())


def layer_statistics(capture) -> list[dict[str, Any]]:
    """Per (layer, direction): what the summaries and plots are drawn from."""
    out = []
    for (k, d), st in capture.directions.items():
        params = dict(capture.model.layers[k].directions())[d]
        total = max(st.n_values * st.H, 1)
        per_step_den = np.maximum(st.valid_t * st.H, 1)
        gates = {}
        for g in SIGMOID_GATES:
            gs = st.gates[g]
            unit_sat = (gs.left_tu + gs.right_tu).sum(axis=0) / max(st.n_values, 1)
            gates[g] = {
                "saturated": float((gs.left_tu.sum() + gs.right_tu.sum()) / total),
                "left": float(gs.left_tu.sum() / total),
                "right": float(gs.right_tu.sum() / total),
                "units_saturated_90pct": int((unit_sat >= 0.9).sum()),
                "saturated_per_step": _series((gs.left_tu + gs.right_tu).sum(axis=1) / per_step_den),
                # per unit: share of its valid values left / right saturated (Karpathy et al. 2015, fig. 3)
                "unit_left": np.round(gs.left_tu.sum(axis=0) / max(st.n_values, 1), 4),
                "unit_right": np.round(gs.right_tu.sum(axis=0) / max(st.n_values, 1), 4),
            }
        h_sample = capture.sample[(k, d)].get("h")
        c_sample = capture.sample[(k, d)].get("c")
        pct = {}
        for name, arr in (("h", h_sample), ("c", c_sample)):
            if arr is not None:
                rows = arr[:PER_STEP_LIMIT].reshape(min(arr.shape[0], PER_STEP_LIMIT), -1)
                q = row_percentiles(rows, PERCENTILES)
                pct[name] = {f"p{p}": _series(q[n]) for n, p in enumerate(PERCENTILES)}
        terms = st.terms
        out.append(
            {
                "layer": k,
                "direction": d,
                "T": st.T,
                "H": st.H,
                "sequences": st.n_sequences,
                "values": st.n_values,
                "gates": gates,
                "saturation_heatmap": saturation_heatmap(st.gates, st.valid_t, st.H),
                "mean_h_per_step": _series(st.mean_h_t()),
                "mean_c_per_step": _series(st.mean_c_t()),
                "mean_abs_c_per_step": _series(st.mean_abs_c_t()),
                "percentiles_from_sample": pct,
                "sample_sequences": int(h_sample.shape[1]) if h_sample is not None else 0,
                "max_abs_c": float(st.max_abs_c_t.max()),
                "hidden_at_bound": float(st.h_at_bound_t.sum() / total),
                "preactivation": {
                    "input_variance_share": dict(zip(GATES, input_variance_share(terms))),
                    "input_energy_share": dict(zip(GATES, input_energy_share(terms, params.b, st.H))),
                    "rms": {
                        term: dict(zip(GATES, np.sqrt(terms.mean_square(term))))
                        for term in ("input", "recurrent", "peephole", "total")
                    },
                    "rms_bias": dict(
                        zip(GATES, np.sqrt((np.asarray(params.b, np.float64).reshape(4, st.H) ** 2).mean(axis=1)))
                    ),
                    "energy_share": energy_shares(terms, params.b, st.H),
                },
            }
        )
    return out


def encoding_statistics(capture) -> dict[str, Any]:
    enc = capture.encoding
    sample = capture.sample_encodings
    norms = np.linalg.norm(sample, axis=1, keepdims=True)
    unit = sample / np.where(norms > 0, norms, 1)
    cos = unit @ unit.T
    off = cos[~np.eye(len(cos), dtype=bool)] if len(cos) > 1 else np.array([np.nan])
    if not np.isfinite(off).any():  # one sequence: no pair (and no All-NaN warning)
        off = np.array([np.nan, np.nan])
        quantiles = (float("nan"),) * 3
    else:
        quantiles = (float(np.nanmin(off)), float(np.nanmedian(off)), float(np.nanmax(off)))
    return {
        "sequences": enc.n,
        "size": enc.E,
        "mean_pairwise_cosine": enc.mean_pairwise_cosine(),
        "cross_input_std": enc.cross_input_std(),
        "mean_abs": enc.mean_abs(),
        "effective_rank": enc.effective_rank(),
        "cosine_matrix_sample": {
            "sequences": int(len(cos)),
            "min": quantiles[0],
            "p50": quantiles[1],
            "max": quantiles[2],
        },
        # the first COSINE_SEQUENCES sequences' pairwise cosines (4 decimals), for the plot
        "cosine_matrix": np.round(cos[:COSINE_SEQUENCES, :COSINE_SEQUENCES], 4),
    }


def effective_thresholds(config: AnalysisConfig) -> dict[str, dict[str, float]]:
    return {
        code: {**rule.thresholds, **config.thresholds.get(code, {})}
        for code, rule in sorted(RULES.items())
        if rule.thresholds
    }


def engine_name(capture) -> str:
    """The engine that computed the capture: numpy, fused, or the symbolic
    library under the scan (pytensor, or theano when that is what ran)."""
    engine = getattr(capture, "engine", "") or capture.options.engine
    if engine == "pytensor":
        from lstm_doctor.capture.symbolic.backend import NAME

        return NAME
    return engine


def build_report(
    model: LSTMModel,
    analysis: Analysis,
    *,
    capture=None,
    config: AnalysisConfig | None = None,
    fail_on: Severity = Severity.error,
    exit_code: int = 0,
    created: str | None = None,
    exit_zero: bool = False,
) -> dict[str, Any]:
    """The whole diagnosis as a JSON-able dict (schema ``SCHEMA_VERSION``).

    ``exit_zero``: --exit-zero was given, so ``summary.exit_forced`` records that an
    exit code of 0 does not mean that nothing reached ``fail_on``. The ``diagnosis``
    section (``report/diagnosis.py``) is computed here, once, from the findings."""
    config = config or AnalysisConfig()
    timings = stage_timings(capture) if capture is not None else {}
    counts = {s.name: sum(f.severity == s for f in analysis.findings) for s in reversed(Severity)}
    worst = max((f.severity for f in analysis.findings), default=None)
    report = {
        **envelope(created or "now"),
        **({"timings": timings} if timings else {}),
        "model": describe_model(model, capture.source if capture is not None else None),
        "inputs": describe_inputs(capture) if capture is not None else None,
        "engine": engine_name(capture) if capture is not None else None,
        "config": {
            "select": list(config.select),
            "ignore": list(config.ignore),
            "fail_on": fail_on.name,
            "thresholds": effective_thresholds(config),
        },
        "findings": [f.as_dict() for f in analysis.findings],
        "not_evaluated": dict(sorted(analysis.skipped.items())),
        "summary": {
            **counts,
            "worst": worst.name if worst else None,
            "exit_code": exit_code,
            # findings at or above fail_on, and whether --exit-zero forced the exit code to 0
            "failing": sum(f.severity >= fail_on for f in analysis.findings),
            "exit_forced": bool(exit_zero and any(f.severity >= fail_on for f in analysis.findings)),
            "headline": headline_metrics(capture) if capture is not None else None,
        },
        "statistics": {
            "layers": layer_statistics(capture),
            "encoding": encoding_statistics(capture),
            **differential_statistics(capture),
        }
        if capture is not None
        else None,
    }

    return add_diagnosis(clean(report))


def stage_timings(capture) -> dict[str, float]:
    """The report's top-level ``timings``: wall-clock seconds of the timed stages that ran
    (``observed_search_seconds`` with ``--observed``); empty when none did.

    Like ``created``, they differ between two identical runs, so they live here and
    nowhere else: never in the statistics, findings or evidence, which stay deterministic.
    """
    timings: dict[str, float] = {}
    observed = getattr(capture, "observed", None)
    if observed is not None:
        timings["observed_search_seconds"] = observed.seconds
    return timings


def differential_statistics(capture) -> dict[str, Any]:
    """``gradients`` (--gradients) and ``observed`` (--observed) sections, when they ran.
    Counts only, no timings (those are in ``stage_timings``), so that reports stay
    byte-identical between runs."""
    out: dict[str, Any] = {}
    g = getattr(capture, "gradients", None)
    if g is not None:
        out["gradients"] = statistics(g)
    r = getattr(capture, "observed", None)
    if r is not None:
        declared = r.declared.config
        out["observed"] = {
            **r.observed,
            "candidates": r.candidates,
            "candidates_full": r.candidates_full,
            "scale": r.scale,
            "tolerance": r.tolerance,
            "declared": r.declared.summary(declared, r.candidate_activation),
            "ranking": [f.summary(declared, r.candidate_activation) for f in r.ranking[:5]],
        }
    return out
