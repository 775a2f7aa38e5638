"""Numerical honesty: float64 models run in float64, statistics accumulate in float64
whatever the model's dtype, the report states the sample size behind its statistics,
and a rule without enough samples says so instead of guessing."""

from __future__ import annotations

import dataclasses
import json

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from factory import direction, normal_inputs

from lstm_doctor.capture.engines import run_chunk
from lstm_doctor.capture.pipeline import CaptureOptions, capture
from lstm_doctor.cli.main import cli
from lstm_doctor.load import native
from lstm_doctor.load.inputs import InputSource
from lstm_doctor.model import Activations, Layer, LSTMModel


def _model(dtype, D=4, H=6):
    return LSTMModel((Layer(direction(D, H, seed=2, dtype=dtype), None, Activations()),), name="m")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_float64_models_are_diagnosed_in_float64(tmp_path):
    m64 = _model(np.float64)
    x = normal_inputs(n=5, T=7, D=4)  # float32 inputs
    rec = run_chunk(m64, np.ascontiguousarray(x.transpose(1, 0, 2)), engine="numpy")[(0, "fwd")]
    assert rec.h.dtype == np.float64 and rec.c.dtype == np.float64 and rec.i.dtype == np.float64
    cap = capture(m64, InputSource(array=x, layout="btd"), CaptureOptions(chunk_size=2, sample_size=5))
    assert all(a.dtype == np.float64 for a in cap.sample[(0, "fwd")].values())
    # float64 really differs from float32 on the same weights: the run was not silently downcast
    m32 = _model(np.float32)
    rec32 = run_chunk(m32, np.ascontiguousarray(x.transpose(1, 0, 2)), engine="numpy")[(0, "fwd")]
    assert 0 < np.abs(rec.h - rec32.h).max() < 1e-5
    # through the CLI: the report names the model's dtype
    native.save(m64, tmp_path / "m")
    np.save(tmp_path / "x.npy", x)
    r = invoke("diagnose", tmp_path / "m", "--inputs", tmp_path / "x.npy", "--format", "json", "--exit-zero")
    assert json.loads(r.stdout)["model"]["dtype"] == "float64"


@pytest.mark.parametrize("engine", ["numpy", "pytensor"])
def test_float64_models_stay_float64_on_every_engine(engine):
    m64 = _model(np.float64)
    x = normal_inputs(n=3, T=4, D=4).transpose(1, 0, 2).astype(np.float64)
    rec = run_chunk(m64, np.ascontiguousarray(x), engine=engine)[(0, "fwd")]
    assert rec.h.dtype == np.float64


def _float_arrays(obj, path="", seen=None):
    """Every NumPy float array reachable through dataclass fields, dicts and lists."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f":
            yield path, obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _float_arrays(getattr(obj, f.name), f"{path}.{f.name}", seen)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _float_arrays(v, f"{path}[{k!r}]", seen)
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            yield from _float_arrays(v, f"{path}[{k}]", seen)


def test_statistics_accumulate_in_float64_for_a_float32_model():
    m32 = _model(np.float32)
    x = normal_inputs(n=6, T=5, D=4)
    cap = capture(m32, InputSource(array=x, layout="btd"), CaptureOptions(chunk_size=2, sample_size=2))
    accumulators = list(_float_arrays(cap.directions)) + list(_float_arrays(cap.inputs))
    accumulators += list(_float_arrays(cap.encoding))
    assert accumulators
    narrow = [p for p, a in accumulators if a.dtype != np.float64]
    assert not narrow, f"float32 accumulators: {narrow}"


def test_input_statistics_are_right_where_float32_sums_would_be_visibly_wrong():
    """Large equal values plus a little noise: in float32, E[x²] − E[x]² loses every digit
    (x² ≈ 1e8, float32 spacing there is 8), and the mean of many values drifts."""
    rng = np.random.default_rng(0)
    n, T, D = 400, 250, 2  # 100,000 values per feature
    x = (1e4 + rng.standard_normal((n, T, D))).astype(np.float32)
    m = _model(np.float32, D=D, H=2)
    cap = capture(m, InputSource(array=x, layout="btd"), CaptureOptions(chunk_size=64, sample_size=4))
    ref = x.astype(np.float64).reshape(-1, D)
    np.testing.assert_allclose(cap.inputs.mean(), ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cap.inputs.std(), ref.std(axis=0), rtol=1e-4)
    # the same sums in float32 are visibly wrong: this is what the test guards against
    flat32 = x.reshape(-1, D)
    naive_var = np.mean(flat32 * flat32, axis=0, dtype=np.float32) - np.mean(flat32, axis=0, dtype=np.float32) ** 2
    assert np.abs(naive_var - ref.var(axis=0)).max() > 0.5
    sequential = np.float32(0)
    for v in flat32[:100_000, 0]:
        sequential = np.float32(sequential + v)
    assert abs(float(sequential) / 100_000 - ref[:, 0].mean()) > 1.0


@pytest.fixture()
def folder(tmp_path):
    native.save(_model(np.float32), tmp_path / "m")
    return tmp_path


def _report(folder, n, *extra):
    np.save(folder / "x.npy", normal_inputs(n=n, T=6, D=4))
    r = invoke("diagnose", folder / "m", "--inputs", folder / "x.npy", "--format", "json", "--exit-zero", *extra)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_the_report_states_the_sample_size_behind_each_statistic(folder):
    from importlib import resources

    report = _report(folder, 12, "--sample-size", "5")
    schema = json.loads(resources.files("lstm_doctor.report").joinpath("schema.json").read_text())
    jsonschema.validate(report, schema)
    inputs = report["inputs"]
    assert inputs["sequences"] == 12 and inputs["T"] == 6
    assert inputs["summary"]["values"] == 12 * 6
    assert inputs["summary"]["correlation_sample_sequences"] == 5
    (layer,) = report["statistics"]["layers"]
    assert layer["sequences"] == 12 and layer["values"] == 12 * 6
    assert layer["sample_sequences"] == 5  # the percentile bands come from the sample only
    enc = report["statistics"]["encoding"]
    assert enc["sequences"] == 12 and enc["cosine_matrix_sample"]["sequences"] == 12


def test_with_lengths_the_layer_statistics_count_only_valid_steps(folder):
    np.save(folder / "L.npy", np.array([6, 3, 1, 6, 2, 6, 6, 6, 6, 6]))
    report = _report(folder, 10, "--lengths", folder / "L.npy")
    assert report["inputs"]["summary"]["values"] == 10 * 6  # the stored inputs, padding included
    assert report["statistics"]["layers"][0]["values"] == 6 * 7 + 3 + 1 + 2  # the steps the LSTM ran


def test_a_rule_without_enough_sequences_says_so(folder):
    small = _report(folder, 5)
    assert "H601" in small["not_evaluated"]
    assert "needs at least 8 sequences, got 5" in small["not_evaluated"]["H601"]
    assert all(f["code"] != "H601" for f in small["findings"])
    enough = _report(folder, 8)
    assert "H601" not in enough["not_evaluated"]
    # the text report says it too
    np.save(folder / "x.npy", normal_inputs(n=5, T=6, D=4))
    r = invoke("diagnose", folder / "m", "--inputs", folder / "x.npy", "--exit-zero", "--color", "never")
    assert "H601" in r.stdout and "needs at least 8 sequences" in r.stdout
