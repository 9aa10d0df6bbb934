"""`invoke doctor`: is this machine, and is every device, ready for edgefleet?

Host checks never import a converter (``importlib.util.find_spec`` only looks), and
device checks use short timeouts, so a dead board costs seconds, not minutes. Every
failed check says how to fix it; a failed required check makes the task exit with
ChecksFailedError's code (``edgefleet/errors.py``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import socket
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.markup import escape
from rich.table import Table

from edgefleet.api.context import Env
from edgefleet.config.validate import did_you_mean
from edgefleet.deploy.devices import fleet_dir
from edgefleet.deploy.facts import DeviceFacts, gather_facts
from edgefleet.deploy.plan import DISK_MARGIN_BYTES
from edgefleet.errors import ChecksFailedError, ConfigError, DeployError, ToolUnavailableError, TransportError
from edgefleet.fleet import binfmt
from edgefleet.fleet.binfmt import BINFMT_ROOT, EMULATIONS, BinfmtStatus
from edgefleet.deploy.inventory import INVENTORY_FILE, is_host_cpu, load_inventory
from edgefleet.fleet.system import find_tool
from edgefleet.profiles.load import load_all_profiles
from edgefleet.profiles.model import Profile
from edgefleet.transport.base import Transport, TransportUnavailable
from edgefleet.transport.connections import SshConnection
from edgefleet.transport.hostkeys import HostKeyError
from edgefleet.transport.registry import open_transport
from edgefleet.runtimes import all_runtimes, ships_wheels
from edgefleet.workspace import Workspace

Status = Literal["ok", "warn", "fail"]
MIN_PYTHON = (3, 10)
MIN_DEVICE_PYTHON = (3, 6)
HOST = "this machine"
# Imported by the local backend's steps; only looked up here, never imported.
CONVERTERS = ("tensorflow", "tf_keras", "onnx", "onnx2tf", "onnxruntime", "openvino", "tf2onnx", "ai_edge_litert")
# (tool, Debian package, what needs it)
TOOLS = (
    ("sshd", "openssh-server", "the emulated fleet"),
    ("ip", "iproute2", "the emulated fleet's network namespaces"),
    ("debootstrap", "debootstrap", "making the Docker base image"),
    ("adb", "adb", "Android targets"),
)
_FIND_SPECS = ("import importlib.util, json, sys\n"
               "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))\n")


@dataclass(frozen=True)
class DoctorOptions:
    targets: tuple[str, ...] = ()       # devices to check; default: the emulated fleet and every ssh profile
    devices: bool = True                # False: this machine only
    connect_timeout_s: float = 3.0      # per device; a profile's own shorter limit wins
    command_timeout_s: float = 20.0
    workspace: Path | None = None


@dataclass(frozen=True)
class Check:
    scope: str           # HOST or a device name
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def of(self, scope: str) -> dict[str, Check]:
        return {c.name: c for c in self.checks if c.scope == scope}

    def raise_for_failures(self) -> None:
        """Raise ChecksFailedError if a required check failed (the table printed already says which)."""
        if not self.ok:
            raise ChecksFailedError(f"doctor: {len(self.failed)} required check(s) failed; see the table above")


@dataclass(frozen=True)
class DeviceToCheck:
    name: str
    connection: SshConnection
    workdir: str
    emulated: bool
    profile: Profile | None
    host_cpu: bool = False   # this host's CPU stands in for the board (`--emulate host`): its arch differs


# -- this machine -------------------------------------------------------------------

def host_checks(ws: Workspace, profile_errors: Sequence[ConfigError]) -> list[Check]:
    checks = [_python_check()]
    for error in profile_errors:
        checks.append(Check(HOST, "profile", "fail", str(error).strip(), "fix the file at the line shown"))
    local = ws.settings.backend == "local"
    missing = [m for m in CONVERTERS if importlib.util.find_spec(m) is None]
    if missing:
        checks.append(Check(HOST, "converters", "fail" if local else "warn", f"not importable: {', '.join(missing)}",
                            "run scripts/bootstrap (it installs the converters into .venv)" if local else
                            "the docker backend brings its own; needed only for --backend local"))
    else:
        checks.append(Check(HOST, "converters", "ok", f"importable: {', '.join(CONVERTERS)}"))
    for tool, package, needed_by in TOOLS:
        path = find_tool(tool)
        checks.append(Check(HOST, tool, "ok", path) if path else
                      Check(HOST, tool, "warn", f"not on PATH (needed for {needed_by})", f"apt-get install {package}"))
    checks.extend(emulation_checks())
    for url in ws.settings.docker_hosts or (None,):
        checks.extend(_docker_checks(url, required=not local, environ=os.environ))
    return checks


def _python_check() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        want = ".".join(map(str, MIN_PYTHON))
        return Check(HOST, "python", "fail", f"{version} at {sys.executable}", f"edgefleet needs Python >= {want}")
    return Check(HOST, "python", "ok", f"{version} at {sys.executable}")


def emulation_checks(root: Path = BINFMT_ROOT) -> list[Check]:
    """qemu-user-static and its binfmt_misc registrations, for emulated devices with an armhf/arm64 userland.

    Warnings, like the fleet's other tools: only the emulated fleet needs them, and a device that
    cannot run its userland fails its own checks.
    """
    statuses = [binfmt.status(arch, root) for arch in EMULATIONS]
    checks = [_emulator_check(statuses), _mount_check(statuses[0])]
    for st in statuses:
        problems = [p for p in st.problems if p.kind == "registration"]
        name = f"binfmt {st.name}"
        checks.append(Check(HOST, name, "ok", f"{st.debian_arch}: enabled, flags {st.flags}, {st.interpreter}")
                      if not problems else
                      Check(HOST, name, "warn", "; ".join(p.what for p in problems) + f" (needed for {st.debian_arch} "
                            "devices)", "; ".join(p.fix for p in problems)))
    return checks


def _emulator_check(statuses: Sequence[BinfmtStatus]) -> Check:
    problems = [p for st in statuses for p in st.problems if p.kind == "package"]
    if find_tool("update-binfmts") is None:
        problems.append(binfmt.Problem("package", "update-binfmts is not installed", binfmt.INSTALL_FIX))
    if problems:
        return Check(HOST, "qemu-user-static", "warn", "; ".join(p.what for p in problems) +
                     " (needed for the emulated fleet's armhf and arm64 devices)",
                     "; ".join(dict.fromkeys(p.fix for p in problems)))
    return Check(HOST, "qemu-user-static", "ok", ", ".join(f"{st.version} ({st.emulator})" for st in statuses))


def _mount_check(st: BinfmtStatus) -> Check:
    problem = next((p for p in st.problems if p.kind == "mount"), None)
    if problem:
        return Check(HOST, "binfmt_misc", "warn", problem.what + " (needed for armhf and arm64 devices)", problem.fix)
    return Check(HOST, "binfmt_misc", "ok", f"mounted at {st.root}")


def _docker_checks(docker_host: str | None, *, required: bool, environ: Mapping[str, str]) -> list[Check]:
    import docker.errors

    from edgefleet.backends.engines import connect, describe, engine_errors
    from edgefleet.images.base_image import DEFAULT_BASE_IMAGE

    bad: Status = "fail" if required else "warn"
    name = "docker engine" if docker_host is None else f"docker engine {describe(docker_host, environ)}"
    try:
        client = connect(docker_host, environ, timeout=5)
        version = client.version().get("Version", "?")
    except (ToolUnavailableError, *engine_errors()) as exc:
        return [Check(HOST, name, bad, f"unreachable: {exc}",
                      "start the engine (`systemctl start docker`) or set DOCKER_HOST / docker_host")]
    checks = [Check(HOST, name, "ok", f"reachable, version {version}")]
    try:
        client.images.get(DEFAULT_BASE_IMAGE)
        checks.append(Check(HOST, "base image", "ok", f"{DEFAULT_BASE_IMAGE} present"))
    except docker.errors.ImageNotFound:
        can_make = find_tool("debootstrap") is not None
        checks.append(Check(HOST, "base image", "warn" if can_make else bad, f"{DEFAULT_BASE_IMAGE} missing",
                            "the first docker build makes it with debootstrap" if can_make else
                            "apt-get install debootstrap; the first docker build then makes it"))
    except docker.errors.DockerException as exc:
        checks.append(Check(HOST, "base image", bad, f"cannot list images: {exc}", "check the Docker engine"))
    finally:
        client.close()
    return checks


# -- devices --------------------------------------------------------------------------

def devices_to_check(ws: Workspace, profiles: Sequence[Profile], wanted: Sequence[str]) -> list[DeviceToCheck]:
    """The emulated fleet's devices, then every ssh profile the fleet does not stand in for."""
    by_name = {p.name: p for p in profiles}
    found: dict[str, DeviceToCheck] = {}
    inventory_file = fleet_dir(ws.state_dir) / INVENTORY_FILE
    if inventory_file.is_file():
        for name, entry in load_inventory(inventory_file).devices.items():
            found[name] = DeviceToCheck(name, entry.connection, entry.workdir, entry.emulated, by_name.get(name),
                                        is_host_cpu(entry.emulated, entry.emulation))
    for profile in profiles:
        if profile.name not in found and isinstance(profile.transport, SshConnection):
            found[profile.name] = DeviceToCheck(profile.name, profile.transport, profile.workdir, False, profile)
    if not wanted:
        return list(found.values())
    unknown = [w for w in wanted if w not in found]
    if unknown:
        raise ConfigError(f"no device {unknown[0]!r} to check{did_you_mean(unknown[0], found)}; "
                          f"known: {', '.join(sorted(found)) or 'none'} (the emulated fleet and ssh profiles)")
    return [found[w] for w in wanted]


