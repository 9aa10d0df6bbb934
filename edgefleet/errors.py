"""The error hierarchy and the one exit-code scheme.

Each class carries the exit code a process ends with when it raises it: an ``invoke`` task,
a step process (``python -m edgefleet.steps.process``), ``invoke doctor`` and the fleet tasks
alike, and the host reads a step process's code back with these same constants. README.md
lists them in a table; a test keeps the two in step.
"""
from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_UNEXPECTED = 1          # not an edgefleet error: a bug; Python's own code for an uncaught exception
EXIT_CONFIG = 2
EXIT_PLAN = 3
EXIT_SOURCE = 4
EXIT_BUILD = 5
EXIT_TRANSPORT = 6
EXIT_DEPLOY = 7
EXIT_DEVICE_BUSY = 8
EXIT_RESULTS = 9
EXIT_TOOL_UNAVAILABLE = 10   # "not built here": distinct from PlanError, a step may be fine elsewhere
EXIT_CHECKS_FAILED = 11      # invoke doctor: a required check failed
EXIT_FLEET = 12
EXIT_INTERRUPTED = 130       # Ctrl-C, as a shell reports SIGINT (128 + 2)
# Set to 1 and a task prints the whole exception chain (for a bug report), not the one-paragraph message.
DEBUG_ENV = "EDGEFLEET_DEBUG"


class EdgefleetError(Exception):
    """Base of every error a user may see; shown without a traceback unless EDGEFLEET_DEBUG=1."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(EdgefleetError):
    """A profile, recipe or workspace file is wrong. The message names file:line:col."""

    exit_code = EXIT_CONFIG


class PlanError(EdgefleetError):
    """The requested matrix cannot be planned (unknown target, format a target can't run...)."""

    exit_code = EXIT_PLAN


class SourceError(EdgefleetError):
    """A model source is missing, corrupt, or fails its checksum."""

    exit_code = EXIT_SOURCE


class BuildError(EdgefleetError):
    """An image build or a build step failed. Carries the command, exit code and the log's tail."""

    exit_code = EXIT_BUILD
    tail_lines = 40

    def __init__(self, message: str, *, command: Sequence[str] | str | None = None,
                 returncode: int | None = None, log: Sequence[str] = ()) -> None:
        self.command = command
        self.returncode = returncode
        self.log_tail = list(log)[-self.tail_lines:]
        super().__init__(message)

    def __str__(self) -> str:
        parts = [self.args[0]]
        if self.command is not None:
            cmd = self.command if isinstance(self.command, str) else " ".join(self.command)
            parts.append(f"command: {cmd}")
        if self.returncode is not None:
            parts.append(f"exit code: {self.returncode}")
        if self.log_tail:
            parts.append(f"last {len(self.log_tail)} log lines:")
            parts.extend("  | " + line for line in self.log_tail)
        return "\n".join(parts)


class TransportError(EdgefleetError):
    """A device could not be reached, authenticated, or a remote command failed."""

    exit_code = EXIT_TRANSPORT


class DeployError(EdgefleetError):
    """Deploying to a device failed (disk, arch, runtime, lock...)."""

    exit_code = EXIT_DEPLOY


class DeviceBusyError(DeployError):
    """Another deploy holds the device's lock."""

    exit_code = EXIT_DEVICE_BUSY


class ResultsError(EdgefleetError):
    """Benchmark results could not be collected, ingested or reported."""

    exit_code = EXIT_RESULTS


class ToolUnavailableError(BuildError):
    """A step needs a tool or network this machine lacks (edgetpu_compiler, Bazel, TensorRT...).

    Reported as "not built here" with what it needed; no artifact is written.
    """

    exit_code = EXIT_TOOL_UNAVAILABLE


class ChecksFailedError(EdgefleetError):
    """``invoke doctor`` found a required check failing; its table says which and how to fix it."""

    exit_code = EXIT_CHECKS_FAILED


class FleetError(EdgefleetError):
    """The emulated fleet could not be brought up or changed.

    Not a DeployError: a failed ``fleet.up`` is not a failed deploy, and exits with its own code.
    """

    exit_code = EXIT_FLEET
