"""Root filesystems for architecture-faithful emulated boards: a Debian userland of the board's CPU
architecture, made with debootstrap (its second stage runs under qemu-user through binfmt_misc) and
cached by what went into it, so a second ``fleet.up`` reuses it.

The cache entry is built in a temporary folder and renamed in only when complete: an interrupted build
leaves nothing that a later run could mistake for a root filesystem.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from edgefleet.fleet import binfmt
from edgefleet.fleet.system import FleetError, require_tool

# Bump when the build procedure changes what a cached root contains.
LAYOUT_VERSION = 1
INFO_FILE = "etc/edgefleet-rootfs.json"
DEBOOTSTRAP_TIMEOUT_S = 40 * 60
Say = Callable[[str], None]


@dataclass(frozen=True)
class RootfsSpec:
    """What a board's userland holds: the OS image's packages, the OS packages its profile asks the user
    to install, and PyPI wheels standing in for a vendor's runtime packages."""

    debian_arch: str
    suite: str
    packages: tuple[str, ...]
    setup_packages: tuple[str, ...] = ()
    standin_wheels: tuple[str, ...] = ()
    standin_platforms: tuple[str, ...] = ()
    standin_deps: bool = False

    @property
    def key(self) -> str:
        fields = asdict(self) | {"layout": LAYOUT_VERSION,
                                 "packages": sorted(self.packages), "setup_packages": sorted(self.setup_packages)}
        # The key's fields as first written, so the roots already cached for single-platform, no-deps stand-ins
        # keep their names; the newer settings enter the key only when they say something new.
        platforms = fields.pop("standin_platforms")
        fields["standin_platform"] = platforms[0] if len(platforms) == 1 else (list(platforms) or None)
        if not fields["standin_deps"]:
            del fields["standin_deps"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.suite}-{self.debian_arch}-{digest}"


def ensure_rootfs(cache_dir: Path, spec: RootfsSpec, say: Say = print) -> Path:
    """The cached root filesystem for ``spec``, built first if there is none (minutes, once)."""
    final = Path(cache_dir).resolve() / spec.key
    if (final / INFO_FILE).is_file():
        return final
    if spec.debian_arch != "amd64":
        binfmt.ensure(spec.debian_arch)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final):
        if (final / INFO_FILE).is_file():  # another process built it while we waited
            return final
        _build(final, spec, say)
    return final


def rootfs_info(root: Path) -> dict:
    return json.loads((root / INFO_FILE).read_text())


@contextlib.contextmanager
def _build_lock(final: Path) -> Iterator[None]:
    fd = os.open(final.with_name(final.name + ".lock"), os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(final: Path, spec: RootfsSpec, say: Say) -> None:
    staging = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for stale in final.parent.glob(f"{final.name}.tmp-*"):  # left by a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    say(f"building the {spec.suite} {spec.debian_arch} root filesystem once (debootstrap under qemu: "
        f"about 3 minutes here; cached in {final})")
    started = time.monotonic()
    try:
        _os_image(final.parent, staging, spec, say)
        if spec.setup_packages:
            _board_setup(staging, spec, say)
        if spec.standin_wheels:
            _install_standins(staging, spec, say)
        _write_info(staging, spec, time.monotonic() - started)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"root filesystem {spec.key} ready in {time.monotonic() - started:.0f} s")


def _os_image(cache_dir: Path, staging: Path, spec: RootfsSpec, say: Say) -> None:
    """The board's OS image into ``staging``: debootstrap's own, or a copy of the cached image when the board
    adds setup or stand-ins on top (two boards with one OS image debootstrap it once)."""
    base = RootfsSpec(spec.debian_arch, spec.suite, spec.packages)
    if base == spec:
        _debootstrap(staging, spec, say)
        return
    image = ensure_rootfs(cache_dir, base, say)
    say(f"copying the cached {spec.suite} {spec.debian_arch} OS image {base.key}")
    subprocess.run(["cp", "-a", "--reflink=auto", f"{image}/.", str(staging)], check=True, capture_output=True,
                   timeout=15 * 60)
    (staging / INFO_FILE).unlink()


def _debootstrap(staging: Path, spec: RootfsSpec, say: Say) -> None:
    argv = [require_tool("debootstrap", "debootstrap"), f"--arch={spec.debian_arch}", "--variant=minbase",
            f"--include={','.join(spec.packages)}", spec.suite, str(staging)]
    _stream(argv, say, "debootstrap", DEBOOTSTRAP_TIMEOUT_S)


