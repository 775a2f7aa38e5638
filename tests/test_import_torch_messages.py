"""PyTorch files: prefixes, mixed recurrent layers and TorchScript, read or refused in one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lstm_doctor.capture.engines import run_chunk
from lstm_doctor.errors import ModelError
from lstm_doctor.load import LoadOptions, load_model

torch = pytest.importorskip("torch")
X = np.random.default_rng(21).normal(size=(6, 2, 3)).astype(np.float32)


def _h(model):
    return run_chunk(model, X, engine="numpy")[(0, "fwd")].h


def _torch_h(lstm):
    with torch.no_grad():
        return lstm(torch.from_numpy(X))[0].numpy()


class EncoderDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = torch.nn.Module(), torch.nn.Module()
        self.encoder.rnn = torch.nn.LSTM(3, 4)
        self.decoder.rnn = torch.nn.LSTM(4, 5)
        self.encoder2 = torch.nn.LSTM(3, 2)


def test_layer_prefix_is_a_prefix(tmp_path):
    torch.manual_seed(0)
    net = EncoderDecoder()
    torch.save(net.state_dict(), tmp_path / "ed.pt")
    model = load_model(tmp_path / "ed.pt", options=LoadOptions(layer_prefix="encoder"))
    assert model.name == "encoder.rnn" and model.layers[0].H == 4  # whole component, not encoder2
    assert np.abs(_h(model) - _torch_h(net.encoder.rnn)).max() <= 1e-5
    assert load_model(tmp_path / "ed.pt", options=LoadOptions(layer_prefix="dec")).layers[0].H == 5
    with pytest.raises(ModelError, match="matches 2 recurrent layers"):
        load_model(tmp_path / "ed.pt", options=LoadOptions(layer_prefix="en"))


def test_gru_beside_an_lstm_is_named(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.gru, net.lstm = torch.nn.GRU(3, 4), torch.nn.LSTM(3, 4)
    torch.save(net.state_dict(), tmp_path / "gl.pt")
    model = load_model(tmp_path / "gl.pt")
    assert model.name == "lstm" and any("'gru.' (a GRU)" in n for n in model.notes)
    assert np.abs(_h(model) - _torch_h(net.lstm)).max() <= 1e-5
    net.lstm2 = torch.nn.LSTM(3, 2)
    torch.save(net.state_dict(), tmp_path / "gll.pt")
    with pytest.raises(ModelError, match=r"'gru\.' \(a GRU\), 'lstm\.' \(an LSTM\), 'lstm2\.' \(an LSTM\)"):
        load_model(tmp_path / "gll.pt")


def test_torchscript_needs_trust_in_one_line(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4)
    torch.jit.script(lstm).save(str(tmp_path / "ts.pt"))
    proc = subprocess.run([sys.executable, "-m", "lstm_doctor", "inspect", str(tmp_path / "ts.pt")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TorchScript" in lines[0] and "--trust-pickle" in lines[0], proc.stderr
    model = load_model(tmp_path / "ts.pt", options=LoadOptions(trust_pickle=True))
    assert np.abs(_h(model) - _torch_h(lstm)).max() <= 1e-5
