"""Reports: the JSON schema, determinism, HTML (rendered in headless Chromium), Markdown, JUnit, GitHub, compare.

One diagnosis per example is shared by the whole module (``reports``), and one
of the broken example with ``--gradients`` (``gradients_report``); the
renderers are pure functions of those dicts.
"""

from __future__ import annotations

import base64
import copy
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

from lstm_doctor.analyzers import RULES
from lstm_doctor.cli.main import cli
from lstm_doctor.experiments.observed import declared_config, simulate
from lstm_doctor.jobs.diagnose import DiagnoseOptions, run_diagnosis
from lstm_doctor.load import load_model
from lstm_doctor.report import REPORTERS, RenderOptions, load_schema
from lstm_doctor.report.build import HEATMAP_STEPS, HEATMAP_UNITS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tweet2vec_like"
CREATED = "2000-01-01T00:00:00+00:00"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip
# The CASE.md defects that fixing the example resolves (README, demo).
CASE_CODES = {"A201", "C401", "H601", "I501", "I504", "S301", "W101", "W102"}
SENSITIVITY_TITLE = "Sensitivity strip: what the final encoding depends on, per step"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def check(result, code):
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def validator(ref: str | None = None):
    """The report schema, or one of its $defs (check, baseline, compare), which refer back to it."""
    from referencing import Registry, Resource

    schema = load_schema()
    if ref is None:
        return jsonschema.Draft202012Validator(schema)
    registry = Registry().with_resource(schema["$id"], Resource.from_contents(schema))
    return jsonschema.Draft202012Validator({"$ref": f"{schema['$id']}#/$defs/{ref}"}, registry=registry)


def errors(data, ref: str | None = None) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator(ref).iter_errors(data)]


@pytest.fixture(scope="module")
def broken_inputs(tmp_path_factory) -> Path:
    """The broken example's first 16 of its 96 sequences (all 256 steps), to keep the module fast."""
    subset = tmp_path_factory.mktemp("inputs") / "conv_output_16.npy"
    np.save(subset, np.load(EXAMPLE / "conv_output.npy")[:16])
    return subset


@pytest.fixture(scope="module")
def reports(broken_inputs) -> dict[str, dict]:
    """The broken and fixed examples, a probe run (no inputs) and a constant probe (NaN statistics)."""
    fixed = EXAMPLE / "fixed"
    runs = {
        "broken": DiagnoseOptions(model=str(EXAMPLE / "broken"), inputs=str(broken_inputs)),
        "fixed": DiagnoseOptions(model=str(fixed), inputs=str(EXAMPLE / "conv_output_standardized.npy")),
        "probe": DiagnoseOptions(model=str(fixed), probe_steps=12, probe_sequences=16),
        "zeros": DiagnoseOptions(model=str(fixed), probe="zeros", probe_steps=6, probe_sequences=8),
    }
    # gradients=False: these are the reports without the gradient section (gradients_report has it)
    return {name: run_diagnosis(replace(o, created=CREATED, gradients=False)) for name, o in runs.items()}


@pytest.fixture(scope="module")
def broken_html(reports) -> str:
    return REPORTERS["html"](reports["broken"], RenderOptions())


@pytest.fixture(scope="module")
def gradients_report(broken_inputs) -> dict:
    """The broken example with ``--gradients`` (a PyTensor compile of several seconds): G701, horizon 1."""
    options = DiagnoseOptions(model=str(EXAMPLE / "broken"), inputs=str(broken_inputs), gradients=True)
    return run_diagnosis(replace(options, created=CREATED))


@pytest.fixture(scope="module")
def gradients_html(gradients_report) -> str:
    return REPORTERS["html"](gradients_report, RenderOptions())


def embedded_images(page: str) -> list[tuple[str, bytes]]:
    """(alt text, decoded PNG bytes) of every image of an HTML report, in page order."""
    found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]*)"', page)
    return [(html.unescape(alt), base64.b64decode(data, validate=True)) for alt, data in found]


# -- the JSON schema -------------------------------------------------------------------------


def test_schema_is_shipped_in_the_package_and_is_valid_2020_12():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert (ROOT / "lstm_doctor" / "report" / "schema.json").is_file()
    assert set(schema["$defs"]["severity"]["enum"]) == {"error", "warning", "info"}
    assert {"code", "severity", "message", "location", "evidence", "fix"} <= set(schema["$defs"]["finding"]["required"])


