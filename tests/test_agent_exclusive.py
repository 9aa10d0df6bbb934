"""Devices that share one physical host take turns for their runs (bench.exclusive_lock), and timed
sections wait for deploys in progress on the host (bench.host_deploy_locks).

Two real agents run at once on this host. With the shared lock their runs never interleave;
without it (the control) their timed sections overlap, which proves the test can see an overlap at all.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from agent_fixtures import FAST_BENCH, tflite_cell, write_run

pytest_plugins = ["agent_fixtures"]

# Long enough timed sections that two agents started together must collide without the lock.
BENCH = {**FAST_BENCH, "min_duration_s": 0.6, "cooldown_s": 0.0}


def lines_of(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert lines and all(line["status"] == "ok" for line in lines), lines
    return lines


def spans(run_dir: Path) -> list[tuple[datetime, datetime, str]]:
    return [(datetime.fromisoformat(line["timed_start"]), datetime.fromisoformat(line["timed_end"]), line["device"])
            for line in lines_of(run_dir)]


def run_two(tmp: Path, models, pyz, lock: str | None) -> list[tuple[datetime, datetime, str]]:
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
    return any(end > start for (_, end, _), (start, _, _) in zip(intervals, intervals[1:]))


def test_shared_lock_serializes_timed_runs(tmp_path, agent_models, agent_pyz):
    locked = run_two(tmp_path / "locked", agent_models, agent_pyz, str(tmp_path / "bench.lock"))
    assert len(locked) == 4 and not overlaps(locked)
    # Whole runs take turns (their imports and loads use the same cores): one device's cells, then the other's.
    order = [device for _, _, device in locked]
    assert order in (["dev-a", "dev-a", "dev-b", "dev-b"], ["dev-b", "dev-b", "dev-a", "dev-a"]), order
    second = next(line for name in ("a", "b") for line in lines_of(tmp_path / "locked" / name)
                  if line["cell"].endswith("-t1") and line["device"] == order[-1])
    assert second["exclusive_wait_ms"] > 100  # the second run waited for the first, and says so


def test_without_the_lock_timed_runs_overlap(tmp_path, agent_models, agent_pyz):
    assert overlaps(run_two(tmp_path / "free", agent_models, agent_pyz, None))


def run_one(run_dir: Path, models, pyz, bench: dict) -> tuple[list[dict], str]:
    cells = [tflite_cell(models, "fp32", 1, cell="q-t1"), tflite_cell(models, "fp32", 2, cell="q-t2")]
    write_run(run_dir, models, cells, run_id="run-quiet", bench={**FAST_BENCH, "cooldown_s": 0.0, **bench})
    proc = subprocess.run([sys.executable, str(pyz), "run", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return lines_of(run_dir), proc.stderr


def test_timed_sections_wait_for_deploys_in_progress_on_the_host(tmp_path, agent_models, agent_pyz):
    deploying = tmp_path / "other-device" / ".lock"
    deploying.mkdir(parents=True)
    finished_at: list[datetime] = []

    def deploy_finishes() -> None:
        finished_at.append(datetime.now().astimezone())
        deploying.rmdir()

    timer = threading.Timer(2.0, deploy_finishes)  # the run is up well before, even on a loaded machine
    timer.start()
    lines, log = run_one(tmp_path / "run", agent_models, agent_pyz,
                         {"host_deploy_locks": [str(deploying), str(tmp_path / "idle-device" / ".lock")]})
    timer.join()
    # The run waits before its imports and model loads (they use the same cores), and each timed
    # section checks again.
    waited = re.search(r"waited (\d+) ms for deploys in progress", log)
    assert waited and int(waited.group(1)) > 1000, log
    first, second = lines
    assert datetime.fromisoformat(first["timed_start"]) >= finished_at[0]
    assert first["deploys_not_waited_for"] == [] and "deploy_wait_ms" in first
    assert first["deploy_wait_ms"] < 200 and second["deploy_wait_ms"] < 200


def test_a_deploy_lock_left_behind_is_waited_for_once(tmp_path, agent_models, agent_pyz):
    stale = tmp_path / "crashed-device" / ".lock"
    stale.mkdir(parents=True)
    started = time.monotonic()
    (first, second), log = run_one(tmp_path / "run", agent_models, agent_pyz,
                                   {"host_deploy_locks": [str(stale)], "quiet_wait_s": 0.5})
    assert time.monotonic() - started < 30
    waited = re.search(r"waited (\d+) ms for deploys in progress", log)
    assert waited and 400 < int(waited.group(1)) < 5000, log
    for line in (first, second):
        assert line["deploy_wait_ms"] < 200 and line["deploys_not_waited_for"] == [str(stale)]
    assert f"deploy lock(s) {stale} still present after 0.5 s" in log


def test_a_deploy_that_starts_mid_run_holds_back_the_next_timed_section(tmp_path, agent_models, agent_pyz):
    deploying = tmp_path / "other-device" / ".lock"
    deploying.parent.mkdir()
    run_dir = tmp_path / "run"
    cells = [tflite_cell(agent_models, "fp32", 1, cell="m-t1"), tflite_cell(agent_models, "fp32", 2, cell="m-t2")]
    write_run(run_dir, agent_models, cells, run_id="run-mid",
              bench={**FAST_BENCH, "cooldown_s": 2.0, "host_deploy_locks": [str(deploying)]})
    proc = subprocess.Popen([sys.executable, str(agent_pyz), "run", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = run_dir / "results.jsonl"
    deadline = time.monotonic() + 60
    while not (results.exists() and results.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    deploying.mkdir()  # during the 2 s cooldown after the first cell
    time.sleep(3.5)
    deploying.rmdir()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    first, second = lines_of(run_dir)
    assert first["deploy_wait_ms"] < 200
    assert second["deploy_wait_ms"] > 1000 and second["deploys_not_waited_for"] == []
