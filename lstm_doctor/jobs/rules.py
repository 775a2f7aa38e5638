"""``rules`` and ``explain``: the registry, read back to the user."""

from __future__ import annotations

import json

from lstm_doctor.errors import UserError


def list_rules(fmt: str) -> int:
    from lstm_doctor.analyzers import all_rules
    from lstm_doctor.analyzers.registry import FAMILIES

    rules = all_rules()
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


def explain_rule(code: str) -> int:
    from lstm_doctor.analyzers import RULES
    from lstm_doctor.analyzers.registry import FAMILIES

    key = code.strip().upper()
    if key not in RULES:
        raise UserError(f"unknown rule {code!r}; known codes: {', '.join(sorted(RULES))}")
    r = RULES[key]
    thresholds = ", ".join(f"{k}={v:g}" for k, v in r.thresholds.items()) or "none"
    print(f"{r.code} {r.name} ({FAMILIES[r.family]}; default severity {r.severity.name})\n")
    print(f"Statistic: {r.statistic}")
    print(f"Thresholds: {thresholds}  (override with --threshold {r.code}.NAME=VALUE)\n")
    for title, text in (
        ("What it does", r.doc.what),
        ("Why it matters", r.doc.why),
        ("Example", r.doc.example),
        ("Fix", r.doc.fix),
    ):
        print(f"## {title}\n{text}\n")
    return 0
