"""Faults during deploy, benchmark and collect, against the real emulated fleet (sshd in network namespaces).

One workspace and one fleet for the module; the bundled model is built once (tflite fp32 only).
The first deploy is the busiest scenario and serves several rows at once:

- R1: its device's link goes down for 3 s in the middle of a 53 MB file (the input samples), and
- R5: its workdir and the model's source and calibration file names are hostile (quotes, ``;``,
  ``$(…)``, backticks, spaces, brackets, unicode), and
- R6: while it holds the device, two more real ``deploy()`` calls arrive: one fails fast naming it,
  one waits for it and then neither re-sends nor re-provisions anything.

The later scenarios (R2, R7, R9) run on the device that first deploy provisioned.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from agent_fixtures import wait_for

from edgefleet.api.build import BuildOptions, build
from edgefleet.api.collect import CONNECTION, CollectOptions, collect_benchmarks, results_db_path
from edgefleet.api.context import Env
from edgefleet.api.deploy import DeployOptions, DeployOutcome, deploy, follow_run
from edgefleet.api.resume import ResumeOptions, resume
from edgefleet.console import make_console
from edgefleet.deploy.lock import DeviceLock
from edgefleet.deploy.plan import ProvisionRuntime
from edgefleet.deploy.devices import fleet_dir
from edgefleet.deploy.upload import file_sha256
from edgefleet.errors import DeployError, DeviceBusyError, TransportError
from edgefleet.fleet import DeviceSpec, EmulatedFleet
from edgefleet.fleet import sshd
from edgefleet.fleet.keys import generate_keypair
from edgefleet.runs import RunRecord, load_runs
from edgefleet.transport.base import CommandTimeout, RunResult, TransportUnavailable
from edgefleet.transport.hostkeys import HostKeyError
from edgefleet.transport.local import LocalTransport
from edgefleet.transport.registry import open_transport
from edgefleet.workspace import open_workspace
from fleet_fixtures import require_fleet_tools

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ssh, pytest.mark.convert, pytest.mark.slow]

MB = 1024 * 1024
CANARY = f"CANARY-{uuid.uuid4().hex[:8]}"
# File names cannot hold '/', so their payloads touch the canary in the home of whoever would run them.
HOSTILE_SOURCE = f"we ird;$(cd;touch {CANARY}) `cd;touch {CANARY}` it's [b]ü.keras"
HOSTILE_CALIBRATION = f"cal ib;$(cd;touch {CANARY})[i].npy"
SAMPLES_TILES = 30  # the bundled 1.7 MB calibration set, 30 times over: a 53 MB push

PROFILE = """\
description: an x86_64 test board
device: {{board: test board {name}, arch: x86_64, os: test, python: "3.11"}}
runtime:
  name: ai-edge-litert
  packages: ["ai-edge-litert==2.3.0", "numpy>=1.24,<3"]
  platform_tags: [manylinux_2_17_x86_64, manylinux2014_x86_64, manylinux_2_28_x86_64, manylinux_2_27_x86_64]
formats:
  tflite: {{quantizations: [fp32]}}
bench: {{threads: [1, 2], warmup_runs: 2, min_runs: 10, min_duration_s: 0.2, cooldown_s: 0.0}}
transport: {transport}
workdir: {workdir}
"""
# The host wheelhouse without optional packages keeps the push to what the agent needs.
LOCAL_PROFILE = """\
extends: builtin:local
runtime:
  name: ai-edge-litert
  packages: ["ai-edge-litert==2.3.0", "numpy>=1.24,<3"]
  optional_packages: []
  platform_tags: [manylinux_2_17_x86_64, manylinux2014_x86_64, manylinux_2_28_x86_64, manylinux_2_27_x86_64]
