"""Verified, atomic uploads that retry across a dropped link.

The file goes to a hidden temp name next to its destination, is flushed and hashed ON
THE DEVICE, and only then renamed over the destination: the final path holds either
the old file or the complete new one, never a partial. After a dropped link the next
attempt continues the temp file where it stopped (when the transport can hash on the
device); the device then hashes the whole file, so a bad prefix is caught and resent.
"""
from __future__ import annotations

import posixpath
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.deploy.remote_fs import remote_free_bytes, remote_fsync, remote_sha256, remote_size
from edgefleet.errors import DeployError, TransportError
from edgefleet.digest import sha256_file
from edgefleet.transport.base import HashingPut, Progress, ResumeRefused, Transport, TransportUnavailable



@dataclass(frozen=True)
class UploadResult:
    sent_bytes: int   # bytes put on the wire, counting attempts that failed
    skipped: bool     # the device already had this exact file; nothing was sent
    attempts: int = 1
    resumed_bytes: int = 0  # bytes the successful attempt did not send: an earlier one had put them there


class _Corrupted(Exception):
    """The temp file's hash on the device differs: the transfer went wrong; send it again."""


def temp_name(remote: str) -> str:
    directory, name = posixpath.split(remote)
    return posixpath.join(directory, f".{name}.part-{secrets.token_hex(4)}")


def _glob_literal(name: str) -> str:
    # find's -name takes a glob; escape the name's own glob characters.
    return "".join("\\" + c if c in "*?[]\\" else c for c in name)


def _temp_pattern(remote: str) -> str:
    return _glob_literal(f".{posixpath.basename(remote)}.part-") + "*"


# Kept under this name for callers of the deploy package.
file_sha256 = sha256_file


def upload_verified(transport: Transport, local: Path, remote: str, *, sha256: str, retries: int = 4,
                    backoff_s: float = 1.0, progress: Progress | None = None,
                    sleep: Callable[[float], None] = time.sleep,
                    on_retry: Callable[[int, float, Exception], None] | None = None) -> UploadResult:
    """Make ``remote`` on the device hold exactly ``local`` (whose sha256 is ``sha256``).

    Sends nothing when the device already has it. A lost connection is retried up to
    ``retries`` times, reconnecting after ``backoff_s``, then twice that, and so on;
    ``on_retry(attempt, wait_s, error)`` hears about each retry before its wait.
    """
    local = Path(local)
    if not local.is_file():
        raise DeployError(f"{transport.describe()}: cannot upload {local}: no such file")
    expected = sha256.strip().lower()
    retries = max(0, retries)
    upload = _Upload(transport, local, remote, expected, progress)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff_s * 2 ** (attempt - 1)
            if on_retry is not None and last_error is not None:
                on_retry(attempt, wait, last_error)
            sleep(wait)
            try:
                transport.close()
                transport.connect()
            except TransportUnavailable as err:
                last_error = err
                continue
        try:
            return upload.attempt(attempt + 1)
        except (TransportUnavailable, _Corrupted) as err:
            last_error = err
        except BaseException:
            upload.discard_temps()
            raise
    upload.discard_temps()
    raise DeployError(f"{transport.describe()}: upload of {local.name} to {remote} failed after "
                      f"{retries + 1} attempts; last error: {last_error}") from last_error


class _Upload:
    def __init__(self, transport: Transport, local: Path, remote: str, sha256: str,
                 progress: Progress | None) -> None:
        self.transport = transport
        self.local = local
        self.remote = remote
        self.sha256 = sha256
        self.progress = progress
        self.size = local.stat().st_size
        self.sent = 0
        self.resumed = 0
        self.temps: list[str] = []

    def attempt(self, number: int) -> UploadResult:
        t, remote = self.transport, self.remote
        if remote_sha256(t, remote) == self.sha256:
            self.discard_temps()
            return self._result(number, skipped=self.sent == 0)
        directory = posixpath.dirname(remote) or "."
        t.run(["mkdir", "-p", "--", directory])
        offset = self._resumable_offset()
        # Temp files of an upload that died with its connection (e.g. retries exhausted), but our own.
        keep = ["!", "-name", _glob_literal(posixpath.basename(self.temps[-1]))] if offset else []
        t.run(["find", directory, "-maxdepth", "1", "-type", "f", "-name", _temp_pattern(remote), *keep,
               "-delete"], check=False)
        free = remote_free_bytes(t, directory)
        if free < self.size - offset:
            raise DeployError(f"{t.describe()}: not enough space for {self.local.name} in {directory}: "
                              f"needs {self.size - offset} bytes, {free} bytes free. Free space on the device or "
                              f"choose another workdir.")
        if not offset:
            self.temps.append(temp_name(remote))
        temp = self.temps[-1]
        try:
            got = self._send(temp, offset)
        except ResumeRefused:
            offset = 0
            got = self._send(temp, 0)
        if got != self.sha256:
            self.discard_temps()  # a bad prefix would come back on resume
            if file_sha256(self.local) != self.sha256:
                raise DeployError(f"{self.local} does not have the expected sha256 {self.sha256}: the local "
                                  f"artifact changed or is corrupt; rebuild it")
            raise _Corrupted(f"sha256 on the device is {got}, expected {self.sha256}")
        t.run(["mv", "-f", "--", temp, remote])
        self.temps.remove(temp)
        self.resumed = offset  # what this, the successful, attempt did not have to send
        return self._result(number, skipped=False)

    def _result(self, number: int, *, skipped: bool) -> UploadResult:
        return UploadResult(self.sent, skipped=skipped, attempts=number, resumed_bytes=self.resumed)

    def _resumable_offset(self) -> int:
        """How much of the file the last attempt's temp holds, when it can be continued; else 0 (and the
        old temps are removed)."""
        if self.temps and isinstance(self.transport, HashingPut):
            size = remote_size(self.transport, self.temps[-1])
            if size is not None and 0 < size <= self.size:
                return size
        self.discard_temps()
        return 0

    def _send(self, temp: str, offset: int) -> str | None:
        """Put the file at ``temp`` (its first ``offset`` bytes are there already), flushed to the device's
        storage; the sha256 the device reads there."""
        t = self.transport
        if isinstance(t, HashingPut):
            got = t.put_hashed(self.local, temp, progress=self._counting(offset), offset=offset)
            if got is not None:
                return got
        t.put(self.local, temp, progress=self._counting())
        remote_fsync(t, temp)
        return remote_sha256(t, temp)

    def _counting(self, offset: int = 0) -> Progress:
        base = self.sent - offset  # put_hashed counts from the offset; those bytes were not sent now

        def report(done: int, total: int) -> None:
            self.sent = base + done
            if self.progress is not None:
                self.progress(done, total)
        return report

    def discard_temps(self) -> None:
        """Best effort: if the device is unreachable the next upload of this file sweeps them."""
        for temp in list(self.temps):
            try:
                self.transport.run(["rm", "-f", "--", temp], check=False)
            except TransportError:
                return
            self.temps.remove(temp)
