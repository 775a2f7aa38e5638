"""The corpus of trained LSTMs (corpus/): the models work, and lstm_doctor reads them right.

Nothing here trains. (a) Each model's task metric is re-computed from the
committed files with the model's own framework (torch, Keras on the numpy
backend, onnxruntime) on the committed held-out set; it must equal
``metric.json`` and beat the trivial baseline by a wide margin (and a broken
twin must be worse than its parent). (b) ``lstm-doctor trace`` on the
committed inputs must give the hidden states the framework computes, within
1e-4, for every layer and direction (with ``--lengths`` for the padded tagger:
only valid steps are compared).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
ENTRIES = {e["name"]: e for e in MANIFEST["models"]}
TOL = 1e-4


def _tasks():
    spec = importlib.util.spec_from_file_location("corpus_tasks", CORPUS / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tasks = _tasks()


def metric(name: str) -> dict:
    return json.loads((CORPUS / name / "metric.json").read_text())


def torch_or_skip():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def state_dict(name: str):
    torch = torch_or_skip()
    return torch.load(CORPUS / ENTRIES[name]["model"], weights_only=True)


def trace(name: str, tmp_path: Path) -> dict:
    """``lstm-doctor trace`` of a manifest entry, as a dict of arrays (B, T, H)."""
    e = ENTRIES[name]
    out = tmp_path / f"{name}.npz"
    cmd = [sys.executable, "-m", "lstm_doctor", "trace", str(CORPUS / e["model"]), "--inputs", str(CORPUS / e["inputs"]),
           "--layout", e["layout"], "--out", str(out)]
    if e.get("lengths"):
        cmd += ["--lengths", str(CORPUS / e["lengths"])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def inputs(name: str) -> np.ndarray:
    return np.load(CORPUS / ENTRIES[name]["inputs"])


def torch_lstm(sd: dict, prefix: str, layer: int, bidirectional: bool = False):
    """A one-layer nn.LSTM holding layer ``layer`` of the state_dict's LSTM at ``prefix``."""
    torch = torch_or_skip()
    W = sd[f"{prefix}weight_ih_l{layer}"]
    lstm = torch.nn.LSTM(W.shape[1], W.shape[0] // 4, batch_first=True, bidirectional=bidirectional)
    own = {}
    for suffix in ([""] + (["_reverse"] if bidirectional else [])):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            own[f"{kind}_l0{suffix}"] = sd[f"{prefix}{kind}_l{layer}{suffix}"]
    lstm.load_state_dict(own)
    return lstm.eval()


def close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    err = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
    assert err <= TOL, f"{what}: max |difference| {err:.3g} > {TOL}"


# ---------------------------------------------------------------------------
# (a) the models work


def test_manifest_lists_existing_files():
    for e in MANIFEST["models"]:
        for key in ("model", "inputs", "lengths", "metric", "expected"):
            if e.get(key):
                assert (CORPUS / e[key]).is_file(), f"{e['name']}: {e[key]}"
        x = np.load(CORPUS / e["inputs"], mmap_mode="r")
        assert x.dtype == np.float32 and x.ndim == 3 and 64 <= x.shape[0] <= 128, e["name"]


@pytest.mark.parametrize("name", ["charlm", "charlm_saturated"])
def test_charlm_metric(name):
    torch_or_skip()
    CharLM, _, _ = tasks.torch_models()
    text = tasks.read_text()
    vocab = tasks.vocabulary(text)
    train, held = tasks.split_text(text)
    model = CharLM(len(vocab))
    model.load_state_dict(state_dict(name))
    model.eval()
    got = tasks.charlm_evaluate(model, held, vocab)
    want = metric(name)
    for key in ("nats_per_char", "top1_accuracy"):
        assert got[key] == pytest.approx(want["metric"][key], abs=1e-5)
    unigram = tasks.unigram_baseline(train, held, vocab)
    assert unigram == pytest.approx(want["baseline"]["unigram"], abs=1e-9)
    if name == "charlm":
        assert got["nats_per_char"] < 0.6 * unigram["nats_per_char"]
        assert got["top1_accuracy"] > 2 * unigram["top1_accuracy"]
    else:  # the broken twin is worse than the unigram
        assert got["nats_per_char"] > unigram["nats_per_char"]


@pytest.mark.parametrize("name,scale", [("classifier", 1.0), ("classifier_tiny_inputs", 1e-3)])
def test_classifier_accuracy(name, scale):
    torch = torch_or_skip()
    _, LastStep, _ = tasks.torch_models()
    model = LastStep(tasks.CLS_SYMBOLS, 48, tasks.CLS_CLASSES)
    model.load_state_dict(state_dict("classifier"))
    model.eval()
    sym = np.load(CORPUS / "classifier" / "heldout_symbols.npy")
    labels = np.load(CORPUS / "classifier" / "heldout_labels.npy")
    assert np.array_equal(tasks.one_hot(sym[:128]) * np.float32(scale), inputs(name))
    with torch.no_grad():
        pred = model(torch.from_numpy(tasks.one_hot(sym) * np.float32(scale))).argmax(-1).numpy()
    acc = float((pred == labels).mean())
    assert acc == pytest.approx(metric(name)["metric"]["accuracy"], abs=1e-9)
    if name == "classifier":
        assert acc > 0.9 > 3 * (1 / tasks.CLS_CLASSES)
    else:
        assert acc < 0.4


def test_adding_mse_torch_and_onnx():
    torch = torch_or_skip()
    ort = pytest.importorskip("onnxruntime")
    _, LastStep, _ = tasks.torch_models()
    model = LastStep(2, 32, 1)
    model.load_state_dict(state_dict("adding"))
    model.eval()
    x = np.load(CORPUS / "adding" / "heldout_x.npy")
    y = np.load(CORPUS / "adding" / "heldout_y.npy")
    assert np.array_equal(x[:128], inputs("adding"))
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).squeeze(-1).numpy()
    sess = ort.InferenceSession(str(CORPUS / ENTRIES["adding_onnx"]["model"]), providers=["CPUExecutionProvider"])
    pred_onnx = sess.run(["y"], {"x": x})[0].ravel()
    baseline = tasks.mse(np.ones_like(y), y)
    for name, p in (("adding", pred), ("adding_onnx", pred_onnx)):
        got = tasks.mse(p, y)
        assert got == pytest.approx(metric(name)["metric"]["mse"], rel=1e-4)
        assert got < 0.05 * baseline
    close(pred, pred_onnx, "torch vs onnxruntime predictions")