"""
DEVICES = (
    DeviceSpec(name="fa-main", stands_in_for="test board", arch="x86_64"),
    DeviceSpec(name="fa-full", stands_in_for="test board", arch="x86_64", tmpfs_mb=24),
    DeviceSpec(name="fa-key", stands_in_for="test board", arch="x86_64"),
    DeviceSpec(name="fa-hung", stands_in_for="test board", arch="x86_64"),
)


@dataclass
class Workspace:
    root: Path
    fleet: EmulatedFleet
    hostile_workdir: Path

    def direct_profile(self, target: str, device: str, workdir: str, **transport: Any) -> None:
        """A target that reaches a fleet device through its own profile (not the inventory): its
        transport settings (timeouts, known_hosts, trust on first use) are the profile's."""
        conn = self.fleet.device(device).connection
        values = {"kind": "ssh", "host": conn.host, "port": conn.port, "user": conn.user,
                  "key_filename": conn.key_filename, "known_hosts": conn.known_hosts, **transport}
        text = PROFILE.format(name=target, transport=json.dumps(values), workdir=json.dumps(workdir))
        (self.root / "targets" / f"{target}.yaml").write_text(text)


def env(out: io.StringIO | None = None) -> Env:
    """A real rich console (markup and all), into ``out`` when given."""
    if out is None:
        return Env(console=make_console(quiet=True))
    return Env(console=Console(file=out, width=1000, highlight=False))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    require_fleet_tools()
    root = tmp_path_factory.mktemp("faults")
    (root / "targets").mkdir()
    (root / "targets" / "local.yaml").write_text(LOCAL_PROFILE)
    (root / "edgefleet.yaml").write_text("backend: local\njobs: 2\n")
    shapes = root / "models" / "shapes"
    shapes.mkdir(parents=True)
    source_recipe = REPO / "models" / "shapes" / "recipe.yaml"
    (shapes / HOSTILE_SOURCE).write_bytes((REPO / "models" / "shapes" / "shapes_detector.keras").read_bytes())
    (shapes / "data").mkdir()
    images = np.load(REPO / "models" / "shapes" / "data" / "calibration.npy")
    np.save(shapes / "data" / HOSTILE_CALIBRATION, np.concatenate([images] * SAMPLES_TILES))
    recipe = source_recipe.read_text()
    recipe = recipe.replace("path: shapes_detector.keras", f"path: {json.dumps(HOSTILE_SOURCE)}")
    recipe = recipe.replace("path: data/calibration.npy", f"path: {json.dumps('data/' + HOSTILE_CALIBRATION)}")
    recipe = "\n".join(line for line in recipe.splitlines() if not line.lstrip().startswith(
        ("evaluation:", "kind: coco", "annotations:", "images:")))
    (shapes / "recipe.yaml").write_text(recipe + "\n")
    with EmulatedFleet(fleet_dir(root / ".edgefleet"), DEVICES) as fleet:
        # A workdir a shell would love to misread; '/' inside it just makes deeper folders.
        hostile = Path(fleet.device("fa-main").workdir) / f"we ird;$(touch {root}/{CANARY}) `id` it's \"[red]ü[/] [/]x"
        space = Workspace(root, fleet, hostile)
        space.direct_profile("fa-direct", "fa-main", str(hostile), connect_timeout_s=1.5, io_timeout_s=1.0,
                             command_timeout_s=120)
        for name in ("fa-full", "fa-key"):
            (root / "targets" / f"{name}.yaml").write_text(PROFILE.format(
                name=name, transport='{kind: ssh, host: "unused.invalid"}', workdir=f"/opt/{name}"))
        yield space


# -- R1 + R5 + R6: the first deploy ---------------------------------------------------

