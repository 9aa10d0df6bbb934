"""The emulated fleet: what fleet_up creates and that fleet_down removes all of it."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.errors import ConfigError
from edgefleet.fleet import (
    IDENTITY_FILE,
    DeviceSpec,
    EmulatedFleet,
    FleetError,
    fleet_down,
    fleet_up,
    load_inventory,
)
from edgefleet.fleet.devices import fleet_tag
from edgefleet.fleet.netns import list_links, list_namespaces
from edgefleet.fleet.state import STATE_FILE
from edgefleet.fleet.system import pids_matching
from edgefleet.transport.registry import open_transport

pytest.register_assert_rewrite("fleet_fixtures")
from fleet_fixtures import quick, require_fleet_tools  # noqa: E402

pytest_plugins = ["fleet_fixtures"]


def _leftovers(state_dir: Path) -> dict[str, list[str]]:
    tag = fleet_tag(state_dir)
    return {
        "namespaces": [ns for ns in list_namespaces() if ns.endswith(f"-{tag}")],
        "links": [link for link in list_links() if link.startswith(f"ef{tag}")],
        "processes": sorted(str(pid) for pid in pids_matching(str(state_dir.resolve()))),
        "mounts": [line for line in Path("/proc/self/mounts").read_text().splitlines()
                   if str(state_dir.resolve()) in line],
    }


NOTHING: dict[str, list[str]] = {"namespaces": [], "links": [], "processes": [], "mounts": []}


@pytest.mark.ssh
def test_inventory_describes_each_device(fleet: EmulatedFleet) -> None:
    inventory = load_inventory(fleet.state_dir)
    assert inventory == fleet.inventory
    assert inventory.isolation == "netns"
    assert sorted(inventory.devices) == ["coral", "rpi3"]
    hosts = set()
    for name, device in inventory.devices.items():
        assert device.emulated and device.name == name
        conn = device.connection
        assert conn.user == "root" and conn.port == 22 and conn.host.startswith("10.213.")
        hosts.add(conn.host)
        assert Path(conn.key_filename or "").is_file()
        assert conn.host in Path(conn.known_hosts or "").read_text()
        identity = json.loads((Path(device.workdir) / IDENTITY_FILE).read_text())
        assert identity == {"name": name, "stands_in_for": device.stands_in_for, "arch": device.arch,
                            "emulated": True, "host_arch": platform.machine(), "emulation": device.emulation}
        assert device.emulation["kind"] == "host-cpu" and device.root is None
        assert device.link is not None and len(device.link) <= 15
    assert len(hosts) == 2
    with pytest.raises(ConfigError, match="no emulated device 'nope'.*coral, rpi3"):
        inventory.device("nope")


@pytest.mark.ssh
def test_each_device_has_its_own_namespace_address_and_sshd(fleet: EmulatedFleet) -> None:
    tag = fleet_tag(fleet.state_dir)
    assert sorted(ns for ns in list_namespaces() if ns.endswith(tag)) == [f"ef-coral-{tag}", f"ef-rpi3-{tag}"]
    rpi3 = fleet.device("rpi3")
    inside = subprocess.run(["ip", "-n", f"ef-rpi3-{tag}", "-o", "-4", "addr", "show", "eth0"],
                            capture_output=True, text=True, check=True).stdout
    assert f"inet {rpi3.connection.host}/30" in inside
    assert rpi3.link in list_links()
    # Reachable through the transport, and the device's sshd really lives in that namespace.
    with open_transport(quick(rpi3.connection), name="rpi3") as transport:
        addresses = transport.run(["ip", "-o", "-4", "addr", "show"]).stdout
    assert rpi3.connection.host in addresses
    assert "10.213." not in addresses.replace(rpi3.connection.host, "")


@pytest.mark.ssh
def test_tmpfs_workdir_has_the_requested_size(fleet: EmulatedFleet) -> None:
    stat = os.statvfs(fleet.device("coral").workdir)
    assert stat.f_blocks * stat.f_frsize == 16 * 1024 * 1024
    rpi3 = os.statvfs(fleet.device("rpi3").workdir)
    assert rpi3.f_blocks * rpi3.f_frsize != 16 * 1024 * 1024


@pytest.mark.ssh
def test_bandwidth_cap_and_full_teardown(tmp_path: Path) -> None:
    require_fleet_tools()
    state_dir = tmp_path / "fleet"
    spec = DeviceSpec(name="Jetson_Nano.1", stands_in_for="Jetson Nano", arch="aarch64", bandwidth_kbit=8000)
    with EmulatedFleet(state_dir, [spec]) as fleet:
        device = fleet.device("Jetson_Nano.1")
        qdisc = subprocess.run(["tc", "qdisc", "show", "dev", device.link or ""], capture_output=True,
                               text=True, check=True).stdout
        assert "tbf" in qdisc and "8Mbit" in qdisc
        assert f"ef-jetson-nano-1-{fleet_tag(state_dir)}" in list_namespaces()
        assert _leftovers(state_dir)["processes"]
    assert _leftovers(state_dir) == NOTHING
    assert not state_dir.exists()
    fleet_down(state_dir)  # idempotent


@pytest.mark.ssh
def test_fleet_down_sweeps_a_crashed_run_without_its_state_file(tmp_path: Path) -> None:
    require_fleet_tools()
    state_dir = tmp_path / "fleet"
    specs = [DeviceSpec(name="pi", stands_in_for="Raspberry Pi 4", arch="aarch64", tmpfs_mb=4)]
    fleet_up(state_dir, specs)
    first_pids = _leftovers(state_dir)["processes"]
    # A second fleet_up in the same directory replaces the first one, leaving nothing of it.
    fleet_up(state_dir, specs)
    assert not set(first_pids) & set(_leftovers(state_dir)["processes"])
    assert len(_leftovers(state_dir)["namespaces"]) == 1
    # Crash before the state was written: fleet_down must find everything by name.
    (state_dir / STATE_FILE).unlink()
    fleet_down(state_dir)
    assert _leftovers(state_dir) == NOTHING
    assert not state_dir.exists()


@pytest.mark.ssh
def test_fleet_down_keeps_the_callers_own_files(tmp_path: Path) -> None:
    require_fleet_tools("loopback")
    (tmp_path / "notes.txt").write_text("mine")
    with EmulatedFleet(tmp_path, [DeviceSpec(name="a", stands_in_for="x", arch="armv7l")], isolation="loopback"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.ssh
def test_loopback_fleet_without_namespaces(tmp_path: Path) -> None:
    require_fleet_tools("loopback")
    state_dir = tmp_path / "fleet"
    with EmulatedFleet(state_dir, [DeviceSpec(name="pi", stands_in_for="Raspberry Pi 4", arch="aarch64")],
                       isolation="loopback") as fleet:
        device = fleet.device("pi")
        assert fleet.inventory.isolation == "loopback"
        assert device.connection.host.startswith("127.0.0.") and (device.connection.port or 0) > 1024
        assert device.link is None
        with open_transport(quick(device.connection), name="pi") as transport:
            identity = json.loads(transport.run(["cat", f"{device.workdir}/{IDENTITY_FILE}"]).stdout)
        assert identity["arch"] == "aarch64"
        with pytest.raises(FleetError, match="needs a network-namespace fleet"):
            fleet.set_link("pi", False)
        assert _leftovers(state_dir)["namespaces"] == []
    assert _leftovers(state_dir) == NOTHING


def test_device_spec_and_names_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        DeviceSpec(name="../etc", stands_in_for="x", arch="armv7l")
    with pytest.raises(ValidationError):
        DeviceSpec(name="ok", stands_in_for="x", arch="armv7l", tmpfs_mb=0)
    twins = [DeviceSpec(name="rpi.3", stands_in_for="x", arch="a"),
             DeviceSpec(name="rpi-3", stands_in_for="x", arch="a")]
    with pytest.raises(ConfigError, match="would share the namespace name"):
        fleet_up(tmp_path / "f", twins)
    assert not (tmp_path / "f").exists()


def test_missing_inventory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no fleet inventory here; bring the emulated fleet up"):
        load_inventory(tmp_path)
    (tmp_path / "inventory.json").write_text('{"version": 1, "isolation": "moon", "devices": {}}')
    with pytest.raises(ConfigError, match="invalid fleet inventory"):
        load_inventory(tmp_path / "inventory.json")
