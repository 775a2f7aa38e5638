"""Issue 5, differential diagnosis: A204 names the configuration behind an observed trace.

Each observation is produced by the NumPy reference engine (not the search's own
loop) running the declared weights under one non-default configuration, as the
user's misconfigured code would: A204 must name exactly that configuration.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from factory import model, normal_inputs, run, with_acts, with_weights

from lstm_doctor.analyzers import RULES, AnalysisConfig, analyze
from lstm_doctor.capture import numpy_loop as reference
from lstm_doctor.cli.main import cli
from lstm_doctor.experiments import observed
from lstm_doctor.findings import Severity

H, D = 16, 8


def healthy():
    return model(D, H, init="torch", seed=0)


def hidden(m, x_btd):
    """h (B, T, H) of layer 0 fwd, by the reference engine."""
    rec = reference.run_direction(m.layers[0].forward, m.layers[0], x_btd.transpose(1, 0, 2), capture="h")
    return rec.h.transpose(1, 0, 2)


def reordered(m, read_as):
    p = m.layers[0].forward
    perm = observed.order_permutation(H, "ifgo", read_as)
    return with_weights(m, W=p.W[:, perm], U=p.U[:, perm], b=p.b[perm])


def tf1_bias(m):
    b = m.layers[0].forward.b.copy()
    b[H : 2 * H] += 1.0
    return with_weights(m, b=b)


# name -> (how the user's code computes the layer, the field A204 must name, its value)
VARIANTS = {
    "sigmoid cell output": (lambda m: with_acts(m, cell_output="sigmoid"), "cell_output", "sigmoid"),
    "identity cell output": (lambda m: with_acts(m, cell_output="identity"), "cell_output", "identity"),
    "hard sigmoid gates": (lambda m: with_acts(m, gate="hard_sigmoid"), "gate", "hard_sigmoid"),
    "TF1 order i,j,f,o": (lambda m: reordered(m, "igfo"), "order", "igfo"),
    "ONNX order i,o,f,c": (lambda m: reordered(m, "iofg"), "order", "iofg"),
    "Caffe order i,f,o,g": (lambda m: reordered(m, "ifog"), "order", "ifog"),
    "TF1 runtime forget bias": (tf1_bias, "forget_bias", 1.0),
}


def diagnose_with(m, x, h_obs, **kw):
    analysis, cap = run(m, x)
    obs = observed.make_observation(h_obs, m, cap.n_sequences, cap.T, **kw)
    cap.observed = observed.search_capture(cap, obs)
    return analyze(m, cap, AnalysisConfig()), cap


def a204(analysis):
    return [f for f in analysis.findings if f.code == "A204"]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a204_names_exactly_the_configuration_that_produced_the_trace(name):
    change, field, value = VARIANTS[name]
    m, x = healthy(), normal_inputs(n=32, T=20, D=D)
    analysis, cap = diagnose_with(m, x, hidden(change(m), x))
    found = a204(analysis)
    assert len(found) == 1 and found[0].severity == Severity.error, [f.message for f in found]
    best = found[0].evidence["best"]
    assert best["config"][field] == value
    assert len(best["differences"]) == 1  # exactly that configuration, nothing else
    assert best["mean_abs_diff"] < 1e-5 and not found[0].evidence["declared"]["fits"]
    if field == "cell_output" and value == "sigmoid":
        assert "h_t = o_t · σ(c_t)" in found[0].message
    assert cap.observed.candidates == 64 and cap.observed.candidates_full <= 9  # pruned by the first steps


def test_a204_names_a_swapped_time_axis():
    m = healthy()
    x = normal_inputs(n=32, T=D, D=D)  # square: the swap is possible
    found = a204(diagnose_with(m, x, hidden(m, x.transpose(0, 2, 1).copy()))[0])
    assert len(found) == 1
    best = found[0].evidence["best"]
    assert best["config"]["axis"] == "swapped" and len(best["differences"]) == 1


def test_a204_names_disabled_peepholes_and_zero_initial_state():
    m = with_weights(healthy(), peephole=np.full((3, H), 0.5), h0=np.full(H, 0.3), c0=np.full(H, -0.4))
    x = normal_inputs(n=32, T=20, D=D)
    no_peep = with_weights(m, peephole=None)
    found = a204(diagnose_with(m, x, hidden(no_peep, x))[0])
    assert found[0].evidence["best"]["config"]["peepholes"] is False
    assert len(found[0].evidence["best"]["differences"]) == 1
    zeros = with_weights(m, h0=np.zeros(H), c0=np.zeros(H))
    found = a204(diagnose_with(m, x, hidden(zeros, x))[0])
    assert found[0].evidence["best"]["config"]["init"] == "zeros"


def test_a_matching_observation_gives_no_a204():
    m, x = healthy(), normal_inputs(n=32, T=20, D=D)
    analysis, cap = diagnose_with(m, x, hidden(m, x))
    assert not a204(analysis)
    assert cap.observed.declared.fits and cap.observed.best.config == cap.observed.declared.config


def test_an_unrelated_model_gives_the_no_configuration_fits_finding():
    m, x = healthy(), normal_inputs(n=32, T=20, D=D)
    other = model(D, H, init="glorot", seed=123)
    found = a204(diagnose_with(m, x, hidden(other, x))[0])
    assert len(found) == 1 and found[0].severity == Severity.warning
    assert "no known configuration reproduces" in found[0].message
    assert found[0].evidence["no_fit"] and len(found[0].evidence["closest"]) == 3


def test_final_encodings_only_first_steps_and_a_subset_of_units():
    m, x = healthy(), normal_inputs(n=32, T=20, D=D)
    h = hidden(with_acts(m, cell_output="sigmoid"), x)
    # final encodings (B, H)
    found = a204(diagnose_with(m, x, h[:, -1])[0])
    assert found and found[0].evidence["best"]["config"]["cell_output"] == "sigmoid"
    # the first 6 steps, time-major, of units 3, 5, 7 for the first 10 sequences
    units = np.array([3, 5, 7])
    part = h[:10, :6][..., units].transpose(1, 0, 2)
    analysis, cap = diagnose_with(m, x, part, units=units, layout="tbd")
    found = a204(analysis)
    assert found and found[0].evidence["best"]["config"]["cell_output"] == "sigmoid"
    assert cap.observed.observed["steps"] == 6 and cap.observed.observed["sequences"] == 10


def test_a204_is_skipped_without_an_observation():
    analysis, _ = run(healthy(), normal_inputs(D=D))
    assert "observed" in analysis.skipped["A204"]


def all_keys(value):
    """Every dict key in a JSON value, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from all_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_keys(item)


