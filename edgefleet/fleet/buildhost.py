"""An emulated build host: a second Docker engine behind its own sshd, in a network namespace of its own.

It stands in for the bigger machine a team builds on, so ``docker_host: ssh://...`` can be tried (and is
tested) with no second machine: the engine has its own data root and socket and is reached only through
``ssh://`` to the namespace's address, exactly as a remote one is. The sshd points ``docker`` at that
engine (``SetEnv DOCKER_HOST``), because the docker SDK runs ``docker system dial-stdio`` on the far end.

The engine's data root outlives ``down`` (it holds the builder images, which take minutes to make), so the
next ``up`` starts warm. Only addresses of the namespace made here are ever used.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edgefleet.fleet import netns, sshd
from edgefleet.fleet.devices import fleet_tag, slug
from edgefleet.fleet.keys import generate_keypair
from edgefleet.fleet.lifecycle import mounts_under, subnet_lock
from edgefleet.fleet.system import FleetError, cmdline, descendants, kill_all, pid_alive, require_tool, run

STATE_FILE = "buildhost.json"
ENGINE_READY_TIMEOUT_S = 60.0
SSH_CONFIG_BEGIN = "# >>> edgefleet build host {name} >>>"
SSH_CONFIG_END = "# <<< edgefleet build host {name} <<<"


@dataclass(frozen=True)
class BuildHost:
    name: str
    folder: str
    namespace: str
    host_if: str
    index: int
    address: str
    data_root: str

    @property
    def alias(self) -> str:
        """The name ~/.ssh/config knows it by; ``ssh://<alias>`` is its docker_host."""
        return f"edgefleet-{slug(self.name)}"

    @property
    def url(self) -> str:
        return f"ssh://{self.alias}"

    @property
    def socket(self) -> Path:
        return Path(self.folder) / "docker.sock"

    @property
    def client_key(self) -> Path:
        return Path(self.folder) / "client_ed25519"

    @property
    def sshd_files(self) -> sshd.SshdFiles:
        return sshd.SshdFiles.in_dir(Path(self.folder))

    def ssh_config(self) -> str:
        """The ~/.ssh/config block that reaches it (docker's SDK reads User, Port and IdentityFile there)."""
        return "\n".join([f"Host {self.alias}", f"    HostName {self.address}", "    User root", "    Port 22",
                          f"    IdentityFile {self.client_key}", "    IdentitiesOnly yes", ""])

    def known_hosts_line(self) -> str:
        key_type, key = (Path(self.folder) / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"{self.address} {key_type} {key}\n"


def up(state_root: Path, name: str = "buildhost", *, data_root: Path | None = None,
       say: Callable[[str], None] = print) -> BuildHost:
    """Start (or restart) the build host ``name``; its files live in ``state_root/name``."""
    folder = (Path(state_root) / name).resolve()
    down(state_root, name)
    folder.mkdir(parents=True, exist_ok=True)
    tag = fleet_tag(folder)
    started = time.monotonic()
    with subnet_lock("netns"):
        index = netns.allocate_indexes(1)[0]
        host = BuildHost(name=name, folder=str(folder), namespace=f"efbh-{slug(name)[:8]}-{tag}",
                         host_if=f"ef{tag}b{index:02x}", index=index, address=f"10.213.{index}.2",
                         data_root=str((data_root or folder / "engine").resolve()))
        (folder / STATE_FILE).write_text(json.dumps(asdict(host), indent=2))
        netns.create(netns.Link(host.namespace, host.host_if, index), f"ef{tag}c{index:02x}")
    try:
        _start_engine(host)
        _start_sshd(host)
    except BaseException:
        down(state_root, name)
        raise
    say(f"build host {name}: a Docker engine (data root {host.data_root}) behind sshd on {host.address}, "
        f"up in {time.monotonic() - started:.1f} s")
    return host


def load(state_root: Path, name: str = "buildhost") -> BuildHost | None:
    try:
        return BuildHost(**json.loads((Path(state_root) / name / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def down(state_root: Path, name: str = "buildhost") -> None:
    """Stop the build host's sshd and engine and remove its namespace; keep the engine's data root."""
    host = load(state_root, name)
    if host is None:
        return
    sshd.stop(host.sshd_files)
    kill_all(descendants(netns.namespace_pids(host.namespace) | _engine_pids(host)), grace_s=15.0)
    # dockerd mounts its data root on itself, and a killed engine leaves its containers' fuse-overlayfs mounts
    # behind: the next engine would trip on them.
    for folder in (Path(host.data_root), Path(host.folder) / "exec"):
        for point in mounts_under(folder, itself=True):
            run(["umount", "-l", point], check=False)
    netns.delete_namespace(host.namespace)
    netns.delete_link(host.host_if)
    for leftover in (host.socket, Path(host.folder) / STATE_FILE):
        leftover.unlink(missing_ok=True)


def kill_engine(host: BuildHost) -> None:
    """Pull the plug: kill everything running in the build host at once (SIGTERM, then SIGKILL with no grace
    period), as if the machine died."""
    kill_all(descendants(netns.namespace_pids(host.namespace) | _engine_pids(host)), grace_s=0.0)


def _engine_pids(host: BuildHost) -> set[int]:
    pid_file = Path(host.folder) / "dockerd.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return set()
    return {pid} if pid_alive(pid) and str(host.socket) in cmdline(pid) else set()


def _start_engine(host: BuildHost) -> None:
    folder = Path(host.folder)
    config = folder / "daemon.json"
    # Its own (empty) config: this machine's daemon.json names the main engine's data root.
    config.write_text("{}\n")
    Path(host.data_root).mkdir(parents=True, exist_ok=True)
    argv = [require_tool("nsenter", "util-linux"), f"--net=/var/run/netns/{host.namespace}",
            require_tool("dockerd", "docker.io"), "--config-file", str(config), "--data-root", host.data_root,
            "--exec-root", str(folder / "exec"), "--pidfile", str(folder / "dockerd.pid"),
            "-H", f"unix://{host.socket}", "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--storage-driver", _storage_driver(), "--cgroup-parent", f"edgefleet-{host.namespace}"]
    # `ip netns exec` would remount /sys, which hides the devices cgroup dockerd needs; nsenter only
    # switches the network namespace.
    with (folder / "dockerd.log").open("ab") as log:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    _wait_for_engine(host)


def _storage_driver() -> str:
    """The main engine's storage driver: the one that is known to work on this machine's filesystem."""
    try:
        settings = json.loads(Path("/etc/docker/daemon.json").read_text())
    except (OSError, ValueError):
        return "overlay2"
    return str(settings.get("storage-driver", "overlay2"))


def _wait_for_engine(host: BuildHost) -> None:
    import docker
    import docker.errors

    deadline = time.monotonic() + ENGINE_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            docker.DockerClient(base_url=f"unix://{host.socket}", timeout=5).ping()
            return
        except (docker.errors.DockerException, OSError):
            time.sleep(0.2)
    log = (Path(host.folder) / "dockerd.log").read_text(errors="replace")[-2000:]
    raise FleetError(f"the build host's Docker engine did not answer within {ENGINE_READY_TIMEOUT_S:g} s; "
                     f"log:\n{log}")


def _start_sshd(host: BuildHost) -> None:
    folder = Path(host.folder)
    files = host.sshd_files
    generate_keypair(files.host_key, f"edgefleet build host {host.name}")
    client_line = generate_keypair(host.client_key, f"edgefleet client of build host {host.name}")
    authorized = folder / "authorized_keys"
    authorized.write_text(client_line + "\n")
    (folder / "home").mkdir(exist_ok=True)
    files.config.write_text(sshd.render_config(
        files, address=host.address, port=22, authorized_keys=authorized, device=f"build host {host.name}",
        home=folder / "home", env={"DOCKER_HOST": f"unix://{host.socket}"}))
    sshd.start(files, prefix=[require_tool("ip", "iproute2"), "netns", "exec", host.namespace],
               address=host.address, port=22)


def install_ssh_config(host: BuildHost, home: Path | None = None) -> list[Path]:
    """Add the build host to ~/.ssh/config and ~/.ssh/known_hosts (replacing an earlier entry of the same
    name) so ``ssh://<alias>`` works for docker and for ``ssh``; return the files changed."""
    ssh_dir = (home or Path.home()) / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    changed = []
    for file, text in ((ssh_dir / "config", host.ssh_config()), (ssh_dir / "known_hosts", host.known_hosts_line())):
        _replace_block(file, host.name, text)
        changed.append(file)
    return changed


def remove_ssh_config(name: str, home: Path | None = None) -> None:
    ssh_dir = (home or Path.home()) / ".ssh"
    for file in (ssh_dir / "config", ssh_dir / "known_hosts"):
        if file.is_file():
            _replace_block(file, name, None)


def _replace_block(file: Path, name: str, text: str | None) -> None:
    begin, end = SSH_CONFIG_BEGIN.format(name=name), SSH_CONFIG_END.format(name=name)
    lines = file.read_text().splitlines(keepends=True) if file.is_file() else []
    kept, inside = [], False
    for line in lines:
        if line.strip() == begin:
            inside = True
        elif line.strip() == end:
            inside = False
        elif not inside:
            kept.append(line)
    if text is not None:
        kept += [begin + "\n", text if text.endswith("\n") else text + "\n", end + "\n"]
    tmp = file.with_name(file.name + ".edgefleet-tmp")
    tmp.write_text("".join(kept))
    os.chmod(tmp, 0o600)
    os.replace(tmp, file)
