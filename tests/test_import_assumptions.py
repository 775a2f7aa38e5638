"""The report states, per layer, what the diagnosis assumed and where each item came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lstm_doctor.cli.main import cli

torch = pytest.importorskip("torch")


def _diagnose(*args):
    result = CliRunner().invoke(cli, ["diagnose", *args, "--format", "json", "--exit-zero", "--engine", "numpy"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _items(report, k=0):
    return {a["item"]: (a["value"], a["source"]) for a in report["model"]["layers"][k]["assumptions"]}


def test_assumptions_name_their_source(tmp_path):
    torch.manual_seed(0)
    torch.save(torch.nn.LSTM(3, 4).state_dict(), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(6, 5, 3)).astype(np.float32))
    np.save(tmp_path / "L.npy", np.array([6, 4, 3, 5, 2]))
    items = _items(_diagnose(str(tmp_path / "m.pt"), "--inputs", str(tmp_path / "x.npy")))
    assert items["input layout"][1] == "default"  # a state_dict does not say batch_first
    assert items["gate order"] == ("ifgo", "file")
    assert items["padding and masking"][1] == "default"
    items = _items(_diagnose(str(tmp_path / "m.pt"), "--inputs", str(tmp_path / "x.npy"), "--layout", "tbd",
                             "--lengths", str(tmp_path / "L.npy"), "--padding", "pre"))
    assert items["input layout"] == ("tbd", "flag")
    assert items["padding and masking"] == ("lengths given, padding pre", "flag")


def test_inspect_says_what_the_file_leaves_open(tmp_path):
    """inspect shows the assumptions a diagnosis would make: a state_dict's input layout is
    lstm_doctor's default, a native model's is stated by its TOML."""
    torch.manual_seed(0)
    torch.save(torch.nn.LSTM(3, 4).state_dict(), tmp_path / "m.pt")
    text = CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.pt")])
    assert text.exit_code == 0 and "assumed (the file does not say): input layout btd" in text.output
    data = json.loads(CliRunner().invoke(cli, ["inspect", str(tmp_path / "m.pt"), "--format", "json"]).output)
    assert data["layers"][0]["assumed"]["input layout"].startswith("btd")
    example = Path(__file__).resolve().parents[1] / "examples" / "tweet2vec_like" / "fixed"
    native = CliRunner().invoke(cli, ["inspect", str(example)])
    assert native.exit_code == 0 and "assumed" not in native.output