@pytest.fixture
def observed_cli(tmp_path):
    """``diagnose`` arguments for a model folder, its inputs and a trace its code printed
    with h = o·σ(c) (the declared cell output is tanh); the format is left to the test."""
    m = with_acts(healthy(), cell_output="tanh")
    x = normal_inputs(n=24, T=15, D=D)
    folder = tmp_path / "m"
    folder.mkdir()
    p = m.layers[0].forward
    np.savez(folder / "weights.npz", W=p.W, U=p.U, b=p.b)
    (folder / "lstm.toml").write_text(
        '[model]\nname = "t"\nweights = "weights.npz"\n[[layers]]\nW = "W"\nU = "U"\nb = "b"\n'
    )
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "obs.npz", h=hidden(with_acts(m, cell_output="sigmoid"), x))
    return ["diagnose", str(folder), "--inputs", str(tmp_path / "x.npy"), "--observed", str(tmp_path / "obs.npz")]


def test_cli_observed_json_report(observed_cli):
    result = CliRunner().invoke(cli, [*observed_cli, "--format", "json", "--exit-zero"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    codes = [f["code"] for f in report["findings"]]
    assert "A204" in codes
    assert report["statistics"]["observed"]["ranking"][0]["config"]["cell_output"] == "sigmoid"
    from jsonschema import Draft202012Validator

    from lstm_doctor.report import build

    schema = json.loads((__import__("pathlib").Path(build.__file__).parent / "schema.json").read_text())
    Draft202012Validator(schema).validate(report)
    # The search's wall time is in the top-level timings (non-deterministic, like created), and only there.
    assert list(report)[2:4] == ["created", "timings"]
    assert report["timings"]["observed_search_seconds"] > 0
    body = {k: v for k, v in report.items() if k not in ("created", "timings")}
    assert not [key for key in all_keys(body) if "seconds" in key]  # evidence and statistics stay deterministic
    folder = observed_cli[1]
    bad = CliRunner().invoke(cli, ["diagnose", folder, "--observed", observed_cli[-1]])
    assert bad.exit_code == 2 and "--observed needs --inputs" in bad.output


def test_cli_observed_text_report_shows_the_search_time(observed_cli):
    result = CliRunner().invoke(cli, [*observed_cli, "--exit-zero"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    found = re.search(r"searched (\d+) configurations in ([0-9.e+-]+) s; pruned (\d+) by their first steps, "
                      r"ran (\d+) in full", text)
    assert found, text
    total, seconds, pruned, full = found.groups()
    assert int(total) == 64 and int(pruned) + int(full) == 64 and 1 <= int(full) <= 9
    assert float(seconds) > 0


def test_search_summary_for_final_states_with_and_without_a_time():
    from lstm_doctor.report.text import observed_search_summary

    final = {"kind": "final", "candidates": 64, "candidates_full": 9}
    assert observed_search_summary(final, 0.0421) == (
        "searched 64 configurations in 0.0421 s; pruned 55 by the first sequences, ran 9 in full"
    )
    assert observed_search_summary({**final, "candidates_full": 64}, None) == (
        "searched 64 configurations; ran every one in full"
    )


def test_rule_is_registered_with_docs():
    r = RULES["A204"]
    assert r.doc.what and r.doc.why and r.doc.example and r.doc.fix