def _board_setup(staging: Path, spec: RootfsSpec, say: Say) -> None:
    """The profile's own setup step, as a user runs it on the board: ``apt-get install`` of the OS
    packages that PyPI has no wheel for. apt's download cache is kept, so the same command also works
    offline later (tests take a package away from one device and have it installed again)."""
    say(f"board setup: apt-get install {' '.join(spec.setup_packages)} (as the profile asks the user to)")
    # No `apt-get update`: debootstrap left this suite's package lists, minutes fresh.
    with _chroot_mounts(staging):
        _stream(["chroot", str(staging), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                 "--no-install-recommends", *spec.setup_packages], say, "apt-get install", 15 * 60)


def _install_standins(staging: Path, spec: RootfsSpec, say: Say) -> None:
    """Vendor runtimes (Coral's or NVIDIA's apt packages) cannot be had here: their PyPI wheels for the
    board's platform are unpacked into the userland's site-packages in their place. The host's pip does
    it, with the target's platform and Python, so nothing is compiled and nothing runs emulated."""
    python = _python_version(staging)
    target = staging / "usr" / "local" / "lib" / f"python{python}" / "dist-packages"
    platforms = [f"--platform={tag}" for tag in spec.standin_platforms]
    say(f"runtime stand-in: {' '.join(spec.standin_wheels)} ({', '.join(spec.standin_platforms)}, python {python}"
        f"{', with their dependencies' if spec.standin_deps else ''})")
    argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
            *([] if spec.standin_deps else ["--no-deps"]), "--only-binary=:all:", *platforms,
            f"--python-version={python}", "--implementation=cp", "--target", str(target), *spec.standin_wheels]
    _stream(argv, say, "pip install (stand-in)", 15 * 60)


def _python_version(root: Path) -> str:
    """major.minor of the userland's python3, from the interpreter's file name (running it is slow)."""
    link = os.readlink(root / "usr" / "bin" / "python3")
    version = os.path.basename(link).removeprefix("python")
    if not version.count(".") == 1:
        raise FleetError(f"cannot tell the Python version of {root}: usr/bin/python3 -> {link}")
    return version


def _write_info(staging: Path, spec: RootfsSpec, seconds: float) -> None:
    info = asdict(spec) | {"key": spec.key, "python": _python_version(staging), "build_seconds": round(seconds, 1),
                           "emulator": binfmt.emulator_version(spec.debian_arch) if spec.debian_arch != "amd64"
                           else None}
    (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    """/proc and /dev for commands run in a root being built (apt and dpkg maintainer scripts need them)."""
    mounted: list[Path] = []
    try:
        for fstype, source, point in (("proc", "proc", root / "proc"), (None, "/dev", root / "dev")):
            argv = ["mount", "-t", fstype, source, str(point)] if fstype else ["mount", "--bind", source, str(point)]
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
            mounted.append(point)
        yield
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True, timeout=30)


def _stream(argv: list[str], say: Say, label: str, timeout_s: float) -> None:
    """Run a long command, showing a progress line per phase (not per package), keeping the tail for errors."""
    tail: list[str] = []
    seen: set[str] = set()  # debootstrap alternates "Retrieving X" / "Validating X": show each verb once
    deadline = time.monotonic() + timeout_s
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          stdin=subprocess.DEVNULL, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            phase = _phase(line)
            if phase and phase not in seen:
                seen.add(phase)
                say(f"  {label}: {phase}")
            if time.monotonic() > deadline:
                proc.kill()
                raise FleetError(f"{label} did not finish within {timeout_s:.0f} s: {' '.join(argv)}")
        code = proc.wait()
    if code != 0:
        raise FleetError(f"{label} failed (exit {code}): {' '.join(argv)}\n" + "\n".join(tail[-20:]))


def _phase(line: str) -> str | None:
    # debootstrap prints "I: Retrieving libc6 2.36-9"; the verb alone is the phase.
    if line.startswith("I: "):
        words = line[3:].split()
        return words[0].rstrip(".") if words else None
    if line.startswith(("Get:", "Hit:")):
        return "downloading package lists"
    if line.startswith(("Unpacking", "Setting up")):
        return "unpacking" if line.startswith("Unpacking") else "setting up"
    return None
