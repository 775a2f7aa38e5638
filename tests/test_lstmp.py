"""Issue 15.8: PyTorch ``nn.LSTM(proj_size=P)`` (LSTMP) read, run and differentiated right.

h_t = W_hr·(o_t ⊙ tanh(c_t)) has P units, the cell H; W_hh is (4H, P) and layer
k+1 reads the projected h (2P values bidirectional). Every model here is built
by torch itself and every h is compared with torch's own forward pass:
the CLI's ``trace`` with each engine (numpy loop, PyTensor scan), the readable
oracle ``capture/step.py``, and the live API's parity. The backward recursion
(``experiments/sensitivity.py``) is held to PyTensor's grad and to central
differences on an LSTMP. The fused C kernel has no projection: it refuses the
model and the NumPy engine runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from factory import pytensor_gradients, run

from lstm_doctor.capture import step as oracle
from lstm_doctor.capture.engines import resolve_engine
from lstm_doctor.capture.fused import engine as fused
from lstm_doctor.cli.main import cli
from lstm_doctor.errors import ModelError
from lstm_doctor.experiments import gradients, sensitivity
from lstm_doctor.jobs.selection import ModelSelection, open_model
from lstm_doctor.model import Layer, LSTMModel, make_direction

TOL32 = 1e-5  # float32 against torch's float32 forward (measured: h ≤ 5.1e-7, live parity incl. c ≤ 1.4e-6; README)

# name -> nn.LSTM keyword arguments (D = 6, H = 9, P = 4)
CONFIGS = {
    "uni": dict(num_layers=1, bidirectional=False, batch_first=False),
    "bidirectional": dict(num_layers=1, bidirectional=True, batch_first=False),
    "two_layers": dict(num_layers=2, bidirectional=False, batch_first=False),
    "two_layers_bidirectional_batch_first": dict(num_layers=2, bidirectional=True, batch_first=True),
}
D, H, P, T, B = 6, 9, 4, 13, 5


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _torch_lstm(name: str, seed: int = 0) -> torch.nn.LSTM:
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(D, H, proj_size=P, **CONFIGS[name])
    with torch.no_grad():  # gains large enough that the gates move (not only ±1/√H noise)
        for param in lstm.parameters():
            param.mul_(3.0)
    return lstm.eval()


def _inputs(lstm: torch.nn.LSTM, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = (B, T, D) if lstm.batch_first else (T, B, D)
    return torch.randn(*shape, generator=gen)


def _torch_forward(lstm, x):
    """torch's own outputs: (B, T, n_dirs·P) top-layer h, h_n (L·dirs, B, P), c_n (L·dirs, B, H)."""
    with torch.no_grad():
        out, (h_n, c_n) = lstm(x)
    out = out.numpy()
    if not lstm.batch_first:
        out = out.transpose(1, 0, 2)
    return out, h_n.numpy(), c_n.numpy()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved(request, tmp_path_factory):
    """(config name, torch module, .pt state_dict path, inputs .npy path, layout, torch outputs)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    lstm = _torch_lstm(name)
    x = _inputs(lstm)
    torch.save(lstm.state_dict(), folder / "lstmp.pt")
    np.save(folder / "x.npy", x.numpy())
    layout = "btd" if lstm.batch_first else "tbd"
    return name, lstm, folder / "lstmp.pt", folder / "x.npy", layout, _torch_forward(lstm, x)


def _top_h(arrays: dict, n_layers: int, bidirectional: bool) -> np.ndarray:
    """The top layer's h (B, T, n_dirs·P) from a trace file's keys."""
    if n_layers == 1 and not bidirectional:
        return arrays["h"]
    k = n_layers - 1
    parts = [arrays[f"l{k}.h"]] + ([arrays[f"l{k}.rev.h"]] if bidirectional else [])
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("engine", ["numpy", "pytensor"])
def test_trace_of_every_engine_matches_torch(saved, engine, tmp_path):
    name, lstm, pt, xfile, layout, (out, h_n, c_n) = saved
    r = invoke("trace", pt, "--inputs", xfile, "--layout", layout, "--engine", engine, "--out", tmp_path / "t.npz")
    assert r.exit_code == 0, r.output
    arrays = dict(np.load(tmp_path / "t.npz"))
    L, bi = lstm.num_layers, lstm.bidirectional
    top = _top_h(arrays, L, bi)
    assert top.shape == (B, T, (2 if bi else 1) * P)
    assert np.abs(top - out).max() <= TOL32
    # every layer's and direction's final state: h (P units) and c (H units)
    for k in range(L):
        for j, d in enumerate(("fwd", "rev")[: 1 + bi]):
            prefix = "" if (L == 1 and not bi) else f"l{k}." + ("rev." if d == "rev" else "")
            step = 0 if d == "rev" else -1  # time order: the backward direction ends at step 0
            h, c, m = arrays[prefix + "h"], arrays[prefix + "c"], arrays[prefix + "m"]
            assert h.shape[-1] == P and c.shape[-1] == H and m.shape[-1] == H
            assert np.abs(h[:, step] - h_n[k * (1 + bi) + j]).max() <= TOL32
            assert np.abs(c[:, step] - c_n[k * (1 + bi) + j]).max() <= TOL32
            # h is the projection of the recorded cell output m = o ⊙ tanh(c)
            w_hr = lstm.state_dict()[f"weight_hr_l{k}" + ("_reverse" if d == "rev" else "")].numpy()
            assert np.abs(m @ w_hr.T - h).max() <= TOL32


def test_oracle_step_on_the_loaded_model_matches_torch(saved):
    """The readable oracle (capture/step.py), layer by layer on the loaded model, against torch."""
    name, lstm, pt, xfile, layout, (out, h_n, _) = saved
    model = open_model(ModelSelection(model=str(pt)))
    assert all(layer.projected and layer.P == P and layer.H == H for layer in model.layers)
    x = np.load(xfile).astype(np.float64)
    x = x.transpose(1, 0, 2) if layout == "btd" else x  # (T, B, D)
    for layer in model.layers:
        parts = []
        for d, params in layer.directions():
            xin = x[::-1] if d == "rev" else x
            h = oracle.run(params, layer, xin)["h"]
            parts.append(h[::-1] if d == "rev" else h)
        x = np.concatenate(parts, axis=-1)
    assert np.abs(x.transpose(1, 0, 2) - out).max() <= TOL32


def test_diagnose_states_the_projection_and_auto_runs_numpy(saved):
    name, lstm, pt, xfile, layout, _ = saved
    r = invoke("diagnose", pt, "--inputs", xfile, "--layout", layout, "--format", "json")
    assert r.exit_code in (0, 1), r.output
    report = json.loads(r.stdout)
    import jsonschema
    from importlib import resources

    schema = json.loads(resources.files("lstm_doctor.report").joinpath("schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(report)  # "projection" is a declared layer field
    assert report["engine"] == "numpy"  # the fused kernel has no projection
    for k, layer in enumerate(report["model"]["layers"]):
        assert layer["H"] == H and layer["projection"] == P
        assert layer["D"] == (D if k == 0 else P * (2 if lstm.bidirectional else 1))
        assert "W_hr" in layer["equation"]
        items = {(a["item"], a["source"]): a["value"] for a in layer["assumptions"]}
        assert f"proj_size={P}" in items[("projection", "file")]


def test_fused_engine_refuses_a_projection_and_says_why(saved, monkeypatch):
    name, lstm, pt, xfile, layout, _ = saved
    model = open_model(ModelSelection(model=str(pt)))
    assert not fused.supports(np.float32, model)
    assert fused.unsupported_reason(model) and "projection" in fused.unsupported_reason(model)
    assert resolve_engine("auto", model, T, B) == "numpy"
    monkeypatch.setattr(fused, "_NOTED_UNSUPPORTED", False)
    r = invoke("diagnose", pt, "--inputs", xfile, "--layout", layout, "--format", "json", "--engine", "fused")
    assert r.exit_code in (0, 1)
    assert json.loads(r.stdout)["engine"] == "numpy"
    note = [line for line in r.stderr.splitlines() if "fused" in line]
    assert len(note) == 1 and "proj_size" in note[0]


def test_trust_pickle_module_path_reads_batch_first_and_the_projection(tmp_path):
    """A whole pickled nn.LSTM: read by torch.load (--trust-pickle), which records batch_first."""
    lstm = _torch_lstm("two_layers_bidirectional_batch_first", seed=4)
    x = _inputs(lstm, seed=5)
    torch.save(lstm, tmp_path / "module.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    r = invoke("trace", tmp_path / "module.pt", "--trust-pickle", "--inputs", tmp_path / "x.npy",
               "--engine", "numpy", "--out", tmp_path / "t.npz")
    assert r.exit_code == 0, r.output
    out, _, _ = _torch_forward(lstm, x)
    assert np.abs(_top_h(dict(np.load(tmp_path / "t.npz")), 2, True) - out).max() <= TOL32


def test_packed_lengths_match_torch(tmp_path):
    """Padded sequences (valid part reversed for the backward direction) against a PackedSequence."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm = _torch_lstm("two_layers_bidirectional_batch_first", seed=6)
    x = _inputs(lstm, seed=7)
    lengths = torch.tensor([T, 7, 1, 10, 4])
    with torch.no_grad():
        packed, (h_n, _) = lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    out = pad_packed_sequence(packed, batch_first=True, total_length=T)[0].numpy()
    torch.save(lstm.state_dict(), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "len.npy", lengths.numpy())
    for engine in ("numpy", "pytensor"):
        r = invoke("trace", tmp_path / "m.pt", "--inputs", tmp_path / "x.npy", "--lengths", tmp_path / "len.npy",
                   "--layout", "btd", "--engine", engine, "--out", tmp_path / "t.npz")
        assert r.exit_code == 0, r.output
        top = _top_h(dict(np.load(tmp_path / "t.npz")), 2, True)
        valid = np.arange(T)[None, :] < lengths.numpy()[:, None]
        assert np.abs(top - out)[valid].max() <= TOL32, engine


