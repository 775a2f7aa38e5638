"""``--format junit``: JUnit XML for CI test reporters (GitLab, Jenkins, GitHub test-report actions).

One ``<testsuite>`` per report (per model), one ``<testcase>`` per registered
rule code in scope (``--select``/``--ignore``). A test case fails when the
report has findings of its code at or above ``--fail-on`` (and, under
``check --baseline``, not already in the baseline); every finding of the code
is listed in the failure text or, below ``--fail-on``, in ``<system-out>``.
Codes that could not be evaluated are ``<skipped>``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lstm_doctor.analyzers import RULES
from lstm_doctor.findings import Severity, is_selected
from lstm_doctor.output import escape_controls_in
from lstm_doctor.report.html import location_label


def _in_scope(code: str, config: dict) -> bool:
    return is_selected(code, config.get("select") or ("",), config.get("ignore") or ())


def _describe(f: dict) -> str:
    text = f"{f['severity']} {f['code']} at {location_label(f['location'])}: {f['message']}"
    if f.get("baseline") == "known":
        text += " [in baseline]"
    if f["fix"]:
        text += f"\n  fix: {f['fix']}"
    return text


def _suite(report: dict, rules: dict) -> ET.Element:
    fail_on = Severity.parse(report["config"]["fail_on"])
    model = report["model"]["name"]
    label = (report.get("check") or {}).get("model_id") or model
    suite = ET.Element("testsuite", name=f"lstm-doctor: {label}", timestamp=report["created"], time="0")
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("model", model),
        ("model_file", report["model"]["files"][0]["path"] if report["model"]["files"] else ""),
        ("inputs", (report.get("inputs") or {}).get("source", "")),
        ("fail_on", report["config"]["fail_on"]),
        ("tool_version", report["tool"]["version"]),
    ):
        ET.SubElement(props, "property", name=key, value=str(value))
    by_code: dict[str, list[dict]] = {}
    for f in report["findings"]:
        by_code.setdefault(f["code"], []).append(f)
    skipped_reasons = report.get("not_evaluated") or {}
    tests = failures = skipped = 0
    for code in sorted(rules):
        if not _in_scope(code, report["config"]):
            continue
        tests += 1
        case = ET.SubElement(
            suite, "testcase", name=f"{code} {rules[code]}", classname=f"lstm_doctor.{label}", time="0"
        )
        found = by_code.get(code, [])
        failing = [f for f in found if Severity.parse(f["severity"]) >= fail_on and f.get("baseline") != "known"]
        if failing:
            failures += 1
            worst = max(failing, key=lambda f: Severity.parse(f["severity"]))
            failure = ET.SubElement(case, "failure", message=worst["message"], type=worst["severity"])
            failure.text = "\n".join(_describe(f) for f in found)
        elif code in skipped_reasons:
            skipped += 1
            ET.SubElement(case, "skipped", message=skipped_reasons[code])
        elif found:
            ET.SubElement(case, "system-out").text = "\n".join(_describe(f) for f in found)
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    return suite


def render_many(reports: list[dict], options=None) -> str:
    rules = {code: r.name for code, r in RULES.items()}
    root = ET.Element("testsuites", name="lstm-doctor")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    for report in reports:
        suite = _suite(escape_controls_in(report), rules)  # control characters are not XML
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key))
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def render(report: dict, options=None) -> str:
    return render_many([report], options)
