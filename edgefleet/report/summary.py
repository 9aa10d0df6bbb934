"""The report's first screen: per device, the fastest variant within the accuracy gate, and what each
quantization step cost in accuracy and gained in speed against the device's fp32 reference.

Pure functions over the by-variant rows (variants.VariantRow), so tests pin them as tables. The
gate's verdict is the one collect stored (``row.gate``); nothing here judges accuracy again.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from edgefleet.evaluation.kinds import METRIC_LABELS
from edgefleet.report.tables import FLAG_INVALID_ARTIFACT, FLAG_UNSTABLE, format_number
from edgefleet.report.variants import VariantRow, VariantTable, signed_points

# How the summary compares speeds; the templates print it as the table's caption.
SPEED_RULE = ("Each variant at its fastest measured setting (thread count and delegate) whose timing was not "
              "flagged unstable, the fp32 reference at its own; speed-up = the reference's p50 ÷ the variant's p50.")
DELTA_RULE = ("Δ is the accuracy change against the fp32 reference in points (hundredths of the metric), the "
              "figure the accuracy gate judges.")


def caption(summaries: Sequence[DeviceSummary]) -> str:
    """How to read the summary's tables: the speed rule, and the Δ rule where accuracy was measured."""
    return SPEED_RULE + (" " + DELTA_RULE if any(s.metric for s in summaries) else "")

# The scorer's verdict names its floor in text only: "... vs tflite-fp32's 0.9575 (limit -2.00 points)".
_LIMIT = re.compile(r"vs (?P<against>.+?)'s (?P<value>-?\d+(?:\.\d+)?) \(limit (?P<limit>[+-]?\d+(?:\.\d+)?) points\)")
_SOURCE = "the source model"


@dataclass(frozen=True)
class Setting:
    """A variant at one thread count and delegate: one p50, with the variant's accuracy and verdict."""
    variant: str
    delegate: str | None
    threads: int
    p50_ms: float
    size_mb: float | None
    accuracy: float | None
    delta: float | None      # vs the fp32 reference, in the metric's own unit (a fraction)
    gate: str | None         # "passed" | "failed" | None (not judged)
    flags: tuple[str, ...]

    @property
    def where(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return threads + (f", {self.delegate}" if self.delegate else "")

    @property
    def within_gate(self) -> bool:
        # A checksum mismatch means the measured file was not the built one: its verdict proves nothing.
        return self.gate == "passed" and FLAG_INVALID_ARTIFACT not in self.flags


@dataclass(frozen=True)
class Step:
    """One variant at its fastest setting, against the fp32 reference at its own."""
    setting: Setting
    speedup: float | None    # reference p50 / this p50: 2.0 is twice as fast
    is_reference: bool


@dataclass(frozen=True)
class DeviceSummary:
    label: str               # the device, with the run when a report holds several runs of it
    device: str
    run_id: str
    emulated: bool
    metric: str | None       # the gate's metric, None when nothing was evaluated
    reference: Setting | None
    fastest: Setting | None  # within the gate; the fastest measured when nothing was evaluated
    steps: tuple[Step, ...]
    gate_floor: float | None
    headline: str

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric) if self.metric else "accuracy"


def settings(row: VariantRow, metric: str | None) -> list[Setting]:
    """Every measured thread count of a by-variant row."""
    accuracy = row.metrics.get(metric) if metric else None
    delta = row.metrics.get(f"delta_{metric}") if metric else None
    # The row's flags are its cells' together; "unstable" belongs to the thread counts that earned it.
    shared = tuple(f for f in row.flags if f != FLAG_UNSTABLE)
    return [Setting(row.variant, row.delegate, threads, p50, row.size_mb, accuracy, delta, row.gate,
                    shared + ((FLAG_UNSTABLE,) if threads in row.unstable_threads else ()))
            for threads, p50 in sorted(row.p50_ms.items()) if p50 is not None]


def steadiest_first(setting: Setting) -> tuple[bool, float]:
    """A setting whose runs were spread is never "fastest" over a steady one: its p50 may be luck."""
    return FLAG_UNSTABLE in setting.flags, setting.p50_ms


def fastest(candidates: Sequence[Setting], reference: str | None = None) -> Setting | None:
    """The lowest p50; on a tie the reference (no reason to ship a quantized copy), then the more accurate."""
    return min(candidates, key=lambda s: (s.p50_ms, s.variant != reference, -(s.accuracy or 0.0), s.variant,
                                          s.threads), default=None)


def reference_variant(names: Sequence[str]) -> str | None:
    """The variant the Δ figures are against, by the scorer's own rule: tflite-fp32, else the first fp32-like."""
    # Imported here: the scorer imports the report's tables, so a module-level import would be circular.
    from edgefleet.evaluation.score_run import REFERENCE_VARIANT, is_fp32_like

    if REFERENCE_VARIANT in names:
        return REFERENCE_VARIANT
    return next((name for name in sorted(names) if is_fp32_like(name)), None)


def gate_floor(rows: Sequence[VariantRow]) -> float | None:
    """The lowest figure that passes the gate, read from the verdicts collect stored.

    A variant's verdict names the reference's figure and the allowed drop; the reference's own verdict
    (against the source model) counts only when no other variant was judged. With several references (one
    per delegate), the strictest floor.
    """
    against_variant, against_source = [], []
    for row in rows:
        for match in _LIMIT.finditer(row.gate_reason or ""):
            floor = float(match["value"]) + float(match["limit"]) / 100.0
            (against_source if match["against"] == _SOURCE else against_variant).append(floor)
    floors = against_variant or against_source
    return max(floors) if floors else None