def test_tagger_accuracy():
    torch = torch_or_skip()
    _, _, Tagger = tasks.torch_models()
    model = Tagger()
    model.load_state_dict(state_dict("tagger"))
    model.eval()
    _, held = tasks.split_text(tasks.read_text())
    tok, tags, lengths = tasks.tagger_arrays(tasks.tagger_segments(held))
    assert np.array_equal(lengths[:128], np.load(CORPUS / "tagger" / "lengths.npy"))
    with torch.no_grad():
        pred = model(torch.from_numpy(tok), torch.from_numpy(lengths)).argmax(-1).numpy()
        emb = model.embedding(torch.from_numpy(tok[:128])).numpy()
    close(emb, inputs("tagger"), "embedding output vs tagger/inputs.npy")
    acc = tasks.tag_accuracy(pred, tags)
    want = metric("tagger")
    assert acc == pytest.approx(want["metric"]["tag_accuracy"], abs=1e-9)
    assert acc > 0.9 > 1.5 * want["baseline"]["majority_tag"]


def keras_model():
    if os.environ.get("KERAS_BACKEND", "numpy") != "numpy":
        pytest.skip("the corpus test reads Keras files with KERAS_BACKEND=numpy")
    pytest.importorskip("jax")
    keras = pytest.importorskip("keras")
    return keras, keras.saving.load_model(CORPUS / ENTRIES["keras_hardsig"]["model"], compile=False)


