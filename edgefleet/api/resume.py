"""`invoke resume --run ID`: start an interrupted run again on its device; only unfinished cells run.

The agent keeps every finished cell in the run's results.jsonl and skips the cells
that already have an ``ok`` line, so resuming needs nothing but the run directory
the deploy left on the device (its run.json, artifacts and runtime).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter
from rich.markup import escape

from edgefleet.api.context import Env
from edgefleet.deploy.follow import agent_status, follow_run
from edgefleet.config.validate import did_you_mean
from edgefleet.deploy.lock import DeviceLock
from edgefleet.errors import DeployError, DeviceBusyError, ResultsError
from edgefleet.runs import RunRecord, load_runs
from edgefleet.transport.connections import Connection
from edgefleet.transport.registry import open_transport

CONNECTION = TypeAdapter(Connection)


@dataclass(frozen=True)
class ResumeOptions:
    run: str
    wait: bool = False
    lock_wait_s: float = 0.0
    workspace: Path | None = None


@dataclass(frozen=True)
class ResumeOutcome:
    run_id: str
    device: str
    previous: dict           # the agent's status before the restart
    agent_pid: int | None
    final_status: dict | None = None


def find_run(records: list[RunRecord], run_id: str) -> RunRecord:
    by_id = {r.run_id: r for r in records}
    if run_id not in by_id:
        raise ResultsError(f"no deploy record for run {run_id!r}{did_you_mean(run_id, by_id)}; "
                           f"known: {', '.join(sorted(by_id)) or 'none'}")
    return by_id[run_id]


def resume(options: ResumeOptions, env: Env | None = None) -> ResumeOutcome:
    env = env or Env()
    say = env.console.print
    ws = env.workspace(options.workspace)
    record = find_run(load_runs(ws.state_dir), options.run)
    run_dir = f"{record.workdir}/runs/{record.run_id}"
    with open_transport(CONNECTION.validate_python(record.connection), name=record.device) as transport:
        # The device lock keeps a deploy from rebuilding the runtime venv while the agent starts.
        with DeviceLock(transport, record.workdir, record.run_id, wait_s=options.lock_wait_s):
            previous = agent_status(transport, record.python, record.agent, run_dir)
            state = previous.get("state")
            if state == "running":
                raise DeviceBusyError(f"{record.device} busy: run {record.run_id} is still running there "
                                      f"(pid {previous.get('pid')}); nothing to resume")
            if state in ("not_started", "unknown"):
                raise DeployError(f"{record.device}: run {record.run_id} cannot be resumed: the agent reports "
                                  f"{state!r} ({previous.get('error') or previous.get('run_dir') or run_dir}). "
                                  "Deploy again instead.")
            started = transport.run([record.python, record.agent, "start", run_dir])
        try:
            pid: int | None = int(started.stdout.strip().split()[-1])
        except (ValueError, IndexError):
            pid = None
        say(f"run {record.run_id} resumed on {record.device} (was {escape(str(state))}, "
            f"{previous.get('cells_done', '?')}/{previous.get('cells_total', '?')} cells done); agent pid {pid}")
        outcome = ResumeOutcome(record.run_id, record.device, previous, pid)
        if options.wait:
            final = follow_run(transport, record.python, record.agent, run_dir, say)
            outcome = ResumeOutcome(record.run_id, record.device, previous, pid, final)
            if final.get("state") != "done":
                raise DeployError(f"run {record.run_id} on {record.device} ended {final.get('state')}: "
                                  f"{final.get('reason') or final.get('error') or ''}")
    return outcome
