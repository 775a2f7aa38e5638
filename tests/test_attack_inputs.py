"""Attack suite, text and side inputs: deeply nested JSON (text inputs, compare, check),
non-UTF-8 configs, malformed --observed files. Each is one line on stderr, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "tweet2vec_like" / "broken"
DEEP = "[" * 100000 + "]" * 100000


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lstm_doctor", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def one_line(r, path, needle=""):
    line = r.stderr.strip()
    assert r.returncode == 2, r.stderr[-1500:]
    assert "\n" not in line and "Traceback" not in line, line
    assert str(path) in line and needle in line, line


def test_deeply_nested_json_text_inputs(tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    one_line(run("diagnose", MODEL, "--inputs", tmp_path / "deep.json"), tmp_path / "deep.json", "nested too deeply")
    (tmp_path / "deep.jsonl").write_text('{"text": ' + DEEP + "}\n")
    one_line(run("diagnose", MODEL, "--inputs", tmp_path / "deep.jsonl"), tmp_path / "deep.jsonl", "not JSON")


def test_compare_on_deep_or_malformed_json(tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    one_line(run("compare", tmp_path / "deep.json", tmp_path / "deep.json"), tmp_path / "deep.json", "nested")
    (tmp_path / "bad.json").write_text("{not json")
    one_line(run("compare", tmp_path / "bad.json", tmp_path / "bad.json"), tmp_path / "bad.json", "JSON")


def test_check_with_a_non_utf8_or_deep_config(tmp_path):
    (tmp_path / "cfg.toml").write_bytes(b"\xff\xfe[[models]]\n")
    one_line(run("check", "--config", tmp_path / "cfg.toml"), tmp_path / "cfg.toml", "UTF-8")
    (tmp_path / "deep.toml").write_text("a = " + DEEP + "\n")
    one_line(run("check", "--config", tmp_path / "deep.toml"), tmp_path / "deep.toml", "nested")


def test_check_with_a_deep_baseline(tmp_path):
    (tmp_path / "lstm-doctor.toml").write_text(
        f'[[models]]\nmodel = "{MODEL}"\ninputs = "{MODEL.parent / "conv_output.npy"}"\nlayout = "bct"\n'
    )
    (tmp_path / "base.json").write_text(DEEP)
    one_line(run("check", "--baseline", tmp_path / "base.json", cwd=tmp_path), tmp_path / "base.json", "nested")


@pytest.fixture
def native(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "weights.npz", W=rng.normal(size=(3, 16)), U=rng.normal(size=(4, 16)), b=np.zeros(16))
    (folder / "lstm.toml").write_text('[model]\nweights = "weights.npz"\n')
    np.save(tmp_path / "x.npy", rng.normal(size=(2, 5, 3)).astype(np.float32))
    return folder


def test_observed_with_an_object_array_or_string_units(tmp_path, native):
    obj = tmp_path / "obj.npz"
    np.savez(obj, h=np.array([{"a": 1}, None], dtype=object))
    one_line(run("diagnose", native, "--inputs", tmp_path / "x.npy", "--observed", obj), obj, "objects")
    units = tmp_path / "units.npz"
    np.savez(units, h=np.zeros((2, 5, 2)), units=np.array(["a", "b"]))
    one_line(run("diagnose", native, "--inputs", tmp_path / "x.npy", "--observed", units), units, "units")


def test_a_text_file_named_npy_is_said_to_be_text(tmp_path, native):
    bad = tmp_path / "t.npy"
    bad.write_text("hello, this is text\n")
    one_line(run("diagnose", native, "--inputs", bad), bad, "not an .npy file")
