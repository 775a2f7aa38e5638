"""Attack suite, resources and containers: declared-size bombs under --max-memory 1GB,
reading outside the model (HDF5 external/virtual storage, ONNX external data links),
FIFOs, and options that would allocate without bound.

Memory cases run in a subprocess under an address-space limit (RLIMIT_AS), so a
failure cannot take the test runner down; each must exit 2 with one line naming the
file, and the child's peak RSS (from wait4) must stay under the 1 GB budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import attack_factory as af

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 1 << 30
ADDRESS_SPACE = 3 << 30  # room for Python + NumPy's own mappings; a bomb needs more than this


def run_measured(*args, timeout=90):
    """Like run_limited, with the child's own peak RSS (os.wait4)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    err_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"lstm-doctor-attack-{os.getpid()}.err"
    with open(err_path, "wb") as err_fh:
        pid = os.fork()
        if pid == 0:  # the child: limit, redirect, exec
            try:
                resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
                os.dup2(err_fh.fileno(), 2)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.environ.update(env)
                os.execv(sys.executable, [sys.executable, "-m", "lstm_doctor", *map(str, args)])
            finally:
                os._exit(127)
    import signal
    import time

    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            pytest.fail(f"timed out: {args}")
        time.sleep(0.05)
    err = err_path.read_text("utf-8", "replace")
    err_path.unlink()
    return os.waitstatus_to_exitcode(status), err, usage.ru_maxrss * 1024


def snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def refused_under_budget(tmp_path, path, *args, needle=""):
    before = snapshot(tmp_path)
    code, err, rss = run_measured(*args, "--max-memory", "1GB")
    line = err.strip()
    assert code == 2, (code, err[-2000:])
    assert "\n" not in line and "Traceback" not in line, line
    assert str(path) in line and needle in line, line
    assert rss < BUDGET, f"peak RSS {rss / 2**20:.0f} MB"
    assert snapshot(tmp_path) == before
    return line


# ---------------------------------------------------------------------------
# Declared-size bombs


def test_a_24_byte_bytearray_pickle(tmp_path):
    path = af.bytearray_bomb(tmp_path)
    refused_under_budget(tmp_path, path, "inspect", path, "--model-format", "lasagne", needle="--max-memory")


def test_a_1kb_lasagne_ndarray_pickle(tmp_path):
    path = af.ndarray_bomb(tmp_path)
    assert path.stat().st_size < 1024
    refused_under_budget(tmp_path, path, "inspect", path, needle="--max-memory")


