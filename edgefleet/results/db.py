"""The results database: SQLite, one file, written only through upserts.

A cell is keyed by (run_id, device, cell): one run may span several devices
whose cell keys repeat. Re-ingesting the same log leaves every byte of the
database as it was; nothing stores the time of ingestion.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgefleet.errors import ResultsError
from edgefleet.workspace import Workspace

DB_VERSION = 2
RUN_STATES = ("unknown", "not_started", "running", "done", "failed", "interrupted")

_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT NOT NULL,
    device      TEXT NOT NULL,
    target      TEXT,
    model       TEXT,
    state       TEXT NOT NULL DEFAULT 'unknown',
    emulated    INTEGER,
    started     TEXT,
    updated     TEXT,
    cells_done  INTEGER,
    cells_total INTEGER,
    error       TEXT,
    PRIMARY KEY (run_id, device)
);
CREATE TABLE IF NOT EXISTS cells (
    run_id             TEXT NOT NULL,
    device             TEXT NOT NULL,
    cell               TEXT NOT NULL,
    variant            TEXT NOT NULL,
    runtime            TEXT NOT NULL,
    threads            INTEGER NOT NULL,
    delegate           TEXT,
    status             TEXT NOT NULL,
    reason             TEXT,
    emulated           INTEGER NOT NULL,
    artifact_valid     INTEGER NOT NULL,
    mean_ms            REAL,
    std_ms             REAL,
    min_ms             REAL,
    max_ms             REAL,
    p50_ms             REAL,
    p90_ms             REAL,
    p99_ms             REAL,
    cv                 REAL,
    runs               INTEGER,
    duration_s         REAL,
    first_inference_ms REAL,
    load_ms            REAL,
    rss_before_kb      INTEGER,
    peak_rss_kb        INTEGER,
    unstable           INTEGER,
    delegate_nodes     INTEGER,
    total_nodes        INTEGER,
    started            TEXT,
    finished           TEXT,
    env                TEXT NOT NULL,
    raw                TEXT NOT NULL,
    PRIMARY KEY (run_id, device, cell)
);  -- and ADDED_CELL_COLUMNS, added by _migrate to new and version 1 databases alike
CREATE TABLE IF NOT EXISTS accuracy (
    run_id    TEXT NOT NULL,
    device    TEXT NOT NULL DEFAULT '',
    cell      TEXT NOT NULL DEFAULT '',
    variant   TEXT NOT NULL,
    metric    TEXT NOT NULL,
    value     REAL NOT NULL,
    evaluator TEXT NOT NULL,
    PRIMARY KEY (run_id, device, cell, variant, metric)
);
-- Variants a deploy measured under another name because their files were byte for byte the same.
CREATE TABLE IF NOT EXISTS same_as (
    run_id      TEXT NOT NULL,
    device      TEXT NOT NULL,
    variant     TEXT NOT NULL,
    measured_as TEXT NOT NULL,
    PRIMARY KEY (run_id, device, variant)
);
"""



def results_db_path(ws: Workspace) -> Path:
    """The workspace's results database (collect writes it, reports and studies read it)."""
    return ws.state_dir / "results.db"