def test_live_api_parity_with_projection_and_initial_state():
    import lstm_doctor

    lstm = _torch_lstm("two_layers_bidirectional_batch_first", seed=8)
    x = _inputs(lstm, seed=9)
    report = lstm_doctor.diagnose(lstm, x)
    check = report.parity["model"]
    assert check["ok"] and check["max_abs_diff"] <= TOL32 and check["values"] > 0
    assert report.skipped == {}
    # a constant initial state: h0 has P units, c0 H
    gen = torch.Generator().manual_seed(10)
    h0 = torch.randn(4, 1, P, generator=gen).expand(4, B, P).contiguous()
    c0 = torch.randn(4, 1, H, generator=gen).expand(4, B, H).contiguous()
    report = lstm_doctor.diagnose(lstm, x, (h0, c0))
    assert report.parity["model"]["ok"] and report.parity["model"]["max_abs_diff"] <= TOL32


# --- the backward recursion through the projection (float64: exact to rounding) ---------------


def _lstmp64(seed: int = 3, backwards: bool = False) -> LSTMModel:
    rng = np.random.default_rng(seed)
    d = make_direction(
        rng.normal(0, 0.6, (D, 4 * H)), rng.normal(0, 0.6, (P, 4 * H)), rng.normal(0, 0.3, 4 * H),
        peephole=rng.normal(0, 0.3, (3, H)), h0=rng.normal(0, 0.3, P), c0=rng.normal(0, 0.3, H),
        projection=rng.normal(0, 0.6, (H, P)), dtype=np.float64,
    )
    return LSTMModel((Layer(d, None, go_backwards=backwards),), name="lstmp")