def _deflated_zeros(path: Path, member: str, shape) -> Path:
    """An .npz whose one member is float32 zeros of ``shape``, honestly deflated (tiny on disk)."""
    n = int(np.prod(shape))
    header = {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(member, "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            zero = bytes(32 << 20)
            for _ in range(n * 4 // len(zero)):
                fh.write(zero)
            fh.write(bytes(n * 4 % len(zero)))
    assert path.stat().st_size < 20 << 20
    return path


def test_an_npz_that_inflates_past_the_budget(tmp_path):
    """A deflated member of 1.2 GB of zeros in a file of ~1 MB: refused from its sizes, never inflated."""
    path = _deflated_zeros(tmp_path / "params.npz", "W_in_to_ingate.npy", ((1200 << 20) // 4,))
    refused_under_budget(tmp_path, path, "inspect", path, "--model-format", "lasagne", needle="--max-memory")


def test_an_npz_header_declaring_more_than_its_member(tmp_path):
    path = af.npz_bomb(tmp_path)
    refused_under_budget(tmp_path, path, "inspect", path, "--model-format", "lasagne", needle="header declares")


def test_a_zero_stride_torch_storage(tmp_path):
    path = af.torch_zero_stride(tmp_path)
    refused_under_budget(tmp_path, path, "inspect", path, needle="--max-memory")


def test_a_safetensors_header_declaring_40_gb(tmp_path):
    path = af.safetensors_header_bomb(tmp_path)
    refused_under_budget(tmp_path, path, "inspect", path)


def _native_model(folder: Path, D=3, H=4) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.savez(folder / "weights.npz", W=rng.normal(size=(D, 4 * H)), U=rng.normal(size=(H, 4 * H)), b=np.zeros(4 * H))
    (folder / "lstm.toml").write_text('[model]\nweights = "weights.npz"\n')
    return folder


def test_deflated_inputs_and_observed_npz(tmp_path):
    model = _native_model(tmp_path / "m")
    bomb = af.npz_declared_bomb(tmp_path, "x.npz")
    refused_under_budget(tmp_path, bomb, "diagnose", model, "--inputs", bomb)
    np.save(tmp_path / "ok.npy", np.zeros((2, 5, 3), np.float32))
    obs = af.npz_declared_bomb(tmp_path, "obs.npz", shape=(100000, 1000, 4))
    # the observed member is named x; rename it h
    with zipfile.ZipFile(obs) as zf:
        data = zf.read("x.npy")
    obs.unlink()
    with zipfile.ZipFile(obs, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("h.npy", data)
    refused_under_budget(tmp_path, obs, "diagnose", model, "--inputs", tmp_path / "ok.npy", "--observed", obs)


def test_trace_units_range_is_not_expanded(tmp_path):
    model = _native_model(tmp_path / "m")
    np.save(tmp_path / "x.npy", np.zeros((2, 5, 3), np.float32))
    code, err, rss = run_measured(
        "trace", model, "--inputs", tmp_path / "x.npy", "--out", tmp_path / "t.npz", "--units", "0-999999999",
        "--max-memory", "1GB",
    )
    assert code == 2 and "0..3" in err and "\n" not in err.strip(), err
    assert rss < BUDGET
    assert not (tmp_path / "t.npz").exists()


def test_max_memory_with_400_digits_is_one_line(tmp_path):
    model = _native_model(tmp_path / "m")
    code, err, _ = run_measured("inspect", model, "--max-memory", "9" * 400)
    assert code == 2 and "--max-memory" in err and "\n" not in err.strip() and "Traceback" not in err, err


# ---------------------------------------------------------------------------
# Not a regular file


def test_a_fifo_as_inputs_or_model_is_refused_without_blocking(tmp_path):
    model = _native_model(tmp_path / "m")
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    code, err, _ = run_measured("diagnose", model, "--inputs", fifo, timeout=30)
    assert code == 2 and str(fifo) in err and "FIFO" in err, err
    fifo_model = tmp_path / "m.pt"
    os.mkfifo(fifo_model)
    code, err, _ = run_measured("inspect", fifo_model, timeout=30)
    assert code == 2 and str(fifo_model) in err and "FIFO" in err, err


# ---------------------------------------------------------------------------
# Reading outside the model: HDF5 external storage and virtual datasets


def _h5_weights(tmp_path: Path, how: str) -> Path:
    h5py = pytest.importorskip("h5py")
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4)])
    path = tmp_path / "m.h5"
    model.save(path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 64)
    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and "recurrent" in n else None)
        target = names[0]
        shape, dtype = f[target].shape, f[target].dtype
        del f[target]
        if how == "external":
            f.create_dataset(target, shape=shape, dtype=dtype, external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
        else:
            src = tmp_path / "src.h5"
            with h5py.File(src, "w") as g:
                g.create_dataset("d", data=np.frombuffer(secret.read_bytes()[: 4 * int(np.prod(shape))], "<f4").reshape(shape))
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[...] = h5py.VirtualSource(str(src), "d", shape=shape)
            f.create_virtual_dataset(target, layout)
    return path


@pytest.mark.parametrize("how, needle", [("external", "external"), ("virtual", "virtual")])
def test_hdf5_external_and_virtual_storage_is_refused(tmp_path, how, needle):
    path = _h5_weights(tmp_path, how)
    code, err, _ = run_measured("inspect", path)
    line = err.strip()
    assert code == 2 and str(path) in line and needle in line and "\n" not in line, err


def test_keras_configs_that_are_null_or_a_string(tmp_path):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4)])
    model.save(tmp_path / "m.keras")
    for value in (None, "x"):
        with zipfile.ZipFile(tmp_path / "m.keras") as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        cfg = json.loads(members["config.json"])
        cfg["config"]["layers"][-1]["config"] = value
        members["config.json"] = json.dumps(cfg).encode()
        bad = tmp_path / f"bad_{value}.keras"
        with zipfile.ZipFile(bad, "w") as zf:
            for n, d in members.items():
                zf.writestr(n, d)
        code, err, _ = run_measured("inspect", bad)
        assert code == 2 and str(bad) in err and "\n" not in err.strip() and "Traceback" not in err, err
    deep = dict(members)
    deep["config.json"] = ("[" * 100000 + "]" * 100000).encode()
    bad = tmp_path / "deep.keras"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, d in deep.items():
            zf.writestr(n, d)
    code, err, _ = run_measured("inspect", bad)
    assert code == 2 and "nested too deeply" in err and "HDF5" not in err, err


