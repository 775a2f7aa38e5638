"""Real framework files through the CLI: diagnose, inspect, and the activation a config declares."""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np
import pytest
from click.testing import CliRunner
from factory import normal_inputs

from lstm_doctor.cli.main import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("x")
    np.save(folder / "x.npy", normal_inputs(n=64, T=30, D=8, seed=11))
    return folder / "x.npy"


def test_healthy_torch_model_has_no_warning_and_inspect_describes_it(tmp_path, inputs):
    import torch
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 32, batch_first=True)
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    r = invoke("diagnose", tmp_path / "lstm.pt", "--inputs", inputs, "--format", "json")
    report = json.loads(r.stdout)
    assert r.exit_code == 0, report["findings"]
    assert report["model"]["format"] == "torch"
    assert not [f for f in report["findings"] if f["severity"] in ("warning", "error")], report["findings"]
    r = invoke("inspect", tmp_path / "lstm.pt", "--format", "json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["layers"][0]["H"] == 32 and info["layers"][0]["D"] == 8
    assert "layer 0" in invoke("inspect", tmp_path / "lstm.pt").stdout


def _keras_model(path, **kwargs):
    import keras

    model = keras.Sequential([keras.Input((30, 8)), keras.layers.LSTM(16, **kwargs)])
    model.save(path)


def test_keras_sigmoid_activation_reports_a201(tmp_path, inputs):
    import keras  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)
    _keras_model(tmp_path / "m.keras", activation="sigmoid")
    r = invoke("diagnose", tmp_path / "m.keras", "--inputs", inputs, "--format", "json", "--select", "A")
    codes = {f["code"] for f in json.loads(r.stdout)["findings"]}
    assert "A201" in codes and r.exit_code == 1


def test_healthy_keras_model_has_no_warning(tmp_path, inputs):
    import keras  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)
    _keras_model(tmp_path / "m.keras")
    r = invoke("diagnose", tmp_path / "m.keras", "--inputs", inputs, "--format", "json")
    findings = json.loads(r.stdout)["findings"]
    assert r.exit_code == 0
    assert not [f for f in findings if f["severity"] in ("warning", "error")], findings


def test_format_override_and_a_wrong_format_is_a_one_line_error(tmp_path, inputs):
    np.savez(tmp_path / "w.npz", a=np.zeros(3))
    r = invoke("diagnose", tmp_path / "w.npz", "--model-format", "torch", "--inputs", inputs)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "w.npz") in r.stderr and r.stderr.count("\n") == 1
