"""Fixtures for tests against the emulated fleet (real sshd in network namespaces).

Load with ``pytest_plugins = ["fleet_fixtures"]`` so the session fleet is brought up once
for all test files that use it.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.fleet import DeviceSpec, EmulatedFleet
from edgefleet.fleet.system import find_tool
from edgefleet.transport.base import Transport
from edgefleet.transport.connections import SshConnection
from edgefleet.transport.registry import open_transport

FLEET_DEVICES = (
    DeviceSpec(name="rpi3", stands_in_for="Raspberry Pi 3 Model B", arch="armv7l"),
    # A small tmpfs workdir, for the disk-full precheck.
    DeviceSpec(name="coral", stands_in_for="Coral Dev Board", arch="aarch64", tmpfs_mb=16),
)


def require_fleet_tools(isolation: str = "netns") -> None:
    """Skip (outside CI) or fail (CI set) when the host cannot run an emulated fleet."""
    missing = []
    if find_tool("sshd") is None:
        missing.append("sshd (apt-get install openssh-server)")
    if isolation == "netns":
        if os.geteuid() != 0:
            missing.append("root (network namespaces)")
        if find_tool("ip") is None:
            missing.append("ip (apt-get install iproute2)")
    if missing:
        message = "the emulated fleet needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def quick(connection: SshConnection, **changes: object) -> SshConnection:
    """Short timeouts, so fault tests finish in seconds."""
    values: dict[str, object] = {"connect_timeout_s": 2.0, "command_timeout_s": 60.0, "io_timeout_s": 5.0}
    values.update(changes)
    return connection.model_copy(update=values)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedFleet]:
    require_fleet_tools()
    with EmulatedFleet(tmp_path_factory.mktemp("fleet"), FLEET_DEVICES) as running:
        yield running


@pytest.fixture
def rpi3(fleet: EmulatedFleet) -> Iterator[Transport]:
    with open_transport(quick(fleet.device("rpi3").connection), name="rpi3") as transport:
        yield transport


@pytest.fixture
def coral(fleet: EmulatedFleet) -> Iterator[Transport]:
    with open_transport(quick(fleet.device("coral").connection), name="coral") as transport:
        yield transport


@pytest.fixture
def rpi3_scratch(fleet: EmulatedFleet) -> Iterator[Path]:
    """A fresh directory inside rpi3's workdir. The namespaces share the host's filesystem,
    so the test can inspect from the host what the device wrote."""
    path = Path(fleet.device("rpi3").workdir) / f"t-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)
