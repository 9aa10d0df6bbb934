"""Following a detached run on its device.

While a run says it is running, the poll reads its status.json with ``cat`` and checks the agent's pid with
``kill -0``: two tiny processes. The agent's own ``status`` command (a Python start) runs only when that
is not enough: no status file yet, a pid that is gone (the command then tells ``interrupted`` apart), or an
unreadable file. A Python start every second costs a real board a noticeable share of one core, and an
emulated one (qemu-user) most of a host core, taken from the cells being timed."""
from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable

from edgefleet.agent.efagent.status import STATUS_FILE  # replaced whole on every change
from edgefleet.errors import DeployError
from edgefleet.transport.base import Transport

FINAL_STATES = ("done", "failed", "interrupted")
# Now and then the agent's own check anyway: a live pid can still be an agent nobody reaped (a zombie).
FULL_CHECK_S = 60.0


def agent_status(transport: Transport, python: str, agent: str, run_dir: str) -> dict:
    result = transport.run([python, agent, "status", run_dir], timeout=60, check=False)
    if result.returncode != 0:
        return {"state": "unknown", "error": result.stderr.strip()[-300:]}
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {"state": "unknown", "error": result.stdout[-300:]}


def peek_status(transport: Transport, python: str, agent: str, run_dir: str) -> dict:
    """The run's status as cheaply as the device can give it (see the module's doc)."""
    read = transport.run(["cat", posixpath.join(run_dir, STATUS_FILE)], timeout=60, check=False)
    try:
        status = json.loads(read.stdout) if read.returncode == 0 else None
    except ValueError:
        status = None
    pid = status.get("pid") if isinstance(status, dict) and status.get("state") == "running" else None
    if isinstance(pid, int) and pid > 0 and transport.run(["kill", "-0", str(pid)], timeout=60,
                                                          check=False).returncode == 0:
        return status
    return agent_status(transport, python, agent, run_dir)


def follow_run(transport: Transport, python: str, agent: str, run_dir: str, say: Callable[[str], None],
               poll_s: float = 1.0, timeout_s: float = 3600.0) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    full_check = time.monotonic() + FULL_CHECK_S
    while True:
        if time.monotonic() < full_check:
            status = peek_status(transport, python, agent, run_dir)
        else:
            status, full_check = agent_status(transport, python, agent, run_dir), time.monotonic() + FULL_CHECK_S
        line = f"{status.get('state')}: {status.get('cells_done', 0)}/{status.get('cells_total', '?')} cells"
        if line != last:
            say(f"  {line}" + (f" ({status['current_cell']})" if status.get("current_cell") else ""))
            last = line
        if status.get("state") in FINAL_STATES:
            return status
        if time.monotonic() > deadline:
            raise DeployError(f"the run in {run_dir} did not finish within {timeout_s:.0f} s (--wait)")
        time.sleep(poll_s)
