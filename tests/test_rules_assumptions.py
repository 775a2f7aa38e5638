"""What the file leaves open and the inputs cannot decide is a finding (I507, I508, A205).

Each rule fires on a file that leaves its setting open and stays quiet where the
file states it, the user states it, or (I507) the inputs confirm it.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "numpy")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from lstm_doctor.cli.main import cli  # noqa: E402
from lstm_doctor.findings import Severity  # noqa: E402

D, H = 4, 8


def findings(model, inputs, *extra):
    result = CliRunner().invoke(
        cli, ["diagnose", str(model), "--inputs", str(inputs), "--format", "json", "--exit-zero", *extra]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    return {f["code"]: f for f in report["findings"]}, report


def torch_state_dict(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save(torch.nn.LSTM(D, H).state_dict(), path)
    return path


def smooth_btd(B=48, T=40):
    """Sines of random frequency and phase: neighbouring steps correlate, sequences do not."""
    rng = np.random.default_rng(5)
    t = np.arange(T)[None, :, None]
    freq, phase = rng.uniform(0.05, 0.3, (B, 1, D)), rng.uniform(0, 2 * np.pi, (B, 1, D))
    return np.sin(freq * t + phase).astype(np.float32)


# -- I507 layout-unconfirmed ---------------------------------------------------------------


def test_i507_quiet_when_the_inputs_show_which_axis_is_time(tmp_path):
    np.save(tmp_path / "x.npy", smooth_btd())
    codes, _ = findings(torch_state_dict(tmp_path), tmp_path / "x.npy")
    assert "I507" not in codes


def test_i507_warns_when_the_axes_look_swapped(tmp_path):
    # The same sines stored (T, B, D), as nn.LSTM's default batch_first=False takes them.
    np.save(tmp_path / "x.npy", smooth_btd().transpose(1, 0, 2).copy())
    model = torch_state_dict(tmp_path)
    codes, _ = findings(model, tmp_path / "x.npy")
    f = codes["I507"]
    assert Severity.parse(f["severity"]) == Severity.warning
    assert "swapped" in f["message"] and "--layout tbd" in f["fix"]
    assert f["evidence"]["sequence_correlation"] > f["evidence"]["step_correlation"] + 0.1
    # stated by the user: nothing left to say
    codes, report = findings(model, tmp_path / "x.npy", "--layout", "tbd")
    assert "I507" not in codes
    layout = {a["item"]: a for a in report["model"]["layers"][0]["assumptions"]}["input layout"]
    assert layout["value"] == "tbd" and layout["source"] == "flag"


def test_i507_is_info_when_the_inputs_cannot_tell(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(6).normal(size=(48, 40, D)).astype(np.float32))
    model = torch_state_dict(tmp_path)
    codes, report = findings(model, tmp_path / "x.npy")
    assert Severity.parse(codes["I507"]["severity"]) == Severity.info
    assert "do not confirm" in codes["I507"]["message"]
    layout = {a["item"]: a for a in report["model"]["layers"][0]["assumptions"]}["input layout"]
    assert layout["source"] == "default"
    # --layout btd, the same reading, stated: quiet, and the report says it was given
    codes, report = findings(model, tmp_path / "x.npy", "--layout", "btd")
    assert "I507" not in codes
    layout = {a["item"]: a for a in report["model"]["layers"][0]["assumptions"]}["input layout"]
    assert layout["source"] == "flag"


def test_i507_quiet_where_the_file_records_the_layout(tmp_path):
    # A .keras model is batch-first by definition: noise inputs, and still nothing to say.
    model = keras.Sequential([keras.Input((40, D)), keras.layers.LSTM(H)])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(6).normal(size=(48, 40, D)).astype(np.float32))
    codes, _ = findings(tmp_path / "m.keras", tmp_path / "x.npy")
    assert "I507" not in codes


# -- I508 mask-not-applied -----------------------------------------------------------------


def masking_model(tmp_path, T=9):
    model = keras.Sequential([keras.Input((T, D)), keras.layers.Masking(0.0), keras.layers.LSTM(H)])
    model.save(tmp_path / "m.keras")
    return tmp_path / "m.keras"


def pre_padded(B=16, T=9):
    rng = np.random.default_rng(7)
    x = np.zeros((B, T, D), np.float32)
    for b in range(B):
        n = int(rng.integers(2, T + 1))
        x[b, T - n:] = rng.normal(size=(n, D))
    return x


def test_i508_fires_when_the_model_masks_and_no_mask_is_given(tmp_path):
    model = masking_model(tmp_path)
    x = pre_padded()
    np.save(tmp_path / "x.npy", x)
    codes, _ = findings(model, tmp_path / "x.npy")
    f = codes["I508"]
    assert Severity.parse(f["severity"]) == Severity.warning
    assert f["evidence"]["masked_steps"] == int(np.all(x == 0, axis=2).sum())
    assert "--mask" in f["fix"]
    assert "I506" not in codes  # the same padding is said once, with the model's own mask
    codes, _ = findings(model, tmp_path / "x.npy", "--mask")
    assert "I508" not in codes


def test_i508_quiet_when_no_step_would_be_masked(tmp_path):
    model = masking_model(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(8).normal(size=(16, 9, D)).astype(np.float32))
    codes, _ = findings(model, tmp_path / "x.npy")
    assert "I508" not in codes


# -- A205 configuration-assumed ------------------------------------------------------------


def keras2_weights_only(path, version="2.2.4"):
    rng = np.random.default_rng(9)
    values = (rng.normal(size=(D, 4 * H)), rng.normal(size=(H, 4 * H)), rng.normal(size=4 * H))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"lstm_1"]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = version.encode()
        g = f.create_group("lstm_1")
        names = [b"lstm_1/kernel:0", b"lstm_1/recurrent_kernel:0", b"lstm_1/bias:0"]
        g.attrs["weight_names"] = names
        for name, value in zip(names, values):
            g.create_dataset(name.decode(), data=value.astype(np.float32))
    return path


def test_a205_says_what_a_weights_only_file_left_open(tmp_path):
    model = keras2_weights_only(tmp_path / "w.h5")
    np.save(tmp_path / "x.npy", np.random.default_rng(6).normal(size=(16, 6, D)).astype(np.float32))
    codes, _ = findings(model, tmp_path / "x.npy")
    f = codes["A205"]
    assert Severity.parse(f["severity"]) == Severity.info
    assert "hard_sigmoid" in f["evidence"]["assumed"]["gate activation"]
    assert "direction" in f["evidence"]["assumed"]


def test_a205_quiet_where_the_file_states_the_configuration(tmp_path):
    model = keras.Sequential([keras.Input((6, D)), keras.layers.LSTM(H)])
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(6).normal(size=(16, 6, D)).astype(np.float32))
    for path in (tmp_path / "m.keras", torch_state_dict(tmp_path)):
        codes, _ = findings(path, tmp_path / "x.npy")
        assert "A205" not in codes, path
