"""A device inventory: device name -> how to reach it, where to work, and what it is.

Deploy reads any inventory; the emulated fleet is one writer of it (``fleet.up`` saves one).
This module is deploy's, so a deploy to a real board needs nothing from the fleet.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet.errors import ConfigError
from edgefleet.lab.config import Lab
from edgefleet.transport.connections import SshConnection

INVENTORY_FILE = "inventory.json"
# The emulation record's kind for a device whose CPU and OS are this host's (`fleet.up --emulate host`);
# records without a kind predate qemu-user devices and were all of this kind.
HOST_CPU = "host-cpu"


def is_host_cpu(emulated: bool, emulation: Mapping[str, Any] | None) -> bool:
    """Does this host's CPU stand in for the board (so its arch may differ and it gets this host's wheels)?"""
    return emulated and (emulation or {}).get("kind", HOST_CPU) == HOST_CPU

Isolation = Literal["netns", "loopback"]


class InventoryDevice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    stands_in_for: str
    arch: str
    connection: SshConnection
    workdir: str
    emulated: bool = True
    # The host's end of the device's cable (netns fleets only); see fleet.set_link.
    link: str | None = None
    # Where the device's root filesystem is on this host (qemu-user devices); None: the device sees the host's.
    root: str | None = None
    # How it is emulated (kind, emulator and version, emulated and real OS, what differs): run.json and every
    # result carry it.
    emulation: dict[str, Any] = {}
    # Bench settings the fleet chooses for its devices (short runs under qemu), recorded with each run.
    bench: dict[str, int | float] = {}
    # Device-side paths: the lock that makes devices sharing this host's cores take turns timing, and the
    # deploy locks of all of them (timed sections wait while any is being deployed to).
    shared_host_lock: str | None = None
    host_deploy_locks: tuple[str, ...] = ()
    # The labgrid place that hands the device out (`fleet.up --labgrid`): deploy and collect reserve it first.
    lab: Lab | None = None


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    isolation: Isolation
    devices: dict[str, InventoryDevice]

    def device(self, name: str) -> InventoryDevice:
        try:
            return self.devices[name]
        except KeyError:
            known = ", ".join(sorted(self.devices)) or "none"
            raise ConfigError(f"no emulated device {name!r} in the fleet inventory (devices: {known})") from None


def inventory_path(path: Path) -> Path:
    return path / INVENTORY_FILE if path.is_dir() else path


def load_inventory(path: Path) -> Inventory:
    """Read an inventory; ``path`` is the fleet's state directory or the inventory file itself."""
    file = inventory_path(Path(path))
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{file}: no fleet inventory here; bring the emulated fleet up first") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{file}: unreadable fleet inventory: {err}") from err
    try:
        return Inventory.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{file}: invalid fleet inventory:\n{err}") from err


def save_inventory(inventory: Inventory, state_dir: Path) -> Path:
    file = state_dir / INVENTORY_FILE
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(inventory.model_dump_json(indent=2) + "\n")
    os.replace(tmp, file)
    return file