@pytest.mark.parametrize("name", ["broken", "fixed", "probe", "zeros"])
def test_reports_validate_against_the_schema(reports, name):
    report = json.loads(REPORTERS["json"](reports[name], RenderOptions()))
    assert errors(report) == []
    assert report["schema_version"] == "1.1"


def test_schema_rejects_what_build_does_not_produce(reports):
    good = reports["fixed"]
    bad_severity = copy.deepcopy(good)
    bad_severity["findings"][0]["severity"] = "fatal"
    missing = copy.deepcopy(good)
    del missing["summary"]
    extra = {**copy.deepcopy(good), "surprise": 1}
    bad_code = copy.deepcopy(good)
    bad_code["findings"][0]["code"] = "X1"
    for broken in (bad_severity, missing, extra, bad_code):
        assert errors(broken), "the schema accepted a malformed report"


def test_statistics_hold_what_the_plots_draw_in_compact_form(reports):
    st = reports["broken"]["statistics"]["layers"][0]  # T = 256 steps, H = 64 units
    heat = st["saturation_heatmap"]
    assert len(heat["step_edges"]) - 1 == min(st["T"], HEATMAP_STEPS) == 128
    assert len(heat["unit_edges"]) - 1 == min(st["H"], HEATMAP_UNITS)
    for g, gate in st["gates"].items():
        rows = heat["gates"][g]["right"]
        assert len(rows) == len(heat["unit_edges"]) - 1 and len(rows[0]) == len(heat["step_edges"]) - 1
        # Binning keeps the overall share: the bin-size-weighted mean equals the gate's right share.
        widths = [b - a for a, b in zip(heat["step_edges"], heat["step_edges"][1:])]
        mean = sum(v * w for row in rows for v, w in zip(row, widths)) / (len(rows) * st["T"])
        assert mean == pytest.approx(gate["right"], abs=2e-3)
        assert len(gate["unit_left"]) == len(gate["unit_right"]) == st["H"]
    assert set(st["percentiles_from_sample"]["h"]) == {"p5", "p25", "p50", "p75", "p95"}
    shares = st["preactivation"]["energy_share"]["i"]
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)
    assert shares["input"] < 1e-4  # I501: the input term is negligible
    encoding = reports["broken"]["statistics"]["encoding"]
    cos = encoding["cosine_matrix"]
    assert len(cos) == len(cos[0]) == min(64, encoding["sequences"]) == 16
    assert min(min(r) for r in cos) > 0.999  # H601: every input gives the same encoding


# The two run-specific top-level fields: the run's time, and the wall times of timed stages.
CREATED_FIELD = re.compile(rb'\n  "created": "[^"]*",\n')
TIMINGS_FIELD = re.compile(rb'\n  "timings": \{[^{}]*\},\n')


@pytest.mark.parametrize("case", ["dense", "ties", "signed_zeros", "nan"])
def test_row_percentiles_are_nanpercentile_bit_for_bit(case):
    """The sorted shortcut gives NumPy's numbers, the sign of a zero included."""
    from lstm_doctor.report.build import PERCENTILES, row_percentiles

    rng = np.random.default_rng(3)
    rows = rng.standard_normal((7, 1001)).astype(np.float32)
    if case == "ties":
        rows = np.round(rows * 2) / 2  # few distinct values: every percentile on a tie
    if case == "signed_zeros":  # 0.0 and −0.0 at every percentile: a sort and a partition pick different ones
        rows = rng.standard_normal((4, 16384)).astype(np.float32)
        zero = rng.random(rows.shape) < 0.8
        rows[zero] = np.where(rng.random(zero.sum()) < 0.5, -0.0, 0.0).astype(np.float32)
    if case == "nan":
        rows[2, 5] = np.nan
    got = row_percentiles(rows, PERCENTILES)
    want = np.nanpercentile(rows, PERCENTILES, axis=1)
    assert got.dtype == want.dtype and got.shape == (len(PERCENTILES), rows.shape[0])
    assert got.tobytes() == want.tobytes()


