"""The ``diagnose`` job, apart from its command line: typed options → ``execute`` → exit code.

``run_diagnosis`` does load → capture → analyze → build the report and returns
the report dict; ``execute`` adds output (text or JSON, stdout or an atomic
``--output``) and the exit code. The CLI only fills ``DiagnoseOptions``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lstm_doctor.analyzers import AnalysisConfig, analyze
from lstm_doctor.analyzers.registry import parse_thresholds, validate_prefixes
from lstm_doctor.capture import budget
from lstm_doctor.capture.pipeline import CaptureOptions, capture
from lstm_doctor.choices import ENGINES
from lstm_doctor.errors import UserError
from lstm_doctor.experiments.gradients import analyze_gradients
from lstm_doctor.experiments.observed import load_observation, search_capture
from lstm_doctor.experiments.whatif import DEFAULT_SAMPLE, WhatIfOptions, add_what_if, check_budget
from lstm_doctor.findings import Severity, exit_code
from lstm_doctor.frontend import is_text_inputs, text_source
from lstm_doctor.jobs.selection import ModelSelection, open_model
from lstm_doctor.load.inputs import check_against_model, load_inputs, make_probe
from lstm_doctor.output import check_output_folder, check_output_path, emit, one_unit
from lstm_doctor.report import REPORTERS, RenderOptions, build_report
from lstm_doctor.report.diagnosis import add_diagnosis
from lstm_doctor.report.terminal import text_width, use_color

if TYPE_CHECKING:  # featurize imports this module
    from lstm_doctor.jobs.featurize import FeaturizeOptions


@dataclass(kw_only=True)
class DiagnoseOptions(ModelSelection):
    inputs: str | None = None
    layout: str | None = None  # None: the model's declared layout
    lengths: str | None = None
    padding: str | None = None  # --padding pre|post: where --lengths' padding is
    mask: bool = False  # --mask: Keras masking from the inputs' masked steps
    probe: str = "normal"
    probe_scale: float = 1.0
    probe_steps: int = 50
    probe_sequences: int = 64
    text_field: str = "text"  # text inputs (.txt/.jsonl/.json): the field of an object
    text_clean: str | None = None  # tweet2vec | none; None: tweet2vec built-in, none for a plug-in
    featurizer: str | None = None  # module:function, file.py:function or an entry point name
    engine: str = "auto"
    chunk_size: int = 256  # capped by the capture at ~192 MB per chunk
    sample_size: int = 64
    format: str = "text"
    output: str | None = None
    plots_dir: str | None = None  # markdown: where to write the PNGs
    what_if: bool = False  # also apply each proposed fix virtually (lstm_doctor.experiments.whatif)
    what_if_sample: int | None = None  # sequences the experiment re-runs (None: whatif.DEFAULT_SAMPLE)
    fail_on: str = "error"
    exit_zero: bool = False
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    thresholds: tuple[str, ...] = ()
    color: str = "auto"
    progress: bool = True
    seed: int = 0
    created: str | None = None  # fixed timestamp (tests, reproducible reports)
    extra_protected: tuple[str, ...] = field(default_factory=tuple)
    max_memory: str | None = None  # e.g. "2GB"; None: a fraction of physical memory (lstm_doctor.capture.budget)
    observed: str | None = None  # --observed FILE: a trace the user's code printed (A204, lstm_doctor.experiments.observed)
    gradients: bool = True  # gradient flow (G701, G702, H602): NumPy backward recursion; --engine pytensor: PyTensor grad
    # The Python API's seam (lstm_doctor.api): an already-built LSTMModel and an in-memory
    # InputSource stand in for ``model`` and ``inputs``; everything after loading is the same job.
    loaded_model: object | None = None
    input_source: object | None = None
    on_capture: object | None = None  # called with the CaptureResult before analysis (the API's parity check)
    verbose: bool = False  # --verbose: each stage's wall time on stderr; text: the full findings table too


def analysis_config(select: tuple[str, ...], ignore: tuple[str, ...], thresholds: tuple[str, ...]):
    """The rule selection of ``--select``, ``--ignore`` and ``--threshold``."""
    return AnalysisConfig(
        select=tuple(validate_prefixes(select or ("",), "--select")),
        ignore=tuple(validate_prefixes(ignore, "--ignore")),
        thresholds=parse_thresholds(thresholds),
    )


def open_text_source(options: DiagnoseOptions | FeaturizeOptions, model):
    """Texts (.txt, .jsonl, .json) through the model's front end, as an ``InputSource``.

    ``options`` carries model, inputs, text_field, text_clean, featurizer,
    layout, engine, trust_pickle and chunk_size (diagnose and featurize share it).
    """
    return text_source(
        options.model,
        options.inputs,
        text_field=options.text_field,
        text_clean=options.text_clean,
        featurizer=options.featurizer,
        layout=options.layout,
        engine=options.engine,
        model=model,
        load_options=options.load_options(),  # the conv stack is read again: same trust, same --max-memory
        chunk_size=options.chunk_size,
    )


def open_inputs(options: DiagnoseOptions, model):
    """``--inputs``: an array file, or texts (.txt/.jsonl/.json) through a front end."""
    if is_text_inputs(options.inputs):
        if options.lengths:
            raise UserError("--lengths does not apply to text inputs: the front end gives every text its full length")
        return open_text_source(options, model)
    if options.featurizer or options.text_clean:
        raise UserError("--featurizer and --text-clean need text --inputs (.txt, .jsonl or .json)")
    return load_inputs(
        options.inputs, options.layout, options.lengths, model=model,
        padding=options.padding, mask=options.mask,
        max_memory=options.max_memory,
    )


def run_diagnosis(options: DiagnoseOptions) -> dict:
    """Load, capture, analyze; return the report dict (nothing is printed)."""
    if options.engine not in ENGINES:
        raise UserError(f"unknown engine {options.engine!r}; choose one of {', '.join(ENGINES)}")
    fail_on = Severity.parse(options.fail_on)
    config = analysis_config(options.select, options.ignore, options.thresholds)
    clock = time.perf_counter()
    model = options.loaded_model if options.loaded_model is not None else open_model(options)
    if options.input_source is not None:
        source = options.input_source
    elif options.inputs:
        source = open_inputs(options, model)
    else:
        if options.lengths:
            raise UserError("--lengths needs --inputs")
        budget.check_capture(
            model, (options.probe_steps, options.probe_sequences, model.D), options.chunk_size, options.sample_size,
            options.max_memory,
        )
        source = make_probe(
            options.probe, options.probe_sequences, options.probe_steps, model.D, options.probe_scale, options.seed
        )
    check_against_model(source, model.D)
    budget.check_capture(model, source, options.chunk_size, options.sample_size, options.max_memory)
    if options.what_if:  # its runs capture a sample of their own: refused now, not after the diagnosis
        check_budget(model, source, options.what_if_sample or DEFAULT_SAMPLE, options.max_memory)
    stages = {"load_seconds": time.perf_counter() - clock}
    clock = time.perf_counter()
    with _progress(options.progress) as progress:
        result = capture(
            model,
            source,
            CaptureOptions(engine=options.engine, chunk_size=options.chunk_size, sample_size=options.sample_size),
            progress=progress,
        )
    stages["capture_seconds"] = time.perf_counter() - clock
    if options.on_capture is not None:
        options.on_capture(result)
    gradient_seconds = attach_differential(options, model, result)
    if gradient_seconds is not None:
        stages["gradients_seconds"] = gradient_seconds
    clock = time.perf_counter()
    analysis = analyze(model, result, config)
    stages["analyze_seconds"] = time.perf_counter() - clock
    code = exit_code(analysis.findings, fail_on, options.exit_zero)
    clock = time.perf_counter()
    report = build_report(
        model,
        analysis,
        capture=result,
        config=config,
        fail_on=fail_on,
        exit_code=code,
        created=options.created,
        exit_zero=options.exit_zero,
    )
    stages["report_seconds"] = time.perf_counter() - clock
    if options.what_if:
        report = add_what_if(report, model, source, WhatIfOptions(
            sample_size=options.what_if_sample or DEFAULT_SAMPLE, engine=options.engine, analysis=config,
        ))
        report = add_diagnosis(report)  # the root causes ranked by the what-if too
    return with_timings(report, stages)


def with_timings(report: dict, stages: dict[str, float]) -> dict:
    """The report with ``stages`` (wall-clock seconds) added to its top-level
    ``timings``, which stays right after ``created`` (like it, not deterministic)."""
    timings = {**report.get("timings", {}), **{k: round(v, 4) for k, v in stages.items()}}
    out = {}
    for key, value in report.items():
        if key != "timings":
            out[key] = value
        if key == "created":
            out["timings"] = timings
    return out


def attach_differential(options: DiagnoseOptions, model, result) -> float | None:
    """``--observed``: rank configurations against the trace; ``--gradients``: gradient flow.
    Both run on the capture's bounded sample and are attached to it for the rules.
    Returns the gradient flow's wall seconds (None when it did not run)."""
    if options.observed:
        if not options.inputs:
            raise UserError("--observed needs --inputs: the inputs your code produced the trace from")

        observation = load_observation(
            options.observed, model, result.n_sequences, result.T, max_memory=options.max_memory
        )
        result.observed = search_capture(result, observation)
    if options.gradients:
        clock = time.perf_counter()
        # --engine pytensor checks the recursion against PyTensor's grad (costs a compile)
        result.gradients = analyze_gradients(result, method="pytensor" if options.engine == "pytensor" else "numpy")
        return time.perf_counter() - clock
    return None


