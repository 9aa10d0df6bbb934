"""How the agent fails: the exceptions that decide a cell's status, and the exit code each run ends with."""

EXIT_OK = 0  # done: cells may still have failed (see their status)
EXIT_FAILED = 1  # the run failed
EXIT_BAD_INPUT = 2  # run.json, arguments, RUN_DIR busy
EXIT_INTERRUPTED = 130  # SIGINT, SIGTERM, SIGHUP


class AgentError(Exception):
    """Bad input (run.json, arguments, RUN_DIR busy): reported as one line, exit code 2."""


class CellError(Exception):
    """This cell cannot run (shape mismatch, missing artifact...): an ``error`` line, the run goes on."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: a BaseException so a cell's ``except Exception`` does not swallow it."""
