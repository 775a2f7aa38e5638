"""Paths an attacker (or a careless command line) chooses: every file the run reads given
back as an output, symlinks, devices, FIFOs, read-only and full file systems, long names,
outputs under a file; control characters in names; a bug surfacing as a bug; one-line
usage errors.

Every case exits 2 with one line (or succeeds where it should), no user file changes
(hashes before and after), and no temporary file is left. Devices are made with mknod
in tmp_path and file systems are mounted in a private mount namespace (``unshare -m``);
the real /dev is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from factory import direction, normal_inputs

from lstm_doctor.cli.main import cli
from lstm_doctor.load import native
from lstm_doctor.model import Activations, Layer, LSTMModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


def hashes(*folders: Path) -> dict[str, str]:
    """Every file under the folders (symlinks as their target text), by sha256."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif not p.is_dir():
                out[str(p)] = f"special {stat.S_IFMT(p.lstat().st_mode):o}"
    return out


def temporaries(*folders: Path) -> list[str]:
    return [str(p) for f in folders for p in f.rglob("*") if p.name.endswith(".tmp")]


def one_line_error(result, needle: str = "", code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout[-500:], result.stderr)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lstm-doctor:"), err
    assert "Traceback" not in err and needle in err, err
    return err


@pytest.fixture()
def model(tmp_path):
    folder = tmp_path / "model"
    m = LSTMModel((Layer(direction(4, 8, seed=1, forget_bias=1.0), None, Activations()),), name="m")
    native.save(m, folder)
    np.save(folder / "x.npy", normal_inputs(n=8, T=6, D=4))
    np.save(folder / "L.npy", np.full(8, 6))
    return folder


# ---------------------------------------------------------------------------
# Every file the run reads is protected, not only the MODEL path


def test_native_spec_as_model_protects_its_weights(model):
    before = hashes(model)
    spec, weights, x = model / "lstm.toml", model / "weights.npz", model / "x.npy"
    one_line_error(invoke("diagnose", spec, "--inputs", x, "--output", weights), "refusing to overwrite")
    one_line_error(invoke("trace", spec, "--inputs", x, "--out", weights), "refusing to overwrite")
    one_line_error(invoke("what-if", spec, "--inputs", x, "--output", weights), "refusing to overwrite")
    one_line_error(invoke("compare", spec, model, "--inputs", x, "--output", weights), "refusing to overwrite")
    assert hashes(model) == before and temporaries(model) == []


def test_a_hard_link_to_an_input_is_the_input(model, tmp_path):
    os.link(model / "L.npy", tmp_path / "alias.npy")
    before = hashes(model)
    one_line_error(invoke("diagnose", model, "--inputs", model / "x.npy", "--lengths", model / "L.npy",
                          "--output", tmp_path / "alias.npy"), "refusing to overwrite")
    os.link(model / "weights.npz", tmp_path / "w.npz")
    one_line_error(invoke("trace", model, "--inputs", model / "x.npy", "--out", tmp_path / "w.npz"),
                   "refusing to overwrite")
    assert hashes(model) == before


def test_observed_trace_is_protected(model, tmp_path):
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((8, 6, 8), np.float32))
    before = hashes(tmp_path)
    one_line_error(invoke("diagnose", model, "--inputs", model / "x.npy", "--observed", obs, "--output", obs),
                   "refusing to overwrite")
    assert hashes(tmp_path) == before


def test_tweet2vec_global_file_is_protected(tmp_path):
    import make_fixtures

    path = make_fixtures.write_tweet2vec(tmp_path / "t2v", D=10, H=8)
    glob = path.with_name(path.stem + "_global.npy")
    assert glob.is_file()
    np.save(tmp_path / "x.npy", normal_inputs(n=4, T=5, D=10))
    before = hashes(tmp_path)
    one_line_error(invoke("diagnose", path, "--inputs", tmp_path / "x.npy", "--output", glob), "refusing to overwrite")
    assert hashes(tmp_path) == before


