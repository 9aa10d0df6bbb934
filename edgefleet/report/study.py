"""The "which runtime is fastest on my CPU" study: one table and three plots over every format.

Rows come from the same ReportTable the benchmark report uses, so the study's numbers are the
collected measurements, never recomputed. A variant with no measurement stays in the table as
"missing" with its reason, never as zero.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.evaluation.kinds import METRIC_LABELS
from edgefleet.report.plots import _figure, latency_plot, pareto_plot
from edgefleet.report.tables import EMULATED_NOTE, ReportRow, ReportTable


@dataclass(frozen=True)
class StudyRow:
    variant: str
    runtime: str
    status: str
    reason: str | None
    latency_ms: dict[int, float | None]      # threads -> p50
    first_inference_ms: float | None
    accuracy: float | None
    accuracy_delta: float | None


@dataclass(frozen=True)
class StudyPaths:
    table: Path
    latency_plot: Path
    accuracy_plot: Path
    pareto_plot: Path | None


def study_rows(rows: Sequence[ReportRow], reference: str = "tflite-fp32") -> list[StudyRow]:
    variants = sorted({r.variant for r in rows})
    ref_acc = next((r.accuracy for r in rows if r.variant == reference and r.accuracy is not None), None)
    out = []
    for variant in variants:
        cells = sorted((r for r in rows if r.variant == variant), key=lambda r: r.threads)
        ok = [c for c in cells if c.status == "ok"]
        accuracy = next((c.accuracy for c in cells if c.accuracy is not None), None)
        out.append(StudyRow(
            variant=variant, runtime=cells[0].runtime,
            status="ok" if ok else cells[0].status,
            reason=None if ok else cells[0].reason,
            latency_ms={c.threads: c.p50_ms for c in cells},
            first_inference_ms=min((c.first_inference_ms for c in ok if c.first_inference_ms is not None),
                                   default=None),
            accuracy=accuracy,
            accuracy_delta=(accuracy - ref_acc) if accuracy is not None and ref_acc is not None else None,
        ))
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def study_markdown(study: Sequence[StudyRow], metric: str, emulated: bool) -> str:
    threads = sorted({t for row in study for t in row.latency_ms})
    head = ["variant", "runtime", *(f"p50 ms @{t} thr" for t in threads), "first ms", METRIC_LABELS.get(metric, metric),
            "Δ vs fp32",
            "status"]
    lines = ["# Runtime study", ""]
    if emulated:
        lines += [f"> emulated: true — {EMULATED_NOTE}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in study:
        reason = " ".join((row.reason or "").split()).replace("|", "/")  # one line, no table breaks
        status = row.status if row.status == "ok" else f"{row.status}: {reason}".strip()
        delta = "—" if row.accuracy_delta is None else f"{row.accuracy_delta:+.4f}"
        cells = [row.variant, row.runtime, *(_fmt(row.latency_ms.get(t)) for t in threads),
                 _fmt(row.first_inference_ms), _fmt(row.accuracy, 4), delta, status]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def accuracy_bar_plot(study: Sequence[StudyRow], metric: str, path: Path) -> Path:
    figure = _figure(7.0, 4.0)
    axes = figure.add_subplot(1, 1, 1)
    names = [r.variant for r in study]
    values = [r.accuracy if r.accuracy is not None else 0.0 for r in study]
    bars = axes.bar(range(len(names)), values, color=["tab:blue" if r.accuracy is not None else "white"
                                                      for r in study], edgecolor="tab:blue")
    for bar, row in zip(bars, study):
        label = f"{row.accuracy:.3f}" if row.accuracy is not None else "missing"
        axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", fontsize=7,
                      xytext=(0, 3), textcoords="offset points")
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per format", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def render_study(table: ReportTable, out_dir: Path, metric: str, gate: float | None = None) -> StudyPaths:
    """The table and plots; ``gate`` is the accuracy gate's floor in ``metric``, drawn on the time-vs-accuracy plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study = study_rows(table.rows)
    table_path = out_dir / "study.md"
    table_path.write_text(study_markdown(study, metric, table.any_emulated))
    device = sorted({r.device for r in table.rows})[0]
    return StudyPaths(
        table=table_path,
        latency_plot=latency_plot(table.rows, device, out_dir / "study-latency.png"),
        accuracy_plot=accuracy_bar_plot(study, metric, out_dir / "study-accuracy.png"),
        pareto_plot=pareto_plot(table.rows, metric, out_dir / "study-time-vs-accuracy.png", gate=gate),
    )
