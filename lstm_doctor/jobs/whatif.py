"""``lstm-doctor what-if MODEL --inputs X``: apply each fix virtually, measure, rank.

The experiment itself is ``lstm_doctor.experiments.whatif`` (pure); this module parses
options, loads, prints and writes. Exit codes follow ``diagnose``: 0 when the
model as loaded has no finding at or above ``--fail-on`` (or ``--exit-zero``),
1 when it has, 2 for a usage or input error (including a ``--write-fixed``
folder that exists and is not empty), 130 when interrupted.

``--write-fixed DIR`` writes the model with the model-level fixes of the
cumulative path applied, in the native format, with notes in its spec saying
what changed. It never writes into an existing non-empty folder (so never over
the user's model), and writes atomically: a temporary folder beside DIR is
renamed to DIR once complete.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lstm_doctor.choices import ENGINES
from lstm_doctor.errors import UserError
from lstm_doctor.experiments.whatif import (
    WhatIfOptions,
    check_budget,
    experiment_dict,
    harmful_requested,
    parse_fix_ids,
    run_experiment,
    write_plan,
)
from lstm_doctor.findings import Severity, exit_code
from lstm_doctor.jobs.diagnose import analysis_config
from lstm_doctor.jobs.selection import ModelSelection, open_model
from lstm_doctor.load import native
from lstm_doctor.load.inputs import check_against_model, load_inputs
from lstm_doctor.output import check_output_folder, check_output_path, emit, escape_controls_in, os_error
from lstm_doctor.report.build import clean, describe_model, envelope, file_identity
from lstm_doctor.report.diagnosis import plural
from lstm_doctor.report.terminal import text_width, use_color

INPUT_FIXES_FILE = "input_fixes.npz"


@dataclass(kw_only=True)
class WhatIfCommandOptions(ModelSelection):
    inputs: str
    layout: str | None = None
    lengths: str | None = None
    padding: str | None = None  # --padding pre|post
    mask: bool = False  # --mask: Keras masking, as diagnose runs it
    engine: str = "auto"
    format: str = "text"
    output: str | None = None
    write_fixed: str | None = None
    fixes: tuple[str, ...] = ()
    sample_size: int = 256
    fail_on: str = "error"
    exit_zero: bool = False
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    thresholds: tuple[str, ...] = ()
    color: str = "auto"
    created: str | None = None
    extra: dict = field(default_factory=dict)


def check_fixed_folder(folder: str, protected: list[str | None]) -> Path:
    """Before the experiment: refuse a ``--write-fixed`` destination that exists and is
    not an empty folder, that is (or holds) one of the user's files, whose parent folder
    is missing, or where nothing can be written. A symlink is followed: the fixed model
    goes into the (empty) folder it points to. Returns the real folder to write."""
    out = Path(os.path.realpath(folder)) if Path(folder).is_symlink() else Path(folder)
    for item in protected:
        if not item:
            continue
        p = Path(item).resolve()
        if out.resolve() in (p, p.parent if p.is_file() else p):
            raise UserError("refusing to write the fixed model over the user's model or inputs", folder)
    if out.exists():
        if not out.is_dir():
            raise UserError("exists and is not a folder; --write-fixed needs a new or empty folder", folder)
        if any(out.iterdir()):
            raise UserError("folder is not empty; --write-fixed writes only into a new or empty folder", folder)
    elif not out.parent.is_dir():
        if out.parent.exists() or any(q.exists() and not q.is_dir() for q in out.parent.parents):
            raise UserError(f"cannot make the folder: a part of {out.parent} is a file", folder)
        raise UserError(f"folder {out.parent} does not exist", folder)
    check_output_folder(out.parent)  # read-only, permission: now, not after the experiment
    return out


def write_fixed(folder: Path, model, notes: tuple[str, ...], arrays: dict) -> Path:
    """Write the native model (and the input-fix parameters) into ``folder`` atomically."""
    tmp = folder.parent / f".{folder.name[:200]}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        os.mkdir(tmp)  # the usual permissions (umask), unlike mkdtemp's 0700
    except OSError as exc:
        raise os_error(exc, folder) from None
    try:
        native.save(model, tmp, notes)
        if arrays:
            np.savez(tmp / INPUT_FIXES_FILE, **arrays)
        if folder.exists():
            folder.rmdir()  # empty (checked before the experiment)
        os.rename(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise os_error(exc, folder) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / native.SPEC_NAME


def build_output(options: WhatIfCommandOptions, model, source, exp) -> dict:
    """The JSON document of the ``what-if`` command."""
    code = exit_code(exp.baseline.findings, Severity.parse(options.fail_on), options.exit_zero)
    doc = {
        **envelope(options.created or "now", command="what-if"),
        "model": describe_model(model, source),
        "inputs": {
            "source": source.label,
            "file": file_identity(source.path) if source.path else None,
            "layout": source.layout,
            "stored_shape": list(source.array.shape),
            "sequences": source.n_sequences,
            "T": source.T,
            "D": source.D,
            "lengths_given": source.lengths is not None,
            "notes": list(source.notes),
        },
        "engine": options.engine,
        **experiment_dict(exp),
        "summary": {
            "exit_code": code,
            "fail_on": options.fail_on,
            "baseline_errors": list(exp.baseline.errors),
            "final_errors": list(exp.final.errors),
            "written": None,
        },
    }
    return clean(doc)


def execute(options: WhatIfCommandOptions) -> int:
    if options.engine not in ENGINES:
        raise UserError(f"unknown engine {options.engine!r}; choose one of {', '.join(ENGINES)}")
    fixes = parse_fix_ids(options.fixes) if options.fixes else None
    config = analysis_config(options.select, options.ignore, options.thresholds)
    protected = [options.model, options.inputs, options.lengths]
    if options.output:
        check_output_path(options.output, protected)
    folder = check_fixed_folder(options.write_fixed, protected) if options.write_fixed else None
    model = open_model(options)
    source = load_inputs(
        options.inputs, options.layout, options.lengths, model=model,
        padding=options.padding, mask=options.mask, max_memory=options.max_memory,
    )
    check_against_model(source, model.D)
    check_budget(model, source, options.sample_size, options.max_memory)
    with _status(options.format == "text" and options.output is None) as progress:
        exp = run_experiment(
            model,
            source,
            WhatIfOptions(sample_size=options.sample_size, fixes=fixes, engine=options.engine, analysis=config),
            progress=progress,
        )
    doc = build_output(options, model, source, exp)
    if folder is not None:
        force = harmful_requested(exp)
        for fid in force:  # the user named it: write it, but say what it costs
            change = exp.alone[fid].metrics.get("output_change")
            print(
                f"lstm-doctor: warning: {fid} is harmful on the what-if sample: {exp.harmful[fid]}"
                + (f"; it moves the final encodings by {change:.2g} of their norm" if change is not None else "")
                + "; written anyway because --fixes named it",
                file=sys.stderr,
            )
        fixed, notes, arrays = write_plan(exp, origin=str(options.model), force=force)
        spec = write_fixed(folder, fixed, notes, arrays)
        doc["summary"]["written"] = {
            "folder": str(folder),
            "spec": str(spec),
            "fixes": sorted(set(exp.model_fixes()) | set(force)),
            "input_fixes_file": str(folder / INPUT_FIXES_FILE) if arrays else None,
            "notes": list(notes),
        }
    emit(render(doc, options), options.output)
    return doc["summary"]["exit_code"]


def render(doc: dict, options: WhatIfCommandOptions) -> str:
    if options.format == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    from rich.console import Console
    from rich.text import Text

    from lstm_doctor.report.whatif_text import render_what_if

    doc = escape_controls_in(doc)  # names from the model file: no raw ESC to the terminal
    to_terminal = options.output is None
    color = use_color(options.color, to_terminal)
    buffer = io.StringIO()
    console = Console(file=buffer, width=text_width(to_terminal), force_terminal=color, no_color=not color, highlight=False)
    m, inp = doc["model"], doc["inputs"]
    shape = ", ".join(f"L{ly['index']}: D={ly['D']} H={ly['H']}" for ly in m["layers"])
    console.print(Text.assemble(("what-if  ", "bold"), f"{m['name']} ({m['format']}) · {shape} · {m['layers'][0]['equation']}"))
    console.print(
        Text.assemble(
            ("inputs   ", "bold"),
            f"{inp['source']}: {plural(inp['sequences'], 'sequence')} × {inp['T']} steps × {inp['D']} features "
            f"(layout {inp['layout']}) · engine {doc['engine']}",
        )
    )
    render_what_if(doc, console)
    written = doc["summary"].get("written")
    if written:
        console.print(
            Text(
                f"wrote the model with {' + '.join(written['fixes'])} applied to {written['folder']} "
                f"(check it with: lstm-doctor diagnose {written['folder']} --inputs …)",
                style="bold green",
            )
        )
    s = doc["summary"]
    console.print(
        Text(
            f"(as loaded: {len(s['baseline_errors'])} error code(s); after the cumulative path: "
            f"{len(s['final_errors'])}; fail-on {s['fail_on']}: exit {s['exit_code']})",
            style="dim",
        )
    )
    return buffer.getvalue()


class _status:
    """A one-line status on stderr naming the run in progress (terminals only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.status = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console

        self.status = Console(stderr=True).status("what-if: starting")
        self.status.start()
        return lambda label: self.status.update(f"what-if: running {label}")

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.stop()
        return False
