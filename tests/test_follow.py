"""Following a detached run: while it runs, the poll starts no Python on the device."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgefleet.deploy.follow import peek_status
from edgefleet.transport.local import LocalTransport

pytest_plugins = ["agent_fixtures"]
NO_PYTHON = "/nonexistent/python"  # any use of the agent's own status command shows as "unknown"


def write_status(run_dir: Path, **fields: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_text(json.dumps({"cells_done": 1, "cells_total": 4, **fields}))


def test_a_running_agent_is_read_from_its_status_file_without_starting_python(tmp_path: Path) -> None:
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_status(tmp_path / "run", state="running", pid=agent.pid, current_cell="fp32-t1")
        status = peek_status(LocalTransport(), NO_PYTHON, "efagent.pyz", str(tmp_path / "run"))
    finally:
        agent.kill()
        agent.wait()
    assert status["state"] == "running" and status["current_cell"] == "fp32-t1"


def test_a_gone_agent_or_a_missing_file_asks_the_agent_itself(tmp_path: Path, agent_pyz: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_status(tmp_path / "run", state="running", pid=gone.pid)
    transport = LocalTransport()
    status = peek_status(transport, sys.executable, str(agent_pyz), str(tmp_path / "run"))
    assert status["state"] == "interrupted" and "is gone" in status["reason"]
    assert peek_status(transport, sys.executable, str(agent_pyz), str(tmp_path / "nowhere"))["state"] == "not_started"
    # Without the agent's command to ask, the poll says it does not know rather than guessing.
    assert peek_status(transport, NO_PYTHON, str(agent_pyz), str(tmp_path / "run"))["state"] == "unknown"
