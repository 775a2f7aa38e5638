"""Golden files: the text, concise, markdown and HTML reports of the demo's two models and a healthy one.

Each rendering is compared, after normalising what varies between machines and
runs (the repository path, the temporary folder, file hashes, the tool version,
the embedded PNGs), with ``tests/golden/NAME.FORMAT``. After an intended change
(a renderer, a rule's message or severity), regenerate them all with

    python -m pytest tests/test_golden_reports.py --update-goldens

(or LSTM_DOCTOR_UPDATE_GOLDENS=1) and review ``git diff tests/golden``. The
reports are built with the NumPy engine and a fixed ``created``, as the demo
builds them (the broken encoder with its what-if experiment on 32 sequences).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from factory import direction, normal_inputs
from lstm_doctor import __version__
from lstm_doctor.jobs.demo import demo_options, demo_text
from lstm_doctor.jobs.diagnose import DiagnoseOptions, run_diagnosis
from lstm_doctor.load import native
from lstm_doctor.model import Activations, Layer, LSTMModel
from lstm_doctor.report import REPORTERS, RenderOptions

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
CREATED = "2000-01-01T00:00:00+00:00"
FORMATS = {"text": "txt", "concise": "concise.txt", "markdown": "md", "html": "html"}


@pytest.fixture(scope="module")
def healthy_folder(tmp_path_factory) -> Path:
    """Small zero-mean weights (uniform ±1/√H), tanh, forget bias 1, standardized inputs (as in test_cli)."""
    folder = tmp_path_factory.mktemp("healthy")
    m = LSTMModel((Layer(direction(8, 32, init="torch", forget_bias=1.0, seed=3), None, Activations()),), name="healthy")
    native.save(m, folder)
    np.save(folder / "x.npy", normal_inputs(n=64, T=40, D=8, seed=5))
    return folder


@pytest.fixture(scope="module")
def golden_reports(healthy_folder) -> dict[str, dict]:
    base = DiagnoseOptions(model="", engine="numpy", created=CREATED, progress=False)
    broken, fixed = demo_options(base)
    healthy = replace(base, model=str(healthy_folder), inputs=str(healthy_folder / "x.npy"))
    return {name: run_diagnosis(o) for name, o in (("broken", broken), ("fixed", fixed), ("healthy", healthy))}


def portable(report: dict, tmp: Path) -> dict:
    """The report with the paths, file hashes and version that differ between machines replaced,
    before rendering (a path's length changes how the terminal report wraps)."""
    import json

    text = json.dumps(report).replace(str(tmp), "<TMP>").replace(str(ROOT), "<ROOT>")
    out = json.loads(text)
    out["tool"]["version"] = "<VERSION>"
    for f in out["model"]["files"] + ([out["inputs"]["file"]] if (out.get("inputs") or {}).get("file") else []):
        f["sha256"] = "<sha256>"
    return out


def normalise(text: str, tmp: Path) -> str:
    text = text.replace(str(tmp), "<TMP>").replace(str(ROOT), "<ROOT>")
    text = re.sub(r"sha256 (<code>)?[0-9a-f]{16,64}(…)?", r"sha256 \1<sha256>", text)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,<PNG>", text)
    return text.replace(__version__, "<VERSION>")


def update_requested(request) -> bool:
    return bool(request.config.getoption("--update-goldens") or os.environ.get("LSTM_DOCTOR_UPDATE_GOLDENS"))


# A decimal number with a fraction or an exponent: the evidence values, which carry 6 significant digits.
FLOAT = re.compile(r"(-?(?:\d+\.\d*|\.\d+)(?:e[-+]?\d+)?|-?\d+e[-+]?\d+)")


def same_but_for_rounding(expected: str, actual: str, rel: float = 1e-4) -> bool:
    """Equal text, with the decimal numbers equal to ``rel``: the last of 6 significant
    digits depends on the BLAS kernel OpenBLAS picks for the CPU (float32 sums in
    another order), so two machines write 2.54962e-05 and 2.54958e-05 for one value."""
    if expected == actual:
        return True
    e, a = FLOAT.split(expected), FLOAT.split(actual)
    if len(e) != len(a) or e[::2] != a[::2]:
        return False
    return all(math.isclose(float(x), float(y), rel_tol=rel, abs_tol=1e-12) for x, y in zip(e[1::2], a[1::2]))


def compare(request, name: str, actual: str) -> None:
    path = GOLDEN / name
    if update_requested(request):
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.is_file(), f"{path} is missing: run pytest {__file__} --update-goldens"
    expected = path.read_text(encoding="utf-8")
    if not same_but_for_rounding(expected, actual):
        diff = "".join(difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), f"golden/{name}", "rendered", n=1
        ))
        pytest.fail(f"{name} differs from its golden file (regenerate with --update-goldens if intended):\n"
                    + diff[:6000])


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", ["broken", "fixed", "healthy"])
def test_report_matches_its_golden_file(request, golden_reports, healthy_folder, name, fmt):
    rendered = REPORTERS[fmt](portable(golden_reports[name], healthy_folder), RenderOptions(width=110))
    compare(request, f"{name}.{FORMATS[fmt]}", normalise(rendered, healthy_folder))


def test_demo_text_matches_its_golden_file_and_fits_one_screen(request, golden_reports, healthy_folder):
    broken, fixed = (portable(golden_reports[k], healthy_folder) for k in ("broken", "fixed"))
    text = demo_text(broken, fixed, None, width=110)
    assert len(text.splitlines()) <= 64  # + G701 and H602 among the root causes since gradient flow runs by default
    compare(request, "demo.txt", normalise(text, healthy_folder))


def test_normalise_removes_only_what_varies(tmp_path):
    text = f"{ROOT}/x sha256 {'a' * 64} {tmp_path}/y lstm-doctor {__version__} data:image/png;base64,iVBOR= 0.985"
    assert normalise(text, tmp_path) == (
        "<ROOT>/x sha256 <sha256> <TMP>/y lstm-doctor <VERSION> data:image/png;base64,<PNG> 0.985"
    )


def test_rounding_tolerance_is_narrow():
    """Noise in the sixth digit passes; a changed digit, word or count does not."""
    assert same_but_for_rounding('"perturbation_change": 2.54962e-05, rank 1.0003', '"perturbation_change": 2.54958e-05, rank 1.00029')
    assert not same_but_for_rounding("ratio 0.2540", "ratio 0.2550")
    assert not same_but_for_rounding("12 sequences", "13 sequences")
    assert not same_but_for_rounding("W101 error", "W101 warning")