@dataclass(frozen=True)
class RunRecord:
    run_id: str
    device: str
    target: str | None = None
    model: str | None = None
    state: str = "unknown"
    emulated: bool | None = None
    started: str | None = None
    updated: str | None = None
    cells_done: int | None = None
    cells_total: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class CellRecord:
    run_id: str
    device: str
    cell: str
    variant: str
    runtime: str
    threads: int
    delegate: str | None
    status: str
    reason: str | None
    emulated: bool
    artifact_valid: bool
    mean_ms: float | None
    std_ms: float | None
    min_ms: float | None
    max_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    cv: float | None
    runs: int | None
    duration_s: float | None
    first_inference_ms: float | None
    load_ms: float | None
    rss_before_kb: int | None
    peak_rss_kb: int | None
    unstable: bool | None
    delegate_nodes: int | None
    total_nodes: int | None
    started: str | None
    finished: str | None
    env: str
    raw: str
    # Version 2: the robust statistics and the validity flags (None: the agent did not measure them).
    trimmed_mean_ms: float | None = None
    iqr_ms: float | None = None
    robust_cv: float | None = None
    p99_over_p50: float | None = None
    drift_ratio: float | None = None
    unstable_reasons: str | None = None  # comma-separated: cv, drift, frequency
    throttled: bool | None = None
    hot: bool | None = None
    cpu_freq_min_khz: int | None = None
    cpu_freq_max_khz: int | None = None
    temp_max_c: float | None = None
    warmup_runs: int | None = None
    sample_count: int | None = None

    @property
    def raw_json(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(self.unstable_reasons.split(",")) if self.unstable_reasons else ()


@dataclass(frozen=True)
class AccuracyRecord:
    """A metric of a variant (cell='' and device='': the same on every device) or of one cell."""

    run_id: str
    variant: str
    metric: str
    value: float
    evaluator: str
    device: str = ""
    cell: str = ""


_BOOL_COLUMNS = {"emulated", "artifact_valid", "unstable", "throttled", "hot"}
# Version 2's cells columns: (name, SQL type, where a version 1 row's raw line holds the value).
# A line with a list of reasons is stored comma-separated; json_extract gives the list as JSON text.
ADDED_CELL_COLUMNS = (
    ("trimmed_mean_ms", "REAL", "$.latency_ms.trimmed_mean"), ("iqr_ms", "REAL", "$.latency_ms.iqr"),
    ("robust_cv", "REAL", "$.robust_cv"), ("p99_over_p50", "REAL", "$.p99_over_p50"),
    ("drift_ratio", "REAL", "$.drift.ratio"), ("unstable_reasons", "TEXT", "$.unstable_reasons"),
    ("throttled", "INTEGER", "$.throttled"), ("hot", "INTEGER", "$.hot"),
    ("cpu_freq_min_khz", "INTEGER", "$.device_state.cpu_freq_khz.min"),
    ("cpu_freq_max_khz", "INTEGER", "$.device_state.cpu_freq_khz.max"),
    ("temp_max_c", "REAL", "$.device_state.temp_c.max"), ("warmup_runs", "INTEGER", "$.warmup_runs"),
    ("sample_count", "INTEGER", "$.samples.count"),
)


def _columns(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _to_sql(record: Any) -> dict[str, Any]:
    return {k: (int(v) if isinstance(v, bool) else v) for k, v in asdict(record).items()}


def _from_sql(cls: type, row: sqlite3.Row) -> Any:
    values = {k: row[k] for k in _columns(cls)}
    for key in _BOOL_COLUMNS & values.keys():
        if values[key] is not None:
            values[key] = bool(values[key])
    return cls(**values)


class ResultsDB:
    """The results store; ``ResultsDB(":memory:")`` for a throwaway one."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._conn = sqlite3.connect(self.path)
            self._conn.row_factory = sqlite3.Row
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ResultsError(f"cannot open the results database {self.path}: {exc}") from None

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > DB_VERSION:
            raise ResultsError(f"the results database {self.path} has version {version}; "
                               f"this edgefleet reads up to {DB_VERSION}")
        with self._conn:
            self._conn.executescript(_DDL)
            self._add_cell_columns()
            self._conn.execute(f"PRAGMA user_version = {DB_VERSION}")

    def _add_cell_columns(self) -> None:
        """Version 1 -> 2: the new columns, filled from each row's raw line (a new database gets them empty)."""
        present = {row["name"] for row in self._conn.execute("PRAGMA table_info(cells)")}
        missing = [column for column in ADDED_CELL_COLUMNS if column[0] not in present]
        for name, kind, path in missing:
            self._conn.execute(f"ALTER TABLE cells ADD COLUMN {name} {kind}")
            self._conn.execute(f"UPDATE cells SET {name} = json_extract(raw, ?)", (path,))
        if missing:  # the reasons list, stored as ingest stores it: comma-separated
            rows = self._conn.execute("SELECT rowid, unstable_reasons FROM cells WHERE unstable_reasons LIKE '[%'")
            self._conn.executemany("UPDATE cells SET unstable_reasons = ? WHERE rowid = ?",
                                   [(",".join(json.loads(r["unstable_reasons"])), r["rowid"]) for r in rows.fetchall()])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._conn:
            yield

    # ---------------------------------------------------------------- runs

    def ensure_run(self, run_id: str, device: str, *, emulated: bool | None = None) -> None:
        self._conn.execute("INSERT OR IGNORE INTO runs (run_id, device) VALUES (?, ?)", (run_id, device))
        if emulated is not None:
            self._conn.execute("UPDATE runs SET emulated = ? WHERE run_id = ? AND device = ? "
                               "AND emulated IS NOT ?", (int(emulated), run_id, device, int(emulated)))

    def register_run(self, run_id: str, device: str, *, target: str | None = None, model: str | None = None,
                     emulated: bool | None = None) -> None:
        """The host's facts about a run it deployed; the state stays whatever the device reported."""
        with self._conn:
            self.ensure_run(run_id, device, emulated=emulated)
            self._conn.execute("UPDATE runs SET target = COALESCE(?, target), model = COALESCE(?, model) "
                               "WHERE run_id = ? AND device = ?", (target, model, run_id, device))

    def set_run_state(self, run_id: str, device: str, *, state: str, started: str | None,
                      updated: str | None, cells_done: int | None, cells_total: int | None,
                      error: str | None) -> None:
        if state not in RUN_STATES:
            raise ResultsError(f"unknown run state {state!r}; known: {', '.join(RUN_STATES)}")
        self.ensure_run(run_id, device)
        self._conn.execute(
            "UPDATE runs SET state = ?, started = ?, updated = ?, cells_done = ?, cells_total = ?, error = ? "
            "WHERE run_id = ? AND device = ?",
            (state, started, updated, cells_done, cells_total, error, run_id, device))

    def set_same_as(self, run_id: str, device: str, same_as: dict[str, str]) -> None:
        self._conn.executemany("INSERT OR REPLACE INTO same_as VALUES (?, ?, ?, ?)",
                               [(run_id, device, variant, other) for variant, other in sorted(same_as.items())])

    def same_as(self, run_ids: Sequence[str] | None = None) -> list[tuple[str, str, str, str]]:
        """(run_id, device, variant, measured_as) for variants measured under another name."""
        where, args = self._where_runs(run_ids)
        rows = self._conn.execute(f"SELECT * FROM same_as {where} ORDER BY run_id, device, variant", args)
        return [(r["run_id"], r["device"], r["variant"], r["measured_as"]) for r in rows]

    def runs(self, run_ids: Sequence[str] | None = None) -> list[RunRecord]:
        where, args = self._where_runs(run_ids)
        rows = self._conn.execute(f"SELECT * FROM runs {where} ORDER BY run_id, device", args)
        return [_from_sql(RunRecord, row) for row in rows]

    # ---------------------------------------------------------------- cells

    def cell_raw(self, run_id: str, device: str, cell: str) -> str | None:
        row = self._conn.execute("SELECT raw FROM cells WHERE run_id = ? AND device = ? AND cell = ?",
                                 (run_id, device, cell)).fetchone()
        return None if row is None else row["raw"]

    def upsert_cell(self, record: CellRecord) -> bool:
        """Insert or replace the cell; False (and no write) when the stored line is identical."""
        if self.cell_raw(record.run_id, record.device, record.cell) == record.raw:
            return False
        values = _to_sql(record)
        names = list(values)
        keys = {"run_id", "device", "cell"}
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in keys)
        self._conn.execute(
            f"INSERT INTO cells ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
            f"ON CONFLICT (run_id, device, cell) DO UPDATE SET {updates}",
            [values[n] for n in names])
        return True

    def cells(self, run_ids: Sequence[str] | None = None) -> list[CellRecord]:
        where, args = self._where_runs(run_ids)
        rows = self._conn.execute(
            f"SELECT * FROM cells {where} ORDER BY run_id, device, variant, threads, delegate, cell", args)
        return [_from_sql(CellRecord, row) for row in rows]

    # ---------------------------------------------------------------- accuracy

    def add_accuracy(self, record: AccuracyRecord) -> None:
        values = _to_sql(record)
        names = list(values)
        with self._conn:
            self._conn.execute(
                f"INSERT INTO accuracy ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)}) "
                "ON CONFLICT (run_id, device, cell, variant, metric) "
                "DO UPDATE SET value = excluded.value, evaluator = excluded.evaluator",
                [values[n] for n in names])

    def accuracy(self, run_ids: Sequence[str] | None = None) -> list[AccuracyRecord]:
        where, args = self._where_runs(run_ids)
        rows = self._conn.execute(f"SELECT * FROM accuracy {where} ORDER BY run_id, variant, metric, device, cell",
                                  args)
        return [_from_sql(AccuracyRecord, row) for row in rows]

    # ---------------------------------------------------------------- misc

    def dump(self) -> str:
        """The whole database as SQL text: equal dumps mean equal databases."""
        return "\n".join(self._conn.iterdump())

    @staticmethod
    def _where_runs(run_ids: Sequence[str] | None) -> tuple[str, list[str]]:
        if run_ids is None:
            return "", []
        ids = list(run_ids)
        return f"WHERE run_id IN ({', '.join('?' for _ in ids)})", ids