def device_checks(device: DeviceToCheck, options: DoctorOptions) -> list[Check]:
    conn = device.connection
    quick = conn.model_copy(update={
        "connect_timeout_s": min(conn.connect_timeout_s, options.connect_timeout_s),
        "command_timeout_s": min(conn.command_timeout_s, options.command_timeout_s),
        "io_timeout_s": min(conn.io_timeout_s, options.command_timeout_s),
    })
    checks: list[Check] = []
    name = device.name
    try:
        with open_transport(quick, name=name) as transport:
            checks.append(Check(name, "reachable", "ok", transport.describe()))
            checks.append(Check(name, "host key", "ok", "matches known_hosts"))
            facts = gather_facts(transport, device.workdir, {})
            checks.extend(_facts_checks(device, facts))
            checks.append(_runtime_check(device, facts, transport))
    except HostKeyError as exc:
        problem, _, how = _strip(name, str(exc)).partition("\n")
        checks.append(Check(name, "host key", "fail", problem, how))
    except TransportError as exc:
        detail = _strip(name, str(exc))
        if checks:  # connected; a later command failed or hung
            checks.append(Check(name, "facts", "fail", detail, "see the message; raise transport.command_timeout_s "
                                                               "if the device is just slow"))
        elif isinstance(exc, TransportUnavailable) or isinstance(exc.__cause__, socket.gaierror):
            checks.append(Check(name, "reachable", "fail", detail, _unreachable_fix(device)))
        else:
            checks.append(Check(name, "login", "fail", detail, "install your public key on the device "
                                                               "(ssh-copy-id) or fix transport.user/key_filename"))
    except DeployError as exc:
        checks.append(Check(name, "facts", "fail", _strip(name, str(exc)), "see the message"))
    return checks


