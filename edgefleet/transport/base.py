"""The transport interface: run a command, put a file, get a file.

Commands are always argv lists. Transports that need a shell on the far side build
the command line with ``shlex.join`` so every argument arrives as data; the only
way to hand over shell syntax is the explicitly named ``run_shell``.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

from edgefleet.errors import TransportError

Progress = Callable[[int, int], None]
"""Called with (bytes sent so far, total bytes)."""

STDERR_TAIL_LINES = 20

_T = TypeVar("_T", bound="TransportBase")


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class TransportUnavailable(TransportError):
    """The device could not be reached or stopped answering. Worth a reconnect and a retry."""


class ResumeRefused(TransportError):
    """The device cannot continue a partial upload (no Python there, or the partial file is gone or
    longer than expected); send the whole file again."""


class CommandTimeout(TransportUnavailable):
    """A remote command ran past its time limit (the device may be hung or the link dead)."""


class RemoteCommandError(TransportError):
    """A remote command exited non-zero while ``check=True``."""

    def __init__(self, message: str, *, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(message)


def command_limit(timeout: float | None, setting: float) -> tuple[float, str]:
    """The limit for one remote command, and how a timeout message names it.

    ``transport.command_timeout_s`` bounds every command; a call may ask for a shorter limit
    (a status query), never a longer one, so the profile setting is the one knob for a slow device.
    """
    if timeout is not None and timeout < setting:
        return timeout, f"{timeout:g}s"
    return setting, f"{setting:g}s, transport.command_timeout_s"


def shown_command(command: str, limit: int = 200) -> str:
    """A command line short enough for a message (the facts probe is a whole program)."""
    return command if len(command) <= limit else command[:limit] + f"... ({len(command)} chars)"


def stderr_tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    tail = text.strip().splitlines()[-lines:]
    return "\n".join("  | " + line for line in tail)


def command_failed(describe: str, argv: Sequence[str], result: RunResult) -> RemoteCommandError:
    message = f"{describe}: command failed with exit code {result.returncode}: {shlex.join(argv)}"
    if result.stderr.strip():
        message += "\n" + stderr_tail(result.stderr)
    return RemoteCommandError(message, argv=argv, returncode=result.returncode, stderr=result.stderr)


def check_argv(argv: Sequence[str]) -> list[str]:
    # A bare string would be split into characters by list(); refuse it loudly.
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a sequence of arguments, not a string; use run_shell() for shell syntax")
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("argv must not be empty")
    return args


@runtime_checkable
class Transport(Protocol):
    """How edgefleet reaches one device. Use as a context manager (connect/close)."""

    name: str

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> str:
        """Device name and address for messages, e.g. ``rpi3 (ssh root@10.213.0.2:22)``."""
        ...

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: bytes | None = None) -> RunResult: ...

    def run_shell(self, script: str, *, timeout: float | None = None, check: bool = True,
                  stdin: bytes | None = None) -> RunResult: ...

    def put(self, local: Path, remote: str, *, progress: Progress | None = None) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...

    def __enter__(self) -> Transport: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@runtime_checkable
class HashingPut(Protocol):
    """A transport that can hash a file on the device while writing it there (one pass, not two)."""

    def put_hashed(self, local: Path, remote: str, *, progress: Progress | None = None,
                   offset: int = 0) -> str | None:
        """Upload, fsync, and return the sha256 the device computed of the whole file; None when the
        device lacks the tools for it (then use put and hash the file afterwards).

        ``offset`` > 0 resumes: ``remote`` already holds the file's first ``offset`` bytes (an earlier,
        interrupted attempt), only the rest is sent, and the device hashes the whole file. Raises
        ResumeRefused when it cannot."""
        ...


class TransportBase:
    """Shared behaviour: context management and the explicit shell escape hatch."""

    name: str

    def connect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: bytes | None = None) -> RunResult:
        raise NotImplementedError

    def run_shell(self, script: str, *, timeout: float | None = None, check: bool = True,
                  stdin: bytes | None = None) -> RunResult:
        """Run ``script`` through ``sh -c``: the one place shell syntax is allowed."""
        return self.run(["sh", "-c", script], timeout=timeout, check=check, stdin=stdin)

    def __enter__(self: _T) -> _T:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
