"""The report's rows, built once from the database; markdown, HTML, CSV, JSON and
the terminal table all render these same rows."""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgefleet.errors import ResultsError
from edgefleet.evaluation.kinds import EVALUATORS, METRIC_LABELS
from edgefleet.report import regressions
from edgefleet.report.devices import DeviceRow, build_devices
from edgefleet.results.db import AccuracyRecord, CellRecord, ResultsDB, RunRecord
from edgefleet.results.samples import cell_samples

# True of both kinds of emulated device: the Devices section says which kind each one was.
EMULATED_NOTE = "measured on an emulated device (qemu-user or this host's CPU): latencies are not a real board's"
# The accuracy gate's verdict is stored as this metric (1 passed, 0 failed) once an evaluator writes it.
GATE_METRIC = "accuracy_gate"

FLAG_UNSTABLE = "unstable"
FLAG_THROTTLED = "throttled"
FLAG_HOT = "hot"
FLAG_INVALID_ARTIFACT = "invalid artifact"
FLAG_MISSING_RUNTIME = "missing runtime"
FLAG_ERROR = "error"
FLAG_GATE_FAILED = "accuracy gate failed"
FLAG_REGRESSION = "regression"
# The figure the cells table shows when an evaluation wrote several: the one the accuracy gate judges.
PRIMARY_METRICS = tuple(kind.gate_metric for kind in EVALUATORS.values())


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    numeric: bool = False


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    device: str
    state: str
    emulated: bool
    target: str | None
    model: str | None
    cells_done: int | None
    cells_total: int | None
    started: str | None
    updated: str | None
    error: str | None

    @classmethod
    def from_record(cls, run: RunRecord) -> RunSummary:
        return cls(run.run_id, run.device, run.state, bool(run.emulated), run.target, run.model,
                   run.cells_done, run.cells_total, run.started, run.updated, run.error)


@dataclass(frozen=True)
class ReportRow:
    run_id: str
    device: str
    emulated: bool
    cell: str
    variant: str
    runtime: str
    threads: int
    delegate: str | None
    status: str
    reason: str | None
    run_state: str
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    cv: float | None
    runs: int | None
    first_inference_ms: float | None
    load_ms: float | None
    peak_rss_mb: float | None
    delegate_nodes: int | None
    total_nodes: int | None
    delegate_explicit: bool | None = None
    trimmed_mean_ms: float | None = None
    iqr_ms: float | None = None
    robust_cv: float | None = None
    p99_over_p50: float | None = None
    drift_ratio: float | None = None
    unstable_reasons: tuple[str, ...] = ()
    accuracy: float | None = None
    accuracy_metric: str | None = None
    baseline_p50_ms: float | None = None
    ratio: float | None = None
    flags: tuple[str, ...] = field(default_factory=tuple)
    # Against the baseline (edgefleet.report.regressions): regressed, improved or no significant change; the
    # scorecard bucket; the 95% interval of the ratio of medians (None: no samples, p50 ratio only); and the
    # accuracy metric's change, this run's minus the baseline's.
    verdict: str | None = None
    bucket: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    map_delta: float | None = None
    no_interval: str | None = None

    @property
    def match_key(self) -> tuple[str, str, int, str | None]:
        """What a baseline cell must share with this one to be compared."""
        return (self.device, self.variant, self.threads, self.delegate)

    @property
    def regression(self) -> bool:
        return FLAG_REGRESSION in self.flags

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["flags"] = list(self.flags)
        data["unstable_reasons"] = list(self.unstable_reasons)
        return data


