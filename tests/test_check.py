"""``lstm-doctor check``: config files, CLI overrides, several models, outputs, baselines; the README's CI example.

Every test runs in a copy of the example models (``workspace``), on a subset
of their inputs to keep the module fast.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_reports import (
    errors,  # the schema validator (report, check, baseline, compare)
)

from lstm_doctor.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tweet2vec_like"

BROKEN = """
[[MODELS]]
name = "broken"
model = "models/broken"
inputs = "data/broken.npy"
"""
FIXED = """
[[MODELS]]
model = "models/fixed"
inputs = "data/fixed.npy"
"""


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def check(result, code):
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in ("broken", "fixed"):
        shutil.copytree(EXAMPLE / name, root / "models" / name)
    (root / "data").mkdir()
    # Fewer sequences (and steps, for the broken encoder) than the example: the same findings, faster.
    np.save(root / "data" / "broken.npy", np.load(EXAMPLE / "conv_output.npy")[:12, :96])
    np.save(root / "data" / "fixed.npy", np.load(EXAMPLE / "conv_output_standardized.npy")[:32])
    return root


@pytest.fixture
def project(workspace, tmp_path, monkeypatch) -> Path:
    """A fresh working directory whose models/ and data/ point at the workspace."""
    for name in ("models", "data"):
        (tmp_path / name).symlink_to(workspace / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pyproject(folder: Path, body: str, *models: str) -> None:
    text = (
        '[project]\nname = "team-model"\n\n[tool.lstm-doctor]\n'
        + body
        + "".join(models).replace("[[MODELS]]", "[[tool.lstm-doctor.models]]")
    )
    (folder / "pyproject.toml").write_text(text, encoding="utf-8")


def doctor_toml(folder: Path, body: str, *models: str) -> None:
    text = body + "".join(models).replace("[[MODELS]]", "[[models]]")
    (folder / "lstm-doctor.toml").write_text(text, encoding="utf-8")


# -- configuration and exit codes -------------------------------------------------------------


def test_pyproject_config_several_models_one_exit_code_and_outputs(project):
    outputs = 'outputs = { json = "out/check.json", junit = "out/junit.xml", github = "out/annotations.txt" }\n'
    pyproject(project, outputs, FIXED)
    (project / "out").mkdir()
    check(invoke("check", "--color", "never"), 0)  # the fixed twin alone: one info, passes
    pyproject(project, outputs, BROKEN, FIXED)
    out = check(invoke("check", "--color", "never"), 1).stdout  # the broken encoder fails the whole run
    assert "lstm-doctor check (pyproject.toml, fail-on error)" in out
    assert re.search(r"broken\s+│\s+\d+\s+│", out) and "models/fixed" in out and "exit 1" in out

    doc = json.loads((project / "out" / "check.json").read_text(encoding="utf-8"))
    assert errors(doc, "check") == []
    assert [m["id"] for m in doc["models"]] == ["broken", "models/fixed"]
    assert doc["summary"]["exit_code"] == 1 and doc["summary"]["models"] == 2
    assert doc["config_file"] == "pyproject.toml"
    assert [m["report"]["summary"]["exit_code"] for m in doc["models"]] == [1, 0]

    root = ET.parse(project / "out" / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["lstm-doctor: broken", "lstm-doctor: models/fixed"]
    assert int(suites[0].get("failures")) > 0 and suites[1].get("failures") == "0"
    assert int(root.get("tests")) == sum(int(s.get("tests")) for s in suites)

    annotations = (project / "out" / "annotations.txt").read_text(encoding="utf-8").splitlines()
    assert len(annotations) == sum(len(m["report"]["findings"]) for m in doc["models"])
    assert all(
        line.startswith(("::error file=models/", "::warning file=models/", "::notice file=models/"))
        for line in annotations
    )


def test_lstm_doctor_toml_wins_and_cli_flags_override_it(project):
    pyproject(project, 'fail-on = "error"\n', BROKEN)  # would exit 1: lstm-doctor.toml is read first
    doctor_toml(project, 'fail-on = "info"\nthresholds = { I503 = { low_scale = 0.05 } }\n', FIXED)
    out = check(invoke("check", "--format", "json"), 1).stdout  # the fixed twin's info fails at fail-on info
    doc = json.loads(out)
    assert doc["config_file"] == "lstm-doctor.toml" and [m["id"] for m in doc["models"]] == ["models/fixed"]
    config = doc["models"][0]["report"]["config"]
    assert config["fail_on"] == "info" and config["thresholds"]["I503"]["low_scale"] == 0.05
    check(invoke("check", "--fail-on", "error"), 0)
    check(invoke("check", "--ignore", "I5"), 0)
    check(invoke("check", "--select", "W"), 0)
    doc = json.loads(check(invoke("check", "--format", "json", "--threshold", "I503.low_scale=0.02"), 1).stdout)
    assert doc["models"][0]["report"]["config"]["thresholds"]["I503"]["low_scale"] == 0.02
    # --config names another file; its paths are relative to it.
    sub = project / "ci"
    sub.mkdir()
    (sub / "doctor.toml").write_text(
        FIXED.replace("[[MODELS]]", "[[models]]").replace('"models/', '"../models/').replace('"data/', '"../data/'),
        encoding="utf-8",
    )
    doc = json.loads(check(invoke("check", "--config", sub / "doctor.toml", "--format", "json"), 0).stdout)
    assert doc["models"][0]["id"] == "../models/fixed"


@pytest.mark.parametrize(
    "config, args, needle",
    [
        (None, (), "no lstm-doctor.toml"),
        ('colour = "red"\n', (), "unknown key(s) colour"),
        ('fail-on = "fatal"\n', (), "fail-on 'fatal'"),
        ('outputs = { pdf = "r.pdf" }\n', (), "unknown format 'pdf'"),
        ("", ("--report", "junit"), "expected FORMAT=FILE"),
        ("", ("--baseline", "missing.json"), "baseline not found"),
        ("", ("--threshold", "S301.nope=1"), "has no parameter"),
        ('thresholds = { S301 = { share = "high" } }\n', (), "must be a number"),
    ],
)
def test_usage_errors_exit_2_with_one_line(project, config, args, needle):
    if config is not None:
        doctor_toml(project, config, FIXED)
    r = check(invoke("check", *args), 2)
    assert needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_missing_model_is_named(project):
    doctor_toml(project, "", FIXED.replace("models/fixed", "models/nowhere"))
    r = check(invoke("check"), 2)
    assert "model 'models/nowhere'" in r.stderr and r.stderr.count("\n") == 1


# -- baselines -----------------------------------------------------------------------------------


def test_baseline_fails_only_on_new_findings(project):
    doctor_toml(project, "", BROKEN)
    check(invoke("check"), 1)
    # Record today's findings: exit 0, a stable file (no timestamp) that validates.
    check(invoke("check", "--write-baseline", "base.json"), 0)
    base = json.loads((project / "base.json").read_text(encoding="utf-8"))
    assert errors(base, "baseline") == [] and "created" not in base
    keys = {(f["model"], f["code"], f["layer"], f["direction"], f["gate"]) for f in base["findings"]}
    assert ("broken", "A201", 0, "fwd", "h") in keys
    out = check(invoke("check", "--baseline", "base.json", "--color", "never"), 0).stdout
    assert "only findings new relative to it fail" in out

    # A finding missing from the baseline is new: exit 1, and it is named.
    base["findings"] = [f for f in base["findings"] if f["code"] != "A201"]
    (project / "partial.json").write_text(json.dumps(base), encoding="utf-8")
    out = check(
        invoke(
            "check",
            "--baseline",
            "partial.json",
            "--color",
            "never",
            "--report",
            "json=out.json",
            "--report",
            "junit=junit.xml",
        ),
        1,
    ).stdout
    assert "new: error A201 broken" in out
    doc = json.loads((project / "out.json").read_text(encoding="utf-8"))
    report = doc["models"][0]["report"]
    assert errors(doc, "check") == [] and doc["summary"]["new"] == 1
    assert {f["code"] for f in report["findings"] if f["baseline"] == "new"} == {"A201"}
    assert report["check"] == {
        "model_id": "broken",
        "baseline": "partial.json",
        "new": 1,
        "known": len(report["findings"]) - 1,
    }
    failed = [c.get("name") for c in ET.parse(project / "junit.xml").iter("testcase") if c.find("failure") is not None]
    assert failed == ["A201 hidden-activation"]
    # Only errors fail at fail-on error: a new warning does not.
    base["findings"] = [f for f in json.loads((project / "base.json").read_text())["findings"] if f["code"] != "I504"]
    (project / "no_i504.json").write_text(json.dumps(base), encoding="utf-8")
    check(invoke("check", "--baseline", "no_i504.json"), 0)
    check(invoke("check", "--baseline", "no_i504.json", "--fail-on", "warning"), 1)


def test_baseline_matches_by_location_not_by_message(project):
    doctor_toml(project, "", BROKEN)
    check(invoke("check", "--report", "json=previous.json", "--exit-zero"), 0)
    previous = json.loads((project / "previous.json").read_text(encoding="utf-8"))
    for f in previous["models"][0]["report"]["findings"]:
        f["message"], f["evidence"], f["fix"] = "reworded", {}, ""
    (project / "previous.json").write_text(json.dumps(previous), encoding="utf-8")
    check(invoke("check", "--baseline", "previous.json"), 0)  # a check output as baseline
    # A plain diagnose report works too (its findings match any model id).
    report = previous["models"][0]["report"]
    (project / "report.json").write_text(json.dumps(report), encoding="utf-8")
    check(invoke("check", "--baseline", "report.json"), 0)
    # Another model id does not match a check output's findings.
    doctor_toml(project, "", BROKEN.replace('name = "broken"', 'name = "renamed"'))
    check(invoke("check", "--baseline", "previous.json"), 1)


def test_baseline_from_config_and_no_baseline(project):
    doctor_toml(project, 'baseline = "base.json"\n', BROKEN)
    (project / "base.json").write_text('{"kind": "lstm-doctor-baseline", "findings": []}', encoding="utf-8")
    check(invoke("check"), 1)  # an empty baseline: every finding is new
    check(invoke("check", "--write-baseline", "base.json"), 0)
    check(invoke("check"), 0)
    check(invoke("check", "--no-baseline"), 1)


# -- the README's CI example ------------------------------------------------------------------


def _readme_ci_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text[text.index("## Use in CI") : text.index("\n## ", text.index("## Use in CI") + 5)]


def test_readme_ci_example_works_as_written(tmp_path, monkeypatch):
    section = _readme_ci_section()
    config = re.search(r"```toml\n(# lstm-doctor.toml\n.*?)```", section, re.S).group(1)
    commands = [
        line.split("#")[0].strip() for line in section.splitlines() if line.strip().startswith("lstm-doctor check")
    ]
    assert len(commands) >= 4, commands
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "lstm-doctor.toml").write_text(config, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = shlex.split(command)[1:]
        result = check(invoke(*args), 0)
        if "--format" in args and "github" in args:
            assert result.stdout == ""  # the fixed example has no annotation left (I503 is ignored)
    junit = ET.parse(tmp_path / "lstm-doctor-junit.xml").getroot()
    assert junit.get("failures") == "0" and int(junit.get("tests")) > 0
    assert (tmp_path / "lstm-doctor-baseline.json").is_file()
    assert (tmp_path / "lstm-doctor.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
