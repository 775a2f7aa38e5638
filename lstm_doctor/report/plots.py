"""Plots of a report (matplotlib, Agg), as PNG bytes. They read the report dict only.

Every number drawn here was computed by ``build.py`` (renderers never compute
statistics); a plot only picks colours and axes. matplotlib is imported when a
plot is drawn, never at import time of the package, and pyplot is not used
(no global state, no interactive backend): each figure is a
``matplotlib.figure.Figure`` on an explicit Agg canvas. PNGs carry no
"Software" metadata, so the same report gives the same bytes.

``report_plots(report)`` returns the sections of plots for one report:
per (layer, direction) the saturation heatmap, the left/right saturation
scatter, h and c over steps, the fraction saturated per step and the
pre-activation energy shares, and, for the direction ``--gradients`` ran on,
the sensitivity strip with its memory horizon; then the cosine matrix of the
final encodings.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np

from lstm_doctor.report.diagnosis import plural

SIGMOID_GATES = ("i", "f", "o")
GATE_NAMES = {"i": "input gate i", "f": "forget gate f", "o": "output gate o", "g": "candidate g"}
GATE_COLORS = {"i": "#1f77b4", "f": "#2ca02c", "o": "#d62728", "g": "#9467bd"}
TERM_COLORS = {"input": "#2ca02c", "recurrent": "#d62728", "peephole": "#ff7f0e", "bias": "#7f7f7f"}
DPI = 100


@dataclass(frozen=True)
class Plot:
    key: str  # file-name-safe and anchor-safe id, unique within a report
    title: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    plots: tuple[Plot, ...]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "model"


def _array(values) -> np.ndarray:
    """A report list (None for NaN) as a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=float) if values else np.zeros(0)


