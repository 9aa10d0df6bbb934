"""One sshd per emulated device: its config, start, readiness and stop."""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.fleet.system import FleetError, cmdline, descendants, kill_all, pid_alive, require_tool, run

PRIVSEP_DIR = Path("/run/sshd")
READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SshdFiles:
    config: Path
    host_key: Path
    pid_file: Path
    log: Path

    @classmethod
    def in_dir(cls, device_dir: Path) -> SshdFiles:
        return cls(device_dir / "sshd_config", device_dir / "ssh_host_ed25519_key",
                   device_dir / "sshd.pid", device_dir / "sshd.log")


def _q(path: Path | str) -> str:
    return '"' + str(path) + '"'


def render_config(files: SshdFiles, *, address: str, port: int, authorized_keys: Path, device: str,
                  home: Path | str, chroot: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    # Sessions of a qemu-user device run in its root filesystem; authentication (keys, host key) stays
    # on this host, before the chroot.
    chroot_lines = [f"ChrootDirectory {_q(chroot)}"] if chroot is not None else []
    return "\n".join([
        f"# edgefleet emulated device {device}",
        f"ListenAddress {address}:{port}",
        f"HostKey {_q(files.host_key)}",
        f"PidFile {_q(files.pid_file)}",
        f"AuthorizedKeysFile {_q(authorized_keys)}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        # The state directory lives wherever the caller put it (often a tmp dir); don't judge its modes.
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "AllowTcpForwarding no",
        "PermitUserEnvironment no",
        # The device's own home: the host user's ~/.bashrc (which bash sources for ssh commands) is not
        # the board's, and can take long to run.
        # sshd takes the first SetEnv line only, so every variable goes on this one.
        "SetEnv " + " ".join(f"{name}={_q(value)}" for name, value in {"HOME": home, **(env or {})}.items()),
        "MaxStartups 50:30:100",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        *chroot_lines,
        "",
    ])


def start(files: SshdFiles, *, prefix: list[str], address: str, port: int) -> int:
    """Validate the config, start sshd as a daemon (optionally inside ``prefix``, e.g. ip netns exec)
    and wait until it answers with an SSH banner. Returns the listener's pid."""
    sshd = require_tool("sshd", "openssh-server")
    if _needs_privsep_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    test = run([*prefix, sshd, "-t", "-f", str(files.config)], check=False)
    if test.returncode != 0:
        raise FleetError(f"sshd rejected {files.config}: {test.stderr.strip()}")
    files.pid_file.unlink(missing_ok=True)
    # Without -D sshd daemonizes (closing our pipes) and writes PidFile; it outlives this process,
    # so a fleet brought up by one command can be used by the next.
    run([*prefix, sshd, "-f", str(files.config), "-E", str(files.log)])
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        pid = read_pid(files)
        if pid is not None and _answers(address, port):
            return pid
        time.sleep(0.05)
    log = files.log.read_text(errors="replace")[-2000:] if files.log.exists() else ""
    raise FleetError(f"sshd did not come up on {address}:{port} within {READY_TIMEOUT_S:g}s; log:\n{log}")


def _needs_privsep_dir() -> bool:
    # Only a root sshd chroots its pre-auth child into /run/sshd; it refuses to start without it.
    return os.geteuid() == 0


def _answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5) as sock:
            sock.settimeout(1.0)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def read_pid(files: SshdFiles) -> int | None:
    try:
        return int(files.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def stop(files: SshdFiles) -> None:
    """Stop the listener and every session it forked. Only a pid whose command line names our
    config counts: after a reboot the pid file may point at someone else's process."""
    pid = read_pid(files)
    listeners = {pid} if pid is not None and pid_alive(pid) and str(files.config) in cmdline(pid) else set()
    kill_all(descendants(listeners))
    files.pid_file.unlink(missing_ok=True)
