"""SIGINT and SIGTERM at start-up, mid-run, mid-write and at teardown: exit 130, one line,
no traceback, no "Aborted!", no partial output and no temporary file left.

Each case runs lstm-doctor in a child process. A child started by a non-interactive
shell inherits SIGINT as ignored, so each child resets it to the default first, as a
user's terminal gives it. Start-up and teardown are hit deterministically: an import
hook sends the signal while a given module is imported, an atexit callback sends it
during the interpreter's teardown.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from factory import direction, normal_inputs

from lstm_doctor.load import native
from lstm_doctor.model import Activations, Layer, LSTMModel

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = [signal.SIGINT, signal.SIGTERM]


# The environment's own interpreter (sys.executable can name the base Python of a venv).
PYTHON = str(Path(sys.prefix) / "bin" / "python") if (Path(sys.prefix) / "bin" / "python").exists() else sys.executable


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_interrupted(proc_or_result, stderr: str):
    code = proc_or_result.returncode
    assert code == 130, (code, stderr)
    assert "Traceback" not in stderr and "Aborted" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.strip() == "lstm-doctor: interrupted", stderr


@pytest.fixture()
def model(tmp_path):
    folder = tmp_path / "model"
    m = LSTMModel((Layer(direction(4, 8, seed=1, forget_bias=1.0), None, Activations()),), name="m")
    native.save(m, folder)
    np.save(folder / "x.npy", normal_inputs(n=8, T=6, D=4))
    return folder


# A console script like the installed ``lstm-doctor`` (its file name makes it the CLI
# process), with an import hook that signals itself when MODULE is first imported.
SCRIPT = """\
import os, signal, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), {sig})
        return None
sys.meta_path.insert(0, Hook())
from lstm_doctor.cli.main import main
sys.exit(main())
"""


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
@pytest.mark.parametrize("module", ["click", "numpy"], ids=["cli-import", "job-import"])
def test_a_signal_at_start_up(model, tmp_path, sig, module):
    """While the CLI itself imports (click) or the job's modules import (numpy)."""
    script = tmp_path / "bin" / "lstm-doctor"
    script.parent.mkdir()
    script.write_text(SCRIPT.format(module=module, sig=int(sig)))
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run(
        [PYTHON, str(script), "diagnose", str(model), "--inputs", str(model / "x.npy"), "--output",
         str(out / "r.json")],
        capture_output=True, text=True, env=_env(), preexec_fn=_default_sigint, timeout=120,
    )
    _assert_interrupted(r, r.stderr)
    assert list(out.iterdir()) == []


TEARDOWN = """\
import atexit, os, signal, sys, time
atexit.register(lambda: (os.kill(os.getpid(), {sig}), time.sleep(2)))
sys.argv = ["lstm-doctor", "rules"]
from lstm_doctor.cli.main import main
main()
"""


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_at_teardown(sig):
    r = subprocess.run([PYTHON, "-c", TEARDOWN.format(sig=int(sig))], capture_output=True, text=True,
                       env=_env(), preexec_fn=_default_sigint, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "W101" in r.stdout  # the command's output was complete before the signal
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr


def _wait_for(predicate, proc, timeout=120.0, what="the moment to signal"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"finished (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _loaded(proc, name: str) -> bool:
    try:
        return name in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_mid_run(tmp_path, sig):
    """During the capture of a long probe run: the old report survives."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("the previous report\n")
    before = _digest(out)
    cmd = [PYTHON, "-m", "lstm_doctor", "diagnose", str(ROOT / "examples" / "tweet2vec_like" / "broken"),
           "--probe-sequences", "20000", "--probe-steps", "200", "--engine", "numpy", "--format", "json",
           "--output", str(out / "report.json"), "--exit-zero"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            preexec_fn=_default_sigint)
    _wait_for(lambda: _loaded(proc, "_multiarray_umath"), proc, what="numpy loaded")
    time.sleep(3)  # load, the probe and the first chunks (the whole run takes tens of seconds)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    _assert_interrupted(proc, stderr)
    assert _digest(out) == before and sorted(p.name for p in out.iterdir()) == ["report.json"]


# The console script again, with an audit hook that signals itself when the third PNG's
# temporary file is created: two PNGs are complete by then, the report not yet.
MID_WRITE = """\
import os, signal, sys
seen = []
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and ".png." in args[0] and args[0].endswith(".tmp"):
        seen.append(args[0])
        if len(seen) == 3:
            os.kill(os.getpid(), {sig})
sys.addaudithook(hook)
from lstm_doctor.cli.main import main
sys.exit(main())
"""


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_mid_write(model, tmp_path, sig):
    """While the PNGs of --plots are being written: no PNG, no report, no temporary."""
    plots, report = tmp_path / "plots", tmp_path / "report.md"
    plots.mkdir()
    script = tmp_path / "bin" / "lstm-doctor"
    script.parent.mkdir()
    script.write_text(MID_WRITE.format(sig=int(sig)))
    r = subprocess.run(
        [PYTHON, str(script), "diagnose", str(model), "--inputs", str(model / "x.npy"), "--engine", "numpy",
         "--format", "markdown", "--plots", str(plots), "--output", str(report), "--exit-zero"],
        capture_output=True, text=True, env=_env(), preexec_fn=_default_sigint, timeout=120,
    )
    _assert_interrupted(r, r.stderr)
    assert list(plots.iterdir()) == [] and not report.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
