"""Timestamps (ISO 8601 UTC, as in the result lines) and the agent's log lines.

The log goes to stderr: the terminal for `run`, RUN_DIR/agent.log for a run `start` detached.
"""
import datetime
import sys


def now_iso():
    # type: () -> str
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def log(message):
    # type: (str) -> None
    sys.stderr.write("{} {}\n".format(now_iso(), message))
    sys.stderr.flush()
