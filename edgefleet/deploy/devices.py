"""Where a target's device is: the emulated fleet's inventory if it lists it, else the profile."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgefleet.deploy.lock import lock_dir
from edgefleet.errors import ConfigError
from edgefleet.fleet.inventory import INVENTORY_FILE, load_inventory
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
            # Every emulated device is this host: one lock file, visible to all of them, serializes timing.
            return DeviceAddress(name, entry.connection, entry.workdir, entry.emulated,
                                 str(fleet_dir(state_dir).resolve() / "bench.lock"),
                                 tuple(lock_dir(e.workdir) for _, e in sorted(inventory.devices.items())))
    if device is not None and device != profile.name:
        raise ConfigError(f"device {device!r} is not in the emulated fleet's inventory; "
                          f"start it with `invoke fleet.up --devices {device}`")
    return DeviceAddress(name, profile.transport, profile.workdir, False)
