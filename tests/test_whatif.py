"""What-if (issue 10): fixes applied virtually, measured alone and cumulatively, root causes ranked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from factory import model, normal_inputs
from whatif_factory import (
    FIX_FOR,
    case_like_pair,
    file_digests,
    healthy,
    model_digest,
    planted,
    source,
    time_axis_suspect,
    two_defects,
)

from lstm_doctor.analyzers import RULES
from lstm_doctor.cli.main import cli
from lstm_doctor.experiments.whatif import (
    FIXES,
    State,
    WhatIfOptions,
    add_what_if,
    apply_fixes,
    experiment_dict,
    fixed_model,
    padding_lengths,
    run_experiment,
    sample_source,
)
from lstm_doctor.load import LoadOptions, load_model, native
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import GATES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tweet2vec_like"
REQUIRED_METRICS = {
    "saturated_fraction",
    "max_abs_cell",
    "mean_pairwise_cosine",
    "cross_input_std",
    "input_variance_share",
}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def check(result, code):
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


# -- the fixes -----------------------------------------------------------------------------------


def test_fix_ids_are_stable_and_name_catalogue_codes():
    assert list(FIXES) == [
        "center-weights", "rescale-recurrent", "forget-bias-1", "tanh-cell-output", "sigmoid-gates",
        "tanh-candidate", "mask-padding", "swap-time-axis", "standardize-inputs", "rescale-inputs",
    ]  # fmt: skip
    for fix in FIXES.values():
        assert fix.codes and all(code in RULES for code in fix.codes)
        assert fix.target in ("model", "inputs")
    # every "`what-if` fix `X`" that a rule's fix text names exists, and addresses that rule
    import re

    for code, rule in RULES.items():
        for fid in re.findall(r"`what-if` fix\s+`([a-z0-9-]+)`", rule.doc.fix):
            assert fid in FIXES and code in FIXES[fid].codes, (code, fid)


def test_fixes_are_pure_and_build_new_immutable_models():
    m, src = case_like_pair()
    before, x_before = model_digest(m), src.array.copy()
    state = State(m, src)
    for fid, fix in FIXES.items():
        out = fix.apply(state)
        assert model_digest(m) == before, fid
        assert np.array_equal(src.array, x_before), fid
        if out.state is not None and out.changed:
            assert out.state is not state
            for *_, params in out.state.model.units():
                assert not params.W.flags.writeable and not params.U.flags.writeable
    # the fixes do change what they claim to
    fixed, _ = apply_fixes(state, ["center-weights", "tanh-cell-output"])
    p0, p1 = m.layers[0].forward, fixed.model.layers[0].forward
    for g in GATES:
        assert abs(float(p1.gate_block(p1.U, g).mean())) < 1e-6
        assert np.isclose(float(p1.gate_block(p1.U, g).std()), float(p0.gate_block(p0.U, g).std()), rtol=1e-4)
    assert np.allclose(p1.peephole.mean(axis=1), 0, atol=1e-6)
    assert fixed.model.layers[0].activations.cell_output == "tanh"
    assert m.layers[0].activations.cell_output == "sigmoid"


def test_input_fixes_transform_the_sample():
    x = (normal_inputs(n=20, T=12, D=4) * 0.01 + 3).astype(np.float32)
    src = source(x)
    out = FIXES["standardize-inputs"].apply(State(healthy(), src))
    z = out.state.source.read(0, 20, np.float64).reshape(-1, 4)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-4) and np.allclose(z.std(axis=0), 1, atol=1e-3)
    assert np.array_equal(src.array, x)  # the original is untouched
    rms = FIXES["rescale-inputs"].apply(State(healthy(), source(normal_inputs(D=4, scale=40))))
    assert np.isclose(np.sqrt(np.mean(rms.state.source.array.astype(np.float64) ** 2)), 1.0, rtol=1e-3)
    padded = normal_inputs(n=3, T=10, D=4)
    padded[0, 6:] = 0
    padded[2] = 0  # an all-zero sequence is not padding
    assert padding_lengths(source(padded)).tolist() == [6, 10, 10]
    # standardising does not hide padding: trailing all-zero steps stay zero
    std = FIXES["standardize-inputs"].apply(State(healthy(), source(padded + 0.5 * (padded != 0))))
    assert np.all(std.state.source.array[0, 6:] == 0) and np.all(std.state.source.array[2] != 0)


@pytest.mark.parametrize("layout", ["btd", "tbd", "bct"])
def test_swap_time_axis_reads_time_as_features(layout):
    x = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)  # stored array, any layout
    src = InputSource(array=x, layout=layout)
    D_new = src.T
    out = FIXES["swap-time-axis"].apply(State(model(D_new, 4), src))
    assert out.needs is None
    new = out.state.source
    assert (new.T, new.D, new.n_sequences) == (src.D, src.T, src.n_sequences)
    assert np.array_equal(new.read(0, new.n_sequences, np.float32), src.read(0, src.n_sequences, np.float32).transpose(2, 1, 0))


def test_swap_time_axis_needs_retraining_when_W_has_the_wrong_shape():
    m, src = time_axis_suspect()
    exp = run_experiment(m, src)
    assert "I504" in exp.baseline.warnings
    assert "swap-time-axis" in exp.not_run and "swap-time-axis" not in exp.alone
    needs = exp.not_run["swap-time-axis"].needs
    assert needs.startswith("needs retraining") and "(128, 64)" in needs
    entry = next(e for e in exp.ranking if e["fix"] == "swap-time-axis")
    assert entry["rank"] is None and "needs retraining" in entry["note"]
    row = next(r for r in experiment_dict(exp)["what_if"] if r["fix"] == "swap-time-axis")
    assert row["status"] == "needs-retraining" and row["metrics"] is None


# -- planted defects -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(FIX_FOR))
def test_the_matching_fix_ranks_first_and_removes_its_defect(code):
    m, src = planted(code)
    exp = run_experiment(m, src)
    assert code in exp.baseline.errors + exp.baseline.warnings
    fix = FIX_FOR[code]
    assert exp.order[0] == fix, exp.ranking
    alone = exp.alone[fix]
    assert code not in alone.errors + alone.warnings
    assert not (set(exp.baseline.errors) & set(alone.errors)), "the defect's error codes remain"
    assert exp.ranking[0]["fix"] == fix and exp.ranking[0]["rank"] == 1
    assert exp.path and exp.path[0].fixes == (fix,) and not exp.final.errors


def test_two_independent_defects_cumulative_path_applies_both():
    m, src = two_defects()
    exp = run_experiment(m, src)
    assert {"A201", "I501"} <= set(exp.baseline.errors)
    assert exp.alone["tanh-cell-output"].errors and exp.alone["standardize-inputs"].errors  # neither is enough alone
    assert set(exp.final.fixes) == {"tanh-cell-output", "standardize-inputs"}
    assert exp.final.errors == ()
    rows = experiment_dict(exp)["what_if"]
    cumulative = [r for r in rows if r["cumulative"]]
    assert [r["step"] for r in cumulative] == [1, 2] and cumulative[-1]["remaining_errors"] == []


def test_healthy_model_has_nothing_to_fix():
    m = model(8, 16, init="torch", forget_bias=1.0, seed=3)
    exp = run_experiment(m, source(normal_inputs(n=32, T=20, D=8)))
    assert exp.considered == () and exp.path == [] and exp.baseline.errors == ()
    rows = experiment_dict(exp)["what_if"]
    assert [r["fix"] for r in rows] == ["none"]


def test_the_sample_is_bounded_evenly_spaced_and_shared():
    x = normal_inputs(n=50, T=6, D=3)
    s = sample_source(source(x), 10)
    assert s.n_sequences == 10 and np.array_equal(s.array[0], x[0]) and np.array_equal(s.array[-1], x[-1])
    m, src = planted("A201")
    exp = run_experiment(m, src, WhatIfOptions(sample_size=20))
    assert exp.sample["sequences"] == 20 and exp.sample["of"] == 64
    assert exp.alone["tanh-cell-output"].state.source.array.shape == exp.baseline.state.source.array.shape


# -- CASE.md -------------------------------------------------------------------------------------


def _assert_case_conclusions(rows: list[dict]):
    by_fix = {r["fix"]: r for r in rows if not r["cumulative"]}
    base = by_fix["none"]
    assert {"S301", "C401", "H601", "W101"} <= set(base["remaining_errors"])
    center = by_fix["center-weights"]
    assert "S301" not in center["remaining_codes"] and "C401" not in center["remaining_codes"]
    assert "H601" in center["remaining_errors"]  # every encoding still the same (h ≈ 0.25)
    assert center["metrics"]["saturated_fraction"] < 0.01 < base["metrics"]["saturated_fraction"]
    assert center["metrics"]["mean_pairwise_cosine"] > 0.99
    path = [r for r in rows if r["cumulative"]]
    assert [r["fix"] for r in path][:2] == ["center-weights", "tanh-cell-output"]
    assert "H601" not in path[-1]["remaining_codes"] and path[-1]["remaining_errors"] == []
    assert path[-1]["metrics"]["mean_pairwise_cosine"] < 0.5
    for r in rows:
        if r["metrics"] is not None:
            assert REQUIRED_METRICS <= set(r["metrics"])
            assert {"fix", "codes", "cumulative", "applied", "remaining_codes"} <= set(r)


def test_case_like_model_centering_removes_saturation_but_not_collapse():
    m, src = case_like_pair()
    exp = run_experiment(m, src, WhatIfOptions(sample_size=24))
    _assert_case_conclusions(experiment_dict(exp)["what_if"])
    assert exp.order[0] == "center-weights"
    # rescale-recurrent's finding (W102) is explained by the mean offset
    rescale = next(e for e in exp.ranking if e["fix"] == "rescale-recurrent")
    assert rescale["irrelevant_after"] == "center-weights"
    assert any("H601" in c and "center-weights + tanh-cell-output" in c for c in exp.conclusions)


def test_bundled_example_what_if_json_leads_to_case_conclusions():
    result = check(
        invoke("what-if", EXAMPLE / "broken", "--inputs", EXAMPLE / "conv_output.npy", "--sample-size", 16,
               "--format", "json"),
        1,
    )  # fmt: skip
    doc = json.loads(result.stdout)
    _assert_case_conclusions(doc["what_if"])
    ranking = doc["what_if_ranking"]
    assert ranking["ranking"][0]["fix"] == "center-weights"
    swap = next(e for e in ranking["ranking"] if e["fix"] == "swap-time-axis")
    assert "needs retraining" in swap["note"] and "(256, 256)" in swap["note"]
    assert [s["fix"] for s in ranking["path"]] == ["center-weights", "tanh-cell-output", "standardize-inputs"]


# -- CLI -----------------------------------------------------------------------------------------


@pytest.fixture()
def saved(tmp_path):
    """The two-defect model and its inputs as files."""
    m, src = two_defects()
    folder = tmp_path / "model"
    native.save(m, folder)
    np.save(tmp_path / "x.npy", src.array)
    return folder, tmp_path / "x.npy"


def test_cli_text_report_and_exit_codes(saved, tmp_path):
    folder, x = saved
    result = check(invoke("what-if", folder, "--inputs", x), 1)  # errors in the model as loaded
    out = result.stdout
    assert "as loaded" in out and "tanh-cell-output" in out and "standardize-inputs" in out
    assert "Root causes" in out and "What the measurements say" in out
    check(invoke("what-if", folder, "--inputs", x, "--exit-zero"), 0)
    check(invoke("what-if", folder, "--inputs", x, "--fixes", "tanh-cell-output", "--format", "json"), 1)
    err = check(invoke("what-if", folder, "--inputs", x, "--fixes", "no-such-fix"), 2)
    assert "unknown fix" in err.stderr and "center-weights" in err.stderr
    check(invoke("what-if", folder), 2)  # --inputs is required
    check(invoke("what-if", folder, "--inputs", tmp_path / "missing.npy"), 2)
    healthy_folder = tmp_path / "healthy"
    native.save(model(8, 16, init="torch", forget_bias=1.0, seed=3), healthy_folder)
    np.save(tmp_path / "hx.npy", normal_inputs(n=32, T=20, D=8))
    check(invoke("what-if", healthy_folder, "--inputs", tmp_path / "hx.npy"), 0)


def test_cli_fixes_restricts_the_experiment(saved):
    folder, x = saved
    doc = json.loads(invoke("what-if", folder, "--inputs", x, "--fixes", "tanh-cell-output", "--format", "json").stdout)
    assert {r["fix"] for r in doc["what_if"]} == {"none", "tanh-cell-output"}
    assert doc["what_if_ranking"]["considered"] == ["tanh-cell-output"]


def test_write_fixed_roundtrip_and_originals_untouched(saved, tmp_path):
    folder, x = saved
    before = {**file_digests(folder), "x": file_digests(x.parent)["x.npy"]}
    out = tmp_path / "fixed"
    doc = json.loads(
        check(invoke("what-if", folder, "--inputs", x, "--write-fixed", out, "--format", "json"), 1).stdout
    )
    assert {**file_digests(folder), "x": file_digests(x.parent)["x.npy"]} == before
    written = doc["summary"]["written"]
    assert written["fixes"] == ["tanh-cell-output"]
    fixed = load_model(out, None, LoadOptions())
    original = load_model(folder, None, LoadOptions())
    assert fixed.layers[0].activations.cell_output == "tanh"
    assert original.layers[0].activations.cell_output == "sigmoid"
    assert np.array_equal(fixed.layers[0].forward.W, original.layers[0].forward.W)
    assert any("tanh-cell-output" in n for n in fixed.notes)
    assert any("not a trained model" in n for n in fixed.notes)
    assert any("standardize-inputs" in n for n in fixed.notes)  # the input fix is named, not hidden
    stats = np.load(out / "input_fixes.npz")
    assert stats["mean"].shape == (8,) and stats["std"].shape == (8,)
    # refuses an existing non-empty folder (and so the user's model), leaving it untouched
    err = check(invoke("what-if", folder, "--inputs", x, "--write-fixed", out), 2)
    assert "not empty" in err.stderr
    err = check(invoke("what-if", folder, "--inputs", x, "--write-fixed", folder), 2)
    assert file_digests(folder) == {k: v for k, v in before.items() if k != "x"}
    (tmp_path / "empty").mkdir()
    check(invoke("what-if", folder, "--inputs", x, "--write-fixed", tmp_path / "empty", "--exit-zero"), 0)
    assert (tmp_path / "empty" / "lstm.toml").is_file()


def test_write_fixed_centers_the_case_weights(tmp_path):
    m, src = case_like_pair()
    native.save(m, tmp_path / "case")
    np.save(tmp_path / "x.npy", src.array)
    check(invoke("what-if", tmp_path / "case", "--inputs", tmp_path / "x.npy", "--write-fixed", tmp_path / "out",
                 "--sample-size", 16, "--exit-zero"), 0)  # fmt: skip
    fixed = load_model(tmp_path / "out", None, LoadOptions())
    p = fixed.layers[0].forward
    assert all(abs(float(p.gate_block(p.U, g).mean())) < 1e-6 for g in GATES)
    assert fixed.layers[0].activations.cell_output == "tanh"
    expected = fixed_model(m, ["center-weights", "tanh-cell-output"]).layers[0].forward
    assert np.allclose(p.U, expected.U) and np.allclose(p.W, expected.W)


# -- report integration --------------------------------------------------------------------------


def test_add_what_if_extends_a_diagnosis_report(saved):
    from lstm_doctor.jobs.diagnose import DiagnoseOptions, run_diagnosis
    from lstm_doctor.load.inputs import load_inputs
    from lstm_doctor.report.whatif_text import render_text

    folder, x = saved
    options = DiagnoseOptions(model=str(folder), inputs=str(x), progress=False, created="2026-01-01T00:00:00+00:00")
    report = run_diagnosis(options)
    m = load_model(folder, None, LoadOptions())
    extended = add_what_if(report, m, load_inputs(x, "btd"))
    assert "what_if" not in report  # the input report is not modified
    assert {k: v for k, v in extended.items() if not k.startswith("what_if")} == report
    assert extended["what_if"][0]["fix"] == "none"
    json.dumps(extended)  # JSON-able
    text = render_text(extended)
    assert "as loaded" in text and "tanh-cell-output" in text


def test_the_what_if_section_is_deterministic():
    m, src = two_defects()
    a = json.dumps(experiment_dict(run_experiment(m, src)), sort_keys=True)
    b = json.dumps(experiment_dict(run_experiment(m, src)), sort_keys=True)
    assert a == b


def test_the_what_if_section_matches_its_schema():
    import jsonschema
    from lstm_doctor.report import load_schema

    m, src = time_axis_suspect()  # includes a "needs-retraining" row
    docs = [experiment_dict(run_experiment(m, src)), experiment_dict(run_experiment(*two_defects()))]
    shipped = load_schema()  # the report schema is the single source for these keys
    keys = {k: shipped["properties"][k] for k in ("what_if", "what_if_ranking")}
    schema = {"type": "object", "properties": keys, "required": list(keys), "$defs": shipped.get("$defs", {})}
    for doc in docs:
        jsonschema.Draft202012Validator(schema).validate(json.loads(json.dumps(doc)))


# -- issue 14: a fix that costs the model its input dependence is harm, not progress ------------

CORPUS = ROOT / "corpus"


@pytest.fixture(scope="module")
def charlm_rescaled():
    """The corpus's trained character LM (1.46 nats/char) with U rescaled to norm 1."""
    from lstm_doctor.load import LoadOptions, load_model

    m = load_model(str(CORPUS / "charlm" / "model.pt"), options=LoadOptions())
    src = InputSource(array=np.load(CORPUS / "charlm" / "inputs.npy"), layout="btd")
    return run_experiment(m, src, WhatIfOptions(fixes=("rescale-recurrent",))), m, src


