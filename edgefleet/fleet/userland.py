"""A device's own copy of a cached root filesystem, and the mounts that make it a board.

Each device gets an overlay: the cached root filesystem is the read-only lower layer, the device's
changes (its workdir, its runtime venv, packages a test removed) go to an upper folder of its own.
The host's sshd serves the device with ``ChrootDirectory`` on this root, so sshd itself runs natively
and only what the device runs (sh, python3, the runtime) is the board's binaries under qemu-user.

Every mount is made before the device's sshd starts: ``ip netns exec`` copies the mount table when it
starts sshd, and this host's mounts do not propagate into copies made earlier.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from edgefleet.fleet.system import FleetError, run

# Inside every root: the host-wide folder (the lock that makes emulated devices take turns timing)
# and, read-write, the workdirs of the other devices on this host (their deploy locks).
HOST_SHARED = "/run/edgefleet/host"
PEERS = "/run/edgefleet/peers"


# sshd's ChrootDirectory wants every component of the path root-owned and writable by root alone; a
# workspace under /tmp (world-writable) fails that. So the roots are mounted here, one folder per fleet.
CHROOT_BASE = Path("/run/edgefleet-roots")


def chroot_dir(tag: str) -> Path:
    return CHROOT_BASE / tag


@dataclass(frozen=True)
class DeviceRoot:
    device_dir: Path     # the device's own state: its overlay's upper layer lives here
    lower: Path          # the cached root filesystem
    root: Path           # where the overlay is mounted and sshd chroots

    def host_path(self, device_path: str) -> Path:
        """Where a path the device sees lives on the host."""
        return self.root / device_path.lstrip("/")


def mount_root(device_root: DeviceRoot, shared_dir: Path) -> None:
    upper, work = device_root.device_dir / "upper", device_root.device_dir / "overlay-work"
    for folder in (upper, work):
        folder.mkdir(parents=True, exist_ok=True)
    CHROOT_BASE.mkdir(mode=0o755, exist_ok=True)
    device_root.root.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = device_root.root
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={device_root.lower},upperdir={upper},workdir={work}", str(root)])
    run(["mount", "-t", "proc", "proc", str(root / "proc")])
    # The runtime reads the CPU list from /sys ("Error in cpuinfo" without it); /dev for /dev/null.
    run(["mount", "--bind", "-o", "ro", "/sys", str(root / "sys")])
    run(["mount", "--bind", "/dev", str(root / "dev")])
    host = device_root.host_path(HOST_SHARED)
    host.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(shared_dir), str(host)])


def bind_peer(device_root: DeviceRoot, peer: str, peer_workdir_on_host: Path) -> str:
    """Make another device's workdir visible to this one; returns the path this device sees."""
    seen = posixpath.join(PEERS, peer)
    point = device_root.host_path(seen)
    point.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(peer_workdir_on_host), str(point)])
    return seen


def remove_packages(device_root: DeviceRoot, packages: tuple[str, ...]) -> None:
    """Take OS packages out of this device's copy only (the cached lower layer is untouched)."""
    if packages:
        run(["chroot", str(device_root.root), "dpkg", "--purge", *packages], timeout=300)


def assert_unmounted(directory: Path, mounts: list[str]) -> None:
    """Refuse to delete a folder that still has something mounted under it: deleting through a bind
    mount of /dev or /sys would delete the host's own files."""
    if mounts:
        raise FleetError(f"cannot remove {directory}: still mounted under it: {', '.join(mounts)}. "
                         f"Unmount them (umount -l PATH) and run fleet.down again.")
