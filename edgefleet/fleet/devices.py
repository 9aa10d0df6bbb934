"""What an emulated device stands in for, and the names it gets on the host."""
from __future__ import annotations

import hashlib
import json
import platform
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.deploy.inventory import HOST_CPU
from edgefleet.fleet.rootfs import RootfsSpec

IDENTITY_FILE = "device.json"
# The targets `fleet.up` and the demo emulate. android-arm64 is reached over adb and has no Python, so it
# has no SSH stand-in.
DEFAULT_DEVICES = ("rpi3", "jetson-nano", "coral")
# Linux interface names are at most 15 characters; ours are "ef" + tag + side + index.
IFNAME_MAX = 15


class Userland(BaseModel):
    """An architecture-faithful device: the board's CPU architecture and OS userland, run under qemu-user.
    Without one, a device is this host's own CPU and OS (the fast, explicitly labelled ``--emulate host``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rootfs: RootfsSpec
    workdir: str = Field(pattern=r"^/", description="The workdir as the device sees it (the profile's).")
    os: str = Field(description="The emulated OS, in words.")
    board_os: str = Field(description="The real board's OS, which the emulation may not reproduce.")
    differs: str = Field(description="What the emulated board does not reproduce.")
    # A device whose user has not yet run the profile's setup step: these OS packages are removed from its
    # copy of the root filesystem (tests of the error a real board without them gets).
    without_packages: tuple[str, ...] = ()


class DeviceSpec(BaseModel):
    """One emulated board."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    stands_in_for: str = Field(min_length=1, description="The board this device emulates, e.g. 'Raspberry Pi 3B'.")
    arch: str = Field(min_length=1, description="The board's machine type (uname -m), e.g. armv7l.")
    tmpfs_mb: int | None = Field(None, ge=1, description="Mount a tmpfs of this size on the workdir (disk-full tests).")
    bandwidth_kbit: int | None = Field(None, ge=8, description="Cap host->device bandwidth with tc tbf.")
    userland: Userland | None = Field(None, description="Run the board's own architecture and OS under qemu.")


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


def emulation_record(spec: DeviceSpec, emulator: str | None) -> dict[str, object]:
    """What every result from this device says about how it was emulated."""
    if spec.userland is None:
        return {"kind": HOST_CPU, "emulator": None, "host_arch": platform.machine(),
                "note": "this host's CPU, OS and Python stand in for the board"}
    land = spec.userland
    return {"kind": "qemu-user", "emulator": emulator, "host_arch": platform.machine(),
            "emulated_os": land.os, "board_os": land.board_os, "differs": land.differs,
            "runtime_standin": list(land.rootfs.standin_wheels), "rootfs": land.rootfs.key}


def identity(spec: DeviceSpec, emulator: str | None = None) -> dict[str, object]:
    return {
        "name": spec.name,
        "stands_in_for": spec.stands_in_for,
        "arch": spec.arch,
        "emulated": True,
        "host_arch": platform.machine(),
        "emulation": emulation_record(spec, emulator),
    }


def write_identity(workdir: Path, spec: DeviceSpec, emulator: str | None = None) -> Path:
    path = workdir / IDENTITY_FILE
    path.write_text(json.dumps(identity(spec, emulator), indent=2) + "\n")
    return path