def test_rescaling_a_working_models_recurrent_weights_is_reported_harmful(charlm_rescaled):
    exp, _, _ = charlm_rescaled
    base, run = exp.baseline, exp.alone["rescale-recurrent"]
    assert "H601" not in base.errors and not base.errors and not base.warnings  # a working model
    assert run.metrics["mean_pairwise_cosine"] > base.metrics["mean_pairwise_cosine"] + 0.05
    assert "rescale-recurrent" in exp.harmful and "less input-dependent" in exp.harmful["rescale-recurrent"]
    (entry,) = [e for e in exp.ranking if e["fix"] == "rescale-recurrent"]
    assert entry["harmful"] and entry["rank"] is None and not entry["improves"] and not entry["explains"]
    assert not exp.path and "harmful" in exp.path_skipped["rescale-recurrent"]
    assert any(c.startswith("rescale-recurrent is harmful") for c in exp.conclusions)
    # the cost next to the benefit: how far the fix moves the outputs on the sample
    assert base.metrics["output_change"] == 0.0
    assert 0.1 < run.metrics["output_change"] == entry["output_change"]


def test_output_change_is_reported_for_every_fix():
    m, src = case_like_pair()
    exp = run_experiment(m, src)
    doc = experiment_dict(exp)
    for row in doc["what_if"]:
        if row["status"] == "measured":
            assert row["metrics"]["output_change"] > 0, row["fix"]
    assert not exp.harmful  # CASE.md's encoder collapses (H601): making it input-dependent is the point
    assert exp.path and exp.path[0].fixes == ("center-weights",)


