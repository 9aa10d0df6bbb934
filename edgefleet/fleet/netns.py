"""Network namespaces, veth pairs, addresses and shaping, through ``ip`` and ``tc``.

Every device gets 10.213.<n>.0/30: the host side of its veth is .1, the device .2.
Only addresses of namespaces created here are ever targeted.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from edgefleet.fleet.system import FleetError, find_tool, require_tool, run

SUPERNET = ipaddress.ip_network("10.213.0.0/16")
DEVICE_IFNAME = "eth0"


@dataclass(frozen=True)
class Link:
    namespace: str
    host_if: str
    index: int

    @property
    def host_address(self) -> str:
        return f"10.213.{self.index}.1"

    @property
    def device_address(self) -> str:
        return f"10.213.{self.index}.2"


def _ip() -> str:
    return require_tool("ip", "iproute2")


def used_indexes() -> set[int]:
    """Third octets of 10.213.x.y addresses already on this host (ours or another fleet's)."""
    out = run([_ip(), "-o", "-4", "addr", "show"]).stdout
    return {int(m.group(1)) for m in re.finditer(r"\binet 10\.213\.(\d+)\.\d+/", out)}


def allocate_indexes(count: int) -> list[int]:
    used = used_indexes()
    free = [i for i in range(256) if i not in used]
    if len(free) < count:
        raise FleetError(f"no free 10.213.x.0/30 subnets left for {count} devices (only {len(free)}); "
                         f"run fleet_down on old fleets")
    return free[:count]


def list_namespaces() -> list[str]:
    if find_tool("ip") is None:
        return []
    out = run([_ip(), "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_links() -> list[str]:
    if find_tool("ip") is None:
        return []
    out = run([_ip(), "-o", "link", "show"], check=False).stdout
    # "7: efab12h00@if6: <...>" -> efab12h00
    return [m.group(1) for m in re.finditer(r"^\d+:\s+([^:@\s]+)", out, re.MULTILINE)]


def create(link: Link, device_if: str) -> None:
    ip, ns = _ip(), link.namespace
    run([ip, "netns", "add", ns])
    run([ip, "link", "add", link.host_if, "type", "veth", "peer", "name", device_if])
    run([ip, "link", "set", device_if, "netns", ns])
    run([ip, "-n", ns, "link", "set", device_if, "name", DEVICE_IFNAME])
    run([ip, "addr", "add", f"{link.host_address}/30", "dev", link.host_if])
    run([ip, "link", "set", link.host_if, "up"])
    run([ip, "-n", ns, "addr", "add", f"{link.device_address}/30", "dev", DEVICE_IFNAME])
    run([ip, "-n", ns, "link", "set", DEVICE_IFNAME, "up"])
    run([ip, "-n", ns, "link", "set", "lo", "up"])


def limit_bandwidth(link: Link, kbit: int) -> None:
    tc = require_tool("tc", "iproute2")
    # tbf needs a bucket of at least rate/HZ; 1/10 s of traffic is comfortably above that.
    burst_bytes = max(32 * 1024, kbit * 1000 // 8 // 10)
    run([tc, "qdisc", "replace", "dev", link.host_if, "root", "tbf", "rate", f"{kbit}kbit",
         "burst", str(burst_bytes), "latency", "100ms"])


def set_device_link(namespace: str, up: bool) -> None:
    """Take the device's side of the cable down (or up): the host sees NO-CARRIER and packets
    to the device are dropped, as if the board's cable were pulled."""
    run([_ip(), "-n", namespace, "link", "set", DEVICE_IFNAME, "up" if up else "down"])


def namespace_pids(namespace: str) -> set[int]:
    proc = run([_ip(), "netns", "pids", namespace], check=False)
    return {int(p) for p in proc.stdout.split() if p.isdigit()}


def delete_namespace(namespace: str) -> None:
    # Deleting the namespace destroys the veth end inside it, and with it the host end.
    run([_ip(), "netns", "delete", namespace], check=False)


def delete_link(ifname: str) -> None:
    run([_ip(), "link", "delete", ifname], check=False)
