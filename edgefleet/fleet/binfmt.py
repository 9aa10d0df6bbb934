"""Running a foreign CPU's Debian userland on this host: qemu-user-static through binfmt_misc.

An emulated device with an armhf or arm64 userland executes its ELF binaries through the kernel's
binfmt_misc, which hands each one to qemu's static user-mode emulator. The registration must carry the
F ("fix binary") flag: the kernel then opens the interpreter once, at registration, so it also works
inside a device's root filesystem, which has no qemu binary of its own.

``status`` only looks; ``ensure`` (root) mounts binfmt_misc and enables the registration, and
never replaces or removes a registration someone else made.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgefleet.fleet.system import FleetError, find_tool, require_tool, run

BINFMT_ROOT = Path("/proc/sys/fs/binfmt_misc")
PACKAGES = "qemu-user-static binfmt-support"
INSTALL_FIX = f"apt-get install {PACKAGES}"
REINSTALL_FIX = "apt-get install --reinstall qemu-user-static"
_VERSION = re.compile(r"^(qemu-\S+) version (\S+)")


@dataclass(frozen=True)
class Emulation:
    debian_arch: str     # dpkg's name: armhf
    binfmt_name: str     # the kernel entry Debian's qemu-user-static registers: qemu-arm
    static_binary: str   # qemu-arm-static
    machine: str         # what `uname -m` says under emulation: armv7l


EMULATIONS: dict[str, Emulation] = {e.debian_arch: e for e in (
    Emulation("armhf", "qemu-arm", "qemu-arm-static", "armv7l"),
    Emulation("arm64", "qemu-aarch64", "qemu-aarch64-static", "aarch64"),
)}


def emulation(debian_arch: str) -> Emulation:
    try:
        return EMULATIONS[debian_arch]
    except KeyError:
        raise FleetError(f"no qemu emulation known for the Debian architecture {debian_arch!r}; "
                         f"known: {', '.join(EMULATIONS)}") from None


def for_machine(machine: str) -> Emulation | None:
    """The emulation for a board's ``uname -m`` (armv7l, aarch64), or None when none is known."""
    return next((e for e in EMULATIONS.values() if e.machine == machine), None)


@dataclass(frozen=True)
class Problem:
    kind: Literal["package", "mount", "registration"]
    what: str
    fix: str   # a command to run, as root

    def __str__(self) -> str:
        return f"{self.what}; fix: {self.fix}"


@dataclass(frozen=True)
class BinfmtStatus:
    debian_arch: str
    name: str                  # the binfmt entry: qemu-arm
    root: Path
    mounted: bool
    registered: bool
    enabled: bool
    fix_binary: bool           # the F flag
    flags: str                 # as the kernel shows them: "PF"
    interpreter: str | None
    emulator: str | None       # path of the static binary; None when qemu-user-static is missing
    version: str | None        # "qemu-arm 7.2.22"
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Entry:
    enabled: bool
    interpreter: str | None
    flags: str


@functools.cache
def emulator_version(debian_arch: str) -> str:
    """``qemu-arm 7.2.22``, from the static binary's --version (read once per process)."""
    emu = emulation(debian_arch)
    binary = require_tool(emu.static_binary, "qemu-user-static")
    out = run([binary, "--version"], timeout=10).stdout
    match = _VERSION.match(out)
    if match is None:
        raise FleetError(f"cannot read a version from `{binary} --version`: {out.strip()[:200]!r}; "
                         f"reinstall it: {REINSTALL_FIX}")
    return f"{match[1]} {match[2]}"


def status(debian_arch: str, root: Path = BINFMT_ROOT) -> BinfmtStatus:
    """Can this host run ``debian_arch`` binaries, also inside a device's root filesystem? Only looks."""
    emu = emulation(debian_arch)
    emulator = find_tool(emu.static_binary)
    version, problems = _version(emu, emulator)
    mounted = (root / "status").is_file()  # what update-binfmts looks for, too
    entry = _read_entry(root / emu.binfmt_name) if mounted else None
    problems += _kernel_problems(emu, root, mounted, entry)
    return BinfmtStatus(
        debian_arch=debian_arch, name=emu.binfmt_name, root=root, mounted=mounted, registered=entry is not None,
        enabled=bool(entry and entry.enabled), fix_binary="F" in (entry.flags if entry else ""),
        flags=entry.flags if entry else "", interpreter=entry.interpreter if entry else None,
        emulator=emulator, version=version, problems=tuple(problems))


