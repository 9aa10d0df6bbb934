"""Bring an emulated fleet up and tear it down.

With root, each device is a network namespace with its own veth and address and a
real sshd inside. Without root, each device is an sshd on 127.0.0.x at a high port
(no link control, bandwidth caps or tmpfs workdirs then).
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
import shutil
import socket
import posixpath
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from edgefleet.errors import ConfigError
from edgefleet.fleet import netns, sshd
from edgefleet.deploy.lock import lock_dir
from edgefleet.fleet.devices import (DeviceSpec, emulation_record, fleet_tag, namespace_name, slug, veth_names,
                                     write_identity)
from edgefleet.deploy.inventory import INVENTORY_FILE, Inventory, InventoryDevice, Isolation, save_inventory
from edgefleet.fleet.keys import generate_keypair
from edgefleet.fleet.rootfs import ensure_rootfs, rootfs_info
from edgefleet.fleet.state import STATE_FILE, DeviceState, FleetState, load_state
from edgefleet.fleet.system import (
    FleetError,
    cmdline,
    descendants,
    find_tool,
    kill_all,
    pids_matching,
    require_tool,
    run,
)
from edgefleet.fleet.userland import (HOST_SHARED, DeviceRoot, assert_unmounted, bind_peer, chroot_dir, mount_root,
                                     remove_packages)
from edgefleet.transport.connections import SshConnection
from edgefleet.transport.hostkeys import host_key_name

IsolationChoice = Literal["auto", "netns", "loopback"]

CLIENT_KEY = Path("client") / "id_ed25519"
AUTHORIZED_KEYS = Path("client") / "authorized_keys"
KNOWN_HOSTS = "known_hosts"
DEVICES_DIR = "devices"
SHARED_DIR = "host"     # host-wide files every device sees (the bench lock)
BENCH_LOCK = "bench.lock"
_OWNED = (DEVICES_DIR, SHARED_DIR, "client", KNOWN_HOSTS, INVENTORY_FILE, STATE_FILE)
# Under qemu inference is 100-500x slower than natively: short runs keep a demo in minutes. The fleet
# chooses them, and every run records them (run.json "emulation"); a profile's own numbers are for boards.
QEMU_BENCH = {"warmup_runs": 3, "min_runs": 10, "min_duration_s": 1.0, "cooldown_s": 0.0}
Say = Callable[[str], None]


def choose_isolation(requested: IsolationChoice = "auto") -> Isolation:
    root = os.geteuid() == 0
    if requested == "netns" and not root:
        raise FleetError("a network-namespace fleet needs root; run as root or use isolation='loopback'")
    if requested == "netns" or (requested == "auto" and root and find_tool("ip") is not None):
        return "netns"
    return "loopback"


def fleet_up(state_dir: Path, devices: Sequence[DeviceSpec], *, isolation: IsolationChoice = "auto",
             rootfs_cache: Path | None = None, say: Say = print) -> Inventory:
    """Create the devices, start their sshd, write ``state_dir/inventory.json`` and return it.
    Leftovers of an earlier fleet in ``state_dir`` are removed first. Devices with a userland get their
    root filesystem from ``rootfs_cache`` (default ``state_dir/../rootfs``), built there on first use."""
    specs = list(devices)
    _check_names(specs)
    mode = choose_isolation(isolation)
    require_tool("sshd", "openssh-server")
    if mode == "netns":
        require_tool("ip", "iproute2")
    if any(spec.userland for spec in specs) and os.geteuid() != 0:
        raise FleetError("devices with their own userland (qemu-user) need root for chroot and mounts; "
                         "run as root, or use the host-CPU fleet (`invoke fleet.up --emulate host`)")
    state_dir = Path(state_dir).resolve()
    fleet_down(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    with subnet_lock(mode):
        state = FleetState(tag=fleet_tag(state_dir), isolation=mode)
        state.save(state_dir)
        try:
            inventory = _create(state_dir, state, specs, Path(rootfs_cache or state_dir.parent / "rootfs"), say)
        except BaseException:
            fleet_down(state_dir)
            raise
    return inventory


def fleet_down(state_dir: Path) -> None:
    """Stop every sshd, unmount tmpfs workdirs, delete namespaces and veths and the fleet's files.
    Idempotent; also finds what a crashed run left without recording it."""
    state_dir = Path(state_dir).resolve()
    tag = fleet_tag(state_dir)
    devices_dir = state_dir / DEVICES_DIR
    state = load_state(state_dir)
    recorded = list(state.devices.values()) if state else []
    namespaces = {d.namespace for d in recorded if d.namespace}
    namespaces |= {ns for ns in netns.list_namespaces() if ns.startswith("ef-") and ns.endswith(f"-{tag}")}

    for device in recorded:
        sshd.stop(sshd.SshdFiles.in_dir(Path(device.device_dir)))
    strays = {pid for pid in pids_matching(f"-f {devices_dir}/") if "sshd" in cmdline(pid)}
    in_namespaces = set().union(*(netns.namespace_pids(ns) for ns in namespaces)) if namespaces else set()
    kill_all(descendants(strays | in_namespaces))

    roots = chroot_dir(tag)
    for folder in (devices_dir, roots):
        for mount_point in mounts_under(folder):
            run(["umount", "-l", mount_point], check=False)
        assert_unmounted(folder, mounts_under(folder))
    if roots.is_dir():
        shutil.rmtree(roots)
    for ns in namespaces:
        netns.delete_namespace(ns)
    for ifname in netns.list_links():
        if ifname.startswith(f"ef{tag}"):
            netns.delete_link(ifname)

    for name in _OWNED:
        path = state_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for tmp in state_dir.glob("*.tmp") if state_dir.is_dir() else ():
        tmp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: it holds the caller's own files too
        state_dir.rmdir()


def set_link(state_dir: Path, name: str, up: bool) -> None:
    """Pull (up=False) or plug back (up=True) the cable of one emulated device."""
    device = _recorded_device(Path(state_dir).resolve(), name)
    if device.namespace is None:
        raise FleetError(f"{name}: cutting the link needs a network-namespace fleet (run as root)")
    netns.set_device_link(device.namespace, up)


@contextmanager
def link_down(state_dir: Path, name: str) -> Iterator[None]:
    set_link(state_dir, name, False)
    try:
        yield
    finally:
        set_link(state_dir, name, True)


class EmulatedFleet:
    """``with EmulatedFleet(dir, specs) as fleet:`` ... always torn down on exit."""

    def __init__(self, state_dir: Path, devices: Sequence[DeviceSpec], *,
                 isolation: IsolationChoice = "auto", rootfs_cache: Path | None = None, say: Say = print) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.specs = list(devices)
        self.isolation = isolation
        self.rootfs_cache = rootfs_cache
        self.say = say
        self._inventory: Inventory | None = None

    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            raise FleetError("the fleet is not up; use it as a context manager")
        return self._inventory

    def device(self, name: str) -> InventoryDevice:
        return self.inventory.device(name)

    def set_link(self, name: str, up: bool) -> None:
        set_link(self.state_dir, name, up)

    def link_down(self, name: str) -> AbstractContextManager[None]:
        return link_down(self.state_dir, name)

    def __enter__(self) -> EmulatedFleet:
        self._inventory = fleet_up(self.state_dir, self.specs, isolation=self.isolation,
                                   rootfs_cache=self.rootfs_cache, say=self.say)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._inventory = None
        fleet_down(self.state_dir)


# -- internals ---------------------------------------------------------------

def _check_names(specs: Sequence[DeviceSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        key = slug(spec.name)
        if key in seen:
            raise ConfigError(f"emulated devices {seen[key]!r} and {spec.name!r} would share the "
                              f"namespace name {key!r}; rename one")
        seen[key] = spec.name
    if not specs:
        raise ConfigError("an emulated fleet needs at least one device")


@contextmanager
def subnet_lock(mode: Isolation) -> Iterator[None]:
    """Serialise netns fleet creation on this host, so two fleets never pick the same subnet.
    (Loopback fleets take free ports from the kernel and need no lock.)"""
    if mode != "netns":
        yield
        return
    path = Path(tempfile.gettempdir()) / "edgefleet-fleet.lock"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class _Prepared:
    spec: DeviceSpec
    device: DeviceState
    files: sshd.SshdFiles
    prefix: list[str]
    workdir: str                      # as the device sees it
    root: DeviceRoot | None = None
    host_key_line: str = ""
    emulation: dict[str, object] = field(default_factory=dict)


def _create(state_dir: Path, state: FleetState, specs: Sequence[DeviceSpec], rootfs_cache: Path,
            say: Say) -> Inventory:
    client_key = state_dir / CLIENT_KEY
    authorized_keys = state_dir / AUTHORIZED_KEYS
    authorized_keys.parent.mkdir(parents=True, exist_ok=True)
    authorized_keys.write_text(generate_keypair(client_key, "edgefleet-emulated-fleet") + "\n")
    known_hosts = state_dir / KNOWN_HOSTS
    indexes: list[int | None] = (list(netns.allocate_indexes(len(specs))) if state.isolation == "netns"
                                 else [None] * len(specs))
    lowers = {spec.userland.rootfs.key: ensure_rootfs(rootfs_cache, spec.userland.rootfs, say)
              for spec in specs if spec.userland is not None}
    prepared = [_prepare_device(state_dir, state, spec, index, position, authorized_keys, lowers)
                for position, (spec, index) in enumerate(zip(specs, indexes, strict=True))]
    peer_locks = _bind_peers(state_dir, prepared)
    devices: dict[str, InventoryDevice] = {}
    known_lines: list[str] = []
    for item in prepared:  # sshd last: it must see every mount made above (see userland.py)
        sshd.start(item.files, prefix=item.prefix, address=item.device.address, port=item.device.port)
        devices[item.spec.name] = _inventory_entry(item, peer_locks[item.spec.name], client_key, known_hosts)
        known_lines.append(f"{host_key_name(item.device.address, item.device.port)} {item.host_key_line}")
    known_hosts.write_text("\n".join(known_lines) + "\n")
    inventory = Inventory(isolation=state.isolation, devices=devices)
    save_inventory(inventory, state_dir)
    return inventory


def _inventory_entry(item: _Prepared, locks: tuple[str | None, tuple[str, ...]], client_key: Path,
                     known_hosts: Path) -> InventoryDevice:
    device = item.device
    return InventoryDevice(
        name=item.spec.name, stands_in_for=item.spec.stands_in_for, arch=item.spec.arch, workdir=item.workdir,
        link=device.host_if, root=str(item.root.root) if item.root else None, emulation=item.emulation,
        bench=dict(QEMU_BENCH) if item.root else {}, shared_host_lock=locks[0], host_deploy_locks=locks[1],
        connection=SshConnection(host=device.address, port=device.port, user=getpass.getuser(),
                                 key_filename=str(client_key), known_hosts=str(known_hosts)))


def _bind_peers(state_dir: Path, prepared: Sequence[_Prepared]) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """Per device: the device-side path of the host-wide bench lock, and of every device's deploy lock.
    Host-CPU devices see the host's paths; qemu devices see the others' workdirs through bind mounts."""
    shared = _shared_dir(state_dir)
    workdirs_on_host = {p.spec.name: (p.root.host_path(p.workdir) if p.root else Path(p.workdir))
                        for p in prepared}
    result = {}
    for item in prepared:
        if item.root is None:
            result[item.spec.name] = (str(shared / BENCH_LOCK),
                                      tuple(lock_dir(str(w)) for _, w in sorted(workdirs_on_host.items())))
            continue
        seen = {}
        for peer, workdir in sorted(workdirs_on_host.items()):
            seen[peer] = item.workdir if peer == item.spec.name else bind_peer(item.root, peer, workdir)
        result[item.spec.name] = (posixpath.join(HOST_SHARED, BENCH_LOCK),
                                  tuple(lock_dir(seen[peer]) for peer in sorted(seen)))
    return result


def _prepare_device(state_dir: Path, state: FleetState, spec: DeviceSpec, index: int | None, position: int,
                    authorized_keys: Path, lowers: dict[str, Path]) -> _Prepared:
    device_dir = state_dir / DEVICES_DIR / spec.name
    device_dir.mkdir(parents=True)
    files = sshd.SshdFiles.in_dir(device_dir)
    device, prefix = _network(state_dir, state, spec, index, position, device_dir)
    item = _Prepared(spec, device, files, prefix, str(device_dir / "workdir"))
    if spec.userland is not None:
        item.root = DeviceRoot(device_dir, lowers[spec.userland.rootfs.key], chroot_dir(state.tag) / spec.name)
        item.workdir = spec.userland.workdir
        mount_root(item.root, _shared_dir(state_dir))
        remove_packages(item.root, spec.userland.without_packages)
    workdir_on_host = item.root.host_path(item.workdir) if item.root else Path(item.workdir)
    workdir_on_host.mkdir(parents=True, exist_ok=True)
    if spec.tmpfs_mb:
        device.tmpfs = True
        _record(state_dir, state, device)
        _mount_tmpfs(workdir_on_host, spec)
    emulator = rootfs_info(item.root.lower)["emulator"] if item.root else None
    item.emulation = emulation_record(spec, emulator)
    write_identity(workdir_on_host, spec, emulator)
    item.host_key_line = " ".join(generate_keypair(files.host_key, f"{spec.name}-host").split()[:2])
    home: Path | str = "/root" if item.root else device_dir / "home"
    if item.root is None:
        (device_dir / "home").mkdir()
    files.config.write_text(sshd.render_config(files, address=device.address, port=device.port,
                                               authorized_keys=authorized_keys, device=spec.name, home=home,
                                               chroot=item.root.root if item.root else None))
    return item


def _network(state_dir: Path, state: FleetState, spec: DeviceSpec, index: int | None, position: int,
             device_dir: Path) -> tuple[DeviceState, list[str]]:
    workdir = str(device_dir / "workdir")
    if index is None:
        if spec.bandwidth_kbit:
            raise FleetError(f"{spec.name}: a bandwidth cap needs a network-namespace fleet (run as root)")
        address = f"127.0.0.{10 + position}"
        device = DeviceState(name=spec.name, device_dir=str(device_dir), workdir=workdir,
                             address=address, port=_free_port(address))
        _record(state_dir, state, device)
        return device, []
    host_if, device_if = veth_names(state.tag, index)
    link = netns.Link(namespace_name(spec.name, state.tag), host_if, index)
    device = DeviceState(name=spec.name, device_dir=str(device_dir), workdir=workdir,
                         address=link.device_address, port=22, namespace=link.namespace, host_if=host_if, index=index)
    _record(state_dir, state, device)
    netns.create(link, device_if)
    if spec.bandwidth_kbit:
        netns.limit_bandwidth(link, spec.bandwidth_kbit)
    return device, [require_tool("ip", "iproute2"), "netns", "exec", link.namespace]


def _shared_dir(state_dir: Path) -> Path:
    shared = state_dir / SHARED_DIR
    shared.mkdir(exist_ok=True)
    return shared


def _record(state_dir: Path, state: FleetState, device: DeviceState) -> None:
    state.devices[device.name] = device
    state.save(state_dir)


def _recorded_device(state_dir: Path, name: str) -> DeviceState:
    state = load_state(state_dir)
    if state is None:
        raise FleetError(f"no emulated fleet is up in {state_dir}")
    try:
        return state.devices[name]
    except KeyError:
        raise FleetError(f"no emulated device {name!r} in {state_dir} "
                         f"(devices: {', '.join(sorted(state.devices))})") from None


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _mount_tmpfs(workdir: Path, spec: DeviceSpec) -> None:
    if os.geteuid() != 0:
        raise FleetError(f"{spec.name}: a tmpfs workdir needs root (mount)")
    run(["mount", "-t", "tmpfs", "-o", f"size={spec.tmpfs_mb}m,mode=0755", f"edgefleet-{slug(spec.name)}",
         str(workdir)])


def mounts_under(directory: Path, *, itself: bool = False) -> list[str]:
    """Mount points below ``directory`` (and on it, with ``itself``), deepest first."""
    prefix = str(directory) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        point = _unescape(line.split()[4])
        if point.startswith(prefix) or (itself and point == str(directory)):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