@dataclass(frozen=True)
class ReportTable:
    rows: tuple[ReportRow, ...]
    runs: tuple[RunSummary, ...]
    baseline_run: str | None = None
    regression_threshold: float = 0.10
    accuracy_metric: str | None = None
    devices: tuple[DeviceRow, ...] = ()
    same_as: tuple[tuple[str, str, str, str], ...] = ()  # (run, device, variant, measured as)
    # What differs between this run's setup and the baseline's (runtime, governor, emulation, bench settings).
    baseline_warnings: tuple[str, ...] = ()

    @property
    def compared(self) -> tuple[ReportRow, ...]:
        """The rows with a verdict against the baseline."""
        return tuple(row for row in self.rows if row.verdict)

    @property
    def comparison_summary(self) -> str:
        """Counts per verdict and bucket; "not compared" counts cells with no baseline cell or failed in both."""
        return regressions.summary([_change(row) for row in self.rows])

    @property
    def any_emulated(self) -> bool:
        return any(run.emulated for run in self.runs) or any(row.emulated for row in self.rows)

    @property
    def regressions(self) -> tuple[ReportRow, ...]:
        return tuple(row for row in self.rows if row.regression)

    @property
    def columns(self) -> tuple[Column, ...]:
        columns = [c for c in BASE_COLUMNS]
        if self.accuracy_metric:
            columns.insert(-1, Column("accuracy", METRIC_LABELS.get(self.accuracy_metric, self.accuracy_metric),
                                      numeric=True))
        if self.baseline_run:
            columns[-1:-1] = [Column("baseline_p50_ms", f"p50 ms in {self.baseline_run}", numeric=True),
                              Column("ratio", "p50 ratio", numeric=True)]
        return tuple(columns)

    def text(self, row: ReportRow, key: str) -> str:
        if key == "flags":
            return flags_text(row)
        return format_value(key, getattr(row, key) if key != "coverage" else _coverage(row))

    def to_json(self) -> dict[str, Any]:
        return {"baseline_run": self.baseline_run, "regression_threshold": self.regression_threshold,
                "baseline_warnings": list(self.baseline_warnings),
                "accuracy_metric": self.accuracy_metric, "emulated_note": EMULATED_NOTE,
                "runs": [asdict(run) for run in self.runs], "devices": [d.to_json() for d in self.devices],
                "rows": [row.to_json() for row in self.rows]}


BASE_COLUMNS = (
    Column("run_id", "run"), Column("device", "device"), Column("emulated", "emulated"),
    Column("variant", "variant"), Column("runtime", "runtime"), Column("threads", "threads", numeric=True),
    Column("delegate", "delegate"), Column("status", "status"),
    Column("p50_ms", "p50 ms", numeric=True), Column("p90_ms", "p90 ms", numeric=True),
    Column("p99_ms", "p99 ms", numeric=True), Column("mean_ms", "mean ms", numeric=True),
    Column("trimmed_mean_ms", "trimmed mean ms", numeric=True), Column("iqr_ms", "IQR ms", numeric=True),
    Column("p99_over_p50", "p99/p50", numeric=True), Column("cv", "cv", numeric=True),
    Column("robust_cv", "robust cv", numeric=True), Column("drift_ratio", "drift", numeric=True),
    Column("runs", "runs", numeric=True),
    Column("first_inference_ms", "first ms", numeric=True), Column("load_ms", "load ms", numeric=True),
    Column("peak_rss_mb", "peak RSS MB", numeric=True), Column("coverage", "delegate nodes"),
    Column("flags", "flags"),
)


def format_number(value: float) -> str:
    """Four significant digits, never scientific: latencies span microseconds to seconds."""
    if abs(value) >= 1000:
        return f"{value:.0f}"
    text = f"{value:.4g}"
    if "e" in text:
        text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text


