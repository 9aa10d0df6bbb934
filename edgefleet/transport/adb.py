"""The adb transport: an Android device through the ``adb`` binary (Debian package ``adb``).

The argv for every adb call is built by pure functions (tested without a phone). On the
device ``adb shell`` hands its command string to ``sh -c``, so the remote argv is
joined with ``shlex.join`` into exactly one argument.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import TransportError
from edgefleet.transport.base import (
    CommandTimeout,
    Progress,
    ResumeRefused,
    RunResult,
    TransportBase,
    TransportUnavailable,
    check_argv,
    command_failed,
    command_limit,
    shown_command,
)
from edgefleet.transport.connections import AdbConnection

ADB_WORKDIR = "/data/local/tmp/edgefleet"
"""The one place an unrooted Android device lets a shell user write and execute files."""

# How a phone hashes a file, in the order tried: toybox links sha256sum on most Android releases; where the
# link is missing the applet may still answer as `toybox sha256sum`.
SHA256_COMMANDS = (("sha256sum",), ("toybox", "sha256sum"))
_NOT_FOUND = (126, 127)

# adb's own failures (as opposed to the remote command's) start with these.
_ADB_LOST = ("error: device offline", "error: no devices", "error: device '", "adb: device offline",
             "error: closed", "error: protocol fault")


@dataclass(frozen=True)
class AdbDevice:
    serial: str
    state: str  # device, unauthorized, offline, recovery...


def adb_argv(adb_path: str, serial: str | None, *args: str) -> list[str]:
    return [adb_path, *(["-s", serial] if serial else []), *args]


def shell_argv(adb_path: str, serial: str | None, argv: Sequence[str]) -> list[str]:
    # -T: no pty, so stdout stays binary-clean and stdin is a pipe.
    return adb_argv(adb_path, serial, "shell", "-T", shlex.join(check_argv(argv)))


def push_argv(adb_path: str, serial: str | None, local: Path, remote: str) -> list[str]:
    return adb_argv(adb_path, serial, "push", str(local), remote)


def pull_argv(adb_path: str, serial: str | None, remote: str, local: Path) -> list[str]:
    return adb_argv(adb_path, serial, "pull", remote, str(local))


def sha256_argv(path: str, tool: Sequence[str] = SHA256_COMMANDS[0]) -> list[str]:
    return [*tool, "--", path]


def parse_sha256(stdout: str) -> str | None:
    """The hex digest at the start of sha256sum's line, or None when the output is not one."""
    words = stdout.split()
    digest = words[0].lstrip("\\").lower() if words else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def parse_devices(output: str) -> list[AdbDevice]:
    """Parse ``adb devices``: a header line, then ``serial<TAB>state`` lines."""
    devices = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith(("List of devices", "*")):
            continue
        devices.append(AdbDevice(parts[0], parts[1]))
    return devices


def choose_device(devices: Sequence[AdbDevice], serial: str | None, describe: str) -> AdbDevice:
    """Pick the device to use, or explain precisely why none is usable."""
    if not devices:
        raise TransportError(
            f"{describe}: no Android device attached (`adb devices` lists none). Connect it by USB and enable "
            f"USB debugging (Settings > Developer options), or for a device on the network run "
            f"`adb connect <host>:5555`.")
    if serial is None:
        if len(devices) > 1:
            listed = ", ".join(d.serial for d in devices)
            raise TransportError(f"{describe}: several Android devices are attached ({listed}); "
                                 f"set transport.serial in the profile to pick one")
        device = devices[0]
    else:
        matches = [d for d in devices if d.serial == serial]
        if not matches:
            listed = ", ".join(d.serial for d in devices)
            raise TransportError(f"{describe}: Android device {serial} is not attached (attached: {listed}); "
                                 f"check the cable or `adb connect {serial}`")
        device = matches[0]
    if device.state == "unauthorized":
        raise TransportError(f"{describe}: device {device.serial} has not authorised this computer: unlock it "
                             f"and accept the 'Allow USB debugging?' prompt")
    if device.state != "device":
        raise TransportError(f"{describe}: device {device.serial} is {device.state}; reconnect it "
                             f"(`adb reconnect`) and check `adb devices`")
    return device