def test_json_is_byte_identical_between_runs_apart_from_created_and_timings(tmp_path):
    # --observed (the fixed example's own trace) adds the search's wall time to `timings`.
    inputs = EXAMPLE / "conv_output_standardized.npy"
    model = load_model(str(EXAMPLE / "fixed"))
    x = np.load(inputs)[:8].transpose(2, 0, 1)  # the layout is bct: time-major (T, B, D)
    h, _ = simulate(model, x, declared_config(model))
    np.savez(tmp_path / "trace.npz", h=h, layout="tbd")
    args = ("diagnose", EXAMPLE / "fixed", "--inputs", inputs, "--observed", tmp_path / "trace.npz", "--format", "json")
    first = check(invoke(*args, "--output", tmp_path / "a.json"), 0)
    second = check(invoke(*args, "--output", tmp_path / "b.json"), 0)
    assert first.stdout == second.stdout == ""
    a, b = (tmp_path / "a.json").read_bytes(), (tmp_path / "b.json").read_bytes()
    for data in (a, b):
        assert len(CREATED_FIELD.findall(data)) == len(TIMINGS_FIELD.findall(data)) == 1
    a_det, b_det = (TIMINGS_FIELD.sub(b"\n", CREATED_FIELD.sub(b"\n", data)) for data in (a, b))
    assert a_det == b_det
    report = json.loads(a)
    assert errors(report) == []
    assert report["statistics"]["observed"]["declared"]["fits"]  # the trace is the model's own
    assert report["timings"]["observed_search_seconds"] > 0


# -- HTML --------------------------------------------------------------------------------------


def test_html_is_self_contained_and_links_every_finding_to_its_rule(reports, broken_html):
    page = broken_html
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", page), "external asset"
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    stats = reports["broken"]["statistics"]
    assert len(sources) == 5 * len(stats["layers"]) + 1  # per direction 5 plots, and the cosine matrix
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    anchors = set(re.findall(r'id="(rule-[A-Z]\d{3})"', page))
    assert anchors == {f"rule-{code}" for code in RULES}  # the whole catalogue is embedded
    for f in reports["broken"]["findings"]:
        assert f'href="#rule-{f["code"]}"' in page
    for title in (
        "Gate saturation, units × steps",
        "Left vs right saturation per unit",
        "Hidden and cell state",
        "Fraction of gate values saturated",
        "shares of the pre-activation energy",
        "Cosine similarity",
    ):
        assert title in page


def test_html_with_gradients_plots_the_sensitivity_strip(gradients_report, gradients_html, broken_html):
    images = embedded_images(gradients_html)
    assert [alt for alt, _ in images].count(SENSITIVITY_TITLE) == 1
    assert len(images) == len(embedded_images(broken_html)) + 1  # one more plot, nothing else changed
    from PIL import Image

    for alt, png in images:
        with Image.open(io.BytesIO(png)) as image:
            image.load()  # decodes the whole PNG
            assert image.format == "PNG" and min(image.size) > 100, alt
    png = dict(images)[SENSITIVITY_TITLE]
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (1000, 340)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # drawn, not blank
    # In the section of the layer and direction the gradients were computed for, captioned with the horizon.
    g = gradients_report["statistics"]["gradients"]
    section = f'<h3 id="l{g["layer"]}-{g["direction"]}">'
    figure = f'<figure id="l{g["layer"]}-{g["direction"]}-sensitivity-strip">'
    assert gradients_html.index(section) < gradients_html.index(figure) < gradients_html.index('<h3 id="encodings">')
    caption = re.search(re.escape(figure) + r".*?<figcaption>(.*?)</figcaption>", gradients_html, re.S).group(1)
    assert f"the fewest final steps (here {g['memory_horizon']}) that hold 99%" in caption


def test_html_without_gradients_has_no_sensitivity_plot(reports, broken_html):
    assert "gradients" not in reports["broken"]["statistics"]
    assert SENSITIVITY_TITLE not in broken_html and "sensitivity-strip" not in broken_html


