"""``rules`` and ``explain``: the registry, read back to the user."""

from __future__ import annotations

import json

from lstm_doctor.analyzers import RULES, all_rules
from lstm_doctor.analyzers.registry import FAMILIES
from lstm_doctor.errors import UserError


def list_rules(fmt: str) -> int:
    rules = all_rules()
    if fmt == "markdown":
        print(rules_markdown(), end="")
        return 0
    if fmt == "json":
        print(json.dumps([r.summary() for r in rules], indent=2, ensure_ascii=False))
        return 0
    width = max(len(r.name) for r in rules)
    family = None
    for r in rules:
        if r.family != family:
            family = r.family
            print(f"\n{family} — {FAMILIES[family]}")
        kind = "static " if not r.needs_inputs else "dynamic"
        print(f"  {r.code}  {r.name:<{width}}  {r.severity.name:<7}  {kind}")
    return 0


def rule_text(code: str, heading: str = "") -> str:
    """One rule's documentation, as ``explain`` prints it (``heading``: a markdown prefix for the title)."""
    key = code.strip().upper()
    if key not in RULES:
        raise UserError(f"unknown rule {code!r}; known codes: {', '.join(sorted(RULES))}")
    r = RULES[key]
    thresholds = ", ".join(f"{k}={v:g}" for k, v in r.thresholds.items()) or "none"
    lines = [
        f"{heading}{r.code} {r.name} ({FAMILIES[r.family]}; default severity {r.severity.name})",
        "",
        f"Statistic: {r.statistic}",
        f"Thresholds: {thresholds}  (override with --threshold {r.code}.NAME=VALUE)",
        "",
    ]
    sub = "#" * (len(heading.strip()) + 1) + " " if heading else "## "
    for title, text in (
        ("What it does", r.doc.what),
        ("Why it matters", r.doc.why),
        ("Example", r.doc.example),
        ("Fix", r.doc.fix),
    ):
        lines += [f"{sub}{title}", text, ""]
    return "\n".join(lines)


def explain_rule(code: str) -> int:
    print(rule_text(code))
    return 0


def rules_markdown() -> str:
    """The rule reference (``docs/rules.md``), generated from the registry so that it cannot drift."""
    rules = all_rules()
    out = [
        "# Rule reference",
        "",
        "Generated from lstm_doctor's rule registry by `lstm-doctor rules --format markdown`;",
        "`tests/test_docs.py` fails when this file and the registry differ. The codes are a",
        "public contract: they are never renumbered or reused.",
        "",
        "| code | name | family | default severity | needs inputs |",
        "|---|---|---|---|---|",
    ]
    out += [
        f"| [{r.code}](#{r.code.lower()}) | {r.name} | {FAMILIES[r.family]} | {r.severity.name} | "
        f"{'yes' if r.needs_inputs else 'no'} |"
        for r in rules
    ]
    out.append("")
    for r in rules:
        out += [f'<a id="{r.code.lower()}"></a>', "", rule_text(r.code, heading="## ")]
    return "\n".join(out).rstrip() + "\n"
