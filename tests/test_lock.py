"""The per-device lock: atomic acquire, holder shown on contention, wait, stale-lock hints."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from edgefleet.deploy import DeviceLock, break_lock, read_holder
from edgefleet.deploy.lock import LockHolder
from edgefleet.errors import DeployError, DeviceBusyError
from edgefleet.fleet import EmulatedFleet
from edgefleet.transport.base import Transport
from edgefleet.transport.local import LocalTransport
from edgefleet.transport.registry import open_transport

pytest.register_assert_rewrite("fleet_fixtures")
from fleet_fixtures import quick  # noqa: E402

pytest_plugins = ["fleet_fixtures"]


@pytest.fixture
def second_rpi3(fleet: EmulatedFleet) -> Iterator[Transport]:
    """A second, independent connection to the same device: another run."""
    with open_transport(quick(fleet.device("rpi3").connection), name="rpi3") as transport:
        yield transport


@pytest.mark.ssh
def test_lock_records_its_holder_and_releases(rpi3: Transport, rpi3_scratch: Path) -> None:
    workdir = str(rpi3_scratch / "work")
    with DeviceLock(rpi3, workdir, "run-A") as lock:
        holder = json.loads((rpi3_scratch / "work" / ".lock" / "holder.json").read_text())
        assert holder["run_id"] == "run-A" and holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname() and holder["user"]
        assert datetime.fromisoformat(holder["started"]).tzinfo is not None
        assert lock.held
    assert not (rpi3_scratch / "work" / ".lock").exists()


@pytest.mark.ssh
def test_contention_fails_fast_naming_the_holder(rpi3: Transport, second_rpi3: Transport,
                                                 rpi3_scratch: Path) -> None:
    workdir = str(rpi3_scratch)
    with DeviceLock(rpi3, workdir, "run-A"):
        started = time.monotonic()
        with pytest.raises(DeviceBusyError) as caught:
            DeviceLock(second_rpi3, workdir, "run-B").acquire()
        assert time.monotonic() - started < 2
        message = str(caught.value)
        assert message.startswith("rpi3 busy: held by run run-A since 20")
        assert f"pid {os.getpid()}" in message and f"rm -rf {workdir}/.lock" in message
        assert "stale" not in message.split(";")[0]
        assert read_holder(rpi3, workdir).run_id == "run-A"  # type: ignore[union-attr]
    assert isinstance(caught.value, DeployError) and caught.value.exit_code == 8


@pytest.mark.ssh
def test_waiter_gets_the_lock_when_it_is_released(rpi3: Transport, second_rpi3: Transport,
                                                  rpi3_scratch: Path) -> None:
    workdir = str(rpi3_scratch)
    first = DeviceLock(rpi3, workdir, "run-A")
    first.acquire()
    releaser = threading.Timer(1.0, first.release)
    releaser.start()
    started = time.monotonic()
    with DeviceLock(second_rpi3, workdir, "run-B", wait_s=10, poll_s=0.2):
        waited = time.monotonic() - started
        assert read_holder(second_rpi3, workdir).run_id == "run-B"  # type: ignore[union-attr]
    releaser.join()
    assert 0.8 < waited < 5


@pytest.mark.ssh
def test_stale_lock_is_pointed_out_and_can_be_broken(rpi3: Transport, rpi3_scratch: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (rpi3_scratch / ".lock").mkdir()
    stale = LockHolder(run_id="run-crashed", user="ci", host=socket.gethostname(), pid=dead.pid,
                       started="2026-01-01T00:00:00+00:00")
    (rpi3_scratch / ".lock" / "holder.json").write_text(stale.model_dump_json())
    with pytest.raises(DeviceBusyError, match=f"pid {dead.pid} no longer runs on this host.*stale"):
        DeviceLock(rpi3, str(rpi3_scratch), "run-B").acquire()
    assert break_lock(rpi3, str(rpi3_scratch)) == stale
    with DeviceLock(rpi3, str(rpi3_scratch), "run-B"):
        pass


def test_release_leaves_a_lock_someone_else_took_over(tmp_path: Path) -> None:
    local = LocalTransport(name="bench")
    lock = DeviceLock(local, str(tmp_path), "run-A")
    lock.acquire()
    break_lock(local, str(tmp_path))
    with DeviceLock(local, str(tmp_path), "run-B"):
        lock.release()
        assert read_holder(local, str(tmp_path)).run_id == "run-B"  # type: ignore[union-attr]
    assert not (tmp_path / ".lock").exists()


def test_unwritable_workdir_is_not_reported_as_busy(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DeployError) as caught:
        DeviceLock(LocalTransport(name="bench"), str(blocker), "run-A").acquire()
    assert not isinstance(caught.value, DeviceBusyError)
