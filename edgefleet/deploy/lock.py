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

from edgefleet.fleet.system import pid_alive
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


def read_holder(transport: Transport, workdir: str) -> LockHolder | None:
    """Who holds the device's lock; None when nobody does or the holder file is not written yet."""
    result = transport.run(["cat", "--", posixpath.join(lock_dir(workdir), HOLDER_FILE)], check=False)
    if result.returncode != 0:
        return None
    try:
        return LockHolder.model_validate(json.loads(result.stdout))
    except (ValueError, ValidationError):
        return None


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
        made = t.run(["mkdir", "-p", "--", self.workdir], check=False)
        if made.returncode != 0:
            raise DeployError(f"{t.describe()}: cannot create the workdir {self.workdir}: "
                              f"{made.stderr.strip() or 'mkdir failed'}")
        deadline = time.monotonic() + self.wait_s
        vanished = False
        while True:
            attempt = t.run(["mkdir", "--", self.path], check=False)
            if attempt.returncode == 0:
                holder = LockHolder.current(self.run_id)
                t.run(["tee", "--", posixpath.join(self.path, HOLDER_FILE)],
                      stdin=holder.model_dump_json().encode())
                self.held = True
                return holder
            if t.run(["test", "-d", self.path], check=False).returncode != 0:
                # Released between our mkdir and this check: try again at once. Twice in a row is an error.
                if not vanished:
                    vanished = True
                    continue
                raise DeployError(f"{t.describe()}: cannot create the lock {self.path}: "
                                  f"{attempt.stderr.strip() or 'mkdir failed'}")
            vanished = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceBusyError(self._busy_message(read_holder(t, self.workdir)))
            time.sleep(min(self.poll_s, remaining))

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = read_holder(self.transport, self.workdir)
        # Someone broke our lock and took the device: theirs now, leave it.
        if holder is not None and holder.run_id != self.run_id:
            return
        self.transport.run(["rm", "-rf", "--", self.path], check=False)

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