def _read_entry(path: Path) -> _Entry | None:
    """The kernel's view of one registration: ``enabled``, ``interpreter X``, ``flags: PF``, ..."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    fields = {key.rstrip(":"): value.strip() for key, _, value in (line.partition(" ") for line in lines[1:])}
    return _Entry(enabled=bool(lines) and lines[0].strip() == "enabled", interpreter=fields.get("interpreter"),
                  flags=fields.get("flags", ""))


def _version(emu: Emulation, emulator: str | None) -> tuple[str | None, list[Problem]]:
    if emulator is None:
        return None, [Problem("package", f"{emu.static_binary} is not installed", INSTALL_FIX)]
    try:
        return emulator_version(emu.debian_arch), []
    except FleetError as err:  # a broken binary is a finding here, not a crash
        what = str(err).removesuffix(f"; reinstall it: {REINSTALL_FIX}")
        return None, [Problem("package", f"{emu.static_binary} is broken: {what}", REINSTALL_FIX)]


def _kernel_problems(emu: Emulation, root: Path, mounted: bool, entry: _Entry | None) -> list[Problem]:
    name, path = emu.binfmt_name, root / emu.binfmt_name
    if not mounted:
        # Without the filesystem the registrations cannot be seen; enabling is the next step anyway.
        return [Problem("mount", f"binfmt_misc is not mounted at {root}", _mount_fix(root)),
                Problem("registration", f"{name}: unknown until binfmt_misc is mounted", _enable_fix(name))]
    if entry is None:
        return [Problem("registration", f"{name} is not registered", _enable_fix(name))]
    problems = []
    if not entry.enabled:
        # update-binfmts --enable leaves an existing entry alone ("already enabled in kernel").
        problems.append(Problem("registration", f"{name} is registered but disabled", f"echo 1 > {path}"))
    if "F" not in entry.flags:
        problems.append(Problem(
            "registration", f"{name} is registered without the F flag (flags {entry.flags or 'none'!r}), so "
                            f"{entry.interpreter} must exist inside each device's root filesystem",
            f"echo -1 > {path} && update-binfmts --enable {name} (Debian's registration has the F flag)"))
    return problems


def _mount_fix(root: Path) -> str:
    mount = f"mount -t binfmt_misc binfmt_misc {root}"
    return mount if root.is_dir() else f"modprobe binfmt_misc && {mount}"


def _enable_fix(name: str) -> str:
    enable = f"update-binfmts --enable {name}"
    return enable if find_tool("update-binfmts") else f"apt-get install binfmt-support && {enable}"


def ensure(debian_arch: str, root: Path = BINFMT_ROOT) -> BinfmtStatus:
    """Make ``debian_arch`` binaries runnable here (root): mount binfmt_misc, enable the registration.

    Raises FleetError with the fixes when it cannot: not root, qemu-user-static missing, or a
    registration without the F flag (someone else's; replacing it is the administrator's call).
    """
    current = status(debian_arch, root)
    if current.ok:
        return current
    _refuse_unfixable(current)
    if not current.mounted:
        _mount(root)
        current = status(debian_arch, root)
    if not current.registered:
        run([require_tool("update-binfmts", "binfmt-support"), "--enable", current.name])
    elif not current.enabled:
        (root / current.name).write_text("1\n")  # the kernel's switch for one entry
    final = status(debian_arch, root)
    if not final.ok:
        raise FleetError(_explain(final, "still cannot after mounting and enabling"))
    return final


def _refuse_unfixable(current: BinfmtStatus) -> None:
    if os.geteuid() != 0:
        raise FleetError(_explain(current, "fixing it needs root"))
    if current.emulator is None or current.version is None:
        raise FleetError(_explain(current, "the emulator is missing or broken"))
    if current.registered and not current.fix_binary:
        raise FleetError(_explain(current, "the registration without the F flag is not edgefleet's to replace"))


def _mount(root: Path) -> None:
    if not root.is_dir():  # the directory appears once the module is loaded
        run([require_tool("modprobe", "kmod"), "binfmt_misc"])
    run([require_tool("mount", "mount"), "-t", "binfmt_misc", "binfmt_misc", str(root)])


def _explain(current: BinfmtStatus, why: str) -> str:
    lines = [f"this host cannot run {current.debian_arch} binaries through {current.name} ({why}); as root:"]
    lines += [f"  - {p}" for p in current.problems]
    return "\n".join(lines)
