"""Watching training: a few hundred real optimisation steps with the callbacks.

PyTorch runs in this process. Keras training needs a training backend (the tests' numpy
backend only runs inference), so the Keras run is a subprocess with KERAS_BACKEND=jax.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from lstm_doctor.callbacks import LSTMDoctorWarning, TorchWatcher  # noqa: E402



@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train 20× faster on one thread than with two threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


METRICS = ("saturated_i", "saturated_f", "saturated_o", "max_abs_c", "encoding_cosine", "input_variance_share")


class Tweet2VecLike(nn.Module):
    """Character embedding → Conv1d (channels first) → time-major LSTM → linear head."""

    def __init__(self, hidden=64):
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.conv = nn.Conv1d(16, 32, 3, padding=1)
        self.rnn = nn.LSTM(32, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, chars):
        feats = torch.relu(self.conv(self.emb(chars).transpose(1, 2)))  # (B, C, L)
        y, (h, c) = self.rnn(feats.permute(2, 0, 1))  # (L, B, C): time-major
        return self.head(h[-1])


class Recorder:
    """A SummaryWriter stand-in: what add_scalar received."""

    def __init__(self):
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append((step, value))


def data(seed=0, n=64, T=24):
    gen = torch.Generator().manual_seed(seed)
    chars = torch.randint(0, 40, (n, T), generator=gen)
    labels = (chars[:, : T // 2] < 20).sum(1).gt(T // 4).long()
    return chars, labels


def train(model, watcher, steps=300):
    chars, labels = data()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    done = 0
    for step in range(steps):
        if watcher.step(step):
            break
        idx = torch.arange(step * 8, step * 8 + 8) % len(chars)
        opt.zero_grad()
        nn.functional.cross_entropy(model(chars[idx]), labels[idx]).backward()
        opt.step()
        done += 1
    return done


def test_torch_watcher_logs_metrics_over_a_training_run():
    torch.manual_seed(0)
    model = Tweet2VecLike(hidden=32)
    writer = Recorder()
    watcher = TorchWatcher(model, data(1, n=16)[0], every=100, writer=writer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LSTMDoctorWarning)  # a healthy model never warns
        assert train(model, watcher) == 300
    assert [c.step for c in watcher.history] == [0, 100, 200]
    for metric in METRICS:
        series = writer.scalars[f"lstm_doctor/rnn/{metric}"]
        assert [s for s, _ in series] == [0, 100, 200]
        assert all(math.isfinite(v) for _, v in series)
    assert watcher.history[0].metrics != watcher.history[-1].metrics  # training moved the numbers
    assert model.training  # the watcher's eval-mode capture restored train mode


def test_pinned_init_is_flagged_at_step_zero_and_stops():
    torch.manual_seed(0)
    model = Tweet2VecLike(hidden=64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the seed case: every gate weight Normal(mean 0.1, std 0.05)
        for name, p in model.rnn.named_parameters():
            if name.startswith("weight"):
                p.copy_(0.1 + 0.05 * torch.randn(p.shape, generator=gen))
    watcher = TorchWatcher(model, data(1, n=16)[0], every=100, stop_on="error")
    with pytest.warns(LSTMDoctorWarning, match="step 0") as caught:
        assert train(model, watcher) == 0
    assert len([w for w in caught if issubclass(w.category, LSTMDoctorWarning)]) == 1
    first = watcher.history[0]
    assert first.step == 0 and any(code.startswith("W101") for code in first.codes["error"])
    assert first.metrics["rnn/saturated_f"] > 0.9


def test_warns_once_without_stopping():
    torch.manual_seed(0)
    model = Tweet2VecLike(hidden=64)
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if name.startswith("weight"):
                p.copy_(0.1 + 0.05 * torch.randn(p.shape))
    watcher = TorchWatcher(model, data(1, n=16)[0], every=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(model, watcher, steps=60) == 60
    assert len([w for w in caught if issubclass(w.category, LSTMDoctorWarning)]) == 1
    assert len(watcher.history) == 3


def test_time_budget_spaces_the_checks():
    """every=None: a check waits until the training time since the last one is ≥ 32× its cost (budget 3 %)."""
    import time

    torch.manual_seed(0)
    model = Tweet2VecLike(hidden=16)
    watcher = TorchWatcher(model, data(1, n=8)[0])
    for step in range(40):  # a "training step" of 1 ms: checks of ~50 ms fit once in ~1 s
        watcher.step(step)
        time.sleep(0.001)
    assert watcher.history[0].step == 0
    assert len(watcher.history) <= 2


KERAS_RUN = textwrap.dedent(
    """
    import json, warnings
    import numpy as np, keras
    from lstm_doctor.callbacks import KerasCallback, LSTMDoctorWarning

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 20, 8)).astype("float32")
    y = (x[:, :, 0].sum(1) > 0).astype("int32")

    def make(init=None):
        inp = keras.Input((20, 8))
        c = keras.layers.Conv1D(16, 3, padding="same", activation="relu")(inp)
        kw = {} if init is None else dict(kernel_initializer=init, recurrent_initializer=init)
        h = keras.layers.LSTM(64, **kw)(c)
        m = keras.Model(inp, keras.layers.Dense(2)(h))
        m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb = KerasCallback(x[:32], every_n_batches=50)
        hist = make().fit(x, y, batch_size=4, epochs=7, verbose=0, callbacks=[cb])
        out["healthy_steps"] = [c.step for c in cb.history]
        out["healthy_keys"] = sorted(k for k in hist.history if k.startswith("lstm_doctor/"))
        out["healthy_epochs"] = len(hist.history["loss"])
        out["healthy_values"] = hist.history["lstm_doctor/model.layers[2]/saturated_f"]
        out["healthy_warnings"] = sum(issubclass(w.category, LSTMDoctorWarning) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb = KerasCallback(x[:32], stop_on="error")
        hist = make(keras.initializers.RandomNormal(0.1, 0.05)).fit(
            x, y, batch_size=4, epochs=7, verbose=0, callbacks=[cb])
        out["broken_warnings"] = [str(w.message) for w in caught if issubclass(w.category, LSTMDoctorWarning)]
        out["broken_epochs"] = len(hist.history["loss"])
        out["broken_first"] = cb.history[0].step
        out["broken_errors"] = cb.history[0].codes.get("error", [])
    print("RESULT" + json.dumps(out))
    """
)


def test_keras_callback_over_a_training_run(tmp_path):
    pytest.importorskip("keras")
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = tmp_path / "run.py"
    script.write_text(KERAS_RUN)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["healthy_steps"] == [0, 50, 100, 150, 200]  # 7 epochs × 32 batches = 224 steps
    assert out["healthy_epochs"] == 7 and out["healthy_warnings"] == 0
    for metric in METRICS:
        assert f"lstm_doctor/model.layers[2]/{metric}" in out["healthy_keys"]
    assert len(out["healthy_values"]) == 7
    assert len(out["broken_warnings"]) == 1 and "step 0" in out["broken_warnings"][0]
    assert out["broken_first"] == 0 and any(e.startswith("W101") for e in out["broken_errors"])
    assert out["broken_epochs"] == 1  # stop_on="error": stopped in the first epoch
