"""The analyzers stage: findings from the model and the captured statistics.

``analyze`` runs every registered rule that applies (static rules always,
dynamic rules when there is a capture), keeps the selected codes, and links
root causes to the findings they explain. It does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lstm_doctor.analyzers import (  # noqa: F401  (register rules)
    activation,
    cell,
    differential,
    hidden,
    inputs,
    saturation,
    weights,
)
from lstm_doctor.analyzers.registry import RULES, Context, Rule, with_explains
from lstm_doctor.findings import Finding, Severity, is_selected

# What a root cause explains, on the same layer (case study, docs/case-study.md: W101 on U explains
# S301, C401 and H601). Only error-level root causes claim explanations, and a
# W101 warning whose drift still moves the gates by |Δz| ≥ 1.
EXPLAINS = {
    "W101": ("S301", "S302", "S303", "C401", "H601", "H603", "H604", "I501"),
    "W102": ("S301", "S302", "S303", "C401", "H603"),
    "A201": ("S302",),
    "I502": ("S301", "S303"),
}


# Rules that compare different inputs or measure the input's share: meaningless
# when every input is the same (a constant probe).
COMPARES_INPUTS = ("I501", "I502", "H601", "H602", "H603", "H604")


@dataclass(frozen=True)
class AnalysisConfig:
    select: tuple[str, ...] = ("",)
    ignore: tuple[str, ...] = ()
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Analysis:
    findings: list[Finding]
    skipped: dict[str, str]  # code -> why it was not evaluated


def analyze(model, capture=None, config: AnalysisConfig | None = None) -> Analysis:
    config = config or AnalysisConfig()
    ctx = Context(model=model, capture=capture, thresholds=config.thresholds)
    findings: list[Finding] = []
    identical = capture is not None and float(capture.inputs.std().max()) == 0.0
    for code, r in RULES.items():
        if not is_selected(code, config.select, config.ignore):
            continue
        if r.needs_inputs and capture is None:
            ctx.skip(code, "needs inputs (dynamic rule)")
            continue
        if r.real_inputs and capture is not None and capture.source.probe:
            ctx.skip(code, "synthetic probe inputs")
            continue
        if identical and code in COMPARES_INPUTS:
            ctx.skip(code, "every input is identical (e.g. --probe zeros): nothing to compare")
            continue
        findings.extend(r.check(ctx))
    findings = link_root_causes(findings, len(model.layers))
    findings.sort(key=Finding.sort_key)
    return Analysis(findings, {c: why for c, why in ctx.skipped.items() if is_selected(c, config.select, config.ignore)})


def link_root_causes(findings: list[Finding], n_layers: int) -> list[Finding]:
    """Name, in each error-level root-cause finding, the findings it explains.

    Only the strongest root-cause finding of a code per layer claims them, so
    the report names each explanation once. Encoding-level findings (H601,
    H604) belong to the last layer.
    """
    # Per (code, layer) the strongest error-level finding is the root cause
    # (largest drift or norm), so the explanation sits where the cause is.
    causes: dict[tuple[str, int | None], Finding] = {}
    for f in findings:
        if f.code in EXPLAINS and _can_explain(f):
            key = (f.code, f.location.layer)
            if key not in causes or _strength(f) > _strength(causes[key]):
                causes[key] = f
    out = []
    for f in findings:
        key = (f.code, f.location.layer)
        if causes.get(key) is f:
            explained = [
                g.code
                for g in findings
                if g.code in EXPLAINS[f.code]
                and g.severity >= Severity.warning
                and g.location.layer == f.location.layer
            ]
            f = with_explains(f, explained)
        out.append(f)
    return out


def _can_explain(f: Finding) -> bool:
    """Errors explain; so does a weight offset whose drift moves σ materially (|Δz| ≥ 1)."""
    if f.severity == Severity.error:
        return True
    return (
        f.code == "W101"
        and f.severity >= Severity.warning
        and abs(float(f.evidence.get("drift", 0.0))) >= 1.0
    )


def _strength(f: Finding) -> tuple[bool, float]:
    # The recurrent matrix first: the case study's root cause is the mean of U, which
    # the peepholes then amplify through the growing cell.
    ev = f.evidence
    return ev.get("matrix") == "U", abs(float(ev.get("drift", ev.get("spectral_norm", 0.0)) or 0.0))

def all_rules() -> list[Rule]:
    return [RULES[c] for c in sorted(RULES)]


__all__ = ["analyze", "Analysis", "AnalysisConfig", "RULES", "all_rules", "Severity"]
