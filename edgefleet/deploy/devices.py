"""Where a target's device is: the emulated fleet's inventory if it lists it, else the profile."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError
from edgefleet.deploy.inventory import INVENTORY_FILE, is_host_cpu, load_inventory
from edgefleet.profiles.model import Profile
from edgefleet.transport.connections import Connection


@dataclass(frozen=True)
class DeviceAddress:
    name: str
    connection: Connection
    workdir: str
    emulated: bool
    # Devices that share one physical host name the same lock, so their runs take turns,
    shared_host_lock: str | None = None
    # and their timed sections wait while any of them is being deployed to (their deploy lock folders).
    host_deploy_locks: tuple[str, ...] = ()
    # How an emulated device is emulated (run.json and every result carry it); empty for a real board.
    emulation: Mapping[str, Any] = field(default_factory=dict)
    # Bench settings the fleet chose for this device (short runs under qemu).
    bench: Mapping[str, float] = field(default_factory=dict)

    @property
    def host_cpu(self) -> bool:
        """This host's CPU and OS stand in for the board (``--emulate host``): it gets this host's wheels."""
        return is_host_cpu(self.emulated, self.emulation)


def fleet_dir(state_dir: Path) -> Path:
    return state_dir / "fleet"


def resolve_device(profile: Profile, state_dir: Path, device: str | None = None) -> DeviceAddress:
    """An inventory entry wins over the profile's transport: that is how the emulated fleet stands in."""
    name = device or profile.name
    inventory_file = fleet_dir(state_dir) / INVENTORY_FILE
    if inventory_file.is_file():
        inventory = load_inventory(inventory_file)
        if name in inventory.devices:
            entry = inventory.devices[name]
            # Every emulated device shares this host's cores: the fleet names the lock that makes them take turns.
            return DeviceAddress(name, entry.connection, entry.workdir, entry.emulated, entry.shared_host_lock,
                                 entry.host_deploy_locks, entry.emulation, entry.bench)
    if device is not None and device != profile.name:
        raise ConfigError(f"device {device!r} is not in the emulated fleet's inventory; "
                          f"start it with `invoke fleet.up --devices {device}`")
    return DeviceAddress(name, profile.transport, profile.workdir, False)