def test_onnx_external_data_through_a_symlink_is_one_line(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    D, H = 3, 2
    rng = np.random.default_rng(0)
    W = numpy_helper.from_array(rng.normal(size=(1, 4 * H, D)).astype(np.float32), "W")
    R = numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(np.float32), "R")
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=H)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 1, D])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [W, R],
    )
    model = helper.make_model(graph)
    folder = tmp_path / "onnx"
    folder.mkdir()
    onnx.save_model(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="w.bin", size_threshold=0)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((folder / "w.bin").read_bytes())
    (folder / "w.bin").unlink()
    (folder / "w.bin").symlink_to(secret)
    code, err, _ = run_measured("inspect", folder / "m.onnx")
    line = err.strip()
    assert code == 2 and str(folder / "m.onnx") in line and "symbolic link" in line and "\n" not in line, err


# ---------------------------------------------------------------------------
# Every command that reads a model takes --max-memory, and the budget reaches
# its readers and its capture (what-if, featurize, check as diagnose does)


def _tweet2vec_bomb(folder: Path) -> Path:
    """A 25-array Tweet2Vec list (conv stack, then the LSTM) whose last array is
    ``numpy.ndarray((20000, 20000))``: under 1 kB, 3.2 GB once touched."""
    arrays = [np.zeros((1, 4), np.float32)] * 24 + [af._Reduce(np.ndarray, ((20000, 20000),))]
    path = folder / "encoding_bomb_1.npy"
    import pickle

    path.write_bytes(pickle.dumps(arrays, protocol=2))
    assert path.stat().st_size < 2048
    return path


def test_what_if_refuses_a_model_bomb_under_max_memory(tmp_path):
    path = af.ndarray_bomb(tmp_path)
    np.save(tmp_path / "ok.npy", np.zeros((2, 5, 3), np.float32))
    refused_under_budget(tmp_path, path, "what-if", path, "--inputs", tmp_path / "ok.npy", needle="--max-memory")


def test_what_if_refuses_an_inputs_bomb_under_max_memory(tmp_path):
    """1.2 GB of deflated zeros in ~1 MB: over the 1 GB given, under the default (half of physical memory)."""
    model = _native_model(tmp_path / "m")
    bomb = _deflated_zeros(tmp_path / "x.npz", "x.npy", (300, 1024, 1024))
    refused_under_budget(tmp_path, bomb, "what-if", model, "--inputs", bomb, needle="--max-memory")


def test_what_if_refuses_a_capture_over_max_memory(tmp_path):
    """Small files (a 1.5 MB input, H=512), but the experiment's capture keeps 64
    sequences × 2000 steps of full records: several GB, refused before the first run."""
    model = _native_model(tmp_path / "m", D=3, H=512)
    np.save(tmp_path / "x.npy", np.zeros((64, 2000, 3), np.float32))
    refused_under_budget(tmp_path, tmp_path / "x.npy", "what-if", model, "--inputs", tmp_path / "x.npy",
                         needle="--max-memory")


def test_featurize_refuses_a_model_bomb_under_max_memory(tmp_path):
    path = _tweet2vec_bomb(tmp_path)
    (tmp_path / "texts.txt").write_text("hello\nworld\n")
    refused_under_budget(tmp_path, path, "featurize", path, "--model-format", "tweet2vec",
                         "--inputs", tmp_path / "texts.txt", "--out", tmp_path / "x.npy", needle="--max-memory")
    assert not (tmp_path / "x.npy").exists()


