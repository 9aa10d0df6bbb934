"""`invoke fleet.up` / `fleet.down`: the emulated device fleet, one network namespace and sshd per device."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from edgefleet.api.context import Env
from edgefleet.config.validate import did_you_mean
from edgefleet.deploy.devices import fleet_dir
from edgefleet.errors import ConfigError
from edgefleet.fleet import fleet_down, fleet_up
from edgefleet.fleet.devices import DEFAULT_DEVICES, DeviceSpec, Userland
from edgefleet.deploy.inventory import Inventory
from edgefleet.fleet.labgrid_lab import publish_fleet, stop_lab
from edgefleet.fleet.rootfs import RootfsSpec
from edgefleet.profiles.load import load_profile
from edgefleet.profiles.model import Profile
from edgefleet.workspace import Workspace

ROOTFS_CACHE_ENV = "EDGEFLEET_ROOTFS_CACHE"  # share one cache between workspaces (the test suite does)


def rootfs_cache(ws: Workspace) -> Path:
    override = os.environ.get(ROOTFS_CACHE_ENV)
    return Path(override) if override else ws.state_dir / "rootfs"


@dataclass(frozen=True)
class FleetUpOptions:
    devices: tuple[str, ...] = DEFAULT_DEVICES
    isolation: str = "auto"      # netns as root, loopback sshd processes otherwise
    # qemu: each device runs its board's CPU architecture and OS userland under qemu-user (the profile's
    # `emulation:`). host: this host's CPU, OS and runtime stand in for every board (fast, labelled so).
    emulate: str = "qemu"
    # Also start a labgrid coordinator and exporter on this host that hand out each device as a place, so
    # deploy and collect go through a lab's reservations as with shared boards (docs/labs.md).
    labgrid: bool = False
    workspace: Path | None = None


@dataclass(frozen=True)
class FleetDownOptions:
    workspace: Path | None = None


EMULATE_CHOICES = ("qemu", "host")


def device_specs(targets_dir: Path, names: tuple[str, ...], emulate: str = "qemu") -> list[DeviceSpec]:
    if emulate not in EMULATE_CHOICES:
        raise ConfigError(f"emulate: {emulate!r} is not one of {', '.join(EMULATE_CHOICES)}"
                          f"{did_you_mean(emulate, EMULATE_CHOICES)}")
    specs = []
    for name in names:
        profile = load_profile(targets_dir, name).profile
        userland = userland_for(profile) if emulate == "qemu" else None
        specs.append(DeviceSpec(name=name, stands_in_for=profile.device.board, arch=profile.device.arch,
                                userland=userland))
    return specs


def userland_for(profile: Profile, without_packages: tuple[str, ...] = ()) -> Userland:
    """The board's own userland: the profile's `emulation:` plus the OS packages its runtime needs."""
    emulation = profile.emulation
    if emulation is None:
        raise ConfigError(f"target {profile.name!r} has no `emulation:` block, so it cannot be emulated with its "
                          "own CPU architecture; add one (see targets/rpi3.yaml) or use `--emulate host`")
    rootfs = RootfsSpec(emulation.debian_arch, emulation.suite, emulation.packages,
                        tuple(sorted(set(profile.runtime.os_packages.values()))), emulation.runtime_standin,
                        emulation.standin_platform, emulation.standin_deps)
    return Userland(rootfs=rootfs, workdir=profile.workdir, os=emulation.os, board_os=profile.device.os,
                    differs=emulation.differs, without_packages=without_packages)


def up(options: FleetUpOptions, env: Env | None = None) -> Inventory:
    env = env or Env()
    ws = env.workspace(options.workspace)
    specs = device_specs(ws.targets_dir, options.devices, options.emulate)
    say = lambda line: env.console.print(escape(line))  # noqa: E731
    stop_lab(fleet_dir(ws.state_dir))  # an earlier fleet's lab would hand out devices that are gone
    inventory = fleet_up(fleet_dir(ws.state_dir), specs, isolation=options.isolation,  # type: ignore[arg-type]
                         rootfs_cache=rootfs_cache(ws), say=say)
    if options.labgrid:
        try:
            inventory = publish_fleet(fleet_dir(ws.state_dir), inventory, say)
        except BaseException:
            fleet_down(fleet_dir(ws.state_dir))
            raise
    table = Table(title=f"emulated fleet ({inventory.isolation}); results from it are labelled emulated: true")
    for column in ("device", "stands in for", "arch", "emulated by", "address", "workdir"):
        table.add_column(column)
    for name, device in inventory.devices.items():
        conn = device.connection
        by = device.emulation.get("emulator") or "this host's CPU (--emulate host)"
        table.add_row(escape(name), escape(device.stands_in_for), device.arch, escape(str(by)),
                      f"{conn.host}:{conn.port or 22}", escape(device.workdir))
    env.console.print(table)
    return inventory


def down(options: FleetDownOptions, env: Env | None = None) -> None:
    env = env or Env()
    ws = env.workspace(options.workspace)
    stop_lab(fleet_dir(ws.state_dir))
    fleet_down(fleet_dir(ws.state_dir))
    env.console.print("emulated fleet removed")
