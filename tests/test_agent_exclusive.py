"""Devices that share one physical host take turns for their timed runs (bench.exclusive_lock).

Two real agents run at once on this host. With the shared lock their timed sections never overlap;
without it (the control) they do, which proves the test can see an overlap at all.
"""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from agent_fixtures import FAST_BENCH, tflite_cell, write_run

pytest_plugins = ["agent_fixtures"]

# Long enough timed sections that two agents started together must collide without the lock.
BENCH = {**FAST_BENCH, "min_duration_s": 0.6, "cooldown_s": 0.0}


def spans(run_dir: Path) -> list[tuple[datetime, datetime]]:
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert lines and all(line["status"] == "ok" for line in lines), lines
    return [(datetime.fromisoformat(line["timed_start"]), datetime.fromisoformat(line["timed_end"]))
            for line in lines]


def run_two(tmp: Path, models, pyz, lock: str | None) -> list[tuple[datetime, datetime]]:
    procs = []
    dirs = []
    for name in ("a", "b"):
        cells = [tflite_cell(models, "fp32", 1, cell=f"{name}-fp32-t1"),
                 tflite_cell(models, "fp32", 2, cell=f"{name}-fp32-t2")]
        run_dir = write_run(tmp / name, models, cells, run_id=f"run-{name}", device=f"dev-{name}",
                            bench={**BENCH, "exclusive_lock": lock})
        dirs.append(run_dir)
        procs.append(subprocess.Popen([sys.executable, str(pyz), "run", str(run_dir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    return sorted(spans(dirs[0]) + spans(dirs[1]))


def overlaps(intervals) -> bool:
    return any(end > start for (_, end), (start, _) in zip(intervals, intervals[1:]))


def test_shared_lock_serializes_timed_runs(tmp_path, agent_models, agent_pyz):
    locked = run_two(tmp_path / "locked", agent_models, agent_pyz, str(tmp_path / "bench.lock"))
    assert len(locked) == 4 and not overlaps(locked)


def test_without_the_lock_timed_runs_overlap(tmp_path, agent_models, agent_pyz):
    assert overlaps(run_two(tmp_path / "free", agent_models, agent_pyz, None))