def _check_config(tmp_path: Path, model: Path, extra: str = "", **entry) -> Path:
    lines = [extra, "[[models]]", f"model = {json.dumps(str(model))}"]
    lines += [f"{k} = {json.dumps(str(v))}" for k, v in entry.items()]
    config = tmp_path / "lstm-doctor.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def test_check_refuses_a_model_bomb_under_max_memory(tmp_path):
    path = af.ndarray_bomb(tmp_path)
    config = _check_config(tmp_path, path)
    line = refused_under_budget(tmp_path, path, "check", "--config", config, needle="--max-memory")
    assert line.startswith(f"lstm-doctor: error: model {str(path)!r}"), line


def test_check_config_max_memory_reaches_the_readers(tmp_path):
    """``max-memory = "1GB"`` in the config, no flag: the same refusal; the inputs too."""
    path = af.ndarray_bomb(tmp_path)
    config = _check_config(tmp_path, path, 'max-memory = "1GB"')
    code, err, rss = run_measured("check", "--config", config)
    line = err.strip()
    assert code == 2 and str(path) in line and "--max-memory" in line and "\n" not in line, err
    assert rss < BUDGET, f"peak RSS {rss / 2**20:.0f} MB"
    model = _native_model(tmp_path / "m")
    bomb = _deflated_zeros(tmp_path / "x.npz", "x.npy", (300, 1024, 1024))
    config = _check_config(tmp_path, model, 'max-memory = "1GB"', inputs=bomb)
    code, err, rss = run_measured("check", "--config", config)
    assert code == 2 and str(bomb) in err and "\n" not in err.strip(), err
    assert rss < BUDGET, f"peak RSS {rss / 2**20:.0f} MB"


def test_check_flag_overrides_the_config_and_a_bad_size_names_the_config(tmp_path):
    path = af.ndarray_bomb(tmp_path)
    config = _check_config(tmp_path, path, 'max-memory = "20GB"')
    refused_under_budget(tmp_path, path, "check", "--config", config, needle="--max-memory")
    for value in ('"lots"', "0", "true", '"' + "9" * 400 + '"'):
        config = _check_config(tmp_path, path, f"max-memory = {value}")
        code, err, _ = run_measured("check", "--config", config)
        line = err.strip()
        assert code == 2 and str(config) in line and "max-memory" in line and "\n" not in line, (value, err)


# ---------------------------------------------------------------------------
# A reader's running total belongs to its own load


@pytest.mark.parametrize("other", ["thread", "nested"])
def test_a_torch_checkpoint_keeps_its_own_allowance(tmp_path, other):
    """Two tensors of 400 bytes over one 4-byte storage under a 600-byte budget: refused by
    their sum. Another checkpoint read in the middle of it (in a second thread, or nested in
    the same one) starts and ends its own count: the first read's goes on and refuses."""
    import threading

    from lstm_doctor.capture import budget
    from lstm_doctor.capture.budget import BudgetError
    from lstm_doctor.load import torch as torch_load

    big = af.torch_zero_stride(tmp_path, "big.pt", sizes=((100,), (100,)))
    small = af.torch_zero_stride(tmp_path, "small.pt", sizes=((1,), (1,)))
    paused, resume = threading.Event(), threading.Event()
    real = torch_load.declared_bytes
    state = {"reader": threading.current_thread(), "calls": 0, "error": None, "result": None}

    def pausing(shape, itemsize):  # the big read's first tensor: let the other read run now
        if threading.current_thread() is state["reader"] and state["calls"] == 0:
            state["calls"] += 1
            if other == "nested":
                with budget.reading(600):
                    assert set(torch_load.read_zip_checkpoint(small)) == {"weight_ih_l0", "weight_hh_l0"}
            else:
                paused.set()
                assert resume.wait(30)
        return real(shape, itemsize)

    def read_big():
        try:
            with budget.reading(600):
                state["result"] = torch_load.read_zip_checkpoint(big)
        except BudgetError as exc:
            state["error"] = exc

    torch_load.declared_bytes = pausing
    try:
        if other == "nested":
            read_big()
        else:
            worker = threading.Thread(target=read_big)
            state["reader"] = worker
            worker.start()
            assert paused.wait(30)
            with budget.reading(600):
                assert set(torch_load.read_zip_checkpoint(small)) == {"weight_ih_l0", "weight_hh_l0"}
            resume.set()
            worker.join(30)
    finally:
        torch_load.declared_bytes = real
    assert state["calls"] == 1
    assert state["result"] is None and state["error"] is not None, "the big checkpoint was read past its budget"
    assert "a tensor of size (100,)" in str(state["error"]), state["error"]