class LinkCutter(threading.Thread):
    """Pulls the device's cable for ``down_s`` once an upload's temp file in ``folder`` passes
    ``at_bytes``, watching from the host what the final path holds meanwhile."""

    def __init__(self, fleet: EmulatedFleet, device: str, folder: Path, at_bytes: int, down_s: float) -> None:
        super().__init__(daemon=True)
        self.fleet, self.device, self.folder, self.at_bytes, self.down_s = fleet, device, folder, at_bytes, down_s
        self.cut_at: int | None = None
        self.final_seen: list[bool] = []
        self.outage_s = 0.0
        self.restored = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        try:
            while time.monotonic() < deadline and self.cut_at is None:
                for temp in self.folder.glob(".*.part-*") if self.folder.is_dir() else ():
                    size = temp.stat().st_size if temp.exists() else 0
                    if size >= self.at_bytes:
                        self.cut_at = size
                        final = temp.parent / temp.name[1:].split(".part-")[0]
                        self._cut(final)
                        break
                time.sleep(0.01)
        finally:
            self.restored.set()

    def _cut(self, final: Path) -> None:
        started = time.monotonic()
        with self.fleet.link_down(self.device):
            while time.monotonic() - started < self.down_s:
                self.final_seen.append(final.exists())
                time.sleep(0.1)
        self.outage_s = time.monotonic() - started


@dataclass
class Attempt:
    outcome: DeployOutcome | None = None
    error: BaseException | None = None
    finished: float = 0.0
    out: io.StringIO = field(default_factory=io.StringIO)

    @property
    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()


def _deploy_in_thread(options: DeployOptions) -> tuple[threading.Thread, Attempt]:
    attempt = Attempt()

    def target() -> None:
        try:
            attempt.outcome = deploy(options, env(attempt.out))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            attempt.error = exc
        attempt.finished = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, attempt


@dataclass
class FirstDeploy:
    first: Attempt
    fail_fast: Attempt
    waiter: Attempt
    cutter: LinkCutter
    samples_size: int
    holder: dict[str, Any]


