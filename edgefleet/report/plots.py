"""PNG plots of a report's rows, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""
from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefleet.evaluation.kinds import METRIC_LABELS
from edgefleet.report.tables import EMULATED_NOTE, FLAG_GATE_FAILED, ReportRow, ReportTable

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _title(figure: Any, text: str, emulated: bool) -> str:
    """The plot's title, with the emulation note wrapped to the figure: one long line runs off its edges."""
    if emulated:
        # About 10 characters of a 10-point title per inch of figure.
        text += "\n" + textwrap.fill(f"emulated: true — {EMULATED_NOTE}", int(figure.get_figwidth() * 10))
    return text


def _series_label(row: ReportRow, several_runs: bool) -> str:
    label = f"threads={row.threads}"
    if row.delegate:
        label += f" +{row.delegate}"
    if several_runs:
        label = f"{row.run_id}: {label}"
    return label


def latency_plot(rows: Sequence[ReportRow], device: str, path: Path) -> Path:
    """Grouped bars: one group per variant, one bar per thread count (and delegate); p50 with a whisker to p90."""
    measured = [r for r in rows if r.status == "ok" and r.p50_ms is not None]
    several_runs = len({r.run_id for r in measured}) > 1
    variants = sorted({r.variant for r in measured})
    series = sorted({_series_label(r, several_runs) for r in measured})
    by_key = {(r.variant, _series_label(r, several_runs)): r for r in measured}
    figure = _figure(max(6.0, 1.4 * len(variants) * max(1, len(series)) ** 0.5 + 2), 4.5)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    for index, label in enumerate(series):
        xs, p50, upper = [], [], []
        for position, variant in enumerate(variants):
            row = by_key.get((variant, label))
            if row is None:
                continue
            xs.append(position - 0.4 + width * (index + 0.5))
            p50.append(row.p50_ms)
            upper.append(max(0.0, (row.p90_ms or row.p50_ms) - row.p50_ms))
        axes.bar(xs, p50, width=width * 0.95, label=label,
                 yerr=[[0.0] * len(xs), upper], capsize=3)
    axes.set_xticks(range(len(variants)))
    axes.set_xticklabels(variants, rotation=20, ha="right")
    axes.set_ylabel("latency, ms (bar p50, whisker p90)")
    axes.set_title(_title(figure, f"{device}: latency by variant and threads", any(r.emulated for r in rows)),
                   fontsize=10)
    if series:
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no cell measured", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower latency (x) and higher accuracy (y)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(ox <= x and oy >= y and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


# The smallest accuracy range a time-vs-accuracy plot shows: 2 points (0.02 of a fraction metric). Narrower,
# and a 0.15-point difference fills the axis and reads as a cliff.
MIN_ACCURACY_SPAN = 0.02


def accuracy_limits(values: Sequence[float], gate: float | None = None,
                    min_span: float = MIN_ACCURACY_SPAN) -> tuple[float, float]:
    """The y range of a time-vs-accuracy plot: every point and the gate line, at least ``min_span`` wide."""
    low = min([*values, *([gate] if gate is not None else [])])
    high = max([*values, *([gate] if gate is not None else [])])
    if high - low < min_span:
        middle = (low + high) / 2.0
        low, high = middle - min_span / 2.0, middle + min_span / 2.0
    pad = (high - low) * 0.08  # room for the points' labels at the edges
    low, high = low - pad, high + pad
    # A fraction metric: shift the window rather than show 1.01 or -0.01.
    if high > 1.0 and max(values) <= 1.0:
        low, high = low - (high - 1.0), 1.0
    elif low < 0.0 and min(values) >= 0.0:
        low, high = 0.0, high - low
    return low, high


def pareto_figure(rows: Sequence[ReportRow], metric: str, device: str | None = None,
                  gate: float | None = None) -> Any:
    """The time-vs-accuracy figure (see pareto_plot); None when no cell has both."""
    points_rows = [r for r in rows if r.status == "ok" and r.p50_ms is not None and r.accuracy is not None]
    if not points_rows:
        return None
    points = [(r.p50_ms, r.accuracy) for r in points_rows]
    front = pareto_front(points)
    figure = _figure(7.5, 4.8)
    axes = figure.add_subplot(1, 1, 1)
    series: dict[str, list[int]] = {}
    for index, r in enumerate(points_rows):
        series.setdefault(r.variant if device else f"{r.device}/{r.variant}", []).append(index)
    for name, members in sorted(series.items()):
        failed = any(FLAG_GATE_FAILED in points_rows[i].flags for i in members)
        axes.scatter([points[i][0] for i in members], [points[i][1] for i in members], alpha=0.8,
                     marker="x" if failed else "o", label=f"{name} ({FLAG_GATE_FAILED})" if failed else name)
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="tab:red", linewidth=1.5,
              label="Pareto front", zorder=0)
    for i in front:
        r = points_rows[i]
        text = f"{r.variant}/t{r.threads}" if device else f"{r.device}/{r.variant}/t{r.threads}"
        axes.annotate(text, points[i], fontsize=7, xytext=(4, 4), textcoords="offset points")
    label = METRIC_LABELS.get(metric, metric)
    if gate is not None:
        axes.axhline(gate, color="tab:gray", linestyle="--", linewidth=1,
                     label=f"accuracy gate: {label} ≥ {gate:.4f}")
        # Named on the line too: the legend may sit far from it.
        axes.annotate("accuracy gate", (0.0, gate), xycoords=("axes fraction", "data"), xytext=(4, -10),
                      textcoords="offset points", fontsize=7, color="tab:gray")
    axes.set_ylim(*accuracy_limits([p[1] for p in points], gate))
    axes.set_xlabel("p50 latency, ms")
    axes.set_ylabel(label)
    axes.set_title(_title(figure, f"{device}: time vs {label}" if device else f"latency vs {label}",
                          any(r.emulated for r in points_rows)), fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def pareto_plot(rows: Sequence[ReportRow], metric: str, path: Path, device: str | None = None,
                gate: float | None = None) -> Path | None:
    """Latency vs accuracy with the Pareto front; None (no file) when no cell has both.

    Every cell is a point (a variant at one thread count), one colour per variant; a variant that
    failed the accuracy gate is drawn as crosses, so a fast but broken artifact cannot pass for a
    good trade-off. Only the front's points are labelled: the rest is in the legend. The gate's floor,
    when known, is a dashed line, and the y axis spans at least MIN_ACCURACY_SPAN, so small differences
    look small.
    """
    figure = pareto_figure(rows, metric, device, gate)
    if figure is None:
        return None
    figure.savefig(path, format="png")
    return path


def render_plots(table: ReportTable, out_dir: Path, gate_floors: Mapping[str, float] | None = None
                 ) -> tuple[Path, ...]:
    """Latency per device, and time vs accuracy per device with its gate's floor (device -> floor) drawn."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for device in sorted({r.device for r in table.rows}):
        rows = [r for r in table.rows if r.device == device]
        paths.append(latency_plot(rows, device, out_dir / f"latency-{_UNSAFE.sub('_', device)}.png"))
    if table.accuracy_metric:  # one time-vs-accuracy plot per device: latencies of different boards do not mix
        for device in sorted({r.device for r in table.rows}):
            rows = [r for r in table.rows if r.device == device]
            pareto = pareto_plot(rows, table.accuracy_metric,
                                 out_dir / f"latency-vs-accuracy-{_UNSAFE.sub('_', device)}.png", device,
                                 (gate_floors or {}).get(device))
            if pareto is not None:
                paths.append(pareto)
    return tuple(paths)