def test_onnx_external_data_is_protected(tmp_path):
    onnx = pytest.importorskip("onnx")
    from factory import write_onnx_lstm

    write_onnx_lstm(tmp_path / "plain.onnx", D=3, H=4)
    m = onnx.load(tmp_path / "plain.onnx")
    onnx.save_model(m, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=0)
    assert (tmp_path / "m.onnx.data").stat().st_size > 0
    np.save(tmp_path / "x.npy", normal_inputs(n=4, T=5, D=3))
    before = hashes(tmp_path)
    one_line_error(invoke("diagnose", tmp_path / "m.onnx", "--inputs", tmp_path / "x.npy", "--output",
                          tmp_path / "m.onnx.data"), "refusing to overwrite")
    assert hashes(tmp_path) == before


def test_keras_weights_only_architecture_json_is_protected(tmp_path):
    keras = pytest.importorskip("keras")
    m = keras.Sequential([keras.Input((6, 3)), keras.layers.LSTM(4, return_sequences=True)])
    m.save_weights(tmp_path / "m.weights.h5")
    (tmp_path / "m.json").write_text(m.to_json())
    np.save(tmp_path / "x.npy", normal_inputs(n=4, T=6, D=3))
    before = hashes(tmp_path)
    one_line_error(invoke("diagnose", tmp_path / "m.weights.h5", "--inputs", tmp_path / "x.npy", "--output",
                          tmp_path / "m.json"), "refusing to overwrite")
    assert hashes(tmp_path) == before


def test_check_never_writes_over_its_own_config(model, tmp_path, monkeypatch):
    config = tmp_path / "lstm-doctor.toml"
    config.write_text(f'[[models]]\nmodel = "{model / "lstm.toml"}"\ninputs = "{model / "x.npy"}"\n')
    monkeypatch.chdir(tmp_path)
    before = hashes(tmp_path)
    one_line_error(invoke("check", "--config", config, "--write-baseline", config), "refusing to overwrite")
    one_line_error(invoke("check", "--write-baseline", "lstm-doctor.toml"), "refusing to overwrite")
    one_line_error(invoke("check", "--report", f"json={model / 'weights.npz'}"), "refusing to overwrite")
    assert hashes(tmp_path) == before and temporaries(tmp_path) == []
    # refreshing the baseline it is compared with is what --write-baseline is for
    assert invoke("check", "--write-baseline", "base.json").exit_code == 0
    r = invoke("check", "--baseline", "base.json", "--write-baseline", "base.json")
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------------------
# Symlinks, FIFOs, devices, "-": never replaced by a plain file


def test_a_symlinked_report_stays_a_symlink(model, tmp_path):
    real = tmp_path / "reports" / "real.json"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", link, "--exit-zero")
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text())["schema_version"]
    assert temporaries(tmp_path) == []


