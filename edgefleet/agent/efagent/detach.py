"""`start`: the run detached from the SSH session that started it, its lock handed down.

`start` takes the run's lock itself and hands it down to `run` as an open descriptor, so it can return
at once: `status` never sees the run unlocked between the two (it would read a resumed run's stale
status.json, its killed agent's pid and "running", as interrupted), and deploy does not wait for
`run` to start up.
"""
import os
import sys
import traceback
from typing import List, Optional

from .errors import EXIT_OK, AgentError
from .fileio import write_json_atomic
from .locks import RunLock
from .runfile import RUN_FILE, load_run, parse_run

LOG_FILE = "agent.log"  # in RUN_DIR: the detached agent's stdout and stderr


def start_command(run_dir, workdir, config, self_command):
    # type: (str, Optional[str], Optional[str], List[str]) -> int
    """Start ``self_command run`` detached (double fork + setsid); print its pid.

    ``config``, run.json's text (deploy sends it on stdin: one round trip instead of two), is
    validated, then written atomically as the run's run.json, unless an agent is already running there."""
    # Bad input is reported now, to deploy, not in the detached agent's log.
    run = parse_run(config, "the run config on stdin") if config is not None else load_run(run_dir)
    if config is not None and not os.path.isdir(run_dir):
        os.makedirs(run_dir)
    lock = RunLock(run_dir)
    if not lock.acquire():
        raise AgentError("another agent is already running on {}".format(run_dir))
    if config is not None:
        write_json_atomic(os.path.join(run_dir, RUN_FILE), run)
    run_dir = os.path.abspath(run_dir)
    workdir = os.path.abspath(run.get("workdir") or workdir or os.getcwd())
    argv = self_command + ["run", run_dir, "--workdir", workdir, "--lock-fd", str(lock.fd)]
    pid = _spawn_detached(argv, lock.fd, os.path.join(run_dir, LOG_FILE))
    lock.release()  # our copy only: the detached agent holds the same lock
    if not pid:
        raise AgentError("the detached agent did not start")
    sys.stdout.write("{}\n".format(pid))
    return EXIT_OK


def _spawn_detached(argv, lock_fd, log_path):
    # type: (List[str], int, str) -> int
    """exec ``argv`` in a grandchild of its own session (no SSH hangup reaches it); its pid, 0 if none."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        try:
            os.setsid()
            grandchild = os.fork()
            if grandchild:
                os.write(write_end, str(grandchild).encode())
                os._exit(0)
            os.close(write_end)
            _detach_stdio(log_path)
            os.set_inheritable(lock_fd, True)  # `run` holds the lock from here
            os.execv(argv[0], argv)
        except BaseException:
            traceback.print_exc()
        os._exit(127)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return int(pipe.read().decode() or 0)


def _detach_stdio(log_path):
    # type: (str) -> None
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