def test_keras_hardsig_accuracy():
    _, model = keras_model()
    assert model.get_layer("lstm").get_config()["recurrent_activation"] == "hard_sigmoid"
    x = np.load(CORPUS / "keras_hardsig" / "heldout_x.npy")
    y = np.load(CORPUS / "keras_hardsig" / "heldout_y.npy")
    acc = float((np.asarray(model.predict(x, verbose=0)).argmax(-1) == y).mean())
    assert acc == pytest.approx(metric("keras_hardsig")["metric"]["accuracy"], abs=1e-9)
    assert acc > 0.9 > 2 * (1 / tasks.SIN_CLASSES)


# ---------------------------------------------------------------------------
# (b) lstm_doctor's capture equals the framework's own forward pass


@pytest.mark.parametrize("name", ["classifier", "adding"])
def test_trace_matches_torch_single_layer(name, tmp_path):
    torch = torch_or_skip()
    lstm = torch_lstm(state_dict(name), "lstm.", 0)
    with torch.no_grad():
        h, _ = lstm(torch.from_numpy(inputs(name)))
    close(trace(name, tmp_path)["h"], h.numpy(), f"{name}: trace h vs nn.LSTM")


@pytest.mark.parametrize("name", ["charlm", "charlm_saturated"])
def test_trace_matches_torch_two_layer_stack(name, tmp_path):
    """Both layers' h; the tolerance is 1e-4, or twice float32's own error where that is larger.

    In the saturated twin |c| reaches ~95 and nn.LSTM's float32 stack is itself
    up to ~3e-4 from the same stack in float64, so no float32 implementation can be
    held to 1e-4 there; the healthy charlm is held to 1e-4.
    """
    torch = torch_or_skip()
    sd = state_dict(name)
    tr = trace(name, tmp_path)
    x = torch.from_numpy(inputs(name))
    x64 = x.double()
    with torch.no_grad():
        for k in range(2):
            lstm = torch_lstm(sd, "lstm.", k)
            x, _ = lstm(x)
            x64, _ = lstm.double()(x64)
            own = float(np.max(np.abs(x.numpy() - x64.numpy())))
            tol = max(TOL, 2 * own)
            if name == "charlm":
                assert tol == TOL
            err = float(np.max(np.abs(tr[f"l{k}.h"] - x.numpy())))
            assert err <= tol, f"{name}: layer {k} trace h vs nn.LSTM: {err:.3g} > {tol:.3g}"


def test_trace_matches_packed_bidirectional_tagger(tmp_path):
    torch = torch_or_skip()
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm = torch_lstm(state_dict("tagger"), "lstm.", 0, bidirectional=True)
    x = torch.from_numpy(inputs("tagger"))
    lengths = np.load(CORPUS / "tagger" / "lengths.npy")
    with torch.no_grad():
        out, _ = lstm(pack_padded_sequence(x, torch.from_numpy(lengths), batch_first=True, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    out = out.numpy()
    H = out.shape[-1] // 2
    tr = trace("tagger", tmp_path)
    valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
    close(tr["l0.h"][valid], out[..., :H][valid], "tagger forward: trace h vs packed nn.LSTM")
    close(tr["l0.rev.h"][valid], out[..., H:][valid], "tagger backward: trace h vs packed nn.LSTM")


def test_trace_matches_keras_hard_sigmoid(tmp_path):
    keras, model = keras_model()
    layer = model.get_layer("lstm")
    seq = keras.layers.LSTM.from_config({**layer.get_config(), "return_sequences": True, "name": "lstm_seq"})
    x = inputs("keras_hardsig")
    seq.build(x.shape)
    seq.set_weights(layer.get_weights())
    h = np.asarray(seq(x))
    tr = trace("keras_hardsig", tmp_path)
    close(tr["h"], h, "keras_hardsig: trace h vs Keras LSTM")
    close(tr["h"][:, -1], np.asarray(layer(x)), "keras_hardsig: final h vs the model's own layer")


def test_trace_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(CORPUS / ENTRIES["adding_onnx"]["model"]), providers=["CPUExecutionProvider"])
    h = sess.run(["h"], {"x": inputs("adding_onnx")})[0]
    close(trace("adding_onnx", tmp_path)["h"], h, "adding_onnx: trace h vs onnxruntime")
