"""The bad-input corpus: every case through the CLI gives exit 2 and one line naming the file and the problem.

Valid small files of every format are generated once (``valid`` fixture) and
then truncated, corrupted, renamed, reshaped and so on in ``tmp_path``. The
CLI runs in-process with ``catch_exceptions=False``: an exception that is not a
``UserError`` fails the test with its traceback instead of hiding in a result.
NaN and Inf are findings, not errors: those runs continue and report them.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "numpy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from factory import direction, normal_inputs, write_onnx_lstm  # noqa: E402

from lstm_doctor.capture import budget  # noqa: E402
from lstm_doctor.cli.main import cli  # noqa: E402
from lstm_doctor.load import native  # noqa: E402
from lstm_doctor.model import Activations, Layer, LSTMModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_fixtures  # noqa: E402

D, H = 3, 4


def invoke(*args):
    return CliRunner().invoke(cli, [a if isinstance(a, str) else os.fsdecode(a) for a in args], catch_exceptions=False)


def fails(*args, path=None, needle=None):
    """Run the CLI; assert exit 2, one line on stderr, naming ``path`` and containing ``needle``."""
    r = invoke(*args)
    assert r.exit_code == 2, f"exit {r.exit_code}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("lstm-doctor: error: "), line
    if path is not None:
        assert os.fsdecode(path) in line, line
    if needle is not None:
        assert needle.lower() in line.lower(), line
    return line


# ---------------------------------------------------------------------------
# Valid small files of every format


def _save_onnx(path: Path):
    import onnx  # noqa: F401 (the test extra installs it; a missing one must fail, not skip)
    write_onnx_lstm(path, D, H)


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    """One small valid file per format (and inputs), all with D=3 and H=4."""
    root = tmp_path_factory.mktemp("valid")
    files: dict[str, Path] = {}
    m = LSTMModel((Layer(direction(D, H, seed=1, forget_bias=1.0), None, Activations()),), name="ok")
    native.save(m, root / "native")
    files["native"] = root / "native"
    files["npz_weights"] = root / "native" / "weights.npz"
    x = normal_inputs(n=6, T=5, D=D, seed=2)
    np.save(root / "x.npy", x)
    np.savez(root / "x.npz", x=x)
    files["npy"], files["npz"] = root / "x.npy", root / "x.npz"
    files["tweet2vec"] = make_fixtures.write_tweet2vec(root, D=D, H=H, with_global=False)
    params = make_fixtures.lasagne_params(D=D, H=H)
    files["pickle"] = make_fixtures.dump(dict(params), root / "lasagne.pkl", use_joblib=False)
    np.savez(root / "lasagne.npz", **params)
    files["lasagne_npz"] = root / "lasagne.npz"
    import torch
    torch.manual_seed(0)
    torch.save(torch.nn.LSTM(D, H).state_dict(), root / "m.pt")
    files["pt"] = root / "m.pt"
    import keras
    km = keras.Sequential([keras.Input((5, D)), keras.layers.LSTM(H)])
    km.save(root / "m.keras")
    km.save(root / "m.h5")
    files["keras"], files["h5"] = root / "m.keras", root / "m.h5"
    _save_onnx(root / "m.onnx")
    files["onnx"] = root / "m.onnx"
    return files


MODEL_FILES = ("tweet2vec", "pickle", "lasagne_npz", "pt", "keras", "h5", "onnx")


def test_every_valid_file_loads(valid):
    """The corpus is built from files that work: a failure below is the damage, not the original."""
    for key in (*MODEL_FILES, "native"):
        r = invoke("inspect", valid[key])
        assert r.exit_code == 0, (key, r.stderr)
    r = invoke("diagnose", valid["native"], "--inputs", valid["npy"], "--exit-zero")
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------------------
# Truncated and corrupted files


def _truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _corrupt(src: Path, dst: Path, start: int, length: int = 64) -> Path:
    data = bytearray(src.read_bytes())
    start = min(start, max(len(data) - length, 0))
    data[start : start + length] = bytes((7 * k + 0xA5) & 0xFF for k in range(length))
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("key", MODEL_FILES)
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.97])
def test_truncated_model_files(valid, tmp_path, key, fraction):
    bad = _truncate(valid[key], tmp_path / f"cut{valid[key].suffix}", fraction)
    fails("diagnose", bad, path=bad)


@pytest.mark.parametrize("key", MODEL_FILES)
@pytest.mark.parametrize("where", ["header", "middle"])
def test_corrupted_model_files(valid, tmp_path, key, where):
    src = valid[key]
    size = src.stat().st_size
    bad = _corrupt(src, tmp_path / f"bad{src.suffix}", 8 if where == "header" else size // 2)
    r = invoke("diagnose", bad, "--exit-zero")
    # Damage inside the raw weight bytes can leave a file that still parses
    # (different numbers): a clean run is then correct. Anything else is exit 2, one line.
    if r.exit_code != 0:
        fails("diagnose", bad, "--exit-zero", path=bad)


def test_corrupted_weights_npz_of_a_native_model(valid, tmp_path):
    folder = tmp_path / "native"
    shutil.copytree(valid["native"], folder)
    _truncate(valid["npz_weights"], folder / "weights.npz", 0.5)
    fails("diagnose", folder, path=folder / "weights.npz")
    _corrupt(valid["npz_weights"], folder / "weights.npz", 0, 40)
    fails("diagnose", folder, path=folder / "weights.npz")


@pytest.mark.parametrize("key", ["npy", "npz"])
@pytest.mark.parametrize("damage", ["empty", "half", "header", "tail"])
def test_truncated_and_corrupted_inputs(valid, tmp_path, key, damage):
    src = valid[key]
    bad = tmp_path / f"x{src.suffix}"
    if damage == "empty":
        _truncate(src, bad, 0.0)
    elif damage == "half":
        _truncate(src, bad, 0.5)
    elif damage == "header":
        _corrupt(src, bad, 6, 40)
    else:
        _truncate(src, bad, 0.999)
    fails("diagnose", valid["native"], "--inputs", bad, path=bad)


# ---------------------------------------------------------------------------
# One format under another's name


@pytest.mark.parametrize(
    "key, suffix",
    [("keras", ".onnx"), ("onnx", ".keras"), ("pt", ".h5"), ("h5", ".pt"), ("pickle", ".onnx"),
     ("lasagne_npz", ".keras"), ("keras", ".npz"), ("onnx", ".pkl"), ("npy", ".onnx"), ("pt", ".npz")],
)
def test_a_file_with_another_formats_extension(valid, tmp_path, key, suffix):
    bad = tmp_path / f"renamed{suffix}"
    shutil.copy(valid[key], bad)
    r = invoke("inspect", bad)
    # Content sniffing may recognise the real format (a clean load is fine); else exit 2, one line.
    if r.exit_code != 0:
        fails("inspect", bad, path=bad)


@pytest.mark.parametrize("fmt", ["keras", "onnx", "torch", "tweet2vec", "lasagne"])
def test_forced_wrong_model_format(valid, fmt):
    other = valid["onnx"] if fmt != "onnx" else valid["keras"]
    fails("diagnose", other, "--model-format", fmt, path=other)


def test_an_input_file_given_as_the_model_and_a_model_as_inputs(valid):
    fails("diagnose", valid["npy"], path=valid["npy"])
    fails("diagnose", valid["native"], "--inputs", valid["onnx"], path=valid["onnx"])


# ---------------------------------------------------------------------------
# Shapes: ranks, D, H, 4H, array counts, empty inputs


def _native(tmp_path: Path, **arrays) -> Path:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    np.savez(folder / "weights.npz", **arrays)
    (folder / "lstm.toml").write_text('[model]\nweights = "weights.npz"\n')
    return folder


def _ok_arrays():
    rng = np.random.default_rng(0)
    return {"W": rng.normal(size=(D, 4 * H)), "U": rng.normal(size=(H, 4 * H)), "b": np.zeros(4 * H)}


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"W": np.zeros((1, D, 4 * H))}, "W"),  # rank 3 weights
        ({"U": np.zeros(4 * H)}, "U"),  # rank 1 recurrent weights
        ({"U": np.zeros((H + 1, 4 * (H + 1)))}, "U"),  # H from U differs from W
        ({"b": np.zeros(4 * (H + 2))}, "b"),  # H from b differs
        ({"W": np.zeros((D, 4 * H + 2))}, "4 gates"),  # 4H not divisible by 4
        ({"W": np.zeros((D, 0))}, None),  # H = 0
        ({"W": np.array([["a"] * 4 * H] * D)}, None),  # string weights
        ({"W": np.zeros((D, 4 * H), dtype=np.complex64)}, None),  # complex weights
    ],
    ids=["W-rank3", "U-rank1", "U-H-mismatch", "b-H-mismatch", "4H-not-div-4", "H-zero", "W-strings", "W-complex"],
)
def test_malformed_native_weights(tmp_path, change, needle):
    folder = _native(tmp_path, **{**_ok_arrays(), **change})
    fails("diagnose", folder, needle=needle)


def test_object_weights_are_refused_without_running_pickle(tmp_path):
    arrays = _ok_arrays()
    folder = _native(tmp_path, **{k: v for k, v in arrays.items() if k != "W"})
    np.savez(folder / "weights.npz", W=np.array([{"x": 1}], dtype=object), U=arrays["U"], b=arrays["b"])
    fails("diagnose", folder, path=folder / "weights.npz")


def test_tweet2vec_list_with_a_wrong_number_of_arrays(tmp_path):
    arrays = make_fixtures.tweet2vec_lstm(D=D, H=H)
    for n in (16, 18, 1):
        bad = make_fixtures.dump(arrays[:n] if n < 17 else arrays + [arrays[-1]], tmp_path / f"enc{n}.npy")
        fails("diagnose", bad, "--model-format", "tweet2vec", path=bad, needle="arrays")


def test_tweet2vec_list_with_an_inconsistent_h(tmp_path):
    arrays = make_fixtures.tweet2vec_lstm(D=D, H=H)
    arrays[6] = np.zeros((H + 1, H), np.float32)
    bad = make_fixtures.dump(arrays, tmp_path / "enc.npy")
    fails("diagnose", bad, "--model-format", "tweet2vec", path=bad, needle="shape")


@pytest.mark.parametrize(
    "shape, needle",
    [((D,), "rank 1"), ((4, 5), "rank 2"), ((2, 3, 4, D), "rank 4"), ((5, D), "rank 2")],
)
def test_input_ranks(valid, tmp_path, shape, needle):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    fails("diagnose", valid["native"], "--inputs", tmp_path / "x.npy", path=tmp_path / "x.npy", needle=needle)


def test_input_d_mismatch_names_both_sizes(valid, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 5, D + 2), np.float32))
    line = fails("diagnose", valid["native"], "--inputs", tmp_path / "x.npy", path=tmp_path / "x.npy")
    assert f"D={D + 2}" in line and f"D={D}" in line
    # the same through trace and what-if
    fails("trace", valid["native"], "--inputs", tmp_path / "x.npy", "--out", tmp_path / "t.npz", path=tmp_path / "x.npy")
    fails("what-if", valid["native"], "--inputs", tmp_path / "x.npy", path=tmp_path / "x.npy")


@pytest.mark.parametrize("shape", [(0, 5, D), (4, 0, D), (0, 0, D)], ids=["B=0", "T=0", "both"])
def test_empty_inputs(valid, tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    fails("diagnose", valid["native"], "--inputs", tmp_path / "x.npy", path=tmp_path / "x.npy", needle="no sequences")
    np.savez(tmp_path / "x.npz", x=np.zeros(shape, np.float32))
    fails("diagnose", valid["native"], "--inputs", tmp_path / "x.npz", path=tmp_path / "x.npz", needle="no sequences")


def test_npz_inputs_with_no_or_ambiguous_arrays(valid, tmp_path):
    np.savez(tmp_path / "none.npz")
    fails("diagnose", valid["native"], "--inputs", tmp_path / "none.npz", path=tmp_path / "none.npz", needle="no array")
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3, D)), b=np.zeros((2, 3, D)))
    fails("diagnose", valid["native"], "--inputs", tmp_path / "two.npz", path=tmp_path / "two.npz", needle="'x'")


def test_lengths_out_of_range_or_wrong_shape(valid, tmp_path):
    for name, lengths in {"zero": [0] * 6, "long": [6] * 6, "short": [5] * 5, "frac": [1.5] * 6}.items():
        np.save(tmp_path / f"{name}.npy", np.array(lengths))
        fails("diagnose", valid["native"], "--inputs", valid["npy"], "--lengths", tmp_path / f"{name}.npy",
              path=tmp_path / f"{name}.npy")


# ---------------------------------------------------------------------------
# Dtypes: object and string arrays are refused, complex refused, integers converted with a note


@pytest.mark.parametrize(
    "array, needle",
    [
        (np.array([[["a"] * D] * 5] * 2), "dtype <U1"),
        (np.array([[[b"a"] * D] * 5] * 2), "dtype |S1"),
        (np.zeros((2, 5, D), np.complex128), "complex128"),
        (np.zeros((2, 5, D), "datetime64[s]"), "datetime64"),
    ],
    ids=["str", "bytes", "complex", "datetime"],
)
def test_non_numeric_input_dtypes_are_refused(valid, tmp_path, array, needle):
    np.save(tmp_path / "x.npy", array)
    fails("diagnose", valid["native"], "--inputs", tmp_path / "x.npy", path=tmp_path / "x.npy", needle=needle)


def test_object_inputs_are_refused_without_unpickling(valid, tmp_path):
    np.save(tmp_path / "x.npy", np.empty((2, 5, D), dtype=object), allow_pickle=True)
    fails("diagnose", valid["native"], "--inputs", tmp_path / "x.npy", path=tmp_path / "x.npy", needle="Python objects")
    np.savez(tmp_path / "x.npz", x=np.empty((2, 5, D), dtype=object))
    fails("diagnose", valid["native"], "--inputs", tmp_path / "x.npz", path=tmp_path / "x.npz", needle="Python objects")


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.bool_])
def test_integer_inputs_are_converted_with_a_note(valid, tmp_path, dtype):
    x = (np.random.default_rng(0).integers(0, 3, (6, 5, D))).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    r = invoke("diagnose", valid["native"], "--inputs", tmp_path / "x.npy", "--format", "json", "--exit-zero")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    text = json.dumps(report)
    assert f"inputs of dtype {np.dtype(dtype)} are converted to floats" in text


# ---------------------------------------------------------------------------
# Memory budget: --max-memory refuses before allocating


def test_max_memory_refuses_before_allocating(valid, tmp_path, monkeypatch):
    # A memory-mapped file declaring 20,000 sequences of 500 steps: cheap on disk
    # (sparse), expensive once captured. The capture must never start.
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(20_000, 500, D))
    del big
    from lstm_doctor.capture import pipeline

    def no_capture(*a, **k):
        raise AssertionError("capture started despite the memory budget")

    monkeypatch.setattr(pipeline, "capture", no_capture)
    line = fails("diagnose", valid["native"], "--inputs", tmp_path / "big.npy", "--max-memory", "1MB",
                 "--sample-size", "20000", path=tmp_path / "big.npy", needle="--max-memory")
    assert "would need about" in line
    fails("trace", valid["native"], "--inputs", tmp_path / "big.npy", "--out", tmp_path / "t.npz",
          "--max-memory", "50MB", path=tmp_path / "big.npy", needle="--max-memory")
    assert not (tmp_path / "t.npz").exists()
    # Probes are sized before they are drawn.
    fails("diagnose", valid["native"], "--probe-sequences", "100000000", "--probe-steps", "100000",
          needle="--max-memory")
    # A bad size is a usage error.
    fails("diagnose", valid["native"], "--max-memory", "lots", needle="--max-memory 'lots'")


def test_max_memory_allows_a_small_run(valid):
    r = invoke("diagnose", valid["native"], "--inputs", valid["npy"], "--max-memory", "200MB", "--exit-zero")
    assert r.exit_code == 0, r.stderr


def test_budget_estimates_grow_with_the_sizes():
    m = LSTMModel((Layer(direction(8, 64), None, Activations()),))
    base = budget.estimate_capture(m, T=100, n_sequences=1000, D=8, chunk_size=64, sample_size=64)
    assert budget.estimate_capture(m, 200, 1000, 8, 64, 64) > 1.9 * base
    # the number of sequences beyond chunk and sample does not matter for the streaming capture
    assert budget.estimate_capture(m, 100, 10**6, 8, 64, 64) == base
    # the trace keeps every sequence
    assert budget.estimate_trace(m, 100, 10**6, 8, 64) > 500 * budget.estimate_trace(m, 100, 1000, 8, 64) / 1000 * 0.9
    assert budget.parse_size("2GB") == 2 << 30 and budget.parse_size("512m") == 512 << 20
    assert budget.parse_size("1.5GiB") == int(1.5 * (1 << 30)) and budget.parse_size("1000") == 1000
    assert budget.parse_size(None) == budget.default_limit() > 0


# ---------------------------------------------------------------------------
# Paths: directories, unreadable files, symlink loops, non-UTF-8 and very long names


def test_a_directory_where_a_file_was_expected(valid, tmp_path):
    (tmp_path / "d.npy").mkdir()
    fails("diagnose", valid["native"], "--inputs", tmp_path / "d.npy", path=tmp_path / "d.npy", needle="directory")
    fails("diagnose", valid["native"], "--inputs", valid["npy"], "--lengths", tmp_path / "d.npy",
          path=tmp_path / "d.npy", needle="directory")
    (tmp_path / "m.onnx").mkdir()
    fails("diagnose", tmp_path / "m.onnx", path=tmp_path / "m.onnx")
    fails("diagnose", valid["native"], "--inputs", valid["npy"], "--output", tmp_path / "d.npy",
          path=tmp_path / "d.npy", needle="directory")


def test_an_unreadable_file(valid, tmp_path, monkeypatch):
    bad = tmp_path / "x.npy"
    shutil.copy(valid["npy"], bad)
    model = tmp_path / "m.onnx"
    shutil.copy(valid["onnx"], model)
    bad.chmod(0)
    model.chmod(0)
    try:
        readable = os.access(bad, os.R_OK)
        if readable:
            # Running as root: chmod 000 does not stop reads. Make the opening of
            # exactly these two files raise the PermissionError an ordinary user gets.
            real_open = builtins.open
            blocked = {str(bad), str(model)}

            def guarded_open(file, *args, **kwargs):
                if isinstance(file, (str, os.PathLike)) and os.fspath(file) in blocked:
                    raise PermissionError(13, "Permission denied", os.fspath(file))
                return real_open(file, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", guarded_open)
        fails("diagnose", valid["native"], "--inputs", bad, path=bad, needle="permission denied")
        fails("diagnose", model, path=model, needle="permission denied")
    finally:
        bad.chmod(0o644)
        model.chmod(0o644)


def test_a_symlink_loop_and_a_dangling_symlink(valid, tmp_path):
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    fails("diagnose", valid["native"], "--inputs", tmp_path / "a.npy", path=tmp_path / "a.npy", needle="symlink")
    fails("diagnose", tmp_path / "a.npy", path=tmp_path / "a.npy", needle="symlink")
    (tmp_path / "gone.npy").symlink_to(tmp_path / "missing.npy")
    fails("diagnose", valid["native"], "--inputs", tmp_path / "gone.npy", path=tmp_path / "gone.npy")


def test_non_utf8_paths(valid, tmp_path):
    raw = os.fsencode(tmp_path) + b"/x\xff\xfe.npy"
    missing = os.fsencode(tmp_path) + b"/nope\xff.npy"
    with open(raw, "wb") as fh:
        fh.write(b"not an array at all")
    for p in (raw, missing):
        r = invoke("diagnose", valid["native"], "--inputs", p)
        assert r.exit_code == 2, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # A valid array under a non-UTF-8 name works.
    good = os.fsencode(tmp_path) + b"/good\xff.npy"
    shutil.copy(valid["npy"], good)
    r = invoke("diagnose", valid["native"], "--inputs", good, "--exit-zero")
    assert r.exit_code == 0, r.stderr


def test_very_long_paths(valid, tmp_path):
    long_name = tmp_path / ("x" * 300 + ".npy")
    fails("diagnose", valid["native"], "--inputs", long_name, needle="too long")
    deep = tmp_path.joinpath(*["d" * 200] * 30, "x.npy")  # > PATH_MAX
    fails("diagnose", valid["native"], "--inputs", deep)
    fails("diagnose", deep)


# ---------------------------------------------------------------------------
# TOML spec errors: line and key


@pytest.mark.parametrize(
    "text, needles",
    [
        ('[model]\nweights = "weights.npz"\n\n[model\n', ["line 4"]),
        ('[model]\nweights = "weights.npz"\nname = \n', ["line 3"]),
        ('[model]\nweights = "weights.npz"\nweights = "again.npz"\n', ["line 3"]),
        ('[model]\nweights = "weights.npz"\nbogus = 1\n', ["model.'bogus'"]),
        ('[model]\nweights = "weights.npz"\n[activations]\ngate = "swish"\n', ["swish"]),
        ('[model]\nweights = "weights.npz"\n[activations]\nmystery = "tanh"\n', ["activations", "mystery"]),
        ('[model]\nweights = "weights.npz"\n[[layers]]\nW = "W"\nwat = 1\n', ["layers[0].'wat'"]),
        ('[model]\nweights = "weights.npz"\n[[layers]]\nW = "nope"\n', ["'nope'"]),
        ('[model]\nname = "x"\n', ["model.weights"]),
        ('[model]\nweights = "weights.npz"\ngate_order = "ifgx"\n', ["gate"]),
        ('[model]\nweights = "weights.npz"\ndtype = "float7"\n', ["dtype"]),
        ('[model]\nweights = "weights.npz"\ninput_layout = "xyz"\n', ["layout"]),
        ('model = 3\n', ["[model]"]),
        ('[model]\nweights = "missing.npz"\n', ["missing.npz"]),
        ('[model]\nweights = "weights.npz"\nlayers = 3\n', []),
    ],
)
def test_toml_spec_errors_name_line_or_key(tmp_path, text, needles):
    folder = _native(tmp_path, **_ok_arrays())
    (folder / "lstm.toml").write_text(text)
    line = fails("diagnose", folder)
    assert str(folder) in line, line
    for needle in needles:
        assert needle in line, line


def test_a_non_utf8_spec(tmp_path):
    folder = _native(tmp_path, **_ok_arrays())
    (folder / "lstm.toml").write_bytes(b'[model]\nweights = "w\xff.npz"\n')
    fails("diagnose", folder, path=folder / "lstm.toml", needle="UTF-8")


# ---------------------------------------------------------------------------
# NaN and Inf are findings, not errors


def _json_run(*args):
    r = invoke(*args, "--format", "json", "--exit-zero")
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    report = json.loads(r.stdout)
    return report, {f["code"] for f in report["findings"]}


def test_nan_and_inf_weights_are_findings(tmp_path):
    arrays = _ok_arrays()
    arrays["W"][0, 0] = np.nan
    arrays["U"][1, 2] = np.inf
    folder = _native(tmp_path, **arrays)
    x = normal_inputs(n=6, T=5, D=D)
    np.save(tmp_path / "x.npy", x)
    _, codes = _json_run("diagnose", folder, "--inputs", tmp_path / "x.npy")
    assert "W105" in codes


def test_nan_and_inf_inputs_are_findings(valid, tmp_path):
    x = normal_inputs(n=6, T=5, D=D)
    x[0, 1, 2] = np.nan
    x[3, 0, 0] = np.inf
    np.save(tmp_path / "x.npy", x)
    report, codes = _json_run("diagnose", valid["native"], "--inputs", tmp_path / "x.npy")
    assert "I505" in codes
    # the run continued: the other sequences were analysed
    assert report["findings"] and report["summary"]


def test_a_cell_that_overflows_is_a_finding(tmp_path):
    """Huge inputs drive c to ±inf / NaN in float32: C402, and the run completes."""
    arrays = _ok_arrays()
    arrays["b"][H : 2 * H] = 50.0  # forget gate open: c accumulates
    arrays["W"][:, 2 * H : 3 * H] = 1.0
    arrays["W"][:, :H] = 1.0
    folder = _native(tmp_path, **arrays)
    (folder / "lstm.toml").write_text(
        '[model]\nweights = "weights.npz"\ndtype = "float32"\n[activations]\ncandidate = "identity"\n'
    )
    x = np.full((6, 40, D), 3e37, np.float32)
    np.save(tmp_path / "x.npy", x)
    _, codes = _json_run("diagnose", folder, "--inputs", tmp_path / "x.npy")
    assert "C402" in codes