class AdbTransport(TransportBase):
    def __init__(self, connection: AdbConnection, *, name: str) -> None:
        self.connection = connection
        self.name = name
        self.serial: str | None = connection.serial

    def describe(self) -> str:
        return f"{self.name} (adb {self.serial or 'default device'})"

    def _adb(self, *args: str, timeout: float, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self._call(adb_argv(self.connection.adb_path, self.serial, *args), timeout=timeout, stdin=stdin)

    def _call(self, argv: list[str], *, timeout: float, stdin: bytes | None = None,
              label: str | None = None) -> subprocess.CompletedProcess[bytes]:
        if shutil.which(argv[0]) is None:
            raise TransportError(f"{self.describe()}: {argv[0]!r} not found: install the Android platform tools "
                                 f"(Debian/Ubuntu: `apt-get install adb`) or set transport.adb_path")
        try:
            return subprocess.run(argv, input=stdin if stdin is not None else b"", capture_output=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise CommandTimeout(f"{self.describe()}: command timeout ({label or f'{timeout:g}s'}) expired running: "
                                 f"{shown_command(shlex.join(argv))}") from err

    def connect(self) -> None:
        proc = self._call(adb_argv(self.connection.adb_path, None, "devices"),
                          timeout=self.connection.connect_timeout_s,
                          label=f"{self.connection.connect_timeout_s:g}s, transport.connect_timeout_s")
        if proc.returncode != 0:
            raise TransportError(f"{self.describe()}: `adb devices` failed: "
                                 f"{proc.stderr.decode('utf-8', 'replace').strip()}")
        device = choose_device(parse_devices(proc.stdout.decode("utf-8", "replace")), self.connection.serial,
                               self.describe())
        self.serial = device.serial

    def close(self) -> None:
        pass  # adb keeps no per-transport connection; the server is shared

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True,
            stdin: bytes | None = None) -> RunResult:
        args = check_argv(argv)
        limit, label = command_limit(timeout, self.connection.command_timeout_s)
        proc = self._call(shell_argv(self.connection.adb_path, self.serial, args), timeout=limit, stdin=stdin,
                          label=label)
        result = RunResult(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                           proc.stderr.decode("utf-8", "replace"))
        self._raise_if_lost(result.stderr)
        if check and result.returncode != 0:
            raise command_failed(self.describe(), args, result)
        return result

    def put(self, local: Path, remote: str, *, progress: Progress | None = None) -> None:
        if not Path(local).is_file():
            raise TransportError(f"{self.describe()}: cannot upload {local}: no such local file")
        size = Path(local).stat().st_size
        self._transfer(push_argv(self.connection.adb_path, self.serial, Path(local), remote),
                       f"upload of {local} to {remote}")
        if progress is not None:
            progress(size, size)  # adb reports progress only to a terminal

    def put_hashed(self, local: Path, remote: str, *, progress: Progress | None = None,
                   offset: int = 0) -> str | None:
        """Push, flush, and return the sha256 the phone computes of ``remote`` (None: no hashing tool there).

        deploy/upload.py compares it with the local file's before renaming the file into place."""
        if offset:
            raise ResumeRefused(f"{self.describe()}: adb push cannot continue a partial file; sending "
                                f"{Path(local).name} whole")
        self.put(local, remote, progress=progress)
        self.run(["sync"], check=False)  # toybox's sync flushes every filesystem: the file is on storage
        return self.sha256(remote)

    def sha256(self, remote: str) -> str | None:
        """The phone's sha256 of ``remote``: ``sha256sum``, else ``toybox sha256sum``; None when it has neither."""
        for tool in SHA256_COMMANDS:
            result = self.run(sha256_argv(remote, tool), check=False)
            digest = parse_sha256(result.stdout) if result.returncode == 0 else None
            if digest is not None:
                return digest
            if result.returncode not in _NOT_FOUND and tool != SHA256_COMMANDS[-1]:
                raise TransportError(f"{self.describe()}: `{shlex.join(sha256_argv(remote, tool))}` failed: "
                                     f"{(result.stderr or result.stdout).strip()[-300:] or result.returncode}")
        return None

    def get(self, remote: str, local: Path) -> None:
        self._transfer(pull_argv(self.connection.adb_path, self.serial, remote, Path(local)),
                       f"download of {remote} to {local}")

    def _transfer(self, argv: list[str], what: str) -> None:
        proc = self._call(argv, timeout=self.connection.command_timeout_s,
                          label=f"{self.connection.command_timeout_s:g}s, transport.command_timeout_s")
        stderr = proc.stderr.decode("utf-8", "replace")
        self._raise_if_lost(stderr)
        if proc.returncode != 0:
            raise TransportError(f"{self.describe()}: {what} failed: {stderr.strip() or proc.stdout.decode()}")

    def _raise_if_lost(self, stderr: str) -> None:
        first = stderr.lstrip().splitlines()[0] if stderr.strip() else ""
        if first.startswith(_ADB_LOST):
            raise TransportUnavailable(f"{self.describe()}: lost the device: {first}")
