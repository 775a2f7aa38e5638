"""The report's ``diagnosis``: what is wrong, the independent root causes, what they explain.

Built once, by ``build.build_report`` (and again by ``add_diagnosis`` after the
what-if experiment adds its ranking), from the findings' root-cause links
(evidence ``explains``, set by ``analyzers.link_root_causes``). Every renderer
reads it; none recomputes it.

Definitions (per layer, as the analyzers link causes on one layer):

- a *group* is every finding of one code on one layer (S301 on gates i, f, o is
  one group with three locations); its severity is the worst of its findings;
- a group is *explained* when its code is in the ``explains`` of another
  finding on the same layer; a *root cause* is a group at warning or above that
  is not explained; everything else (info) is *other*;
- root causes are ranked: errors first, then by the what-if experiment where it
  ran (the fixes on its cumulative path in path order, then the others by rank),
  then by how many codes they explain, then by code.

``diagnosis`` (see ``schema.json``)::

    {"healthy": bool, "sentence": str,
     "root_causes": [{"code", "name", "severity", "layer", "where", "key", "fix",
                      "explains": [codes], "findings": [indices], "what_if": {...} | null}],
     "explained": [{"code", "count", "severity", "by": [codes]}],
     "other": [{"code", "count", "severity"}],
     "groups": [{"code", "name", "severity", "layer", "role", "fix", "fixes",
                 "locations": [{"finding", "severity", "path", "where", "key"}]}]}

``findings`` and ``locations[].finding`` index ``report["findings"]``, which keeps
one record per location (the JSON contract). ``status`` phrases the verdict
from ``summary`` (and a ``check`` baseline); it never says "pass" when a
finding at or above ``--fail-on`` was found.
"""

from __future__ import annotations

import re
from typing import Any

from lstm_doctor.analyzers import RULES
from lstm_doctor.findings import Severity

FAMILY_ORDER = "WASCIHG"


def _names() -> dict[str, str]:
    return {code: r.name for code, r in RULES.items()}


# -- where ----------------------------------------------------------------------------------


def location_path(loc: dict) -> str:
    """``layer0.fwd.f``: the location as a dotted path (concise format), ``model`` when global."""
    parts = []
    if loc.get("layer") is not None:
        parts.append(f"layer{loc['layer']}")
    if loc.get("direction"):
        parts.append(loc["direction"])
    if loc.get("gate"):
        parts.append(loc["gate"])
    return ".".join(parts) or "model"


def location_where(loc: dict) -> str:
    """``gate f, steps 2–255``: the location within its layer, for humans ('' when the whole layer)."""
    parts = []
    if loc.get("direction") and loc["direction"] != "fwd":
        parts.append(loc["direction"])
    gate = loc.get("gate")
    if gate:
        parts.append(f"gate {gate}" if gate in ("i", "f", "g", "o") else gate)
    if loc.get("steps"):
        parts.append(f"steps {loc['steps'][0]}–{loc['steps'][1]}")
    return ", ".join(parts)


# -- the key number of each finding ----------------------------------------------------------


