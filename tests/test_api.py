"""The Python API on model files: the CLI's job, arrays or paths as inputs, filters, the docs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lstm_doctor
from lstm_doctor.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tweet2vec_like"
CREATED = "2026-01-01T00:00:00+00:00"


def test_file_route_is_the_cli_job(tmp_path):
    out = tmp_path / "cli.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lstm_doctor", "diagnose", str(EXAMPLE / "broken"), "--inputs",
         str(EXAMPLE / "conv_output.npy"), "--format", "json", "--output", str(out), "--engine", "numpy"],
        capture_output=True, text=True, cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1, proc.stderr
    cli = json.loads(out.read_text())
    report = lstm_doctor.diagnose(str(EXAMPLE / "broken"), inputs=str(EXAMPLE / "conv_output.npy"), engine="numpy")
    api = json.loads(report.to_json())
    assert report.exit_code == 1 == cli["summary"]["exit_code"]
    assert api["findings"] == cli["findings"]
    assert {"W101", "A201", "I504"} <= {f["code"] for f in report.findings}
    for key in ("model", "inputs", "summary", "statistics"):
        assert api[key] == cli[key]


def test_array_inputs_give_the_findings_of_the_file():
    x = np.load(EXAMPLE / "conv_output.npy")
    from_path = lstm_doctor.diagnose(str(EXAMPLE / "broken"), str(EXAMPLE / "conv_output.npy"), created=CREATED)
    from_array = lstm_doctor.diagnose(str(EXAMPLE / "broken"), inputs=x, created=CREATED)
    assert from_array.findings == from_path.findings
    assert from_array.reports[from_array.modules[0]]["inputs"]["source"] == "array"


def test_select_ignore_thresholds_and_fail_on():
    path, x = str(EXAMPLE / "fixed"), str(EXAMPLE / "conv_output_standardized.npy")
    healthy = lstm_doctor.diagnose(path, inputs=x)
    assert healthy.exit_code == 0
    broken = str(EXAMPLE / "broken")
    only_w = lstm_doctor.diagnose(broken, inputs=str(EXAMPLE / "conv_output.npy"), select=["W1"])
    assert only_w.findings and all(f["code"].startswith("W1") for f in only_w.findings)
    no_w = lstm_doctor.diagnose(broken, inputs=str(EXAMPLE / "conv_output.npy"), ignore=["W"])
    assert not any(f["code"].startswith("W") for f in no_w.findings)
    with pytest.raises(UserError):
        lstm_doctor.diagnose(broken, inputs=str(EXAMPLE / "conv_output.npy"), select=["Q9"])
    strict = lstm_doctor.diagnose(path, inputs=x, fail_on="info")
    assert strict.exit_code == (1 if strict.findings else 0)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        lstm_doctor.diagnose(str(tmp_path / "missing.pt"), inputs=np.zeros((2, 3, 4)))
    with pytest.raises(UserError, match="lengths"):
        lstm_doctor.diagnose(str(EXAMPLE / "fixed"), inputs=np.load(EXAMPLE / "conv_output.npy"),
                             lengths=np.zeros(3, dtype=np.int64))
    with pytest.raises(UserError, match="live model"):
        torch = pytest.importorskip("torch")
        lstm_doctor.diagnose(torch.nn.LSTM(3, 4), torch.zeros(2, 5, 3), layer_prefix="x")


def test_import_stays_light():
    code = (
        "import sys, lstm_doctor; heavy = [m for m in ('numpy', 'torch', 'keras', 'lstm_doctor.api') if m in sys.modules];"
        "print(heavy); assert lstm_doctor.__version__; assert callable(lstm_doctor.diagnose)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_api_docs_are_the_docstrings():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "make_api_md.py"), "--check"], capture_output=True,
                          text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    text = (ROOT / "docs" / "api.md").read_text()
    assert lstm_doctor.api.diagnose.__doc__.strip().splitlines()[0] in text
