"""The command line: exit codes 0/1/2, one-line errors, formats, demo, trace, rules and explain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from factory import direction, normal_inputs

from lstm_doctor.analyzers import RULES
from lstm_doctor.capture.engines import run_chunk
from lstm_doctor.cli.main import cli
from lstm_doctor.load import native
from lstm_doctor.model import Activations, Layer, LSTMModel

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tweet2vec_like"
DEFERRED: set[str] = set()  # issue 5 delivered A204, H602, G701, G702
CATALOGUE = {
    "W101", "W102", "W103", "W104", "W105", "W106", "A201", "A202", "A203", "A204",
    "S301", "S302", "S303", "S304", "C401", "C402", "I501", "I502", "I503", "I504",
    "I505", "I506", "H601", "H602", "H603", "H604", "G701", "G702",
    "A205", "I507", "I508",  # issue 15: what the model file leaves open, as findings
}  # fmt: skip


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def check(result, code):
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def healthy_model(tmp_path_factory):
    """Small zero-mean weights (uniform ±1/√H), tanh, forget bias 1, and standardized inputs."""
    folder = tmp_path_factory.mktemp("healthy")
    m = LSTMModel((Layer(direction(8, 32, init="torch", forget_bias=1.0, seed=3), None, Activations()),), name="healthy")
    native.save(m, folder)
    x = normal_inputs(n=64, T=40, D=8, seed=5)
    np.save(folder / "x.npy", x)
    return folder, m, x


def test_help_and_version_do_not_import_heavy_modules():
    code = (
        "import sys; from lstm_doctor.cli.main import main; sys.argv=['lstm-doctor','--help'];\n"
        "try: main()\nexcept SystemExit: pass\n"
        "assert 'pytensor' not in sys.modules and 'matplotlib' not in sys.modules, "
        "[m for m in sys.modules if m.split('.')[0] in ('pytensor','matplotlib')]"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "diagnose" in out.stdout
    assert invoke("--version").stdout.startswith("lstm-doctor, version")


HEAVY_MODULES = ("torch", "pytensor", "theano", "matplotlib", "scipy", "keras", "tensorflow", "jax", "onnx",
                 "onnxruntime", "numba", "llvmlite")


def test_diagnose_of_a_pt_file_to_json_imports_no_heavy_module(tmp_path):
    """Issue 18.1: the project's own .pt reader, the fused engine, the gradients and the JSON
    renderer: a whole ``diagnose m.pt --format json`` process never imports a framework or plotting."""
    corpus = Path(__file__).resolve().parents[1] / "corpus" / "adding"
    out = tmp_path / "r.json"
    code = (
        "import sys; from lstm_doctor.cli.main import main\n"
        f"sys.argv = ['lstm-doctor', 'diagnose', {str(corpus / 'model.pt')!r}, '--inputs', "
        f"{str(corpus / 'inputs.npy')!r}, '--format', 'json', '--output', {str(out)!r}, '--exit-zero']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY_MODULES!r})\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["model"]["format"] == "torch" and report["statistics"]["gradients"]["memory_horizon"] >= 1


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "lstm_doctor", "rules"], capture_output=True, text=True)
    assert out.returncode == 0 and "W101" in out.stdout


def test_demo_json_names_the_case_defects_and_the_fixed_twin_is_clean():
    result = check(invoke("demo", "--format", "json"), 0)
    data = json.loads(result.stdout)
    broken = {f["code"] for f in data["broken"]["findings"]}
    assert {"S301", "A201", "C401", "H601", "W101"} <= broken
    assert {"I501", "I504", "W102"} <= broken  # the other CASE.md defects, each named
    assert not [f for f in data["fixed"]["findings"] if f["severity"] == "error"]


def test_demo_text_shows_the_diagnosis_the_what_if_and_the_comparison_in_one_screen(monkeypatch):
    monkeypatch.setenv("COLUMNS", "110")
    out = check(invoke("demo", "--color", "never"), 0).stdout
    for needle in ("Diagnosis:", "W101", "A201", "I504", "fix:", "Explained by the above:", "C401", "H601",
                   "What-if", "fixed twin", "--format html"):
        assert needle in out, needle
    assert out.index("Diagnosis:") < out.index("W101") < out.index("What-if") < out.index("fixed twin")
    assert len(out.splitlines()) <= 66  # about one screen at 110 columns (issue 20); + G701, H602 (gradients by default)


def test_healthy_model_exits_0_without_warning_or_error(healthy_model):
    folder, _, _ = healthy_model
    result = check(invoke("diagnose", folder, "--inputs", folder / "x.npy", "--format", "json"), 0)
    data = json.loads(result.stdout)
    assert not [f for f in data["findings"] if f["severity"] in ("error", "warning")], data["findings"]
    assert data["summary"]["exit_code"] == 0


def test_broken_model_exits_1_and_exit_zero_and_fail_on(tmp_path):
    check(invoke("diagnose", EXAMPLE / "broken", "--inputs", EXAMPLE / "conv_output.npy"), 1)
    check(invoke("diagnose", EXAMPLE / "broken", "--inputs", EXAMPLE / "conv_output.npy", "--exit-zero"), 0)
    # The fixed twin has an info (a constant channel) only: fail-on info makes it exit 1.
    fixed = ("diagnose", EXAMPLE / "fixed", "--inputs", EXAMPLE / "conv_output_standardized.npy")
    check(invoke(*fixed), 0)
    check(invoke(*fixed, "--fail-on", "info"), 1)


def test_json_report_has_the_documented_top_level_keys(healthy_model):
    folder, _, _ = healthy_model
    data = json.loads(invoke("diagnose", folder, "--inputs", folder / "x.npy", "--format", "json").stdout)
    for key in ("schema_version", "tool", "model", "inputs", "findings", "summary"):
        assert key in data
    assert data["model"]["files"][0]["sha256"]
    assert data["inputs"]["sequences"] == 64


def test_without_inputs_runs_probes_and_says_so(healthy_model):
    folder, _, _ = healthy_model
    out = check(invoke("diagnose", folder, "--color", "never"), 0).stdout
    assert "synthetic probe" in out
    # --no-gradients: constant inputs cannot move the encodings, so H602 would fire (an all-zeros probe
    # is not evidence of an input-insensitive model; see the gradflow report)
    data = json.loads(
        check(invoke("diagnose", folder, "--probe", "zeros", "--format", "json", "--no-gradients"), 0).stdout
    )
    assert data["inputs"]["probe"] == "zeros"


def test_rules_about_the_users_inputs_are_not_evaluated_on_a_probe(healthy_model):
    """The input rules that judge the user's data (scale, layout, padding, mask) say so on a
    synthetic probe instead of judging it; the same model with real inputs evaluates them."""
    folder, _, _ = healthy_model
    probe = json.loads(check(invoke("diagnose", folder, "--format", "json"), 0).stdout)
    about_inputs = {code for code, r in RULES.items() if r.real_inputs}
    assert about_inputs == {"I503", "I504", "I506", "I507", "I508"}
    assert {c: probe["not_evaluated"].get(c) for c in about_inputs} == dict.fromkeys(about_inputs, "synthetic probe inputs")
    real = json.loads(check(invoke("diagnose", folder, "--inputs", folder / "x.npy", "--format", "json"), 0).stdout)
    assert not about_inputs & set(real["not_evaluated"])


def test_select_ignore_and_threshold():
    args = ("diagnose", EXAMPLE / "broken", "--inputs", EXAMPLE / "conv_output.npy", "--format", "json")
    only_w = json.loads(invoke(*args, "--select", "W").stdout)
    assert {f["code"][0] for f in only_w["findings"]} == {"W"}
    # longest prefix wins: select W, ignore W10, but select W101 again
    mixed = json.loads(invoke(*args, "--select", "W,W101", "--ignore", "W10").stdout)
    assert {f["code"] for f in mixed["findings"]} == {"W101"}
    relaxed = json.loads(invoke(*args, "--select", "H601", "--threshold", "H601.cosine=1.5").stdout)
    assert relaxed["findings"] == []
    assert relaxed["config"]["thresholds"]["H601"]["cosine"] == 1.5


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--select", "Z9"), "matches no rule"),
        (("--threshold", "S301.nope=1"), "has no parameter"),
        (("--threshold", "X999.a=1"), "unknown code"),
        (("--threshold", "S301.share"), "CODE.param=value"),
    ],
)
def test_unknown_codes_and_parameters_are_usage_errors(args, needle):
    r = check(invoke("diagnose", EXAMPLE / "broken", *args), 2)
    assert needle in r.stderr and r.stderr.count("\n") == 1


def test_malformed_inputs_give_exit_2_and_one_line(tmp_path, healthy_model):
    folder, _, x = healthy_model
    np.save(tmp_path / "rank2.npy", x[0])
    np.save(tmp_path / "wrong_d.npy", x[..., :5])
    (tmp_path / "text.npy").write_text("not an array")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases = {
        "rank2.npy": "rank 2",
        "wrong_d.npy": "D=5",
        "missing.npy": "no such file",
        "text.npy": "not a readable",
        "obj.npy": "Python objects",
    }
    for name, needle in cases.items():
        r = check(invoke("diagnose", folder, "--inputs", tmp_path / name), 2)
        line = r.stderr.strip()
        assert "\n" not in line and needle in line and str(tmp_path / name) in line, line
        assert "Traceback" not in r.stderr


def test_missing_model_and_bad_spec_give_exit_2(tmp_path):
    r = check(invoke("diagnose", tmp_path / "nope"), 2)
    assert "no such file" in r.stderr
    (tmp_path / "lstm.toml").write_text('[model]\nweights = "w.npz"\nbogus = 1\n')
    r = check(invoke("diagnose", tmp_path / "lstm.toml"), 2)
    assert "unknown key model.'bogus'" in r.stderr
    (tmp_path / "lstm.toml").write_text("[model\nweights = 1\n")
    r = check(invoke("diagnose", tmp_path / "lstm.toml"), 2)
    assert "line 1" in r.stderr


def test_output_is_written_atomically_and_never_over_an_input(tmp_path, healthy_model):
    folder, _, _ = healthy_model
    out = tmp_path / "report.json"
    check(invoke("diagnose", folder, "--inputs", folder / "x.npy", "--format", "json", "-o", out), 0)
    assert json.loads(out.read_text())["schema_version"]
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left behind
    before = (folder / "x.npy").read_bytes()
    r = check(invoke("diagnose", folder, "--inputs", folder / "x.npy", "-o", folder / "x.npy"), 2)
    assert "refusing to overwrite an input" in r.stderr
    assert (folder / "x.npy").read_bytes() == before


def test_trace_matches_the_reference(tmp_path, healthy_model):
    folder, m, x = healthy_model
    out = tmp_path / "trace.npz"
    check(invoke("trace", folder, "--inputs", folder / "x.npy", "--out", out), 0)
    rec = run_chunk(m, x.transpose(1, 0, 2))[(0, "fwd")]
    with np.load(out) as t:
        assert set(t.files) == {"h", "c", "i", "f", "g", "o", "preact"}
        assert t["h"].shape == (64, 40, 32)
        for name in ("h", "c", "i", "f", "g", "o", "preact"):
            np.testing.assert_allclose(t[name], getattr(rec, name).transpose(1, 0, 2), atol=1e-6)
    check(invoke("trace", folder, "--inputs", folder / "x.npy", "--out", out, "--steps", "2:5", "--units", "0,3-4"), 0)
    with np.load(out) as t:
        assert t["h"].shape == (64, 3, 3)
        np.testing.assert_allclose(t["h"], rec.h.transpose(1, 0, 2)[:, 2:5][..., [0, 3, 4]], atol=1e-6)
        assert t["preact"].shape == (64, 3, 12)
    check(invoke("trace", folder, "--inputs", folder / "x.npy", "--out", out, "--steps", "9:3"), 2)


def test_trace_keys_for_stacked_bidirectional(tmp_path):
    m = LSTMModel(
        (
            Layer(direction(4, 6, seed=1), direction(4, 6, seed=2)),
            Layer(direction(12, 5, seed=3)),
        )
    )
    native.save(m, tmp_path / "m")
    x = normal_inputs(n=3, T=7, D=4)
    np.save(tmp_path / "x.npy", x)
    check(invoke("trace", tmp_path / "m", "--inputs", tmp_path / "x.npy", "--out", tmp_path / "t.npz"), 0)
    with np.load(tmp_path / "t.npz") as t:
        assert {"l0.h", "l0.rev.h", "l1.h"} <= set(t.files)
        # the backward direction is returned in input time order: its final state sits at t = 0
        rec = run_chunk(m, x.transpose(1, 0, 2))
        np.testing.assert_allclose(t["l0.rev.h"][:, 0], rec[(0, "rev")].h[-1], atol=1e-6)


def test_rules_lists_exactly_the_registry_and_explain_covers_it():
    assert set(RULES) == CATALOGUE - DEFERRED
    data = json.loads(check(invoke("rules", "--format", "json"), 0).stdout)
    assert [r["code"] for r in data] == sorted(RULES)
    text = check(invoke("rules"), 0).stdout
    for code in RULES:
        assert code in text
        doc = check(invoke("explain", code.lower()), 0).stdout
        for section in ("## What it does", "## Why it matters", "## Example", "## Fix"):
            assert section in doc
    r = check(invoke("explain", "Q123"), 2)
    assert "unknown rule" in r.stderr
