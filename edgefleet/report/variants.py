"""The per device x variant view: size, accuracy (Δ vs fp32), first inference and p50 at every thread count.

One row per artifact and delegate on a device, built from the cells table's rows
(latencies and flags) and the accuracy records collect scored from the on-device
evaluation. Markdown, HTML, CSV, JSON and the terminal all render these rows.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.evaluation.kinds import METRIC_LABELS, shown_metrics
from edgefleet.report.tables import (FLAG_GATE_FAILED, FLAG_UNSTABLE, GATE_METRIC, Column, ReportRow, ReportTable,
                                     format_number, format_value)
from edgefleet.results.db import AccuracyRecord, CellRecord, ResultsDB



@dataclass(frozen=True)
class VariantRow:
    run_id: str
    device: str
    emulated: bool
    variant: str
    runtime: str
    delegate: str | None
    size_mb: float | None
    metrics: dict[str, float] = field(default_factory=dict)       # map_50_95, delta_map_50_95, ...
    first_inference_ms: float | None = None                       # at the lowest thread count
    p50_ms: dict[int, float | None] = field(default_factory=dict)  # threads -> p50
    eval_ms: float | None = None                                  # p50 of invoke alone, eval images
    eval_post_ms: float | None = None                             # p50 of invoke + postprocess
    gate: str | None = None                                       # "passed" | "failed" | None
    gate_reason: str | None = None
    flags: tuple[str, ...] = ()
    unstable_threads: tuple[int, ...] = ()                        # the thread counts whose cell was flagged

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["p50_ms"] = {str(k): v for k, v in self.p50_ms.items()}
        data["flags"] = list(self.flags)
        return data


@dataclass(frozen=True)
class VariantTable:
    rows: tuple[VariantRow, ...]
    threads: tuple[int, ...]
    metrics: tuple[str, ...]        # the evaluation kind's shown metrics, gated first, or ()

    @property
    def has_accuracy(self) -> bool:
        return bool(self.metrics)

    @property
    def columns(self) -> tuple[Column, ...]:
        columns = [Column("device", "device"), Column("emulated", "emulated"), Column("variant", "variant"),
                   Column("delegate", "delegate"), Column("size_mb", "size MB", numeric=True)]
        for metric in self.metrics:
            label = METRIC_LABELS.get(metric, metric)
            columns.append(Column(metric, f"{label} (Δ vs fp32)", numeric=True))
        columns.append(Column("first_inference_ms", "first ms", numeric=True))
        columns.extend(Column(f"p50_t{t}", f"p50 ms t{t}", numeric=True) for t in self.threads)
        if self.metrics:
            columns += [Column("eval_ms", "eval ms/img", numeric=True),
                        Column("eval_post_ms", "eval+post ms/img", numeric=True), Column("gate", "accuracy gate")]
        columns.append(Column("flags", "flags"))
        return tuple(columns)

    def text(self, row: VariantRow, key: str) -> str:
        if key in self.metrics:
            value = row.metrics.get(key)
            if value is None:
                return "—"
            delta = row.metrics.get(f"delta_{key}")
            return format_number(value) + (f" ({signed_points(delta)})" if delta is not None else "")
        if key.startswith("p50_t"):
            return format_value("p50_ms", row.p50_ms.get(int(key[5:])))
        return format_value(key, getattr(row, key))

    def value(self, row: VariantRow, key: str) -> Any:
        """The raw value of a column, for CSV."""
        if key in self.metrics:
            return row.metrics.get(key)
        if key.startswith("p50_t"):
            return row.p50_ms.get(int(key[5:]))
        if key == "flags":
            return ";".join(row.flags)
        return getattr(row, key)

    def to_json(self) -> dict[str, Any]:
        return {"threads": list(self.threads), "metrics": list(self.metrics),
                "rows": [row.to_json() for row in self.rows]}


def signed_points(delta: float) -> str:
    """A metric difference in points (hundredths): the unit the accuracy gate is stated in."""
    points = round(delta * 100.0, 2) + 0.0  # + 0.0: no "-0.00"
    return f"{'+' if points >= 0 else '−'}{abs(points):.2f} pt"


def _group_records(records: Sequence[AccuracyRecord], rows: Sequence[ReportRow]) -> list[AccuracyRecord]:
    cells = {(r.run_id, r.device, r.cell) for r in rows}
    own = [a for a in records if (a.run_id, a.device, a.cell) in cells]
    if own:
        return own
    # Records written for the variant as a whole (no device or cell), as other evaluators may.
    first = rows[0]
    return [a for a in records if a.run_id == first.run_id and a.variant == first.variant
            and a.device in ("", first.device) and a.cell == ""]


def _eval_latency(cells: Sequence[CellRecord]) -> tuple[float | None, float | None]:
    for cell in cells:
        evaluation = cell.raw_json.get("eval")
        if isinstance(evaluation, dict) and evaluation.get("status") == "ok":
            return ((evaluation.get("latency_ms") or {}).get("p50"),
                    (evaluation.get("latency_with_postprocess_ms") or {}).get("p50"))
    return None, None


def _size_mb(cells: Sequence[CellRecord]) -> float | None:
    sizes = [c.raw_json.get("artifact_bytes") for c in cells]
    size = next((s for s in sizes if isinstance(s, int)), None)
    return size / 1e6 if size is not None else None


def build_variant_table(db: ResultsDB, table: ReportTable) -> VariantTable:
    run_ids = sorted({r.run_id for r in table.rows})
    records = db.accuracy(run_ids) if run_ids else []
    raw_cells = {(c.run_id, c.device, c.cell): c for c in db.cells(run_ids)} if run_ids else {}
    groups: dict[tuple[str, str, str, str | None], list[ReportRow]] = {}
    for row in table.rows:
        groups.setdefault((row.run_id, row.device, row.variant, row.delegate), []).append(row)
    metric_names = {a.metric for a in records}
    metrics = shown_metrics(metric_names)
    rows = []
    for (run_id, device, variant, delegate), members in groups.items():
        members = sorted(members, key=lambda r: r.threads)
        cells = [raw_cells[(r.run_id, r.device, r.cell)] for r in members if (r.run_id, r.device, r.cell) in raw_cells]
        found = _group_records(records, members)
        values = {a.metric: a.value for a in found}
        gate_record = next((a for a in found if a.metric == GATE_METRIC), None)
        eval_ms, eval_post_ms = _eval_latency(cells)
        flags = tuple(dict.fromkeys(flag for r in members for flag in r.flags))
        if gate_record is not None and gate_record.value < 1 and FLAG_GATE_FAILED not in flags:
            flags += (FLAG_GATE_FAILED,)
        first = next((r for r in members if r.status == "ok"), members[0])
        rows.append(VariantRow(
            run_id=run_id, device=device, emulated=any(r.emulated for r in members), variant=variant,
            runtime=first.runtime, delegate=delegate, size_mb=_size_mb(cells),
            metrics={k: v for k, v in values.items() if k != GATE_METRIC},
            first_inference_ms=first.first_inference_ms,
            p50_ms={r.threads: r.p50_ms for r in members}, eval_ms=eval_ms, eval_post_ms=eval_post_ms,
            gate=None if gate_record is None else ("passed" if gate_record.value >= 1 else "failed"),
            gate_reason=gate_record.evaluator if gate_record is not None else None, flags=flags,
            unstable_threads=tuple(r.threads for r in members if FLAG_UNSTABLE in r.flags)))
    rows.sort(key=lambda r: (r.device, r.run_id, r.variant, r.delegate or ""))
    threads = tuple(sorted({r.threads for r in table.rows}))
    return VariantTable(tuple(rows), threads, metrics)


def write_variants_csv(variants: VariantTable, path: Path) -> Path:
    columns = [c for c in variants.columns]
    extra = [f"delta_{m}" for m in variants.metrics] + ["run_id", "runtime", "gate_reason"]
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([c.key for c in columns] + extra)
        for row in variants.rows:
            writer.writerow([variants.value(row, c.key) for c in columns] +
                            [row.metrics.get(k) if k.startswith("delta_") else getattr(row, k) for k in extra])
    return Path(path)


def write_variants_json(variants: VariantTable, path: Path) -> Path:
    Path(path).write_text(json.dumps(variants.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def rich_variant_table(variants: VariantTable) -> Any:
    """The terminal's view: the files carry every column, the screen the ones people compare."""
    from rich.table import Table

    hidden = {"emulated", "eval_ms", "flags"}
    if all(row.delegate is None for row in variants.rows):
        hidden.add("delegate")
    shown = [c for c in variants.columns if c.key not in hidden]
    out = Table(title="by variant: size, accuracy (Δ vs fp32 in points) and latency")
    for column in shown:
        out.add_column(column.header, justify="right" if column.numeric else "left",
                       no_wrap=column.key in ("variant", "gate", *variants.metrics))
    for row in variants.rows:
        style = "red" if FLAG_GATE_FAILED in row.flags else None
        cells = [variants.text(row, c.key) if c.key != "gate" else
                 (FLAG_GATE_FAILED if row.gate == "failed" else variants.text(row, c.key)) for c in shown]
        out.add_row(*cells, style=style)
    return out