def _unreachable_fix(device: DeviceToCheck) -> str:
    if device.emulated:
        return f"the emulated fleet is down or broken: `invoke fleet.down` then `invoke fleet.up --devices {device.name}`"
    return (f"power the board and check its network and transport.host in targets/{device.name}.yaml; "
            f"without the board, stand in an emulated one: `invoke fleet.up --devices {device.name}`")


def _facts_checks(device: DeviceToCheck, facts: DeviceFacts) -> list[Check]:
    name, profile = device.name, device.profile
    checks = []
    if profile is None:
        checks.append(Check(name, "arch", "warn", f"{facts.arch}; no profile named {name!r} to compare with",
                            f"add targets/{name}.yaml"))
    elif facts.arch == profile.device.arch:
        checks.append(Check(name, "arch", "ok", f"{facts.arch}, as the profile says"))
    elif device.host_cpu or facts.host_cpu_standin:
        checks.append(Check(name, "arch", "ok", f"emulated: this {facts.arch} host stands in for a "
                                                f"{profile.device.arch} board (results labelled emulated)"))
    else:
        checks.append(Check(name, "arch", "fail", f"device reports {facts.arch}, profile says {profile.device.arch}",
                            f"fix device.arch in targets/{name}.yaml, or point its transport at the right board"))
    version = tuple(int(x) for x in facts.python.split("."))
    want = ".".join(map(str, MIN_DEVICE_PYTHON))
    checks.append(Check(name, "python", "ok", f"{facts.python} ({facts.python_path})") if version >= MIN_DEVICE_PYTHON
                  else Check(name, "python", "fail", f"{facts.python} is too old",
                             f"the agent needs Python >= {want} on the device"))
    free_mb = facts.free_bytes / 1e6
    checks.append(Check(name, "disk", "ok", f"{free_mb:,.0f} MB free in {facts.free_path}")
                  if facts.free_bytes >= DISK_MARGIN_BYTES else
                  Check(name, "disk", "fail", f"only {facts.free_bytes:,} bytes free in {facts.free_path}; deploy keeps "
                                              f"{DISK_MARGIN_BYTES:,} in reserve",
                        "free space on the device, or choose a workdir on a bigger filesystem"))
    return checks


