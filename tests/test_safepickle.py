"""The restricted unpickler: code in a pickle never runs, weights still load.

Every payload below would create a MARKER file if its code ran; each test
checks that the load is refused with a message naming the global and
``--trust-pickle``, and that MARKER does not exist.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_doctor.errors import ModelError
from lstm_doctor.load import load_model, safepickle

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_fixtures  # noqa: E402


class SystemPayload:
    def __reduce__(self):
        return (os.system, ("touch MARKER",))


class SubprocessPayload:
    def __reduce__(self):
        return (subprocess.call, (["touch", "MARKER"],))


class EvalPayload:
    def __reduce__(self):
        return (builtins.eval, ("__import__('os').system('touch MARKER')",))


PAYLOADS = {
    "posix.system": SystemPayload,
    "subprocess.call": SubprocessPayload,
    "builtins.eval": EvalPayload,
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _write(path: Path, obj, protocol: int) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("qualified", sorted(PAYLOADS))
def test_code_payloads_are_refused(in_tmp, qualified, protocol):
    # The payload hides behind real arrays, as it would in a weights file.
    obj = [np.ones(3, np.float32), {"w": PAYLOADS[qualified]()}]
    path = _write(in_tmp / "evil.pkl", obj, protocol)
    with pytest.raises(safepickle.UnsafePickleError) as info:
        safepickle.load_file(path)
    assert qualified in str(info.value)
    assert "--trust-pickle" in str(info.value)
    assert not (in_tmp / "MARKER").exists()


def test_payload_in_a_joblib_file_is_refused(in_tmp):
    import joblib  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)

    for compress in (0, 3):
        joblib.dump([np.ones((2, 2)), SystemPayload()], in_tmp / "evil.npy", compress=compress)
        with pytest.raises(ModelError, match="posix.system"):
            safepickle.load_file(in_tmp / "evil.npy")
    assert not (in_tmp / "MARKER").exists()


def test_load_model_refuses_and_names_the_file(in_tmp):
    # A Tweet2Vec-named file: sniffing must not run it either.
    path = _write(in_tmp / "encoding_x_1.npy", [np.ones(3)] * 16 + [SystemPayload()], 2)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "posix.system" in message and "--trust-pickle" in message
    assert "\n" not in message
    assert not (in_tmp / "MARKER").exists()


def test_the_payload_is_real_when_trusted(in_tmp):
    # Proves the tests above are not vacuous: plain unpickling runs the payload.
    path = _write(in_tmp / "evil.pkl", [SystemPayload()], 2)
    safepickle.load_file(path, trust=True)
    assert (in_tmp / "MARKER").exists()


def test_copyreg_reconstructor_only_builds_stand_ins():
    # copyreg._reconstructor(OrderedDict, object, None): allowed globals, refused call.
    data = b"ccopy_reg\n_reconstructor\n(ccollections\nOrderedDict\nc__builtin__\nobject\nNtR."
    with pytest.raises(safepickle.UnsafePickleError, match="_reconstructor"):
        safepickle.loads(data)


def test_codecs_encode_only_plain_encodings():
    data = b"c_codecs\nencode\n(Vx\nVrot13\ntR."
    with pytest.raises(safepickle.UnsafePickleError, match="rot13"):
        safepickle.loads(data)


def test_pickles_cannot_set_attributes_of_handed_out_classes():
    # BUILD on a class: would patch a stand-in class for every later load.
    data = b"ctheano.foo\nBar\n}(Vpickled_as\nVos.system\nub."
    with pytest.raises(safepickle.UnsafePickleError, match="sets attributes of Bar"):
        safepickle.loads(data)
    data = b"clstm_doctor_nonexistent\nx\n."
    with pytest.raises(safepickle.UnsafePickleError, match="lstm_doctor_nonexistent.x"):
        safepickle.loads(data)


def test_persistent_ids_are_refused(tmp_path):
    data = b"\x80\x02X\x01\x00\x00\x00xQ."
    path = tmp_path / "pid.pkl"
    path.write_bytes(data)
    with pytest.raises(ModelError, match="persistent"):
        safepickle.load_file(path)


# ---------------------------------------------------------------------------
# What must load


ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.linspace(0, 1, 10).reshape(2, 5)),
    np.arange(5, dtype=">i4"),
    np.float32(2.5),
    np.array(7.0),
]


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)) and len(a) == len(b)


@pytest.mark.parametrize("protocol", range(0, 6))
def test_plain_pickles_of_arrays(tmp_path, protocol):
    path = _write(tmp_path / "a.pkl", {"arrays": ARRAYS, "meta": ({1, 2}, 3.0, "x")}, protocol)
    out = safepickle.load_file(path)
    assert _same(out["arrays"], ARRAYS)
    assert out["meta"] == ({1, 2}, 3.0, "x")


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("lzma", 3), ("xz", 3)])
def test_joblib_files_without_joblib(tmp_path, compress, monkeypatch):
    import joblib  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)
    import joblib.numpy_pickle

    joblib.dump(ARRAYS, tmp_path / "j.npy", compress=compress)

    def forbidden(*args, **kwargs):
        raise AssertionError("joblib's loader must not be used")

    monkeypatch.setattr(joblib, "load", forbidden)
    monkeypatch.setattr(joblib.numpy_pickle, "NumpyUnpickler", forbidden)
    out = safepickle.load_file(tmp_path / "j.npy")
    assert _same(out, ARRAYS)
    assert out[2].dtype.isnative  # big-endian data comes back native, as joblib does


def test_joblib_object_array_is_read_with_the_same_restrictions(tmp_path, monkeypatch):
    import joblib  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)

    good = np.array([1.5, "text", None], dtype=object)
    joblib.dump([good], tmp_path / "o.pkl")
    out = safepickle.load_file(tmp_path / "o.pkl")
    assert list(out[0]) == [1.5, "text", None]
    monkeypatch.chdir(tmp_path)
    evil = np.array([SystemPayload()], dtype=object)
    joblib.dump([evil], tmp_path / "e.pkl")
    with pytest.raises(ModelError, match="posix.system"):
        safepickle.load_file(tmp_path / "e.pkl")
    assert not (tmp_path / "MARKER").exists()


def test_joblib_legacy_companion_files(tmp_path):
    import joblib.numpy_pickle_compat as compat
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "w.pkl_01.npy", array)
    _write(tmp_path / "w.pkl", [compat.NDArrayWrapper("w.pkl_01.npy", np.ndarray)], 2)
    assert np.array_equal(safepickle.load_file(tmp_path / "w.pkl")[0], array)
    # ZNDArrayWrapper: the data zlib-compressed in a z-file, as joblib < 0.10 wrote.
    _, init_args, state = array.__reduce__()
    with open(tmp_path / "z.pkl_01.npy.z", "wb") as fh:
        compat.write_zfile(fh, state[-1])
    wrapper = compat.ZNDArrayWrapper("z.pkl_01.npy.z", init_args, state[:-1])
    _write(tmp_path / "z.pkl", [wrapper], 2)
    assert np.array_equal(safepickle.load_file(tmp_path / "z.pkl")[0], array)
    # A companion path that leaves the folder is refused.
    _write(tmp_path / "t.pkl", [compat.NDArrayWrapper("../w.pkl_01.npy", np.ndarray)], 2)
    with pytest.raises(ModelError, match="plain file name"):
        safepickle.load_file(tmp_path / "t.pkl")


def test_joblib_companion_files_count_with_their_pickle(tmp_path):
    """Two companion .npy files of 400 bytes each under a 600-byte budget: each fits alone, the
    model does not (before, every companion was counted apart from the file that names it)."""
    import joblib.numpy_pickle_compat as compat

    from lstm_doctor.capture import budget

    for k in (1, 2):
        np.save(tmp_path / f"w.pkl_0{k}.npy", np.zeros(100, np.float32))
    _write(tmp_path / "w.pkl", [compat.NDArrayWrapper(f"w.pkl_0{k}.npy", np.ndarray) for k in (1, 2)], 2)
    with budget.reading(1000):
        assert len(safepickle.load_file(tmp_path / "w.pkl")) == 2
    with budget.reading(600), pytest.raises(ModelError, match="over the 600 B allowed by --max-memory"):
        safepickle.load_file(tmp_path / "w.pkl")


@pytest.mark.parametrize("protocol", [0, 2])
def test_theano_shared_variable_without_theano(tmp_path, protocol):
    had_theano = "theano" in sys.modules
    theano = make_fixtures.TheanoLookAlikes()
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    obj = (150, theano.shared(value, "W"), theano.shared(np.float32(0.01), "learning_rate"))
    path = make_fixtures.dump(obj, tmp_path / "g.npy", theano.modules(), protocol=protocol,
                              use_joblib=False)
    out = safepickle.load_file(path)
    assert out[0] == 150
    assert isinstance(out[1], safepickle.SharedVariableStandIn)
    assert out[1].pickled_as == "theano.tensor.sharedvar.TensorSharedVariable"
    assert out[1].name == "W" and np.array_equal(out[1].value, value)
    assert safepickle.as_array(out[2]).item() == pytest.approx(0.01)
    assert ("theano" in sys.modules) == had_theano  # loading imported nothing


def test_cuda_and_gpuarray_values_come_back_as_host_arrays(tmp_path):
    value = np.ones((2, 2), np.float32)

    def CudaNdarray_unpickler(npa):  # noqa: N802 - the real name
        raise AssertionError("never called")

    def GpuArray_unpickler(npa, ctx_name):  # noqa: N802
        raise AssertionError("never called")

    class CudaNdarray:
        def __reduce__(self):
            return (CudaNdarray_unpickler, (value,))

    class GpuArray:
        def __reduce__(self):
            return (GpuArray_unpickler, (value, None))

    modules = {
        "theano.sandbox.cuda.type": {"CudaNdarray_unpickler": CudaNdarray_unpickler},
        "theano.gpuarray.type": {"GpuArray_unpickler": GpuArray_unpickler},
    }
    path = make_fixtures.dump([CudaNdarray(), GpuArray()], tmp_path / "gpu.pkl", modules,
                              use_joblib=False)
    out = safepickle.load_file(path)
    assert all(isinstance(a, np.ndarray) and np.array_equal(a, value) for a in out)


# ---------------------------------------------------------------------------
# Malformed files


def test_truncated_joblib_file(tmp_path):
    import joblib  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)

    joblib.dump([np.ones((50, 50), np.float32)], tmp_path / "t.pkl")
    data = (tmp_path / "t.pkl").read_bytes()
    (tmp_path / "t.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        safepickle.load_file(tmp_path / "t.pkl")


def test_array_wrapper_claiming_a_huge_array(tmp_path, monkeypatch):
    import joblib  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)

    from lstm_doctor.capture import budget

    joblib.dump([np.ones((8, 8), np.float32)], tmp_path / "h.pkl")
    with budget.reading(100), pytest.raises(ModelError, match="over the 100 B allowed by --max-memory"):
        safepickle.load_file(tmp_path / "h.pkl")


@pytest.mark.parametrize("data", [b"", b"\x80\x02garbage", b"\x80\x04\x95" + b"\xff" * 20])
def test_garbage(tmp_path, data):
    (tmp_path / "g.pkl").write_bytes(data)
    with pytest.raises(ModelError, match="not a readable pickle"):
        safepickle.load_file(tmp_path / "g.pkl")


def test_loads_in_memory():
    data = pickle.dumps({"a": np.ones(2)}, protocol=4)
    assert np.array_equal(safepickle.loads(data)["a"], np.ones(2))
    with pytest.raises(safepickle.UnsafePickleError):
        safepickle.loads(pickle.dumps(io.BytesIO(b"x")))
