"""The local transport: this host, through subprocess without a shell."""
from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edgefleet.errors import TransportError
from edgefleet.transport.base import (
    CommandTimeout,
    Progress,
    RunResult,
    TransportBase,
    check_argv,
    command_failed,
    command_limit,
    shown_command,
)
from edgefleet.transport.connections import LocalConnection

_CHUNK = 1 << 20
# What a shell reports for a missing program; keeps check=False callers transport-agnostic.
_NOT_FOUND = 127


class LocalTransport(TransportBase):
    def __init__(self, connection: LocalConnection | None = None, *, name: str = "local") -> None:
        self.connection = connection or LocalConnection()
        self.name = name

    def describe(self) -> str:
        return f"{self.name} (local)"

    def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: bytes | None = None) -> RunResult:
        args = check_argv(argv)
        limit, label = command_limit(timeout, self.connection.command_timeout_s)
        try:
            proc = subprocess.run(args, input=stdin if stdin is not None else b"", capture_output=True,
                                  timeout=limit, check=False)
        except subprocess.TimeoutExpired as err:
            raise CommandTimeout(f"{self.describe()}: command timeout ({label}) expired running: "
                                 f"{shown_command(shlex.join(args))}") from err
        except (FileNotFoundError, PermissionError) as err:
            result = RunResult(_NOT_FOUND, "", f"{args[0]}: {err.strerror}")
        else:
            result = RunResult(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                               proc.stderr.decode("utf-8", "replace"))
        if check and result.returncode != 0:
            raise command_failed(self.describe(), args, result)
        return result

    def put(self, local: Path, remote: str, *, progress: Progress | None = None) -> None:
        self._copy(Path(local), Path(remote), progress)

    def get(self, remote: str, local: Path) -> None:
        self._copy(Path(remote), Path(local), None)

    def _copy(self, src: Path, dst: Path, progress: Progress | None) -> None:
        try:
            total = src.stat().st_size
            sent = 0
            with src.open("rb") as fin, dst.open("wb") as fout:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, total)
        except OSError as err:
            raise TransportError(f"{self.describe()}: cannot copy {src} to {dst}: "
                                 f"{err.strerror or err}") from err
        if progress is not None and total == 0:
            progress(0, 0)
