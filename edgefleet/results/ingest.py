"""Bring an agent's results.jsonl and status.json into the results database.

Every line is validated on its own: a corrupt or truncated line (bad JSON, a
schema violation, a partial last line, a line of another run) goes to a
quarantine file with its reason, and every valid line is still ingested.
Ingesting the same log twice changes nothing.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.errors import ResultsError
from edgefleet.results.db import CellRecord, ResultsDB
from edgefleet.results.schema import ResultLine, RunStatus

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class IngestSummary:
    ingested: int          # cells inserted or changed
    unchanged: int         # valid lines identical to what the database holds
    quarantined: int       # lines rejected (see quarantine_file)
    superseded: int = 0    # valid lines replaced by a later line of the same cell (a retried cell)
    quarantine_file: Path | None = None


@dataclass(frozen=True)
class QuarantinedLine:
    line: int
    reason: str
    raw: str

    def to_json(self) -> str:
        return json.dumps({"line": self.line, "reason": self.reason, "raw": self.raw}, sort_keys=True)


@dataclass(frozen=True)
class ParsedLine:
    line: int
    result: ResultLine
    raw: dict[str, Any]


def quarantine_path(quarantine_dir: Path, run_id: str, device: str) -> Path:
    return Path(quarantine_dir) / f"{_UNSAFE.sub('_', run_id)}.{_UNSAFE.sub('_', device)}.jsonl"


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"]) or "line"
        parts.append(f"{loc}: {item['msg']}")
    return "; ".join(parts)


def parse_log(jsonl_bytes: bytes, *, run_id: str, device: str) -> tuple[list[ParsedLine], list[QuarantinedLine]]:
    chunks = jsonl_bytes.split(b"\n")
    # The agent ends every line with a newline; text after the last one is a line cut mid-write.
    partial_index = len(chunks) - 1 if chunks[-1].strip() else None
    good: list[ParsedLine] = []
    bad: list[QuarantinedLine] = []
    for index, chunk in enumerate(chunks):
        if not chunk.strip():
            continue
        number = index + 1
        text = chunk.decode("utf-8", errors="backslashreplace")
        prefix = "truncated last line (no newline): " if index == partial_index else ""
        try:
            result = ResultLine.model_validate_json(chunk)
        except ValidationError as exc:
            bad.append(QuarantinedLine(number, prefix + _describe(exc), text))
            continue
        if (result.run_id, result.device) != (run_id, device):
            bad.append(QuarantinedLine(number, f"{prefix}line of run {result.run_id!r} on {result.device!r}, "
                                               f"ingested as run {run_id!r} on {device!r}", text))
            continue
        good.append(ParsedLine(number, result, json.loads(chunk)))
    return good, bad


def cell_record(parsed: ParsedLine) -> CellRecord:
    r = parsed.result
    latency = r.latency_ms
    coverage = r.delegate_coverage
    return CellRecord(
        run_id=r.run_id, device=r.device, cell=r.cell, variant=r.variant, runtime=r.runtime, threads=r.threads,
        delegate=r.delegate_name, status=r.status, reason=r.reason, emulated=r.emulated,
        artifact_valid=r.artifact_valid,
        mean_ms=latency.mean if latency else None, std_ms=latency.std if latency else None,
        min_ms=latency.min if latency else None, max_ms=latency.max if latency else None,
        p50_ms=latency.p50 if latency else None, p90_ms=latency.p90 if latency else None,
        p99_ms=latency.p99 if latency else None,
        cv=r.cv, runs=r.runs, duration_s=r.duration_s, first_inference_ms=r.first_inference_ms,
        load_ms=r.load_ms, rss_before_kb=r.rss_before_kb, peak_rss_kb=r.peak_rss_kb, unstable=r.unstable,
        delegate_nodes=coverage.delegate_nodes if coverage else None,
        total_nodes=coverage.total_nodes if coverage else None,
        started=r.started, finished=r.finished,
        env=json.dumps(r.env, sort_keys=True, separators=(",", ":")),
        raw=json.dumps(parsed.raw, sort_keys=True, separators=(",", ":")),
        **_robust_columns(r),
    )


def _robust_columns(r: ResultLine) -> dict[str, Any]:
    """What newer agents add: robust statistics and validity flags (None where the agent had none)."""
    extra = r.latency_ms.model_extra if r.latency_ms else {}
    state = r.device_state or {}
    freq = state.get("cpu_freq_khz") or {}
    return {
        "trimmed_mean_ms": extra.get("trimmed_mean"), "iqr_ms": extra.get("iqr"), "robust_cv": r.robust_cv,
        "p99_over_p50": r.p99_over_p50, "drift_ratio": r.drift.ratio if r.drift else None,
        "unstable_reasons": None if r.unstable_reasons is None else ",".join(r.unstable_reasons),
        "throttled": r.throttled, "hot": r.hot, "cpu_freq_min_khz": freq.get("min"),
        "cpu_freq_max_khz": freq.get("max"), "temp_max_c": (state.get("temp_c") or {}).get("max"),
        "warmup_runs": r.warmup_runs, "sample_count": r.samples.count if r.samples else None,
    }


def _write_quarantine(path: Path, lines: list[QuarantinedLine]) -> Path | None:
    # Rewritten whole on each ingest: it describes the latest copy of the log, so a line
    # that was partial in a mid-run pull and complete in the next leaves no stale entry.
    if not lines:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(q.to_json() + "\n" for q in lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def ingest_log(db: ResultsDB, device: str, run_id: str, jsonl_bytes: bytes,
               quarantine_dir: Path) -> IngestSummary:
    good, bad = parse_log(jsonl_bytes, run_id=run_id, device=device)
    latest: dict[str, ParsedLine] = {}
    for parsed in good:
        latest[parsed.result.cell] = parsed  # a retried cell: its later line wins
    ingested = unchanged = 0
    with db.transaction():
        emulated = any(p.result.emulated for p in good) if good else None
        db.ensure_run(run_id, device, emulated=emulated)
        for parsed in latest.values():
            if db.upsert_cell(cell_record(parsed)):
                ingested += 1
            else:
                unchanged += 1
    qfile = _write_quarantine(quarantine_path(quarantine_dir, run_id, device), bad)
    return IngestSummary(ingested=ingested, unchanged=unchanged, quarantined=len(bad),
                         superseded=len(good) - len(latest), quarantine_file=qfile)


def ingest_status(db: ResultsDB, device: str, run_id: str,
                  status: bytes | str | Mapping[str, Any]) -> RunStatus:
    """Record the run's state from status.json or the agent's ``status`` output.

    Prefer the ``status`` command's output: only it knows that a "running" agent has died.
    """
    try:
        if isinstance(status, Mapping):
            parsed = RunStatus.model_validate(dict(status))
        else:
            parsed = RunStatus.model_validate_json(status)
    except ValidationError as exc:
        raise ResultsError(f"the status of run {run_id!r} on {device!r} is not valid: {_describe(exc)}") from None
    with db.transaction():
        db.set_run_state(run_id, device, state=parsed.state, started=parsed.started, updated=parsed.updated,
                         cells_done=parsed.cells_done, cells_total=parsed.cells_total,
                         error=parsed.error or parsed.reason)
    return parsed


def ingest_run_dir(db: ResultsDB, run_dir: Path, quarantine_dir: Path) -> IngestSummary:
    """Ingest a run directory fetched from a device: run.json names the run, then results and status."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        run_id, device = run["run_id"], run["device"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{run_dir}/run.json does not name a run: {exc}") from None
    results = run_dir / "results.jsonl"
    summary = ingest_log(db, device, run_id, results.read_bytes() if results.exists() else b"", quarantine_dir)
    with db.transaction():
        db.ensure_run(run_id, device, emulated=bool(run.get("emulated")))
        if isinstance(run.get("same_as"), dict):
            db.set_same_as(run_id, device, {str(k): str(v) for k, v in run["same_as"].items()})
    status = run_dir / "status.json"
    if status.exists():
        ingest_status(db, device, run_id, status.read_bytes())
    return summary