def format_value(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(value) if value else ""
    if key in ("ratio", "p99_over_p50", "drift_ratio"):
        return f"{value:.2f}×"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def flags_text(row: ReportRow) -> str:
    """The flags, ``unstable`` with why: "unstable (cv, drift), throttled"."""
    return ", ".join(f"{flag} ({', '.join(row.unstable_reasons)})" if flag == FLAG_UNSTABLE and row.unstable_reasons
                     else flag for flag in row.flags)


def _coverage(row: ReportRow) -> str | None:
    if row.delegate_nodes is None or row.total_nodes is None:
        return None
    text = f"{row.delegate_nodes}/{row.total_nodes}"
    # TFLite partitions the graph for XNNPACK on its own; say so, or it reads as a delegate we asked for.
    return text + " (runtime default)" if row.delegate_explicit is False and row.delegate_nodes else text


def _pick_metric(records: Sequence[AccuracyRecord]) -> str | None:
    counts = Counter(r.metric for r in records if r.metric != GATE_METRIC)
    if not counts:
        return None
    for metric in PRIMARY_METRICS:
        if metric in counts:
            return metric
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[0][0]


def _accuracy_for(cell: CellRecord, records: Sequence[AccuracyRecord], metric: str) -> float | None:
    """A cell's own figure first, then its variant's on this device, then its variant's anywhere."""
    candidates = [r for r in records if r.run_id == cell.run_id and r.variant == cell.variant and r.metric == metric]
    for wanted in ((cell.device, cell.cell), (cell.device, ""), ("", "")):
        for r in candidates:
            if (r.device, r.cell) == wanted:
                return r.value
    return None


def _row(cell: CellRecord, run: RunRecord | None, records: Sequence[AccuracyRecord],
         metric: str | None) -> ReportRow:
    flags = []
    raw = cell.raw_json
    if cell.unstable:
        flags.append(FLAG_UNSTABLE)
    if cell.throttled:
        flags.append(FLAG_THROTTLED)
    if cell.hot:
        flags.append(FLAG_HOT)
    if not cell.artifact_valid or raw.get("artifact_sha256_actual"):
        flags.append(FLAG_INVALID_ARTIFACT)
    if cell.status == "missing_runtime":
        flags.append(FLAG_MISSING_RUNTIME)
    elif cell.status == "error":
        flags.append(FLAG_ERROR)
    gate = _accuracy_for(cell, records, GATE_METRIC)
    if gate is not None and gate < 1:
        flags.append(FLAG_GATE_FAILED)
    return ReportRow(
        run_id=cell.run_id, device=cell.device, emulated=cell.emulated, cell=cell.cell, variant=cell.variant,
        runtime=cell.runtime, threads=cell.threads, delegate=cell.delegate, status=cell.status,
        reason=cell.reason, run_state=run.state if run else "unknown",
        p50_ms=cell.p50_ms, p90_ms=cell.p90_ms, p99_ms=cell.p99_ms, mean_ms=cell.mean_ms, cv=cell.cv,
        runs=cell.runs, first_inference_ms=cell.first_inference_ms, load_ms=cell.load_ms,
        # The high-water mark says nothing about a cell that never loaded its model.
        peak_rss_mb=cell.peak_rss_kb / 1024.0 if cell.peak_rss_kb is not None and cell.status == "ok" else None,
        delegate_nodes=cell.delegate_nodes, total_nodes=cell.total_nodes,
        delegate_explicit=(raw.get("delegate_coverage") or {}).get("explicit_delegate"),
        trimmed_mean_ms=cell.trimmed_mean_ms, iqr_ms=cell.iqr_ms, robust_cv=cell.robust_cv,
        p99_over_p50=cell.p99_over_p50, drift_ratio=cell.drift_ratio, unstable_reasons=cell.reasons,
        accuracy=_accuracy_for(cell, records, metric) if metric else None, accuracy_metric=metric,
        flags=tuple(flags),
    )


def _change(row: ReportRow) -> regressions.Change | None:
    if not row.verdict:
        return None
    return regressions.Change(row.verdict, row.bucket, row.ratio, row.ci_low, row.ci_high, row.no_interval)


def _side(row: ReportRow, cell: CellRecord | None) -> regressions.Side:
    try:
        samples = cell_samples(cell) if cell is not None and row.status == "ok" else None
    except ResultsError as exc:  # one corrupt field costs that cell its interval, not the report
        return regressions.Side(row.status, row.p50_ms, None, f"its samples do not decode ({exc})")
    return regressions.Side(row.status, row.p50_ms, samples)


def _compare(rows: list[ReportRow], baseline: list[ReportRow], threshold: float,
             cells: Mapping[tuple[str, str, str], CellRecord]) -> list[ReportRow]:
    """Each row against the baseline's cell with its match_key (an ok one first): its verdict with evidence."""
    reference: dict[tuple[str, str, int, str | None], ReportRow] = {}
    for row in sorted(baseline, key=lambda r: r.status == "ok"):
        reference[row.match_key] = row
    compared = []
    for row in rows:
        base = reference.get(row.match_key)
        if base is None:
            compared.append(row)
            continue
        change = regressions.compare(_side(row, cells.get((row.run_id, row.device, row.cell))),
                                     _side(base, cells.get((base.run_id, base.device, base.cell))), threshold)
        if change is None:
            compared.append(replace(row, baseline_p50_ms=base.p50_ms))
            continue
        flags = row.flags + ((FLAG_REGRESSION,) if regressions.is_regression(change) else ())
        delta = row.accuracy - base.accuracy if row.accuracy is not None and base.accuracy is not None else None
        compared.append(replace(row, baseline_p50_ms=base.p50_ms, ratio=change.ratio, flags=flags,
                                verdict=change.verdict, bucket=change.bucket, ci_low=change.ci_low,
                                ci_high=change.ci_high, no_interval=change.no_interval, map_delta=delta))
    return compared


def _warnings(rows: list[ReportRow], baseline: list[ReportRow], cells: Mapping[tuple[str, str, str], CellRecord],
              bench: Mapping[tuple[str, str], Mapping[str, Any]], this_run: str, baseline_run: str) -> tuple[str, ...]:
    """What differs between the setups of matched cells, once per device and setting."""
    reference = {row.match_key: row for row in baseline}
    pairs = []
    for row in rows:
        base = reference.get(row.match_key)
        mine, theirs = cells.get((row.run_id, row.device, row.cell)), \
            cells.get((base.run_id, base.device, base.cell)) if base else None
        if base is None or mine is None or theirs is None:
            continue
        pairs.append((row.device, regressions.setup_of(mine.raw_json, bench.get((row.run_id, row.device))),
                      regressions.setup_of(theirs.raw_json, bench.get((base.run_id, base.device)))))
    return regressions.setup_warnings(pairs, this_run, baseline_run)


def build_table(db: ResultsDB, run_ids: Sequence[str], *, baseline_run: str | None = None,
                regression_threshold: float = 0.10, accuracy_metric: str | None = None,
                bench: Mapping[tuple[str, str], Mapping[str, Any]] | None = None) -> ReportTable:
    """``bench``: each (run, device)'s run.json bench settings where the caller has them, so that a baseline
    comparison can warn when they differ (the database keeps only what the result lines say)."""
    if not run_ids:
        raise ResultsError("a report needs at least one run")
    if regression_threshold < 0:
        raise ResultsError(f"the regression threshold must be >= 0, got {regression_threshold}")
    runs = db.runs(run_ids)
    unknown = sorted(set(run_ids) - {r.run_id for r in runs})
    if unknown:
        raise ResultsError(f"no results for run(s) {', '.join(unknown)} in {db.path}")
    records = db.accuracy(list(run_ids) + ([baseline_run] if baseline_run else []))
    metric = accuracy_metric or _pick_metric([r for r in records if r.run_id in run_ids])
    by_run = {(r.run_id, r.device): r for r in runs}
    cells = db.cells(run_ids)
    rows = [_row(c, by_run.get((c.run_id, c.device)), records, metric) for c in cells]
    warnings: tuple[str, ...] = ()
    if baseline_run:
        base_runs = {(r.run_id, r.device): r for r in db.runs([baseline_run])}
        base_cells = db.cells([baseline_run])
        if not base_cells:
            raise ResultsError(f"the baseline run {baseline_run!r} has no results in {db.path}")
        # The baseline's accuracy too, in the same metric: its change sits in the row.
        baseline = [_row(c, base_runs.get((c.run_id, c.device)), records, metric) for c in base_cells]
        by_key = {(c.run_id, c.device, c.cell): c for c in list(cells) + list(base_cells)}
        warnings = _warnings(rows, baseline, by_key, bench or {}, ", ".join(run_ids), baseline_run)
        rows = _compare(rows, baseline, regression_threshold, by_key)
    return ReportTable(rows=tuple(rows), runs=tuple(RunSummary.from_record(r) for r in runs),
                       baseline_run=baseline_run, regression_threshold=regression_threshold,
                       accuracy_metric=metric, devices=build_devices(runs, cells),
                       same_as=tuple(db.same_as(run_ids)), baseline_warnings=warnings)


CSV_FIELDS = tuple(f for f in ReportRow.__dataclass_fields__)


def write_csv(table: ReportTable, path: Path) -> Path:
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in table.rows:
            values = asdict(row)
            values["flags"] = ";".join(row.flags)
            values["unstable_reasons"] = ";".join(row.unstable_reasons)
            writer.writerow(values)
    return Path(path)


def write_json(table: ReportTable, path: Path) -> Path:
    Path(path).write_text(json.dumps(table.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(path)


def rich_table(table: ReportTable) -> Any:
    """A rich.table.Table for the terminal."""
    from rich.table import Table

    title = "edgefleet benchmark"
    if table.any_emulated:
        title += f" (emulated: true — {EMULATED_NOTE})"
    out = Table(title=title)
    # A terminal is narrow: the files carry every column, the screen the ones people compare.
    shown = [c for c in table.columns if c.key in TERMINAL_COLUMNS]
    for column in shown:
        out.add_column(column.header, justify="right" if column.numeric else "left")
    for row in table.rows:
        style = "red" if (row.regression or row.status != "ok") else ("yellow" if row.flags else None)
        out.add_row(*(table.text(row, c.key) for c in shown), style=style)
    return out


TERMINAL_COLUMNS = frozenset({"device", "variant", "threads", "delegate", "status", "p50_ms", "p90_ms",
                              "first_inference_ms", "accuracy", "ratio", "flags"})
