"""One run per device at a time: an atomic ``mkdir <workdir>/.lock`` with a holder.json inside."""
from __future__ import annotations

import getpass
import json
import os
import posixpath
import socket
import time
from datetime import datetime, timezone
from types import TracebackType

from pydantic import BaseModel, ValidationError

from edgefleet.processes import pid_alive
from edgefleet.errors import DeployError, DeviceBusyError
from edgefleet.transport.base import Transport

LOCK_DIR = ".lock"
HOLDER_FILE = "holder.json"


class LockHolder(BaseModel):
    run_id: str
    user: str
    host: str
    pid: int
    started: str  # ISO 8601, UTC

    @classmethod
    def current(cls, run_id: str) -> LockHolder:
        return cls(run_id=run_id, user=getpass.getuser(), host=socket.gethostname(), pid=os.getpid(),
                   started=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def lock_dir(workdir: str) -> str:
    return posixpath.join(workdir, LOCK_DIR)


# Each is one round trip (deploy pays a process start on the device per command).
# $1 workdir, $2 lock dir, $3 holder file name; the holder JSON on stdin. A lock released between a
# failed mkdir and the check is tried again at once; twice in a row is an error.
# Exit 0: acquired. 1: busy, the holder JSON (if written yet) on stdout. 3: no workdir. 4: cannot lock.
_ACQUIRE = """\
mkdir -p -- "$1" || exit 3
for attempt in 1 2; do
  if failed=$(mkdir -- "$2" 2>&1); then cat > "$2/$3"; exit 0; fi
  if test -d "$2"; then cat -- "$2/$3" 2>/dev/null; exit 1; fi
done
echo "$failed" >&2
exit 4
"""
_ACQUIRED, _BUSY, _NO_WORKDIR = 0, 1, 3
# $1 lock dir, $2 holder file name, $3 '"run_id":"<ours>"': removed unless another run holds it.
_RELEASE = """\
if test ! -s "$1/$2" || grep -qF -- "$3" "$1/$2"; then rm -rf -- "$1"; fi
"""


def _parse_holder(text: str) -> LockHolder | None:
    try:
        return LockHolder.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return None


def read_holder(transport: Transport, workdir: str) -> LockHolder | None:
    """Who holds the device's lock; None when nobody does or the holder file is not written yet."""
    result = transport.run(["cat", "--", posixpath.join(lock_dir(workdir), HOLDER_FILE)], check=False)
    return _parse_holder(result.stdout) if result.returncode == 0 else None


def break_lock(transport: Transport, workdir: str) -> LockHolder | None:
    """Remove a stale lock (its run crashed). Returns who held it."""
    holder = read_holder(transport, workdir)
    transport.run(["rm", "-rf", "--", lock_dir(workdir)])
    return holder


class DeviceLock:
    """``with DeviceLock(transport, workdir, run_id, wait_s=30):`` ... only one run touches the device."""

    def __init__(self, transport: Transport, workdir: str, run_id: str, wait_s: float = 0,
                 poll_s: float = 0.5) -> None:
        self.transport = transport
        self.workdir = workdir
        self.run_id = run_id
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.path = lock_dir(workdir)
        self.held = False

    def acquire(self) -> LockHolder:
        t = self.transport
        holder = LockHolder.current(self.run_id)
        deadline = time.monotonic() + self.wait_s
        while True:
            attempt = t.run(["sh", "-c", _ACQUIRE, "sh", self.workdir, self.path, HOLDER_FILE],
                            stdin=holder.model_dump_json().encode(), check=False)
            if attempt.returncode == _ACQUIRED:
                self.held = True
                return holder
            if attempt.returncode == _NO_WORKDIR:
                raise DeployError(f"{t.describe()}: cannot create the workdir {self.workdir}: "
                                  f"{attempt.stderr.strip() or 'mkdir failed'}")
            if attempt.returncode != _BUSY:
                raise DeployError(f"{t.describe()}: cannot create the lock {self.path}: "
                                  f"{attempt.stderr.strip() or f'exit {attempt.returncode}'}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceBusyError(self._busy_message(_parse_holder(attempt.stdout)))
            time.sleep(min(self.poll_s, remaining))

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        # Someone broke our lock and took the device: theirs now, left alone (the script checks the holder).
        needle = json.dumps({"run_id": self.run_id}, separators=(",", ":"), ensure_ascii=False)[1:-1]
        self.transport.run(["sh", "-c", _RELEASE, "sh", self.path, HOLDER_FILE, needle], check=False)

    def _busy_message(self, holder: LockHolder | None) -> str:
        name = self.transport.name
        how = (f"wait for it to finish (or pass a longer wait), or, if that run is gone, break the stale lock "
               f"by removing {self.path} on the device (`rm -rf {self.path}`)")
        if holder is None:
            return f"{name} busy: locked by another run that is still starting ({self.path}); {how}"
        where = f"{holder.user}@{holder.host}, pid {holder.pid}"
        stale = ""
        if holder.host == socket.gethostname() and not pid_alive(holder.pid):
            stale = f"; pid {holder.pid} no longer runs on this host, so the lock looks stale"
        return f"{name} busy: held by run {holder.run_id} since {holder.started} ({where}{stale}); {how}"

    def __enter__(self) -> DeviceLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

