"""Attack suite, pickles: allowed-global chains, dtype state, BUILD that shadows methods,
shared-reference bombs. Every case exits 2 with one line naming the file, runs no code
(no marker file), changes no file and leaves no temporary file.

The CLI runs in a subprocess (with a timeout), so a hang or a crash fails the test
instead of taking the runner down.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import attack_factory as af
from lstm_doctor.load import safepickle

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=60, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lstm_doctor", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
    )


def snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def refused_in_one_line(r, path: Path, needle: str = "") -> str:
    line = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "\n" not in line and "Traceback" not in line, line
    assert str(path) in line, line
    assert needle in line, line
    return line


def attack(tmp_path: Path, path: Path, *extra, needle: str = "", command: str = "inspect"):
    """Run the CLI on a crafted file; check one line, no marker, no change, no temp file."""
    before = snapshot(tmp_path)
    r = run_cli(command, path, *extra, cwd=tmp_path)
    line = refused_in_one_line(r, path, needle)
    assert not (tmp_path / "MARKER").exists()
    assert snapshot(tmp_path) == before  # no user file changed, nothing (no temp file) added
    return line


# ---------------------------------------------------------------------------
# dtype state: a field at offset 1e9 inside an 8-byte item


@pytest.mark.parametrize("offset", [10**9, 4096])
def test_a_crafted_dtype_is_refused_by_the_unpickler(offset):
    data = pickle.dumps([af.crafted_array(offset)], protocol=2)
    with pytest.raises(safepickle.UnsafePickleError, match="dtype"):
        safepickle.loads(data)


def test_a_structured_dtype_is_refused_even_when_numpy_pickled_it():
    dt = np.dtype({"names": ["a"], "formats": ["<f8"], "offsets": [0], "itemsize": 8})
    with pytest.raises(safepickle.UnsafePickleError, match="dtype"):
        safepickle.loads(pickle.dumps(np.zeros(3, dt), protocol=2))


def test_dtype_state_may_only_set_the_byte_order():
    good = pickle.dumps(np.arange(3, dtype=">f4"), protocol=2)
    out = safepickle.loads(good)
    assert out.dtype.kind == "f" and out.dtype.itemsize == 4 and list(out) == [0, 1, 2]
    # The builtin float32 dtype is untouched by that BUILD (the dtype made was a copy).
    assert np.dtype("f4").byteorder == "="
    bad = af._Reduce(np.dtype, ("f8", False, True), (3, "<", None, None, None, 16, 1, 0))
    with pytest.raises(safepickle.UnsafePickleError, match="dtype"):
        safepickle.loads(pickle.dumps(bad, protocol=2))


@pytest.mark.parametrize("name", ["encoding_m_3.npy", "params.pkl"])
def test_inspect_on_a_crafted_dtype_pickle_exits_2(tmp_path, name):
    path = af.dtype_state_pickle(tmp_path, name)
    attack(tmp_path, path, needle="dtype")


def test_protocol_5_and_plain_pickles_still_load():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.asfortranarray(np.ones((2, 3)))}
    for protocol in (2, 4, 5):
        out = safepickle.loads(pickle.dumps(arrays, protocol=protocol))
        assert np.array_equal(out["a"], arrays["a"]) and np.array_equal(out["b"], arrays["b"])
        assert out["a"].dtype == np.float32
    assert safepickle.loads(pickle.dumps(np.float32(2.5), protocol=2)) == np.float32(2.5)


def test_an_ndarray_call_with_a_buffer_is_refused():
    bad = af._Reduce(np.ndarray, ((10**6,), np.dtype("f8"), b"\0" * 8))
    with pytest.raises(safepickle.UnsafePickleError, match="buffer"):
        safepickle.loads(pickle.dumps(bad, protocol=2))


def test_every_array_is_checked_plain_and_contiguous():
    with pytest.raises(safepickle.UnsafePickleError):
        safepickle.check_array(np.lib.stride_tricks.as_strided(np.zeros(1), (100,), (0,)))
    assert safepickle.check_array(np.zeros((2, 3), order="F")).shape == (2, 3)


# ---------------------------------------------------------------------------
# BUILD that would shadow methods, or set attributes of what find_class handed out


@pytest.mark.parametrize(
    "maker, needle",
    [
        (af.shadowing_ordereddict, "OrderedDict"),
        (af.shadowing_joblib_wrapper, "read"),
        (af.build_on_allowed_callable, "set"),
    ],
)
def test_build_that_shadows_methods_is_one_line(tmp_path, maker, needle):
    path = maker(tmp_path)
    attack(tmp_path, path, needle=needle)


def test_torch_state_dict_metadata_still_loads():
    from collections import OrderedDict

    sd = OrderedDict(w=np.ones(2))
    sd._metadata = {"": {"version": 1}}
    out = safepickle.loads(pickle.dumps(sd, protocol=2))
    assert out._metadata == {"": {"version": 1}} and callable(out.items)


def test_the_pickle_adapter_still_intercepts_build():
    """The one private-API use (pickle._Unpickler's dispatch table) still does what safepickle needs."""
    assert issubclass(safepickle.RestrictedUnpickler, pickle._Unpickler)
    assert safepickle.RestrictedUnpickler.dispatch[pickle.BUILD[0]] is safepickle.RestrictedUnpickler.load_build
    assert pickle._Unpickler.dispatch[pickle.BUILD[0]] is not safepickle.RestrictedUnpickler.load_build
    # and the interception is live: BUILD on a set is refused, not applied
    with pytest.raises(safepickle.UnsafePickleError, match="set"):
        safepickle.loads(b"\x80\x02cbuiltins\nset\n)R}X\x01\x00\x00\x00aK\x01sb.")


# ---------------------------------------------------------------------------
# Code payloads through allowed globals


def test_code_payloads_never_run(tmp_path):
    marker = tmp_path / "MARKER"
    paths = [af.code_payload(tmp_path, marker), *af.chained_payloads(tmp_path, marker)]
    for path in paths:
        before = snapshot(tmp_path)
        r = run_cli("inspect", path, "--model-format", "lasagne", cwd=tmp_path)
        refused_in_one_line(r, path)
        assert not marker.exists(), path
        assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------
# Shared-reference bombs: a few hundred bytes, 2**48 long when printed


def test_safe_repr_is_bounded_on_a_shared_reference_bomb():
    a: list = []
    for _ in range(48):
        a = [a, a]
    t = time.perf_counter()
    text = safepickle.safe_repr(a)
    assert time.perf_counter() - t < 1 and len(text) <= 120


def _layer_with_name(tmp_path: Path, name) -> Path:
    """A pickled Lasagne LSTMLayer (inert stand-in) with valid parameters and the given ``name``."""
    import types

    mod_name = "lasagne.layers.recurrent"
    saved = {k: sys.modules.get(k) for k in ("lasagne", "lasagne.layers", mod_name)}
    for parent in ("lasagne", "lasagne.layers"):
        sys.modules[parent] = types.ModuleType(parent)
    mod = types.ModuleType(mod_name)
    cls = type("LSTMLayer", (), {"__module__": mod_name})
    mod.LSTMLayer = cls
    sys.modules[mod_name] = mod
    try:
        rng = np.random.default_rng(0)
        D, H = 3, 2
        layer = cls.__new__(cls)
        state = {"name": name, "peepholes": False}
        for g in ("ingate", "forgetgate", "cell", "outgate"):
            state[f"W_in_to_{g}"] = rng.normal(size=(D, H)).astype(np.float32)
            state[f"W_hid_to_{g}"] = rng.normal(size=(H, H)).astype(np.float32)
            state[f"b_{g}"] = np.zeros(H, np.float32)
        layer.__dict__.update(state)
        data = pickle.dumps([layer, layer], protocol=2)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    path = tmp_path / "layer.pkl"
    path.write_bytes(data)
    return path


def test_a_layer_named_by_a_shared_reference_bomb_does_not_hang(tmp_path):
    a: list = []
    for _ in range(48):
        a = [a, a]
    path = _layer_with_name(tmp_path, a)
    assert path.stat().st_size < 4000
    r = run_cli("inspect", path, "--format", "json", timeout=30)
    # one layer (the list holds it twice): it loads, named after the file, not the bomb
    assert r.returncode == 0, r.stderr[-500:]
    assert '"name": "layer"' in r.stdout


def test_a_shared_reference_bomb_as_parameters_is_one_line(tmp_path):
    path = af.shared_reference_bomb(tmp_path)
    attack(tmp_path, path, "--model-format", "lasagne")
