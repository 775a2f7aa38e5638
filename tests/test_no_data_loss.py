"""No data loss: outputs are written to a temporary file beside the target and renamed
when complete; an output never overwrites an input; Ctrl-C exits 130 and leaves no
partial file (in-process with a monkeypatched KeyboardInterrupt, and with a real SIGINT).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from factory import direction, normal_inputs

from lstm_doctor import output as output_module
from lstm_doctor.cli.main import cli
from lstm_doctor.load import native
from lstm_doctor.model import Activations, Layer, LSTMModel

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tweet2vec_like"
OLD = "the previous report, which must survive\n"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def model(tmp_path):
    folder = tmp_path / "model"
    m = LSTMModel((Layer(direction(4, 8, seed=1, forget_bias=1.0), None, Activations()),), name="m")
    native.save(m, folder)
    np.save(folder / "x.npy", normal_inputs(n=8, T=6, D=4))
    (folder / "tweets.txt").write_text("hello\nworld\n")
    return folder


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# ---------------------------------------------------------------------------
# Atomic replacement


def test_atomic_path_replaces_only_when_complete(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text(OLD)
    with pytest.raises(RuntimeError):
        with output_module.atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target  # same folder, another name
            tmp.write_text("half a rep")
            raise RuntimeError("disk full")
    assert target.read_text() == OLD
    assert _listing(tmp_path) == ["report.txt"]
    output_module.write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and _listing(tmp_path) == ["report.txt"]


@pytest.mark.parametrize("fmt", ["text", "json", "html", "markdown"])
def test_a_failure_mid_write_keeps_the_old_report(model, tmp_path, monkeypatch, fmt):
    out = tmp_path / "out" / "report"
    out.parent.mkdir()
    out.write_text(OLD)
    real_write_text = Path.write_text

    def half_then_interrupt(self, data, *args, **kwargs):
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)  # a partial temporary file exists now
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_interrupt)
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", fmt, "--output", out, "--exit-zero")
    assert r.exit_code == 130 and "interrupted" in r.stderr
    assert out.read_text() == OLD
    assert _listing(out.parent) == ["report"]  # no temporary left


def test_a_failure_at_rename_keeps_the_old_report(model, tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    out.write_text(OLD)

    def no_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(output_module.os, "replace", no_replace)
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", out, "--exit-zero")
    assert r.exit_code == 2 and r.stderr.strip() == f"lstm-doctor: error: {out}: cannot write: no space left on the device"
    assert out.read_text() == OLD and _listing(tmp_path) == ["model", "report.json"]


def test_a_failure_while_rendering_keeps_the_old_report(model, tmp_path, monkeypatch):
    from lstm_doctor.jobs import diagnose

    out = tmp_path / "report.json"
    out.write_text(OLD)

    def broken_render(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diagnose, "render", broken_render)
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", out)
    assert r.exit_code == 130
    assert out.read_text() == OLD and _listing(tmp_path) == ["model", "report.json"]


def test_a_complete_run_replaces_the_old_report(model, tmp_path):
    out = tmp_path / "report.json"
    out.write_text(OLD)
    out.chmod(0o640)
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", out, "--exit-zero")
    assert r.exit_code == 0, r.stderr
    assert json.loads(out.read_text())["schema_version"]
    assert _listing(tmp_path) == ["model", "report.json"]
    assert out.stat().st_mode & 0o777 == 0o640  # the replaced file keeps its permissions
    new = tmp_path / "new.json"
    invoke("diagnose", model, "--inputs", model / "x.npy", "--format", "json", "--output", new, "--exit-zero")
    umask = os.umask(0)
    os.umask(umask)
    assert new.stat().st_mode & 0o777 == 0o666 & ~umask  # a new file: as open() would create it


def test_trace_interrupted_while_saving_leaves_the_old_trace(model, tmp_path, monkeypatch):
    out = tmp_path / "t.npz"
    out.write_bytes(b"old trace")
    real_savez = np.savez

    def half_then_interrupt(fh, **arrays):
        real_savez(fh, **dict(list(arrays.items())[:1]))
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", half_then_interrupt)
    r = invoke("trace", model, "--inputs", model / "x.npy", "--out", out)
    assert r.exit_code == 130
    assert out.read_bytes() == b"old trace" and _listing(tmp_path) == ["model", "t.npz"]


# ---------------------------------------------------------------------------
# An output never overwrites an input


def _refused(result, needle="refusing"):
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_no_command_writes_over_an_input(model, tmp_path):
    before = _snapshot(model)
    x, spec = model / "x.npy", model / "lstm.toml"
    # diagnose: the inputs, the spec, the weights, a symlink to the inputs
    for target in (x, spec, model / "weights.npz"):
        _refused(invoke("diagnose", model, "--inputs", x, "--output", target))
    (tmp_path / "alias.npy").symlink_to(x)
    _refused(invoke("diagnose", model, "--inputs", x, "--output", tmp_path / "alias.npy"))
    # lengths are inputs too
    np.save(tmp_path / "L.npy", np.full(8, 6))
    L_before = (tmp_path / "L.npy").read_bytes()
    _refused(invoke("diagnose", model, "--inputs", x, "--lengths", tmp_path / "L.npy", "--output", tmp_path / "L.npy"))
    assert (tmp_path / "L.npy").read_bytes() == L_before
    # trace: --out over the inputs (with or without the .npz suffix) or the model's weights
    np.savez(tmp_path / "xin.npz", x=normal_inputs(n=8, T=6, D=4))
    xin_before = (tmp_path / "xin.npz").read_bytes()
    _refused(invoke("trace", model, "--inputs", tmp_path / "xin.npz", "--out", tmp_path / "xin.npz"))
    _refused(invoke("trace", model, "--inputs", tmp_path / "xin.npz", "--out", tmp_path / "xin"))
    _refused(invoke("trace", model, "--inputs", x, "--out", model / "weights.npz"))
    assert (tmp_path / "xin.npz").read_bytes() == xin_before
    # what-if: --output and --write-fixed
    _refused(invoke("what-if", model, "--inputs", x, "--output", x))
    _refused(invoke("what-if", model, "--inputs", x, "--write-fixed", model))
    # featurize: --out over its text inputs (the suffix check comes first for a .txt)
    _refused(invoke("featurize", model, "--inputs", model / "tweets.txt", "--out", x), needle="")
    assert _snapshot(model) == before


def test_featurize_refuses_its_own_input(tmp_path):
    """featurize --out FILE.npy where FILE.npy is the model file."""
    t2v = tmp_path / "encoder.npy"
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    import make_fixtures

    t2v = make_fixtures.write_tweet2vec(tmp_path, D=10, H=8, with_global=False)
    (tmp_path / "tweets.txt").write_text("hello\n")
    before = t2v.read_bytes()
    _refused(invoke("featurize", t2v, "--inputs", tmp_path / "tweets.txt", "--out", t2v))
    assert t2v.read_bytes() == before


def test_check_reports_never_overwrite_an_input(model, tmp_path):
    config = tmp_path / "lstm-doctor.toml"
    config.write_text(f'[[models]]\nmodel = "{model}"\ninputs = "{model / "x.npy"}"\n')
    before = _snapshot(model)
    _refused(invoke("check", "--config", config, "--report", f"json={model / 'x.npy'}"))
    _refused(invoke("check", "--config", config, "--write-baseline", model / "lstm.toml"))
    assert _snapshot(model) == before


# ---------------------------------------------------------------------------
# Ctrl-C: exit 130, no partial files


def test_ctrl_c_during_the_capture(model, tmp_path, monkeypatch):
    from lstm_doctor.capture import engines as scan
    from lstm_doctor.capture import pipeline
    from lstm_doctor.jobs import trace

    calls = {"n": 0, "at": 2}
    real = scan.run_chunk

    def interrupt_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    # patched where each stage looks it up: the capture (diagnose) and trace
    monkeypatch.setattr(pipeline, "run_chunk", interrupt_on_second_chunk)
    monkeypatch.setattr(trace, "run_chunk", interrupt_on_second_chunk)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # numpy: the engine whose chunks go through run_chunk (the fused one streams through its kernel)
    r = invoke("diagnose", model, "--inputs", model / "x.npy", "--chunk-size", "2", "--format", "json",
               "--engine", "numpy", "--output", out_dir / "r.json")
    assert r.exit_code == 130 and r.stderr.strip() == "lstm-doctor: interrupted"
    assert calls["n"] == 2 and _listing(out_dir) == []
    calls.update(n=0, at=1)  # trace has no --chunk-size: its one chunk is interrupted
    r = invoke("trace", model, "--inputs", model / "x.npy", "--out", out_dir / "t.npz")
    assert r.exit_code == 130 and _listing(out_dir) == []


def test_ctrl_c_of_a_real_process(tmp_path):
    """SIGINT to a running ``lstm-doctor diagnose --output``: exit 130, nothing written."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "report.json").write_text(OLD)
    # 20,000 probe sequences × 200 steps: ~4M sequence-steps, tens of seconds of
    # capture even on a fast idle machine, with a bounded 320 MB probe array.
    cmd = [sys.executable, "-m", "lstm_doctor", "diagnose", str(EXAMPLE / "broken"), "--probe-sequences", "20000",
           "--probe-steps", "200", "--format", "json", "--output", str(out_dir / "report.json"), "--exit-zero"]
    # A job started in the background by a non-interactive shell (as CI may be)
    # inherits SIGINT as *ignored*, and Python then never raises KeyboardInterrupt;
    # restore the default a user's terminal gives, so the test measures lstm-doctor.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Wait until the capture runs (imports, load and drawing the probe take ~2-4 s).
    time.sleep(5)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip() == "lstm-doctor: interrupted"
    assert (out_dir / "report.json").read_text() == OLD and _listing(out_dir) == ["report.json"]