def _runtime_check(device: DeviceToCheck, facts: DeviceFacts, transport: Transport) -> Check:
    name, profile = device.name, device.profile
    # A host-CPU stand-in gets this host's runtime wheels at deploy, whatever its profile says.
    if profile is None or device.host_cpu or ships_wheels(profile.runtime):
        if facts.runtime:
            wanted = ", ".join(facts.runtime.get("requirements", [])) or "?"
            return Check(name, "runtime", "ok", f"venv provisioned ({wanted})")
        return Check(name, "runtime", "warn", "no runtime venv yet", "deploy provisions it from the pushed wheelhouse")
    modules = sorted({m for spec in all_runtimes() for fmt in spec.formats if getattr(profile.formats, fmt) is not None
                      for m in spec.device_modules} | {"numpy"})
    result = transport.run(["python3", "-c", _FIND_SPECS, *modules], check=False)
    try:
        present = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check(name, "runtime", "fail", f"cannot look for {profile.runtime.name}: {result.stderr.strip()[-200:]}",
                     profile.runtime.note or "install it on the device")
    found = [m for m in modules if present.get(m)]
    runners = [m for m in found if m != "numpy"]
    if runners and "numpy" in found:
        return Check(name, "runtime", "ok", f"{profile.runtime.name}: found {', '.join(found)}")
    lacking = [m for m in modules if not present.get(m)]
    return Check(name, "runtime", "fail", f"{profile.runtime.name} is not installed (no {', '.join(lacking)})",
                 profile.runtime.note or f"install {profile.runtime.name} on the device")


def _strip(name: str, message: str) -> str:
    """Drop the ``device (ssh user@host:port): `` prefix the table's scope column already shows."""
    head, sep, rest = message.partition("): ")
    return rest if sep and head.startswith(name) else message


# -- the task -------------------------------------------------------------------------

STYLE = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red bold]FAIL[/]"}


def report_table(report: DoctorReport) -> Table:
    table = Table(title="edgefleet doctor", show_lines=True)
    for column in ("where", "check", "status", "detail", "how to fix"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        table.add_row(check.scope, check.name, STYLE[check.status], escape(check.detail), escape(check.fix))
    return table


def doctor(options: DoctorOptions, env: Env | None = None) -> DoctorReport:
    env = env or Env()
    ws = env.workspace(options.workspace)
    loaded, errors = load_all_profiles(ws.targets_dir)
    devices = devices_to_check(ws, [p.profile for p in loaded], options.targets) if options.devices else []
    report = DoctorReport(host_checks(ws, errors))
    if devices:
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(devices)))) as pool:
            for checks in pool.map(lambda d: device_checks(d, options), devices):
                report.checks.extend(checks)
    env.console.print(report_table(report))
    if report.ok:
        env.console.print("[green]everything required is in place[/]")
    else:
        env.console.print(f"[red]{len(report.failed)} required check(s) failed[/]: "
                          + ", ".join(f"{c.scope}: {c.name}" for c in report.failed))
    return report
