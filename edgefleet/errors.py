"""The error hierarchy. Each class carries the process exit code its task ends with."""
from __future__ import annotations

from collections.abc import Sequence


class EdgefleetError(Exception):
    """Base of every error a user may see; never shown with a traceback."""

    exit_code = 1


class ConfigError(EdgefleetError):
    """A profile, recipe or workspace file is wrong. The message names file:line:col."""

    exit_code = 2


class PlanError(EdgefleetError):
    """The requested matrix cannot be planned (unknown target, format a target can't run...)."""

    exit_code = 3


class SourceError(EdgefleetError):
    """A model source is missing, corrupt, or fails its checksum."""

    exit_code = 4


class BuildError(EdgefleetError):
    """An image build or a build step failed. Carries the command, exit code and the log's tail."""

    exit_code = 5
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

    exit_code = 6


class DeployError(EdgefleetError):
    """Deploying to a device failed (disk, arch, runtime, lock...)."""

    exit_code = 7


class DeviceBusyError(DeployError):
    exit_code = 8


class ResultsError(EdgefleetError):
    exit_code = 9


class ToolUnavailableError(BuildError):
    """A step needs a tool or network this machine lacks (edgetpu_compiler, Bazel, TensorRT...).

    Reported as "not built here" with what it needed; no artifact is written.
    """

    exit_code = 10