def render(
    report: dict,
    fmt: str,
    color: str = "auto",
    to_terminal: bool = True,
    output: str | None = None,
    plots_dir: str | None = None,
    verbose: bool = False,
) -> str | bytes:
    """The report in ``fmt`` (a name in ``lstm_doctor.report.REPORTERS``)."""
    if fmt not in REPORTERS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(REPORTERS)}")
    options = RenderOptions(
        color=use_color(color, to_terminal), width=text_width(to_terminal), output=output, plots_dir=plots_dir,
        verbose=verbose,
    )
    return REPORTERS[fmt](report, options)


def execute(options: DiagnoseOptions) -> int:
    # The files named here, and (lstm_doctor.output's read-set) every file the loaders open.
    protected = [options.model, options.inputs, options.lengths, options.observed, *options.extra_protected]
    if options.output:
        check_output_path(options.output, protected)
    if options.plots_dir:
        check_plots_dir(options.plots_dir, options.format)
    report = run_diagnosis(options)
    args = (options.format, options.color, options.output is None, options.output, options.plots_dir, options.verbose)
    with one_unit():  # the PNGs of --plots and the report: both or neither
        clock = time.perf_counter()
        text = render(report, *args)
        report = with_timings(report, {"render_seconds": time.perf_counter() - clock})
        if options.format == "json":  # again, with its own render time in it
            text = render(report, *args)
        if options.output:
            emit(text, options.output)
    if not options.output:
        emit(text, None)
    if options.verbose:
        print("timings: " + ", ".join(f"{k.removesuffix('_seconds')} {v:.3f} s" for k, v in report["timings"].items()),
              file=sys.stderr)
    return report["summary"]["exit_code"]


def check_plots_dir(plots_dir: str, fmt: str) -> None:
    """``--plots DIR`` goes with ``--format markdown`` (html embeds its plots); DIR may not be a file."""
    if fmt != "markdown":
        raise UserError(f"--plots writes the PNGs of --format markdown (html embeds them), not of --format {fmt}")
    if Path(plots_dir).exists() and not Path(plots_dir).is_dir():
        raise UserError("--plots: not a folder", plots_dir)
    check_output_folder(plots_dir)


class _progress:
    """A rich progress bar on stderr, shown only for runs longer than ~1 s on a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar = None
        self.started = time.perf_counter()

    def __enter__(self):
        return self.update if self.enabled else None

    def update(self, done: int, total: int):
        if self.bar is None:
            if time.perf_counter() - self.started < 1.0 or done >= total:
                return
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("scanning sequences", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False

