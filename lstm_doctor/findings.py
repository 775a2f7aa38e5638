"""Findings: the plain, frozen records that analyzers produce.

Analyzers return ``Finding`` objects; a separate decision step
(``select_findings``) keeps or drops them by code prefix, and reporters only
format them. Nothing here computes a statistic or renders text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Iterable


class Severity(IntEnum):
    info = 1
    warning = 2
    error = 3

    @classmethod
    def parse(cls, name: str) -> "Severity":
        try:
            return cls[str(name).lower()]
        except KeyError:
            raise ValueError(f"unknown severity {name!r}; choose error, warning or info") from None


@dataclass(frozen=True)
class Location:
    """Where a finding applies. ``None`` means "not specific to one"."""

    layer: int | None = None
    direction: str | None = None
    gate: str | None = None  # i, f, g, o, c, h, or a matrix name such as "U"
    units: tuple[int, ...] | None = None
    steps: tuple[int, int] | None = None  # [first, last] step, processing order

    def as_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "direction": self.direction,
            "gate": self.gate,
            "units": None if self.units is None else list(self.units),
            "steps": None if self.steps is None else list(self.steps),
        }

    def label(self) -> str:
        parts = []
        if self.layer is not None:
            parts.append(f"layer {self.layer}" + (f" {self.direction}" if self.direction else ""))
        if self.gate:
            parts.append(f"gate {self.gate}" if self.gate in "ifgo" else self.gate)
        if self.steps is not None:
            parts.append(f"steps {self.steps[0]}–{self.steps[1]}")
        return ", ".join(parts) or "model"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    location: Location = field(default_factory=Location)
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""

    def sort_key(self):
        loc = self.location
        return (
            -int(self.severity),
            loc.layer if loc.layer is not None else -1,
            self.code,
            loc.direction or "",
            loc.gate or "",
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.name,
            "message": self.message,
            "location": self.location.as_dict(),
            "evidence": self.evidence,
            "fix": self.fix,
        }


def prefix_match(code: str, prefixes: Iterable[str]) -> int:
    """Length of the longest prefix in ``prefixes`` that ``code`` starts with, or -1."""
    best = -1
    for prefix in prefixes:
        if code.startswith(prefix):
            best = max(best, len(prefix))
    return best


def is_selected(code: str, select: Iterable[str] = ("",), ignore: Iterable[str] = ()) -> bool:
    """ruff/flake8 semantics: the longest matching prefix wins; on a tie, ignore wins."""
    return prefix_match(code, select) > prefix_match(code, ignore)


def worst(findings: Iterable[Finding]) -> Severity | None:
    severities = [f.severity for f in findings]
    return max(severities) if severities else None


IDENTITY_FIELDS = ("layer", "direction", "gate")
"""A finding's identity beyond its code: baselines, compare and grouping match on
(code, layer, direction, gate), never on message text (its numbers change)."""


def finding_identity(finding: dict) -> tuple:
    """(code, layer, direction, gate) of a finding as it is in a JSON report."""
    loc = finding["location"]
    return (finding["code"], *(loc.get(name) for name in IDENTITY_FIELDS))


def exit_code(findings: Iterable[Finding], fail_on: Severity, exit_zero: bool = False) -> int:
    """0 when no finding is at or above ``fail_on``, else 1 (always 0 with exit_zero)."""
    if exit_zero:
        return 0
    top = worst(findings)
    return 1 if top is not None and top >= fail_on else 0
