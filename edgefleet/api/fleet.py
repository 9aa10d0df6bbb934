"""`invoke fleet.up` / `fleet.down`: the emulated device fleet, one network namespace and sshd per device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from edgefleet.api.context import Env
from edgefleet.deploy.devices import fleet_dir
from edgefleet.fleet import fleet_down, fleet_up
from edgefleet.fleet.devices import DeviceSpec
from edgefleet.fleet.inventory import Inventory
from edgefleet.profiles.load import load_profile

# android-arm64 is reached over adb and has no Python, so it has no SSH stand-in.
DEFAULT_DEVICES = ("rpi3", "jetson-nano", "coral")


@dataclass(frozen=True)
class FleetUpOptions:
    devices: tuple[str, ...] = DEFAULT_DEVICES
    isolation: str = "auto"      # netns as root, loopback sshd processes otherwise
    workspace: Path | None = None


@dataclass(frozen=True)
class FleetDownOptions:
    workspace: Path | None = None


def device_specs(targets_dir: Path, names: tuple[str, ...]) -> list[DeviceSpec]:
    specs = []
    for name in names:
        device = load_profile(targets_dir, name).profile.device
        specs.append(DeviceSpec(name=name, stands_in_for=device.board, arch=device.arch))
    return specs


def up(options: FleetUpOptions, env: Env | None = None) -> Inventory:
    env = env or Env()
    ws = env.workspace(options.workspace)
    specs = device_specs(ws.targets_dir, options.devices)
    inventory = fleet_up(fleet_dir(ws.state_dir), specs, isolation=options.isolation)  # type: ignore[arg-type]
    table = Table(title=f"emulated fleet ({inventory.isolation}); results from it are labelled emulated: true")
    for column in ("device", "stands in for", "arch", "address", "workdir"):
        table.add_column(column)
    for name, device in inventory.devices.items():
        conn = device.connection
        table.add_row(name, device.stands_in_for, device.arch, f"{conn.host}:{conn.port or 22}", device.workdir)
    env.console.print(table)
    return inventory


def down(options: FleetDownOptions, env: Env | None = None) -> None:
    env = env or Env()
    ws = env.workspace(options.workspace)
    fleet_down(fleet_dir(ws.state_dir))
    env.console.print("emulated fleet removed")