def _g(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _max(d: Any) -> float | None:
    vals = [v for v in (d or {}).values() if isinstance(v, (int, float))] if isinstance(d, dict) else []
    return max(vals) if vals else None


def _key_w101(ev: dict, loc: dict) -> str:
    gates = ev.get("gates") or {}
    means = [g["mean"] for g in gates.values() if g.get("mean") is not None]
    stds = [g["std"] for g in gates.values() if g.get("std") is not None]
    mean = max(means, key=abs) if means else None
    return (
        f"{ev.get('matrix', loc.get('gate'))} mean {_g(mean, '.2g')} vs std {_g(max(stds) if stds else None, '.2g')}, "
        f"drift {_g(ev.get('drift'), '.3g')}"
    )


def _key_s301(ev: dict, loc: dict) -> str:
    side = "right" if (ev.get("right_share") or 0) >= (ev.get("left_share") or 0) else "left"
    pinned = f", {ev['pinned_units']}/{ev['units']} units pinned" if "pinned_units" in ev and "units" in ev else ""
    return f"gate {loc.get('gate')} {_g(ev.get('share'), '.0%')} saturated ({side}){pinned}"


def _key_c401(ev: dict, loc: dict) -> str:
    slope = ev.get("slope", ev.get("slope_second_half"))  # the name changed with the calibrated rule
    return f"max |c| {_g(ev.get('max_abs_c'), '.3g')}" + (f", growing {slope:.2g} per step" if slope else "")


def _key_i503(ev: dict, loc: dict) -> str:
    if ev.get("all_non_negative"):
        return f"all {ev.get('features')} features ≥ 0 ({_g(ev.get('zero_share'), '.0%')} exact zeros)"
    return f"inputs not standardised (RMS {_g(ev.get('rms'), '.3g')})"


KEYS = {
    "W101": _key_w101,
    "W102": lambda ev, loc: f"spectral norm {_g(ev.get('spectral_norm'), '.3g')} > {_g(ev.get('limit'), '.3g')}",
    "W103": lambda ev, loc: (
        f"forget bias {_g(ev.get('median_bias'), '.3g')} (τ = {_g(ev.get('median_timescale'), '.3g')} steps)"
    ),
    "W104": lambda ev, loc: f"peephole term up to {_g(_max(ev.get('peephole_share')), '.0%')} of gate energy",
    "A201": lambda ev, loc: f"h = o·{ev.get('declared')}(c), not o·tanh(c)",
    "S301": _key_s301,
    "S302": lambda ev, loc: f"{_g(ev.get('share'), '.0%')} of h values at a bound",
    "S303": lambda ev, loc: f"{_g(ev.get('candidate_share'), '.0%')} of candidate values at ±1",
    "C401": _key_c401,
    "H601": lambda ev, loc: (
        f"mean pairwise cosine {_g(ev.get('mean_pairwise_cosine'), '.6f')} over {ev.get('sequences')} inputs"
    ),
    "H604": lambda ev, loc: f"effective rank {_g(ev.get('effective_rank'), '.3g')} of {ev.get('max_rank')}",
    "I501": lambda ev, loc: (
        f"input term ≤ {_g(_max(ev.get('input_variance_share')), '.2%')} of the pre-activation variance"
    ),
    "I503": _key_i503,
    "I504": lambda ev, loc: (
        f"adjacent steps correlate {_g(ev.get('step_correlation'), '.2f')}, "
        f"adjacent features {_g(ev.get('feature_correlation'), '.2f')}"
    ),
}


def _first_clause(text: str, limit: int = 90) -> str:
    """The message up to its first ':' or ';' (or ``limit`` characters at a word boundary)."""
    head = re.split(r"[:;] ", str(text), maxsplit=1)[0].strip().rstrip(".")
    if len(head) <= limit:
        return head
    return head[:limit].rsplit(" ", 1)[0] + " …"


def key_number(finding: dict) -> str:
    """A short phrase with the finding's key number (rule-specific; the message's first clause otherwise)."""
    fn = KEYS.get(finding["code"])
    if fn is not None:
        try:
            return fn(finding.get("evidence") or {}, finding.get("location") or {})
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # evidence of another shape (another version of the rule): fall back to the message
    return _first_clause(finding["message"])


def short_fix(fix: str) -> str:
    """A fix's first clause: up to ' (' , '; ' or '. ' (the rest is in the details)."""
    if not fix:
        return ""
    head = re.split(r" \(|; |\. ", str(fix), maxsplit=1)[0].strip().rstrip(".")
    return head


# -- the diagnosis ---------------------------------------------------------------------------


def _what_if_entries(report: dict) -> dict[str, dict]:
    """Per code, the what-if ranking entry of the fix that addresses it."""
    ranking = (report.get("what_if_ranking") or {}).get("ranking") or []
    out: dict[str, dict] = {}
    for entry in ranking:
        for code in entry.get("present") or entry.get("codes") or []:
            out.setdefault(code, entry)
    return out


def _what_if_summary(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    return {
        "fix": entry["fix"],
        "rank": entry.get("rank"),
        "on_path": bool(entry.get("on_path")),
        "path_step": entry.get("path_step"),
        "removes_errors": list(entry.get("removes_errors") or []),
        "note": entry.get("note") or "",
    }


def _what_if_order(w: dict | None) -> tuple:
    if w is None:
        return (3, 0)
    if w["on_path"] and w["path_step"] is not None:
        return (0, w["path_step"])
    if w["rank"] is not None:
        return (1, w["rank"])
    return (2, 0)


def _family(code: str) -> int:
    return FAMILY_ORDER.index(code[0]) if code[0] in FAMILY_ORDER else len(FAMILY_ORDER)


def _headline_sentence(report: dict, groups: list[dict], findings: list[dict]) -> tuple[bool, str]:
    s = report["summary"]
    head = s.get("headline") or {}
    by_code = {}
    for g in groups:
        by_code.setdefault(g["code"], g)

    def ev(code: str) -> dict:
        return findings[by_code[code]["locations"][0]["finding"]]["evidence"]

    if s.get("error", 0) == 0 and s.get("warning", 0) == 0:
        if head:
            metrics = (
                f"gate values saturated {_g(head.get('saturated_fraction'), '.0%')}, "
                f"max |c| {_g(head.get('max_abs_cell'), '.3g')}, "
                f"mean pairwise cosine of the encodings {_g(head.get('mean_pairwise_cosine'), '.3f')}, "
                f"input share of the pre-activation variance {_g(head.get('input_variance_share'), '.0%')}"
            )
            inputs = report.get("inputs") or {}
            on = "a synthetic probe" if inputs.get("probe") else f"{inputs.get('sequences')} inputs"
            return True, f"healthy: no error or warning on {on} ({metrics})"
        return True, "healthy: no error or warning from the weight rules (no inputs: the dynamic rules did not run)"
    if "H601" in by_code:
        e = ev("H601")
        return False, (
            f"the encoding does not depend on the input: all {e.get('sequences')} inputs give the same vector "
            f"(H601, mean pairwise cosine {_g(e.get('mean_pairwise_cosine'), '.6f')})"
        )
    if "H602" in by_code:
        return False, "the encoding does not respond to its inputs (H602)"
    def key(code: str) -> str:
        return key_number(findings[by_code[code]["locations"][0]["finding"]])

    if "I501" in by_code:
        return False, f"the output cannot depend on the input: {key('I501')} (I501)"
    if "C401" in by_code:
        return False, f"the cell state grows without bound: {key('C401')} (C401)"
    if "S301" in by_code and by_code["S301"]["severity"] == "error":
        return False, f"the gates are stuck: {key('S301')} (S301)"
    top = groups[0]
    first = findings[top["locations"][0]["finding"]]
    if s.get("error", 0) == 0:
        n = s.get("warning", 0)
        return False, (
            f"no errors, {n} warning{'s' if n != 1 else ''}; "
            f"first: {top['code']} {top['name']}: {key_number(first)}"
        )
    return False, f"{top['code']} {top['name']}: {key_number(first)}"


def diagnosis(report: dict) -> dict[str, Any]:
    """The ``diagnosis`` section of ``report`` (a report dict, findings already cleaned)."""
    names = _names()
    findings = report["findings"]
    what_if = _what_if_entries(report)
    # groups: one per (code, layer), in the order of the findings (most severe first)
    keyed: dict[tuple, dict] = {}
    for n, f in enumerate(findings):
        loc = f["location"]
        key = (f["code"], loc.get("layer"))
        g = keyed.get(key)
        if g is None:
            g = keyed[key] = {
                "code": f["code"],
                "name": names.get(f["code"], ""),
                "severity": f["severity"],
                "layer": loc.get("layer"),
                "role": "other",
                "explains": [],
                "fixes": [],
                "locations": [],
            }
        if Severity[f["severity"]] > Severity[g["severity"]]:
            g["severity"] = f["severity"]
        g["explains"] = sorted(set(g["explains"]) | set((f.get("evidence") or {}).get("explains") or []))
        if f["fix"] and f["fix"] not in g["fixes"]:
            g["fixes"].append(f["fix"])
        g["locations"].append(
            {
                "finding": n,
                "severity": f["severity"],
                "path": location_path(loc),
                "where": location_where(loc),
                "key": key_number(f),
            }
        )
    groups = list(keyed.values())
    for g in groups:
        # the strongest location first: its severity, then the order of the findings
        g["locations"].sort(key=lambda x: (-Severity[x["severity"]], x["finding"]))
        g["fix"] = g["fixes"][0] if g["fixes"] else ""
    explained_by: dict[tuple, list[str]] = {}
    for g in groups:
        for code in g["explains"]:
            explained_by.setdefault((code, g["layer"]), []).append(g["code"])
    for g in groups:
        by = [c for c in explained_by.get((g["code"], g["layer"]), []) if c != g["code"]]
        g["explained_by"] = sorted(set(by))
        if by:
            g["role"] = "explained"
        elif Severity[g["severity"]] >= Severity["warning"]:
            g["role"] = "root_cause"
    roots = [g for g in groups if g["role"] == "root_cause"]
    for g in roots:
        g["what_if"] = _what_if_summary(what_if.get(g["code"]))
    roots.sort(key=lambda g: (-Severity[g["severity"]], _what_if_order(g["what_if"]), -len(g["explains"]), g["code"]))
    explained = [g for g in groups if g["role"] == "explained"]
    explained.sort(key=lambda g: (-Severity[g["severity"]], _family(g["code"]), g["code"]))
    other = [g for g in groups if g["role"] == "other"]
    other.sort(key=lambda g: (-Severity[g["severity"]], _family(g["code"]), g["code"]))
    ordered = roots + explained + other
    healthy, sentence = _headline_sentence(report, ordered, findings)

    def where(g: dict) -> str:
        places = []
        for x in g["locations"]:
            if x["where"] and x["where"] not in places:
                places.append(x["where"])
        layer = "" if g["layer"] is None else f"layer {g['layer']}"
        return ", ".join(([layer] if layer else []) + places) or "model"

    return {
        "healthy": healthy,
        "sentence": sentence,
        "root_causes": [
            {
                "code": g["code"],
                "name": g["name"],
                "severity": g["severity"],
                "layer": g["layer"],
                "where": where(g),
                "key": g["locations"][0]["key"],
                "fix": short_fix(g["fix"]),
                "explains": g["explains"],
                "findings": [x["finding"] for x in g["locations"]],
                "what_if": g["what_if"],
            }
            for g in roots
        ],
        "explained": [
            {"code": g["code"], "count": len(g["locations"]), "severity": g["severity"], "by": g["explained_by"]}
            for g in explained
        ],
        "other": [{"code": g["code"], "count": len(g["locations"]), "severity": g["severity"]} for g in other],
        "groups": [
            {
                "code": g["code"],
                "name": g["name"],
                "severity": g["severity"],
                "layer": g["layer"],
                "role": g["role"],
                "explained_by": g["explained_by"],
                "fix": g["fix"],
                "fix_short": short_fix(g["fix"]),
                "fixes": g["fixes"],
                "locations": g["locations"],
            }
            for g in ordered
        ],
    }


def add_diagnosis(report: dict) -> dict:
    """``report`` with its ``diagnosis`` (re)computed: after ``add_what_if``, the ranking uses it."""
    report["diagnosis"] = diagnosis(report)
    return report


# -- the verdict -----------------------------------------------------------------------------


def plural(n: int, word: str) -> str:
    """``1 sequence``, ``2 sequences`` (``info`` has no plural)."""
    return f"{n} {word}" + ("" if n == 1 or word == "info" else "s")


def status(report: dict) -> dict[str, Any]:
    """The verdict, phrased from the summary (and a ``check --baseline``): never "pass" when a
    finding at or above ``--fail-on`` exists, whatever the exit code.

    ``state``: ``fail`` (exit 1), ``forced`` (failing findings, exit forced to 0 by
    --exit-zero), ``pass`` (nothing at or above fail-on, or with a baseline nothing new).
    ``text``: e.g. "11 errors at or above fail-on error (exit forced to 0 by --exit-zero)", or
    "no finding at or above fail-on error (exit 0)" (renderers add PASS / FAIL from ``state``).
    """
    s = report["summary"]
    fail_on = report["config"]["fail_on"]
    levels = [sev for sev in ("error", "warning", "info") if Severity[sev] >= Severity[fail_on]]
    check = report.get("check") or {}
    baseline = check.get("baseline")
    if baseline:
        counted = {
            sev: sum(1 for f in report["findings"] if f["severity"] == sev and f.get("baseline") == "new")
            for sev in levels
        }
        what = "new "
    else:
        counted = {sev: s.get(sev, 0) for sev in levels}
        what = ""
    failing = sum(counted.values())
    phrase = ", ".join(plural(counted[sev], what + sev) for sev in levels if counted[sev])
    code = s["exit_code"]
    if failing == 0:
        none = "no new finding" if baseline else "no finding"
        return {"state": "pass", "failing": 0, "text": f"{none} at or above fail-on {fail_on} (exit {code})"}
    if code == 0:
        return {
            "state": "forced",
            "failing": failing,
            "text": f"{phrase} at or above fail-on {fail_on} (exit forced to 0 by --exit-zero)",
        }
    return {"state": "fail", "failing": failing, "text": f"{phrase} at or above fail-on {fail_on}: exit {code}"}


def count_line(report: dict) -> str:
    """``3 root causes, 11 errors, 6 warnings, 1 info, exit 1`` (the concise format's last line)."""
    s = report["summary"]
    d = report.get("diagnosis") or diagnosis(report)
    st = status(report)
    parts = [plural(len(d["root_causes"]), "root cause")]
    parts += [plural(s[sev], sev) for sev in ("error", "warning", "info") if s.get(sev)]
    if not any(s.get(sev) for sev in ("error", "warning", "info")):
        parts.append("no findings")
    exit_text = f"exit {s['exit_code']}" + (" (forced by --exit-zero)" if st["state"] == "forced" else "")
    return ", ".join(parts + [exit_text])