@pytest.fixture(scope="module")
def first_deploy(ws: Workspace) -> FirstDeploy:
    # Build first, so the cut lands in the push and not in a conversion.
    build(BuildOptions(target="fa-direct", workspace=ws.root), env())
    samples = ws.root / "models" / "shapes" / "data" / HOSTILE_CALIBRATION
    cutter = LinkCutter(ws.fleet, "fa-main", ws.hostile_workdir / "data", samples.stat().st_size // 3, 3.0)
    cutter.start()
    thread, first = _deploy_in_thread(DeployOptions(target="fa-direct", workspace=ws.root, wait=True))
    assert cutter.restored.wait(300), "the samples upload never started"
    holder_file = ws.hostile_workdir / ".lock" / "holder.json"
    holder = json.loads(holder_file.read_text()) if holder_file.exists() else {}
    # The first deploy still holds the device (more wheels to send, then the venv to provision).
    fast_thread, fail_fast = _deploy_in_thread(DeployOptions(target="fa-direct", workspace=ws.root))
    wait_thread, waiter = _deploy_in_thread(DeployOptions(target="fa-direct", workspace=ws.root, wait=True,
                                                          lock_wait_s=300))
    for t in (thread, fast_thread, wait_thread):
        t.join(600)
    return FirstDeploy(first, fail_fast, waiter, cutter, samples.stat().st_size, holder)


def test_r1_deploy_survives_a_3s_link_cut_mid_push(ws: Workspace, first_deploy: FirstDeploy) -> None:
    first, cutter = first_deploy.first, first_deploy.cutter
    assert first.error is None, "\n".join(first.lines[-20:]) + repr(first.error)
    assert first.outcome is not None and first.outcome.applied is not None
    size = first_deploy.samples_size
    assert size > 50 * MB
    assert cutter.cut_at is not None and size // 3 <= cutter.cut_at < size, "the cut missed the push"
    assert cutter.outage_s >= 3.0
    # Retried with backoff (each retry is announced), continuing the part already on the device: what
    # reached it before the cut was not sent again.
    retries = [line for line in first.lines if "; retry " in line]
    assert retries and "retry 1 in 1 s" in retries[0], first.lines
    assert any("resumed: " in line and "bytes were already on the device" in line for line in first.lines)
    applied = first.outcome.applied
    to_send = first.outcome.plan.bytes_to_send
    assert to_send <= applied.sent_bytes < to_send + cutter.cut_at
    # The final path never held a partial file: it did not exist until the verified copy was renamed in.
    assert cutter.final_seen and not any(cutter.final_seen)
    final = ws.hostile_workdir / "data" / f"{file_sha256(ws.root / 'models/shapes/data' / HOSTILE_CALIBRATION)[:16]}.npy"
    expected = file_sha256(ws.root / "models" / "shapes" / "data" / HOSTILE_CALIBRATION)
    assert file_sha256(final) == expected
    assert (final.parent / (final.name + ".sha256")).read_text() == expected  # recorded only after verifying
    assert not [p for p in ws.hostile_workdir.rglob("*") if ".part-" in p.name]
    assert first.outcome.final_status and first.outcome.final_status["state"] == "done"


def test_r5_hostile_names_are_data_end_to_end(ws: Workspace, first_deploy: FirstDeploy) -> None:
    first = first_deploy.first
    assert first.outcome is not None
    run_dir = ws.hostile_workdir / "runs" / first.outcome.run_id
    run = json.loads((run_dir / "run.json").read_text())
    assert all(cell["artifact"].startswith(str(ws.hostile_workdir)) for cell in run["cells"])
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert {line["status"] for line in lines} == {"ok"} and len(lines) == 2
    homes = [Path.home(), ws.root, Path.cwd(), *(Path(ws.fleet.device(d.name).workdir).parent / "home"
                                                 for d in DEVICES)]
    assert not [h for h in homes if (h / CANARY).exists()], "a name was executed as a command"
    assert not [p for p in ws.root.rglob("*") if p.name == CANARY]
    # The deploy's own output showed the names as they are (rich markup in them is not interpreted).
    assert any("[red]ü[/] [/]x" in line for line in first.lines), first.lines


def test_r6_a_second_deploy_fails_fast_naming_the_holder(ws: Workspace, first_deploy: FirstDeploy) -> None:
    fail_fast, first = first_deploy.fail_fast, first_deploy.first
    assert first.outcome is not None
    assert isinstance(fail_fast.error, DeviceBusyError), fail_fast.error
    message = str(fail_fast.error)
    assert first_deploy.holder.get("run_id") == first.outcome.run_id
    assert f"fa-direct busy: held by run {first.outcome.run_id} since {first_deploy.holder['started']}" in message
    assert fail_fast.finished < first.finished, "it waited instead of failing fast"
    # It left nothing behind: no run record, no run directory.
    recorded = {r.run_id for r in load_runs(ws.root / ".edgefleet")}
    assert {p.name for p in (ws.hostile_workdir / "runs").iterdir()} <= recorded


def test_r6_a_waiting_deploy_follows_without_resending_or_reprovisioning(ws: Workspace,
                                                                         first_deploy: FirstDeploy) -> None:
    waiter, first = first_deploy.waiter, first_deploy.first
    assert waiter.error is None, "\n".join(waiter.lines[-20:]) + repr(waiter.error)
    assert first.outcome and first.outcome.applied and waiter.outcome and waiter.outcome.applied
    assert first.outcome.applied.provisioned
    # Its plan was made while the first deploy held the device: files to send, a venv to provision...
    assert waiter.outcome.plan.uploads
    assert any(isinstance(a, ProvisionRuntime) for a in waiter.outcome.plan.actions)
    # ...but under the lock it found all of it there, and the runtime venv too.
    assert waiter.outcome.applied.sent_bytes == 0 and waiter.outcome.applied.uploaded == []
    assert not waiter.outcome.applied.provisioned and waiter.outcome.applied.runtime_venv
    assert any("already provisioned" in line for line in waiter.lines)
    assert waiter.outcome.final_status and waiter.outcome.final_status["state"] == "done"
    record = _record(ws, waiter.outcome.run_id)
    assert record.python.endswith("/runtime/venv/bin/python")


def released_in_the_gap(bin_dir: Path, lock: Path, done: Path) -> None:
    """A ``mkdir`` for PATH that, the first time the lock's mkdir fails, removes the lock: the holder
    releasing exactly between a waiter's failed mkdir and its ``test -d``, the window the first deploy
    above hits by chance, made certain."""
    real = shutil.which("mkdir")
    bin_dir.mkdir()
    wrapper = bin_dir / "mkdir"
    wrapper.write_text(f"""#!/bin/sh
{real} "$@" && exit 0
status=$?
if [ "$*" = "-- {lock}" ] && [ ! -e {done} ]; then rm -rf -- {lock}; : > {done}; fi
exit $status
""")
    wrapper.chmod(0o755)


def test_r6_a_lock_released_mid_check_is_taken_not_reported_as_an_error(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "work"
    holder = DeviceLock(LocalTransport(name="first"), str(workdir), "run-first")
    holder.acquire()
    released = tmp_path / "released"
    released_in_the_gap(tmp_path / "bin", workdir / ".lock", released)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    with DeviceLock(LocalTransport(name="gap"), str(workdir), "run-waiting", wait_s=5, poll_s=0.1):
        assert released.exists()
        assert json.loads((workdir / ".lock" / "holder.json").read_text())["run_id"] == "run-waiting"


# -- R2, R7, R9 on the provisioned device -----------------------------------------------

def _run_dir(ws: Workspace, run_id: str) -> Path:
    return ws.hostile_workdir / "runs" / run_id


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _db(ws: Workspace) -> sqlite3.Connection:
    return sqlite3.connect(results_db_path(open_workspace(ws.root)))


def _dump(ws: Workspace) -> str:
    with _db(ws) as db:
        return "\n".join(db.iterdump())


def test_r2_killed_agent_is_interrupted_keeps_finished_cells_and_resumes(ws: Workspace,
                                                                        first_deploy: FirstDeploy) -> None:
    started = deploy(DeployOptions(target="fa-direct", workspace=ws.root,
                                   bench_overrides=(("min_duration_s", 1.5),)), env())
    assert started.applied and started.applied.agent_pid
    results = _run_dir(ws, started.run_id) / "results.jsonl"
    wait_for(lambda: len(_lines(results)) == 1, 60)
    os.kill(started.applied.agent_pid, signal.SIGKILL)
    finished = _lines(results)
    assert len(finished) == 1

    collected = collect_benchmarks(CollectOptions(runs=(started.run_id,), workspace=ws.root), env())
    assert started.run_id in collected.ingested
    with _db(ws) as db:
        state, done, total = db.execute("SELECT state, cells_done, cells_total FROM runs WHERE run_id = ?",
                                        (started.run_id,)).fetchone()
        cells = db.execute("SELECT cell, status, raw FROM cells WHERE run_id = ?", (started.run_id,)).fetchall()
    assert (state, done, total) == ("interrupted", 1, 2)
    assert [(c[0], c[1]) for c in cells] == [(finished[0]["cell"], "ok")]
    kept_raw = cells[0][2]

    resumed = resume(ResumeOptions(run=started.run_id, wait=True, workspace=ws.root), env())
    assert resumed.previous["state"] == "interrupted"
    assert resumed.final_status and resumed.final_status["state"] == "done"
    after = _lines(results)
    assert [line["cell"] for line in after].count(finished[0]["cell"]) == 1  # not measured again
    assert len(after) == 2 and after[0] == finished[0]
    log = (_run_dir(ws, started.run_id) / "agent.log").read_text()
    assert f"skip cell {finished[0]['cell']}: already ok" in log

    collect_benchmarks(CollectOptions(runs=(started.run_id,), workspace=ws.root), env())
    with _db(ws) as db:
        state = db.execute("SELECT state FROM runs WHERE run_id = ?", (started.run_id,)).fetchone()[0]
        raw = db.execute("SELECT raw FROM cells WHERE run_id = ? AND cell = ?",
                         (started.run_id, finished[0]["cell"])).fetchone()[0]
        count = db.execute("SELECT COUNT(*) FROM cells WHERE run_id = ? AND status = 'ok'",
                           (started.run_id,)).fetchone()[0]
    assert state == "done" and count == 2 and raw == kept_raw


def test_r2_a_kill_between_a_line_and_its_status_still_counts_the_cell(tmp_path: Path) -> None:
    """The window the test above may hit by chance: the line is fsynced, status.json not yet rewritten."""
    from edgefleet.agent.efagent.status import status_command

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "status.json").write_text(json.dumps({"state": "running", "pid": dead.pid, "cells_done": 0,
                                                      "cells_total": 2, "current_cell": "a"}))
    (tmp_path / "results.jsonl").write_text(json.dumps({"cell": "a", "status": "ok"}) + "\n" + '{"cell": "b", "st')
    status = status_command(str(tmp_path))
    assert (status["state"], status["cells_done"]) == ("interrupted", 1)
    assert (tmp_path / "results.jsonl").read_text().endswith('"st')  # a status query changes nothing


def test_r2_a_running_run_is_not_resumed_twice(ws: Workspace, first_deploy: FirstDeploy) -> None:
    started = deploy(DeployOptions(target="fa-direct", workspace=ws.root,
                                   bench_overrides=(("min_duration_s", 1.0),)), env())
    try:
        with pytest.raises(DeviceBusyError, match=f"run {started.run_id} is still running"):
            resume(ResumeOptions(run=started.run_id, workspace=ws.root), env())
    finally:
        _finish(ws, started)


def _record(ws: Workspace, run_id: str) -> RunRecord:
    return next(r for r in load_runs(ws.root / ".edgefleet") if r.run_id == run_id)


def _finish(ws: Workspace, outcome: DeployOutcome) -> dict[str, Any]:
    record = _record(ws, outcome.run_id)
    with open_transport(CONNECTION.validate_python(record.connection), name=record.device) as transport:
        return follow_run(transport, record.python, record.agent, str(_run_dir(ws, outcome.run_id)),
                          lambda _: None, poll_s=0.3, timeout_s=120)


def test_r7_corrupt_lines_in_the_device_log_are_quarantined(ws: Workspace, first_deploy: FirstDeploy) -> None:
    done = deploy(DeployOptions(target="fa-direct", workspace=ws.root, wait=True), env())
    results = _run_dir(ws, done.run_id) / "results.jsonl"
    good = results.read_bytes().splitlines(keepends=True)
    assert len(good) == 2
    corrupt = (good[0] + b'{"schema": 1, "run_id": \n' + b"\xff\xfe\x00 not json\n" + good[1]
               + good[0][:len(good[0]) // 2])  # a partial last line, as a kill mid-write leaves it
    record = _record(ws, done.run_id)
    with open_transport(CONNECTION.validate_python(record.connection), name=record.device) as transport:
        transport.run(["tee", "--", str(results)], stdin=corrupt)  # written ON the device, over ssh
    assert results.read_bytes() == corrupt

    out = io.StringIO()
    first = collect_benchmarks(CollectOptions(runs=(done.run_id,), workspace=ws.root), env(out))
    summary = first.ingested[done.run_id]
    assert (summary.ingested, summary.quarantined) == (2, 3)
    assert summary.quarantine_file is not None
    entries = [json.loads(line) for line in summary.quarantine_file.read_text().splitlines()]
    assert [e["line"] for e in entries] == [2, 3, 5]
    assert entries[-1]["reason"].startswith("truncated last line")
    assert "3 bad lines quarantined" in out.getvalue()
    with _db(ws) as db:
        stored = dict(db.execute("SELECT cell, p50_ms FROM cells WHERE run_id = ?", (done.run_id,)).fetchall())
    assert stored == {json.loads(g)["cell"]: json.loads(g)["latency_ms"]["p50"] for g in good}

    before = _dump(ws)
    again = collect_benchmarks(CollectOptions(runs=(done.run_id,), workspace=ws.root), env())
    assert (again.ingested[done.run_id].ingested, again.ingested[done.run_id].quarantined) == (0, 3)
    assert _dump(ws) == before


def test_r9_a_run_in_progress_is_shown_running_and_collecting_twice_changes_nothing(
        ws: Workspace, first_deploy: FirstDeploy) -> None:
    started = deploy(DeployOptions(target="fa-direct", workspace=ws.root,
                                   bench_overrides=(("min_duration_s", 1.5),)), env())
    try:
        status_file = _run_dir(ws, started.run_id) / "status.json"
        wait_for(lambda: status_file.exists() and json.loads(status_file.read_text())["state"] == "running", 30)
        during = collect_benchmarks(CollectOptions(runs=(started.run_id,), workspace=ws.root), env())
        with _db(ws) as db:
            state, done, total = db.execute("SELECT state, cells_done, cells_total FROM runs WHERE run_id = ?",
                                            (started.run_id,)).fetchone()
        assert state == "running" and done < total == 2
        assert during.report is not None
        report = json.loads(during.report.json.read_text())
        assert [r["state"] for r in report["runs"]] == ["running"]
    finally:
        final = _finish(ws, started)
    assert final["state"] == "done"
    collect_benchmarks(CollectOptions(runs=(started.run_id,), workspace=ws.root), env())
    with _db(ws) as db:
        assert db.execute("SELECT state, cells_done FROM runs WHERE run_id = ?",
                          (started.run_id,)).fetchone() == ("done", 2)
    before = _dump(ws)
    collect_benchmarks(CollectOptions(runs=(started.run_id,), workspace=ws.root), env())
    assert _dump(ws) == before


# -- R3: disk full ------------------------------------------------------------------------

def test_r3_disk_full_is_refused_before_sending_anything(ws: Workspace, first_deploy: FirstDeploy) -> None:
    workdir = Path(ws.fleet.device("fa-full").workdir)
    before = sorted(p.name for p in workdir.iterdir())
    free = os.statvfs(workdir).f_bavail * os.statvfs(workdir).f_frsize
    with pytest.raises(DeployError) as caught:
        deploy(DeployOptions(target="fa-full", workspace=ws.root), env())
    message = str(caught.value)
    assert message.startswith("fa-full: not enough disk space in ")
    needed = int(message.split("this deploy needs ")[1].split(" bytes")[0].replace(",", ""))
    shown_free = int(message.split("but only ")[1].split(" are free")[0].replace(",", ""))
    assert needed > 50 * MB and abs(shown_free - free) < MB
    assert "nothing was sent" in message
    assert sorted(p.name for p in workdir.iterdir()) == before == ["device.json"]


# -- R4: host keys ----------------------------------------------------------------------

def _reinstall_host_key(ws: Workspace, device: str) -> str:
    """What a reflashed board does: a new host key. sshd re-reads it on SIGHUP."""
    files = sshd.SshdFiles.in_dir(Path(ws.fleet.device(device).workdir).parent)
    line = generate_keypair(files.host_key, f"{device}-reinstalled")
    pid = sshd.read_pid(files)
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    return " ".join(line.split()[:2])


def _dry_run(ws: Workspace, target: str) -> DeployOutcome:
    deadline = time.monotonic() + 10
    while True:  # sshd re-executes itself on SIGHUP; a refused connect in between is not the point here
        try:
            return deploy(DeployOptions(target=target, workspace=ws.root, dry_run=True), env())
        except TransportUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_r4_changed_host_key_is_refused_with_how_to_verify(ws: Workspace, first_deploy: FirstDeploy,
                                                           tmp_path: Path) -> None:
    known_hosts = Path(ws.fleet.device("fa-key").connection.known_hosts or "")
    before = known_hosts.read_text()
    new_key = _reinstall_host_key(ws, "fa-key")
    with pytest.raises(HostKeyError) as caught:
        _dry_run(ws, "fa-key")
    message = str(caught.value)
    host = ws.fleet.device("fa-key").connection.host
    assert message.startswith("fa-key (ssh ") and "HOST KEY CHANGED" in message
    assert "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub" in message      # how to verify
    assert f"ssh-keygen -R '{host}' -f {known_hosts}" in message              # how to update
    assert known_hosts.read_text() == before

    # Trust on first use never covers a changed key...
    ws.direct_profile("fa-key-tofu", "fa-key", ws.fleet.device("fa-key").workdir, trust_on_first_use=True)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        _dry_run(ws, "fa-key-tofu")
    assert known_hosts.read_text() == before
    # ...an unknown key is refused unless the profile asks for it...
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ws.direct_profile("fa-key-strict", "fa-key", ws.fleet.device("fa-key").workdir, known_hosts=str(empty))
    with pytest.raises(HostKeyError, match="(?s)not in .*known_hosts.*trust_on_first_use"):
        _dry_run(ws, "fa-key-strict")
    assert empty.read_text() == ""
    # ...and with it, the first connection records the key.
    ws.direct_profile("fa-key-tofu", "fa-key", ws.fleet.device("fa-key").workdir, known_hosts=str(empty),
                      trust_on_first_use=True)
    _dry_run(ws, "fa-key-tofu")
    assert new_key in empty.read_text()


# -- timeouts: a remote command that hangs ------------------------------------------------

def test_a_hung_remote_command_expires_naming_the_setting(ws: Workspace) -> None:
    workdir = Path(ws.fleet.device("fa-hung").workdir)
    identity = workdir / "device.json"
    identity.unlink()
    os.mkfifo(identity)  # the facts probe opens it and blocks, like a read from a hung NFS mount
    ws.direct_profile("fa-hung-direct", "fa-hung", str(workdir), command_timeout_s=2)
    started = time.monotonic()
    try:
        with pytest.raises(CommandTimeout) as caught:
            deploy(DeployOptions(target="fa-hung-direct", workspace=ws.root, dry_run=True), env())
    finally:
        try:  # release the probe if it still waits on the device (the device's own `timeout` ends it soon)
            os.close(os.open(identity, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # ENXIO: no reader left
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith("fa-hung-direct (ssh ")
    assert "command timeout (2s, transport.command_timeout_s) expired running: python3 -c" in message
    assert len(message) < 500  # the probe program is abbreviated, not dumped
    assert elapsed < 30


def test_the_command_timeout_setting_bounds_every_remote_command(ws: Workspace) -> None:
    conn = ws.fleet.device("fa-hung").connection.model_copy(update={"command_timeout_s": 1.0})
    with open_transport(conn, name="fa-hung") as transport:
        for asked in (None, 60.0):  # a call's own longer limit does not outlast the profile's setting
            started = time.monotonic()
            with pytest.raises(CommandTimeout, match=r"command timeout \(1s, transport.command_timeout_s\) "
                                                     r"expired running: sleep 30"):
                transport.run(["sleep", "30"], timeout=asked)
            assert time.monotonic() - started < 5
        assert transport.run(["echo", "still usable"]).stdout == "still usable\n"


def test_a_device_that_accepts_but_never_speaks_ssh_expires_at_connect_timeout(ws: Workspace) -> None:
    held: list[Any] = []
    with socket.create_server(("127.0.0.1", 0)) as silent:
        # A hung sshd: the connection is accepted, and nothing is ever said on it.
        threading.Thread(target=lambda: held.append(silent.accept()), daemon=True).start()
        port = silent.getsockname()[1]
        profile = PROFILE.format(name="fa-silent", workdir='"/opt/fa-silent"', transport=json.dumps(
            {"kind": "ssh", "host": "127.0.0.1", "port": port, "connect_timeout_s": 1}))
        (ws.root / "targets" / "fa-silent.yaml").write_text(profile)
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            deploy(DeployOptions(target="fa-silent", workspace=ws.root, dry_run=True), env())
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("fa-silent (ssh ") and "connect timeout (1s) expired" in message
    assert "transport.connect_timeout_s" in message
