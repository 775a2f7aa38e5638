"""Text inputs and the Tweet2Vec front end (issue 9).

- one-hot encoding against hand-computed cases (unknown characters, the
  duplicated '-', lower-cased markers, truncation at 150, padding) and an
  independent naive encoder written from CASE.md's words;
- the conv stack: a hand-checked 1-channel case proving the kernel is flipped
  (NumPy and symbolic), and the symbolic stack against the NumPy reference;
- a 25-array Tweet2Vec file (``fixtures/make_fixtures.write_tweet2vec(...,
  conv=True)``: random conv weights in the documented shapes, built in
  ``tmp_path``) diagnosed from a .txt of tweets, with the same findings as
  from the .npy that ``lstm-doctor featurize`` writes, which matches the NumPy
  reference to 1e-5;
- featurizer plug-ins: module:function, file.py:function and entry points;
  one that raises, returns the wrong shape or the wrong dtype exits 2 naming it;
- text-file edge cases: empty file, blank lines, non-UTF-8 bytes, a very long
  line, JSON Lines and JSON lists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lstm_doctor.analyzers import AnalysisConfig, analyze
from lstm_doctor.capture.pipeline import CaptureOptions, capture
from lstm_doctor.cli.main import cli
from lstm_doctor.errors import InputError, UserError
from lstm_doctor.frontend import frontend_stats, stats_lines, text_source
from lstm_doctor.frontend import tweet2vec as t2v
from lstm_doctor.frontend.example import SAMPLE_TWEETS
from lstm_doctor.frontend.plugins import FeaturizerError, load_featurizer
from lstm_doctor.frontend.source import FeatureArray
from lstm_doctor.frontend.text import read_texts
from lstm_doctor.load import LoadOptions, load_model, native
from lstm_doctor.load import tweet2vec as t2v_load
from lstm_doctor.load.inputs import check_against_model, load_inputs
from lstm_doctor.report import load_schema

# The shipped report schema is the single source for the front-end statistics.
FRONTEND_STATS_SCHEMA = load_schema()["$defs"]["inputs"]["properties"]["frontend"]["oneOf"][0]

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_fixtures  # noqa: E402
from factory import direction  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TWEETS = ROOT / "examples" / "tweet2vec_like" / "tweets.txt"
TOL = 1e-5


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def check(result, code):
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def encoding(tmp_path_factory):
    """A 25-array encoding_<model>_<epoch>.npy: documented conv shapes, CASE-like LSTM (H=8)."""
    folder = tmp_path_factory.mktemp("t2v")
    return make_fixtures.write_tweet2vec(folder, D=10, H=8, conv=True)


@pytest.fixture(scope="module")
def conv(encoding):
    return t2v_load.conv_stack(encoding)


def naive_one_hot(text: str) -> np.ndarray:
    """CASE.md in words: a dict over the alphabet (the later '-' wins), unknown last,
    lower-cased, first 150 characters, zeros after, built (150, 75) then transposed."""
    alphabet = "Pabcdefghijklmnopqrstuvwxyz0123456789-,;.!?:~'\"/\\|_@#$%^&*+-=<>()[]{}BESHU"
    index = {}
    for k, ch in enumerate(alphabet):
        index[ch] = k
    x = np.zeros((150, len(alphabet) + 1))
    for i, ch in enumerate(text.lower()[:150]):
        x[i, index.get(ch, len(alphabet))] = 1
    return x.T


def reference(texts, conv, clean="tweet2vec"):
    """The NumPy stack in float64: the reference the engines are held to."""
    fn = t2v.cleaner(clean)
    return t2v.conv_stack_numpy(t2v.one_hot_batch([fn(t) for t in texts]), conv, dtype=np.float64)


# ---------------------------------------------------------------------------
# One-hot


def test_alphabet_facts():
    assert len(t2v.ALPHABET) == 74 and t2v.N_CHANNELS == 75 and t2v.UNKNOWN == 74
    assert t2v.ALPHABET.index("-") == 37 and t2v.ALPHABET.rindex("-") == 59
    assert t2v.CHANNEL_OF["-"] == 59  # the later index wins
    assert [t2v.CHANNEL_OF[c] for c in "BESHU"] == [69, 70, 71, 72, 73]
    assert [t2v.CHANNEL_OF[c] for c in "beshu"] == [2, 5, 19, 8, 21]


def test_one_hot_hand_computed():
    x = t2v.one_hot("aZ-9?")
    assert x.shape == (75, 150) and x.dtype == np.float32
    # a → 1, Z lowercased → z = 26, '-' → 59 (not 37), '9' → 36, '?' → 42
    assert list(np.argmax(x[:, :5], axis=0)) == [1, 26, 59, 36, 42]
    assert x[:, :5].sum(axis=0).tolist() == [1, 1, 1, 1, 1]
    assert x[37].sum() == 0  # the first '-' channel is never set
    assert x[:, 5:].sum() == 0  # padding: all-zero columns


def test_one_hot_unknown_characters_and_space():
    x = t2v.one_hot("a é\t€😀~")
    # the space, é, the tab, € and the emoji are not in the alphabet: channel 74
    assert list(np.argmax(x[:, :7], axis=0)) == [1, 74, 74, 74, 74, 74, 44]
    assert x[74].sum() == 5


def test_one_hot_markers_land_on_lowercase_letters():
    cleaned = "B U hi H S E"
    x = t2v.one_hot(cleaned)
    expected = [2, 74, 21, 74, 8, 9, 74, 8, 74, 19, 74, 5]  # b _ u _ h i _ h _ s _ e
    assert list(np.argmax(x[:, : len(cleaned)], axis=0)) == expected
    assert x[[0, 69, 70, 71, 72, 73]].sum() == 0  # upper-case channels never set


def test_one_hot_truncates_at_150_and_pads():
    long = "a" * 149 + "b" + "c" * 60
    x = t2v.one_hot(long)
    assert x.sum() == 150 and x[2, 149] == 1 and x[3].sum() == 0  # no 'c' survives
    short = t2v.one_hot("abc")
    assert short.sum() == 3 and short[:, 3:].sum() == 0
    assert t2v.one_hot("").sum() == 0


def test_one_hot_matches_a_naive_encoder():
    rng = np.random.default_rng(0)
    pool = list(t2v.ALPHABET) + list("éü€ \t😀") + list("ABCXYZ")
    texts = ["".join(rng.choice(pool, size=n)) for n in (0, 1, 7, 149, 150, 151, 300)]
    texts += [t2v.clean_tweet(t) for t in SAMPLE_TWEETS]
    batch = t2v.one_hot_batch(texts)
    assert batch.shape == (len(texts), 75, 150) and batch.dtype == np.float32
    for text, x in zip(texts, batch):
        assert np.array_equal(x, naive_one_hot(text)), text


def test_clean_tweet_follows_case_md():
    assert t2v.clean_tweet("@bob I can't wait!!! :) http://t.co/x #fun") == "B U i can not wait! H #fun E"
    assert t2v.clean_tweet("so sad :( @amy") == "B so sad S U E"
    assert t2v.clean_tweet("I'm HOME, it's late; we'll see") == "B i am home it is late we will see E"
    assert t2v.clean_tweet("don\u2019t \u201cquote\u201d me") == "B do not quote me E"
    assert t2v.clean_tweet("Café: naïve… 🙂") == "B caf nave E"  # lowercase ASCII
    assert t2v.clean_tweet("see www.example.com/a now") == "B see now E"
    assert t2v.clean_tweet("") == "B E"
    # markers stay upper case in the cleaned text; the encoder lowercases them
    cleaned = t2v.clean_tweet("@x :)")
    assert cleaned == "B U H E"
    assert list(np.argmax(t2v.one_hot(cleaned)[:, :7], axis=0)) == [2, 74, 21, 74, 8, 74, 5]


# ---------------------------------------------------------------------------
# Conv stack


def test_conv_kernel_is_flipped_one_channel():
    """x = 1..5, W = [1, 2, 3]: a true convolution gives 3·1+2·2+1·3 = 10, 16, 22;
    a cross-correlation would give 1·1+2·2+3·3 = 14, 20, 26."""
    x = np.array([[[1, 2, 3, 4, 5]]], dtype=np.float32)
    W = np.array([[[1, 2, 3]]], dtype=np.float32)
    b = np.zeros(1, np.float32)
    assert t2v.conv1d_numpy(x, W, b).ravel().tolist() == [10, 16, 22]
    assert np.convolve([1, 2, 3, 4, 5], [1, 2, 3], "valid").tolist() == [10, 16, 22]
    pick = np.array([[[1, 0, 0]]], dtype=np.float32)  # tap 0 meets x[t + 2]
    assert t2v.conv1d_numpy(x, pick, b).ravel().tolist() == [3, 4, 5]
    # one layer, no pool, bias -15 then ReLU: [0, 1, 7], on both engines
    layer = [(W, np.array([-15], np.float32))]
    for run in (t2v.conv_stack_numpy, t2v.conv_stack_symbolic):
        assert run(x, layer, pools=(None,)).ravel().tolist() == [0, 1, 7], run.__name__
        assert run(x, [(pick, b)], pools=(None,)).ravel().tolist() == [3, 4, 5], run.__name__


def test_max_pool_drops_the_remainder():
    x = np.array([[[1, 5, 2, 7, 0, 3, 9, 9]]], dtype=np.float32)
    assert t2v.max_pool_numpy(x, 3).ravel().tolist() == [5, 7]
    W = np.array([[[1]]], dtype=np.float32)
    assert t2v.conv_stack_symbolic(x, [(W, np.zeros(1, np.float32))], pools=(3,)).ravel().tolist() == [5, 7]


def test_documented_lengths():
    assert t2v.output_length(150, t2v.WIDTHS) == 10
    lengths, L = [150], 150
    for width, pool in zip(t2v.WIDTHS, t2v.POOLS):
        L = L - width + 1
        lengths.append(L)
        if pool:
            L //= pool
            lengths.append(L)
    assert lengths == [150, 144, 48, 42, 14, 12, 10]


def test_symbolic_stack_matches_numpy(conv):
    texts = list(SAMPLE_TWEETS[:20])
    x = t2v.one_hot_batch([t2v.clean_tweet(t) for t in texts])
    ref = t2v.conv_stack_numpy(x, conv, dtype=np.float64)
    assert ref.shape == (20, 256, 10)
    assert (ref == 0).mean() > 0.2 and ref.max() > 0  # ReLU: exact zeros, and signal
    numpy32 = t2v.conv_stack_numpy(x, conv)
    symbolic = t2v.conv_stack_symbolic(x, conv)
    assert numpy32.dtype == symbolic.dtype == np.float32
    assert np.abs(symbolic - ref).max() < TOL
    assert np.abs(numpy32 - ref).max() < TOL
    assert np.abs(symbolic - numpy32).max() < TOL


def test_featurize_streams_in_chunks(conv):
    texts = list(SAMPLE_TWEETS[:11])
    chunks = list(t2v.featurize(texts, conv, "numpy", chunk=4))
    assert [c.shape[0] for c in chunks] == [4, 4, 3]
    assert np.abs(np.concatenate(chunks) - reference(texts, conv)).max() < TOL
    none = t2v.featurize_all([t2v.clean_tweet(t) for t in texts], conv, chunk=5, clean="none")
    assert np.abs(none - reference(texts, conv)).max() < TOL


# ---------------------------------------------------------------------------
# End to end: texts → features → diagnosis


def findings(model, source):
    cap = capture(model, source, CaptureOptions(chunk_size=16, sample_size=16))
    return analyze(model, cap, AnalysisConfig()), cap


def finding_keys(analysis):
    return sorted(
        (f.code, int(f.severity), repr(f.location), f.message)
        for f in analysis.findings
    )


def test_featurize_then_diagnose_from_text_gives_the_same_findings(tmp_path, encoding, conv):
    texts_path = tmp_path / "tweets.txt"
    texts_path.write_bytes(TWEETS.read_bytes())
    out = tmp_path / "X.npy"
    result = check(invoke("featurize", encoding, "--inputs", texts_path, "--out", out, "--chunk-size", 16), 0)
    assert "1 of 40 lines skipped as empty (line 9)" in result.stderr
    assert "exact zeros" in result.stdout
    kept = [t for t in SAMPLE_TWEETS if t.strip()]
    X = np.load(out)
    assert X.shape == (39, 256, 10) and X.dtype == np.float32
    assert np.abs(X - reference(kept, conv)).max() < TOL  # featurize matches the NumPy reference

    model = load_model(encoding, options=LoadOptions(preset="tweet2vec"))
    assert model.input_layout == "btd" and model.D == 10  # the importer's declared reading
    from_text = text_source(encoding, texts_path, model=model, chunk_size=16)
    check_against_model(from_text, model.D)
    from_npy = load_inputs(out, model.input_layout)
    a_text, cap_text = findings(model, from_text)
    a_npy, cap_npy = findings(model, from_npy)
    assert finding_keys(a_text) == finding_keys(a_npy)
    codes = {f.code for f in a_text.findings}
    assert {"W101", "I504"} <= codes  # CASE-like weights; 256 "steps" of 10 features
    assert np.array_equal(cap_text.sample_encodings, cap_npy.sample_encodings)
    assert any("skipped as empty" in n for n in from_text.notes)
    stats = frontend_stats(from_text)
    assert stats["texts"]["kept"] == 39 and stats["texts"]["empty"] == 1
    assert stats["truncated_texts"] == 1  # the long thread tweet
    assert stats["stored_shape"] == [39, 256, 10]


def test_featurize_pytensor_engine_matches_numpy_reference(tmp_path, encoding, conv):
    texts_path = tmp_path / "t.jsonl"
    rows = [{"id": k, "full_text": t} for k, t in enumerate(SAMPLE_TWEETS[:12])]
    texts_path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "X.npy"
    check(invoke("featurize", encoding, "-i", texts_path, "--out", out, "--engine", "pytensor",
                 "--text-field", "full_text"), 0)
    kept = [t for t in SAMPLE_TWEETS[:12] if t.strip()]
    assert np.abs(np.load(out) - reference(kept, conv)).max() < TOL


def test_text_clean_none_and_layout_bct(tmp_path, encoding, conv):
    path = tmp_path / "clean.txt"
    path.write_text("B hello world E\nB U H E\n", encoding="utf-8")
    model = load_model(encoding)
    source = text_source(encoding, path, model=model, text_clean="none", layout="bct")
    x = source.read(0, 2, np.float64)  # (T, B, D): 10 positions of 256 filters
    expected = reference(["B hello world E", "B U H E"], conv, clean="none")
    assert x.shape == (10, 2, 256)
    assert np.abs(x - expected.transpose(2, 0, 1)).max() < TOL
    with pytest.raises(InputError, match="pass --layout btd"):
        check_against_model(source, model.D)  # W expects D=10: the hint names the layout
    tbd = text_source(encoding, path, model=model, text_clean="none", layout="tbd")
    assert tbd.array.shape == (256, 2, 10) and tbd.T == 256 and tbd.D == 10
    assert np.abs(tbd.read(0, 2, np.float64) - expected.transpose(1, 0, 2)).max() < TOL


def test_builtin_front_end_needs_the_conv_stack(tmp_path):
    lstm_only = make_fixtures.write_tweet2vec(tmp_path, D=10, H=8)
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n", encoding="utf-8")
    result = check(invoke("featurize", lstm_only, "--inputs", texts, "--out", tmp_path / "x.npy"), 2)
    assert "17 arrays" in result.stderr and "lstm-doctor: error:" in result.stderr
    folder = tmp_path / "native"
    native.save(_native_model(), folder)
    result = check(invoke("featurize", folder, "--inputs", texts, "--out", tmp_path / "x.npy"), 2)
    assert "--featurizer" in result.stderr
    assert not (tmp_path / "x.npy").exists()


def test_featurize_refuses_bad_outputs(tmp_path, encoding):
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n", encoding="utf-8")
    check(invoke("featurize", encoding, "--inputs", texts, "--out", tmp_path / "x.npz"), 2)
    check(invoke("featurize", encoding, "--inputs", texts, "--out", tmp_path / "missing" / "x.npy"), 2)
    check(invoke("featurize", encoding, "--inputs", tmp_path / "x.npy", "--out", tmp_path / "y.npy"), 2)


# ---------------------------------------------------------------------------
# Plug-ins

PLUGIN = '''
import numpy as np

CALLS = []
T, D = 6, 4


def ok(texts):
    CALLS.append(len(texts))
    out = np.zeros((len(texts), T, D), np.float32)
    for n, text in enumerate(texts):
        out[n, :, 0] = len(text)
        out[n, :, 1] = np.arange(T) * 0.1
        out[n, :, 2] = text.count("a")
    return out


def raises(texts):
    raise RuntimeError("tokenizer exploded")


def wrong_rank(texts):
    return np.zeros((len(texts), D), np.float32)


def wrong_batch(texts):
    return np.zeros((len(texts) + 1, T, D), np.float32)


def wrong_dtype(texts):
    return np.zeros((len(texts), T, D), np.int64)


def wrong_features(texts):
    return np.zeros((len(texts), T, D + 1), np.float32)


def ragged(texts):
    CALLS.append(len(texts))  # one more step per call: padded per chunk, not to a fixed length
    return np.zeros((len(texts), T + len(CALLS), D), np.float32)


def returns_none(texts):
    return None


def as_list(texts):
    return ok(texts).tolist()


not_callable = 3
'''


def _native_model(D=4, H=8):
    from lstm_doctor.model import Activations, Layer, LSTMModel

    return LSTMModel((Layer(direction(D, H, seed=2), None, Activations()),), name="plug")


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """A plug-in module on sys.path, a native model (D=4) and a text file."""
    modname = f"lstm_doctor_test_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{modname}.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = tmp_path / "model"
    native.save(_native_model(), folder)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"text number {k} {'a' * k}" for k in range(10)) + "\n", encoding="utf-8")
    yield modname, folder, texts
    sys.modules.pop(modname, None)


def test_plugin_streams_in_chunks(plugin_env, tmp_path):
    modname, folder, texts = plugin_env
    out = tmp_path / "X.npy"
    check(invoke("featurize", folder, "--inputs", texts, "--out", out, "--featurizer", f"{modname}:ok",
                 "--chunk-size", 3), 0)
    module = sys.modules[modname]
    assert module.CALLS == [3, 3, 3, 1]  # every text once, chunk by chunk
    lines = texts.read_text().splitlines()
    assert np.array_equal(np.load(out), module.ok(lines))

    module.CALLS.clear()
    model = load_model(folder)
    source = text_source(folder, texts, model=model, featurizer=f"{modname}:ok", chunk_size=4)
    assert isinstance(source.array, FeatureArray) and source.array.shape == (10, 6, 4)
    assert module.CALLS == [4]  # the probe call learns the shape
    analysis, cap = findings(model, source)
    assert module.CALLS == [4, 4, 2]  # the probe chunk is reused, not recomputed
    assert cap.n_sequences == 10
    stats = frontend_stats(source)
    assert stats["frontend"] == "plugin" and stats["channels"]["axis"] == "LSTM input features"
    assert stats["channels"]["always_zero"] == 1  # feature 3 is never set
    import jsonschema
    jsonschema.Draft202012Validator(FRONTEND_STATS_SCHEMA).validate(stats)
    assert any(modname in n for n in source.notes)


def test_plugin_from_a_file_path(plugin_env, tmp_path):
    modname, folder, texts = plugin_env
    path = tmp_path / f"{modname}.py"
    check(invoke("featurize", folder, "--inputs", texts, "--out", tmp_path / "X.npy",
                 "--featurizer", f"{path}:as_list"), 0)
    assert np.load(tmp_path / "X.npy").shape == (10, 6, 4)


@pytest.mark.parametrize(
    "name, message",
    [
        ("raises", "raised RuntimeError: tokenizer exploded (on texts 1..4 of 10)"),
        ("wrong_rank", "returned shape (4, 4); expected a rank-3 array (n texts, T, D)"),
        ("wrong_batch", "returned shape (5, 6, 4) for 4 texts"),
        ("wrong_dtype", "returned dtype int64; expected floating point"),
        ("wrong_features", "D=5 features, but the model's W expects D=4"),
        ("ragged", "pad every sequence to the same length (on texts 5..8 of 10)"),
        ("returns_none", "returned NoneType, expected a NumPy array"),
        ("not_callable", "int object is not callable"),
        ("missing", "'missing' not found in the module"),
    ],
)
def test_plugin_errors_exit_2_naming_the_plugin(plugin_env, tmp_path, name, message):
    modname, folder, texts = plugin_env
    spec = f"{modname}:{name}"
    out = tmp_path / "X.npy"
    result = check(invoke("featurize", folder, "--inputs", texts, "--out", out, "--featurizer", spec,
                          "--chunk-size", 4), 2)
    assert f"featurizer '{spec}'" in result.stderr and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists() and not list(tmp_path.glob(".X.npy*"))  # nothing partial left


def test_plugin_error_during_the_scan_names_the_plugin(plugin_env):
    modname, folder, texts = plugin_env
    model = load_model(folder)
    source = text_source(folder, texts, model=model, featurizer=f"{modname}:ragged", chunk_size=4)
    with pytest.raises(FeaturizerError, match=f"featurizer '{modname}:ragged'.*on texts 5..8"):
        findings(model, source)


def test_plugin_entry_point(plugin_env, tmp_path, monkeypatch):
    modname, folder, texts = plugin_env
    dist = tmp_path / "eps" / "lstm_doctor_test_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lstm-doctor-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[lstm_doctor.featurizers]\ncounts = {modname}:ok\n")
    monkeypatch.syspath_prepend(str(tmp_path / "eps"))
    featurizer = load_featurizer("counts")
    assert "entry point counts" in featurizer.origin and "lstm-doctor-test-plugins 0.1" in featurizer.origin
    check(invoke("featurize", folder, "--inputs", texts, "--out", tmp_path / "X.npy", "--featurizer", "counts"), 0)
    result = check(invoke("featurize", folder, "--inputs", texts, "--out", tmp_path / "X.npy",
                          "--featurizer", "nosuch"), 2)
    assert "featurizer 'nosuch'" in result.stderr and "counts" in result.stderr


def test_plugin_import_failure_names_the_plugin(plugin_env, tmp_path):
    _, folder, texts = plugin_env
    result = check(invoke("featurize", folder, "--inputs", texts, "--out", tmp_path / "X.npy",
                          "--featurizer", "no_such_module_xyz:f"), 2)
    assert "featurizer 'no_such_module_xyz:f': cannot import module" in result.stderr


# ---------------------------------------------------------------------------
# Text files


def test_empty_file_is_a_clear_error(tmp_path, encoding):
    for name, data in (("empty.txt", b""), ("blank.txt", b"\n  \n\t\n"), ("empty.json", b"[]")):
        path = tmp_path / name
        path.write_bytes(data)
        result = check(invoke("featurize", encoding, "--inputs", path, "--out", tmp_path / "x.npy"), 2)
        assert f"{path}:" in result.stderr and ("empty" in result.stderr), result.stderr
    assert not (tmp_path / "x.npy").exists()


def test_blank_lines_are_counted_not_dropped_silently(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"first\n\n   \nsecond\r\n\nthird")
    records = read_texts(path)
    assert records.texts == ["first", "second", "third"] and records.origins == [1, 4, 6]
    assert records.counts == {"records": 6, "kept": 3, "empty": 3, "undecodable": 0, "not_json": 0,
                              "no_field": 0, "not_text": 0}
    assert records.notes == ["3 of 6 lines skipped as empty (lines 2, 3, 5)"]


def test_non_utf8_lines_are_counted_and_the_run_goes_on(tmp_path, encoding):
    path = tmp_path / "t.txt"
    path.write_bytes(b"good tweet\n\xff\xfe\xfabad bytes\nlatin-1 caf\xe9\nnul \x00 byte\nfine :)\n")
    records = read_texts(path)
    assert records.texts == ["good tweet", "fine :)"]
    assert records.skipped == {"undecodable": [2, 3, 4]}
    result = check(invoke("featurize", encoding, "--inputs", path, "--out", tmp_path / "x.npy"), 0)
    assert "3 of 5 lines skipped as not valid UTF-8 text (lines 2, 3, 4)" in result.stderr
    assert np.load(tmp_path / "x.npy").shape == (2, 256, 10)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xff\n\xfe\n")
    result = check(invoke("featurize", encoding, "--inputs", bad, "--out", tmp_path / "y.npy"), 2)
    assert "no usable text: 2 lines, all skipped (2 not valid UTF-8 text)" in result.stderr
    utf16 = tmp_path / "u16.txt"
    utf16.write_bytes("hello\n".encode("utf-16"))
    assert "UTF-16" in check(invoke("featurize", encoding, "--inputs", utf16, "--out", tmp_path / "y.npy"), 2).stderr


def test_very_long_line(tmp_path, encoding, conv):
    long = "word " * 40_000  # 200,000 characters on one line
    path = tmp_path / "t.txt"
    path.write_text(f"short one\n{long}\n\u2028 stays one text\n", encoding="utf-8")
    records = read_texts(path)
    assert len(records.texts) == 3 and len(records.texts[1]) == len(long)
    source = text_source(encoding, path, model=load_model(encoding))
    assert any("1 of 3 texts are longer than 150 characters" in n and "(line 2)" in n for n in source.notes)
    x = np.asarray(source.array)
    assert x.shape == (3, 256, 10)
    assert np.abs(x - reference(records.texts, conv)).max() < TOL


def test_jsonl_and_json(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        "\n".join([
            json.dumps({"text": "an object"}),
            json.dumps("a bare string"),
            "{not json",
            json.dumps({"body": "no text field"}),
            json.dumps({"text": None}),
            json.dumps({"text": "   "}),
            "",
            json.dumps({"user": {"text": "nested"}}),
        ]) + "\n",
        encoding="utf-8",
    )
    records = read_texts(jsonl)
    assert records.texts == ["an object", "a bare string"]
    assert records.skipped == {"not_json": [3], "no_field": [4, 8], "not_text": [5], "empty": [6, 7]}
    assert "1 of 8 lines skipped as without the text field 'text'" not in records.notes
    assert "2 of 8 lines skipped as without the text field 'text' (lines 4, 8)" in records.notes
    assert read_texts(jsonl, "user.text").texts == ["a bare string", "nested"]

    js = tmp_path / "t.json"
    js.write_bytes(b'["one", {"text": "two"}, 3, {"text": "bad \xff byte"}, ""]')
    records = read_texts(js)
    assert records.texts == ["one", "two"] and records.unit == "item"
    assert records.skipped == {"not_text": [3], "undecodable": [4], "empty": [5]}
    obj = tmp_path / "o.json"
    obj.write_text('{"tweets": ["a", "b"]}', encoding="utf-8")
    with pytest.raises(InputError, match="expected a JSON list.*its lists: tweets"):
        read_texts(obj)
    fields = tmp_path / "f.jsonl"
    fields.write_text('{"full_text": "a"}\n{"full_text": "b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="fields full_text: pass --text-field"):
        read_texts(fields)
    broken = tmp_path / "b.json"
    broken.write_text('["a", ', encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        read_texts(broken)


# ---------------------------------------------------------------------------
# Statistics, the lazy array, the bundled tweets


def test_frontend_stats_match_the_full_array(tmp_path, encoding):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(SAMPLE_TWEETS[:25]) + "\n", encoding="utf-8")
    source = text_source(encoding, path, model=load_model(encoding), chunk_size=7)
    first = source.read(0, 7, np.float32)  # the scan reads one chunk ...
    assert first.shape == (256, 7, 10)
    stats = frontend_stats(source)  # ... the rest is computed for the statistics
    x = np.asarray(source.array).astype(np.float64)
    n = x.shape[0]
    assert stats["sequences"] == n == 24 and stats["values"] == x.size
    assert stats["zero_fraction"] == pytest.approx((x == 0).mean())
    assert stats["scale"]["mean"] == pytest.approx(x.mean())
    assert stats["scale"]["rms"] == pytest.approx(np.sqrt((x**2).mean()))
    assert stats["scale"]["max"] == pytest.approx(x.max())
    per_channel_std = x.transpose(1, 0, 2).reshape(256, -1).std(axis=1)
    assert stats["channels"]["std"]["median"] == pytest.approx(np.median(per_channel_std), rel=1e-6, abs=1e-12)
    assert stats["channels"]["always_zero"] == int((x == 0).all(axis=(0, 2)).sum())
    lines = stats_lines(stats)
    assert lines[0].startswith("front end tweet2vec: 24 texts") and "exact zeros" in lines[1]
    json.dumps(stats)  # plain data for the report
    import jsonschema
    jsonschema.Draft202012Validator(FRONTEND_STATS_SCHEMA).validate(stats)


def test_feature_array_behaves_like_an_array(tmp_path, encoding):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(SAMPLE_TWEETS[:6]) + "\n", encoding="utf-8")
    source = text_source(encoding, path, model=load_model(encoding), chunk_size=4)
    array = source.array
    assert array.ndim == 3 and array.shape == (6, 256, 10) and array.dtype == np.float32 and len(array) == 6
    full = np.asarray(array)
    assert np.array_equal(array[2:5], full[2:5]) and np.array_equal(array[[0, 5]], full[[0, 5]])
    assert array.transpose(0, 2, 1).shape == (6, 10, 256)
    assert not full.flags.writeable
    assert source.n_sequences == 6 and source.T == 256 and source.D == 10


def test_bundled_tweets_file():
    assert TWEETS.read_text(encoding="utf-8") == "\n".join(SAMPLE_TWEETS) + "\n"
    lines = TWEETS.read_text(encoding="utf-8").split("\n")[:-1]
    assert 30 <= len(lines) <= 60 and "" in lines and max(map(len, lines)) > 300
    cleaned = [t2v.clean_tweet(t) for t in lines if t]
    assert any(" U " in c for c in cleaned) and any(" H " in c for c in cleaned) and any(" S " in c for c in cleaned)
    assert any("http" in t for t in lines) and any("#" in c for c in cleaned)


def test_example_encoding_for_the_demo(tmp_path):
    """The demo's text path: a 25-array file holding the broken example encoder, whose
    front end turns the bundled tweets into CASE-like features (small, mostly zeros)."""
    from lstm_doctor.frontend.example import text_example

    encoding, tweets = text_example(tmp_path)
    assert tweets == TWEETS and encoding.parent == tmp_path
    arrays = t2v_load.read_arrays(encoding)
    assert len(arrays) == 25 and [a.shape for a in arrays[:8:2]] == list(make_fixtures.CONV_SHAPES)
    model = load_model(encoding, options=LoadOptions(preset="tweet2vec"))
    broken = load_model(ROOT / "examples" / "tweet2vec_like" / "broken")
    for role in ("W", "U", "b", "peephole"):
        assert np.array_equal(getattr(model.layers[0].forward, role), getattr(broken.layers[0].forward, role))
    assert model.layers[0].activations == broken.layers[0].activations  # h = o·σ(c)
    assert model.input_layout == broken.input_layout == "btd"
    x = np.asarray(text_source(encoding, tweets, model=model).array)
    assert x.shape == (39, 256, 10) and 0.02 < x.max() < 0.1 and (x == 0).mean() > 0.5
    assert text_example(tmp_path) == (encoding, tweets)  # generated once


def test_frontend_stats_count_each_sequence_once_and_nonfinite_values():
    from lstm_doctor.frontend.source import FrontendStats

    stats = FrontendStats(4, 3, channel_axis=2, batch_axis=0, channel_name="LSTM input features")
    block = np.zeros((2, 5, 3))
    block[:, :, 1] = 2.0
    block[0, 0, 2] = np.nan
    stats.update(0, block)
    stats.update(0, block)  # read again (a second pass): not counted twice
    stats.update(1, np.ones((3, 5, 3)))  # rows 1 (seen) and 2, 3 (new)
    d = stats.as_dict()
    assert d["sequences"] == 4 and d["nonfinite"] == 1 and d["values"] == 4 * 5 * 3 - 1
    assert d["channels"]["always_zero"] == 0 and d["scale"]["max"] == 2.0
    assert stats.complete
