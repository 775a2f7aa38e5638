"""``check``: the CI entry point. A config file names the models; flags override it.

The configuration is ``[tool.lstm-doctor]`` in ``pyproject.toml`` or the top
level of ``lstm-doctor.toml`` (in the working directory, ``lstm-doctor.toml``
first, or ``--config FILE``)::

    fail-on = "error"                      # error | warning | info
    select = ["W", "S", "H"]               # code prefixes (a string "W,S" works too)
    ignore = ["I503"]
    thresholds = { S301 = { share = 0.6 } }
    baseline = "lstm-doctor-baseline.json" # fail only on findings new relative to it
    outputs = { json = "report.json", junit = "junit.xml", html = "report.html" }
    plots = "plots"                        # where the markdown output's PNGs go
    engine = "auto"
    max-memory = "2GB"                     # as --max-memory: every model's reading and capture

    [[tool.lstm-doctor.models]]            # ([[models]] in lstm-doctor.toml)
    model = "models/encoder"               # required; the rest as `diagnose`
    inputs = "data/sample.npy"
    layout = "bct"
    lengths = "data/lengths.npy"
    preset = "tweet2vec"
    model-format = "native"                # and layer-prefix, layer-name, probe, ... as `diagnose`
    name = "encoder"                       # the id baselines match on (default: model)

Paths are relative to the config file. Every model is diagnosed as
``diagnose`` would; the exit code covers them all (0, 1; 2 for a usage or
input error). With a baseline, a finding fails only if its key
(model id, code, layer, direction, gate) is not in the baseline: messages and
numbers may change without failing the build. ``--write-baseline FILE``
records the current findings' keys (no timestamp, sorted: it belongs in
version control) and exits 0.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lstm_doctor.analyzers.registry import parse_thresholds, validate_prefixes
from lstm_doctor.capture.budget import parse_size
from lstm_doctor.choices import KERAS_ACTIVATIONS, LAYOUTS
from lstm_doctor.errors import ConfigError, UserError
from lstm_doctor.findings import IDENTITY_FIELDS, Severity, finding_identity
from lstm_doctor.jobs.diagnose import DiagnoseOptions, check_plots_dir, run_diagnosis
from lstm_doctor.output import allow_replacing, check_output_path, emit, one_unit, same_file, write_atomic
from lstm_doctor.report import REPORTERS, RenderOptions, render_many, to_json
from lstm_doctor.report.build import envelope, read_json
from lstm_doctor.report.diagnosis import status
from lstm_doctor.report.html import location_label
from lstm_doctor.report.terminal import text_width, use_color

CONFIG_FILES = ("lstm-doctor.toml", "pyproject.toml")
TOOL_KEY = "lstm-doctor"
TOP_KEYS = {
    "models", "select", "ignore", "thresholds", "fail-on", "outputs", "baseline", "plots", "engine",
    "chunk-size", "sample-size", "max-memory",
}  # fmt: skip
MODEL_KEYS = {
    "model", "name", "inputs", "layout", "lengths", "preset", "model-format", "layer-prefix", "layer-name",
    "probe", "probe-steps", "probe-sequences", "probe-scale", "gate-activation", "activation", "go-backwards",
}  # fmt: skip
BASELINE_KIND = "lstm-doctor-baseline"
CHECK_KIND = "lstm-doctor-check"
ANY_MODEL = "*"  # baseline keys read from a plain diagnose report match every model


@dataclass(frozen=True)
class ModelEntry:
    id: str
    model: str
    inputs: str | None = None
    layout: str | None = None
    lengths: str | None = None
    preset: str | None = None
    model_format: str | None = None
    layer_prefix: str | None = None
    layer_name: str | None = None
    probe: str = "normal"
    probe_steps: int = 50
    probe_sequences: int = 64
    probe_scale: float = 1.0
    gate_activation: str | None = None  # Keras settings a weights-only file leaves open
    activation: str | None = None
    go_backwards: bool | None = None


@dataclass(frozen=True)
class CheckConfig:
    source: str | None
    models: tuple[ModelEntry, ...]
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    thresholds: tuple[str, ...] = ()  # CODE.param=value
    fail_on: str = "error"
    outputs: dict[str, str] = field(default_factory=dict)  # format -> path
    baseline: str | None = None
    plots_dir: str | None = None
    engine: str = "auto"
    chunk_size: int = 64
    sample_size: int = 64
    max_memory: str | None = None  # None: the default --max-memory (lstm_doctor.capture.budget)


@dataclass
class CheckOptions:
    """The command line; ``None`` means "not given: use the config"."""

    config: str | None = None
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    thresholds: tuple[str, ...] = ()  # added on top of the config's
    fail_on: str | None = None
    baseline: str | None = None
    no_baseline: bool = False
    write_baseline: str | None = None
    reports: tuple[str, ...] = ()  # FORMAT=FILE, added to / replacing the config's outputs
    plots_dir: str | None = None
    format: str = "text"  # what goes to stdout
    engine: str | None = None
    exit_zero: bool = False
    color: str = "auto"
    max_memory: str | None = None  # --max-memory, over the config's max-memory
    created: str | None = None  # fixed timestamp (tests)
    cwd: str | None = None  # where to look for the config (default: the working directory)


# -- configuration -------------------------------------------------------------------


def find_config(cwd: Path) -> Path:
    for name in CONFIG_FILES:
        path = cwd / name
        if path.is_file() and (name != "pyproject.toml" or TOOL_KEY in _read_toml(path).get("tool", {})):
            return path
    raise ConfigError(
        f"no lstm-doctor.toml and no [tool.{TOOL_KEY}] in pyproject.toml in {cwd}; "
        "write one (see `lstm-doctor check --help`) or pass --config FILE"
    )


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found", path) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the config: {exc}", path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read the config: not UTF-8 text (byte {exc.start})", path) from None
    except RecursionError:
        raise ConfigError("cannot read the config: nested too deeply", path) from None


def _section(path: Path) -> dict:
    doc = _read_toml(path)
    tool = doc.get("tool", {})
    if isinstance(tool, dict) and TOOL_KEY in tool:
        return tool[TOOL_KEY]
    if path.name == "pyproject.toml":
        raise ConfigError(f"no [tool.{TOOL_KEY}] table", path)
    return doc


def _norm(key: str) -> str:
    return str(key).replace("_", "-")


def _known_keys(table: dict, known: frozenset | set, path: Path, where: str = "") -> dict:
    """``table`` with its keys normalised (``_`` → ``-``); a key outside ``known`` is a ConfigError."""
    table = {_norm(key): v for key, v in table.items()}
    unknown = sorted(set(table) - known)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", path)
    return table


def _prefixes(value, key: str, path: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of code prefixes", path)
    return tuple(p.strip() for v in value for p in v.split(",") if p.strip())


def _relative(base: Path, value: str, cwd: Path) -> str:
    """A config path (relative to the config's folder) as a path relative to ``cwd`` when possible."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    try:
        return os.path.relpath(base / p, cwd)
    except ValueError:  # another drive (Windows)
        return str(base / p)


def _model_entry(raw: Any, k: int, base: Path, cwd: Path, path: Path) -> ModelEntry:
    where = f"models[{k}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table with at least `model = PATH`", path)
    raw = _known_keys(raw, MODEL_KEYS, path, where)
    if not isinstance(raw.get("model"), str) or not raw["model"]:
        raise ConfigError(f"{where}: `model = PATH` is required", path)
    for key in ("name", "inputs", "layout", "lengths", "preset", "model-format", "layer-prefix", "layer-name", "probe"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key} must be a string", path)
    if raw.get("layout") is not None and raw["layout"] not in LAYOUTS:
        raise ConfigError(f"{where}: layout {raw['layout']!r}; choose one of {', '.join(LAYOUTS)}", path)
    for key in ("probe-steps", "probe-sequences"):
        if key in raw and (not isinstance(raw[key], int) or raw[key] < 1):
            raise ConfigError(f"{where}: {key} must be a positive integer", path)
    if "probe-scale" in raw and not isinstance(raw["probe-scale"], (int, float)):
        raise ConfigError(f"{where}: probe-scale must be a number", path)
    for key in ("gate-activation", "activation"):
        if key in raw and raw[key] not in KERAS_ACTIVATIONS:
            raise ConfigError(f"{where}: {key} {raw[key]!r}; choose one of {', '.join(KERAS_ACTIVATIONS)}", path)
    if "go-backwards" in raw and not isinstance(raw["go-backwards"], bool):
        raise ConfigError(f"{where}: go-backwards must be true or false", path)
    rel = lambda key: _relative(base, raw[key], cwd) if raw.get(key) else None  # noqa: E731
    return ModelEntry(
        id=raw.get("name") or Path(raw["model"]).as_posix(),
        model=rel("model"),
        inputs=rel("inputs"),
        layout=raw.get("layout"),
        lengths=rel("lengths"),
        preset=raw.get("preset"),
        model_format=raw.get("model-format"),
        layer_prefix=raw.get("layer-prefix"),
        layer_name=raw.get("layer-name"),
        probe=raw.get("probe", "normal"),
        probe_steps=raw.get("probe-steps", 50),
        probe_sequences=raw.get("probe-sequences", 64),
        probe_scale=float(raw.get("probe-scale", 1.0)),
        gate_activation=raw.get("gate-activation"),
        activation=raw.get("activation"),
        go_backwards=raw.get("go-backwards"),
    )


