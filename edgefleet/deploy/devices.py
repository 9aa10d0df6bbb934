"""Where a target's device is: the emulated fleet's inventory if it lists it, else the profile; and, for a
board in a shared lab, the place to hold while using it."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.errors import ConfigError
from edgefleet.deploy.inventory import INVENTORY_FILE, is_host_cpu, load_inventory
from edgefleet.lab.config import Lab
from edgefleet.profiles.load import load_profile, profile_paths
from edgefleet.profiles.model import Profile
from edgefleet.transport.connections import Connection, SshConnection

# How long deploy and collect wait in a lab's queue for a board someone else holds.
DEFAULT_LAB_WAIT_S = 300.0


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
    # The lab place that hands the board out; its address then comes from the place (see lab_connection).
    lab: Lab | None = None

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
                                 entry.host_deploy_locks, entry.emulation, entry.bench, entry.lab)
    if device is not None and device != profile.name:
        raise ConfigError(f"device {device!r} is not in the emulated fleet's inventory; "
                          f"start it with `invoke fleet.up --devices {device}`")
    return DeviceAddress(name, profile.transport, profile.workdir, False, lab=profile.lab)


def recorded_lab(targets_dir: Path, state_dir: Path, target: str, device: str) -> Lab | None:
    """The lab place of a device an earlier deploy ran on (collect holds it again), found as deploy found it."""
    inventory_file = fleet_dir(state_dir) / INVENTORY_FILE
    if inventory_file.is_file():
        inventory = load_inventory(inventory_file)
        if device in inventory.devices:
            return inventory.devices[device].lab
    if device != target or target not in profile_paths(targets_dir):
        return None  # an emulated device of a fleet that is gone, or a target since removed: nothing to hold
    return load_profile(targets_dir, target).profile.lab


@contextmanager
def lab_connection(connection: Connection, lab: Lab | None, *, wait_s: float = DEFAULT_LAB_WAIT_S,
                   say: Callable[[str], None] = print) -> Iterator[Connection]:
    """The connection to use for a block of work on the device. For a board in a labgrid place, the place is
    reserved and acquired for the block (after waiting in the lab's queue for up to ``wait_s``) and released
    after it, also on an error or Ctrl-C; the board is reached at the place's NetworkService address, user and
    port, with the rest (keys, known_hosts, timeouts) from ``connection``."""
    if lab is None:
        yield connection
        return
    from edgefleet.lab.labgrid import LabgridPlace  # imports labgrid: only when a lab is used

    ref = lab.labgrid
    with LabgridPlace(ref.coordinator, ref.place, wait_s=wait_s, say=say) as service:
        base = connection.model_dump() if isinstance(connection, SshConnection) else {}
        try:
            board = SshConnection.model_validate({**base, "kind": "ssh", "host": service.host, "user": service.user,
                                                  "port": service.port})
        except ValidationError as err:
            raise ConfigError(f"labgrid place {ref.place} ({ref.coordinator}) publishes a NetworkService edgefleet "
                              f"refuses: {service}:\n{err}") from None
        yield board
