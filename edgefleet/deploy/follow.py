"""Following a detached run on its device: the agent's own ``status`` command, polled."""
from __future__ import annotations

import json
import time
from collections.abc import Callable

from edgefleet.errors import DeployError
from edgefleet.transport.base import Transport

FINAL_STATES = ("done", "failed", "interrupted")


def agent_status(transport: Transport, python: str, agent: str, run_dir: str) -> dict:
    result = transport.run([python, agent, "status", run_dir], timeout=60, check=False)
    if result.returncode != 0:
        return {"state": "unknown", "error": result.stderr.strip()[-300:]}
    try:
        return json.loads(result.stdout)
    except ValueError:
        return {"state": "unknown", "error": result.stdout[-300:]}


def follow_run(transport: Transport, python: str, agent: str, run_dir: str, say: Callable[[str], None],
               poll_s: float = 1.0, timeout_s: float = 3600.0) -> dict:
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        status = agent_status(transport, python, agent, run_dir)
        line = f"{status.get('state')}: {status.get('cells_done', 0)}/{status.get('cells_total', '?')} cells"
        if line != last:
            say(f"  {line}" + (f" ({status['current_cell']})" if status.get("current_cell") else ""))
            last = line
        if status.get("state") in FINAL_STATES:
            return status
        if time.monotonic() > deadline:
            raise DeployError(f"the run in {run_dir} did not finish within {timeout_s:.0f} s (--wait)")
        time.sleep(poll_s)
