"""Ingesting real agent logs into the SQLite results store: idempotent, corrupt lines quarantined."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from agent_fixtures import AgentRun

from edgefleet.errors import ResultsError
from edgefleet.results import ResultsDB, ingest_log, ingest_run_dir, ingest_status
from edgefleet.results.db import ADDED_CELL_COLUMNS, DB_VERSION
from edgefleet.results.samples import cell_samples
from edgefleet.results.schema import MEASUREMENTS, OPTIONAL_MEASUREMENTS

pytest_plugins = ["agent_fixtures"]


def _line(raw: dict) -> bytes:
    return (json.dumps(raw) + "\n").encode()


def test_ingesting_twice_changes_nothing(tmp_path: Path, agent_run: AgentRun) -> None:
    db = ResultsDB(tmp_path / "results.sqlite")
    first = ingest_run_dir(db, agent_run.run_dir, tmp_path / "quarantine")
    assert (first.ingested, first.unchanged, first.quarantined) == (4, 0, 0)
    dump = db.dump()
    second = ingest_run_dir(db, agent_run.run_dir, tmp_path / "quarantine")
    assert (second.ingested, second.unchanged, second.quarantined) == (0, 4, 0)
    assert db.dump() == dump
    db.close()
    # And the file on disk, reopened, holds the same.
    assert ResultsDB(tmp_path / "results.sqlite").dump() == dump


def test_cells_keep_the_agents_numbers(agent_run: AgentRun, tmp_path: Path) -> None:
    db = ResultsDB(":memory:")
    ingest_run_dir(db, agent_run.run_dir, tmp_path)
    cells = {c.cell: c for c in db.cells([agent_run.run_id])}
    for raw in agent_run.lines:
        cell = cells[raw["cell"]]
        assert cell.p50_ms == raw["latency_ms"]["p50"] and cell.p99_ms == raw["latency_ms"]["p99"]
        assert cell.first_inference_ms == raw["first_inference_ms"] and cell.load_ms == raw["load_ms"]
        assert cell.peak_rss_kb == raw["peak_rss_kb"] and cell.unstable == raw["unstable"]
        assert cell.emulated is True and cell.threads == raw["threads"] and cell.delegate is None
        assert json.loads(cell.env) == raw["env"] and cell.raw_json == raw
    (run,) = db.runs([agent_run.run_id])
    assert (run.state, run.emulated, run.cells_done, run.cells_total) == ("done", True, 4, 4)


def test_corrupt_and_truncated_lines_are_quarantined_and_valid_ones_kept(
        agent_run: AgentRun, tmp_path: Path) -> None:
    good = agent_run.lines
    wrong_type = dict(good[0], cell="wrong-type", threads="two")
    ok_without_numbers = dict(good[0], cell="no-numbers", latency_ms=None)
    zero_for_missing = dict(good[0], cell="zero", status="missing_runtime", reason="no tflite",
                            latency_ms={k: 0.0 for k in ("mean", "std", "min", "max", "p50", "p90", "p99")})
    other_run = dict(good[0], run_id="someone-else")
    unordered = dict(good[0], cell="unordered", latency_ms=dict(good[0]["latency_ms"], p50=1e9))
    log = (b"".join(_line(raw) for raw in good[:3])
           + b'{"schema": 1, "run_id": \n'
           + _line(wrong_type) + _line(ok_without_numbers) + _line(zero_for_missing)
           + _line(other_run) + _line(unordered)
           + b"\xff\xfe not utf-8\n"
           + _line(good[3])[:-40])  # the agent was killed mid-write: no newline at the end
    db = ResultsDB(":memory:")
    summary = ingest_log(db, agent_run.device, agent_run.run_id, log, tmp_path / "q")
    assert (summary.ingested, summary.unchanged, summary.quarantined) == (3, 0, 8)
    assert sorted(c.cell for c in db.cells()) == sorted(raw["cell"] for raw in good[:3])

    assert summary.quarantine_file == tmp_path / "q" / f"{agent_run.run_id}.{agent_run.device}.jsonl"
    entries = [json.loads(line) for line in summary.quarantine_file.read_text().splitlines()]
    assert [e["line"] for e in entries] == [4, 5, 6, 7, 8, 9, 10, 11]
    reasons = [e["reason"] for e in entries]
    assert "Invalid JSON" in reasons[0]
    assert reasons[1].startswith("threads:")
    assert "without latency_ms" in reasons[2]
    assert "carries measurements" in reasons[3] and "latency_ms" in reasons[3]
    assert "someone-else" in reasons[4]
    assert "not ordered" in reasons[5]
    assert reasons[7].startswith("truncated last line")
    assert entries[7]["raw"] == _line(good[3])[:-40].decode()

    # The complete log, pulled later: the partial line is now whole and the quarantine reflects that.
    fixed = b"".join(_line(raw) for raw in good)
    again = ingest_log(db, agent_run.device, agent_run.run_id, fixed, tmp_path / "q")
    assert (again.ingested, again.unchanged, again.quarantined) == (1, 3, 0)
    assert not summary.quarantine_file.exists()


def test_a_retried_cell_keeps_its_latest_line(agent_run: AgentRun, tmp_path: Path) -> None:
    good = agent_run.lines[0]
    failed = dict(good, status="error", reason="RuntimeError: boom")
    for key in MEASUREMENTS + OPTIONAL_MEASUREMENTS:
        failed[key] = None
    db = ResultsDB(":memory:")
    summary = ingest_log(db, agent_run.device, agent_run.run_id, _line(failed) + _line(good), tmp_path)
    assert (summary.ingested, summary.superseded) == (1, 1)
    (cell,) = db.cells()
    assert cell.status == "ok" and cell.p50_ms == good["latency_ms"]["p50"]


def test_run_state_comes_from_the_agents_status(agent_run: AgentRun, tmp_path: Path) -> None:
    db = ResultsDB(":memory:")
    lines = agent_run.results_bytes.splitlines(keepends=True)
    ingest_log(db, agent_run.device, agent_run.run_id, b"".join(lines[:2]), tmp_path)
    running = {"state": "running", "pid": 4242, "cells_done": 2, "cells_total": 4, "started": "s",
               "updated": "u1", "current_cell": "int8-t1"}
    ingest_status(db, agent_run.device, agent_run.run_id, json.dumps(running).encode())
    (run,) = db.runs()
    assert (run.state, run.cells_done, run.cells_total) == ("running", 2, 4)

    # What the agent's `status` command says once the process died: interrupted, finished cells kept.
    interrupted = dict(running, state="interrupted", reason="agent process 4242 is gone")
    ingest_status(db, agent_run.device, agent_run.run_id, interrupted)
    (run,) = db.runs()
    assert run.state == "interrupted" and "4242" in run.error
    assert len(db.cells()) == 2

    with pytest.raises(ResultsError, match="state"):
        ingest_status(db, agent_run.device, agent_run.run_id, b'{"state": "exploded"}')
    with pytest.raises(ResultsError):
        ingest_status(db, agent_run.device, agent_run.run_id, b"not json")


def test_same_cell_keys_on_two_devices_do_not_collide(agent_run: AgentRun, tmp_path: Path) -> None:
    db = ResultsDB(":memory:")
    other = b"".join(_line(dict(raw, device="emu-jetson")) for raw in agent_run.lines)
    ingest_log(db, agent_run.device, agent_run.run_id, agent_run.results_bytes, tmp_path)
    ingest_log(db, "emu-jetson", agent_run.run_id, other, tmp_path)
    assert len(db.cells([agent_run.run_id])) == 8
    assert {r.device for r in db.runs()} == {agent_run.device, "emu-jetson"}


def test_a_newer_or_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(ResultsError, match="version 99"):
        ResultsDB(path)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ResultsError, match="cannot open"):
        ResultsDB(garbage)


def test_register_run_keeps_the_reported_state(agent_run: AgentRun, tmp_path: Path) -> None:
    db = ResultsDB(":memory:")
    ingest_run_dir(db, agent_run.run_dir, tmp_path)
    db.register_run(agent_run.run_id, agent_run.device, target="rpi4", model="tiny")
    (run,) = db.runs()
    assert (run.state, run.target, run.model) == ("done", "rpi4", "tiny")


def test_raw_samples_survive_ingest_and_decode_to_the_lines_numbers(agent_run: AgentRun, tmp_path: Path) -> None:
    db = ResultsDB(tmp_path / "results.sqlite")
    ingest_run_dir(db, agent_run.run_dir, tmp_path / "q")
    lines = {raw["cell"]: raw for raw in agent_run.lines}
    for cell in db.cells([agent_run.run_id]):
        raw = lines[cell.cell]
        ms = cell_samples(cell)
        assert len(ms) == cell.runs == cell.sample_count == raw["samples"]["count"]
        # Any statistic can be recomputed from them: here the agent's own.
        assert np.percentile(ms, 50) == pytest.approx(cell.p50_ms, rel=1e-6)
        assert ms.max() == pytest.approx(cell.max_ms, rel=1e-6)
        assert np.percentile(ms, 75) - np.percentile(ms, 25) == pytest.approx(cell.iqr_ms, rel=1e-5, abs=1e-9)
        # The new columns hold what the line says.
        assert cell.robust_cv == raw["robust_cv"] and cell.drift_ratio == raw["drift"]["ratio"]
        assert cell.reasons == tuple(raw["unstable_reasons"]) and cell.throttled == raw["throttled"]
        assert cell.warmup_runs == raw["warmup_runs"] and cell.trimmed_mean_ms == raw["latency_ms"]["trimmed_mean"]
    failed = dict(agent_run.lines[0], cell="failed", status="error", reason="boom",
                  **dict.fromkeys(MEASUREMENTS + OPTIONAL_MEASUREMENTS))
    ingest_log(db, agent_run.device, agent_run.run_id, _line(failed), tmp_path / "q")
    (stored,) = [c for c in db.cells() if c.cell == "failed"]
    assert cell_samples(stored) is None and stored.unstable_reasons is None


def test_a_line_whose_samples_or_reasons_contradict_it_is_quarantined(agent_run: AgentRun, tmp_path: Path) -> None:
    good = agent_run.lines[0]
    short = dict(good, cell="short", samples=dict(good["samples"], count=good["runs"] - 1))
    contradiction = dict(good, cell="contradiction", unstable=not good["unstable"])
    bad_encoding = dict(good, cell="encoding", samples=dict(good["samples"], encoding="f64"))
    log = _line(short) + _line(contradiction) + _line(bad_encoding)
    summary = ingest_log(ResultsDB(":memory:"), agent_run.device, agent_run.run_id, log, tmp_path)
    assert summary.quarantined == 3
    reasons = [json.loads(line)["reason"] for line in summary.quarantine_file.read_text().splitlines()]
    assert "samples holds" in reasons[0] and "with reasons" in reasons[1] and "samples.encoding" in reasons[2]


def test_a_version_1_database_gets_the_new_columns_filled_from_its_raw_lines(agent_run: AgentRun,
                                                                            tmp_path: Path) -> None:
    fresh = ResultsDB(tmp_path / "fresh.sqlite")
    ingest_run_dir(fresh, agent_run.run_dir, tmp_path / "q")
    old = tmp_path / "v1.sqlite"
    ingest_run_dir(ResultsDB(old), agent_run.run_dir, tmp_path / "q")
    # What version 1 was: the cells table without the columns version 2 added.
    with sqlite3.connect(old) as conn:
        for name, _, _ in ADDED_CELL_COLUMNS:
            conn.execute(f"ALTER TABLE cells DROP COLUMN {name}")
        conn.execute("PRAGMA user_version = 1")
    migrated = ResultsDB(old)
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == DB_VERSION == 2
    assert migrated.cells() == fresh.cells()
    assert all(c.sample_count == c.runs and c.unstable_reasons is not None for c in migrated.cells())
    # And ingesting the same lines again changes nothing: the migrated rows are what ingest writes.
    dump = migrated.dump()
    assert ingest_run_dir(migrated, agent_run.run_dir, tmp_path / "q").unchanged == 4
    assert migrated.dump() == dump
