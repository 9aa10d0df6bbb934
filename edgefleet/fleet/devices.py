"""What an emulated device stands in for, and the names it gets on the host."""
from __future__ import annotations

import hashlib
import json
import platform
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

IDENTITY_FILE = "device.json"
# Linux interface names are at most 15 characters; ours are "ef" + tag + side + index.
IFNAME_MAX = 15


class DeviceSpec(BaseModel):
    """One emulated board."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    stands_in_for: str = Field(min_length=1, description="The board this device emulates, e.g. 'Raspberry Pi 3B'.")
    arch: str = Field(min_length=1, description="The board's machine type (uname -m), e.g. armv7l.")
    tmpfs_mb: int | None = Field(None, ge=1, description="Mount a tmpfs of this size on the workdir (disk-full tests).")
    bandwidth_kbit: int | None = Field(None, ge=8, description="Cap host->device bandwidth with tc tbf.")


def fleet_tag(state_dir: Path) -> str:
    """A short id for one state directory, so two fleets on one host never share names."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:20] or "dev"


def namespace_name(name: str, tag: str) -> str:
    return f"ef-{slug(name)}-{tag}"


def veth_names(tag: str, index: int) -> tuple[str, str]:
    """(host side, device side before it is renamed eth0 inside the namespace)."""
    host, device = f"ef{tag}h{index:02x}", f"ef{tag}d{index:02x}"
    assert len(host) <= IFNAME_MAX and len(device) <= IFNAME_MAX
    return host, device


def identity(spec: DeviceSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "stands_in_for": spec.stands_in_for,
        "arch": spec.arch,
        "emulated": True,
        "host_arch": platform.machine(),
    }


def write_identity(workdir: Path, spec: DeviceSpec) -> Path:
    path = workdir / IDENTITY_FILE
    path.write_text(json.dumps(identity(spec), indent=2) + "\n")
    return path