@pytest.mark.parametrize("lengths", [None, np.array([T, 7, 1])])
def test_recursion_through_the_projection_matches_pytensor_grad_and_finite_differences(lengths):
    m = _lstmp64()
    layer = m.layers[0]
    n = 3
    x = np.random.default_rng(11).standard_normal((T, n, D))
    mask = None if lengths is None else np.arange(T)[:, None] < lengths[None, :]
    seeds = np.random.default_rng(12).standard_normal((2, P))  # h_T has P units
    S = len(seeds)
    ours = sensitivity.final_state_gradients(layer.forward, layer, x, mask, seeds)
    theirs = pytensor_gradients(layer, x, mask, seeds)
    for key in ("x", "input_term"):
        scale = np.abs(theirs[key]).max()
        assert scale > 1e-3
        assert np.abs(ours[key] - theirs[key]).max() <= 1e-9 * scale, key
    # central differences of Σ seed ⊙ h_T through the readable oracle
    gx = ours["x"].reshape(T, n, S, D)
    rng = np.random.default_rng(13)
    eps = 1e-6

    def final_h(xx):
        return oracle.run(layer.forward, layer, xx, mask)["h"][-1]  # (n, P)

    for t in (0, T // 2, T - 1):
        delta = np.zeros_like(x)
        delta[t] = rng.standard_normal((n, D))
        fd = np.einsum("np,sp->ns", final_h(x + eps * delta) - final_h(x - eps * delta), seeds) / (2 * eps)
        an = np.einsum("nsd,nd->ns", gx[t], delta[t])
        assert np.allclose(an, fd, rtol=0, atol=1e-5 * max(np.abs(an).max(), np.abs(fd).max()) + 1e-9), t


@pytest.mark.parametrize("backwards", [False, True])
def test_analyze_gradients_paths_agree_on_an_lstmp(backwards):
    m = _lstmp64(seed=5, backwards=backwards)
    x = np.random.default_rng(14).standard_normal((6, T, D))
    _, cap = run(m, x, lengths=np.array([T, 9, 4, T, 2, 7]))
    a = gradients.analyze_gradients(cap, method="numpy")
    b = gradients.analyze_gradients(cap, method="pytensor")
    np.testing.assert_allclose(a.input_sensitivity, b.input_sensitivity, rtol=1e-6, atol=1e-300)
    np.testing.assert_allclose(a.state_sensitivity, b.state_sensitivity, rtol=1e-6, atol=1e-300)
    assert a.exact and a.probes == P  # one-hot seeds over h's P units
    _, cap = run(m, x)  # without lengths, lag 0 of every sequence is the seed itself
    assert gradients.analyze_gradients(cap).state_sensitivity[0] == pytest.approx(np.sqrt(P))  # ‖I_P‖_F


def test_statistics_describe_the_cell_units_and_the_sample_keeps_both():
    m = _lstmp64(seed=6)
    m = LSTMModel(tuple(m.layers), name="lstmp")
    x = np.random.default_rng(15).standard_normal((8, T, D))
    analysis, cap = run(m, x)
    st = cap.directions[(0, "fwd")]
    assert st.H == H and st.sum_h_tu.shape == (T, H)
    sample = cap.sample[(0, "fwd")]
    assert sample["h"].shape[-1] == P and sample["m"].shape[-1] == H
    np.testing.assert_allclose(sample["m"] @ m.layers[0].forward.projection, sample["h"], atol=1e-12)
    # the per-unit h statistics are those of m = o ⊙ tanh(c): its mean per step
    np.testing.assert_allclose(st.mean_h_t(), sample["m"].mean(axis=(1, 2)), atol=1e-9)
    assert cap.encoding.E == P and cap.sample_encodings.shape[-1] == P  # the encodings are the projected h


def test_what_if_fixes_keep_the_projection():
    from lstm_doctor.experiments.whatif import fixed_model

    m = _lstmp64(seed=7)
    for fix in ("center-weights", "rescale-recurrent", "forget-bias-1"):
        fixed = fixed_model(m, [fix])
        assert fixed.layers[0].forward.projection is not None, fix
        np.testing.assert_array_equal(fixed.layers[0].forward.projection, m.layers[0].forward.projection)


def test_inconsistent_shapes_are_refused():
    rng = np.random.default_rng(0)
    W, R = rng.normal(size=(D, 4 * H)), rng.normal(size=(H, P))
    with pytest.raises(ModelError, match=r"U must be \(P, 4H\)"):
        make_direction(W, rng.normal(size=(H, 4 * H)), projection=R)  # U not (P, 4H)
    with pytest.raises(ModelError, match="h0 has shape"):
        make_direction(W, rng.normal(size=(P, 4 * H)), projection=R, h0=np.zeros(H))  # h0 is (P,)
    with pytest.raises(ModelError, match="W must be"):
        make_direction(rng.normal(size=(D, 4 * P)), rng.normal(size=(P, 4 * H)), projection=R)
    ok = make_direction(W, rng.normal(size=(P, 4 * H)), projection=R)
    assert (ok.H, ok.P, ok.h0.shape, ok.c0.shape) == (H, P, (P,), (H,))
    # a next layer must read the projected width
    wrong = make_direction(rng.normal(size=(H, 4 * H)), rng.normal(size=(H, 4 * H)))
    with pytest.raises(ModelError, match=f"expects D={H} inputs but layer 0 outputs {P}"):
        LSTMModel((Layer(ok), Layer(wrong)))


def test_a_bad_weight_hr_is_a_one_line_error(tmp_path):
    lstm = _torch_lstm("uni")
    state = dict(lstm.state_dict())
    state["weight_hr_l0"] = torch.zeros(P + 1, H)  # does not match weight_hh (4H, P)
    torch.save(state, tmp_path / "bad.pt")
    np.save(tmp_path / "x.npy", np.zeros((2, 3, D), np.float32))
    r = invoke("diagnose", tmp_path / "bad.pt", "--inputs", tmp_path / "x.npy")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "weight_hr (P, H) and weight_hh (4H, P)" in r.stderr
    assert str(tmp_path / "bad.pt") in r.stderr


def test_native_format_round_trips_the_projection_and_what_if_writes_it(saved, tmp_path):
    """``what-if --write-fixed`` saves the native format: the projection must survive it."""
    from lstm_doctor.load import native

    name, lstm, pt, xfile, layout, (out, _, _) = saved
    model = open_model(ModelSelection(model=str(pt)))
    native.save(model, tmp_path / "copy")
    again = open_model(ModelSelection(model=str(tmp_path / "copy")))
    for (_, _, _, a), (_, _, _, b) in zip(model.units(), again.units()):
        np.testing.assert_array_equal(a.projection, b.projection)
    if name != "two_layers_bidirectional_batch_first":
        return
    # a broken twin (every weight shifted by +0.4: W101, gates pinned) gets a model-level fix written
    with torch.no_grad():
        for param in lstm.parameters():
            param.add_(0.4)
    torch.save(lstm.state_dict(), tmp_path / "broken.pt")
    r = invoke("what-if", tmp_path / "broken.pt", "--inputs", xfile, "--layout", layout, "--sample-size", "5",
               "--write-fixed", tmp_path / "fixed", "--format", "json")
    assert r.exit_code in (0, 1), r.output
    fixed = open_model(ModelSelection(model=str(tmp_path / "fixed")))
    assert all(layer.projected and layer.P == P and layer.H == H for layer in fixed.layers)
    assert any("what-if" in note for note in fixed.notes)


def test_observed_search_refuses_a_projection_in_one_line(tmp_path):
    lstm = _torch_lstm("uni")
    x = _inputs(lstm)
    out, _, _ = _torch_forward(lstm, x)
    torch.save(lstm.state_dict(), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    np.savez(tmp_path / "obs.npz", h=out)
    r = invoke("diagnose", tmp_path / "m.pt", "--inputs", tmp_path / "x.npy", "--layout", "tbd",
               "--observed", tmp_path / "obs.npz")
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "--observed" in r.stderr and "proj_size" in r.stderr
