"""The run's progress as the host reads it: status.json (replaced whole) and results.jsonl (one line a cell).

`status` is polled by deploy and collect, so it reads only: it never repairs results.jsonl (only
`run` does, before appending) and it loads none of the benchmark's modules.
"""
import errno
import json
import os
from typing import Any, Dict, Optional

from .errors import AgentError
from .fileio import read_jsonl, read_text, write_json_atomic
from .locks import lock_is_held
from .log import now_iso

STATUS_FILE = "status.json"  # in RUN_DIR
RESULTS_FILE = "results.jsonl"  # in RUN_DIR


class StatusWriter(object):
    def __init__(self, run_dir, cells_total):
        # type: (str, int) -> None
        self.path = os.path.join(run_dir, STATUS_FILE)
        self.cells_total = cells_total
        self.started = now_iso()
        self.done = 0  # cells finished (or skipped as already ok), for the final state after a failure

    def write(self, state, cells_done, current_cell=None, error=None):
        # type: (str, int, Optional[str], Optional[str]) -> None
        data = {"state": state, "pid": os.getpid(), "cells_done": cells_done, "cells_total": self.cells_total,
                "started": self.started, "updated": now_iso(), "current_cell": current_cell}
        if error is not None:
            data["error"] = error
        write_json_atomic(self.path, data)


def pid_alive(pid):
    # type: (Any) -> bool
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
    stat = read_text("/proc/{}/stat".format(pid))
    # A zombie nobody reaped (PID 1 of a container often does not) is dead too.
    return not (stat and stat.rpartition(")")[2].split()[:1] == ["Z"])


def finished_cells(run_dir):
    # type: (str) -> int
    """How many cells have a complete line in results.jsonl."""
    try:
        records, _ = read_jsonl(os.path.join(run_dir, RESULTS_FILE))
    except (IOError, OSError):
        return 0
    return len(set(str(record["cell"]) for record in records if "cell" in record))


def status_command(run_dir):
    # type: (str) -> Dict[str, Any]
    """status.json, or ``not_started``; ``interrupted`` for a run whose agent died while it said running."""
    path = os.path.join(run_dir, STATUS_FILE)
    if not os.path.exists(path):
        return {"state": "not_started", "run_dir": run_dir}
    try:
        with open(path) as handle:
            status = json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise AgentError("cannot read {}: {}".format(path, exc))
    if status.get("state") == "running" and not lock_is_held(run_dir) and not pid_alive(status.get("pid")):
        status["state"] = "interrupted"
        status["reason"] = "agent process {} is gone while the run was in progress".format(status.get("pid"))
        # A kill between appending a cell's line and rewriting status.json leaves cells_done one short.
        status["cells_done"] = max(status.get("cells_done") or 0, finished_cells(run_dir))
    return status