def _matrix(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _figure(width: float, height: float, **margins):
    """A figure on an Agg canvas, with fixed margins (a layout engine costs more than the plot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**margins)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _threshold(report: dict, code: str, name: str):
    return ((report.get("config") or {}).get("thresholds") or {}).get(code, {}).get(name)


# -- per (layer, direction) --------------------------------------------------


RIGHT_RGB = np.array([0.70, 0.05, 0.10])  # right-saturated (gate ≈ 1): red
LEFT_RGB = np.array([0.05, 0.25, 0.75])  # left-saturated (gate ≈ 0): blue


def _blend(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """White, tinted red by the right-saturated share and blue by the left one (left + right ≤ 1)."""
    left = np.nan_to_num(np.clip(left, 0, 1))[..., None]
    right = np.nan_to_num(np.clip(right, 0, 1))[..., None]
    return np.clip(1 - right * (1 - RIGHT_RGB) - left * (1 - LEFT_RGB), 0, 1)


def saturation_heatmap(st: dict) -> bytes:
    """Per gate, units (rows) × steps (columns), coloured by the shares left- and right-saturated."""
    heat = st["saturation_heatmap"]
    steps, units = heat["step_edges"], heat["unit_edges"]
    gates = [g for g in SIGMOID_GATES if g in heat["gates"]]
    height = 0.9 + 2.3 * len(gates)
    top, bottom = 1 - 0.35 / height, 0.55 / height
    fig = _figure(10, height, left=0.07, right=0.855, top=top, bottom=bottom, hspace=0.35)
    axes = fig.subplots(len(gates), 1, sharex=True, squeeze=False)[:, 0]
    for ax, g in zip(axes, gates):
        rgb = _blend(_matrix(heat["gates"][g]["left"]), _matrix(heat["gates"][g]["right"]))
        ax.imshow(rgb, extent=(steps[0], steps[-1], units[-1], units[0]), aspect="auto", interpolation="nearest")
        ax.set_ylabel("unit")
        sat = st["gates"][g]
        ax.set_title(
            f"{GATE_NAMES[g]}: {sat['saturated']:.0%} saturated "
            f"({sat['left']:.0%} left, {sat['right']:.0%} right); "
            f"{sat['units_saturated_90pct']}/{st['H']} units ≥ 90% of the time",
            fontsize=10,
            loc="left",
        )
    axes[-1].set_xlabel("step (processing order)")
    # The colour key: a triangle of (left share, right share), as in the scatter plot.
    size = 0.8  # inches
    key = fig.add_axes((0.9, top - (size + 0.15) / height, size / 10, size / height))
    grid = np.linspace(0, 1, 101)
    left, right = np.meshgrid(grid, grid)
    rgba = np.concatenate([_blend(left, right), (left + right <= 1.0001)[..., None].astype(float)], axis=-1)
    key.imshow(rgba, origin="lower", extent=(0, 1, 0, 1), interpolation="nearest")
    key.set_xlabel("share left", fontsize=8, labelpad=1)
    key.set_ylabel("share right", fontsize=8, labelpad=1)
    key.set_xticks([0, 1])
    key.set_yticks([0, 1])
    key.tick_params(labelsize=7, pad=1)
    key.set_title("colour key", fontsize=8)
    return _png(fig)


def saturation_scatter(st: dict) -> bytes:
    """Karpathy et al. (2015), fig. 3: per unit, share of time left- vs right-saturated."""
    fig = _figure(10, 3.6, left=0.07, right=0.99, top=0.91, bottom=0.15, wspace=0.25)
    axes = fig.subplots(1, len(SIGMOID_GATES), squeeze=False)[0]
    for ax, g in zip(axes, SIGMOID_GATES):
        sat = st["gates"][g]
        x, y = _array(sat["unit_left"]), _array(sat["unit_right"])
        ax.fill_between([0, 1], [1, 0], [1, 1], color="#eeeeee", zorder=0)  # impossible: left + right > 1
        ax.plot([0, 1], [1, 0], color="#999999", lw=0.8, zorder=1)
        ax.scatter(x, y, s=18, alpha=0.7, color=GATE_COLORS[g], edgecolors="none", zorder=2)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_aspect("equal")
        ax.set_title(f"{GATE_NAMES[g]} ({len(x)} units)", fontsize=10)
        ax.set_xlabel("share of time left-saturated (< 0.1)")
        if g == SIGMOID_GATES[0]:
            ax.set_ylabel("share of time right-saturated (> 0.9)")
    return _png(fig)


def state_bands(st: dict) -> bytes:
    """Mean of h and c per step, with the sample's 5–95 and 25–75 percentile bands and median."""
    fig = _figure(10, 3.6, left=0.07, right=0.99, top=0.91, bottom=0.15, wspace=0.2)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    pct = st.get("percentiles_from_sample") or {}
    for ax, name, mean_key, color in (
        (axes[0], "h", "mean_h_per_step", "#1f77b4"),
        (axes[1], "c", "mean_c_per_step", "#d62728"),
    ):
        mean = _array(st[mean_key])
        t = np.arange(len(mean))
        band = pct.get(name)
        if band:
            p = {k: _array(v) for k, v in band.items()}
            tb = np.arange(len(p["p50"]))
            ax.fill_between(tb, p["p5"], p["p95"], color=color, alpha=0.15, lw=0, label="5–95th percentile")
            ax.fill_between(tb, p["p25"], p["p75"], color=color, alpha=0.3, lw=0, label="25–75th percentile")
            ax.plot(tb, p["p50"], color=color, lw=1, ls="--", label="median")
        ax.plot(t, mean, color="black", lw=1.4, label="mean (all sequences)")
        ax.axhline(0, color="#999999", lw=0.6)
        ax.set_xlabel("step (processing order)")
        ax.set_title(f"{'hidden state h' if name == 'h' else 'cell state c'} over steps", fontsize=10)
        ax.margins(x=0)
    axes[0].legend(fontsize=8, loc="best")
    return _png(fig)


def saturation_per_step(st: dict, report: dict) -> bytes:
    """Share of gate values saturated at each step, per gate."""
    fig = _figure(10, 3.2, left=0.08, right=0.99, top=0.88, bottom=0.16)
    ax = fig.subplots()
    for g in SIGMOID_GATES:
        y = _array(st["gates"][g]["saturated_per_step"])
        ax.plot(np.arange(len(y)), y, color=GATE_COLORS[g], lw=1.4, label=GATE_NAMES[g])
    for name, label in (("share", "S301 warning share"), ("error_share", "S301 error share")):
        value = _threshold(report, "S301", name)
        if value is not None:
            ax.axhline(value, color="#999999", lw=0.8, ls=":")
            ax.text(
                0.005,
                value,
                f"{label} {value:g}",
                transform=ax.get_yaxis_transform(),
                ha="left",
                va="bottom",
                fontsize=8,
                color="#666666",
            )
    ax.set_ylim(-0.02, 1.02)
    ax.margins(x=0)
    ax.set_xlabel("step (processing order)")
    ax.set_ylabel("fraction saturated")
    ax.legend(fontsize=8, ncol=3, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    return _png(fig)


def energy_shares(st: dict) -> bytes:
    """Per gate block: the input, recurrent, peephole and bias shares of the pre-activation energy."""
    shares = st["preactivation"]["energy_share"]
    gates = [g for g in ("i", "f", "g", "o") if g in shares]
    height = 1.3 + 0.5 * len(gates)
    fig = _figure(10, height, left=0.14, right=0.86, top=1 - 0.45 / height, bottom=0.6 / height)
    ax = fig.subplots()
    y = np.arange(len(gates))
    left = np.zeros(len(gates))
    for term, color in TERM_COLORS.items():
        width = np.array([shares[g].get(term) or 0.0 for g in gates])
        ax.barh(y, width, left=left, color=color, label=term, height=0.6)
        left += width
    for k, g in enumerate(gates):
        value = shares[g].get("input")
        text = "n/a" if value is None else (f"{value:.1%}" if value >= 0.001 else f"{value:.1e}")
        ax.text(1.01, k, f"input {text}", va="center", fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_yticks(y, [GATE_NAMES[g] for g in gates])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of E[z²]: input x·W, recurrent h·U, peephole p·c, bias b")
    ax.legend(fontsize=8, ncol=4, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    return _png(fig)


LOG_SCALE_RATIO = 100.0  # a y axis whose positive values span more than this ratio is drawn log-scale
HORIZON_COLOR = "#ef6c00"
INPUT_NORM = r"$\|\partial h_T / \partial x_t\|$"
STATE_NORM = r"$\|\partial h_T / \partial h_t\|$"


def sensitivity_strip(grad: dict) -> bytes:
    """Per step, the sample mean of ‖∂h_T/∂x_t‖ and ‖∂h_T/∂h_t‖, the memory horizon shaded.

    The report stores the series by lag (index 0 = last step); they are drawn
    in processing order, last step on the right, so the horizon (the last
    ``memory_horizon`` steps) is the shaded span at the right end, from step
    T − horizon on. Each step is a unit-wide cell: the span and its dashed
    edge start half a step before T − horizon.
    """
    series = (  # (values in processing order, legend, colour)
        (_array(grad["input_sensitivity_by_lag"])[::-1], f"{INPUT_NORM}: input at step t", "#1f77b4"),
        (_array(grad["state_sensitivity_by_lag"])[::-1], f"{STATE_NORM}: hidden state, $c_t$ held", "#555555"),
    )
    T = len(series[0][0])
    fig = _figure(10, 3.4, left=0.08, right=0.99, top=0.86, bottom=0.15)
    ax = fig.subplots()
    values = np.concatenate([y for y, _, _ in series])
    positive = values[np.isfinite(values) & (values > 0)]
    log = positive.size > 0 and positive.max() > LOG_SCALE_RATIO * positive.min()
    if log:
        ax.set_yscale("log")
    marker = "o" if T <= 64 else None  # short sequences: show the individual steps
    for y, label, color in series:
        if log:
            y = np.where(y > 0, y, np.nan)  # a zero has no place on a log axis: a gap
        ax.plot(np.arange(T), y, color=color, lw=1.4, marker=marker, ms=3, label=label)
    horizon = grad["memory_horizon"]
    if horizon > 0:
        edge = T - horizon - 0.5
        ax.axvspan(edge, T - 0.5, color=HORIZON_COLOR, alpha=0.15, lw=0)
        ax.axvline(edge, color=HORIZON_COLOR, lw=1.2, ls="--")
        label = (
            f"memory horizon {horizon} of {T} steps: the steps t ≥ T − {horizon} = {T - horizon} "
            f"hold {grad['horizon_share']:.0%} of " + r"$\Sigma_t\,\|\partial h_T / \partial x_t\|^2$"
        )
        room_on_left = edge > (T - 1) / 2
        ax.text(
            edge,
            0.96,
            f"{label}  " if room_on_left else f"  {label}",
            transform=ax.get_xaxis_transform(),
            ha="right" if room_on_left else "left",
            va="top",
            fontsize=9,
            color=HORIZON_COLOR,
        )
    else:
        ax.text(
            0.5,
            0.5,
            "memory horizon 0: h_T depends on no step's input",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color=HORIZON_COLOR,
        )
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_xlabel("step t (processing order; the last step, T − 1, on the right)")
    ax.set_ylabel("mean Frobenius norm" + (", log scale" if log else ""))
    ax.legend(fontsize=9, ncol=2, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False)
    return _png(fig)


# -- encodings -----------------------------------------------------------------


def cosine_matrix(enc: dict) -> bytes:
    matrix = np.ma.masked_invalid(_matrix(enc["cosine_matrix"]))
    fig = _figure(5.8, 4.8, left=0.11, right=0.80, top=0.97, bottom=0.11)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xlabel("sequence")
    ax.set_ylabel("sequence")
    cax = fig.add_axes((0.83, 0.11, 0.03, 0.86))
    fig.colorbar(image, cax=cax, label="cosine similarity of final encodings")
    return _png(fig)


def _where(st: dict) -> str:
    return f"layer {st['layer']} {st['direction']}"


def _gradients_of(stats: dict, st: dict) -> dict | None:
    """The ``--gradients`` section when it was computed for ``st``'s layer and direction, else None."""
    grad = stats.get("gradients")
    if grad and (grad["layer"], grad["direction"]) == (st["layer"], st["direction"]):
        return grad
    return None


def _sensitivity_plot(key: str, grad: dict, report: dict) -> Plot:
    """The sensitivity strip of the (layer, direction) ``key``, captioned with how it was measured."""
    method = (
        "exact Jacobian norms (one seed per unit)"
        if grad["exact"]
        else f"a Hutchinson estimate from {grad['probes']} fixed ±1 (Rademacher) probes"
    )
    aligned = (
        " Sequences of different lengths are aligned at their last valid step."
        if (report.get("inputs") or {}).get("lengths_given")
        else ""
    )
    return Plot(
        f"{key}-sensitivity-strip",
        "Sensitivity strip: what the final encoding depends on, per step",
        f"Per step t, the mean over the first {plural(grad['sequences'], 'sequence')} of the Frobenius norms "
        "‖∂h_T/∂x_t‖ (how far the final encoding moves with the input at step t) and ‖∂h_T/∂h_t‖ (with "
        f"the hidden state at step t, c_t held), by reverse-mode differentiation through the steps ({method}).{aligned} "
        f"Shaded: the memory horizon, the fewest final steps (here {grad['memory_horizon']}) that hold "
        f"{grad['horizon_share']:.0%} of Σ_t ‖∂h_T/∂x_t‖²; inputs before it barely reach the encoding, "
        "and a curve that falls by decades within a few steps is a vanishing gradient (G701).",
        sensitivity_strip(grad),
    )


def report_plots(report: dict, prefix: str = "") -> list[Section]:
    """Every plot of ``report``, in sections; empty when the report has no statistics."""
    stats = report.get("statistics")
    if not stats:
        return []
    sections = []
    for st in stats["layers"]:
        key = f"{prefix}l{st['layer']}-{st['direction']}"
        sample = st.get("sample_sequences")
        plots = (
            Plot(
                f"{key}-saturation-heatmap",
                "Gate saturation, units × steps",
                "Each cell is a (unit, step) bin, tinted red by the share of sequences whose gate is > 0.9 "
                "there (right-saturated, open) and blue by the share < 0.1 (left-saturated, closed); purple "
                "cells flip with the input, white cells stay in the linear range. Solid rows across all "
                "steps are units pinned whatever the input.",
                saturation_heatmap(st),
            ),
            Plot(
                f"{key}-saturation-scatter",
                "Left vs right saturation per unit (Karpathy et al. 2015)",
                "One dot per unit: the share of its values (over steps and sequences) below 0.1 (x) and "
                "above 0.9 (y). Dots near the origin are units in the linear range; dots on the diagonal "
                "line are saturated all the time.",
                saturation_scatter(st),
            ),
            Plot(
                f"{key}-state-bands",
                "Hidden and cell state over steps",
                f"Black: the mean over all sequences and units. Bands: percentiles over the units of the "
                f"first {plural(sample, 'sequence')} (the kept sample). A healthy cell stays bounded; a cell that "
                f"keeps growing integrates instead of remembering (C401).",
                state_bands(st),
            ),
            Plot(
                f"{key}-saturated-per-step",
                "Fraction of gate values saturated, per step",
                "Per gate, the share of (sequence, unit) values below 0.1 or above 0.9 at each step; the "
                "dotted lines are S301's thresholds from this report's configuration.",
                saturation_per_step(st, report),
            ),
            Plot(
                f"{key}-preactivation-energy",
                "What drives the gates: shares of the pre-activation energy",
                "Per gate block, E[(x·W)²], E[(h·U)²], E[(p·c)²] and mean b² over their sum. When the "
                "input's share is tiny (I501), the output cannot depend on the input.",
                energy_shares(st),
            ),
        )
        grad = _gradients_of(stats, st)
        if grad is not None:
            plots += (_sensitivity_plot(key, grad, report),)
        sections.append(Section(key, _where(st), plots))
    enc = stats.get("encoding")
    if enc and enc.get("cosine_matrix"):
        n = len(enc["cosine_matrix"])
        mean = enc.get("mean_pairwise_cosine")
        rank = enc.get("effective_rank")
        summary = (
            f"mean pairwise cosine {mean:.6f} over all {plural(enc['sequences'], 'sequence')}"
            if mean is not None
            else "mean pairwise cosine undefined"
        ) + (f"; effective rank {rank:.3g} of {enc['size']}" if rank is not None else "")
        sections.append(
            Section(
                f"{prefix}encodings",
                "Final encodings",
                (
                    Plot(
                        f"{prefix}encodings-cosine-matrix",
                        "Cosine similarity of final encodings",
                        f"Pairwise cosine similarity of the final encodings of the first {plural(n, 'sequence')} ({summary}). "
                        "Distinct inputs should give a varied matrix; a uniformly red matrix means every "
                        "input gives the same vector (H601).",
                        cosine_matrix(enc),
                    ),
                ),
            )
        )
    return sections
