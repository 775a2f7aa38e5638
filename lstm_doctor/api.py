"""The Python API: ``lstm_doctor.diagnose(model, batch)`` → ``Report``.

One call diagnoses either

- a **live model**: a ``torch.nn.Module`` or a ``keras.Model``, with what its
  ``forward`` (or ``__call__``) takes. The model runs once on that batch; every
  ``nn.LSTM`` / ``nn.LSTMCell`` (PyTorch) or ``LSTM`` / ``Bidirectional(LSTM)``
  layer (Keras) is found, the input the framework really handed to it is
  recorded (with its lengths or mask and its initial state), its parameters
  are converted to the canonical model by the file importers' converters, and
  the instrumented capture runs on that input. The capture is checked against
  the module's own outputs (max |Δ| ≤ 1e-5, stated in the report's model
  notes and in ``Report.parity``). Each LSTM is named by its module path
  (``encoder.rnn``, ``model.layers[2]``).
- a **file**: any model the CLI reads (``.pt``, ``.keras``, ``lstm.toml``, ...),
  with ``inputs`` as an array or a path. This is ``lstm-doctor diagnose``.

Both routes build a ``jobs.diagnose.DiagnoseOptions`` and run
``jobs.diagnose.run_diagnosis``: the CLI's job, so findings, thresholds and
the report are the CLI's. torch and keras are imported only when such an
object is passed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from html import escape
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lstm_doctor.errors import UserError
from lstm_doctor.jobs.diagnose import DiagnoseOptions, open_model, run_diagnosis
from lstm_doctor.live import ArrayInputs, match, parity, parity_note
from lstm_doctor.live import keras as live_keras
from lstm_doctor.live import torch as live_torch
from lstm_doctor.output import check_output_path, write_atomic
from lstm_doctor.report import RenderOptions, render_many, to_json
from lstm_doctor.report import html as page

__all__ = ["diagnose", "Report"]

DEFAULT_LIVE_SAMPLE = 64  # the capture keeps at least the whole batch in full, for parity


@dataclass
class Report:
    """The result of ``diagnose``: one CLI report per LSTM diagnosed.

    ``reports`` maps each module path (a file route: the model's name) to its
    report dict, exactly what ``lstm-doctor diagnose --format json`` writes
    (``lstm_doctor/report/schema.json``). ``parity`` maps each live module to
    its parity check: ``{"max_abs_diff", "values", "sequences", "tolerance",
    "ok"}``. ``skipped`` maps modules that were found but not diagnosed to the
    reason.
    """

    reports: dict[str, dict] = field(default_factory=dict)
    parity: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        """The module paths diagnosed, in the model's order."""
        return list(self.reports)

    @property
    def findings(self) -> list[dict]:
        """Every finding, each the report's finding dict plus ``"module"``: the module path."""
        return [{"module": name, **f} for name, r in self.reports.items() for f in r["findings"]]

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 1 when a finding reaches ``fail_on`` in any module, else 0."""
        return max((r["summary"]["exit_code"] for r in self.reports.values()), default=0)

    @property
    def headline(self) -> dict[str, dict]:
        """Per module, the headline metrics (saturated share, max |c|, encoding cosine, ...)."""
        return {name: r["summary"]["headline"] for name, r in self.reports.items()}

    def metrics(self) -> dict[str, float]:
        """Flat scalars for a training logger, ``"{module}/{metric}"`` → value.

        Per module: ``saturated_i``, ``saturated_f``, ``saturated_o`` (share of the
        gate's values < 0.1 or > 0.9, over every layer and direction), ``max_abs_c``,
        ``encoding_cosine`` (mean pairwise cosine of the final encodings),
        ``input_variance_share`` (layer 0's input share of the pre-activation
        variance, mean over gates), ``errors`` and ``warnings`` (finding counts).
        """
        out: dict[str, float] = {}
        for name, r in self.reports.items():
            layers = (r.get("statistics") or {}).get("layers") or []
            weights = [max(st["values"] * st["H"], 1) for st in layers]
            for g in ("i", "f", "o"):
                share = sum(st["gates"][g]["saturated"] * w for st, w in zip(layers, weights))
                out[f"{name}/saturated_{g}"] = float(share / max(sum(weights), 1))
            head = r["summary"]["headline"] or {}
            out[f"{name}/max_abs_c"] = _num(head.get("max_abs_cell"))
            out[f"{name}/encoding_cosine"] = _num(head.get("mean_pairwise_cosine"))
            out[f"{name}/input_variance_share"] = _num(head.get("input_variance_share"))
            out[f"{name}/errors"] = float(r["summary"]["error"])
            out[f"{name}/warnings"] = float(r["summary"]["warning"])
        return out

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON (written atomically to ``path`` when given).

        One module: the CLI's JSON report. Several: ``{"modules": {path: report}, "parity": ...,
        "skipped": ...}``.
        """
        if len(self.reports) == 1 and not self.skipped:
            text = to_json(next(iter(self.reports.values())))
        else:
            text = to_json({"modules": self.reports, "parity": self.parity, "skipped": self.skipped})
        return _write(text, path)

    def to_html(self, path: str | os.PathLike | None = None) -> str:
        """The self-contained HTML report (``--format html``), written atomically to ``path`` when given."""
        text = render_many("html", list(self.reports.values()), RenderOptions(output=None if path is None else str(path)))
        return _write(text, path)

    def to_text(self, width: int = 110, color: bool = False) -> str:
        """The terminal report (``--format text``) of every module, one after the other."""
        text = render_many("text", list(self.reports.values()), RenderOptions(color=color, width=width))
        for name, why in self.skipped.items():
            text += f"not diagnosed: {name}: {why}\n"
        return text

    def __str__(self) -> str:
        return self.to_text()

    def __rich__(self):
        from rich.text import Text

        return Text.from_ansi(self.to_text(color=True))

    def _repr_html_(self) -> str:
        """Jupyter: the HTML report without plots and rule texts (``to_html`` has them), in an iframe
        so that its CSS stays inside."""
        names = page._rule_names()
        body = "".join(
            page._header(r) + page._overview(r) + page._headline(r) + "<h2>Findings</h2>"
            + page._findings(r, names) + page._saturation_table(r)
            for r in self.reports.values()
        )
        skipped = "".join(f"<p>not diagnosed: <code>{escape(k)}</code>: {escape(v)}</p>" for k, v in self.skipped.items())
        doc = page._page("lstm-doctor", body + skipped)
        return (
            f'<iframe srcdoc="{escape(doc, quote=True)}" style="width:100%;height:560px;border:1px solid #ddd">'
            "</iframe>"
        )


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _write(text: str, path) -> str:
    if path is not None:
        check_output_path(str(path), [])
        write_atomic(str(path), text)
    return text


def diagnose(
    model: Any,
    *args: Any,
    inputs: Any = None,
    lengths: Any = None,
    layout: str | None = None,
    layers: str | Iterable[str] | None = None,
    select: Sequence[str] = (),
    ignore: Sequence[str] = (),
    thresholds: Mapping[str, float] | Sequence[str] = (),
    fail_on: str = "error",
    engine: str = "auto",
    forward_kwargs: Mapping[str, Any] | None = None,
    sample_size: int | None = None,
    created: str | None = None,
    **file_options: Any,
) -> Report:
    """Diagnose a live model on a batch, or a model file on inputs; return a ``Report``.

    Live: ``diagnose(module, *args, forward_kwargs={...})`` runs ``module(*args, **forward_kwargs)``
    once (PyTorch: eval mode, ``torch.no_grad()``; Keras: ``model(*args, training=False)``)
    and diagnoses every LSTM it calls on the input it received: x (B, T, D) with its lengths
    (a ``PackedSequence`` or a Keras mask) and initial state.

    File: ``diagnose("encoder.pt", inputs=x)``, ``x`` an array (B, T, D) in ``layout`` (default:
    the model's) or a path (``.npy``, ``.npz``, texts); ``lengths`` an array (B,) or a path;
    ``file_options`` are further ``DiagnoseOptions`` fields (``layer_prefix``, ``layer_name``,
    ``model_format``, ``preset``, ``gate_activation``, ``go_backwards``, ``probe``, ``what_if``, ...). The first positional argument
    after a path is taken as ``inputs``.

    Filters, as the CLI's ``--select``/``--ignore`` (code prefixes, longest match wins); an
    entry ``"PATH:PREFIX"`` applies to the module at PATH only (``"encoder.rnn:S3"``).
    ``layers``: the module paths to diagnose (shell patterns, ``"encoder.*"``; default all).
    ``thresholds``: ``{"S301.share": 0.6}`` or ``["S301.share=0.6"]``.
    ``fail_on``: error | warning | info, for ``Report.exit_code``.
    """
    threshold_items = tuple(
        f"{k}={v}" for k, v in thresholds.items()
    ) if isinstance(thresholds, Mapping) else tuple(thresholds)
    common = dict(fail_on=fail_on, engine=engine, thresholds=threshold_items, progress=False, created=created)
    if isinstance(model, (str, os.PathLike)):
        if args:
            if inputs is not None or len(args) > 1:
                raise UserError("a model file takes one batch: pass it as inputs=")
            inputs = args[0]
        return _diagnose_file(str(model), inputs, lengths, layout, select, ignore, common, sample_size, file_options)
    if file_options:
        raise UserError(f"options for model files do not apply to a live model: {', '.join(sorted(file_options))}")
    if inputs is not None:
        args = (inputs, *args)

    found, skipped = _capture_live(model, args, dict(forward_kwargs or {}))
    wanted = _patterns(layers)
    report = Report(skipped={s.path: s.reason for s in skipped})
    for live in found:
        if wanted is not None and not any(match(live.path, p) for p in wanted):
            continue
        holder: dict = {}
        options = DiagnoseOptions(
            model=live.path,
            loaded_model=live.model,
            input_source=live.source,
            select=_scoped(select, live.path, "select"),
            ignore=_scoped(ignore, live.path, "ignore"),
            sample_size=max(sample_size or DEFAULT_LIVE_SAMPLE, live.source.n_sequences),
            on_capture=lambda result, live=live: holder.update(parity=parity(live, result), engine=result.engine),
            **common,
        )
        result = _run(options)
        check = holder["parity"]
        result["model"]["notes"].append(parity_note(live, check, holder["engine"]))
        report.reports[live.path] = result
        report.parity[live.path] = check
    if wanted is not None and not report.reports:
        raise UserError(f"no LSTM matches layers={sorted(wanted)}; found: {', '.join(f.path for f in found)}")
    return report


def _run(options) -> dict:
    return run_diagnosis(options)


def _patterns(layers) -> list[str] | None:
    if layers is None:
        return None
    return [layers] if isinstance(layers, str) else list(layers)


def _scoped(prefixes: Sequence[str], path: str | None, what: str) -> tuple[str, ...]:
    """The ``--select``/``--ignore`` prefixes that apply to module ``path``.

    ``"S3"`` applies everywhere; ``"encoder.rnn:S3"`` (a shell pattern before the last colon)
    only to the modules it matches.
    """
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    out = []
    for item in prefixes:
        scope, sep, code = str(item).rpartition(":")
        if not sep:
            out.append(code)
        elif path is not None and match(path, scope):
            out.append(code)
    return tuple(out)


def _capture_live(model, args: tuple, kwargs: dict):
    if live_torch.is_module(model):
        return live_torch.capture_model(model, args, kwargs)

    if live_keras.is_model(model):
        return live_keras.capture_model(model, args, kwargs)
    raise UserError(
        f"cannot diagnose a {type(model).__module__}.{type(model).__qualname__}: pass a torch.nn.Module, "
        "a keras.Model or the path of a model file"
    )


def _diagnose_file(path, inputs, lengths, layout, select, ignore, common, sample_size, file_options) -> Report:
    fields = dict(file_options)
    source = None
    if inputs is not None and not isinstance(inputs, (str, os.PathLike)):
        model = open_model(DiagnoseOptions(model=path, **_load_fields(fields)))
        array = np.asarray(inputs)
        if array.dtype.kind not in "fiub":
            raise UserError(f"inputs have dtype {array.dtype}; expected real numbers")
        source = ArrayInputs(array=array, layout=layout or model.input_layout, description="array",
                             layout_given=layout is not None)
        if lengths is not None:
            source.lengths = _check_lengths(np.asarray(lengths), source.n_sequences, source.T)
        fields["loaded_model"] = model
        inputs = None
    elif lengths is not None and not isinstance(lengths, (str, os.PathLike)):
        raise UserError("with inputs given as a path, give lengths as a path too")
    options = DiagnoseOptions(
        model=path,
        inputs=None if inputs is None else str(inputs),
        lengths=None if lengths is None or source is not None else str(lengths),
        layout=layout,
        input_source=source,
        select=_scoped(select, None, "select"),
        ignore=_scoped(ignore, None, "ignore"),
        sample_size=sample_size or 64,
        **common,
        **fields,
    )
    result = _run(options)
    return Report(reports={result["model"]["name"]: result})


def _load_fields(fields: dict) -> dict:
    keys = ("model_format", "preset", "layer_prefix", "layer_name", "trust_pickle", "gate_activation", "activation",
            "go_backwards")
    return {k: fields[k] for k in keys if k in fields}


def _check_lengths(lengths, n: int, T: int):
    """Lengths given as an array: (n,) integers in 1..T."""
    if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
        raise UserError(f"lengths have shape {lengths.shape} and dtype {lengths.dtype}; expected ({n},) integers")
    if lengths.min() < 1 or lengths.max() > T:
        raise UserError(f"lengths range {lengths.min()}..{lengths.max()}; each must be in 1..{T}")
    return lengths.astype(np.int64)