def test_a_fifo_output_is_written_in_place(model, tmp_path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", fifo, "--exit-zero")
    assert r.exit_code == 0, r.stderr
    reader.join(20)
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the FIFO was replaced by a file"
    assert got and json.loads(got[0])["schema_version"]


def test_dash_is_stdout(model):
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", "-", "--exit-zero")
    assert r.exit_code == 0 and json.loads(r.stdout)["schema_version"]


@pytest.mark.skipif(not IS_ROOT, reason="mknod of a character device needs root")
def test_character_devices_are_written_not_replaced(model, tmp_path):
    null = tmp_path / "null"
    full = tmp_path / "full.npz"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # as /dev/null
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # as /dev/full
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--output", null, "--exit-zero")
    assert r.exit_code == 0, r.stderr
    one_line_error(invoke("diagnose", model, "--inputs", model / "x.npy", "--output", full, "--exit-zero"),
                   "no space left")
    one_line_error(invoke("trace", model, "--inputs", model / "x.npy", "--out", full), "no space left")
    for dev in (null, full):
        assert stat.S_ISCHR(dev.lstat().st_mode), f"{dev.name} was replaced by a file"
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------------------
# Unwritable places: one line, before the work


def test_a_250_character_name_is_written(model, tmp_path):
    out = tmp_path / ("r" * 245 + ".json")
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", out, "--exit-zero")
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["schema_version"] and temporaries(tmp_path) == []
    t = invoke("trace", model, "--inputs", model / "x.npy", "--out", tmp_path / ("t" * 246 + ".npz"))
    assert t.exit_code == 0, t.stderr


def test_outputs_under_a_file(model, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("a file\n")
    before = hashes(tmp_path)
    x = model / "x.npy"
    one_line_error(invoke("diagnose", model, "--inputs", x, "--output", plain / "r.json"), "plain.txt")
    one_line_error(invoke("diagnose", model, "--inputs", x, "--format", "markdown", "--plots", plain / "plots"),
                   "plain.txt")
    one_line_error(invoke("trace", model, "--inputs", x, "--out", plain / "t.npz"), "plain.txt")
    one_line_error(invoke("what-if", model, "--inputs", x, "--write-fixed", plain / "a" / "fixed"), "")
    assert hashes(tmp_path) == before and temporaries(tmp_path) == []


def test_write_fixed_through_a_symlink_to_an_empty_folder(model, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    link = tmp_path / "fixed"
    link.symlink_to(target)
    r = invoke("what-if", model, "--inputs", model / "x.npy", "--write-fixed", link, "--sample-size", "8",
               "--fixes", "center-weights")
    assert r.exit_code in (0, 1), r.stderr
    assert link.is_symlink() and (target / "lstm.toml").is_file()
    assert temporaries(tmp_path) == [] and not list(tmp_path.glob(".empty.*"))


def test_write_fixed_checked_before_the_experiment(model, tmp_path, monkeypatch):
    from lstm_doctor.experiments import whatif

    def no_experiment(*args, **kwargs):
        raise AssertionError("the experiment ran before the output was checked")

    monkeypatch.setattr(whatif, "run_experiment", no_experiment)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine\n")
    one_line_error(invoke("what-if", model, "--inputs", model / "x.npy", "--write-fixed", tmp_path / "full"),
                   "not empty")


def test_plots_and_report_are_one_unit(model, tmp_path, monkeypatch):
    """The report cannot be written: no PNG is left in --plots either."""
    plots = tmp_path / "plots"
    out = tmp_path / "report.md"
    real = Path.write_text

    def fail_report(self, data, *args, **kwargs):
        if self.name.startswith(".report.md"):
            raise KeyboardInterrupt
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fail_report)
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "markdown", "--plots", plots,
               "--output", out, "--exit-zero")
    assert r.exit_code == 130, r.stderr
    assert not out.exists() and (not plots.exists() or list(plots.iterdir()) == [])
    monkeypatch.undo()
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "markdown", "--plots", plots,
               "--output", out, "--exit-zero")
    assert r.exit_code == 0 and out.is_file() and list(plots.glob("*.png")) and temporaries(tmp_path) == []


