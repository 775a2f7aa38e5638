"""The documents the package cites ship with it, and the rule reference cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from lstm_doctor.jobs.rules import rules_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_rule_reference_is_generated_from_the_registry():
    # Regenerate with: lstm-doctor rules --format markdown > docs/rules.md
    assert (ROOT / "docs" / "rules.md").read_text() == rules_markdown()


def test_every_rule_has_its_section_in_the_reference():
    from lstm_doctor.analyzers import all_rules

    text = (ROOT / "docs" / "rules.md").read_text()
    for rule in all_rules():
        assert f'<a id="{rule.code.lower()}"></a>' in text
        assert rule.doc.fix.split()[0] in text


def test_every_document_the_code_cites_exists():
    cited = set()
    for path in (ROOT / "lstm_doctor").rglob("*.py"):
        cited |= set(re.findall(r"docs/[\w./-]+\.md", path.read_text()))
    assert cited, "the package cites its docs"
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, missing


def test_the_package_cites_no_document_that_does_not_ship():
    # Notes kept outside the repository (CASE.md, RULES.md, ENGINE.md, STYLE.md) are not for users.
    offenders = []
    for path in list((ROOT / "lstm_doctor").rglob("*.py")) + [ROOT / "README.md"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(CASE|RULES|ENGINE|STYLE)\.md\b", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, offenders