# Many arrays, each under the budget, whose sum is over it: refused at the one that
# passes it, before it is read (the arrays below are 549 MB each under a 1 GB budget).
BIG_H = 5860  # (H, 4H) float32 = 549 MB


def _h5_big_weights(tmp_path: Path) -> Path:
    """A Keras .h5 whose kernel and recurrent kernel are unwritten (fill-value) datasets
    of (H, 4H): no disk, 549 MB each once read."""
    h5py = pytest.importorskip("h5py")
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4)])
    path = tmp_path / "m.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and "kernel" in n else None)
        assert len(names) == 2, names
        for name in names:
            dtype = f[name].dtype
            del f[name]
            f.create_dataset(name, shape=(BIG_H, 4 * BIG_H), dtype=dtype)
    assert path.stat().st_size < 1 << 20
    return path


def _onnx_big_external(tmp_path: Path) -> Path:
    """An ONNX LSTM whose W and R (each (1, 4H, H)) both point at the same 549 MB of one
    sparse external file beside it."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    n = 4 * BIG_H * BIG_H * 4
    folder = tmp_path / "onnx"
    folder.mkdir()
    with open(folder / "w.bin", "wb") as fh:
        fh.truncate(n)  # a hole: no disk

    def external(name):
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[1, 4 * BIG_H, BIG_H])
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(n))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return t

    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=BIG_H)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [5, 1, BIG_H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [external("W"), external("R")],
    )
    path = folder / "m.onnx"
    onnx.save_model(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize("make", [_h5_big_weights, _onnx_big_external], ids=["hdf5", "onnx"])
def test_arrays_each_under_the_budget_are_refused_by_their_sum(tmp_path, make):
    path = make(tmp_path)
    line = refused_under_budget(tmp_path, path, "inspect", path, needle="--max-memory")
    assert "recurrent" in line or "'R'" in line, line  # the second array, not the first


def test_compare_refuses_a_model_bomb_under_max_memory(tmp_path):
    path = af.ndarray_bomb(tmp_path)
    model = _native_model(tmp_path / "m")
    np.save(tmp_path / "ok.npy", np.zeros((2, 5, 3), np.float32))
    refused_under_budget(tmp_path, path, "compare", model, path, "--inputs", tmp_path / "ok.npy",
                         needle="--max-memory")


def test_diagnose_what_if_refuses_its_experiment_over_max_memory(tmp_path):
    """diagnose's own capture fits (one sequence per chunk, one kept), but --what-if's runs
    keep 64 sequences × 2000 steps of full records: refused before the diagnosis."""
    model = _native_model(tmp_path / "m", D=3, H=512)
    np.save(tmp_path / "x.npy", np.zeros((64, 2000, 3), np.float32))
    refused_under_budget(tmp_path, tmp_path / "x.npy", "diagnose", model, "--inputs", tmp_path / "x.npy",
                         "--what-if", "--sample-size", "1", "--chunk-size", "1", needle="--max-memory")


def test_a_checkpoints_pickled_arrays_count_with_its_storages(tmp_path):
    """A .pt whose data.pkl also pickles a NumPy array of 400 bytes, beside a 100-float tensor
    (its 400-byte storage and its 400-byte copy: 800). Under a 1000-byte budget each part
    fits alone, the checkpoint's 1200 do not (before, the pickle's arrays had an allowance
    of their own: a .pt could use up to twice the budget)."""
    import torch

    from lstm_doctor.capture import budget
    from lstm_doctor.capture.budget import BudgetError
    from lstm_doctor.load import torch as torch_load

    path = tmp_path / "m.pt"
    torch.save({"weight_ih_l0": torch.zeros(100), "extra": np.zeros(100, np.float32)}, path)
    with budget.reading(1300):
        assert set(torch_load.read_zip_checkpoint(path)) == {"weight_ih_l0", "extra"}
    with budget.reading(1000), pytest.raises(BudgetError, match="an array of shape"):
        torch_load.read_zip_checkpoint(path)