def test_html_needs_matplotlib_only_when_rendered():
    code = (
        "import sys, json; from lstm_doctor.report import REPORTERS; import lstm_doctor.report.html, "
        "lstm_doctor.report.junit, lstm_doctor.report.github, lstm_doctor.report.markdown; "
        "assert 'matplotlib' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


PROBE_SCRIPT = """<script>
window.addEventListener("load", function () {
  var out = {
    images: Array.from(document.images).map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; }),
    missing: Array.from(document.querySelectorAll('a[href^="#"]'))
      .map(function (a) { return a.getAttribute("href").slice(1); })
      .filter(function (id) { return !document.getElementById(id); }),
    // where the diagnosis block and the verdict sit on the page (CSS pixels from the top)
    diagnosis: (function () {
      var d = document.getElementById("diagnosis"), v = document.querySelector(".verdict");
      if (!d || !v) { return null; }
      var r = d.getBoundingClientRect(), q = v.getBoundingClientRect();
      return {top: r.top, bottom: r.bottom, verdict: q.bottom, text: d.innerText, badge: v.innerText};
    })()
  };
  var pre = document.createElement("pre");
  pre.id = "lstm-doctor-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"  # a fresh profile: nothing shared with other runs
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_in_chromium(page: str, tmp_path: Path) -> dict:
    """Load an HTML report in headless Chromium and return what ``PROBE_SCRIPT`` saw: each image's
    (complete, naturalWidth, naturalHeight) and the in-page links without a target. The screenshot
    (the top of the page) is checked to be a rendered, non-blank page and left at
    ``tmp_path / "report.png"``."""
    # A copy of the page with a script that writes each image's decoded size into the DOM;
    # one Chromium run dumps that DOM and takes a screenshot.
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("</body>", PROBE_SCRIPT + "</body>"), encoding="utf-8")
    shot = tmp_path / "report.png"
    run = _chromium(
        tmp_path,
        "--window-size=1280,2400",
        "--virtual-time-budget=10000",
        f"--screenshot={shot}",
        "--dump-dom",
        probe.as_uri(),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'<pre id="lstm-doctor-probe">(.*?)</pre>', run.stdout, re.S)
    assert found, f"the page did not load: {run.stdout[:500]} {run.stderr[-1000:]}"
    result = json.loads(html.unescape(found.group(1)))
    for complete, width, height in result["images"]:
        assert complete and width > 100 and height > 100, result["images"]
    assert result["missing"] == [], "links to anchors that do not exist"
    # The screenshot: the page rendered, and is not blank.
    from PIL import Image

    assert shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
    return result


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")


FIRST_SCREEN = 900  # CSS pixels: the part of a 1280-wide page seen without scrolling on a laptop


@needs_chromium
def test_html_renders_in_headless_chromium_with_every_image_decoded(reports, broken_html, tmp_path):
    result = load_in_chromium(broken_html, tmp_path)
    assert len(result["images"]) == 5 * len(reports["broken"]["statistics"]["layers"]) + 1
    # The first screen shows the verdict and the whole diagnosis: what is wrong, the root causes in order.
    box = result["diagnosis"]
    assert box is not None and box["verdict"] < box["top"] < box["bottom"] <= FIRST_SCREEN, box
    d = reports["broken"]["diagnosis"]
    shown = " ".join(box["text"].split())
    assert " ".join(d["sentence"].split()) in shown
    positions = [shown.index(rc["code"] + " ") for rc in d["root_causes"]]
    assert positions == sorted(positions)  # in the diagnosis' order
    assert "Explained by the above:" in shown and "FAIL" in box["badge"]
    # The screenshot's first screen is drawn: the red-bordered block is in its top 900 rows.
    from PIL import Image

    with Image.open(tmp_path / "report.png") as image:
        top = image.convert("RGB").crop((0, 0, 1280, FIRST_SCREEN))
        top.save(tmp_path / "first_screen.png")
        reds = sum(n for n, (r, g, b) in top.getcolors(maxcolors=1 << 20) if r > 180 and g < 80 and b < 80)
        assert reds > 2000  # the verdict badge and the diagnosis' border (#c62828)


@needs_chromium
def test_html_with_gradients_renders_in_headless_chromium(gradients_report, gradients_html, tmp_path):
    result = load_in_chromium(gradients_html, tmp_path)
    # per direction 5 plots, the sensitivity strip of the direction with gradients, and the cosine matrix
    assert len(result["images"]) == 5 * len(gradients_report["statistics"]["layers"]) + 1 + 1


# -- Markdown, JUnit, GitHub --------------------------------------------------------------------


def test_markdown_without_plots_has_no_images(reports):
    text = REPORTERS["markdown"](reports["broken"], RenderOptions())
    assert text.startswith("# lstm-doctor report: tweet2vec_like_broken")
    assert "![" not in text and "## Plots" not in text
    for f in reports["broken"]["findings"]:
        assert f"[{f['code']}](#rule-{f['code']})" in text
        assert f'<a id="rule-{f["code"]}"></a>' in text
    # Pipes in messages (|c|) are escaped, so every table row has its five cells.
    rows = [line for line in text.splitlines() if line.startswith("| error") or line.startswith("| warning")]
    assert rows and all(len(re.split(r"(?<!\\)\|", row)) == 7 for row in rows)


def test_markdown_with_plots_writes_the_pngs_and_links_them(tmp_path):
    out = tmp_path / "site" / "report.md"
    out.parent.mkdir()
    args = ("diagnose", EXAMPLE / "fixed", "--inputs", EXAMPLE / "conv_output_standardized.npy", "--no-gradients")
    check(invoke(*args, "--format", "markdown", "--output", out, "--plots", tmp_path / "plots"), 0)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out.read_text(encoding="utf-8"))
    assert len(links) == 6
    for link in links:
        assert link.startswith("../plots/")
        assert (out.parent / link).resolve().read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --plots belongs to markdown: elsewhere it is a usage error.
    r = check(invoke(*args, "--format", "json", "--plots", tmp_path / "plots"), 2)
    assert "--plots" in r.stderr and r.stderr.count("\n") == 1


def test_markdown_with_plots_writes_the_sensitivity_strip_with_gradients(gradients_report, tmp_path):
    out = tmp_path / "report.md"
    text = REPORTERS["markdown"](gradients_report, RenderOptions(output=str(out), plots_dir=str(tmp_path / "plots")))
    g = gradients_report["statistics"]["gradients"]
    link = f"plots/tweet2vec-like-broken-l{g['layer']}-{g['direction']}-sensitivity-strip.png"
    assert f"![{SENSITIVITY_TITLE}]({link})" in text
    assert (tmp_path / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_junit_parses_and_counts(reports):
    report = reports["broken"]
    root = ET.fromstring(REPORTERS["junit"](report, RenderOptions()))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests")) == int(root.get("tests")) == len(RULES)
    failed = {c.get("name").split()[0] for c in cases if c.find("failure") is not None}
    errors_ = {f["code"] for f in report["findings"] if f["severity"] == "error"}
    assert failed == errors_ and int(suite.get("failures")) == len(errors_)
    # A warning-only code passes at fail-on error, with its findings in system-out ...
    warned = {f["code"] for f in report["findings"]} - errors_
    for case in cases:
        if case.get("name").split()[0] in warned:
            assert case.find("failure") is None and case.find("system-out") is not None
    # ... and fails at fail-on warning.
    stricter = copy.deepcopy(report)
    stricter["config"]["fail_on"] = "warning"
    root = ET.fromstring(REPORTERS["junit"](stricter, RenderOptions()))
    assert int(root.get("failures")) == len(
        errors_ | {f["code"] for f in report["findings"] if f["severity"] == "warning"}
    )
    # Scope: --select W gives one test case per W rule.
    scoped = copy.deepcopy(report)
    scoped["config"]["select"] = ["W"]
    scoped["findings"] = [f for f in report["findings"] if f["code"].startswith("W")]
    suite = ET.fromstring(REPORTERS["junit"](scoped, RenderOptions())).find("testsuite")
    assert int(suite.get("tests")) == sum(code.startswith("W") for code in RULES)


def test_junit_marks_rules_not_evaluated_as_skipped(reports):
    report = copy.deepcopy(reports["fixed"])
    report["not_evaluated"] = {"H601": "every input is identical"}
    suite = ET.fromstring(REPORTERS["junit"](report, RenderOptions())).find("testsuite")
    assert suite.get("skipped") == "1"
    case = next(c for c in suite.findall("testcase") if c.get("name").startswith("H601"))
    assert case.find("skipped").get("message") == "every input is identical"


ANNOTATION = re.compile(r"^::(error|warning|notice) file=([^,:]+),title=([A-Z]\d{3}[^:,]*)::(.+)$")


def test_github_annotations_one_per_finding(reports):
    report = reports["broken"]
    lines = REPORTERS["github"](report, RenderOptions()).splitlines()
    assert len(lines) == len(report["findings"])
    level = {"error": "error", "warning": "warning", "info": "notice"}
    for line, f in zip(lines, report["findings"]):
        m = ANNOTATION.match(line)
        assert m, line
        assert m.group(1) == level[f["severity"]]
        assert m.group(2) == report["model"]["files"][0]["path"]
        assert m.group(3).startswith(f["code"])
        assert "%0Afix: " in m.group(4)  # newlines escaped, the fix on its own line
    assert REPORTERS["github"](reports["fixed"], RenderOptions()).startswith("::notice ")


def test_github_escaping():
    from lstm_doctor.report.github import escape_data, escape_property

    assert escape_data("50% of\nvalues\r") == "50%25 of%0Avalues%0D"
    assert escape_property("a:b,c") == "a%3Ab%2Cc"


# -- compare ----------------------------------------------------------------------------------


def test_compare_broken_vs_fixed_lists_the_resolved_codes(reports, tmp_path):
    a, b = tmp_path / "broken.json", tmp_path / "fixed.json"
    a.write_text(REPORTERS["json"](reports["broken"], RenderOptions()), encoding="utf-8")
    b.write_text(REPORTERS["json"](reports["fixed"], RenderOptions()), encoding="utf-8")
    doc = json.loads(check(invoke("compare", a, b, "--format", "json"), 0).stdout)
    assert errors(doc, "compare") == []
    assert CASE_CODES <= set(doc["resolved_codes"])
    assert doc["new_codes"] == [] and doc["appeared"] == []
    # I503 is in both (warning → info): matched by code and location, not by message text.
    assert {(c["code"], c["from"], c["to"]) for c in doc["changed"]} == {("I503", "warning", "info")}
    assert "I503" not in doc["resolved_codes"]
    moved = {m["metric"]: m for m in doc["headline"]}
    assert moved["saturated_fraction"]["delta"] < -0.5 and moved["mean_pairwise_cosine"]["b"] < 0.5
    text = check(invoke("compare", a, b, "--color", "never"), 0).stdout
    assert "resolved codes: " + ", ".join(doc["resolved_codes"]) in text
    assert "Headline metrics" in text


def test_compare_two_models_and_usage_errors(reports, tmp_path):
    # Two models (here one model on two inputs: standardized, then raw conv output read channels-first).
    fixed = EXAMPLE / "fixed"
    doc = json.loads(
        check(
            invoke(
                "compare",
                fixed,
                fixed,
                "--inputs",
                EXAMPLE / "conv_output_standardized.npy",
                "--inputs-b",
                EXAMPLE / "conv_output.npy",
                "--format",
                "json",
            ),
            0,
        ).stdout
    )
    assert errors(doc, "compare") == []
    assert doc["a"]["source"] == doc["b"]["source"] == str(fixed)
    assert [m["metric"] for m in doc["headline"]][:2] == ["saturated_fraction", "max_abs_cell"]
    a = tmp_path / "a.json"
    a.write_text(REPORTERS["json"](reports["fixed"], RenderOptions()), encoding="utf-8")
    r = check(invoke("compare", a, fixed), 2)
    assert "two reports" in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "bad.json").write_text("{}", encoding="utf-8")
    r = check(invoke("compare", a, tmp_path / "bad.json"), 2)
    assert "not an lstm-doctor report" in r.stderr


def test_the_text_report_orders_families_the_same_way_whatever_the_hash_seed():
    # Families of equal severity once came out in a set's order, which changes
    # with PYTHONHASHSEED: two identical runs printed their sections differently.
    script = (
        "from lstm_doctor.report.text import _findings\n"
        "from rich.console import Console\n"
        "def f(code): return {'code': code, 'name': 'x', 'severity': 'error', 'message': 'm', 'fix': '',"
        " 'location': {'layer': 0, 'direction': None, 'gate': None, 'steps': None, 'units': None}, 'evidence': {}}\n"
        "report = {'findings': [f('I501'), f('S301'), f('C401'), f('A201'), f('H601'), f('W101')]}\n"
        "console = Console(width=120, record=True)\n"
        "for part in _findings(report): console.print(part)\n"
        "text = console.export_text()\n"
        "names = ('weights', 'activation configuration', 'saturation', 'cell state', 'inputs', 'hidden state')\n"
        "print([text.find(n) for n in names])\n"
    )
    outputs = set()
    for seed in ("0", "1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
        positions = json.loads(done.stdout.splitlines()[-1])
        assert positions == sorted(positions), positions  # the catalogue's family order
        outputs.add(done.stdout)
    assert len(outputs) == 1


# -- the diagnosis block (issue 20) ---------------------------------------------------------------


def _explained_line(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("Explained by the above: "))
    return [item.split(" ×")[0] for item in line.removeprefix("Explained by the above: ").split(", ")]


@pytest.mark.parametrize("name", ["broken", "fixed", "probe", "zeros"])
def test_every_root_cause_is_a_finding_whose_explains_covers_the_collapsed_codes(reports, name):
    report = reports[name]
    d = report["diagnosis"]
    findings = report["findings"]
    # every finding location sits in exactly one group; the JSON keeps one record per location
    placed = sorted(x["finding"] for g in d["groups"] for x in g["locations"])
    assert placed == list(range(len(findings)))
    roots = d["root_causes"]
    for rc in roots:
        members = [findings[n] for n in rc["findings"]]
        assert members and all(f["code"] == rc["code"] and f["location"]["layer"] == rc["layer"] for f in members)
        claimed = {c for f in members for c in f["evidence"].get("explains", [])}
        assert set(rc["explains"]) == claimed
    for e in d["explained"]:
        assert e["by"] and set(e["by"]) <= {rc["code"] for rc in roots}
        by = [rc for rc in roots if rc["code"] in e["by"]]
        assert any(e["code"] in rc["explains"] for rc in by), e
        # ... and no explained code is itself a root cause
        assert e["code"] not in {rc["code"] for rc in roots}
    assert sum(e["count"] for e in d["explained"]) + sum(len(rc["findings"]) for rc in roots) + sum(
        o["count"] for o in d["other"]
    ) == len(findings)
    # the rendered block says the same: the collapsed line lists exactly the explained codes, in order
    text = REPORTERS["text"](report, RenderOptions())
    if d["explained"]:
        assert _explained_line(text) == [e["code"] for e in d["explained"]]
    else:
        assert "Explained by the above" not in text


def test_the_broken_example_s_diagnosis_names_the_case_defects_first(reports):
    report = reports["broken"]
    d = report["diagnosis"]
    assert not d["healthy"] and "H601" in d["sentence"] and "same vector" in d["sentence"]
    codes = [rc["code"] for rc in d["root_causes"]]
    assert codes[0] == "W101" and {"A201", "W102", "I504"} <= set(codes)
    assert {"S301", "C401", "H601", "I501"} <= {e["code"] for e in d["explained"]}
    s301 = next(e for e in d["explained"] if e["code"] == "S301")
    assert s301["count"] == 3  # gates i, f, o: one line in the diagnosis
    text = REPORTERS["text"](report, RenderOptions())
    # the diagnosis comes before the details, and the details show each rule once with its fix once
    assert text.index("Diagnosis:") < text.index("Root causes") < text.index("Details")
    details = text[text.index("Details"):]
    assert len(re.findall(r"^error\s+S301 ", details, re.M)) == 1
    fix = next(f["fix"] for f in report["findings"] if f["code"] == "W101")
    assert " ".join(text.split()).count(" ".join(fix.split())) == 1
    # --verbose: the full table, one row per location, too
    verbose = REPORTERS["text"](report, RenderOptions(verbose=True))
    assert len(verbose.splitlines()) > len(text.splitlines()) and "finding and fix" in verbose


def test_a_healthy_model_gets_one_line_that_says_so(reports):
    d = reports["fixed"]["diagnosis"]
    assert d["healthy"] and d["root_causes"] == [] and d["sentence"].startswith("healthy: ")
    assert "max |c|" in d["sentence"] and "cosine" in d["sentence"]


PASS_WORD = re.compile(r"\bpass(ed|es|ing)?\b", re.I)


def test_exit_zero_never_reads_as_a_pass(broken_inputs):
    options = DiagnoseOptions(model=str(EXAMPLE / "broken"), inputs=str(broken_inputs), exit_zero=True)
    report = run_diagnosis(replace(options, created=CREATED))
    s = report["summary"]
    assert s["exit_code"] == 0 and s["exit_forced"] and s["failing"] == s["error"] > 0
    wanted = f"{s['error']} errors at or above fail-on error (exit forced to 0 by --exit-zero)"
    for fmt in ("text", "concise", "markdown", "html"):
        out = REPORTERS[fmt](report, RenderOptions())
        if fmt == "html":  # the page's own wording, not the embedded rule catalogue
            out = out[out.index("<body>"): out.index('<h2 id="rules">')]  # not the CSS, not the catalogue
            assert 'class="verdict forced"' in out and "verdict pass" not in out
        if fmt == "markdown":
            out = out[: out.index("## Rules cited")]
        assert not PASS_WORD.search(out), (fmt, PASS_WORD.search(out))
        assert ("exit 0 (forced by --exit-zero)" if fmt == "concise" else wanted) in html.unescape(out), fmt
    # without --exit-zero the same model fails, and a clean model passes
    failing = run_diagnosis(replace(options, exit_zero=False, created=CREATED))
    assert "FAIL:" in REPORTERS["html"](failing, RenderOptions())


def test_concise_is_one_line_per_finding_then_the_count(reports):
    report = reports["broken"]
    lines = REPORTERS["concise"](report, RenderOptions()).splitlines()
    assert len(lines) == len(report["findings"]) + 1
    s = report["summary"]
    roots = len(report["diagnosis"]["root_causes"])
    assert lines[-1] == f"{roots} root causes, {s['error']} errors, {s['warning']} warnings, {s['info']} info, exit 1"
    line = re.compile(r"^(\S+):(layer\d+(\.\w+)*|model): ([A-Z]\d{3}) (error|warning|info): .+")
    for text in lines[:-1]:
        assert line.match(text), text
    s301 = [t for t in lines if ": S301 " in t]
    assert len(s301) == 3 and all(re.search(r":layer0\.fwd\.[ifo]: S301 error: gate [ifo] \d+% saturated \(right\)", t)
                                  for t in s301), s301
    assert sum("[fix: " in t and "see above" not in t for t in s301) == 1  # the fix once per rule
    # root causes first
    codes = [line.match(t).group(4) for t in lines[:-1]]
    assert codes[0] == report["diagnosis"]["root_causes"][0]["code"]


def test_concise_from_the_command_line_and_check(tmp_path):
    out = check(invoke("diagnose", EXAMPLE / "fixed", "--inputs", EXAMPLE / "conv_output_standardized.npy",
                       "--format", "concise"), 0).stdout
    assert out.splitlines()[-1].endswith("exit 0") and "I503 info:" in out


def test_check_with_exit_zero_says_what_it_found_in_text_and_concise(tmp_path):
    config = tmp_path / "lstm-doctor.toml"
    config.write_text(
        f'[[models]]\nname = "broken"\nmodel = "{EXAMPLE / "broken"}"\ninputs = "{EXAMPLE / "conv_output.npy"}"\n'
        f'[[models]]\nname = "fixed"\nmodel = "{EXAMPLE / "fixed"}"\n'
        f'inputs = "{EXAMPLE / "conv_output_standardized.npy"}"\n',
        encoding="utf-8",
    )
    text = check(invoke("check", "--config", config, "--exit-zero", "--color", "never"), 0).stdout
    assert text.splitlines()[-1].startswith("exit 0: ") and "forced to 0 by --exit-zero" in text.splitlines()[-1]
    assert "no failing finding" not in text
    concise = check(invoke("check", "--config", config, "--format", "concise", "--exit-zero"), 0).stdout.splitlines()
    assert concise[-1].startswith("2 models, ") and concise[-1].endswith("exit 0 (forced by --exit-zero)")
    assert any(line.startswith("broken:layer0.fwd.U: W101 error: ") for line in concise)
    assert "fixed: 0 root causes, 1 info, exit 0" in concise
    strict = check(invoke("check", "--config", config, "--format", "concise"), 1).stdout.splitlines()
    assert strict[-1].endswith(", exit 1")


def _finding(code, severity, gate=None, explains=None, **evidence):
    if explains:
        evidence["explains"] = explains
    return {"code": code, "severity": severity, "message": f"{code} message: details", "fix": f"Fix {code}; more.",
            "location": {"layer": 0, "direction": "fwd", "gate": gate, "units": None, "steps": None},
            "evidence": evidence}


def test_the_diagnosis_sentence_names_the_worst_symptom_present():
    from lstm_doctor.report.diagnosis import diagnosis

    def report(*findings):
        counts = {sev: sum(f["severity"] == sev for f in findings) for sev in ("error", "warning", "info")}
        return {"findings": list(findings), "summary": {**counts, "exit_code": 0, "headline": None},
                "config": {"fail_on": "error"}, "inputs": None}

    cell = _finding("C401", "error", "c", max_abs_c=255.0, slope_second_half=0.99)
    cause = _finding("W101", "error", "U", explains=["C401"], matrix="U", drift=6.4,
                     gates={"i": {"mean": 0.1, "std": 0.05}})
    d = diagnosis(report(cause, cell))
    assert d["sentence"].startswith("the cell state grows without bound: max |c| 255") and "(C401)" in d["sentence"]
    assert [rc["code"] for rc in d["root_causes"]] == ["W101"] and d["explained"][0]["code"] == "C401"
    assert d["root_causes"][0]["fix"] == "Fix W101"  # the fix's first clause
    only_warning = diagnosis(report(_finding("I504", "warning", "x", step_correlation=0.0, feature_correlation=0.8)))
    assert only_warning["sentence"].startswith("no errors, 1 warning; first: I504")
    assert [rc["code"] for rc in only_warning["root_causes"]] == ["I504"]
    # a rule whose evidence has another shape falls back to the message's first clause
    odd = diagnosis(report(_finding("S301", "warning", "f", share="n/a")))
    assert odd["groups"][0]["locations"][0]["key"]
    assert diagnosis(report())["healthy"]