def _thresholds(value, path: Path) -> tuple[str, ...]:
    """``{CODE = {param = value}}`` as ``CODE.param=value`` items (validated later, with the CLI's)."""
    if not isinstance(value, dict):
        raise ConfigError("thresholds must be a table: thresholds = { S301 = { share = 0.6 } }", path)
    out = []
    for code, params in value.items():
        if not isinstance(params, dict):
            raise ConfigError(f"thresholds.{code} must be a table of parameter = number", path)
        for param, number in params.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ConfigError(f"thresholds.{code}.{param} must be a number", path)
            out.append(f"{code}.{param}={number!r}")
    return tuple(out)


def load_config(path: Path, cwd: Path) -> CheckConfig:
    """Read and validate a config file; paths come back relative to ``cwd``."""
    section = _section(path)
    if not isinstance(section, dict):
        raise ConfigError(f"[tool.{TOOL_KEY}] must be a table", path)
    section = _known_keys(section, TOP_KEYS, path)
    base = path.resolve().parent
    models = section.get("models")
    if not isinstance(models, list) or not models:
        table = f"[[tool.{TOOL_KEY}.models]]" if path.name == "pyproject.toml" else "[[models]]"
        raise ConfigError(f"no models: add a {table} table with `model = PATH` (and `inputs = PATH`)", path)
    entries = tuple(_model_entry(raw, k, base, cwd, path) for k, raw in enumerate(models))
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"two models have the id {duplicates[0]!r}: give them distinct `name`s", path)
    outputs = section.get("outputs", {})
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
        raise ConfigError('outputs must be a table of format = "file", e.g. { junit = "junit.xml" }', path)
    for fmt in outputs:
        if fmt not in REPORTERS:
            raise ConfigError(f"outputs: unknown format {fmt!r}; choose from {', '.join(REPORTERS)}", path)
    fail_on = section.get("fail-on", "error")
    if fail_on not in ("error", "warning", "info"):
        raise ConfigError(f"fail-on {fail_on!r}: choose error, warning or info", path)
    for key in ("baseline", "plots", "engine"):
        if key in section and not isinstance(section[key], str):
            raise ConfigError(f"{key} must be a string", path)
    for key in ("chunk-size", "sample-size"):
        if key in section and (not isinstance(section[key], int) or section[key] < 1):
            raise ConfigError(f"{key} must be a positive integer", path)
    max_memory = _max_memory(section.get("max-memory"), path)
    return CheckConfig(
        source=os.path.relpath(path, cwd),
        models=entries,
        select=_prefixes(section.get("select", []), "select", path),
        ignore=_prefixes(section.get("ignore", []), "ignore", path),
        thresholds=_thresholds(section.get("thresholds", {}), path),
        fail_on=fail_on,
        outputs={fmt: _relative(base, out, cwd) for fmt, out in outputs.items()},
        baseline=_relative(base, section["baseline"], cwd) if section.get("baseline") else None,
        plots_dir=_relative(base, section["plots"], cwd) if section.get("plots") else None,
        engine=section.get("engine", "auto"),
        chunk_size=section.get("chunk-size", 64),
        sample_size=section.get("sample-size", 64),
        max_memory=max_memory,
    )