def with_delta(setting: Setting, reference: Setting | None) -> Setting:
    """The Δ collect stored; computed from the two figures only for records written without one."""
    if setting.delta is not None or reference is None or setting.accuracy is None or reference.accuracy is None:
        return setting
    return replace(setting, delta=setting.accuracy - reference.accuracy)


def _steps(best: dict[str, Setting], reference: Setting | None) -> tuple[Step, ...]:
    steps = []
    for name, setting in best.items():
        is_reference = reference is not None and name == reference.variant
        speedup = reference.p50_ms / setting.p50_ms if reference is not None else None
        steps.append(Step(with_delta(setting, reference), speedup, is_reference))
    # The reference first, then fastest to slowest: the order a reader picks in.
    return tuple(sorted(steps, key=lambda s: (not s.is_reference, s.setting.p50_ms, s.setting.variant)))


def headline(metric: str | None, chosen: Setting | None, reference: Setting | None, judged: bool) -> str:
    """One sentence a reader can act on: what to ship on this device, and what it costs."""
    if chosen is None:
        return ("No variant passed the accuracy gate: the by-variant table says why" if judged
                else "No cell was measured")
    label = METRIC_LABELS.get(metric, metric) if metric else ""
    text = f"{chosen.variant} ({chosen.where}), p50 {format_number(chosen.p50_ms)} ms"
    if FLAG_UNSTABLE in chosen.flags:
        text += " (flagged unstable at every setting: see the flags)"
    if reference is not None and chosen.variant != reference.variant:
        text += f": {reference.p50_ms / chosen.p50_ms:.2f}× as fast as {reference.variant}"
        if chosen.delta is not None:
            text += f", {signed_points(chosen.delta)} {label}"
    if not judged:
        return f"Fastest measured (no on-device accuracy evaluation, so no accuracy gate): {text}"
    return f"Fastest within the accuracy gate: {text}"


def device_summary(rows: Sequence[VariantRow], metric: str | None, label: str) -> DeviceSummary:
    all_settings = [s for row in rows for s in settings(row, metric)]
    best: dict[str, Setting] = {}
    for setting in sorted(all_settings, key=lambda s: (*steadiest_first(s), s.threads)):
        best.setdefault(setting.variant, setting)
    reference_name = reference_variant(sorted(best))
    reference = best.get(reference_name) if reference_name else None
    judged = any(s.gate is not None for s in all_settings)
    # Each variant at its best setting (a steady one before a faster one flagged unstable), then the fastest.
    candidates = [s for s in best.values() if s.within_gate] if judged else list(best.values())
    chosen = fastest(candidates, reference_name)
    chosen = with_delta(chosen, reference) if chosen is not None else None
    first = rows[0]
    return DeviceSummary(label=label, device=first.device, run_id=first.run_id,
                         emulated=any(r.emulated for r in rows), metric=metric if judged else None,
                         reference=reference, fastest=chosen, steps=_steps(best, reference),
                         gate_floor=gate_floor(rows), headline=headline(metric, chosen, reference, judged))


def summarize(variants: VariantTable) -> tuple[DeviceSummary, ...]:
    """One summary per device and run: latencies of different boards, or of different runs, do not mix."""
    metric = variants.metrics[0] if variants.metrics else None
    groups: dict[tuple[str, str], list[VariantRow]] = {}
    for row in variants.rows:
        groups.setdefault((row.device, row.run_id), []).append(row)
    runs_of = {device: sum(1 for d, _ in groups if d == device) for device, _ in groups}
    return tuple(device_summary(rows, metric, device if runs_of[device] == 1 else f"{device} (run {run_id})")
                 for (device, run_id), rows in sorted(groups.items()))


def gate_floors(summaries: Sequence[DeviceSummary]) -> dict[str, float]:
    """Device -> the gate's floor, for the time-vs-accuracy plots (one per device)."""
    floors: dict[str, float] = {}
    for summary in summaries:
        if summary.gate_floor is not None:
            floors[summary.device] = max(summary.gate_floor, floors.get(summary.device, summary.gate_floor))
    return floors


SUMMARY_COLUMNS = (("variant", "variant", False), ("where", "fastest setting", False),
                   ("p50_ms", "p50 ms", True), ("speedup", "speed-up vs fp32", True),
                   ("size_mb", "size MB", True), ("accuracy", "", True), ("delta", "Δ vs fp32", True),
                   ("gate", "accuracy gate", False))


def columns(summary: DeviceSummary) -> list[tuple[str, str, bool]]:
    """(key, header, numeric) of the summary's table; the accuracy columns only where accuracy was measured."""
    out = []
    for key, header, numeric in SUMMARY_COLUMNS:
        if key in ("accuracy", "delta", "gate") and summary.metric is None:
            continue
        out.append((key, summary.metric_label if key == "accuracy" else header, numeric))
    return out


def step_text(step: Step, key: str) -> str:
    setting = step.setting
    if key == "variant":
        return setting.variant + (" (reference)" if step.is_reference else "")
    if key == "where":
        return setting.where
    if key == "speedup":
        return "—" if step.speedup is None else f"{step.speedup:.2f}×"
    if key == "delta":
        return "—" if setting.delta is None else signed_points(setting.delta)
    if key == "gate":
        return {"passed": "passed", "failed": "failed"}.get(setting.gate or "", "not judged")
    value = getattr(setting, key)
    return "—" if value is None else format_number(value)
