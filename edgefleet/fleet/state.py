"""What a fleet created on the host, recorded BEFORE each thing is created, so that
fleet_down can undo a run that crashed halfway."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet.deploy.inventory import Isolation

STATE_FILE = "fleet-state.json"


class DeviceState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    device_dir: str
    workdir: str
    address: str
    port: int
    namespace: str | None = None
    host_if: str | None = None
    index: int | None = None
    tmpfs: bool = False


class FleetState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str
    isolation: Isolation
    devices: dict[str, DeviceState] = {}

    def save(self, state_dir: Path) -> None:
        file = state_dir / STATE_FILE
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        os.replace(tmp, file)


def load_state(state_dir: Path) -> FleetState | None:
    """The recorded state, or None when there is none (or it is unreadable: the sweep still runs)."""
    try:
        return FleetState.model_validate(json.loads((state_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, ValidationError):
        return None