def _max_memory(value, path: Path) -> str | None:
    """``max-memory = "2GB"`` (or a number of bytes), checked now: a bad size names the config."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError('max-memory must be a size such as "2GB" or a number of bytes', path)
    text = str(value)
    try:
        parse_size(text)
    except UserError as exc:
        raise ConfigError(exc.problem.replace("--max-memory", "max-memory", 1), path) from None
    return text


def resolve(options: CheckOptions) -> CheckConfig:
    """The config file, then the command line on top of it."""
    cwd = Path(options.cwd or os.getcwd())
    path = Path(options.config) if options.config else find_config(cwd)
    if options.config and not path.is_absolute():
        path = cwd / path
    config = load_config(path, cwd)
    outputs = dict(config.outputs)
    for item in options.reports:
        fmt, sep, out = str(item).partition("=")
        if not sep or not out:
            raise ConfigError(f"--report {item!r}: expected FORMAT=FILE, e.g. junit=junit.xml")
        if fmt not in REPORTERS:
            raise ConfigError(f"--report {item!r}: unknown format {fmt!r}; choose from {', '.join(REPORTERS)}")
        outputs[fmt] = out
    return replace(
        config,
        select=config.select if options.select is None else options.select,
        ignore=config.ignore if options.ignore is None else options.ignore,
        thresholds=config.thresholds + tuple(options.thresholds),
        fail_on=options.fail_on or config.fail_on,
        outputs=outputs,
        baseline=None if options.no_baseline else (options.baseline or config.baseline),
        plots_dir=options.plots_dir or config.plots_dir,
        engine=options.engine or config.engine,
        max_memory=options.max_memory or config.max_memory,
    )


# -- baselines -------------------------------------------------------------------------


def finding_key(model_id: str, finding: dict) -> tuple:
    return (model_id, *finding_identity(finding))


def load_baseline(path: str) -> set[tuple]:
    """Keys of a baseline, a ``check`` JSON output, or a ``diagnose`` JSON report (any model)."""
    data = read_json(path, "baseline not found (write one with --write-baseline)", "cannot read the baseline")
    if not isinstance(data, dict):
        raise UserError("not an lstm-doctor baseline, check output or report", path)
    kind = data.get("kind")
    try:
        if kind == BASELINE_KIND:
            return {
                (f["model"], f["code"], *(f.get(name) for name in IDENTITY_FIELDS)) for f in data["findings"]
            }
        if kind == CHECK_KIND:
            return {finding_key(m["id"], f) for m in data["models"] for f in m["report"]["findings"]}
        if "findings" in data and "model" in data:
            return {finding_key(ANY_MODEL, f) for f in data["findings"]}
    except (KeyError, TypeError) as exc:
        raise UserError(f"malformed baseline (missing {exc})", path) from None
    raise UserError("not an lstm-doctor baseline, check output or report", path)


def baseline_document(results: list[tuple[str, dict]]) -> dict:
    keys: dict[tuple, str] = {}
    for model_id, report in results:
        for f in report["findings"]:
            key = finding_key(model_id, f)
            if key not in keys or Severity[f["severity"]] > Severity[keys[key]]:
                keys[key] = f["severity"]
    order = lambda k: (k[0], k[1], -1 if k[2] is None else k[2], k[3] or "", k[4] or "")  # noqa: E731
    return {
        **envelope(None, kind=BASELINE_KIND),
        "findings": [
            {"model": k[0], "code": k[1], "layer": k[2], "direction": k[3], "gate": k[4], "severity": keys[k]}
            for k in sorted(keys, key=order)
        ],
    }


def apply_baseline(
    model_id: str, report: dict, known: set[tuple] | None, baseline: str | None, exit_zero: bool
) -> None:
    """Mark each finding new/known and make ``summary.exit_code`` count new findings only."""
    fail_on = Severity[report["config"]["fail_on"]]
    if known is None:
        report["check"] = {"model_id": model_id, "baseline": None, "new": None, "known": None}
        return
    new = 0
    failing = False
    for f in report["findings"]:
        key = finding_key(model_id, f)
        is_known = key in known or (ANY_MODEL, *key[1:]) in known
        f["baseline"] = "known" if is_known else "new"
        if not is_known:
            new += 1
            failing |= Severity[f["severity"]] >= fail_on
    report["check"] = {"model_id": model_id, "baseline": baseline, "new": new, "known": len(report["findings"]) - new}
    report["summary"]["exit_code"] = 0 if exit_zero else int(failing)


# -- running ---------------------------------------------------------------------------


def check_document(results: list[tuple[str, dict]], config: CheckConfig, created: str, exit_code: int) -> dict:
    reports = [r for _, r in results]
    new = [r["check"]["new"] for r in reports]
    return {
        **envelope(created, kind=CHECK_KIND),
        "config_file": config.source,
        "baseline": config.baseline,
        "models": [{"id": model_id, "report": report} for model_id, report in results],
        "summary": {
            "models": len(reports),
            **{sev: sum(r["summary"][sev] for r in reports) for sev in ("error", "warning", "info")},
            "new": None if config.baseline is None else sum(new),
            "exit_code": exit_code,
        },
    }


def diagnose_options(entry: ModelEntry, config: CheckConfig, options: CheckOptions):
    return DiagnoseOptions(
        model=entry.model,
        inputs=entry.inputs,
        layout=entry.layout,
        lengths=entry.lengths,
        preset=entry.preset,
        model_format=entry.model_format,
        layer_prefix=entry.layer_prefix,
        layer_name=entry.layer_name,
        probe=entry.probe,
        probe_steps=entry.probe_steps,
        probe_sequences=entry.probe_sequences,
        probe_scale=entry.probe_scale,
        gate_activation=entry.gate_activation,
        activation=entry.activation,
        go_backwards=entry.go_backwards,
        engine=config.engine,
        chunk_size=config.chunk_size,
        sample_size=config.sample_size,
        max_memory=config.max_memory,
        fail_on=config.fail_on,
        exit_zero=options.exit_zero,
        select=config.select,
        ignore=config.ignore,
        thresholds=config.thresholds,
        created=options.created,
    )


def render_outputs(fmt: str, results: list[tuple[str, dict]], document: dict, options) -> str | bytes:
    if fmt == "json":
        return to_json(document)
    return render_many(fmt, [r for _, r in results], options)


def run_check(options: CheckOptions) -> tuple[int, dict, CheckConfig]:
    """Diagnose every model, apply the baseline, write the outputs; return (exit code, document, config)."""
    config = resolve(options)
    # Options common to every model are checked once, before any model runs.
    validate_prefixes(config.select, "select")
    validate_prefixes(config.ignore, "ignore")
    parse_thresholds(config.thresholds)
    parse_size(options.max_memory)  # a bad --max-memory (the config's was checked when read)
    # Every file the check reads; the read-set (lstm_doctor.output) adds what the loaders open.
    protected = [p for e in config.models for p in (e.model, e.inputs, e.lengths)] + [config.source]
    # --write-baseline FILE may refresh the baseline it is compared with: the one input it may replace.
    refresh = bool(options.write_baseline and config.baseline and same_file(options.write_baseline, config.baseline))
    for out in config.outputs.values():
        check_output_path(out, protected + [config.baseline])
    if options.write_baseline:
        check_output_path(options.write_baseline, protected + ([] if refresh else [config.baseline]))
    if config.plots_dir:
        check_plots_dir(config.plots_dir, "markdown")
    known = load_baseline(config.baseline) if config.baseline else None
    if refresh:
        allow_replacing(config.baseline)
    results: list[tuple[str, dict]] = []
    for entry in config.models:
        try:
            report = run_diagnosis(diagnose_options(entry, config, options))
        except UserError as exc:
            raise UserError(f"model {entry.id!r}: {exc}") from None
        apply_baseline(entry.id, report, known, config.baseline, options.exit_zero)
        results.append((entry.id, report))
    code = 0 if options.exit_zero else max(r["summary"]["exit_code"] for _, r in results)
    if options.write_baseline:
        code = 0
    created = options.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    document = check_document(results, config, created, code)
    with one_unit():  # the reports, their plots and the baseline: all or none
        for fmt, out in config.outputs.items():
            render_options = RenderOptions(output=out, plots_dir=config.plots_dir if fmt == "markdown" else None)
            write_atomic(out, render_outputs(fmt, results, document, render_options))
        if options.write_baseline:
            write_atomic(options.write_baseline, to_json(baseline_document(results)))
    return code, document, config


def summary_text(document: dict, config: CheckConfig, written: list[str], color: bool, width: int) -> str:
    """The closing table of ``check``: one row per model, then the verdict."""
    from rich.console import Console
    from rich.table import Table


    baseline = config.baseline is not None
    table = Table(title=f"lstm-doctor check ({config.source}, fail-on {config.fail_on})", title_justify="left")
    for col in ("model", "errors", "warnings", "info") + (("new",) if baseline else ()) + ("exit",):
        table.add_column(col, justify="left" if col == "model" else "right")
    new_lines = []
    for m in document["models"]:
        s = m["report"]["summary"]
        row = [m["id"], str(s["error"]), str(s["warning"]), str(s["info"])]
        if baseline:
            row.append(str(m["report"]["check"]["new"]))
            new_lines += [
                f"  new: {f['severity']} {f['code']} {m['id']} ({location_label(f['location'])})"
                for f in m["report"]["findings"]
                if f.get("baseline") == "new"
            ]
        row.append(str(s["exit_code"]))
        table.add_row(*row)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    console.print(table)
    if baseline:
        console.print(f"Baseline {config.baseline}: only findings new relative to it fail.")
        for line in new_lines:
            console.print(line, markup=False)
    for line in written:
        console.print(f"wrote {line}", markup=False)

    code = document["summary"]["exit_code"]
    failing = sum(status(m["report"])["failing"] for m in document["models"])
    if code == 0 and failing:  # --exit-zero: say what was found, never "no failing finding"
        verdict = f"{failing} failing finding{'s' if failing != 1 else ''} (exit forced to 0 by --exit-zero)"
    else:
        verdict = "no failing finding" if code == 0 else "failing findings (see above)"
    console.print(f"exit {code}: {verdict}", markup=False)
    return buffer.getvalue()


def execute(options: CheckOptions) -> int:
    if options.format not in REPORTERS:
        raise UserError(f"unknown format {options.format!r}; choose one of {', '.join(REPORTERS)}")
    code, document, config = run_check(options)
    results = [(m["id"], m["report"]) for m in document["models"]]
    color = use_color(options.color, True)
    width = text_width(True)
    if options.format == "text":
        render_options = RenderOptions(color=color, width=width)
        text = "".join(REPORTERS["text"](r, render_options) for _, r in results)
        written = [f"{fmt} report: {out}" for fmt, out in config.outputs.items()]
        if options.write_baseline:
            written.append(
                f"baseline: {options.write_baseline} ({sum(len(r['findings']) for _, r in results)} findings)"
            )
        emit(text + summary_text(document, config, written, color, width), None)
    else:
        render_options = RenderOptions(color=color, width=width, plots_dir=config.plots_dir)
        with one_unit():  # the plots land only with the report
            data = render_outputs(options.format, results, document, render_options)
        emit(data, None)
        if options.write_baseline:
            print(f"lstm-doctor: wrote baseline {options.write_baseline}", file=sys.stderr)
    return code
