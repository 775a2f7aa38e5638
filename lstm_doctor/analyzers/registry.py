"""The rule registry: the single source of truth for codes (docs/rules.md is the contract).

Each rule is declared once with ``@rule(...)`` next to its check function:
code, name, default severity, the statistic it reads, default thresholds and
its documentation (What it does / Why it matters / Example / Fix). The
``rules`` and ``explain`` commands, ``--select``/``--ignore`` validation and
``--threshold`` validation all read ``RULES``.

A check is a pure function ``check(ctx) -> Iterable[Finding]`` of the model,
the captured statistics and the thresholds. It does no I/O and no printing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from lstm_doctor.errors import ConfigError
from lstm_doctor.findings import Finding, Location, Severity

# |z| beyond which σ(z) is within 0.01 of 0 or 1 (docs/rules.md). The same value as
# ``lstm_doctor.stats.LINEAR_RANGE``, repeated here so that registering the
# rules (``lstm-doctor rules``, ``explain``) imports no NumPy.
LINEAR_RANGE = 4.6


class Deferred:
    """A module imported on its first attribute access.

    The rule modules use NumPy (and the model and stats modules) only inside
    their checks; deferring the import keeps ``lstm-doctor rules`` and
    ``explain`` fast, since listing the registry runs no check.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        module = importlib.import_module(self._name)
        return getattr(module, attr)

FAMILIES = {
    "W": "weights",
    "A": "activation configuration",
    "S": "saturation",
    "C": "cell state",
    "I": "inputs",
    "H": "hidden state and representation",
    "G": "gradient flow",
}


@dataclass(frozen=True)
class RuleDoc:
    what: str
    why: str
    example: str
    fix: str


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity  # default severity (some rules escalate or relax, as documented)
    statistic: str
    thresholds: dict[str, float]
    doc: RuleDoc
    needs_inputs: bool  # False for static rules that run from the weights alone
    check: Callable[["Context"], Iterable[Finding]] = field(repr=False, compare=False)
    real_inputs: bool = False  # True: says something about the user's inputs, so not evaluated on a probe

    @property
    def family(self) -> str:
        return self.code[0]

    def summary(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "family": FAMILIES[self.family],
            "severity": self.severity.name,
            "static": not self.needs_inputs,
            "statistic": self.statistic,
            "thresholds": dict(self.thresholds),
        }


RULES: dict[str, Rule] = {}


def rule(
    code: str,
    name: str,
    severity: str,
    statistic: str,
    thresholds: dict[str, float],
    *,
    what: str,
    why: str,
    example: str,
    fix: str,
    needs_inputs: bool = True,
    real_inputs: bool = False,
):
    """Register the decorated check function as rule ``code`` (``real_inputs``: it judges
    the user's inputs, so a synthetic probe skips it)."""
    def register(check):
        if code in RULES:
            raise RuntimeError(f"rule {code} registered twice")
        RULES[code] = Rule(
            code=code,
            name=name,
            severity=Severity[severity],
            statistic=statistic,
            thresholds=dict(thresholds),
            doc=RuleDoc(what.strip(), why.strip(), example.strip(), fix.strip()),
            needs_inputs=needs_inputs,
            check=check,
            real_inputs=real_inputs,
        )
        return check

    return register


@dataclass
class Context:
    """What a check may read: the model, the capture (or None), thresholds.

    ``skipped`` collects rules that could not be evaluated (too few sequences,
    no inputs) with the reason, so a report can say so instead of guessing.
    """

    model: Any
    capture: Any | None = None
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def th(self, code: str, name: str) -> float:
        return self.thresholds.get(code, {}).get(name, RULES[code].thresholds[name])

    def finding(
        self,
        code: str,
        message: str,
        *,
        severity: Severity | None = None,
        location: Location | None = None,
        evidence: dict[str, Any] | None = None,
        fix: str | None = None,
    ) -> Finding:
        r = RULES[code]
        return Finding(
            code=code,
            severity=severity or r.severity,
            message=message,
            location=location or Location(),
            evidence=evidence or {},
            fix=fix if fix is not None else " ".join(r.doc.fix.split()),
        )

    def skip(self, code: str, reason: str) -> None:
        self.skipped[code] = reason


def parse_thresholds(items: Iterable[str]) -> dict[str, dict[str, float]]:
    """Parse ``CODE.param=value`` overrides, validating against the registry."""
    out: dict[str, dict[str, float]] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        code, dot, param = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--threshold {item!r}: expected CODE.param=value")
        code = code.upper()
        if code not in RULES:
            raise ConfigError(
                f"--threshold {item!r}: unknown code {code}; known: {', '.join(sorted(RULES))}"
            )
        known = RULES[code].thresholds
        if param not in known:
            names = ", ".join(sorted(known)) or "(none)"
            raise ConfigError(f"--threshold {item!r}: {code} has no parameter {param!r}; it has: {names}")
        try:
            out.setdefault(code, {})[param] = float(value)
        except ValueError:
            raise ConfigError(f"--threshold {item!r}: {value!r} is not a number") from None
    return out


def validate_prefixes(prefixes: Iterable[str], option: str) -> list[str]:
    """Upper-case code prefixes; each must match at least one registered code."""
    out = []
    for prefix in prefixes:
        p = str(prefix).strip().upper()
        if p in ("ALL", ""):
            out.append("")
            continue
        if not any(code.startswith(p) for code in RULES):
            raise ConfigError(
                f"{option} {prefix!r} matches no rule; codes are: {', '.join(sorted(RULES))}"
            )
        out.append(p)
    return out


def with_explains(finding: Finding, codes: list[str]) -> Finding:
    """A copy of a root-cause finding that names the findings it explains."""
    if not codes:
        return finding
    evidence = {**finding.evidence, "explains": sorted(set(codes))}
    message = finding.message + f" This explains {', '.join(sorted(set(codes)))}."
    return replace(finding, evidence=evidence, message=message)