def _namespace_available() -> bool:
    if not IS_ROOT or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def _in_namespace(script: str, *args: str) -> subprocess.CompletedProcess:
    """``sh -c script`` in a private mount namespace, with lstm-doctor as "$LSTM_DOCTOR"."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LSTM_DOCTOR=f"{sys.executable} -m lstm_doctor")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(not _namespace_available(), reason="needs root and unshare -m for a private mount")
def test_read_only_folder_and_full_disk(model, tmp_path):
    ro, full = tmp_path / "ro", tmp_path / "full"
    ro.mkdir()
    full.mkdir()
    (ro / "report.json").write_text("old\n")
    before = hashes(model, ro)
    x = str(model / "x.npy")
    run = "$LSTM_DOCTOR diagnose \"$1\" --inputs \"$2\" --format json --exit-zero --engine numpy"
    r = _in_namespace(f'mount --bind "$3" "$3" && mount -o remount,bind,ro "$3" && {run} --output "$3/report.json"',
                      str(model), x, str(ro))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "read-only" in r.stderr, r.stderr
    # a 4 kB tmpfs holding one old file: the report cannot fit
    r = _in_namespace(f'mount -t tmpfs -o size=4k tmpfs "$3" && printf old > "$3/report.json" && '
                      f'{run} --output "$3/report.json"; code=$?; cat "$3/report.json"; ls -a "$3"; exit $code',
                      str(model), x, str(full))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no space left" in r.stderr, r.stderr
    assert r.stdout.split() == ["old.", "..", "report.json"], r.stdout  # the old report, no temporary
    r = _in_namespace('mount -t tmpfs -o size=4k tmpfs "$3" && printf old > "$3/t.npz" && '
                      '$LSTM_DOCTOR trace "$1" --inputs "$2" --engine numpy --out "$3/t.npz"; code=$?; ls -a "$3"; exit $code',
                      str(model), x, str(full))
    assert r.returncode == 2 and "no space left" in r.stderr and r.stdout.split() == [".", "..", "t.npz"], r
    assert hashes(model, ro) == before


# ---------------------------------------------------------------------------
# Control characters from a model's names


def _native_model_named(folder, toml_name: str):
    """A small native model in ``folder`` whose lstm.toml gives it ``toml_name`` (TOML escapes)."""
    m = LSTMModel((Layer(direction(4, 8, seed=1, init="glorot"), None, Activations()),), name="m")
    native.save(m, folder)
    spec = folder / "lstm.toml"
    text = spec.read_text()
    assert 'name = "m"' in text
    spec.write_text(text.replace('name = "m"', f'name = "{toml_name}"'))
    return folder


@pytest.fixture()
def escaped_model(tmp_path):
    folder = _native_model_named(tmp_path / "esc", "enc\\u001b[31mRED\\u0007\\u009b2J")
    np.save(folder / "x.npy", normal_inputs(n=8, T=6, D=4))
    return folder


def test_control_characters_are_escaped_in_the_text_report(escaped_model):
    r = invoke("diagnose", escaped_model, "--inputs", escaped_model / "x.npy", "--color", "never", "--exit-zero")
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\x9b" not in r.stdout
    assert "enc\\x1b[31mRED\\x07" in r.stdout


def test_control_characters_keep_junit_well_formed(escaped_model):
    r = invoke("diagnose", escaped_model, "--inputs", escaped_model / "x.npy", "--format", "junit", "--exit-zero")
    assert r.exit_code == 0, r.stderr
    root = ET.fromstring(r.stdout.encode("utf-8"))  # expat refuses control characters
    assert any("enc\\x1b[31mRED" in (s.get("name") or "") for s in root.iter("testsuite"))


RAW = ("\x1b", "\x07", "\x9b")
HOSTILE = "\x1b[31m\x07\x9b|\n"  # ESC, BEL, C1 CSI, a table's pipe, a line break
SHOWN = "\\x1b[31m\\x07\\x9b|\\x0a"  # as every line-oriented format shows them


@pytest.fixture()
def hostile_model(tmp_path):
    """A native model whose name and folder both hold ESC, BEL, C1, a pipe and a newline."""
    folder = _native_model_named(tmp_path / f"dir{HOSTILE}x", "enc\\u001b[31m\\u0007\\u009b|\\nline")
    np.save(tmp_path / "x.npy", normal_inputs(n=8, T=6, D=4))
    return folder


def _hostile_run(model, fmt):
    r = invoke("diagnose", model, "--inputs", model.parent / "x.npy", "--format", fmt, "--exit-zero")
    assert r.exit_code == 0, r.stderr
    for c in RAW:
        assert c not in r.stdout, (fmt, c)
    return r.stdout


def test_control_characters_and_line_breaks_are_escaped_in_markdown(hostile_model):
    out = _hostile_run(hostile_model, "markdown")
    assert "# lstm-doctor report: enc" + SHOWN + "line\n" in out  # the heading stays one line
    rows = [line for line in out.splitlines() if line.startswith("| model |") or line.startswith("| files |")]
    assert len(rows) == 2, rows
    for row in rows:  # three cell borders; the name's pipe is escaped and its newline shown
        assert row.replace("\\|", "").count("|") == 3, row
    assert "enc" + SHOWN.replace("|", "\\|") + "line" in rows[0]
    assert "dir" + SHOWN.replace("|", "\\|") + "x" in rows[1]


def test_control_characters_and_line_breaks_are_escaped_in_html(hostile_model):
    import html

    out = _hostile_run(hostile_model, "html")
    assert "\n" not in html.unescape(out.split("<title>")[1].split("</title>")[0])
    assert f"<title>lstm-doctor: enc{SHOWN}line</title>" in out
    assert f"<code>{html.escape(str(hostile_model).replace(HOSTILE, SHOWN))}" in out  # the files row


def test_control_characters_and_line_breaks_keep_github_annotations_one_line(hostile_model):
    out = _hostile_run(hostile_model, "github")
    lines = out.splitlines()
    assert lines and all(line.startswith(("::error ", "::warning ", "::notice ")) for line in lines), out
    shown_path = str(hostile_model).replace(HOSTILE, SHOWN).replace(":", "%3A").replace(",", "%2C")
    assert all(f"file={shown_path}" in line for line in lines), lines[0]
    assert all(f"::enc{SHOWN}line, " in line for line in lines), lines[0]


def test_control_characters_and_line_breaks_are_escaped_in_concise(hostile_model):
    out = _hostile_run(hostile_model, "concise")
    lines = out.splitlines()
    shown = str(hostile_model).replace(HOSTILE, SHOWN)
    assert all(line.startswith(shown) for line in lines[:-1]) and len(lines) > 1, lines


def test_control_characters_are_escaped_by_inspect_what_if_and_error_lines(hostile_model):
    x = hostile_model.parent / "x.npy"
    for args in (("inspect", hostile_model), ("what-if", hostile_model, "--inputs", x, "--exit-zero")):
        r = invoke(*args)
        assert r.exit_code == 0, r.stderr
        for c in RAW:
            assert c not in r.stdout, (args[0], c)
        assert "enc\\x1b[31m\\x07\\x9b" in r.stdout, args[0]
    r = invoke("inspect", hostile_model / "missing.pt")
    line = r.stderr.strip()
    assert r.exit_code == 2 and "\n" not in line and "no such file" in line, r.stderr
    for c in RAW:
        assert c not in line, c
    assert "dir\\x1b[31m\\x07\\x9b|" in line, line


# ---------------------------------------------------------------------------
# A bug is a bug; usage errors are one line


def test_an_importer_bug_is_reported_as_a_bug(model, monkeypatch):
    from lstm_doctor.load import native as native_loader

    def buggy(path, options):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(native_loader, "load", buggy)
    r = invoke("inspect", model)
    err = one_line_error(r, "TypeError: unsupported operand", code=3)
    assert "bug" in err and "--debug" in err
    r = invoke("--debug", "inspect", model)
    assert r.exit_code == 3 and "Traceback" in r.stderr and "buggy" in r.stderr
    r = invoke("inspect", model, env={"LSTM_DOCTOR_DEBUG": "1"})
    assert r.exit_code == 3 and "Traceback" in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["diagnose", "--bogus"], "No such option"),
    (["diagnose"], "Missing argument"),
    (["trace", "m", "--inputs", "x.npy"], "--out"),
    (["diagnose", "m", "--layout", "xyz"], "--layout"),
    (["nonsense"], "No such command"),
])
def test_usage_errors_are_one_line(args, needle):
    r = invoke(*args)
    err = one_line_error(r, needle)
    assert "--help" in err
