"""Per-stage wall times of diagnose: in the JSON report's top-level ``timings``
(not deterministic, like ``created``) and, with --verbose, on stderr."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from lstm_doctor.cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tweet2vec_like"
STAGES = ("load_seconds", "capture_seconds", "gradients_seconds", "analyze_seconds", "report_seconds", "render_seconds")


def _diagnose(*extra):
    args = ["diagnose", str(EXAMPLE / "fixed"), "--inputs", str(EXAMPLE / "conv_output_standardized.npy"), *extra]
    return CliRunner().invoke(cli, args)


def test_json_reports_carry_the_time_of_every_stage():
    from jsonschema import Draft202012Validator

    from lstm_doctor.report import build

    r = _diagnose("--format", "json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert list(report)[2:4] == ["created", "timings"]
    assert set(STAGES) <= set(report["timings"])
    assert all(report["timings"][k] >= 0 for k in STAGES) and report["timings"]["capture_seconds"] > 0
    assert "timings:" not in r.stderr  # only with --verbose
    schema = json.loads((Path(build.__file__).parent / "schema.json").read_text())
    Draft202012Validator(schema).validate(report)


def test_verbose_prints_the_stage_times_on_stderr_and_leaves_the_report_alone():
    r = _diagnose("--format", "json", "--verbose")
    assert r.exit_code == 0, r.stderr
    line = [x for x in r.stderr.splitlines() if x.startswith("timings:")]
    assert len(line) == 1
    for stage in ("load", "capture", "gradients", "analyze", "report", "render"):
        assert f"{stage} " in line[0]
    json.loads(r.stdout)  # stdout is still exactly the report