def test_harm_when_only_weight_findings_go_and_behaviour_gets_worse():
    from lstm_doctor.experiments.whatif import Run, harm

    def fake(errors, warnings, cosine, std, badness):
        metrics = {"mean_pairwise_cosine": cosine, "cross_input_std": std, "encoding_mean_abs": 1.0,
                   "saturated_fraction": badness, "hidden_at_bound_fraction": badness, "max_abs_cell": 1.0,
                   "input_variance_share": 1.0}
        return Run((), (), metrics, tuple(errors), tuple(warnings), state=None)

    collapsed = fake(["H601", "W102"], [], 0.9999, 1e-4, 0.1)
    # on a collapsed model, only the weights-only-and-worse test applies
    assert harm(fake(["H601"], ["S301"], 0.9999, 1e-4, 0.6), collapsed)
    assert harm(fake(["H601"], [], 0.9999, 1e-4, 0.1), collapsed) is None
    working = fake([], ["W102"], 0.05, 0.8, 0.1)
    assert "less input-dependent" in harm(fake([], [], 0.6, 0.8, 0.1), working)
    assert "less input-dependent" in harm(fake([], [], 0.05, 0.3, 0.1), working)  # std halved
    assert harm(fake([], [], 0.06, 0.79, 0.1), working) is None
    # removing a behavioural finding is a benefit: the cosine rise is its cost, shown, not harm
    overdriven = fake([], ["I502"], 0.05, 0.8, 0.1)
    assert harm(fake([], [], 0.35, 0.6, 0.1), overdriven) is None


def test_write_fixed_with_a_harmful_fix_warns_on_stderr(tmp_path):
    out = tmp_path / "fixed"
    result = CliRunner().invoke(
        cli,
        ["what-if", str(CORPUS / "charlm" / "model.pt"), "--inputs", str(CORPUS / "charlm" / "inputs.npy"),
         "--layout", "btd", "--fixes", "rescale-recurrent", "--write-fixed", str(out), "--format", "json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "warning: rescale-recurrent is harmful" in result.stderr
    assert "moves the final encodings by" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["what_if_ranking"]["harmful"]["rescale-recurrent"]
    assert (out / "lstm.toml").exists() and "WARNING: rescale-recurrent" in (out / "lstm.toml").read_text()
